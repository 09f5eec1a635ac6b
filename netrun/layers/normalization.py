"""Normalization and broadcasting layers: LRN, BatchNorm, Scale, Bias, MVN, Crop.

Statistics (means, variances, window sums) are accumulated in float64 and cast
back to the net's dtype; the element-wise arithmetic runs in the net's dtype.
"""
import math

import numpy as np

from .. import kernels
from ..errors import LayerError, check
from ..kernels.lrn import _window_sum
from ..kernels.tiles import channel_tiles
from .base import Layer, canonical_axis, register

ACROSS_CHANNELS, WITHIN_CHANNEL = 0, 1
F64 = np.float64


def _kept_buffer(layer, bottom, top):
    """In place, a buffer for a copy of x for the backward pass (None otherwise, and
    when the net runs this layer forward only); its contents are the caller's."""
    if top[0] is not bottom[0]:
        return None
    if not getattr(layer, "need_backward", True):
        layer._x_skipped = True
        return None
    layer._x_skipped = False
    x = bottom[0].data
    kept = getattr(layer, "_x", None)          # reuse last forward's buffer
    if kept is None or kept.shape != x.shape or kept.dtype != x.dtype:
        kept = np.empty_like(x)
    return kept


def _kept_input(layer, bottom, top):
    """_kept_buffer holding a copy of x."""
    kept = _kept_buffer(layer, bottom, top)
    if kept is not None:
        np.copyto(kept, bottom[0].data)
    return kept


def _input_of(layer, bottom, top):
    """x as forward saw it (the kept copy when in place)."""
    if top[0] is bottom[0]:
        if getattr(layer, "_x_skipped", False):
            raise LayerError("in place, this layer keeps its input for backward only when "
                             "the net needs backward at forward time: run forward again "
                             "after enabling backward (force_backward)")
        if layer._x is not None:
            return layer._x
    return bottom[0].data


def _legacy_shape(blob):
    """Caffe's (num, channels, height, width) of a blob of at most 4 axes."""
    if blob.num_axes > 4:
        raise LayerError(f"needs a blob of at most 4 axes, got shape {blob.shape}")
    return (blob.num, blob.channels, blob.height, blob.width)


