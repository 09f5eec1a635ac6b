"""Pooling kernels (2-D MAX / AVE / STOCHASTIC, Caffe's PoolingLayer).

The rules (output size, windows, first maximum, AVE divisor, STOCHASTIC) are in
layers/vision.py's docstring.

MAX and AVE run as K passes over strided views, one per window offset, of the
unpadded input (or, for small planes with equal strides, of a padded plane seen flat:
one long loop per offset), over tiles of whole planes that fit in the caches.  MAX
keeps y = fmax(y, v) and the first maximum's offset (1 + k, uint8) as
sel = max(sel, (v > y) * (k + 1)); backward adds dy * (sel == k + 1) offset by offset,
last offset first (for each input, the windows that chose it in raster order: Caffe's
order of additions).  With no backward planned the argmax is skipped.
"""
import math

import numpy as np

from .layout import _plane_tiles, _planes, _pool_axis_range, valid_cols, wide_grid
from .scratch import scratch
from .select import int32, jit, kernel, uint64
from .tiles import run_tiles, tile_ranges

FLT_MAX = float(np.finfo(np.float32).max)
FLT_MIN = float(np.finfo(np.float32).tiny)
_ALL = slice(None)


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
    y, sel = max_pool_select_numpy(x, g, out)
    return y, select_to_index_numpy(sel, g, y.shape)


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

def _sel_dtype(g):
    return np.uint8 if g.K < 255 else np.int32

def max_pool_select_numpy(x, g, out=None, select=True):
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


def select_to_index_numpy(sel, g, shape):
    """In-plane index h*W + w (int64, -1: none, ``shape`` (N, C, oh, ow)) from
    max_pool_select's sel."""
    if sel.ndim == 2:                                  # wide layout
        sel = sel.reshape(tuple(shape[:2]) + (g.oh, _WidePlan.row(g)))[..., :g.ow]
    i, j = np.divmod(np.arange(g.K + 1, dtype=np.int64) - 1, g.kw)
    lut = i * g.W + j                    # sel -> delta (kh W + kw)
    idx = lut[sel] + g.window_base()
    idx[sel == 0] = -1
    return idx


def max_pool_backward_numpy(dy, sel, g, dx):
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


def ave_pool_numpy(x, g, out=None):
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


def ave_pool_backward_numpy(dy, g, dx=None):
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


# =====================================================================================
# Compiled twins: one pass over each window, as Caffe's loops
# =====================================================================================
# MAX keeps the in-plane index h*W + w of the first maximum (int32, -1: none) as its
# ``sel``, and that element's value (the numpy twin's fmax may return +0.0 where
# a window's first maximum is -0.0 tied with a later +0.0: the only difference);
# AVE sums each window's real pixels in row-major order (the numpy twins' order),
# then divides by the same float pool size.  Backward walks the windows in
# raster order, so every input adds its contributions in Caffe's order.

def _thread_parts(n, unit_bytes):
    """[lo, hi) ranges of n planes: one per thread when the work is worth sharing."""
    return tile_ranges(n, unit_bytes, 1 << 62)


# Each plane is first copied into its row and column phases (_fill_phases; outside the
# image: -inf for MAX, which never wins a strict >, 0 for AVE, which adds nothing), so
# that every window offset is one contiguous run over all of the plane's outputs.  The
# inner loops use unsigned indices (numba then drops its negative-index check and LLVM
# vectorizes them: 0.3 ns instead of 4 ns an element).  AVE's backward keeps the column
# phases of one row at a time (_phase_buffer), its window rows clipped to the image.

@jit
def _fill_phases(xp, xpp, kh, kw, sh, sw, ph, pw, fill):
    """One plane (H, W) into its row and column phases: xpp[ra, ca, r, q] =
    xp[r sh + ra - ph, q sw + ca - pw], ``fill`` outside the image (each row as three
    runs: padding, image, padding)."""
    H, W = xp.shape
    Hq, Wq = xpp.shape[2], xpp.shape[3]
    for ra in range(xpp.shape[0]):
        for ca in range(xpp.shape[1]):
            off = ca - pw
            qlo, qhi = valid_cols(off, sw, W, Wq)
            for r in range(Hq):
                row = xpp[ra, ca, r]
                h = r * sh + ra - ph
                if 0 <= h < H:
                    xr = xp[h]
                    for q in range(qlo):
                        row[uint64(q)] = fill
                    for q in range(qlo, qhi):
                        row[uint64(q)] = xr[uint64(q * sw + off)]
                    for q in range(qhi, Wq):
                        row[uint64(q)] = fill
                else:
                    row[:] = fill


