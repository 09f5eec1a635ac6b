"""Layers of the SegNet/ENet and ShuffleNet Caffe forks: BN, Upsample, ShuffleChannel,
ConvolutionDepthwise.  (SSD and Faster R-CNN layers: ``detection.py``, ``rcnn.py``.)

``FORK_LAYERS`` names the fork each well-known fork layer type comes from; the net's
"unknown layer type" error and ``netrun layers`` use it.  docs/forks.md says where
each layer's numbers come from.
"""
import numpy as np

from ..errors import LayerError, check
from ..proto import caffe_pb2
from .base import Layer, register, register_python
from .vision import Convolution

# type -> the fork (repository) that defines it.  Types netrun implements and types
# it only recognises (for the error message) alike.
FORK_LAYERS = {
    "BN": "SegNet/ENet (alexgkendall/caffe-segnet, TimoSaemann/caffe-enet)",
    "Upsample": "SegNet/ENet (alexgkendall/caffe-segnet, TimoSaemann/caffe-enet)",
    "DenseImageData": "SegNet/ENet (alexgkendall/caffe-segnet, TimoSaemann/caffe-enet)",
    "ShuffleChannel": "ShuffleNet (farmingyard/ShuffleNet)",
    "ConvolutionDepthwise": "ShuffleNet / MobileNet depthwise forks "
                            "(farmingyard/ShuffleNet, yonghenglh6/DepthwiseConvolution)",
    "DepthwiseConvolution": "MobileNet depthwise forks (e.g. sp2823/caffe)",
    "Normalize": "SSD (weiliu89/caffe, branch ssd)",
    "Permute": "SSD (weiliu89/caffe, branch ssd)",
    "PriorBox": "SSD (weiliu89/caffe, branch ssd)",
    "DetectionOutput": "SSD (weiliu89/caffe, branch ssd)",
    "MultiBoxLoss": "SSD (weiliu89/caffe, branch ssd)",
    "AnnotatedData": "SSD (weiliu89/caffe, branch ssd)",
    "DetectionEvaluate": "SSD (weiliu89/caffe, branch ssd)",
    "VideoData": "SSD (weiliu89/caffe, branch ssd)",
    "ROIPooling": "Faster R-CNN (rbgirshick/caffe-fast-rcnn)",
    "SmoothL1Loss": "Faster R-CNN (rbgirshick/caffe-fast-rcnn)",
    "PSROIPooling": "R-FCN (daijifeng001/caffe-rfcn)",
    "Interp": "DeepLab/PSPNet (hszhao/PSPNet)",
    "ReLU6": "MobileNet-v2 forks",
    "Axpy": "SENet (hujie-frank/SENet)",
    "Reorg": "YOLOv2 forks",
    "Region": "YOLOv2 forks",
}

# Python layers of the forks that netrun has built in (python_param module, layer) -> fork
PYTHON_FORK_LAYERS = {
    ("rpn.proposal_layer", "ProposalLayer"): "Faster R-CNN (rbgirshick/py-faster-rcnn)",
    ("spatial_dropout", "SpatialDropoutLayer"): "ENet (TimoSaemann/ENet)",
}

F64 = np.float64


def _nchw(layer, blob, what="bottom"):
    check(blob.num_axes == 4, f"{layer.type} needs a 4-axis (num, channels, height, width) "
                              f"{what}, got shape {blob.shape}")
    return blob.shape