# ----------------------------------------------------------------------------------
@register("LRN")
class LRN(Layer):
    """Local response normalization of a 4-D (N, C, H, W) blob; n = local_size (odd).

    ACROSS_CHANNELS (window of n channels centred on c, zero-padded):
        s_c = k + alpha/n * sum_{c' = c-(n-1)/2}^{c+(n-1)/2} x_{c'}^2
        y_c = x_c * s_c^-beta
        dE/dx_c = dE/dy_c * s_c^-beta
                  - (2 alpha beta / n) * x_c * sum_{c' in window(c)} dE/dy_c' * y_c' / s_c'
      Both window sums run over the channel axis as `size` shifted-slice additions
      (forward: in float64, from the float32 squares, rounded once; a cumulative sum
      for windows longer than 9), over tiles of spatial positions of ~1 MB.

    WITHIN_CHANNEL: Caffe chains Split, Power(power 2), Pooling(AVE, kernel n,
    pad (n-1)/2, stride 1), Power(power -beta, scale alpha, shift 1) and
    Eltwise(PROD).  With stride 1 and that pad every AVE window lies wholly
    within the padded input, so Caffe divides by n^2 everywhere (the zero
    padding counts):
        P = (1/n^2) * sum_{n x n window around (h, w)} x^2
        B = 1 + alpha * P;    y = x * B^-beta
        dE/dP = dE/dy * x * (-beta * alpha) * B^-beta / B
        dE/dx = dE/dy * B^-beta + 2 x * (1/n^2) * sum_{n x n window} dE/dP
      (the centred window sum is its own adjoint, as AVE pooling's backward).
    """
    exact_bottoms = 1
    exact_tops = 1

    def setup(self, bottom, top):
        p = self.param.lrn_param
        self.size = int(p.local_size)
        check(self.size % 2 == 1, f"LRN only supports odd values for local_size, got {self.size}")
        self.pre_pad = (self.size - 1) // 2
        self.alpha = float(p.alpha)
        self.beta = float(p.beta)
        self.k = float(p.k)
        self.region = p.norm_region
        check(self.region in (ACROSS_CHANNELS, WITHIN_CHANNEL),
              f"unknown LRN norm_region {self.region}")
        self._x = self._scale = self._pow = None

    def reshape(self, bottom, top):
        if bottom[0].num_axes != 4:
            raise LayerError(f"LRN needs a 4-D input (num, channels, height, width), "
                             f"got shape {bottom[0].shape}")
        top[0].reshape_like(bottom[0])

    def forward(self, bottom, top):
        x = bottom[0].data
        dt = self.dtype.type
        # in place the input is gone after forward: keep it for backward
        self._x = _kept_input(self, bottom, top)
        if self.region == ACROSS_CHANNELS:
            scale, powed = self._scale, self._pow       # reused between forwards
            if scale is None or scale.shape != x.shape or scale.dtype != x.dtype:
                scale, powed = np.empty_like(x), np.empty_like(x)
            x3, s3, p3, y3 = (a.reshape(a.shape[0], a.shape[1], -1)
                              for a in (x, scale, powed, top[0].data))
            kernels.lrn_across_forward(x3, s3, p3, y3, self.size, self.pre_pad, self.alpha,
                                       dt(-self.beta), self.k)
            self._scale, self._pow = scale, powed
            return
        sq = np.square(x)
        win = _window_sum(_window_sum(sq, 2, self.size, self.pre_pad),
                          3, self.size, self.pre_pad)
        pooled = (win / (self.size * self.size)).astype(self.dtype)
        scale = pooled * dt(self.alpha) + dt(1)          # Power: shift + scale * x
        powed = np.power(scale, dt(-self.beta))
        self._scale, self._pow = scale, powed
        top[0].data[...] = x * powed

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x = _input_of(self, bottom, top)
        dy = top[0].diff
        scale, powed = self._scale, self._pow
        dt = self.dtype.type
        if self.region == ACROSS_CHANNELS:
            coef = dt(2.0 * self.alpha * self.beta / self.size)
            x3, dy3, s3, p3, dx3 = (a.reshape(a.shape[0], a.shape[1], -1)
                                    for a in (x, dy, scale, powed, bottom[0].diff))
            kernels.lrn_across_backward(x3, dy3, s3, p3, dx3, self.size, self.pre_pad, coef)
        else:
            dpool = (dy * x) * (powed / scale) * dt(-self.beta * self.alpha)
            acc = _window_sum(_window_sum(dpool, 2, self.size, self.pre_pad),
                              3, self.size, self.pre_pad)
            dsq = (acc / (self.size * self.size)).astype(self.dtype)
            bottom[0].diff[...] = dy * powed + dsq * (dt(2) * x)


