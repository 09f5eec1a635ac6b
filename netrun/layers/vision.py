"""Vision layers: Convolution, Deconvolution, Im2col, Pooling, SPP.

Convolution geometry (per spatial axis i, Caffe's rules)
--------------------------------------------------------
kernel k, stride s, pad p, dilation d;  extent e = d (k - 1) + 1.

    conv output     o = (n + 2p - e) / s + 1        (C integer division, truncating)
    deconv output   o = s (n - 1) + e - 2p

Blobs are (num, C, *spatial) with num = product of the axes before ``axis``.
Weights are (conv_out, conv_in / group, *kernel): (num_output, channels/g, *k) for
Convolution, (channels, num_output/g, *k) for Deconvolution.  Bias is (num_output,).

im2col (Caffe's column buffer, channel-major rows):
    col[(c, k_1..k_m), (n, o_1..o_m)] = x_pad[n, c, o_1 s_1 + k_1 d_1, ...]
where x_pad is x zero-padded by p on each side (reads outside it are 0).
col2im is its transpose: every column entry is *added* back to the input position
it was read from (positions in the padding are dropped).

With W_g the (conv_out/g, conv_in/g * K) rows of group g and col_g its rows:

    Convolution   forward   y_g = W_g col_g(x) + b
                  backward  dW_g += dy_g col_g(x)^T,   db += sum_{n, o} dy,
                            dx = col2im(W_g^T dy_g)
    Deconvolution forward   y = col2im(W_g^T x_g) + b          (= conv backward-data)
                  backward  dW_g += x_g col_g(dy)^T,   db += sum dy,
                            dx_g = W_g col_g(dy)               (= conv forward)

The kernels (im2col, GEMM operand order, depthwise) are in netrun/kernels/.

Pooling (2-D, Caffe's PoolingLayer)
-----------------------------------
    o = ceil((n + 2p - k) / s) + 1        (round_mode CEIL, the default; FLOOR: floor)
    if any pad > 0 and (o - 1) s >= n + p:  o -= 1   (the last window must start
                                                       inside the image or left padding)
Window of output j: start = j s - p.
MAX:  y = max over the window clipped to the image [max(start, 0), min(start + k, n));
      the first maximum in row-major window order wins (strict >, starting from
      -FLT_MAX: NaN and values <= -FLT_MAX are never chosen; an empty window gives
      -FLT_MAX and index -1).  The index h W + w (in its channel plane) is kept, and is
      the optional second top (as float).  dx[argmax] += dy.
AVE:  pool_size = (min(start + k, n + p) - start) per axis (clipped to the *padded*
      input), y = (sum of the real pixels of the window) / pool_size;
      dx[every real pixel of the window] += dy / pool_size.
STOCHASTIC (Caffe has it on the GPU only; no padding):
      TRAIN: u ~ U[0, 1) per output (ctx.rng), t = u * sum(window); the output is the
             first window element (row-major) at which the running sum reaches >= t;
             dx[that element] += dy.
      TEST:  y = sum(x^2) / (FLT_MIN + sum(x))  (value-weighted average).
global_pooling: kernel = the whole plane (pad 0, stride 1).
The kernels are in netrun/kernels/pooling.py.

SPP (spatial pyramid pooling)
-----------------------------
Level l = 0..pyramid_height-1: bins b = 2^l, kernel = stride = ceil(n / b),
pad = (kernel b - n + 1) // 2, per axis; each level is pooled by the rules above,
flattened to (N, C * oh * ow) and the levels are concatenated along axis 1.  With
pyramid_height 1 the single level's (N, C, oh, ow) pooling is the top.  dx is the sum
of the levels' pooling gradients.
"""
import numpy as np

from .. import kernels
from ..errors import LayerError, check
from ..kernels.im2col import ConvGeometry, per_image
from ..kernels.layout import _prod
from ..kernels.pooling import (PoolGeometry, max_pool, scatter_pool_backward,
                               stochastic_pool_test, stochastic_pool_train)