@register("BN")
class BN(Layer):
    """SegNet/ENet batch normalization with its own scale ``s`` and shift ``b``
    (blobs 0 and 1, shape (1, C, 1, 1); fillers bn_param.scale_filler/shift_filler).

    ``bn_mode: INFERENCE`` (the statistics were folded into s and b by the forks'
    compute_bn_statistics.py):
        y = s_c x + b_c;   dx = s_c dy;  ds_c += sum dy x;  db_c += sum dy
    ``bn_mode: LEARN`` (the default; the batch's statistics, in either phase), with
    sums over (n, h, w) and M = N H W:
        mu_c = sum x / M,   var_c = sum x^2 / M - mu_c^2,   sigma_c = sqrt(var_c + 1e-9)
        xh = (x - mu_c) / sigma_c,   y = s_c xh + b_c
        ds_c += sum dy xh,   db_c += sum dy,
        dx = (s_c dy - sum(s_c dy) / M - xh sum(s_c dy xh) / M) / sigma_c
    Optional tops 1 and 2 (LEARN only): the batch mean and variance, (1, C, 1, 1).
    Statistics are accumulated in float64.
    """
    exact_bottoms = 1
    min_tops = 1
    max_tops = 3
    EPS = 1e-9

    def setup(self, bottom, top):
        N, C, H, W = _nchw(self, bottom[0])
        p = self.param.bn_param
        self.learn = p.bn_mode == caffe_pb2.BNParameter.LEARN
        check(len(top) == 1 or self.learn, "BN's mean/variance tops need bn_mode LEARN")
        self.C = C
        self.blobs = [self.new_param((1, C, 1, 1), p.scale_filler),
                      self.new_param((1, C, 1, 1), p.shift_filler)]

    def reshape(self, bottom, top):
        N, C, H, W = _nchw(self, bottom[0])
        check(C == self.C, f"bottom has {C} channels, the layer was set up for {self.C}")
        top[0].reshape(bottom[0].shape)
        for t in top[1:]:
            t.reshape((1, C, 1, 1))

    def _sb(self):
        return (self.blobs[0].data.reshape(1, -1, 1, 1), self.blobs[1].data.reshape(1, -1, 1, 1))

    def forward(self, bottom, top):
        x = bottom[0].data
        s, b = self._sb()
        if not self.learn:
            # backward needs x for the scale's gradient: keep it when running in place
            self._x = x.copy() if top[0] is bottom[0] else None
            top[0].data[...] = x * s + b
            return
        x64 = x.astype(F64)
        mu = x64.mean(axis=(0, 2, 3), keepdims=True)
        var = (x64 * x64).mean(axis=(0, 2, 3), keepdims=True) - mu * mu
        sigma = np.sqrt(var + self.EPS)
        xh = ((x64 - mu) / sigma).astype(self.dtype)
        self._xh, self._sigma = xh, sigma.astype(self.dtype)
        if len(top) > 1:
            top[1].data[...] = mu.reshape(top[1].shape)
        if len(top) > 2:
            top[2].data[...] = var.reshape(top[2].shape)
        top[0].data[...] = xh * s + b

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff
        x = bottom[0].data
        s, _ = self._sb()
        ppd = self.param_propagate_down
        if self.learn:
            xh = self._xh
        else:
            xh = x if getattr(self, "_x", None) is None else self._x
        if ppd[0]:
            self.blobs[0].diff += (dy * xh).astype(F64).sum(axis=(0, 2, 3)).reshape(1, -1, 1, 1)
        if ppd[1]:
            self.blobs[1].diff += dy.astype(F64).sum(axis=(0, 2, 3)).reshape(1, -1, 1, 1)
        if not propagate_down[0]:
            return
        if not self.learn:
            bottom[0].diff[...] = dy * s
            return
        M = x.shape[0] * x.shape[2] * x.shape[3]
        sdy = (dy * s).astype(F64)
        m1 = sdy.sum(axis=(0, 2, 3), keepdims=True) / M
        m2 = (sdy * xh).sum(axis=(0, 2, 3), keepdims=True) / M
        bottom[0].diff[...] = (sdy - m1 - xh * m2) / self._sigma