# ----------------------------------------------------------------------------------
@register("BatchNorm")
class BatchNorm(Layer):
    """Per-channel normalization over the batch and spatial axes (channels = axis 1).

    blobs: [mean_sum (C,), var_sum (C,), scale_factor (1,)], moving sums that
    Caffe never learns: setup adds ParamSpecs with lr_mult 0 (an explicit spec
    with lr_mult != 0 is an error) and backward never writes their diffs.

    use_global_stats (default: phase == TEST):
        s = blob2[0];  f = 0 if s == 0 else 1/s
        mean = f * blob0;  var = f * blob1
        y = (x - mean) / sqrt(var + eps);      dE/dx = dE/dy / sqrt(var + eps)
    batch statistics (m = N * spatial):
        mean = E[x];  var = E[(x - mean)^2]  (biased)
        y = (x - mean) / sqrt(var + eps)
        blob2 = maf * blob2 + 1
        blob0 = maf * blob0 + mean
        blob1 = maf * blob1 + (m / (m - 1) if m > 1 else 1) * var
        dE/dx = (dE/dy - E[dE/dy] - E[dE/dy * y] * y) / sqrt(var + eps)
    (maf = moving_average_fraction; E over N and spatial axes per channel).
    y is kept for backward, as Caffe's x_norm_, so in-place layers after this one
    do not disturb the gradient.
    """
    exact_bottoms = 1
    exact_tops = 1

    def setup(self, bottom, top):
        p = self.param.batch_norm_param
        self.maf = float(p.moving_average_fraction)
        self.use_global = (p.use_global_stats if p.HasField("use_global_stats")
                           else self.phase == 1)
        self.eps = float(p.eps)
        check(bottom[0].num_axes >= 1, "BatchNorm needs an input with at least one axis")
        self.channels = 1 if bottom[0].num_axes == 1 else bottom[0].shape[1]
        self.blobs = [self.new_param((self.channels,)), self.new_param((self.channels,)),
                      self.new_param((1,))]
        # Caffe masks the statistics from the solver with lr_mult 0
        for i in range(len(self.blobs)):
            if len(self.param.param) == i:
                self.param.param.add(lr_mult=0.0)
            elif self.param.param[i].lr_mult != 0:
                raise LayerError("Cannot configure batch normalization statistics as layer "
                                 f"parameters (param {i} has lr_mult "
                                 f"{self.param.param[i].lr_mult:g}; it must be 0)")
        self._xnorm = self._std = None

    def _view(self, a):
        n = a.shape[0]
        return a.reshape(n, self.channels, -1)

    def reshape(self, bottom, top):
        c = 1 if bottom[0].num_axes == 1 else bottom[0].shape[1]
        if c != self.channels:
            raise LayerError(f"BatchNorm was set up for {self.channels} channels, input shape "
                             f"{bottom[0].shape} has {c}")
        top[0].reshape_like(bottom[0])

    def channel_dims(self, bottom):
        return self._view(bottom[0].data).shape

    def channel_forward(self, bottom, top):
        if not self.use_global:
            return None
        x = self._view(bottom[0].data)
        dt = self.dtype.type
        s = self.blobs[2].data.reshape(-1)[0]
        f = dt(0) if s == 0 else dt(1) / s
        mean = self.blobs[0].data * f
        var = self.blobs[1].data * f
        std = np.sqrt(var + dt(self.eps))
        self._std, self._xnorm = std, None
        # y = (x - mean) / std in place in the top (in place on x when it is x)
        out = self._view(top[0].data)
        return lambda lo, hi: kernels.normalize(x[:, lo:hi], mean[lo:hi], std[lo:hi],
                                                out[:, lo:hi])

    def channel_backward(self, top, propagate_down, bottom):
        if not (self.use_global and propagate_down[0]):
            return None
        dy = self._view(top[0].diff)
        std = self._std[None, :, None]
        out = self._view(bottom[0].diff)
        return lambda lo, hi: np.divide(dy[:, lo:hi], std[:, lo:hi], out=out[:, lo:hi])

    def forward(self, bottom, top):
        part = self.channel_forward(bottom, top)
        if part is not None:
            channel_tiles(part, *self._view(top[0].data).shape, top[0].data.itemsize)
            return
        x = self._view(bottom[0].data)
        dt = self.dtype.type
        mean = x.mean(axis=(0, 2), dtype=F64).astype(self.dtype)
        xc = x - mean[None, :, None]
        var = np.square(xc).mean(axis=(0, 2), dtype=F64).astype(self.dtype)
        maf = dt(self.maf)
        b2 = self.blobs[2].data
        b2 *= maf
        b2 += dt(1)
        b0 = self.blobs[0].data
        b0 *= maf
        b0 += mean
        m = x.size // self.channels
        corr = dt(m / (m - 1) if m > 1 else 1)
        b1 = self.blobs[1].data
        b1 *= maf
        b1 += corr * var
        std = np.sqrt(var + dt(self.eps))
        y = xc / std[None, :, None]
        self._std = std
        self._xnorm = y
        self._view(top[0].data)[...] = y

    def backward(self, top, propagate_down, bottom):
        # never touches self.blobs[k].diff: the statistics get no gradient
        if not propagate_down[0]:
            return
        part = self.channel_backward(top, propagate_down, bottom)
        if part is not None:
            channel_tiles(part, *self._view(top[0].diff).shape, top[0].diff.itemsize)
            return
        dy = self._view(top[0].diff)
        std = self._std[None, :, None]
        out = self._view(bottom[0].diff)
        y = self._xnorm
        m_dy = dy.mean(axis=(0, 2), dtype=F64).astype(self.dtype)[None, :, None]
        m_dyy = (dy * y).mean(axis=(0, 2), dtype=F64).astype(self.dtype)[None, :, None]
        out[...] = (dy - m_dy - m_dyy * y) / std


