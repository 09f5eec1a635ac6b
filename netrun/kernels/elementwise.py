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


@jit
def _relu_forward_loop(x, y, zero):
    for i in range(x.shape[0]):
        u = uint64(i)
        v = x[u]
        y[u] = v if (v > zero or v != v) else zero          # as np.maximum(v, 0)


@jit
def _relu_backward_loop(dy, x, dx, one, zero):
    for i in range(dy.shape[0]):
        u = uint64(i)
        dx[u] = dy[u] * (one if x[u] > 0 else zero)


def sum_into_numba(out, arrays):
    if not all(a.flags.c_contiguous and a.dtype == out.dtype for a in (out, *arrays)):
        return sum_into_numpy(out, arrays)
    flat_parts(lambda o, *parts: _sum_loop(o, parts), out, *arrays)


def _flat_ok(*arrays):
    return all(a.flags.c_contiguous and a.dtype == arrays[0].dtype for a in arrays)


def relu_forward_numba(x, y):
    if not _flat_ok(x, y):
        return relu_forward_numpy(x, y)
    zero = x.dtype.type(0)
    flat_parts(lambda a, o: _relu_forward_loop(a, o, zero), x, y)


def relu_backward_numba(dy, x, dx):
    if not (dy.dtype == x.dtype == dx.dtype and dy.flags.c_contiguous
            and x.flags.c_contiguous and dx.flags.c_contiguous):
        return relu_backward_numpy(dy, x, dx)
    one, zero = dy.dtype.type(1), dy.dtype.type(0)
    flat_parts(lambda d, a, o: _relu_backward_loop(d, a, o, one, zero), dy, x, dx)


sum_into = kernel(sum_into_numpy, sum_into_numba,
                  lambda out, arrays: out.nbytes * (1 + len(arrays)))
relu_forward = kernel(relu_forward_numpy, relu_forward_numba)
relu_backward = kernel(relu_backward_numpy, relu_backward_numba)
