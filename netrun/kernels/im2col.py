"""Convolution kernels: geometry, im2col / col2im and the three GEMM products.

The math (output sizes, im2col, the three products) is in layers/vision.py's
docstring.

The whole batch is one im2col (the column buffer is only split into chunks of images
when it would exceed ``COL_BUFFER_BYTES``), built in Caffe's channel-major layout
(G, Cg*K, num*P) by one strided copy.  The forward GEMMs are Caffe's own calls, one
per image and group, written straight into the blob, then the bias added in place:
with the same OpenBLAS kernel they give real Caffe's bits (docs/kernels.md).  A 1x1
kernel with stride 1 and no padding needs no im2col (x itself).  In
backward, batches of large planes (>= _BIG_PLANE positions) run one GEMM per
image instead of copying dy (and x) into group-major order.  Depthwise convolution
(one input channel per group) runs as a loop over the kernel offsets of strided
multiply-adds.  Temporaries (columns, GEMM outputs) live in reused scratch buffers.
"""
import numpy as np
from numpy.lib.stride_tricks import as_strided

from . import depthwise
from .blas import gemm_acc
from .elementwise import sum_into
from .layout import _cdiv, _pool_axis_range, _prod, valid_cols
from .scratch import scratch
from .select import jit, kernel, uint64
from .tiles import in_parts, parallel_copyto

_ALL = slice(None)


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
        P = _prod(out_sp)
        shape = (C,) + self.kernel + (num,) + tuple(out_sp)
        cols = (scratch("cols", shape, x.dtype) if out is None
                else out.reshape(-1)[:_prod(shape)].reshape(shape))
        im2col_copy(self, x, cols)
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
        col2im_sum(self, cols, in_sp, out_sp, acc)
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
        the transposed columns (G, num*P, Cg*K); for a 1x1 convolution's forward
        (and its weight gradient over large planes) x itself, (num, G, Cg, P); for
        the weight gradient of a depthwise convolution the input itself (its own
        kernels).

        A depthwise forward goes through the columns and one GEMM per group, as
        Caffe's: BLAS then sums each output's K products in Caffe's order (the
        conformance case comes out bit-identical; the element-wise kernels round
        after every product and differ in the last bit)."""
        if backward and x.shape[1] == group and not self.is_1x1:   # depthwise
            if depthwise.wide_ok(self, x.shape[2:]):
                return ("dw-wide", x)
            return ("dw", self.padded(x, out_sp))
        if self.is_1x1:
            num, C = x.shape[:2]
            P = _prod(x.shape[2:])
            Cg = C // group
            if not backward:                             # forward: x itself, per image
                return ("x", x.reshape(num, group, Cg, P))
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

        Caffe's own calls: for each image and group, W_g (Og, Cg*K) @ cols_g (Cg*K, P),
        row-major, no transposes, the result written straight into the blob; then
        the bias added in place (Caffe's second GEMM, bias (Co, 1) @ ones (1, P),
        rounds to the same y + b).  One GEMM per image, as Caffe: OpenBLAS's AVX2
        kernel rounds a column differently depending on where it sits in a wider
        matrix, so one GEMM over the whole batch would not give Caffe's bits.
        Written into ``out`` (num, Co, *out) when given, else into a new array."""
        kind, a = prep
        Co = w.shape[0]
        G, Og, P = group, Co // group, _prod(out_sp)
        if out is None:
            out = np.empty((num, Co) + tuple(out_sp), w.dtype)
        wg = w.reshape(G, Og, -1)
        y = out.reshape(num, G, Og, P)
        if kind == "x":                                   # 1x1: x itself, per image
            for n in range(num):
                np.matmul(wg, a[n], out=y[n])
        else:
            assert kind == "cols", kind
            cols = a.transpose(0, 2, 1)                   # (G, Cg*K, num*P), Caffe's layout
            for n in range(num):
                np.matmul(wg, cols[:, :, n * P:(n + 1) * P], out=y[n])
        if bias is not None:
            add_bias(out.reshape(num, Co, P), bias)
        return out

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
        if Cg == 1 and Og == 1 and depthwise.wide_ok(self, in_sp):
            return depthwise.dw_wide_backward_data(self, dy, w, in_sp, out)
        if Cg == 1:
            out[...] = depthwise.dw_backward_data(self, dy, w, G, in_sp)
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

    def conv_weight_grad(self, prep, dy, group, acc, dyg=None):
        """acc (Co, Ci/G, *kernel) += dW, dW_g = dy_g cols_g^T: BLAS GEMMs with beta = 1
        adding straight into the diff, as Caffe's (one per image where the batch is
        not one GEMM)."""
        kind, a = prep
        num, Co = dy.shape[:2]
        out_sp = dy.shape[2:]
        G, Og, P = group, Co // group, _prod(out_sp)
        if kind in ("dw-wide", "dw"):                  # depthwise: its own loops
            if kind == "dw-wide" and Og == 1:
                dw = depthwise.dw_wide_weight_grad(self, a, dy)
            elif kind == "dw-wide":
                dw = depthwise.dw_weight_grad(self, self.padded(a, out_sp), dy, G)
            else:
                dw = depthwise.dw_weight_grad(self, a, dy, G)
            sum_into(acc, [acc, dw])
            return acc
        accg = acc.reshape(G, Og, -1)
        dyn = dy.reshape(num, G, Og, P)
        if kind == "x":                      # 1x1, per image: x itself, seen transposed
            for n in range(num):
                for k in range(G):
                    gemm_acc(dyn[n, k], a[n, k].T, accg[k])
            return acc
        if dyg is None and per_image(num, P):
            # per image dy_n cols_n^T (as Caffe accumulates), no copy of dy
            cols = a.transpose(0, 2, 1)                                # (G, Cg*K, num*P)
            for n in range(num):
                for k in range(G):
                    gemm_acc(dyn[n, k], cols[k, :, n * P:(n + 1) * P].T, accg[k])
            return acc
        if dyg is None:
            dyg = self.group_major(dy, G)
        for k in range(G):
            gemm_acc(dyg[k], a[k], accg[k])
        return acc


