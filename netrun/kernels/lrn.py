"""LRN across channels (Caffe's LRNLayer, ACROSS_CHANNELS), on (N, C, S) views.

    s_c = k + alpha/n * sum_{c' in window(c)} x_c'^2;   p = s^-beta;   y = x p
    dE/dx_c = dE/dy_c p_c - (2 alpha beta / n) x_c sum_{c' in window(c)} dE/dy_c' y_c' / s_c'

The forward window sum adds the float32 squares in float64 (exact squares, one
rounding), in the order: the channel itself, c-1, c-2, ..., then c+1, c+2, ...
(a float64 cumulative sum for windows longer than 9); the backward sum is float32
in the same order.  Both run over tiles of spatial positions of ~1 MB (all images
and channels) on all cores.

x^-beta: the compiled twin calls the C library's ``powf`` element by element, as
Caffe's CPU LRN does (``pow(float, float)``): real Caffe's bits (checked against
pycaffe on GoogLeNet's norm layers).  numpy has no such call -- its float32
``np.power`` is a SIMD loop of its own on AVX-512 machines, an ulp away from
``powf`` in 20-40% of the elements -- so the numpy twin takes the float64 power
rounded to float32 (``powf`` differs from that by an ulp in ~0.07% of elements).
Where numba vectorizes with Intel's SVML (``numba.config.USING_SVML``) its ``pow``
is SVML's, not the C library's: the compiled twin then runs the numpy twin's power.
"""
import math

import numpy as np

from .select import jit, kernel, uint64
from .tiles import run_tiles, tile_ranges

F64 = np.float64


def _window_sum(a, axis, size, before):
    """out[c] = sum_{j = c - before}^{c - before + size - 1} a[j] along ``axis``,
    with zeros outside ``a``: one cumulative sum (float64), then a difference.

    For an odd ``size`` and ``before = (size - 1) / 2`` the window is centred and
    the operation is its own adjoint (used by the backward passes).
    """
    n = a.shape[axis]
    if size > n + 1:
        # a window longer than the axis: clamp the window ends instead of padding
        # with zeros (the same sums, without a buffer as long as the window)
        shape = list(a.shape)
        shape[axis] = 1
        cs = np.cumsum(np.concatenate([np.zeros(shape, F64), np.asarray(a, F64)], axis=axis),
                       axis=axis)
        c = np.arange(n)
        return (np.take(cs, np.clip(c - before + size, 0, n), axis=axis)
                - np.take(cs, np.clip(c - before, 0, n), axis=axis))
    pad = [(0, 0)] * a.ndim
    pad[axis] = (before + 1, size - 1 - before)     # the extra leading 0 starts the cumsum
    cs = np.cumsum(np.pad(np.asarray(a, F64), pad), axis=axis)
    hi = [slice(None)] * a.ndim
    lo = [slice(None)] * a.ndim
    hi[axis] = slice(size, size + n)
    lo[axis] = slice(0, n)
    return cs[tuple(hi)] - cs[tuple(lo)]


def _channel_window_sum(a, size, before, out=None, dtype=None):
    """out[:, c] = sum_{j = c - before}^{c - before + size - 1} a[:, j] (zeros outside),
    in ``dtype`` (default a's): the window sum over channels as ``size`` shifted
    slice additions (no padded copy); long windows use the float64 cumulative sum."""
    dtype = np.dtype(dtype or a.dtype)
    if size > 9:
        r = _window_sum(a, 1, size, before)
        if out is None:
            return r.astype(dtype)
        np.copyto(out, r)
        return out
    if out is None:
        out = np.empty(a.shape, dtype)
    np.copyto(out, a)
    C = a.shape[1]
    for d in range(1, min(before, C - 1) + 1):             # channels c - d
        out[:, d:] += a[:, :C - d]
    for d in range(1, min(size - 1 - before, C - 1) + 1):  # channels c + d
        out[:, :C - d] += a[:, d:]
    return out


# LRN runs over tiles of spatial positions (all images and channels) this large:
# its dozen passes then stay in the caches
LRN_TILE_BYTES = 1 << 20


def _spatial_tiles(shape, item_bytes):
    N, C, S = shape
    return tile_ranges(S, N * C * item_bytes, LRN_TILE_BYTES)


# -- numpy twins ----------------------------------------------------------------------
def lrn_across_forward_numpy(x3, s3, p3, y3, size, pre_pad, alpha, neg_beta, k):
    """s3 = the scale, p3 = s3 ** neg_beta, y3 = x3 * p3 ((N, C, S) arrays)."""
    def tile(a, b):
        xt, st, pt = x3[:, :, a:b], s3[:, :, a:b], p3[:, :, a:b]
        # the window sum in float64 (exact squares, then one rounding): the
        # forward values decide near-ties in the max-pools and ReLUs after it
        win = _channel_window_sum(np.square(xt), size, pre_pad, dtype=F64)
        win *= alpha / size
        win += k
        np.copyto(st, win)
        power(st, neg_beta, pt)
        np.multiply(xt, pt, out=y3[:, :, a:b])
    run_tiles(tile, _spatial_tiles(x3.shape, 8))


def power(s, neg_beta, out):
    """out = s ** neg_beta: for float32 the float64 power rounded once (closest to
    ``powf`` of what numpy offers), else numpy's power."""
    if s.dtype == np.float32:
        np.copyto(out, np.power(s.astype(F64), F64(neg_beta)))
    else:
        np.power(s, neg_beta, out=out)


