"""ONNX converters for Convolution, Deconvolution and Pooling, with Caffe's geometry.

* Convolution -> Conv (group, pads, strides, dilations; one node per bottom, shared
  weights); Deconvolution -> ConvTranspose (Caffe's weight layout (C_in, C_out/group,
  k...) is ONNX's; output s(n-1) + d(k-1) + 1 - 2p, output_padding 0).
* Pooling: the output size is Caffe's -- ceil((H + 2p - k)/s) + 1, minus one when
  the last window would start in the bottom/right padding (pad > 0) -- never ONNX's
  ceil_mode.  The ONNX node gets explicit pads (p before, (oh-1)s + k - H - p after)
  and floor rounding, which give exactly that size.  MAX: padding is ignored by
  MaxPool, as Caffe skips it (first-max ties only matter for the mask top, which is
  MaxPool's index modulo H*W).  AVE: Caffe divides by the window clipped to the
  padded input (H + p), counting the top/left padding; ONNX AveragePool counts
  either every padded cell or none, so the input is zero-padded by an explicit Pad,
  pooled with the full window as divisor (kh*kw) and multiplied by the constant
  kh*kw / caffe_size(oh, ow) where the two differ.  Global pooling -> GlobalMaxPool /
  GlobalAveragePool.  STOCHASTIC (TEST): sum(x^2)/sum(x) per window.
* SPP: one such pooling per pyramid level, flattened and concatenated.
* Im2col: a grouped Conv with one-hot kernels (exact).
"""
import numpy as np

from ..kernels.pooling import PoolGeometry
from ..proto import caffe_pb2
from .onnx import converter

MAX, AVE, STOCHASTIC = (caffe_pb2.PoolingParameter.MAX, caffe_pb2.PoolingParameter.AVE,
                        caffe_pb2.PoolingParameter.STOCHASTIC)


def _conv_attrs(ctx):
    layer = ctx.layer
    if layer.axis != 1:
        ctx.fail(f"convolution_param.axis {layer.axis}: ONNX convolves from axis 1")
    g = layer.geom
    return dict(kernel_shape=list(g.kernel), strides=list(g.stride),
                pads=list(g.pad) * 2, dilations=list(g.dilation), group=layer.group)


@converter("Convolution")
def convolution(ctx):
    _conv(ctx, "Conv")


@converter("Deconvolution")
def deconvolution(ctx):
    _conv(ctx, "ConvTranspose")


def _conv(ctx, op):
    attrs = _conv_attrs(ctx)
    w = ctx.g.const(ctx.param(0), f"{ctx.name}/w")
    ins = [w]
    if ctx.layer.bias_term:
        ins.append(ctx.g.const(ctx.param(1), f"{ctx.name}/b"))
    for x, out in zip(ctx.bottoms, ctx.outs):
        ctx.g.node(op, [x] + ins, out=out, **attrs)


@converter("Im2col")
def im2col(ctx):
    """Caffe's im2col rows (c, k_1..k_m) as a grouped Conv with one-hot kernels: group c
    has one output channel per kernel offset, weight 1 there (exact: x * 1 + 0s)."""
    layer = ctx.layer
    if layer.axis != 1:
        ctx.fail(f"convolution_param.axis {layer.axis}: ONNX convolves from axis 1")
    geo = layer.geom
    C, K = layer.C, geo.K
    eye = np.eye(K, dtype=np.float32).reshape((K, 1) + geo.kernel)
    w = np.tile(eye, (C,) + (1,) * (eye.ndim - 1))
    ctx.g.node("Conv", [ctx.x, ctx.g.const(w, ctx.name + "/onehot")], out=ctx.out,
               kernel_shape=list(geo.kernel), strides=list(geo.stride), pads=list(geo.pad) * 2,
               dilations=list(geo.dilation), group=C)


def _pool_plan(ctx, H, W, kernel, stride, pad, ceil):
    """(pad_end, geometry): the end pads making ONNX's floor size Caffe's size."""
    geo = PoolGeometry(H, W, kernel, stride, pad, ceil)
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    eh = max(0, (geo.oh - 1) * sh + kh - H - ph)
    ew = max(0, (geo.ow - 1) * sw + kw - W - pw)
    if eh >= kh or ew >= kw:
        ctx.fail(f"pooling window {kernel} stride {stride}: Caffe's last window lies wholly "
                 "outside the input, which ONNX pooling cannot express")
    for n, k, s, p, e, o in ((H, kh, sh, ph, eh, geo.oh), (W, kw, sw, pw, ew, geo.ow)):
        assert (n + p + e - k) // s + 1 == o, "pooling size plan"
    return (eh, ew), geo


