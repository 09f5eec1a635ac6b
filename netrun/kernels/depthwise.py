"""Depthwise convolution backward (one input channel per group).

The forward is the GEMM per group of every grouped convolution (as Caffe's, so its
sums come out bit-identical); these are the input and weight gradients, as
functions of a ConvGeometry ``g``.
"""
import numpy as np

from .layout import POOL_TILE_BYTES, valid_cols, wide_grid
from .scratch import scratch
from .select import float64, jit, kernel, uint64
from .tiles import run_tiles, tile_ranges

_ALL = slice(None)


# -- depthwise backward (the forward is a GEMM per group, as Caffe's) ---------------
# 2-D with equal strides: each plane as one flat row.
# The padded plane (Hp, Wp) read by kernel offset (i, j) for output (r, q) is
# flat[i d Wp + j d + s (r Wp + q)]: one strided slice of length
# L = (oh - 1) Wp + ow for all outputs, in a "wide" grid of rows Wp long whose
# columns q >= ow are discarded.  Long rows instead of one short row per output
# line: a 14x14 plane costs 9 multiply-adds of 200 elements, not 126 of 14.
# Other depthwise geometries loop over kernel offsets on the padded plane.
def wide_ok(g, in_sp):
    return g.nsp == 2 and g.stride[0] == g.stride[1] and all(in_sp)


def wide(g, in_sp, out_sp):
    """(Hp, Wp, L, [(k, flat slice)]) of the wide layout."""
    pads = g._pads(in_sp, out_sp)
    Hp, Wp = (n + lo + hi for n, (lo, hi) in zip(in_sp, pads))
    s = g.stride[0]
    L = (out_sp[0] - 1) * Wp + out_sp[1]
    offs = []
    for ki, (i, j) in enumerate(np.ndindex(*g.kernel)):
        b = i * g.dilation[0] * Wp + j * g.dilation[1]
        offs.append((ki, slice(b, b + s * (L - 1) + 1, s)))
    return Hp, Wp, L, offs


def plane_weights(g, w, num):
    """w (G, 1, kh, kw) as one row of K weights per (image, channel) plane."""
    G = w.shape[0]
    return np.broadcast_to(w.reshape(1, G, g.K), (num, G, g.K)).reshape(num * G, g.K)


def dw_wide_backward_data_numpy(g, dy, w, in_sp, out):
    num, G = dy.shape[:2]
    out_sp = dy.shape[2:]
    Hp, Wp, L, offs = wide(g, in_sp, out_sp)
    dyw = wide_grid(dy, Wp, "dw_dy")
    wk = plane_weights(g, w, num)
    acc = scratch("dw_acc", (num * G, Hp, Wp), dy.dtype)
    (plo, _), (wlo, _) = g._pads(in_sp, out_sp)
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


def dw_wide_weight_grad_numpy(g, x, dy):
    num, G = x.shape[:2]
    out_sp = dy.shape[2:]
    Hp, Wp, L, offs = wide(g, x.shape[2:], out_sp)
    xf = g.padded_scratch(x, out_sp, "dw_pad").reshape(num * G, Hp * Wp)
    dyw = wide_grid(dy, Wp, "dw_dy")
    dw = np.empty((num * G, g.K), dy.dtype)

    def planes(lo, hi):
        for ki, sl in offs:
            dw[lo:hi, ki] = np.einsum("pl,pl->p", dyw[lo:hi, :L], xf[lo:hi, sl])
    run_tiles(planes, tile_ranges(num * G, Hp * Wp * dy.itemsize, POOL_TILE_BYTES))
    return dw.reshape(num, G, g.K).sum(axis=0).reshape((G, 1) + g.kernel)


def dw_backward_data(g, dy, w, G, in_sp):
    num, Co = dy.shape[:2]
    out_sp = dy.shape[2:]
    Og = Co // G
    nsp = g.nsp
    wk = w.reshape(G, Og, g.K)
    dy5 = dy.reshape((num, G, Og) + tuple(out_sp))
    pads = g._pads(in_sp, out_sp)
    acc = np.zeros((num, G) + tuple(n + lo + hi for n, (lo, hi) in zip(in_sp, pads)),
                   dy.dtype)
    tmp = np.empty((num, G) + tuple(out_sp), dy.dtype)
    for ki, kidx in enumerate(np.ndindex(*g.kernel)):
        if Og == 1:
            np.multiply(dy5[:, :, 0], wk[:, 0, ki].reshape((G,) + (1,) * nsp), out=tmp)
        else:
            np.einsum("ngj...,gj->ng...", dy5, wk[:, :, ki], out=tmp)
        acc[(_ALL, _ALL) + g.offset_slices(kidx, out_sp)] += tmp
    return acc[(_ALL, _ALL) + tuple(slice(lo, lo + n) for n, (lo, _) in
                                    zip(in_sp, pads))]


