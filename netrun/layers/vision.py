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

The whole batch is one im2col and one (batched over groups) GEMM; the column buffer is
only split into chunks of images when it would exceed ``COL_BUFFER_BYTES``.  The
column buffer is built in Caffe's channel-major layout (G, Cg*K, num*P) by one strided
copy and given to BLAS transposed (the same GEMM, so the same float32 sums); the GEMM
result (positions x channels) is stored channel-major with the bias added.  A 1x1
kernel with stride 1 and no padding needs no im2col (x itself, seen transposed).  In
backward, batches of large planes (>= _BIG_PLANE positions) run one GEMM per
image instead of copying dy (and x) into group-major order.  Depthwise convolution
(one input channel per group) runs as a loop over the kernel offsets of strided
multiply-adds.  Temporaries (columns, GEMM outputs) live in reused scratch buffers.

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
MAX and AVE run as K passes over strided views, one per window offset, of the
unpadded input (or, for small planes with equal strides, of a padded plane seen flat:
one long loop per offset), over tiles of whole planes that fit in the caches.  MAX
keeps y = fmax(y, v) and the first maximum's offset (1 + k, uint8) as
sel = max(sel, (v > y) * (k + 1)); backward adds dy * (sel == k + 1) offset by offset,
last offset first (for each input, the windows that chose it in raster order: Caffe's
order of additions).  With no backward planned the argmax is skipped.

SPP (spatial pyramid pooling)
-----------------------------
Level l = 0..pyramid_height-1: bins b = 2^l, kernel = stride = ceil(n / b),
pad = (kernel b - n + 1) // 2, per axis; each level is pooled by the rules above,
flattened to (N, C * oh * ow) and the levels are concatenated along axis 1.  With
pyramid_height 1 the single level's (N, C, oh, ow) pooling is the top.  dx is the sum
of the levels' pooling gradients.
"""
import math
import threading

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..errors import LayerError, check
from ..proto import caffe_pb2
from ._tiles import in_parts, parallel_copyto, run_tiles, tile_ranges
from .base import Layer, canonical_axis, register

FLT_MAX = float(np.finfo(np.float32).max)
FLT_MIN = float(np.finfo(np.float32).tiny)

# Largest column buffer built at once; bigger batches are processed in chunks of images.
COL_BUFFER_BYTES = 1 << 28
_DOC_CONV = __doc__[__doc__.index("Convolution geometry"):__doc__.index("Pooling (2-D")]
_DOC_POOL = __doc__[__doc__.index("Pooling (2-D"):__doc__.index("SPP (spatial")]
_DOC_SPP = __doc__[__doc__.index("SPP (spatial"):]

_POOL = caffe_pb2.PoolingParameter
MAX, AVE, STOCHASTIC = _POOL.MAX, _POOL.AVE, _POOL.STOCHASTIC
_POOL_FIELDS = set(_POOL.DESCRIPTOR.fields_by_name)
_ALL = slice(None)


def _prod(xs):
    out = 1
    for x in xs:
        out *= int(x)
    return out


_SCRATCH = threading.local()


def scratch(name, shape, dtype):
    """A reusable per-thread buffer for a temporary (column buffers, GEMM outputs):
    allocating hundreds of MB afresh in every call costs page faults.  Contents are
    undefined; the array is valid until the next request of the same name."""
    bufs = getattr(_SCRATCH, "bufs", None)
    if bufs is None:
        bufs = _SCRATCH.bufs = {}
    dt = np.dtype(dtype)
    n = _prod(shape)
    b = bufs.get((name, dt))
    if b is None or b.size < n:
        b = bufs[(name, dt)] = np.empty(max(n, 1), dt)
    return b[:n].reshape(shape)


def release_scratch():
    """Free this thread's scratch buffers."""
    _SCRATCH.bufs = {}


