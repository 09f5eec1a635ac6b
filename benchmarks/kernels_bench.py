"""Time each kernel's numpy twin against its compiled (numba) twin, in one process.

    python benchmarks/kernels_bench.py            # every kernel, fastest of 7 calls each
    python benchmarks/kernels_bench.py --reps 15

The two twins of a kernel are called alternately on the same arrays (A/B in one
process, so a shared machine's drift hits both alike); the table gives the fastest
call of each and their ratio.  Shapes are layers of the benchmark nets.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from netrun import kernels  # noqa: E402
from netrun.kernels.im2col import ConvGeometry  # noqa: E402
from netrun.kernels.pooling import PoolGeometry  # noqa: E402


def cases():
    rng = np.random.default_rng(0)
    f32 = np.float32

    def arr(*shape):
        return rng.standard_normal(shape).astype(f32)

    for name, shape, k, s, p in [("pool1 GoogLeNet b1", (1, 64, 112, 112), 3, 2, 0),
                                 ("pool 3x3/1 GoogLeNet b1", (1, 192, 28, 28), 3, 1, 1),
                                 ("pool1 CaffeNet b8", (8, 96, 55, 55), 3, 2, 0)]:
        x = arr(*shape)
        g = PoolGeometry(shape[2], shape[3], (k, k), (s, s), (p, p))
        dy = arr(shape[0], shape[1], *g.out_shape)
        dx = np.empty_like(x)
        sel = {e: getattr(kernels.max_pool_select, e)(x, g)[1] for e in ("numpy", "numba")}
        yield f"MAX pooling forward, {name}", kernels.max_pool_select, lambda e: (x, g)
        yield (f"MAX pooling backward, {name}", kernels.max_pool_backward,
               lambda e, dy=dy, g=g, dx=dx, sel=sel: (dy, sel[e], g, dx))
        yield f"AVE pooling forward, {name}", kernels.ave_pool, lambda e, x=x, g=g: (x, g)
        yield (f"AVE pooling backward, {name}", kernels.ave_pool_backward,
               lambda e, dy=dy, g=g, dx=dx: (dy, g, dx))
    for name, shape, k, s, p in [("3x3 ResNet-50 b1", (1, 64, 56, 56), 3, 1, 1),
                                 ("conv1 ResNet-50 b1", (1, 3, 224, 224), 7, 2, 3),
                                 ("conv2 CaffeNet b8", (8, 48, 27, 27), 5, 1, 2)]:
        g = ConvGeometry((k, k), (s, s), (p, p), (1, 1))
        x = arr(*shape)
        num, C = shape[:2]
        osp = g.conv_out(shape[2:])
        cols = np.empty((C,) + g.kernel + (num,) + osp, f32)
        view = g.cols_view(cols.reshape(C * g.K, -1), C, num, osp)
        acc = np.empty(shape, f32)
        yield f"im2col, {name}", kernels.im2col_copy, lambda e, g=g, x=x, c=cols: (g, x, c)
        yield (f"col2im, {name}", kernels.col2im_sum,
               lambda e, g=g, v=view, sp=shape[2:], o=osp, a=acc: (g, v, sp, o, a))
        y, b = arr(num, 64, osp[0] * osp[1]), arr(64)
        yield (f"conv bias add, {name} (64 ch)", kernels.add_bias, lambda e, y=y, b=b: (y, b))
    for name, shape in [("norm1 CaffeNet b8", (8, 96, 55 * 55)),
                        ("norm2 GoogLeNet b1", (1, 192, 56 * 56))]:
        x, dy = arr(*shape), arr(*shape)
        sc, pw, y, dx = (np.empty(shape, f32) for _ in range(4))
        yield (f"LRN forward, {name}", kernels.lrn_across_forward,
               lambda e, x=x, s=sc, p=pw, y=y: (x, s, p, y, 5, 2, 1e-4, f32(-0.75), 1.0))
        yield (f"LRN backward, {name}", kernels.lrn_across_backward,
               lambda e, x=x, d=dy, s=sc, p=pw, o=dx: (x, d, s, p, o, 5, 2, f32(3e-5)))
    g = ConvGeometry((3, 3), (1, 1), (1, 1), (1, 1))
    x, dy = arr(1, 256, 28, 28), arr(1, 256, 28, 28)
    w, dx = arr(256, 1, 3, 3), np.empty((1, 256, 28, 28), f32)
    yield ("depthwise backward data, MobileNet b1 dw4", kernels.dw_wide_backward_data,
           lambda e: (g, dy, w, (28, 28), dx))
    yield ("depthwise weight gradient, MobileNet b1 dw4", kernels.dw_wide_weight_grad,
           lambda e: (g, x, dy))
    a = [arr(8, 256, 28, 28) for _ in range(4)]
    o = np.empty_like(a[0])
    yield "sum of 4 (Split backward), b8", kernels.sum_into, lambda e: (o, a)
    yield "ReLU backward, b8", kernels.relu_backward, lambda e: (a[0], a[1], o)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    if not kernels.numba_available():
        sys.exit("numba is not installed: there is nothing to compare")
    print("| kernel | numpy ms | numba ms | numba / numpy |")
    print("|---|---|---|---|")
    for name, k, argf in cases():
        best = {}
        for e in ("numpy", "numba"):
            getattr(k, e)(*argf(e))                     # warm-up (and compile)
        for _ in range(args.reps):
            for e in ("numpy", "numba"):
                t = time.perf_counter()
                getattr(k, e)(*argf(e))
                best[e] = min(best.get(e, 1e9), time.perf_counter() - t)
        print(f"| {name} | {best['numpy'] * 1e3:.2f} | {best['numba'] * 1e3:.2f} | "
              f"{best['numba'] / best['numpy']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