def lrn_across_backward_numpy(x3, dy3, s3, p3, dx3, size, pre_pad, coef):
    """dx3 from x3, dy3 and forward's s3, p3 (dx3 may be dy3: in place)."""
    def tile(a, b):
        xt, dyt, pt = x3[:, :, a:b], dy3[:, :, a:b], p3[:, :, a:b]
        ratio = np.multiply(xt, pt)                 # y
        ratio *= dyt
        ratio /= s3[:, :, a:b]                      # dE/dy * y / s
        acc = _channel_window_sum(ratio, size, pre_pad)
        acc *= xt
        acc *= coef
        dxt = dx3[:, :, a:b]
        np.multiply(dyt, pt, out=dxt)               # in place: dy is dx
        dxt -= acc
    run_tiles(tile, _spatial_tiles(x3.shape, 4))


# -- compiled twins: the window sums and the element-wise steps in one pass each -------
@jit
def _lrn_scale_loops(x, scale, a0, a1, before, after, mul, k, win):
    N, C = x.shape[0], x.shape[1]
    L = a1 - a0
    for n in range(N):
        for c in range(C):
            xr = x[n, c, a0:a1]
            for t in range(L):
                v = xr[uint64(t)]
                win[uint64(t)] = v * v                 # the float32 square, exact in f64
            for d in range(1, before + 1):              # channels c - d
                if c - d < 0:
                    break
                xr = x[n, c - d, a0:a1]
                for t in range(L):
                    v = xr[uint64(t)]
                    win[uint64(t)] += v * v
            for d in range(1, after + 1):               # channels c + d
                if c + d >= C:
                    break
                xr = x[n, c + d, a0:a1]
                for t in range(L):
                    v = xr[uint64(t)]
                    win[uint64(t)] += v * v
            sr = scale[n, c, a0:a1]
            for t in range(L):
                sr[uint64(t)] = win[uint64(t)] * mul + k


def lrn_across_forward_numba(x3, s3, p3, y3, size, pre_pad, alpha, neg_beta, k):
    if size > 9:
        return lrn_across_forward_numpy(x3, s3, p3, y3, size, pre_pad, alpha, neg_beta, k)
    after = size - 1 - pre_pad

    libm_pow = not _svml()

    def tile(a, b):
        _lrn_scale_loops(x3, s3, a, b, pre_pad, after, alpha / size, float(k),
                         np.empty(b - a, F64))
        if libm_pow:
            _pow_mul_loops(x3, s3, p3, y3, a, b, neg_beta)
        else:
            pt = p3[:, :, a:b]
            power(s3[:, :, a:b], neg_beta, pt)
            np.multiply(x3[:, :, a:b], pt, out=y3[:, :, a:b])
    run_tiles(tile, _spatial_tiles(x3.shape, 4))


def _svml():
    import numba
    return bool(numba.config.USING_SVML)


@jit
def _pow_mul_loops(x, scale, pw, y, a0, a1, neg_beta):
    # pw = powf(scale, neg_beta) (the C library's, one call per element), y = x * pw
    N, C = x.shape[0], x.shape[1]
    for n in range(N):
        for c in range(C):
            sr, pr = scale[n, c, a0:a1], pw[n, c, a0:a1]
            xr, yr = x[n, c, a0:a1], y[n, c, a0:a1]
            for t in range(a1 - a0):
                u = uint64(t)
                v = math.pow(sr[u], neg_beta)
                pr[u] = v
                yr[u] = xr[u] * v


@jit
def _lrn_backward_loops(x, dy, scale, pw, dx, a0, a1, before, after, coef, ratio, acc):
    N, C = x.shape[0], x.shape[1]
    L = a1 - a0
    for n in range(N):
        for c in range(C):                             # dE/dy * y / s
            xr, dr, pr, sr = x[n, c, a0:a1], dy[n, c, a0:a1], pw[n, c, a0:a1], \
                scale[n, c, a0:a1]
            rr = ratio[c]
            for t in range(L):
                u = uint64(t)
                r = xr[u] * pr[u]
                r = r * dr[u]
                rr[u] = r / sr[u]
        for c in range(C):
            for t in range(L):
                acc[uint64(t)] = ratio[c, uint64(t)]
            for d in range(1, before + 1):
                if c - d < 0:
                    break
                rr = ratio[c - d]
                for t in range(L):
                    acc[uint64(t)] += rr[uint64(t)]
            for d in range(1, after + 1):
                if c + d >= C:
                    break
                rr = ratio[c + d]
                for t in range(L):
                    acc[uint64(t)] += rr[uint64(t)]
            xr, dr, pr = x[n, c, a0:a1], dy[n, c, a0:a1], pw[n, c, a0:a1]
            dxr = dx[n, c, a0:a1]
            for t in range(L):
                u = uint64(t)
                q = acc[u] * xr[u]
                q = q * coef
                dxr[u] = dr[u] * pr[u] - q               # dy read before dx is written


def lrn_across_backward_numba(x3, dy3, s3, p3, dx3, size, pre_pad, coef):
    if size > 9:
        return lrn_across_backward_numpy(x3, dy3, s3, p3, dx3, size, pre_pad, coef)
    C = x3.shape[1]

    def tile(a, b):
        _lrn_backward_loops(x3, dy3, s3, p3, dx3, a, b, pre_pad, size - 1 - pre_pad, coef,
                            np.empty((C, b - a), x3.dtype), np.empty(b - a, x3.dtype))
    run_tiles(tile, _spatial_tiles(x3.shape, 4))


lrn_across_forward = kernel(lrn_across_forward_numpy, lrn_across_forward_numba)
lrn_across_backward = kernel(lrn_across_backward_numpy, lrn_across_backward_numba)