def pool(ctx, x, method, kernel, stride, pad, ceil=True, outs=None):
    """Caffe's 2-D pooling of x (shape ctx.bshapes[0]) as ONNX nodes; returns the
    output name (outs: the names to give the output and, for MAX, the mask)."""
    g = ctx.g
    H, W = ctx.bshapes[0][2:]
    e, geo = _pool_plan(ctx, H, W, kernel, stride, pad, ceil)
    p = pad
    out = outs[0] if outs else None
    if method == MAX:
        attrs = dict(kernel_shape=list(kernel), strides=list(stride),
                     pads=[p[0], p[1], e[0], e[1]])
        if not outs or len(outs) == 1:
            return g.node("MaxPool", [x], out=out, **attrs)
        y, idx = g.node("MaxPool", [x], out=[outs[0], g.fresh(ctx.name + "/idx")],
                        n_out=2, **attrs)
        plane = g.node("Mod", [idx, g.const(np.int64(H * W), dtype=np.int64)])
        g.node("Cast", [plane], out=outs[1], to=1)
        return y
    padded = x
    if any(p) or any(e):
        pads = g.ints([0, 0, p[0], p[1], 0, 0, e[0], e[1]])
        padded = g.node("Pad", [x, pads, g.const(np.float32(0))], mode="constant")
    attrs = dict(kernel_shape=list(kernel), strides=list(stride))
    if method == AVE:
        avg = g.node("AveragePool", [padded], **attrs)
        full = kernel[0] * kernel[1]
        size = geo.pool_size()
        if np.all(size == full):
            return g.node("Identity", [avg], out=out)
        ratio = (np.float32(full) / size.astype(np.float32)).astype(np.float32)
        return g.node("Mul", [avg, g.const(ratio, ctx.name + "/divisor")], out=out)
    sq = g.node("Mul", [padded, padded])                   # STOCHASTIC, TEST phase
    num = g.node("AveragePool", [sq], **attrs)
    den = g.node("AveragePool", [padded], **attrs)
    return g.node("Div", [num, den], out=out)


@converter("Pooling")
def pooling(ctx):
    layer, g = ctx.layer, ctx.g
    if len(ctx.bshapes[0]) != 4:
        ctx.fail("Pooling needs a 4-D input")
    method = layer.method
    if layer.global_pooling and len(ctx.outs) == 1 and method in (MAX, AVE):
        g.node("GlobalMaxPool" if method == MAX else "GlobalAveragePool", [ctx.x],
               out=ctx.out)
        return
    if method == STOCHASTIC and layer.phase == caffe_pb2.TRAIN:
        ctx.fail("STOCHASTIC pooling in the TRAIN phase samples at random")
    kernel = tuple(ctx.bshapes[0][2:]) if layer.global_pooling else layer.kernel
    pool(ctx, ctx.x, method, kernel, layer.stride, layer.pad, layer.ceil, outs=ctx.outs)


@converter("SPP")
def spp(ctx):
    """Levels l = 0..height-1: 2^l x 2^l bins, kernel ceil(H / bins) = stride, pad
    (kernel bins - H + 1) / 2, Caffe's pooling rules; flattened and concatenated."""
    layer, g = ctx.layer, ctx.g
    if layer.method == STOCHASTIC:
        ctx.fail("SPP's STOCHASTIC pooling samples at random (its pooling layers are TRAIN)")
    parts = []
    for geo in layer.levels:
        kernel, pad = (geo.kh, geo.kw), (geo.ph, geo.pw)
        out = ctx.out if layer.height == 1 else None
        y = pool(ctx, ctx.x, layer.method, kernel, kernel, pad, True,
                 outs=[out] if out else None)
        parts.append(y)
    if layer.height > 1:
        flat = [g.node("Flatten", [y], axis=1) for y in parts]
        g.node("Concat", flat, out=ctx.out, axis=1)