# ----------------------------------------------------------------------------------
def _param_shape(bottom, axis, num_axes, kind):
    """bottom.shape[axis : axis + num_axes] (num_axes -1: to the end), Caffe's checks."""
    check(num_axes >= -1, f"{kind}_param.num_axes must be non-negative, or -1 to extend to "
                          f"the end of bottom[0] (got {num_axes})")
    if num_axes >= 0 and bottom.num_axes < axis + num_axes:
        raise LayerError(f"{kind} blob's shape extends past bottom[0]'s shape {bottom.shape} "
                         f"when applied starting with bottom[0] axis = {axis} with "
                         f"num_axes = {num_axes}")
    end = bottom.num_axes if num_axes == -1 else axis + num_axes
    return bottom.shape[axis:end]


def _broadcast_dims(x, operand, axis_param, kind):
    """(outer, dim, inner) for an operand applied to x from ``axis`` on (Caffe's Reshape)."""
    axis = 0 if operand.num_axes == 0 else canonical_axis(axis_param, x.num_axes)
    if x.num_axes < axis + operand.num_axes:
        raise LayerError(f"{kind} blob's shape {operand.shape} extends past bottom[0]'s shape "
                         f"{x.shape} when applied starting with bottom[0] axis = {axis}")
    if x.shape[axis:axis + operand.num_axes] != operand.shape:
        raise LayerError(f"dimension mismatch between bottom[0] shape {x.shape} (from axis "
                         f"{axis}) and {kind} shape {operand.shape}")
    outer = math.prod(x.shape[:axis])
    inner = math.prod(x.shape[axis + operand.num_axes:])
    return outer, operand.count, inner


def _channel_sums(a):
    """sum over axes 0 and 2 of a (outer, dim, inner) array: numpy's pairwise float32
    sum along the contiguous inner axis, then float64 over the outer one."""
    return a.sum(axis=2).sum(axis=0, dtype=F64).astype(a.dtype)