from ..proto import caffe_pb2
from .base import Layer, canonical_axis, register

# Largest column buffer built at once; bigger batches are processed in chunks of images.
COL_BUFFER_BYTES = 1 << 28
_DOC_CONV = __doc__[__doc__.index("Convolution geometry"):__doc__.index("Pooling (2-D")]
_DOC_POOL = __doc__[__doc__.index("Pooling (2-D"):__doc__.index("SPP (spatial")]
_DOC_SPP = __doc__[__doc__.index("SPP (spatial"):]

_POOL = caffe_pb2.PoolingParameter
MAX, AVE, STOCHASTIC = _POOL.MAX, _POOL.AVE, _POOL.STOCHASTIC
_POOL_FIELDS = set(_POOL.DESCRIPTOR.fields_by_name)


# A net's convolutions keep the columns of their forward pass for the weight gradient
# (instead of building them again) up to this many bytes in all; Caffe rebuilds them.
KEEP_COLS_BYTES = 128 << 20


def conv_geometry(cp, nsp):
    """ConvGeometry from a ConvolutionParameter for ``nsp`` spatial axes (Caffe's rules)."""
    def pick(name, h, w, values, default):
        if cp.HasField(h) or cp.HasField(w):
            check(nsp == 2, f"{h} & {w} can only be used for 2-D convolution "
                            f"(this one has {nsp} spatial axes)")
            check(len(values) == 0, f"give either {name} or {h}/{w}, not both")
            return (int(getattr(cp, h)), int(getattr(cp, w)))
        n = len(values)
        if default is None:
            check(n == 1 or n == nsp, f"{name} must be given once or once per spatial "
                                      f"axis ({name} given {n} times; {nsp} spatial axes)")
        else:
            check(n in (0, 1, nsp), f"{name} must be given once or once per spatial "
                                    f"axis ({name} given {n} times; {nsp} spatial axes)")
            if n == 0:
                return (default,) * nsp
        return tuple(int(values[0 if n == 1 else i]) for i in range(nsp))

    kernel = pick("kernel_size", "kernel_h", "kernel_w", cp.kernel_size, None)
    check(all(k > 0 for k in kernel), f"kernel dimensions must be positive, got {kernel}")
    stride = pick("stride", "stride_h", "stride_w", cp.stride, 1)
    check(all(s > 0 for s in stride), f"stride dimensions must be positive, got {stride}")
    pad = pick("pad", "pad_h", "pad_w", cp.pad, 0)
    nd = len(cp.dilation)
    check(nd in (0, 1, nsp), f"dilation must be given once or once per spatial axis "
                             f"(dilation given {nd} times; {nsp} spatial axes)")
    dilation = tuple(1 if nd == 0 else int(cp.dilation[0 if nd == 1 else i])
                     for i in range(nsp))
    return ConvGeometry(kernel, stride, pad, dilation)