# In backward, batches of planes this large run one GEMM per image (no group-major
# copies of dy and x); smaller planes are copied into one GEMM over the batch.
_BIG_PLANE = 1024


def per_image(num, P):
    return num > 1 and P >= _BIG_PLANE


# =====================================================================================
# Kernel twins: im2col's copy, col2im's sums, the bias add
# =====================================================================================
def im2col_copy_numpy(g, x, cols):
    """cols (C, *kernel, num, *out) = x_pad[n, c, o s + k d] (0 in the padding)."""
    nsp = g.nsp
    out_sp = cols.shape[2 + nsp:]
    v = g.windows(g.padded_scratch(x, out_sp), out_sp)       # (num, C, *out, *k)
    perm = ((1,) + tuple(range(2 + nsp, 2 + 2 * nsp)) + (0,) + tuple(range(2, 2 + nsp)))
    parallel_copyto(cols, v.transpose(perm))


def col2im_sum_numpy(g, cols, in_sp, out_sp, acc):
    """acc (num, C, *in) = the sum of each input's reads in the column view
    (num, C, *kernel, *out), in kernel order (reads in the padding dropped)."""
    ranges = [[_pool_axis_range(n, o, k * d, s, p) for k in range(ks)]
              for n, o, ks, d, s, p in zip(in_sp, out_sp, g.kernel, g.dilation,
                                             g.stride, g.pad)]
    steps = []
    for kidx in np.ndindex(*g.kernel):
        r = [ranges[a][k] for a, k in enumerate(kidx)]
        if all(x is not None for x in r):
            steps.append((tuple(x[1] for x in r), kidx + tuple(x[0] for x in r)))
    C = cols.shape[1]

    def channels(lo, hi):                 # each channel range on its own
        a = acc[:, lo:hi]
        a.fill(0)
        c = cols[:, lo:hi]
        for isl, csl in steps:
            a[(_ALL, _ALL) + isl] += c[(_ALL, _ALL) + csl]
    in_parts(channels, C, cols.size * cols.itemsize)


# -- compiled twins (2-D; other ranks run the numpy twins) -----------------------------
# Unsigned indices in the inner loops (no negative-index check: they vectorize).