@register("Scale")
class Scale(Layer):
    """y = x * s (+ b), s broadcast over bottom[0] from ``axis`` for its own axes.

    s is blob 0 (shape = bottom[0].shape[axis : axis + num_axes], num_axes -1:
    all remaining; filler default constant 1) or, with two bottoms, bottom[1].
    bias_term adds b (shape of s; with two bottoms it is blob 0), filled by
    scale_param.bias_filler (default constant 0).  Viewing x as (outer, dim, inner):
        dE/dx = dE/dy * s
        dE/ds = sum_{outer, inner} dE/dy * x    (+= for the parameter; overwrites
                                                 bottom[1].diff)
        dE/db += sum_{outer, inner} dE/dy
    In place, x is kept from the forward pass (as Caffe's temp_).
    Caffe overwrites instead of accumulating the scale parameter's gradient when
    outer == 1 and s has more than one element; netrun always accumulates (the
    two agree on a single backward from zeroed diffs).
    """
    min_bottoms = 1
    max_bottoms = 2
    exact_tops = 1

    def setup(self, bottom, top):
        p = self.param.scale_param
        self.blobs = []
        if len(bottom) == 1:
            axis = canonical_axis(p.axis, bottom[0].num_axes)
            shape = _param_shape(bottom[0], axis, p.num_axes, "scale")
            if p.HasField("filler"):
                self.blobs.append(self.new_param(shape, p.filler))
            else:
                blob = self.new_param(shape)
                blob.data[...] = 1
                self.blobs.append(blob)
        self.bias_term = p.bias_term
        if self.bias_term:
            num_axes = bottom[1].num_axes if len(bottom) > 1 else p.num_axes
            axis = canonical_axis(p.axis, bottom[0].num_axes)
            shape = _param_shape(bottom[0], axis, num_axes, "bias")
            self.blobs.append(self.new_param(shape, p.bias_filler))
        self._x = None

    def _scale_blob(self, bottom):
        return bottom[1] if len(bottom) > 1 else self.blobs[0]

    def reshape(self, bottom, top):
        axis = self.param.scale_param.axis
        self.dims = _broadcast_dims(bottom[0], self._scale_blob(bottom), axis, "scale")
        if self.bias_term:
            bdims = _broadcast_dims(bottom[0], self.blobs[-1], axis, "bias")
            check(bdims == self.dims, f"bias shape {self.blobs[-1].shape} does not match the "
                                      f"scale's {self._scale_blob(bottom).shape}")
        top[0].reshape_like(bottom[0])

    def channel_dims(self, bottom):
        return self.dims

    def channel_forward(self, bottom, top):
        """Per channel range (the (outer, dim, inner) view's dim axis): keep x when in
        place, y = x * s, y += b."""
        outer, dim, inner = self.dims
        kept = _kept_buffer(self, bottom, top)
        self._x = kept
        k3 = None if kept is None else kept.reshape(outer, dim, inner)
        s = self._scale_blob(bottom).data.reshape(dim)
        y = top[0].data.reshape(outer, dim, inner)
        x3 = bottom[0].data.reshape(outer, dim, inner)
        b = self.blobs[-1].data.reshape(dim) if self.bias_term else None

        def part(lo, hi):
            if k3 is not None:
                np.copyto(k3[:, lo:hi], x3[:, lo:hi])
            kernels.scale_bias(x3[:, lo:hi], s[lo:hi], None if b is None else b[lo:hi],
                               y[:, lo:hi])
        return part

    def forward(self, bottom, top):
        outer, dim, inner = self.dims
        channel_tiles(self.channel_forward(bottom, top), outer, dim, inner,
                      top[0].data.itemsize)

    def channel_backward(self, top, propagate_down, bottom):
        """Per channel range: db += sum dy, ds += sum dy * x, dx = dy * s (one bottom).
        For one item the sums are Caffe's (a GEMV with ones along each plane, added into
        the diff); for several, numpy's (Caffe loops over the items there, slower)."""
        if len(bottom) > 1:
            return None
        outer, dim, inner = self.dims
        dy = top[0].diff.reshape(outer, dim, inner)
        db = (self.blobs[-1].diff.reshape(dim)
              if self.bias_term and self.param_propagate_down[-1] else None)
        ds = self.blobs[0].diff.reshape(dim) if self.param_propagate_down[0] else None
        x = None if ds is None else _input_of(self, bottom, top).reshape(outer, dim, inner)
        s = self.blobs[0].data.reshape(1, dim, 1)
        dx = bottom[0].diff.reshape(outer, dim, inner) if propagate_down[0] else None

        ones = np.ones(inner, dy.dtype) if outer == 1 else None

        def part(lo, hi):
            d = dy[:, lo:hi]
            if ones is not None:        # one item: Caffe's GEMVs along the planes
                if db is not None:
                    db[lo:hi] += d[0] @ ones
                if ds is not None:
                    ds[lo:hi] += (d[0] * x[0, lo:hi]) @ ones
            else:
                if db is not None:
                    db[lo:hi] += _channel_sums(d)
                if ds is not None:
                    ds[lo:hi] += np.einsum("ijk,ijk->j", d, x[:, lo:hi])   # no temporary
            if dx is not None:
                np.multiply(d, s[:, lo:hi], out=dx[:, lo:hi])
        return part

    def backward(self, top, propagate_down, bottom):
        outer, dim, inner = self.dims
        part = self.channel_backward(top, propagate_down, bottom)
        if part is not None:
            channel_tiles(part, outer, dim, inner, top[0].diff.itemsize)
            return
        dy = top[0].diff.reshape(outer, dim, inner)
        if self.bias_term and self.param_propagate_down[-1]:
            b = self.blobs[-1].diff.reshape(dim)
            b += _channel_sums(dy)
        sblob = bottom[1]
        if propagate_down[1]:
            x = _input_of(self, bottom, top).reshape(outer, dim, inner)
            sblob.diff[...] = np.einsum("ijk,ijk->j", dy, x).reshape(sblob.shape)
        if propagate_down[0]:
            s = sblob.data.reshape(1, dim, 1)
            np.multiply(dy, s, out=bottom[0].diff.reshape(outer, dim, inner))