@register("Upsample")
class Upsample(Layer):
    """SegNet/ENet max-unpooling: bottom 0 the values x, bottom 1 the mask of a MAX
    Pooling layer's second top (per channel plane, the index h W + w of each maximum
    in the pooling input).

    Output size (upsample_param): ``upsample_h`` x ``upsample_w`` when both are given,
    else (H scale_h - pad_out_h) x (W scale_w - pad_out_w) with scale_h = scale_w =
    ``scale`` (default 2) unless scale_h and scale_w are given.
        y = 0;  y[n, c, mask[n, c, i]] = x[n, c, i]      (i in row-major order)
        dx[n, c, i] = dy[n, c, mask[n, c, i]]
    Where two inputs of one plane carry the same index (overlapping pooling windows)
    the later one wins in forward; the fork's backward then gives dy to both, which is
    not the gradient: netrun gives it to the one whose value was written (and warns).
    A mask index outside the output plane is an error (as in the fork).
    """
    exact_bottoms = 2
    exact_tops = 1
    in_place_ok = False

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0          # the mask (indices) takes no gradient

    def setup(self, bottom, top):
        p = self.param.upsample_param
        if p.HasField("upsample_h") and p.HasField("upsample_w"):
            self.size = (int(p.upsample_h), int(p.upsample_w))
            check(min(self.size) > 1, "upsample_h and upsample_w must be > 1")
            self.scale = None
        else:
            check(not p.HasField("upsample_h") and not p.HasField("upsample_w"),
                  "give both upsample_h and upsample_w")
            if p.HasField("scale_h") or p.HasField("scale_w"):
                check(p.HasField("scale_h") and p.HasField("scale_w")
                      and not p.HasField("scale"),
                      "give scale, or scale_h and scale_w (not both)")
                self.scale = (int(p.scale_h), int(p.scale_w))
            else:
                self.scale = (int(p.scale), int(p.scale))
            check(min(self.scale) > 1, f"upsample scale must be > 1, got {self.scale}")
            self.pad_out = (int(p.pad_out_h), int(p.pad_out_w))
            check(not self.pad_out[0] or self.scale[0] == 2, "pad_out_h needs scale_h 2")
            check(not self.pad_out[1] or self.scale[1] == 2, "pad_out_w needs scale_w 2")
        self._warned = False

    def reshape(self, bottom, top):
        N, C, H, W = _nchw(self, bottom[0])
        _nchw(self, bottom[1], "mask bottom")
        check(bottom[1].shape == bottom[0].shape,
              f"the mask {bottom[1].shape} must have the shape of bottom 0 {bottom[0].shape}")
        if self.scale is None:
            oh, ow = self.size
        else:
            oh = H * self.scale[0] - self.pad_out[0]
            ow = W * self.scale[1] - self.pad_out[1]
        self.out = (oh, ow)
        top[0].reshape((N, C, oh, ow))

    def _index(self, bottom):
        N, C, H, W = bottom[0].shape
        idx = bottom[1].data.reshape(N * C, H * W).astype(np.int64)   # C's static_cast<int>
        P = self.out[0] * self.out[1]
        if idx.size and (idx.min() < 0 or idx.max() >= P):
            bad = idx.max() if idx.max() >= P else idx.min()
            raise LayerError(f"mask index {bad} is outside the {self.out[0]}x{self.out[1]} "
                             "output: the upsample size does not match the pooling layer "
                             "that made the mask")
        return idx + (np.arange(N * C, dtype=np.int64) * P)[:, None]

    def forward(self, bottom, top):
        idx = self._index(bottom)
        y = top[0].data.reshape(-1)
        y[...] = 0
        y[idx.ravel()] = bottom[0].data.reshape(-1)     # later writes win, as in the fork

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        idx = self._index(bottom).ravel()
        dy = top[0].diff.reshape(-1)
        dx = dy[idx]
        # the last writer of each index is the one whose value reached the top
        last = np.zeros(dy.size, np.int64) - 1
        last[idx] = np.arange(idx.size)
        loser = last[idx] != np.arange(idx.size)
        if loser.any():
            dx[loser] = 0
            if not self._warned:
                self._warned = True
                self.ctx.warn(f'Upsample "{self.name}": the mask has repeated indices '
                              "(overlapping pooling windows); only the value written last "
                              "gets the gradient (the fork gives it to every one)")
        bottom[0].diff[...] = dx.reshape(bottom[0].shape)