@jit
def _max_pool_loops(x, y, idx, lo, hi, kh, kw, sh, sw, ph, pw, neg, want_idx, xpp):
    # Each plane is first copied into its row and column phases (padding -inf):
    # xpp[ra, ca, r * Wq + q] = x[r sh + ra - ph, q sw + ca - pw].  Window offset
    # (a, b) of output (i, j) is then xpp[a mod sh, b mod sw, (i + a div sh) Wq +
    # j + b div sw]: for one offset, every output of the plane is one contiguous run
    # (Wq - ow columns of each row are computed and dropped), a loop long enough to
    # vectorize however small the plane.  Offsets in row-major order, strict >: the
    # first maximum is kept, NaN and ties never replace it, -inf padding never wins
    # (Caffe's windows are clipped to the image: the same maximum and index).
    W = x.shape[2]
    oh, ow = y.shape[1], y.shape[2]
    Hq = xpp.shape[2]
    Wq = xpp.shape[3]
    nca = xpp.shape[1]                  # column phases kept: min(sw, kw)
    n = oh * Wq
    m = np.empty(n, x.dtype)
    best = np.empty(n, np.int32)        # the winner's a W + b (its index - the origin's)
    none = int32(-2147483648)
    ninf = x.dtype.type(-np.inf)
    for p in range(lo, hi):
        _fill_phases(x[p], xpp, kh, kw, sh, sw, ph, pw, ninf)
        flat = xpp.reshape(xpp.shape[0] * nca, Hq * Wq)
        m[:] = neg
        best[:] = none
        for a in range(kh):
            for b in range(kw):
                src = flat[(a % sh) * nca + b % sw]
                base = (a // sh) * Wq + b // sw
                if want_idx:
                    code = int32(a * W + b)
                    for k in range(n):
                        u = uint64(k)
                        v = src[uint64(base + k)]
                        mk = m[u]
                        better = v > mk
                        m[u] = v if better else mk
                        best[u] = code if better else best[u]
                else:
                    for k in range(n):
                        u = uint64(k)
                        v = src[uint64(base + k)]
                        mk = m[u]
                        m[u] = v if v > mk else mk
        for i in range(oh):
            yr = y[p, i]
            for j in range(ow):
                yr[uint64(j)] = m[uint64(i * Wq + j)]
            if want_idx:
                ir = idx[p, i]
                origin = (i * sh - ph) * W - pw
                for j in range(ow):
                    c = best[uint64(i * Wq + j)]
                    ir[uint64(j)] = int32(-1) if c == none else int32(origin + j * sw + c)


def _plane_phases(g, dtype):
    """The phase buffer of one plane (see _max_pool_loops): only the phases a window
    reads (min(s, k) of each axis: a stride past the window skips the rest), and one
    spare row, as the last offsets' runs end up to (kw - 1) div sw past the last row."""
    Wq = g.ow + (g.kw - 1) // g.sw
    Hq = g.oh + (g.kh - 1) // g.sh + 1
    return np.empty((min(g.sh, g.kh), min(g.sw, g.kw), Hq, Wq), dtype)


def _phase_buffer(g, dtype):
    Wq = -(-g.padded_shape()[1] // g.sw)
    return np.empty((g.H, g.sw, Wq), dtype)


def max_pool_select_numba(x, g, out=None, select=True):
    N, C = x.shape[:2]
    NC = N * C
    y = out if out is not None else np.empty((N, C) + g.out_shape, x.dtype)
    idx = np.empty((N, C) + g.out_shape, np.int32) if select else None
    if NC == 0:
        return y, idx
    x3 = np.ascontiguousarray(x).reshape(NC, g.H, g.W)
    y3 = y.reshape(NC, g.oh, g.ow)
    i3 = idx.reshape(NC, g.oh, g.ow) if select else np.empty((1, 1, 1), np.int32)
    neg = x.dtype.type(-FLT_MAX)
    run_tiles(lambda lo, hi: _max_pool_loops(x3, y3, i3, lo, hi, g.kh, g.kw, g.sh, g.sw,
                                             g.ph, g.pw, neg, select,
                                             _plane_phases(g, x.dtype)),
              _thread_parts(NC, x[0, 0].nbytes))
    return y, idx


def select_to_index_numba(sel, g, shape):
    return sel.astype(np.int64).reshape(shape)


@jit
def _max_pool_backward_loops(dy, idx, dx, lo, hi):
    HW = dx.shape[1]
    P = dy.shape[1]
    for p in range(lo, hi):
        for q in range(HW):
            dx[p, q] = 0
        for q in range(P):                       # windows in raster order
            k = idx[p, q]
            if k >= 0:
                dx[p, k] += dy[p, q]


def max_pool_backward_numba(dy, sel, g, dx):
    N, C = dy.shape[:2]
    NC = N * C
    dy2 = np.ascontiguousarray(dy).reshape(NC, -1)
    dx2 = dx.reshape(NC, g.H * g.W)
    run_tiles(lambda lo, hi: _max_pool_backward_loops(dy2, sel.reshape(NC, -1), dx2, lo, hi),
              _thread_parts(NC, dx[0, 0].nbytes if NC else 0))
    return dx


@jit
def _ave_pool_loops(x, y, size, lo, hi, kh, kw, sh, sw, ph, pw, zero, xpp):
    # The phase layout of _max_pool_loops, 0 outside the image: each window adds its
    # elements in row-major order, as Caffe's loop over the clipped window does (the
    # padding's +0 changes no sum: a sum that starts at +0 is never -0), then
    # divides by Caffe's pool size (padding included).
    oh, ow = y.shape[1], y.shape[2]
    Hq = xpp.shape[2]
    Wq = xpp.shape[3]
    nca = xpp.shape[1]                  # column phases kept: min(sw, kw)
    n = oh * Wq
    acc = np.empty(n, x.dtype)
    for p in range(lo, hi):
        _fill_phases(x[p], xpp, kh, kw, sh, sw, ph, pw, zero)
        flat = xpp.reshape(xpp.shape[0] * nca, Hq * Wq)
        acc[:] = zero
        for a in range(kh):
            for b in range(kw):
                src = flat[(a % sh) * nca + b % sw]
                base = (a // sh) * Wq + b // sw
                for k in range(n):
                    acc[uint64(k)] += src[uint64(base + k)]
        for i in range(oh):
            yr = y[p, i]
            sr = size[i]
            for j in range(ow):
                yr[uint64(j)] = acc[uint64(i * Wq + j)] / sr[uint64(j)]


@jit
def _global_ave_loops(x, y, size, lo, hi, zero):
    # x (planes, H*W): y[p] = (((0 + x[p, 0]) + x[p, 1]) + ...) / size; eight planes
    # at a time (independent sums: the adds overlap, each in its own order)
    n = x.shape[1]
    acc = np.empty(8, x.dtype)
    for p0 in range(lo, hi, 8):
        m = min(8, hi - p0)
        acc[:] = zero
        for k in range(n):
            for q in range(m):
                acc[q] += x[p0 + q, k]
        for q in range(m):
            y[p0 + q] = acc[q] / size


def ave_pool_numba(x, g, out=None):
    N, C = x.shape[:2]
    NC = N * C
    y = out if out is not None else np.empty((N, C) + g.out_shape, x.dtype)
    if NC == 0:
        return y
    size = g.pool_size().astype(x.dtype)
    x3 = np.ascontiguousarray(x).reshape(NC, g.H, g.W)
    y3 = y.reshape(NC, g.oh, g.ow)
    zero = x.dtype.type(0)
    if (g.oh, g.ow, g.ph, g.pw) == (1, 1, 0, 0) and g.kh >= g.H and g.kw >= g.W:
        # global pooling: each plane's sum in row-major order, planes side by side
        x2, y1 = x3.reshape(NC, -1), y3.reshape(NC)
        run_tiles(lambda lo, hi: _global_ave_loops(x2, y1, size[0, 0], lo, hi, zero),
                  _thread_parts(NC, x[0, 0].nbytes))
        return y
    run_tiles(lambda lo, hi: _ave_pool_loops(x3, y3, size, lo, hi, g.kh, g.kw, g.sh, g.sw,
                                             g.ph, g.pw, zero, _plane_phases(g, x.dtype)),
              _thread_parts(NC, x[0, 0].nbytes))
    return y


@jit
def _ave_pool_backward_loops(dy, dx, size, lo, hi, kh, kw, sh, sw, ph, pw, dph):
    H, W = dx.shape[1], dx.shape[2]
    oh, ow = dy.shape[1], dy.shape[2]
    Wq = dph.shape[2]
    share = np.empty(ow, dy.dtype)
    for p in range(lo, hi):
        dph[:] = 0
        for i in range(oh):
            dyr = dy[p, i]
            sr = size[i]
            for j in range(ow):
                share[uint64(j)] = dyr[uint64(j)] / sr[uint64(j)]
            h0 = i * sh - ph
            h1 = min(h0 + kh, H)
            h0 = max(h0, 0)
            for h in range(h0, h1):
                # columns last to first: each input adds its windows in raster order
                for b in range(kw - 1, -1, -1):
                    r = dph[h, b % sw]
                    c = b // sw
                    for j in range(ow):
                        r[uint64(j + c)] += share[uint64(j)]
        for h in range(H):                      # the phases back into the plane
            dr = dx[p, h]
            for a in range(sw):
                r = dph[h, a]
                for q in range(Wq):
                    w = q * sw + a - pw
                    if 0 <= w < W:
                        dr[uint64(w)] = r[uint64(q)]


@jit
def _global_ave_backward_loops(dy, dx, size, lo, hi):
    for p in range(lo, hi):
        v = dy[p] / size
        row = dx[p]
        for k in range(row.shape[0]):
            row[uint64(k)] = v


def ave_pool_backward_numba(dy, g, dx=None):
    N, C = dy.shape[:2]
    NC = N * C
    if dx is None:
        dx = np.empty((N, C, g.H, g.W), dy.dtype)
    if NC == 0:
        return dx
    size = g.pool_size().astype(dy.dtype)
    dy3 = np.ascontiguousarray(dy).reshape(NC, g.oh, g.ow)
    dx3 = dx.reshape(NC, g.H, g.W)
    if g.single_window() == (0, g.H, 0, g.W):        # global pooling: one share each
        dy1, dx2 = dy3.reshape(NC), dx3.reshape(NC, -1)
        _global_ave_backward_loops(dy1, dx2, size[0, 0], 0, NC)     # a fill: one thread
        return dx
    run_tiles(lambda lo, hi: _ave_pool_backward_loops(dy3, dx3, size, lo, hi, g.kh, g.kw,
                                                      g.sh, g.sw, g.ph, g.pw,
                                                      _phase_buffer(g, dy.dtype)),
              _thread_parts(NC, dx[0, 0].nbytes))
    return dx


def _input_bytes(a, g, *args, **kwargs):
    """The pooling input's size, whichever array (x, dy, sel) a call gets: the
    forward and backward of one layer pick the same twin (their argmax differ)."""
    return a.shape[0] * a.shape[1] * g.H * g.W * 4


max_pool_select = kernel(max_pool_select_numpy, max_pool_select_numba, _input_bytes)
max_pool_backward = kernel(max_pool_backward_numpy, max_pool_backward_numba,
                           lambda dy, sel, g, dx: _input_bytes(dy, g))
ave_pool = kernel(ave_pool_numpy, ave_pool_numba, _input_bytes)
ave_pool_backward = kernel(ave_pool_backward_numpy, ave_pool_backward_numba, _input_bytes)


def _index_bytes(sel, g, shape):
    return _input_bytes(np.empty(tuple(shape[:2]) + (0,)), g)


select_to_index = kernel(select_to_index_numpy, select_to_index_numba, _index_bytes)
