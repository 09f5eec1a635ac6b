"""Tiles: cache-sized pieces of multi-pass element-wise work.

A kernel that makes K passes over its data (pooling: K window offsets; LRN: a window
sum and a dozen element-wise steps) reads memory once instead of K times when it
runs over pieces that fit in the caches.  Tiles never share output memory.

They run one after the other.  Handing tiles to a second Python thread was measured
and dropped: after every GEMM, OpenBLAS's idle worker threads keep spinning for a
while, so on a machine whose cores BLAS already uses the second thread finds no free
core and the element-wise passes only get slower.
"""


def run_tiles(fn, tiles):
    """fn(lo, hi) for every (lo, hi) in ``tiles``."""
    for lo, hi in tiles:
        fn(lo, hi)