@register("Bias")
class Bias(Layer):
    """y = x + b, b broadcast over bottom[0] from ``axis`` for its own axes.

    b is blob 0 (shape = bottom[0].shape[axis : axis + num_axes], filler
    bias_param.filler, default constant 0) or, with two bottoms, bottom[1].
    Viewing x as (outer, dim, inner):
        dE/dx = dE/dy
        dE/db = sum_{outer, inner} dE/dy   (+= for the parameter; overwrites bottom[1].diff)
    """
    min_bottoms = 1
    max_bottoms = 2
    exact_tops = 1

    def setup(self, bottom, top):
        p = self.param.bias_param
        self.blobs = []
        if len(bottom) == 1:
            axis = canonical_axis(p.axis, bottom[0].num_axes)
            shape = _param_shape(bottom[0], axis, p.num_axes, "bias")
            self.blobs.append(self.new_param(shape, p.filler))

    def _bias_blob(self, bottom):
        return bottom[1] if len(bottom) > 1 else self.blobs[0]

    def reshape(self, bottom, top):
        self.dims = _broadcast_dims(bottom[0], self._bias_blob(bottom),
                                    self.param.bias_param.axis, "bias")
        top[0].reshape_like(bottom[0])

    def forward(self, bottom, top):
        outer, dim, inner = self.dims
        b = self._bias_blob(bottom).data.reshape(1, dim, 1)
        np.add(bottom[0].data.reshape(outer, dim, inner), b,
               out=top[0].data.reshape(outer, dim, inner))

    def backward(self, top, propagate_down, bottom):
        outer, dim, inner = self.dims
        dy = top[0].diff
        if propagate_down[0] and top[0] is not bottom[0]:
            bottom[0].diff[...] = dy
        two = len(bottom) > 1
        if (two and propagate_down[1]) or (not two and self.param_propagate_down[0]):
            db = dy.reshape(outer, dim, inner).sum(axis=(0, 2), dtype=F64).astype(self.dtype)
            bblob = self._bias_blob(bottom)
            if two:
                bblob.diff[...] = db.reshape(bblob.shape)
            else:
                bblob.diff.reshape(dim)[...] += db


