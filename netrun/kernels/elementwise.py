"""Element-wise kernels: ordered sums (Split's and Eltwise's) and ReLU's gradient.

    sum_into(out, [a0, a1, ...])   out = (a0 + a1) + a2 + ...   (Caffe's order)
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


def relu_backward_numpy(dy, x, dx):
    flat_parts(lambda d, a, o: np.multiply(d, a > 0, out=o), dy, x, dx)


@jit
def _sum_loop(out, arrays):
    n = out.shape[0]
    first, second = arrays[0], arrays[1]
    for i in range(n):
        u = uint64(i)
        out[u] = first[u] + second[u]
    for k in range(2, len(arrays)):
        a = arrays[k]
        for i in range(n):
            u = uint64(i)
            out[u] += a[u]


@jit
def _relu_backward_loop(dy, x, dx, one, zero):
    for i in range(dy.shape[0]):
        u = uint64(i)
        dx[u] = dy[u] * (one if x[u] > 0 else zero)


def sum_into_numba(out, arrays):
    if not all(a.flags.c_contiguous and a.dtype == out.dtype for a in (out, *arrays)):
        return sum_into_numpy(out, arrays)
    flat_parts(lambda o, *parts: _sum_loop(o, parts), out, *arrays)


def relu_backward_numba(dy, x, dx):
    if not (dy.dtype == x.dtype == dx.dtype and dy.flags.c_contiguous
            and x.flags.c_contiguous and dx.flags.c_contiguous):
        return relu_backward_numpy(dy, x, dx)
    one, zero = dy.dtype.type(1), dy.dtype.type(0)
    flat_parts(lambda d, a, o: _relu_backward_loop(d, a, o, one, zero), dy, x, dx)


sum_into = kernel(sum_into_numpy, sum_into_numba,
                  lambda out, arrays: out.nbytes * (1 + len(arrays)))
relu_backward = kernel(relu_backward_numpy, relu_backward_numba)