def _cdiv(a, b):
    """C integer division (truncates toward zero), as Caffe computes output sizes."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


# =====================================================================================
# Convolution geometry: im2col / col2im and the three products
# =====================================================================================
class ConvGeometry:
    """Kernel, stride, pad and dilation of an N-d convolution (N >= 0 spatial axes)."""

    def __init__(self, kernel, stride, pad, dilation):
        self.kernel = tuple(int(k) for k in kernel)
        self.stride = tuple(int(s) for s in stride)
        self.pad = tuple(int(p) for p in pad)
        self.dilation = tuple(int(d) for d in dilation)
        self.nsp = len(self.kernel)
        self.extent = tuple(d * (k - 1) + 1 for k, d in zip(self.kernel, self.dilation))
        self.K = _prod(self.kernel)
        self.is_1x1 = all(k == 1 and s == 1 and p == 0
                          for k, s, p in zip(self.kernel, self.stride, self.pad))

    def conv_out(self, in_sp):
        return tuple(_cdiv(n + 2 * p - e, s) + 1
                     for n, p, e, s in zip(in_sp, self.pad, self.extent, self.stride))

    def deconv_out(self, in_sp):
        return tuple(s * (n - 1) + e - 2 * p
                     for n, p, e, s in zip(in_sp, self.pad, self.extent, self.stride))

    # -- padding and windows -----------------------------------------------------------
    def _pads(self, in_sp, out_sp):
        """(before, after) per axis so every window lies inside the padded array."""
        return [(p, max(0, (o - 1) * s + e - n - p))
                for n, o, p, s, e in zip(in_sp, out_sp, self.pad, self.stride, self.extent)]

    def padded(self, x, out_sp):
        """x (num, C, *in) zero-padded (x itself when no padding is needed)."""
        pads = self._pads(x.shape[2:], out_sp)
        if not any(lo or hi for lo, hi in pads):
            return x
        xp = np.zeros(x.shape[:2] + tuple(n + lo + hi for n, (lo, hi) in
                                          zip(x.shape[2:], pads)), x.dtype)
        xp[(_ALL, _ALL) + tuple(slice(lo, lo + n) for n, (lo, _) in
                                zip(x.shape[2:], pads))] = x
        return xp

    def windows(self, xp, out_sp):
        """Read-only view (num, C, *out, *kernel) of the padded input."""
        st = xp.strides
        shape = xp.shape[:2] + tuple(out_sp) + self.kernel
        strides = (st[:2] + tuple(st[2 + i] * s for i, s in enumerate(self.stride))
                   + tuple(st[2 + i] * d for i, d in enumerate(self.dilation)))
        return as_strided(xp, shape, strides, writeable=False)

    def offset_slices(self, kidx, out_sp):
        """Slices of the padded input read by kernel offset ``kidx`` for all outputs."""
        return tuple(slice(k * d, k * d + s * (o - 1) + 1, s)
                     for k, d, s, o in zip(kidx, self.dilation, self.stride, out_sp))

    def padded_scratch(self, x, out_sp, name="pad"):
        """padded(x) in a scratch buffer (only the border is zeroed)."""
        pads = self._pads(x.shape[2:], out_sp)
        if not any(lo or hi for lo, hi in pads):
            return x
        xp = scratch(name, x.shape[:2] + tuple(n + lo + hi for n, (lo, hi) in
                                               zip(x.shape[2:], pads)), x.dtype)
        for ax, (n, (lo, hi)) in enumerate(zip(x.shape[2:], pads)):
            pre = (_ALL,) * (2 + ax)
            if lo:
                xp[pre + (slice(0, lo),)] = 0
            if hi:
                xp[pre + (slice(lo + n, None),)] = 0
        inner = (_ALL, _ALL) + tuple(slice(lo, lo + n) for n, (lo, _) in
                                     zip(x.shape[2:], pads))
        parallel_copyto(xp[inner], x)
        return xp

    def im2col(self, x, out_sp, group=1, out=None):
        """Transposed column buffer (G, num*P, Cg*K): one row per output position
        (n, *out), one column per (c, *k) of the group, channel-major as Caffe's
        im2col.  Multiplying it by W_g^T reproduces Caffe's GEMM summation order.

        Built as Caffe's buffer (G, Cg*K, num*P) -- one strided copy whose inner
        loop runs along the output rows -- and returned as its transposed view (a
        Fortran-ordered operand BLAS reads as is; the sums are the same)."""
        num, C = x.shape[:2]
        nsp = self.nsp
        P = _prod(out_sp)
        v = self.windows(self.padded_scratch(x, out_sp), out_sp)    # (num, C, *out, *k)
        perm = ((1,) + tuple(range(2 + nsp, 2 + 2 * nsp)) + (0,)
                + tuple(range(2, 2 + nsp)))
        shape = (C,) + self.kernel + (num,) + tuple(out_sp)
        cols = (scratch("cols", shape, x.dtype) if out is None
                else out.reshape(-1)[:_prod(shape)].reshape(shape))
        parallel_copyto(cols, v.transpose(perm))
        return cols.reshape(group, C // group * self.K, num * P).transpose(0, 2, 1)

    def col2im(self, cols, in_sp, out_sp, out=None):
        """Sum a column view (num, C, *kernel, *out) back into a (num, C, *in) image
        (written into ``out`` when given).  Reads that fell in the padding are
        dropped; each input adds its reads in kernel order, as Caffe's col2im."""
        num, C = cols.shape[:2]
        acc = out if out is not None else np.empty((num, C) + tuple(in_sp), cols.dtype)
        if _prod(out_sp) == 0:
            acc.fill(0)
            return acc
        ranges = [[_pool_axis_range(n, o, k * d, s, p) for k in range(ks)]
                  for n, o, ks, d, s, p in zip(in_sp, out_sp, self.kernel, self.dilation,
                                                 self.stride, self.pad)]
        steps = []
        for kidx in np.ndindex(*self.kernel):
            r = [ranges[a][k] for a, k in enumerate(kidx)]
            if all(x is not None for x in r):
                steps.append((tuple(x[1] for x in r), kidx + tuple(x[0] for x in r)))

        def channels(lo, hi):                 # each channel range on its own
            a = acc[:, lo:hi]
            a.fill(0)
            c = cols[:, lo:hi]
            for isl, csl in steps:
                a[(_ALL, _ALL) + isl] += c[(_ALL, _ALL) + csl]
        in_parts(channels, C, cols.size * cols.itemsize)
        return acc

    def cols_view(self, cols, C, num, out_sp):
        """The (C*K, num*P) buffer seen as (num, C, *kernel, *out) (no copy)."""
        nsp = self.nsp
        v = cols.reshape((C,) + self.kernel + (num,) + tuple(out_sp))
        perm = (1 + nsp, 0) + tuple(range(1, 1 + nsp)) + tuple(range(2 + nsp, 2 + 2 * nsp))
        return v.transpose(perm)

    # -- the conv products -------------------------------------------------------------
    # x: conv input (num, Ci, *in);  dy / y: conv output (num, Co, *out);
    # w: (Co, Ci/G, *kernel).  Deconvolution uses them with the roles swapped.

    def prepare(self, x, out_sp, group, backward=False, out=None):
        """What conv_forward / conv_weight_grad read from the conv input x:
        the transposed columns (G, num*P, Cg*K); for the weight gradient of a
        depthwise convolution the input itself (its own kernels), of a 1x1
        convolution over large planes x itself.

        A depthwise forward goes through the columns and one GEMM per group, as
        Caffe's: BLAS then sums each output's K products in Caffe's order (the
        conformance case comes out bit-identical; the element-wise kernels round
        after every product and differ in the last bit)."""
        if backward and x.shape[1] == group and not self.is_1x1:   # depthwise
            if self._wide_ok(x.shape[2:]):
                return ("dw-wide", x)
            return ("dw", self.padded(x, out_sp))
        if self.is_1x1:
            num, C = x.shape[:2]
            P = _prod(x.shape[2:])
            Cg = C // group
            if num == 1:                                 # x itself, seen transposed
                return ("cols", x.reshape(group, Cg, P).transpose(0, 2, 1))
            if backward and per_image(num, P):
                return ("x", x.reshape(num, group, Cg, P))
            xt = (scratch("cols", (C, num, P), x.dtype) if out is None
                  else out.reshape(-1)[:C * num * P].reshape(C, num, P))
            parallel_copyto(xt, x.reshape(num, C, P).transpose(1, 0, 2))
            return ("cols", xt.reshape(group, Cg, num * P).transpose(0, 2, 1))
        return ("cols", self.im2col(x, out_sp, group, out))

    def conv_forward(self, prep, w, group, num, out_sp, out=None, bias=None):
        """y[n, o] = sum_{c in group(o), k} w[o, c, k] x_pad[n, c, out s + k d] (+ bias[o]).

        Computed as cols (G, num*P, Cg*K) @ W_g^T: the operand order Caffe's
        row-major GEMM hands to BLAS, so the sums come out in Caffe's order.
        Written into ``out`` (num, Co, *out) when given, else returned as a view
        of a scratch buffer."""
        kind, a = prep
        assert kind == "cols", kind
        Co = w.shape[0]
        G, Og, P = group, Co // group, _prod(out_sp)
        wt = w.reshape(G, Og, -1).transpose(0, 2, 1)                  # (G, Cg*K, Og)
        r = np.matmul(a, wt, out=scratch("gemm", (G, num * P, Og), w.dtype))
        if out is not None:
            _store_transposed(r.reshape(G, num, P, Og), out.reshape(num, G, Og, P), bias)
            return out
        y = r.reshape(G, num, P, Og).transpose(1, 0, 3, 2)             # (num, G, Og, P)
        y = y.reshape((num, Co) + tuple(out_sp))
        if bias is not None:
            y = y + bias.reshape((Co,) + (1,) * len(out_sp))
        return y

    @staticmethod
    def group_major(dy, group):
        """dy (num, G*Og, *sp) as (G, Og, num*P): a view for one image, else a copy
        in a scratch buffer."""
        num, Co = dy.shape[:2]
        Og, P = Co // group, _prod(dy.shape[2:])
        if num == 1:
            return dy.reshape(group, Og, P)
        dyg = scratch("dyg", (Co, num, P), dy.dtype)
        parallel_copyto(dyg, dy.reshape(num, Co, P).transpose(1, 0, 2))
        return dyg.reshape(group, Og, num * P)

    def conv_backward_data(self, dy, w, group, in_sp, out=None, dyg=None):
        """dx = col2im(W_g^T dy_g): the transpose of conv_forward (into ``out``)."""
        num, Co = dy.shape[:2]
        out_sp = dy.shape[2:]
        Cg = w.shape[1]
        G, Og, P, K = group, Co // group, _prod(out_sp), self.K
        Ci = Cg * G
        wt = w.reshape(G, Og, Cg * K).transpose(0, 2, 1)          # (G, Cg*K, Og)
        if out is None:
            out = np.empty((num, Ci) + tuple(in_sp), dy.dtype)
        if self.is_1x1:                                 # one GEMM per image, no copies
            np.matmul(wt, dy.reshape(num, G, Og, P), out=out.reshape(num, G, Cg, P))
            return out
        if Cg == 1 and Og == 1 and self._wide_ok(in_sp):
            return self._dw_wide_backward_data(dy, w, in_sp, out)
        if Cg == 1:
            out[...] = self._dw_backward_data(dy, w, G, in_sp)
            return out
        if dyg is None and per_image(num, P):
            # one GEMM per image, written straight into the (G, Cg*K, num, P) buffer
            dcols = scratch("dcols", (G, Cg * K, num, P), dy.dtype)
            np.matmul(wt, dy.reshape(num, G, Og, P), out=dcols.transpose(2, 0, 1, 3))
            dcols = dcols.reshape(G, Cg * K, num * P)
        else:
            if dyg is None:
                dyg = self.group_major(dy, G)
            dcols = np.matmul(wt, dyg, out=scratch("dcols", (G, Cg * K, num * P), dy.dtype))
        return self.col2im(self.cols_view(dcols, Ci, num, out_sp), in_sp, out_sp, out)

    def conv_weight_grad(self, prep, dy, group, dyg=None):
        """dW_g = dy_g cols_g, shape (Co, Ci/G, *kernel)."""
        kind, a = prep
        num, Co = dy.shape[:2]
        out_sp = dy.shape[2:]
        G, Og, P = group, Co // group, _prod(out_sp)
        if kind == "dw-wide" and Og == 1:
            return self._dw_wide_weight_grad(a, dy)
        if kind == "dw-wide":
            return self._dw_weight_grad(self.padded(a, out_sp), dy, G)
        if kind == "dw":
            return self._dw_weight_grad(a, dy, G)
        kernel = (1,) * self.nsp if self.is_1x1 else self.kernel
        if kind == "x":                      # 1x1, per image: x itself, seen transposed
            Cg = a.shape[2]
            dw = np.matmul(dy.reshape(num, G, Og, P), a.transpose(0, 1, 3, 2))
            return dw.sum(axis=0).reshape((Co, Cg) + kernel)
        Cg = a.shape[2] // _prod(kernel)
        if dyg is None and per_image(num, P):
            # sum over images of dy_n cols_n^T (as Caffe accumulates), no copy of dy
            cols = a.transpose(0, 2, 1).reshape(G, a.shape[2], num, P).transpose(2, 0, 3, 1)
            dw = np.matmul(dy.reshape(num, G, Og, P), cols)
            return dw.sum(axis=0).reshape((Co, Cg) + kernel)
        if dyg is None:
            dyg = self.group_major(dy, G)
        return np.matmul(dyg, a).reshape((Co, Cg) + kernel)

    # -- depthwise backward (the forward is a GEMM per group, as Caffe's) ---------------
    # 2-D with equal strides: each plane as one flat row.
    # The padded plane (Hp, Wp) read by kernel offset (i, j) for output (r, q) is
    # flat[i d Wp + j d + s (r Wp + q)]: one strided slice of length
    # L = (oh - 1) Wp + ow for all outputs, in a "wide" grid of rows Wp long whose
    # columns q >= ow are discarded.  Long rows instead of one short row per output
    # line: a 14x14 plane costs 9 multiply-adds of 200 elements, not 126 of 14.
    # Other depthwise geometries loop over kernel offsets on the padded plane.
    def _wide_ok(self, in_sp):
        return self.nsp == 2 and self.stride[0] == self.stride[1] and all(in_sp)

    def _wide(self, in_sp, out_sp):
        """(Hp, Wp, L, [(k, flat slice)]) of the wide layout."""
        pads = self._pads(in_sp, out_sp)
        Hp, Wp = (n + lo + hi for n, (lo, hi) in zip(in_sp, pads))
        s = self.stride[0]
        L = (out_sp[0] - 1) * Wp + out_sp[1]
        offs = []
        for ki, (i, j) in enumerate(np.ndindex(*self.kernel)):
            b = i * self.dilation[0] * Wp + j * self.dilation[1]
            offs.append((ki, slice(b, b + s * (L - 1) + 1, s)))
        return Hp, Wp, L, offs

    def _plane_weights(self, w, num):
        """w (G, 1, kh, kw) as one row of K weights per (image, channel) plane."""
        G = w.shape[0]
        return np.broadcast_to(w.reshape(1, G, self.K), (num, G, self.K)).reshape(num * G,
                                                                                   self.K)

    def _dw_wide_backward_data(self, dy, w, in_sp, out):
        num, G = dy.shape[:2]
        out_sp = dy.shape[2:]
        Hp, Wp, L, offs = self._wide(in_sp, out_sp)
        dyw = wide_grid(dy, Wp, "dw_dy")
        wk = self._plane_weights(w, num)
        acc = scratch("dw_acc", (num * G, Hp, Wp), dy.dtype)
        (plo, _), (wlo, _) = self._pads(in_sp, out_sp)
        H, W = in_sp
        o3 = out.reshape(num * G, H, W)

        def planes(lo, hi):
            a = acc[lo:hi].reshape(hi - lo, Hp * Wp)
            a.fill(0)
            tmp = np.empty((hi - lo, L), dy.dtype)
            for ki, sl in offs:       # each input adds its reads in kernel order
                np.multiply(dyw[lo:hi, :L], wk[lo:hi, ki:ki + 1], out=tmp)
                a[:, sl] += tmp
            np.copyto(o3[lo:hi], acc[lo:hi, plo:plo + H, wlo:wlo + W])
        run_tiles(planes, tile_ranges(num * G, Hp * Wp * dy.itemsize, POOL_TILE_BYTES))
        return out

    def _dw_wide_weight_grad(self, x, dy):
        num, G = x.shape[:2]
        out_sp = dy.shape[2:]
        Hp, Wp, L, offs = self._wide(x.shape[2:], out_sp)
        xf = self.padded_scratch(x, out_sp, "dw_pad").reshape(num * G, Hp * Wp)
        dyw = wide_grid(dy, Wp, "dw_dy")
        dw = np.empty((num * G, self.K), dy.dtype)

        def planes(lo, hi):
            for ki, sl in offs:
                dw[lo:hi, ki] = np.einsum("pl,pl->p", dyw[lo:hi, :L], xf[lo:hi, sl])
        run_tiles(planes, tile_ranges(num * G, Hp * Wp * dy.itemsize, POOL_TILE_BYTES))
        return dw.reshape(num, G, self.K).sum(axis=0).reshape((G, 1) + self.kernel)

    def _dw_backward_data(self, dy, w, G, in_sp):
        num, Co = dy.shape[:2]
        out_sp = dy.shape[2:]
        Og = Co // G
        nsp = self.nsp
        wk = w.reshape(G, Og, self.K)
        dy5 = dy.reshape((num, G, Og) + tuple(out_sp))
        pads = self._pads(in_sp, out_sp)
        acc = np.zeros((num, G) + tuple(n + lo + hi for n, (lo, hi) in zip(in_sp, pads)),
                       dy.dtype)
        tmp = np.empty((num, G) + tuple(out_sp), dy.dtype)
        for ki, kidx in enumerate(np.ndindex(*self.kernel)):
            if Og == 1:
                np.multiply(dy5[:, :, 0], wk[:, 0, ki].reshape((G,) + (1,) * nsp), out=tmp)
            else:
                np.einsum("ngj...,gj->ng...", dy5, wk[:, :, ki], out=tmp)
            acc[(_ALL, _ALL) + self.offset_slices(kidx, out_sp)] += tmp
        return acc[(_ALL, _ALL) + tuple(slice(lo, lo + n) for n, (lo, _) in
                                        zip(in_sp, pads))]

    def _dw_weight_grad(self, xp, dy, G):
        num, Co = dy.shape[:2]
        out_sp = dy.shape[2:]
        Og = Co // G
        dy5 = dy.reshape((num, G, Og) + tuple(out_sp))
        dw = np.empty((G, Og, self.K), dy.dtype)
        sp = "pqrstuvwxyz"[:self.nsp]
        for ki, kidx in enumerate(np.ndindex(*self.kernel)):
            xs = xp[(_ALL, _ALL) + self.offset_slices(kidx, out_sp)]
            dw[:, :, ki] = np.einsum(f"ngj{sp},ng{sp}->gj", dy5, xs)
        return dw.reshape((Co, 1) + self.kernel)