def dw_weight_grad(g, xp, dy, G):
    num, Co = dy.shape[:2]
    out_sp = dy.shape[2:]
    Og = Co // G
    dy5 = dy.reshape((num, G, Og) + tuple(out_sp))
    dw = np.empty((G, Og, g.K), dy.dtype)
    sp = "pqrstuvwxyz"[:g.nsp]
    for ki, kidx in enumerate(np.ndindex(*g.kernel)):
        xs = xp[(_ALL, _ALL) + g.offset_slices(kidx, out_sp)]
        dw[:, :, ki] = np.einsum(f"ngj{sp},ng{sp}->gj", dy5, xs)
    return dw.reshape((Co, 1) + g.kernel)


# -- compiled twins (2-D, one output per group, equal strides: the wide cases) --------
# The input gradient adds dy * w (rounded, then added: no fused multiply-add) into
# each input in kernel order, as the numpy twin; the weight gradient sums each
# plane's products in float64 (per output column, then the columns), then the
# planes, rounded once: closer to the exact sum than the float32 sums of either
# Caffe's GEMM or the numpy twin.

@jit
def _dw_data_loops(dy, w, dx, lo, hi, sh, sw, ph, pw, dh, dwl):
    # dy (NG, oh, ow), w (G, kh, kw), dx (NG, H, W); plane q has channel q % G
    G, kh, kw = w.shape
    oh, ow = dy.shape[1], dy.shape[2]
    H, W = dx.shape[1], dx.shape[2]
    for q in range(lo, hi):
        dx[q] = 0
        wq = w[q % G]
        for a in range(kh):
            for b in range(kw):
                wab = wq[a, b]
                off = b * dwl - pw
                jlo, jhi = valid_cols(off, sw, W, ow)
                for i in range(oh):
                    h = i * sh - ph + a * dh
                    if h < 0 or h >= H:
                        continue
                    dr = dy[q, i]
                    xr = dx[q, h]
                    for j in range(jlo, jhi):
                        t = dr[uint64(j)] * wab
                        xr[uint64(j * sw + off)] += t


def dw_wide_backward_data_numba(g, dy, w, in_sp, out):
    num, G = dy.shape[:2]
    NG = num * G
    dy3 = np.ascontiguousarray(dy).reshape((NG,) + dy.shape[2:])
    o3 = out.reshape((NG,) + tuple(in_sp))
    w3 = np.ascontiguousarray(w).reshape((G,) + g.kernel)
    (sh, sw), (ph, pw), (dh, dw) = g.stride, g.pad, g.dilation
    run_tiles(lambda lo, hi: _dw_data_loops(dy3, w3, o3, lo, hi, sh, sw, ph, pw, dh, dw),
              tile_ranges(NG, o3[0].nbytes if NG else 0, 1 << 62))
    return out


@jit
def _dw_weight_loops(x, dy, acc, lo, hi, sh, sw, ph, pw, dh, dwl):
    # x (NG, H, W), dy (NG, oh, ow), acc (NG, kh, kw) float64; per-column float64
    # partial sums (a vectorizable loop), added up at the end
    kh, kw = acc.shape[1], acc.shape[2]
    oh, ow = dy.shape[1], dy.shape[2]
    H, W = x.shape[1], x.shape[2]
    part = np.empty(ow, np.float64)
    for q in range(lo, hi):
        for a in range(kh):
            for b in range(kw):
                off = b * dwl - pw
                jlo, jhi = valid_cols(off, sw, W, ow)
                part[:] = 0.0
                for i in range(oh):
                    h = i * sh - ph + a * dh
                    if h < 0 or h >= H:
                        continue
                    dr = dy[q, i]
                    xr = x[q, h]
                    for j in range(jlo, jhi):
                        part[uint64(j)] += (float64(dr[uint64(j)])
                                            * float64(xr[uint64(j * sw + off)]))
                s = 0.0
                for j in range(ow):
                    s += part[uint64(j)]
                acc[q, a, b] = s


def dw_wide_weight_grad_numba(g, x, dy):
    num, G = x.shape[:2]
    NG = num * G
    x3 = np.ascontiguousarray(x).reshape((NG,) + x.shape[2:])
    dy3 = np.ascontiguousarray(dy).reshape((NG,) + dy.shape[2:])
    acc = np.empty((NG,) + g.kernel, np.float64)
    (sh, sw), (ph, pw), (dh, dw) = g.stride, g.pad, g.dilation
    run_tiles(lambda lo, hi: _dw_weight_loops(x3, dy3, acc, lo, hi, sh, sw, ph, pw, dh, dw),
              tile_ranges(NG, x3[0].nbytes if NG else 0, 1 << 62))
    return acc.reshape((num, G) + g.kernel).sum(axis=0).astype(dy.dtype).reshape(
        (G, 1) + g.kernel)


dw_wide_backward_data = kernel(dw_wide_backward_data_numpy, dw_wide_backward_data_numba)
dw_wide_weight_grad = kernel(dw_wide_weight_grad_numpy, dw_wide_weight_grad_numba)