@register("ShuffleChannel")
class ShuffleChannel(Layer):
    """ShuffleNet's channel shuffle with g = shuffle_channel_param.group: the C = g k
    channels, seen as a g x k matrix (row-major), are transposed:
        y[:, j g + i] = x[:, i k + j]      (i < g, j < k)
        dx[:, i k + j] = dy[:, j g + i]
    """
    exact_bottoms = 1
    exact_tops = 1
    in_place_ok = False

    def setup(self, bottom, top):
        self.group = int(self.param.shuffle_channel_param.group)
        check(self.group > 0, "shuffle_channel_param.group must be positive")

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        check(len(shape) >= 2, f"ShuffleChannel needs a channel axis, got shape {shape}")
        check(shape[1] % self.group == 0,
              f"{shape[1]} channels are not a multiple of group {self.group}")
        top[0].reshape(shape)

    def _view(self, a, rows):
        n, c = a.shape[:2]
        return a.reshape(n, rows, c // rows, -1)

    def forward(self, bottom, top):
        g = self.group
        out = self._view(top[0].data, bottom[0].shape[1] // g)
        out[...] = self._view(bottom[0].data, g).transpose(0, 2, 1, 3)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            g = self.group
            dx = self._view(bottom[0].diff, g)
            dx[...] = self._view(top[0].diff, bottom[0].shape[1] // g).transpose(0, 2, 1, 3)


@register("ConvolutionDepthwise", "DepthwiseConvolution")
class ConvolutionDepthwise(Convolution):
    """A depthwise convolution: Convolution with group = the bottom's channels
    (convolution_param as for Convolution; its ``group`` is ignored; num_output must be
    a multiple of the channels).  Weights (num_output, 1, *kernel).  Forward and
    backward are Convolution's:
        y[n, o] = sum_k W[o, 0, k] x_pad[n, o // m, o s + k d] + b[o],   m = num_output / C
    """

    def setup(self, bottom, top):
        check(bottom[0].num_axes >= 2, f"bottom shape {bottom[0].shape} has no channel axis")
        cp = self.param.convolution_param
        axis = cp.axis + bottom[0].num_axes if cp.axis < 0 else cp.axis
        check(0 <= axis < bottom[0].num_axes, f"axis {cp.axis} out of range")
        channels = int(bottom[0].shape[axis])
        if cp.HasField("group") and cp.group not in (1, channels):
            self.ctx.warn(f'ConvolutionDepthwise "{self.name}": group {cp.group} is ignored '
                          f"(depthwise: group = the {channels} input channels)")
        lp = caffe_pb2.LayerParameter()
        lp.CopyFrom(self.param)
        lp.convolution_param.group = channels
        self.param = lp
        super().setup(bottom, top)


@register_python("spatial_dropout", "SpatialDropoutLayer")
class SpatialDropout(Layer):
    """ENet's spatial dropout (its Python layer ``spatial_dropout.SpatialDropoutLayer``,
    from TimoSaemann/ENet), built in.  param_str ``{'phase': 'TRAIN' or 'TEST', 'p': P}``
    (the phase is the param_str's, not the net's), 0 < P < 1, s = 1 / (1 - P):
        TRAIN: per image n and channel c, m ~ Bernoulli(1 - P) (the net's rng);
               y = x m s,  dx = dy m s
        TEST:  y = x s,    dx = dy s     (the module scales in TEST too; netrun does the
                                          same, so the published nets' numbers hold)
    """
    exact_bottoms = 1
    exact_tops = 1

    def __init__(self, param, ctx):
        super().__init__(param, ctx)
        ctx.warn_once("spatial_dropout", 'Python layers of module "spatial_dropout" (ENet\'s '
                      f'SpatialDropoutLayer; first: "{param.name}") run netrun\'s built-in '
                      "spatial dropout (as the module, it multiplies by 1 / (1 - p) in its "
                      "TEST phase too)")

    def setup(self, bottom, top):
        import ast
        text = self.param.python_param.param_str
        try:
            cfg = ast.literal_eval(text)
            self.train = str(cfg["phase"]).upper() == "TRAIN"
            p = float(cfg["p"])
        except (ValueError, SyntaxError, TypeError, KeyError):
            raise LayerError(f"param_str {text!r} must be {{'phase': 'TRAIN' or 'TEST', "
                             "'p': P}") from None
        check(0 < p < 1, f"p must be between 0 and 1, got {p:g}")
        self.keep = 1.0 - p
        self.scale = self.dtype.type(1.0 / (1.0 - p))
        self._mask = None

    def reshape(self, bottom, top):
        check(bottom[0].num_axes >= 2, f"spatial dropout needs a channel axis, got "
                                       f"{bottom[0].shape}")
        top[0].reshape(bottom[0].shape)

    def _factor(self, shape):
        if not self.train:
            return self.scale
        return (self._mask * self.scale).reshape(shape[:2] + (1,) * (len(shape) - 2))

    def forward(self, bottom, top):
        shape = bottom[0].shape
        if self.train:
            self._mask = (self.ctx.rng.random(shape[:2]) < self.keep).astype(self.dtype)
        top[0].data[...] = bottom[0].data * self._factor(shape)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff * self._factor(bottom[0].shape)