@jit
def _im2col_loops(x, cols, lo, hi, sh, sw, ph, pw, dh, dw):
    num, H, W = x.shape[0], x.shape[2], x.shape[3]
    kh, kw, oh, ow = cols.shape[1], cols.shape[2], cols.shape[4], cols.shape[5]
    for c in range(lo, hi):
        for a in range(kh):
            for b in range(kw):
                off = b * dw - pw
                jlo, jhi = valid_cols(off, sw, W, ow)
                for n in range(num):
                    for i in range(oh):
                        dst = cols[c, a, b, n, i]
                        h = i * sh - ph + a * dh
                        if h < 0 or h >= H:
                            dst[:] = 0
                            continue
                        xr = x[n, c, h]
                        for j in range(jlo):
                            dst[uint64(j)] = 0
                        for j in range(jlo, jhi):
                            dst[uint64(j)] = xr[uint64(j * sw + off)]
                        for j in range(jhi, ow):
                            dst[uint64(j)] = 0


def im2col_copy_numba(g, x, cols):
    if g.nsp != 2 or x.shape[0] * x.shape[1] == 0:
        return im2col_copy_numpy(g, x, cols)
    x = np.ascontiguousarray(x)
    (sh, sw), (ph, pw), (dh, dw) = g.stride, g.pad, g.dilation
    C = x.shape[1]
    in_parts(lambda lo, hi: _im2col_loops(x, cols, lo, hi, sh, sw, ph, pw, dh, dw),
                C, cols.nbytes)


@jit
def _col2im_loops(cols, acc, lo, hi, sh, sw, ph, pw, dh, dw):
    # cols (num, C, kh, kw, oh, ow) (any strides), acc (num, C, H, W)
    num, H, W = acc.shape[0], acc.shape[2], acc.shape[3]
    kh, kw, oh, ow = cols.shape[2], cols.shape[3], cols.shape[4], cols.shape[5]
    for c in range(lo, hi):
        for n in range(num):
            acc[n, c] = 0
            for a in range(kh):                 # each input: its reads in kernel order
                for b in range(kw):
                    off = b * dw - pw
                    jlo, jhi = valid_cols(off, sw, W, ow)
                    for i in range(oh):
                        h = i * sh - ph + a * dh
                        if h < 0 or h >= H:
                            continue
                        ar = acc[n, c, h]
                        cr = cols[n, c, a, b, i]
                        for j in range(jlo, jhi):
                            ar[uint64(j * sw + off)] += cr[uint64(j)]


def col2im_sum_numba(g, cols, in_sp, out_sp, acc):
    if g.nsp != 2:
        return col2im_sum_numpy(g, cols, in_sp, out_sp, acc)
    (sh, sw), (ph, pw), (dh, dw) = g.stride, g.pad, g.dilation
    in_parts(lambda lo, hi: _col2im_loops(cols, acc, lo, hi, sh, sw, ph, pw, dh, dw),
                cols.shape[1], cols.size * cols.itemsize)


def add_bias_numpy(y, bias):
    """y[n, c, p] += bias[c], in place; y (num, C, P) contiguous."""
    b = bias.reshape(1, -1, 1)
    in_parts(lambda lo, hi: np.add(y[:, lo:hi], b[:, lo:hi], out=y[:, lo:hi]),
             y.shape[1], 2 * y.nbytes)


@jit
def _bias_inplace(y, bias, lo, hi):
    num, P = y.shape[0], y.shape[2]
    for n in range(num):
        for c in range(lo, hi):
            dst = y[n, c]
            bc = bias[c]
            for p in range(P):
                dst[uint64(p)] = dst[uint64(p)] + bc


def add_bias_numba(y, bias):
    in_parts(lambda lo, hi: _bias_inplace(y, bias, lo, hi), y.shape[1], 2 * y.nbytes)


im2col_copy = kernel(im2col_copy_numpy, im2col_copy_numba)
add_bias = kernel(add_bias_numpy, add_bias_numba)
col2im_sum = kernel(col2im_sum_numpy, col2im_sum_numba)