# ----------------------------------------------------------------------------------
@register("MVN")
class MVN(Layer):
    """Mean-variance normalization per (n, c) (or per n with across_channels).

    Groups: rows of x viewed as (num, dim), num = N*C (N if across_channels),
    dim = count / num.  The top gets Caffe's legacy 4-D shape (num, channels,
    height, width) of the bottom (a 2-D (N, D) input gives (N, D, 1, 1)).
        mean-only (normalize_variance false):
            y = x - E[x];            dE/dx = dE/dy - E[dE/dy]
        normalize_variance (default):
            sigma = sqrt(E[(x - E[x])^2]) + eps      (eps added to the std, not the var)
            y = (x - E[x]) / sigma
            dE/dx = (dE/dy - E[dE/dy] - E[dE/dy * y] * y) / sigma
        (Caffe's backward formula: the exact gradient when eps = 0.)
    y is kept from the forward pass for backward.
    """
    exact_bottoms = 1
    exact_tops = 1

    def setup(self, bottom, top):
        p = self.param.mvn_param
        self.normalize_variance = p.normalize_variance
        self.across = p.across_channels
        self.eps = float(p.eps)
        self._y = self._sigma = None

    def reshape(self, bottom, top):
        shape = _legacy_shape(bottom[0])
        top[0].reshape(shape)
        num = shape[0] if self.across else shape[0] * shape[1]
        self.num = num
        self.dim = bottom[0].count // num if num else 0

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self.num, self.dim)
        mean = x.mean(axis=1, dtype=F64).astype(self.dtype)
        y = x - mean[:, None]
        if self.normalize_variance:
            var = np.square(y).mean(axis=1, dtype=F64).astype(self.dtype)
            sigma = np.sqrt(var) + self.dtype.type(self.eps)
            y /= sigma[:, None]
            self._sigma = sigma
            self._y = y
        top[0].data.reshape(self.num, self.dim)[...] = y

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy = top[0].diff.reshape(self.num, self.dim)
        out = bottom[0].diff.reshape(self.num, self.dim)
        m_dy = dy.mean(axis=1, dtype=F64).astype(self.dtype)[:, None]
        if not self.normalize_variance:
            out[...] = dy - m_dy
            return
        y = self._y
        m_dyy = (dy * y).mean(axis=1, dtype=F64).astype(self.dtype)[:, None]
        out[...] = (dy - m_dy - m_dyy * y) / self._sigma[:, None]


# ----------------------------------------------------------------------------------
@register("Crop")
class Crop(Layer):
    """Crop bottom[0] to bottom[1]'s shape on the axes from crop_param.axis (default 2) on.

    offset: none (all 0), one (for every cropped axis) or one per cropped axis.
        y = x[..., o_a : o_a + S1_a, ...]
        dE/dx = 0 outside the window, dE/dy inside; bottom[1] gets no gradient.
    """
    in_place_ok = False
    exact_bottoms = 2
    exact_tops = 1

    def setup(self, bottom, top):
        p = self.param.crop_param
        self.start = canonical_axis(p.axis, bottom[0].num_axes)
        nd = bottom[0].num_axes
        check(self.start < nd, "crop axis bigger than input dim")
        if len(p.offset) > 1:
            check(self.start + len(p.offset) == nd,
                  f"{len(p.offset)} crop offsets given, but axis {self.start} of a {nd}-D input "
                  f"leaves {nd - self.start} axes to crop: give one offset or one per axis")

    def reshape(self, bottom, top):
        p = self.param.crop_param
        a, b = bottom[0].shape, bottom[1].shape
        start = canonical_axis(p.axis, len(a))
        if len(p.offset) > 1:
            check(start + len(p.offset) == len(a),
                  f"{len(p.offset)} crop offsets for {len(a) - start} axes to crop")
        if len(b) < len(a):
            raise LayerError(f"bottom[1] shape {b} has fewer axes than bottom[0] shape {a}")
        shape, slices = list(a), []
        for i in range(len(a)):
            off = 0
            if i >= start:
                if len(p.offset) == 1:
                    off = int(p.offset[0])
                elif len(p.offset) > 1:
                    off = int(p.offset[i - start])
                if a[i] - off < b[i]:
                    raise LayerError(f"the crop for dimension {i} is out of bounds: size {b[i]} "
                                     f"at offset {off} does not fit in {a[i]} (bottom[0] {a}, "
                                     f"bottom[1] {b})")
                shape[i] = b[i]
            slices.append(slice(off, off + shape[i]))
        self.window = tuple(slices)
        top[0].reshape(shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data[self.window]

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            d = bottom[0].diff
            d[...] = 0
            d[self.window] = top[0].diff