# A net's convolutions keep the columns of their forward pass for the weight gradient
# (instead of building them again) up to this many bytes in all; Caffe rebuilds them.
KEEP_COLS_BYTES = 128 << 20

# In backward, batches of planes this large run one GEMM per image (no group-major
# copies of dy and x); smaller planes are copied into one GEMM over the batch.
_BIG_PLANE = 1024


def per_image(num, P):
    return num > 1 and P >= _BIG_PLANE


def _store_transposed(r, out, bias):
    """out[n, g, o, p] = r[g, n, p, o] (+ bias[g*Og + o]): the GEMM's (position,
    channel) rows into the blob's channel-major layout.  numpy's element-wise
    transposed copy is slow; moving 16-byte units (4 channels) first and then
    splitting them is about twice as fast."""
    G, num, P, Og = r.shape
    if Og % 4 == 0 and r.strides[-1] == 4 == r.dtype.itemsize and r.strides[-2] % 16 == 0:
        t = scratch("transpose", (G, num, Og // 4, P, 4), r.dtype)
        v16 = np.dtype((np.void, 16))
        tv = t.view(v16).reshape(G, num, Og // 4, P)
        rv = r.view(v16).reshape(G, num, P, Og // 4).transpose(0, 1, 3, 2)
        in_parts(lambda lo, hi: np.copyto(tv[:, :, lo:hi], rv[:, :, lo:hi]), Og // 4,
                 2 * r.nbytes)
        src = t.transpose(1, 0, 2, 4, 3)                     # (num, G, Og/4, 4, P)
        dst = out.reshape(num, G, Og // 4, 4, P)
        bshape = (1, G, Og // 4, 4, 1)
    else:
        src = r.transpose(1, 0, 3, 2)                        # (num, G, Og, P)
        dst = out
        bshape = (1, G, Og, 1)
    b = None if bias is None else np.broadcast_to(bias.reshape(bshape), bshape)

    def part(lo, hi):                            # a range of channels (or of 4s)
        d, s = dst[:, :, lo:hi], src[:, :, lo:hi]
        if b is None:
            np.copyto(d, s)
        else:
            np.add(s, b[:, :, lo:hi], out=d)
    in_parts(part, dst.shape[2], 2 * out.nbytes)


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
        # numpy's pairwise sum along each contiguous plane, then over the images
        n, c = dy.shape[:2]
        self.blobs[1].diff += dy.reshape(n, c, -1).sum(axis=2).sum(axis=0)

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

    def forward(self, bottom, top):
        g, G = self.geom, self.group
        w = self.blobs[0].data
        C, O = self.channels, self.num_output
        per = self._col_bytes(C, self.out_sp, w.itemsize)
        chunks = self._chunks(per)
        P = _prod(self.out_sp)
        # the columns are built again by backward's weight gradient unless kept
        worth = (len(bottom) == 1 and len(chunks) == 1 and C != G
                 and (not g.is_1x1 or (self.num > 1 and not per_image(self.num, P))))
        buf = self._kept_cols_buffer(
            (C * (1 if g.is_1x1 else g.K) * P * self.num * w.itemsize) if worth else 0)
        self._kept = None
        for b, t in zip(bottom, top):
            x = b.data.reshape((self.num, C) + self.in_sp)
            y = t.data.reshape((self.num, O) + self.out_sp)
            bias = self.blobs[1].data if self.bias_term else None
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
                    self.blobs[0].diff += g.conv_weight_grad(prep, dy[a:z], G, dyg)
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
                    self.blobs[0].diff += g.conv_weight_grad(prep, x[a:z], G)
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


# =====================================================================================
# Pooling
# =====================================================================================
class PoolGeometry:
    """2-D pooling windows (Caffe's PoolingLayer::Reshape rules)."""

    def __init__(self, H, W, kernel, stride, pad, ceil=True):
        self.H, self.W = int(H), int(W)
        self.kh, self.kw = (int(k) for k in kernel)
        self.sh, self.sw = (int(s) for s in stride)
        self.ph, self.pw = (int(p) for p in pad)
        rnd = math.ceil if ceil else math.floor
        oh = int(rnd((self.H + 2 * self.ph - self.kh) / self.sh)) + 1
        ow = int(rnd((self.W + 2 * self.pw - self.kw) / self.sw)) + 1
        if self.ph or self.pw:
            # the last window must start inside the image or its left/top padding
            if (oh - 1) * self.sh >= self.H + self.ph:
                oh -= 1
            if (ow - 1) * self.sw >= self.W + self.pw:
                ow -= 1
        self.oh, self.ow = oh, ow
        self.out_shape = (oh, ow)
        # Two windows along an axis and a stride past the input (no pad, CEIL): the
        # second window lies wholly outside whatever the stride.  A stride just past
        # the input gives the same results (window content, its -1 index, the sign of
        # its AVE divisor) without padded buffers as long as the stride.
        if oh == 2 and self.sh > self.H + self.ph + self.kh:
            self.sh = self.H + self.ph + self.kh
        if ow == 2 and self.sw > self.W + self.pw + self.kw:
            self.sw = self.W + self.pw + self.kw
        self.K = self.kh * self.kw
        self.overlap = self.sh < self.kh or self.sw < self.kw

    def starts(self):
        """Window starts (may be negative) along h and w."""
        return (np.arange(self.oh) * self.sh - self.ph, np.arange(self.ow) * self.sw - self.pw)

    def padded_shape(self):
        """(H, W) of the padded input every (unclipped) window lies inside."""
        rh = max(0, (self.oh - 1) * self.sh + self.kh - self.H - self.ph)
        rw = max(0, (self.ow - 1) * self.sw + self.kw - self.W - self.pw)
        return self.ph + self.H + rh, self.pw + self.W + rw

    def padded(self, x, value):
        """x (N, C, H, W) padded with ``value`` so every (unclipped) window lies inside."""
        rh = max(0, (self.oh - 1) * self.sh + self.kh - self.H - self.ph)
        rw = max(0, (self.ow - 1) * self.sw + self.kw - self.W - self.pw)
        if not (self.ph or self.pw or rh or rw):
            return x
        xp = np.full(x.shape[:2] + (self.ph + self.H + rh, self.pw + self.W + rw), value,
                     x.dtype)
        xp[:, :, self.ph:self.ph + self.H, self.pw:self.pw + self.W] = x
        return xp

    def offsets(self):
        """(kh, kw, slices into the padded input) in row-major window order."""
        for i in range(self.kh):
            for j in range(self.kw):
                yield i, j, (_ALL, _ALL, slice(i, i + self.sh * (self.oh - 1) + 1, self.sh),
                             slice(j, j + self.sw * (self.ow - 1) + 1, self.sw))

    def valid_offsets(self):
        """(k, out_slices, in_slices) per window offset (kh, kw), k = kh * kernel_w + kw
        in row-major order: the outputs whose window reaches a real pixel at that
        offset, and those pixels (a strided view of the unpadded input)."""
        hr = [_pool_axis_range(self.H, self.oh, i, self.sh, self.ph) for i in range(self.kh)]
        wr = [_pool_axis_range(self.W, self.ow, j, self.sw, self.pw) for j in range(self.kw)]
        out = []
        for i in range(self.kh):
            for j in range(self.kw):
                if hr[i] is None or wr[j] is None:
                    continue
                out.append((i * self.kw + j, (_ALL, _ALL, hr[i][0], wr[j][0]),
                            (_ALL, _ALL, hr[i][1], wr[j][1])))
        return out

    def window_base(self):
        """In-plane index of every window's (unclipped) start, (oh, ow) int64."""
        hs, ws = self.starts()
        return hs[:, None].astype(np.int64) * self.W + ws[None, :]

    def in_plane_index(self, kh, kw):
        """h*W + w of window offset (kh, kw) for every output, shape (oh, ow)."""
        hs, ws = self.starts()
        return (hs + kh)[:, None] * self.W + (ws + kw)[None, :]

    def pool_size(self):
        """AVE divisor: the window clipped to the padded input, shape (oh, ow)."""
        hs, ws = self.starts()
        sh = np.minimum(hs + self.kh, self.H + self.ph) - hs
        sw = np.minimum(ws + self.kw, self.W + self.pw) - ws
        return sh[:, None] * sw[None, :]

    def single_window(self):
        """(h0, h1, w0, w1) of the real pixels when there is a single output, else None."""
        if self.oh != 1 or self.ow != 1:
            return None
        return (max(-self.ph, 0), min(self.kh - self.ph, self.H),
                max(-self.pw, 0), min(self.kw - self.pw, self.W))


def _pool_axis_range(n, o, k, s, p):
    """(output slice, input slice) along one axis for window offset k: the outputs
    r with 0 <= r s - p + k < n and the input positions they read; None if none."""
    lo = max(0, -((k - p) // s))
    hi = min(o - 1, (n - 1 + p - k) // s)
    if hi < lo:
        return None
    first = lo * s - p + k
    return slice(lo, hi + 1), slice(first, first + (hi - lo) * s + 1, s)


def max_pool(x, g, out=None):
    """(y, idx): window maxima and their in-plane index h*W + w (-1: none)."""
    N, C = x.shape[:2]
    neg = x.dtype.type(-FLT_MAX)
    sw = g.single_window()
    if sw is not None and g.K > 16:
        h0, h1, w0, w1 = sw
        rw = w1 - w0
        if h1 <= h0 or rw <= 0:
            return np.full((N, C, 1, 1), neg, x.dtype), np.full((N, C, 1, 1), -1, np.int64)
        v = x[:, :, h0:h1, w0:w1].reshape(N, C, -1)
        k = np.argmax(v, axis=-1)
        m = np.take_along_axis(v, k[..., None], -1)[..., 0]
        if np.isnan(m).any():                      # NaN never wins a strict > comparison
            v = np.where(np.isnan(v), -np.inf, v).astype(x.dtype)
            k = np.argmax(v, axis=-1)
            m = np.take_along_axis(v, k[..., None], -1)[..., 0]
        none = ~(m > neg)
        idx = (k // rw + h0) * g.W + (k % rw + w0)
        y = np.where(none, neg, m).astype(x.dtype)
        idx = np.where(none, -1, idx)
        return y.reshape(N, C, 1, 1), idx.reshape(N, C, 1, 1).astype(np.int64)
    y, sel = max_pool_select(x, g, out)
    return y, select_to_index(sel, g, y.shape)


class _WidePlan:
    """Pooling on the padded input seen as flat rows, one per (n, c) plane.

    With equal strides s the padded plane is first split into its s x s phases
    (rows and columns taken every s-th, from offsets a, b < s), each (Hq, Wq) =
    (ceil(Hp / s), ceil(Wp / s)).  Window offset (i, j) of output (r, q) reads
    padded (r s + i, q s + j): phase (i mod s, j mod s) at (r + i div s, q + j div s),
    i.e. flat index base(i, j) + r Wq + q.  So every offset is ONE contiguous slice of
    length L = (oh - 1) Wq + ow for all outputs at once, in a "wide" grid of rows Wq
    long whose columns q >= ow are discarded: a few long unit-stride numpy loops
    instead of one short strided loop per output row (s = 1 needs no split)."""

    def __init__(self, g, NC):
        self.g, self.NC = g, NC
        self.Hp, self.Wp = g.padded_shape()
        s = self.s = g.sh
        self.Hq, self.Wq = -(-self.Hp // s), -(-self.Wp // s)
        self.L = (g.oh - 1) * self.Wq + g.ow
        self.size = s * s * self.Hq * self.Wq          # one plane's phases, flat
        plane = self.Hq * self.Wq
        self.offsets = []                              # (k, flat slice), row-major k
        for i in range(g.kh):
            for j in range(g.kw):
                b = ((i % s) * s + j % s) * plane + (i // s) * self.Wq + j // s
                self.offsets.append((i * g.kw + j, slice(b, b + self.L)))

    @staticmethod
    def usable(g, NC):
        # (a stride above 4: few phases are ever read; the offset loop does less)
        return g.sh == g.sw <= 4 and NC > 0 and g.oh > 0 and g.ow > 0

    @staticmethod
    def row(g):
        """Length of a wide grid's rows."""
        return -(-g.padded_shape()[1] // g.sh)

    def padded(self, x, value, name):
        """(NC, size) scratch: x with ``value`` around it, split into phases."""
        g, s = self.g, self.s
        full = scratch(name + ("" if s == 1 else "_full"),
                       (self.NC, self.Hq * s, self.Wq * s), x.dtype)
        full[:, :g.ph] = value
        full[:, g.ph + g.H:] = value
        full[:, g.ph:g.ph + g.H, :g.pw] = value
        full[:, g.ph:g.ph + g.H, g.pw + g.W:] = value
        full[:, g.ph:g.ph + g.H, g.pw:g.pw + g.W] = x.reshape(self.NC, g.H, g.W)
        if s == 1:
            return full.reshape(self.NC, self.size)
        phases = scratch(name, (self.NC, s, s, self.Hq, self.Wq), x.dtype)
        for a in range(s):
            for b in range(s):
                np.copyto(phases[:, a, b], full[:, a::s, b::s])
        return phases.reshape(self.NC, self.size)

    def grid(self, dtype, name=None):
        """A wide output grid (NC, oh*Wq) and its computed part (NC, L)."""
        shape = (self.NC, self.g.oh * self.Wq)
        a = scratch(name, shape, dtype) if name else np.empty(shape, dtype)
        return a, a[:, :self.L]

    def crop(self, wide, out):
        """The (N, C, oh, ow) outputs of a wide grid, copied into ``out``."""
        g = self.g
        np.copyto(out, wide.reshape(out.shape[:2] + (g.oh, self.Wq))[..., :g.ow])
        return out

    def spread(self, a, name):
        """(N, C, oh, ow) -> the computed part of a wide grid (see wide_grid)."""
        return wide_grid(a, self.Wq, name)[:, :self.L]

    def unpad(self, flat, out):
        """(NC, size) phases of a padded plane -> its unpadded part, into ``out``."""
        g, s = self.g, self.s
        if s == 1:
            full = flat.reshape(self.NC, self.Hq, self.Wq)
        else:
            phases = flat.reshape(self.NC, s, s, self.Hq, self.Wq)
            full = scratch("pool_full", (self.NC, self.Hq * s, self.Wq * s), flat.dtype)
            for a in range(s):
                for b in range(s):
                    np.copyto(full[:, a::s, b::s], phases[:, a, b])
        np.copyto(out, full[:, g.ph:g.ph + g.H, g.pw:g.pw + g.W].reshape(out.shape))
        return out


def wide_grid(a, row, name):
    """(N, C, oh, ow) as a wide grid (N*C, oh*row) in a scratch buffer, zero in the
    columns ow..row-1 that flat-plane kernels compute and discard (see _WidePlan)."""
    N, C, oh, ow = a.shape
    wide = scratch(name, (N * C, oh, row), a.dtype)
    wide[:, :, ow:] = 0
    parallel_copyto(wide[:, :, :ow], a.reshape(N * C, oh, ow))
    return wide.reshape(N * C, oh * row)


def _sel_dtype(g):
    return np.uint8 if g.K < 255 else np.int32


# Pooling runs over tiles of whole (n, c) planes whose input fits in the caches: its
# K-pass kernels then read memory once instead of K times (3x faster for big batches).
# Measured on 2 cores: 2 MB tiles beat 1 MB (fewer numpy calls) and 256 KB is 2-3x
# slower than either (each call's overhead outweighs the cache).
POOL_TILE_BYTES = 2 << 20


def _plane_tiles(NC, plane_bytes):
    return tile_ranges(NC, plane_bytes, POOL_TILE_BYTES)


def _planes(a):
    """(N, C, h, w) -> (N*C, 1, h, w) view: tiles of planes keep the 4-axis layout."""
    return a.reshape((-1, 1) + a.shape[2:])


def max_pool_select(x, g, out=None, select=True):
    """(y, sel): window maxima and sel = 1 + the row-major window offset k of the
    first maximum (0: no element above -FLT_MAX, or no pixel), uint8 (int32 for
    kernels of more than 254 elements); sel is None when not ``select``, and in
    the wide layout (see _WidePlan) when that is used.

    One pass over the K offset views, as Caffe's loop: better = v > y (strict, so
    NaN and ties never replace), y = fmax(y, v) (the same value), sel = max(sel,
    better * (k + 1)) (a later offset that is better is the latest maximum)."""
    N, C = x.shape[:2]
    NC = N * C
    y = out if out is not None else np.empty((N, C) + g.out_shape, x.dtype)
    wide = _WidePlan.usable(g, NC)
    sel = None
    if select:
        sel = np.zeros((NC, g.oh * _WidePlan.row(g)) if wide else (N, C) + g.out_shape,
                       _sel_dtype(g))
    xs, ys = _planes(x), _planes(y)
    ss = None if sel is None else (sel if wide else _planes(sel))
    run_tiles(lambda lo, hi: _max_pool_tile(xs[lo:hi], g, ys[lo:hi],
                                            None if ss is None else ss[lo:hi], wide),
              _plane_tiles(NC, x[0, 0].nbytes if NC else 0))
    return y, sel


def _max_pool_tile(x, g, y, sel, wide):
    neg = x.dtype.type(-FLT_MAX)
    if wide:
        plan = _WidePlan(g, x.shape[0])
        xf = plan.padded(x, -np.inf, "pool_in")
        wgrid, yv = plan.grid(x.dtype, "pool_out")
        steps = [(k, _ALL, xf[:, sl]) for k, sl in plan.offsets]
        sv = None if sel is None else sel[:, :plan.L]
    else:
        yv, sv = y, sel
        steps = [(k, osl, x[isl]) for k, osl, isl in g.valid_offsets()]
    yv.fill(neg)
    if sv is None:
        for _, osl, v in steps:
            t = yv[osl]
            np.fmax(t, v, out=t)
    else:
        sdt = sv.dtype.type
        better = np.empty(yv.shape, bool)
        code = np.empty(yv.shape, sv.dtype)
        for k, osl, v in steps:
            t, b, c = yv[osl], better[osl], code[osl]
            np.greater(v, t, out=b)
            np.fmax(t, v, out=t)
            np.multiply(b, sdt(k + 1), out=c)
            np.maximum(sv[osl], c, out=sv[osl])
    if wide:
        plan.crop(wgrid, y)


def select_to_index(sel, g, shape):
    """In-plane index h*W + w (int64, -1: none, ``shape`` (N, C, oh, ow)) from
    max_pool_select's sel."""
    if sel.ndim == 2:                                  # wide layout
        sel = sel.reshape(tuple(shape[:2]) + (g.oh, _WidePlan.row(g)))[..., :g.ow]
    i, j = np.divmod(np.arange(g.K + 1, dtype=np.int64) - 1, g.kw)
    lut = i * g.W + j                    # sel -> delta (kh W + kw)
    idx = lut[sel] + g.window_base()
    idx[sel == 0] = -1
    return idx


def max_pool_backward(dy, sel, g, dx):
    """dx[first maximum of each window] += dy, written into dx (N, C, H, W).

    Walking the offsets backwards adds each input's contributions in the raster
    order of the windows that chose it, as Caffe's loop does."""
    N, C = dy.shape[:2]
    NC = N * C
    finite = bool(np.isfinite(dy).all())          # dy * 0 would spread NaN / Inf
    wide = sel.ndim == 2
    dys, dxs = _planes(dy), _planes(dx)
    ss = sel if wide else _planes(sel)
    run_tiles(lambda lo, hi: _max_pool_backward_tile(dys[lo:hi], ss[lo:hi], g, dxs[lo:hi],
                                                     wide, finite),
              _plane_tiles(NC, dx[0, 0].nbytes if NC else 0))
    return dx


def _max_pool_backward_tile(dy, sel, g, dx, wide, finite):
    if wide:
        plan = _WidePlan(g, dy.shape[0])
        dyv = plan.spread(dy, "pool_out")
        acc = scratch("pool_in", (dy.shape[0], plan.size), dy.dtype)
        acc.fill(0)
        selv = sel[:, :plan.L]
        steps = [(k, _ALL, acc[:, sl]) for k, sl in plan.offsets]
    else:
        dyv, selv = dy, sel
        dx.fill(0)
        steps = [(k, osl, dx[isl]) for k, osl, isl in g.valid_offsets()]
    eq = np.empty(dyv.shape, bool)
    tmp = np.empty(dyv.shape, dy.dtype)
    for k, osl, target in reversed(steps):
        e, t = eq[osl], tmp[osl]
        np.equal(selv[osl], k + 1, out=e)
        if finite:
            np.multiply(dyv[osl], e, out=t)
        else:
            t[...] = np.where(e, dyv[osl], 0)
        target += t
    if wide:
        plan.unpad(acc, dx)


def ave_pool(x, g, out=None):
    """Sum of the real pixels of each window / pool_size (clipped to the padded input)."""
    N, C = x.shape[:2]
    size = g.pool_size().astype(x.dtype)
    sw = g.single_window()
    if sw is not None and g.K > 16:
        h0, h1, w0, w1 = sw
        v = x[:, :, h0:h1, w0:w1].reshape(N, C, -1)
        s = (np.cumsum(v, axis=-1, dtype=x.dtype)[..., -1] if v.shape[-1]
             else np.zeros((N, C), x.dtype))
        with np.errstate(divide="ignore", invalid="ignore"):
            return (s / size[0, 0]).reshape(N, C, 1, 1).astype(x.dtype)
    acc = out if out is not None else np.empty((N, C) + g.out_shape, x.dtype)
    NC = N * C
    wide = _WidePlan.usable(g, NC)
    xs, accs = _planes(x), _planes(acc)

    def tile(lo, hi):
        xt, at = xs[lo:hi], accs[lo:hi]
        if wide:                         # the padding adds +0: the same sums
            plan = _WidePlan(g, hi - lo)
            xf = plan.padded(xt, 0, "pool_in")
            wgrid, part = plan.grid(x.dtype, "pool_out")
            part.fill(0)
            for _, sl in plan.offsets:
                part += xf[:, sl]
            plan.crop(wgrid, at)
        else:
            at.fill(0)
            for _, osl, isl in g.valid_offsets():  # row-major: Caffe's order of the sum
                at[osl] += xt[isl]
    run_tiles(tile, _plane_tiles(NC, x[0, 0].nbytes if NC else 0))
    with np.errstate(divide="ignore", invalid="ignore"):
        acc /= size
    return acc


def ave_pool_backward(dy, g, dx=None):
    """dx[every real pixel of a window] += dy / pool_size."""
    N, C = dy.shape[:2]
    with np.errstate(divide="ignore", invalid="ignore"):
        share = (dy / g.pool_size().astype(dy.dtype)).astype(dy.dtype)
    if dx is None:
        dx = np.empty((N, C, g.H, g.W), dy.dtype)
    sw = g.single_window()
    if sw is not None:
        dx.fill(0)
        h0, h1, w0, w1 = sw
        dx[:, :, h0:h1, w0:w1] = share
        return dx
    NC = N * C
    wide = _WidePlan.usable(g, NC)
    ss, dxs = _planes(share), _planes(dx)

    def tile(lo, hi):
        st, dt = ss[lo:hi], dxs[lo:hi]
        if wide:
            plan = _WidePlan(g, hi - lo)
            sv = plan.spread(st, "pool_out")
            acc = scratch("pool_in", (hi - lo, plan.size), dy.dtype)
            acc.fill(0)
            for _, sl in reversed(plan.offsets):    # each input: windows in raster order
                acc[:, sl] += sv
            plan.unpad(acc, dt)
        else:
            dt.fill(0)
            for _, osl, isl in reversed(g.valid_offsets()):
                dt[isl] += st[osl]
    run_tiles(tile, _plane_tiles(NC, dx[0, 0].nbytes if NC else 0))
    return dx


def stochastic_pool_train(x, g, u):
    """(y, idx): the element where the running window sum first reaches u * sum."""
    N, C = x.shape[:2]
    xp = g.padded(x, 0)
    total = np.zeros((N, C) + g.out_shape, x.dtype)
    for _, _, sl in g.offsets():
        total += xp[sl]
    thres = (u.astype(x.dtype) * total).astype(x.dtype)
    cum = np.zeros_like(total)
    found = np.zeros(total.shape, bool)
    y = np.zeros_like(total)
    idx = np.full(total.shape, -1, np.int64)
    hs, ws = g.starts()
    hit = np.empty(total.shape, bool)
    for kh, kw, sl in g.offsets():
        v = xp[sl]
        cum += v
        np.greater_equal(cum, thres, out=hit)
        hit &= ~found
        hit &= ((hs + kh < g.H)[:, None] & (ws + kw < g.W)[None, :])
        np.copyto(y, v, where=hit)
        np.copyto(idx, np.broadcast_to(g.in_plane_index(kh, kw), idx.shape), where=hit)
        found |= hit
    return y, idx


def stochastic_pool_test(x, g):
    """sum(x^2) / (FLT_MIN + sum(x)) over each window."""
    xp = g.padded(x, 0)
    s = np.full(x.shape[:2] + g.out_shape, FLT_MIN, x.dtype)
    s2 = np.zeros_like(s)
    for _, _, sl in g.offsets():
        v = xp[sl]
        s += v
        s2 += v * v
    with np.errstate(divide="ignore", invalid="ignore"):
        return s2 / s


def scatter_pool_backward(dy, idx, g):
    """dx[n, c, idx] += dy (idx: in-plane index h*W + w; out-of-range ones dropped)."""
    N, C = dy.shape[:2]
    HW = g.H * g.W
    idx = idx.reshape(N * C, -1)
    d = dy.reshape(N * C, -1)
    ok = (idx >= 0) & (idx < HW)
    flat = (np.arange(N * C, dtype=np.int64)[:, None] * HW + idx)[ok]
    vals = d[ok]
    if not g.overlap:                       # each input feeds at most one window
        dx = np.zeros(N * C * HW, dy.dtype)
        dx[flat] = vals
    else:
        dx = np.bincount(flat, weights=vals, minlength=N * C * HW).astype(dy.dtype)
    return dx.reshape(N, C, g.H, g.W)


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
                r, self.sel = max_pool_select(x, g, y, select=select)
                self.idx = None
            if r is not y:
                top[0].data[...] = r
            if len(top) > 1:
                if self.idx is None:
                    self.idx = select_to_index(self.sel, g, top[0].shape)
                top[1].data[...] = self.idx
        elif self.method == AVE:
            r = ave_pool(x, g, y)
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
            ave_pool_backward(dy, g, bottom[0].diff)
            return
        if self.method == MAX and len(top) > 1:
            idx = np.trunc(top[1].data).astype(np.int64)       # Caffe reads the mask top
        elif self.method == MAX and getattr(self, "idx", None) is None:
            if getattr(self, "sel", None) is None:     # forward ran without the argmax
                _, self.sel = max_pool_select(bottom[0].data, g)
            max_pool_backward(dy, self.sel, g, bottom[0].diff)
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
            return ave_pool(x, g), None
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
            part = (ave_pool_backward(d, g) if self.method == AVE
                    else scatter_pool_backward(d, idx, g))
            dx = part if dx is None else dx + part
        bottom[0].diff[...] = dx
