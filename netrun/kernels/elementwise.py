"""Element-wise kernels: ordered sums (Split's and Eltwise's) and ReLU.

    sum_into(out, [a0, a1, ...])   out = (a0 + a1) + a2 + ...   (Caffe's order)
    relu_forward(x, y)             y = max(x, 0)                (numpy's maximum: NaN
                                                                 stays NaN, -0.0 gives
                                                                 +0.0)
    relu_backward(dy, x, dx)       dx = dy * (x > 0)            (Caffe's product: a
                                                                 NaN or inf dy where
                                                                 x <= 0 gives NaN)

numpy makes one pass per addend (and one for the comparison); the compiled twins
make one pass in all, with the same float operations per element.  Both run in
pieces on all cores when the arrays are large (kernels/tiles.py).
"""
import numpy as np

from .select import jit, kernel, uint64
from .tiles import flat_parts


def sum_into_numpy(out, arrays):
    def add(o, a, b, *rest):
        np.add(a, b, out=o)
        for r in rest:
            o += r
    flat_parts(add, out, *arrays)


def relu_forward_numpy(x, y):
    flat_parts(lambda a, o: np.maximum(a, 0, out=o), x, y)


def relu_backward_numpy(dy, x, dx):
    flat_parts(lambda d, a, o: np.multiply(d, a > 0, out=o), dy, x, dx)


@jit
def _sum_loop(out, arrays):
    # one pass for 2 to 4 arrays; more in blocks that stay in L1
    n = out.shape[0]
    k = len(arrays)
    a, b = arrays[0], arrays[1]
    if k == 2:
        for i in range(n):
            u = uint64(i)
            out[u] = a[u] + b[u]
    elif k == 3:
        c = arrays[2]
        for i in range(n):
            u = uint64(i)
            t = a[u] + b[u]
            out[u] = t + c[u]
    elif k == 4:
        c, d = arrays[2], arrays[3]
        for i in range(n):
            u = uint64(i)
            t = a[u] + b[u]
            t = t + c[u]
            out[u] = t + d[u]
    else:
        for lo in range(0, n, 2048):
            hi = min(n, lo + 2048)
            for i in range(lo, hi):
                u = uint64(i)
                out[u] = a[u] + b[u]
            for j in range(2, k):
                r = arrays[j]
                for i in range(lo, hi):
                    u = uint64(i)
                    out[u] += r[u]


# A loop whose output is one of its inputs has a twin that reads and writes that one
# array: LLVM cannot prove two arguments apart, so the two-array loop runs unvectorized
# when they are the same memory (in-place layers: 3-6x slower).

@jit
def _relu_forward_loop(x, y, zero):
    for i in range(x.shape[0]):
        u = uint64(i)
        v = x[u]
        y[u] = zero if v <= zero else v          # as np.maximum(v, 0): NaN kept, -0 -> 0


@jit
def _relu_forward_inplace(y, zero):
    for i in range(y.shape[0]):
        u = uint64(i)
        v = y[u]
        y[u] = zero if v <= zero else v


@jit
def _relu_backward_loop(dy, x, dx, one, zero):
    for i in range(dy.shape[0]):
        u = uint64(i)
        dx[u] = dy[u] * (one if x[u] > 0 else zero)


@jit
def _relu_backward_inplace(d, x, one, zero):
    for i in range(d.shape[0]):
        u = uint64(i)
        d[u] = d[u] * (one if x[u] > 0 else zero)


def same_memory(a, b):
    """a and b are views of the very same elements (an in-place call)."""
    return (a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
            and a.strides == b.strides and a.shape == b.shape)


@jit
def _add_inplace(out, b):
    for i in range(out.shape[0]):
        u = uint64(i)
        out[u] = out[u] + b[u]


def sum_into_numba(out, arrays):
    if not all(a.flags.c_contiguous and a.dtype == out.dtype for a in (out, *arrays)):
        return sum_into_numpy(out, arrays)
    if len(arrays) == 2 and same_memory(out, arrays[0]):      # out += b (vectorizes)
        flat_parts(_add_inplace, out, arrays[1])
        return
    flat_parts(lambda o, *parts: _sum_loop(o, parts), out, *arrays)


def _flat_ok(*arrays):
    return all(a.flags.c_contiguous and a.dtype == arrays[0].dtype for a in arrays)