# =====================================================================================
# Convolution / Deconvolution
# =====================================================================================
class _BaseConvolution(Layer):
    """Shared setup of Convolution and Deconvolution (Caffe's BaseConvolutionLayer).

    Several bottoms may be given, one top each; all share the weights and must have
    the same shape.
    """
    in_place_ok = False
    min_bottoms = 1
    min_tops = 1
    reverse = False          # Deconvolution: conv input/output roles swapped

    def setup(self, bottom, top):
        check(len(bottom) == len(top),
              f"{self.type} needs one top per bottom ({len(bottom)} bottoms, {len(top)} tops)")
        cp = self.param.convolution_param
        self.axis = canonical_axis(cp.axis, bottom[0].num_axes)
        self.nsp = bottom[0].num_axes - self.axis - 1
        self.geom = conv_geometry(cp, self.nsp)
        self.channels = int(bottom[0].shape[self.axis])
        self.num_output = int(cp.num_output)
        check(self.num_output > 0, "convolution_param.num_output must be positive")
        self.group = int(cp.group)
        check(self.group > 0, "convolution_param.group must be positive")
        check(self.channels % self.group == 0,
              f"{self.channels} input channels are not a multiple of group {self.group}")
        check(self.num_output % self.group == 0,
              f"num_output {self.num_output} is not a multiple of group {self.group}")
        if self.reverse:
            self.conv_out, self.conv_in = self.channels, self.num_output
        else:
            self.conv_out, self.conv_in = self.num_output, self.channels
        wshape = (self.conv_out, self.conv_in // self.group) + self.geom.kernel
        self.bias_term = bool(cp.bias_term)
        self.blobs = [self.new_param(wshape, cp.weight_filler)]
        if self.bias_term:
            self.blobs.append(self.new_param((self.num_output,), cp.bias_filler))

    def reshape(self, bottom, top):
        key = tuple(b.shape for b in bottom)
        if key == getattr(self, "_reshaped_for", None):     # as last time: only the tops
            self._kept = None
            for t in top:
                t.reshape(self._top_shape)
            return
        self._reshape(bottom, top)
        self._reshaped_for = key

    def _reshape(self, bottom, top):
        b0 = bottom[0]
        check(b0.num_axes == self.axis + 1 + self.nsp,
              f"bottom has {b0.num_axes} axes, the layer was set up for "
              f"{self.axis + 1 + self.nsp}: the number of axes may not change")
        check(b0.shape[self.axis] == self.channels,
              f"bottom shape {b0.shape} has {b0.shape[self.axis]} channels at axis "
              f"{self.axis}, the weights expect {self.channels}")
        for i, b in enumerate(bottom[1:], 1):
            check(b.shape == b0.shape,
                  f"bottom {i} has shape {b.shape}, bottom 0 {b0.shape}: all must match")
        self.num = _prod(b0.shape[:self.axis])
        self.in_sp = tuple(b0.shape[self.axis + 1:])
        out_sp = (self.geom.deconv_out(self.in_sp) if self.reverse
                  else self.geom.conv_out(self.in_sp))
        if any(o <= 0 for o in out_sp):
            raise LayerError(
                f"{self.type} of input shape {b0.shape} with kernel {self.geom.kernel}, "
                f"stride {self.geom.stride}, pad {self.geom.pad}, dilation "
                f"{self.geom.dilation} gives an empty output {out_sp}")
        self.out_sp = out_sp
        # scratch of one chunk of images: the padded conv input and its im2col columns
        cin_sp, cout_sp = (out_sp, self.in_sp) if self.reverse else (self.in_sp, out_sp)
        cin = self.num_output if self.reverse else self.channels
        pads = self.geom._pads(cin_sp, cout_sp)
        item = b0.dtype.itemsize
        padded = (cin * _prod([n + lo + hi for n, (lo, hi) in zip(cin_sp, pads)]) * item
                  if any(lo or hi for lo, hi in pads) else 0)
        col = self._col_bytes(cin, cout_sp, item)
        images = self.num if col == 0 else min(self.num, max(1, COL_BUFFER_BYTES // col))
        self.check_scratch(images * (padded + col),
                           f"{self.type} of input shape {b0.shape} with kernel "
                           f"{self.geom.kernel}, pad {self.geom.pad}")
        self._kept = None
        shape = b0.shape[:self.axis] + (self.num_output,) + out_sp
        self._top_shape = shape
        for t in top:
            t.reshape(shape)

    def _ppd(self, k):
        ppd = self.param_propagate_down
        return bool(ppd[k]) if k < len(ppd) else True

    def _chunks(self, per_image_bytes):
        step = max(1, COL_BUFFER_BYTES // max(1, per_image_bytes))
        return [(a, min(self.num, a + step)) for a in range(0, self.num, step)]

    def _col_bytes(self, conv_in_sp_channels, conv_out_sp, itemsize):
        if self.geom.is_1x1 or conv_in_sp_channels == self.group:
            return 0
        return conv_in_sp_channels * self.geom.K * _prod(conv_out_sp) * itemsize

    def _bias(self):
        return self.blobs[1].data.reshape((self.num_output,) + (1,) * self.nsp)

    def _write(self, out, y):
        if self.bias_term:
            np.add(y, self._bias(), out=out)
        else:
            np.copyto(out, y)

    def _bias_grad(self, dy):
        # Caffe's GEMV per image, dy_n (C, P) @ ones (P), added into the diff
        n, c = dy.shape[:2]
        d = self.blobs[1].diff
        ones = np.ones(_prod(dy.shape[2:]), dy.dtype)
        for y in dy.reshape(n, c, -1):
            d += y @ ones

    def _backward_pairs(self, top, propagate_down, bottom):
        """Backward's common part, per bottom/top pair: the bias gradient, then
        (bottom blob, dy, x, dx or None) where there is more to do."""
        C, O = self.channels, self.num_output
        for i, (t, b) in enumerate(zip(top, bottom)):
            dy = t.diff.reshape((self.num, O) + self.out_sp)
            if self.bias_term and self._ppd(1):
                self._bias_grad(dy)
            if not (self._ppd(0) or propagate_down[i]):
                continue
            x = b.data.reshape((self.num, C) + self.in_sp)
            dx = b.diff.reshape((self.num, C) + self.in_sp) if propagate_down[i] else None
            yield b, dy, x, dx


@register("Convolution")
class Convolution(_BaseConvolution):
    __doc__ = "y = W * x + b: N-d, grouped, strided, padded, dilated.\n\n" + _DOC_CONV

    def _kept_cols_buffer(self, nbytes):
        """A buffer of this layer's own for the columns backward will need again, or
        None: only when backward will want the weight gradient, nothing rewrites the
        bottom between the passes (Net sets inputs_stable) and the net's kept columns
        stay within KEEP_COLS_BYTES."""
        old = getattr(self, "_cols_buf", None)
        if not (getattr(self, "need_backward", True) and self._ppd(0)
                and getattr(self, "inputs_stable", False)):
            nbytes = 0
        if old is not None and old.nbytes >= nbytes > 0:
            return old
        ctx = self.ctx
        held = getattr(ctx, "kept_cols_bytes", 0) - (0 if old is None else old.nbytes)
        self._cols_buf = None
        if nbytes == 0 or held + nbytes > KEEP_COLS_BYTES:
            ctx.kept_cols_bytes = held
            return None
        self._cols_buf = np.empty(nbytes // self.dtype.itemsize, self.dtype)
        ctx.kept_cols_bytes = held + nbytes
        return self._cols_buf

    def channel_dims(self, bottom):
        return (self.num, self.num_output, _prod(self.out_sp))

    def lead_forward(self, bottom, top):
        """The GEMMs; the bias is added channel range by channel range with the
        in-place layers that follow (same float operations as forward)."""
        if len(bottom) != 1:
            return None
        self._forward(bottom, top, with_bias=False)
        if not self.bias_term:
            return lambda lo, hi: None
        y = top[0].data.reshape(self.channel_dims(bottom))
        b = self.blobs[1].data
        return lambda lo, hi: kernels.add_bias(y[:, lo:hi], b[lo:hi])

    def forward(self, bottom, top):
        self._forward(bottom, top, with_bias=True)

    def _forward(self, bottom, top, with_bias):
        g, G = self.geom, self.group
        w = self.blobs[0].data
        C, O = self.channels, self.num_output
        per = self._col_bytes(C, self.out_sp, w.itemsize)
        chunks = self._chunks(per)
        P = _prod(self.out_sp)
        # the columns are built again by backward's weight gradient unless kept
        worth = len(bottom) == 1 and len(chunks) == 1 and C != G and not g.is_1x1
        buf = self._kept_cols_buffer((C * g.K * P * self.num * w.itemsize) if worth else 0)
        self._kept = None
        for b, t in zip(bottom, top):
            x = b.data.reshape((self.num, C) + self.in_sp)
            y = t.data.reshape((self.num, O) + self.out_sp)
            bias = self.blobs[1].data if self.bias_term and with_bias else None
            for a, z in chunks:
                prep = g.prepare(x[a:z], self.out_sp, G, out=buf)
                g.conv_forward(prep, w, G, z - a, self.out_sp, out=y[a:z], bias=bias)
                if buf is not None:
                    self._kept = (b.data, prep)

    def backward(self, top, propagate_down, bottom):
        g, G = self.geom, self.group
        w = self.blobs[0].data
        C = self.channels
        want_w = self._ppd(0)
        per = self._col_bytes(C, self.out_sp, w.itemsize)
        for b, dy, x, dx in self._backward_pairs(top, propagate_down, bottom):
            depthwise = C == G and not g.is_1x1
            P = _prod(self.out_sp)
            for a, z in self._chunks(per):
                # dy in group-major layout, shared by both products (unless they run
                # one GEMM per image, which needs no copy)
                shared = not (depthwise or per_image(z - a, P)) and (
                    want_w or (dx is not None and not g.is_1x1))
                dyg = g.group_major(dy[a:z], G) if shared else None
                if want_w:
                    kept = getattr(self, "_kept", None)
                    if kept is not None and kept[0] is b.data:     # forward's columns
                        prep = kept[1]
                    else:
                        prep = g.prepare(x[a:z], self.out_sp, G, backward=True)
                    g.conv_weight_grad(prep, dy[a:z], G, self.blobs[0].diff, dyg)
                if dx is not None:
                    g.conv_backward_data(dy[a:z], w, G, self.in_sp, out=dx[a:z], dyg=dyg)


@register("Deconvolution")
class Deconvolution(_BaseConvolution):
    __doc__ = "The transpose of Convolution (forward = conv backward-data).\n\n" + _DOC_CONV
    reverse = True

    def forward(self, bottom, top):
        g, G = self.geom, self.group
        w = self.blobs[0].data
        C, O = self.channels, self.num_output
        per = self._col_bytes(O, self.in_sp, w.itemsize)
        for b, t in zip(bottom, top):
            x = b.data.reshape((self.num, C) + self.in_sp)
            y = t.data.reshape((self.num, O) + self.out_sp)
            for a, z in self._chunks(per):
                self._write(y[a:z], g.conv_backward_data(x[a:z], w, G, self.out_sp))

    def backward(self, top, propagate_down, bottom):
        g, G = self.geom, self.group
        w = self.blobs[0].data
        want_w = self._ppd(0)
        per = self._col_bytes(self.num_output, self.in_sp, w.itemsize)
        for _, dy, x, dx in self._backward_pairs(top, propagate_down, bottom):
            for a, z in self._chunks(per):
                prep = g.prepare(dy[a:z], self.in_sp, G)     # col(dy), used twice
                if want_w:
                    g.conv_weight_grad(prep, x[a:z], G, self.blobs[0].diff)
                if dx is not None:
                    dx[a:z] = g.conv_forward(prep, w, G, z - a, self.in_sp)


@register("Im2col")
class Im2col(Layer):
    """Caffe's im2col as a layer: top (num, C*K, *out) with
    top[n, (c, k_1..k_m), o_1..o_m] = x_pad[n, c, o_i s_i + k_i d_i]  (channel-major rows,
    o = (n + 2p - e) / s + 1);  backward: dx = col2im(dy) (sum over the reads).
    """
    in_place_ok = False
    exact_bottoms = 1
    exact_tops = 1

    def setup(self, bottom, top):
        cp = self.param.convolution_param
        self.axis = canonical_axis(cp.axis, bottom[0].num_axes)
        self.nsp = bottom[0].num_axes - self.axis - 1
        check(self.nsp >= 1, f"Im2col needs at least one spatial axis after axis {self.axis}"
                             f" (bottom shape {bottom[0].shape})")
        self.geom = conv_geometry(cp, self.nsp)

    def reshape(self, bottom, top):
        b0 = bottom[0]
        check(b0.num_axes == self.axis + 1 + self.nsp,
              f"bottom has {b0.num_axes} axes, the layer was set up for "
              f"{self.axis + 1 + self.nsp}")
        self.num = _prod(b0.shape[:self.axis])
        self.C = int(b0.shape[self.axis])
        self.in_sp = tuple(b0.shape[self.axis + 1:])
        self.out_sp = self.geom.conv_out(self.in_sp)
        if any(o <= 0 for o in self.out_sp):
            raise LayerError(f"Im2col of input shape {b0.shape} with kernel "
                             f"{self.geom.kernel} gives an empty output {self.out_sp}")
        pads = self.geom._pads(self.in_sp, self.out_sp)
        padded = _prod([n + lo + hi for n, (lo, hi) in zip(self.in_sp, pads)])
        self.check_scratch(self.num * self.C * padded * b0.dtype.itemsize,
                           f"Im2col of input shape {b0.shape} with kernel {self.geom.kernel}, "
                           f"pad {self.geom.pad}")
        top[0].reshape(b0.shape[:self.axis] + (self.C * self.geom.K,) + self.out_sp)

    def forward(self, bottom, top):
        g, nsp = self.geom, self.nsp
        x = bottom[0].data.reshape((self.num, self.C) + self.in_sp)
        v = g.windows(g.padded(x, self.out_sp), self.out_sp)       # (n, C, *out, *k)
        perm = (0, 1) + tuple(range(2 + nsp, 2 + 2 * nsp)) + tuple(range(2, 2 + nsp))
        out = top[0].data.reshape((self.num, self.C) + g.kernel + self.out_sp)
        np.copyto(out, v.transpose(perm))

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        g = self.geom
        dy = top[0].diff.reshape((self.num, self.C) + g.kernel + self.out_sp)
        dx = g.col2im(dy, self.in_sp, self.out_sp)
        bottom[0].diff.reshape((self.num, self.C) + self.in_sp)[...] = dx

def _pool_round_ceil(pp, warn):
    """True for CEIL rounding: round_mode, or the fork field ceil_mode."""
    if "round_mode" in _POOL_FIELDS and pp.HasField("round_mode"):
        return pp.round_mode == _POOL.CEIL
    if "ceil_mode" in _POOL_FIELDS and pp.HasField("ceil_mode"):
        if not pp.ceil_mode:
            warn("pooling_param.ceil_mode is not a BVLC Caffe field: "
                 "ceil_mode: false is read as round_mode: FLOOR")
        return bool(pp.ceil_mode)
    return True


@register("Pooling")
class Pooling(Layer):
    __doc__ = ("2-D MAX / AVE / STOCHASTIC pooling (optional second top: the MAX mask).\n\n"
               + _DOC_POOL)
    in_place_ok = False
    exact_bottoms = 1
    min_tops = 1
    max_tops = 2

    def setup(self, bottom, top):
        pp = self.param.pooling_param
        self.method = pp.pool
        check(self.method in (MAX, AVE, STOCHASTIC), f"unknown pooling method {pp.pool}")
        check(len(top) == 1 or self.method == MAX,
              "only MAX pooling can have a second top (the mask)")
        self.global_pooling = pp.global_pooling
        if self.global_pooling:
            check(not (pp.HasField("kernel_size") or pp.HasField("kernel_h")
                       or pp.HasField("kernel_w")),
                  "with global_pooling: true the kernel size cannot be given")
            self.kernel = None
        else:
            check(pp.HasField("kernel_size") != (pp.HasField("kernel_h")
                                                 and pp.HasField("kernel_w")),
                  "give kernel_size, or kernel_h and kernel_w; not both")
            check(pp.HasField("kernel_size") or (pp.HasField("kernel_h")
                                                 and pp.HasField("kernel_w")),
                  "non-square pooling needs both kernel_h and kernel_w")
            self.kernel = ((pp.kernel_size, pp.kernel_size) if pp.HasField("kernel_size")
                           else (pp.kernel_h, pp.kernel_w))
            check(min(self.kernel) > 0, f"pooling kernel must be positive, got {self.kernel}")
        check((not pp.HasField("pad") and pp.HasField("pad_h") and pp.HasField("pad_w"))
              or (not pp.HasField("pad_h") and not pp.HasField("pad_w")),
              "give pad, or pad_h and pad_w")
        check((not pp.HasField("stride") and pp.HasField("stride_h")
               and pp.HasField("stride_w"))
              or (not pp.HasField("stride_h") and not pp.HasField("stride_w")),
              "give stride, or stride_h and stride_w")
        self.pad = ((pp.pad_h, pp.pad_w) if pp.HasField("pad_h") else (pp.pad, pp.pad))
        self.stride = ((pp.stride_h, pp.stride_w) if pp.HasField("stride_h")
                       else (pp.stride, pp.stride))
        check(min(self.stride) > 0, f"pooling stride must be positive, got {self.stride}")
        if self.global_pooling:
            check(self.pad == (0, 0) and self.stride == (1, 1),
                  "with global_pooling: true only pad 0 and stride 1 are allowed")
        if self.pad != (0, 0):
            check(self.method in (MAX, AVE), "padding is implemented only for AVE and MAX "
                                             "pooling")
            check(self.pad[0] < self.kernel[0] and self.pad[1] < self.kernel[1],
                  f"pad {self.pad} must be smaller than the kernel {self.kernel}")
        self.ceil = _pool_round_ceil(pp, self.ctx.warn)
        self._warned_test_backward = False

    def reshape(self, bottom, top):
        b = bottom[0]
        check(b.num_axes == 4, f"Pooling needs a 4-axis (num, channels, height, width) "
                               f"bottom, got shape {b.shape}")
        N, C, H, W = b.shape
        kernel = (H, W) if self.global_pooling else self.kernel
        self.geom = PoolGeometry(H, W, kernel, self.stride, self.pad, self.ceil)
        shape = (N, C) + self.geom.out_shape
        if min(shape) <= 0 and N * C > 0:
            raise LayerError(f"pooling {b.shape} with kernel {kernel}, stride "
                             f"{self.stride}, pad {self.pad} gives an empty output {shape}")
        ph, pw = self.geom.padded_shape()
        self.check_scratch(N * C * ph * pw * b.dtype.itemsize,
                           f"pooling {b.shape} with kernel {kernel}, pad {self.pad}")
        top[0].reshape(shape)
        if len(top) > 1:
            top[1].reshape(shape)

    def forward(self, bottom, top):
        x = bottom[0].data
        g = self.geom
        self.sel = None
        y = top[0].data if top[0] is not bottom[0] else None
        if self.method == MAX:
            if g.single_window() is not None and g.K > 16:
                r, self.idx = max_pool(x, g)
            else:
                # the argmax is only needed by a backward pass or the mask top
                select = len(top) > 1 or getattr(self, "need_backward", True)
                r, self.sel = kernels.max_pool_select(x, g, y, select=select)
                self.idx = None
            if r is not y:
                top[0].data[...] = r
            if len(top) > 1:
                if self.idx is None:
                    self.idx = kernels.select_to_index(self.sel, g, top[0].shape)
                top[1].data[...] = self.idx
        elif self.method == AVE:
            r = kernels.ave_pool(x, g, y)
            if r is not y:
                top[0].data[...] = r
        elif self.phase == caffe_pb2.TRAIN:
            u = self.ctx.rng.random(x.shape[:2] + g.out_shape)
            y, self.idx = stochastic_pool_train(x, g, u)
            top[0].data[...] = y
        else:
            self.idx = None
            top[0].data[...] = stochastic_pool_test(x, g)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        g = self.geom
        dy = top[0].diff
        if self.method == AVE:
            kernels.ave_pool_backward(dy, g, bottom[0].diff)
            return
        if self.method == MAX and len(top) > 1:
            idx = np.trunc(top[1].data).astype(np.int64)       # Caffe reads the mask top
        elif self.method == MAX and getattr(self, "idx", None) is None:
            if getattr(self, "sel", None) is None:     # forward ran without the argmax
                _, self.sel = kernels.max_pool_select(bottom[0].data, g)
            kernels.max_pool_backward(dy, self.sel, g, bottom[0].diff)
            return
        else:
            idx = self.idx
        if idx is None:                   # STOCHASTIC in TEST: Caffe has no index
            if not self._warned_test_backward:
                self.ctx.warn("STOCHASTIC pooling has no gradient in the TEST phase; "
                              "its bottom diff is set to 0")
                self._warned_test_backward = True
            bottom[0].diff[...] = 0
            return
        bottom[0].diff[...] = scatter_pool_backward(dy, idx, g)


@register("SPP")
class SPP(Layer):
    __doc__ = ("Spatial pyramid pooling: levels of 2^l x 2^l bins, flattened and "
               "concatenated.\n\n" + _DOC_SPP + "\n" + _DOC_POOL)
    in_place_ok = False
    exact_bottoms = 1
    exact_tops = 1

    def setup(self, bottom, top):
        sp = self.param.spp_param
        self.height = int(sp.pyramid_height)
        check(self.height >= 1, "spp_param.pyramid_height must be at least 1")
        self.method = sp.pool
        check(self.method in (MAX, AVE, STOCHASTIC), f"unknown pooling method {sp.pool}")

    def reshape(self, bottom, top):
        b = bottom[0]
        check(b.num_axes == 4, f"SPP needs a 4-axis (num, channels, height, width) bottom, "
                               f"got shape {b.shape}")
        N, C, H, W = b.shape
        check(H > 0 and W > 0, f"SPP input {b.shape} has an empty plane")
        self.levels = []
        for lev in range(self.height):
            bins = 2 ** lev
            kh, kw = -(-H // bins), -(-W // bins)
            ph, pw = (kh * bins - H + 1) // 2, (kw * bins - W + 1) // 2
            if ph or pw:
                check(self.method in (MAX, AVE),
                      f"SPP level {lev} of a {H}x{W} input needs padding, which only "
                      f"MAX and AVE pooling have")
                check(ph < kh and pw < kw,
                      f"SPP level {lev} ({bins}x{bins} bins) of a {H}x{W} input needs pad "
                      f"({ph}, {pw}) >= kernel ({kh}, {kw}): the input is too small")
            self.levels.append(PoolGeometry(H, W, (kh, kw), (kh, kw), (ph, pw)))
        if self.height == 1:
            top[0].reshape((N, C) + self.levels[0].out_shape)
        else:
            top[0].reshape((N, C * sum(g.oh * g.ow for g in self.levels)))

    def _pool(self, x, g):
        if self.method == MAX:
            return max_pool(x, g)
        if self.method == AVE:
            return kernels.ave_pool(x, g), None
        # the pyramid's inner pooling layers are built without a phase: always TRAIN
        u = self.ctx.rng.random(x.shape[:2] + g.out_shape)
        return stochastic_pool_train(x, g, u)

    def forward(self, bottom, top):
        x = bottom[0].data
        N = x.shape[0]
        out = top[0].data.reshape(N, -1)
        self.idx = []
        at = 0
        for g in self.levels:
            y, idx = self._pool(x, g)
            self.idx.append(idx)
            n = y[0].size
            out[:, at:at + n] = y.reshape(N, n)
            at += n

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        N, C = bottom[0].shape[:2]
        dy = top[0].diff.reshape(N, -1)
        dx = None
        at = 0
        for g, idx in zip(self.levels, self.idx):
            n = C * g.oh * g.ow
            d = dy[:, at:at + n].reshape((N, C) + g.out_shape)
            at += n
            part = (kernels.ave_pool_backward(d, g) if self.method == AVE
                    else scatter_pool_backward(d, idx, g))
            dx = part if dx is None else dx + part
        bottom[0].diff[...] = dx
