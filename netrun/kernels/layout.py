"""Shapes and layouts shared by the kernels: products, C division, the window
ranges of a strided axis, wide grids (planes seen as flat rows) and plane tiles."""
from .scratch import scratch
from .select import jit
from .tiles import parallel_copyto, tile_ranges


def _prod(xs):
    out = 1
    for x in xs:
        out *= int(x)
    return out


@jit
def valid_cols(off, s, W, ow):
    """(jlo, jhi): the output columns j in [jlo, jhi) whose input column j * s + off lies
    inside [0, W) -- the columns a kernel offset ``off`` reads or writes (compiled loops)."""
    jlo = 0 if off >= 0 else (s - 1 - off) // s
    jhi = min(ow, (W - 1 - off) // s + 1) if off <= W - 1 else 0
    return jlo, max(jlo, jhi)


def _cdiv(a, b):
    """C integer division (truncates toward zero), as Caffe computes output sizes."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def _pool_axis_range(n, o, k, s, p):
    """(output slice, input slice) along one axis for window offset k: the outputs
    r with 0 <= r s - p + k < n and the input positions they read; None if none."""
    lo = max(0, -((k - p) // s))
    hi = min(o - 1, (n - 1 + p - k) // s)
    if hi < lo:
        return None
    first = lo * s - p + k
    return slice(lo, hi + 1), slice(first, first + (hi - lo) * s + 1, s)


def wide_grid(a, row, name):
    """(N, C, oh, ow) as a wide grid (N*C, oh*row) in a scratch buffer, zero in the
    columns ow..row-1 that flat-plane kernels compute and discard (see pooling._WidePlan)."""
    N, C, oh, ow = a.shape
    wide = scratch(name, (N * C, oh, row), a.dtype)
    wide[:, :, ow:] = 0
    parallel_copyto(wide[:, :, :ow], a.reshape(N * C, oh, ow))
    return wide.reshape(N * C, oh * row)


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