def relu_forward_numba(x, y):
    if not _flat_ok(x, y):
        return relu_forward_numpy(x, y)
    zero = x.dtype.type(0)
    if same_memory(x, y):
        flat_parts(lambda o: _relu_forward_inplace(o, zero), y)
    else:
        flat_parts(lambda a, o: _relu_forward_loop(a, o, zero), x, y)


def relu_backward_numba(dy, x, dx):
    if not (dy.dtype == x.dtype == dx.dtype and dy.flags.c_contiguous
            and x.flags.c_contiguous and dx.flags.c_contiguous):
        return relu_backward_numpy(dy, x, dx)
    one, zero = dy.dtype.type(1), dy.dtype.type(0)
    if same_memory(dy, dx):
        flat_parts(lambda d, a: _relu_backward_inplace(d, a, one, zero), dx, x)
    else:
        flat_parts(lambda d, a, o: _relu_backward_loop(d, a, o, one, zero), dy, x, dx)


sum_into = kernel(sum_into_numpy, sum_into_numba,
                  lambda out, arrays: out.nbytes * (1 + len(arrays)))
relu_forward = kernel(relu_forward_numpy, relu_forward_numba)
relu_backward = kernel(relu_backward_numpy, relu_backward_numba)


# -- per-channel affine steps of the fused BatchNorm -> Scale chains ------------------
# x, out: (N, c, S) views (a range of channels); m, s, b: (c,) per-channel values.

def normalize_numpy(x, m, s, out):
    """out = (x - m) / s per channel (BatchNorm with global statistics)."""
    np.subtract(x, m[None, :, None], out=out)
    np.divide(out, s[None, :, None], out=out)


def scale_bias_numpy(x, s, b, out):
    """out = x * s (+ b) per channel (Scale); b may be None."""
    np.multiply(x, s[None, :, None], out=out)
    if b is not None:
        out += b[None, :, None]


@jit
def _normalize_loop(x, m, s, out):
    N, C, S = x.shape
    for n in range(N):
        for c in range(C):
            xr, orow = x[n, c], out[n, c]
            mc, sc = m[c], s[c]
            for i in range(S):
                u = uint64(i)
                t = xr[u] - mc
                orow[u] = t / sc


@jit
def _normalize_inplace(out, m, s):
    N, C, S = out.shape
    for n in range(N):
        for c in range(C):
            orow = out[n, c]
            mc, sc = m[c], s[c]
            for i in range(S):
                u = uint64(i)
                t = orow[u] - mc
                orow[u] = t / sc


@jit
def _scale_bias_inplace(out, s, b, with_bias):
    N, C, S = out.shape
    for n in range(N):
        for c in range(C):
            orow = out[n, c]
            sc = s[c]
            if with_bias:
                bc = b[c]
                for i in range(S):
                    u = uint64(i)
                    t = orow[u] * sc
                    orow[u] = t + bc
            else:
                for i in range(S):
                    u = uint64(i)
                    orow[u] = orow[u] * sc


@jit
def _scale_bias_loop(x, s, b, out, with_bias):
    N, C, S = x.shape
    for n in range(N):
        for c in range(C):
            xr, orow = x[n, c], out[n, c]
            sc = s[c]
            if with_bias:
                bc = b[c]
                for i in range(S):
                    u = uint64(i)
                    t = xr[u] * sc
                    orow[u] = t + bc
            else:
                for i in range(S):
                    u = uint64(i)
                    orow[u] = xr[u] * sc


def _rows_ok(*arrays):
    """(N, c, S) views whose rows are contiguous, all of one dtype."""
    return all(a.ndim == 3 and a.strides[2] == a.itemsize and a.dtype == arrays[0].dtype
               for a in arrays)


def normalize_numba(x, m, s, out):
    if not _rows_ok(x, out) or m.dtype != x.dtype or s.dtype != x.dtype:
        return normalize_numpy(x, m, s, out)
    if same_memory(x, out):
        _normalize_inplace(out, m, s)
    else:
        _normalize_loop(x, m, s, out)


def scale_bias_numba(x, s, b, out):
    if not _rows_ok(x, out) or s.dtype != x.dtype or (b is not None and b.dtype != x.dtype):
        return scale_bias_numpy(x, s, b, out)
    if same_memory(x, out):
        _scale_bias_inplace(out, s, s if b is None else b, b is not None)
    else:
        _scale_bias_loop(x, s, s if b is None else b, out, b is not None)


normalize = kernel(normalize_numpy, normalize_numba)
scale_bias = kernel(scale_bias_numpy, scale_bias_numba)
