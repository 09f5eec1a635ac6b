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
"""
import numpy as np

from ..layers.vision import PoolGeometry
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


def _pool_plan(ctx, kernel):
    """(kernel, stride, pad_begin, pad_end, geometry) making ONNX's floor size Caffe's."""
    layer = ctx.layer
    N, C, H, W = ctx.bshapes[0]
    geo = PoolGeometry(H, W, kernel, layer.stride, layer.pad, layer.ceil)
    kh, kw = kernel
    sh, sw = layer.stride
    ph, pw = layer.pad
    oh, ow = geo.oh, geo.ow
    eh = max(0, (oh - 1) * sh + kh - H - ph)
    ew = max(0, (ow - 1) * sw + kw - W - pw)
    if eh >= kh or ew >= kw:
        ctx.fail(f"pooling window {kernel} stride {layer.stride}: Caffe's last window "
                 "lies wholly outside the input, which ONNX pooling cannot express")
    for n, k, s, p, e, o in ((H, kh, sh, ph, eh, oh), (W, kw, sw, pw, ew, ow)):
        assert (n + p + e - k) // s + 1 == o, "pooling size plan"
    return (kh, kw), (sh, sw), (ph, pw), (eh, ew), geo


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
    kernel = tuple(ctx.bshapes[0][2:]) if layer.global_pooling else layer.kernel
    k, s, p, e, geo = _pool_plan(ctx, kernel)
    if method == MAX:
        attrs = dict(kernel_shape=list(k), strides=list(s), pads=[p[0], p[1], e[0], e[1]])
        if len(ctx.outs) == 1:
            g.node("MaxPool", [ctx.x], out=ctx.out, **attrs)
            return
        y, idx = g.node("MaxPool", [ctx.x], out=[ctx.outs[0], g.fresh(ctx.name + "/idx")],
                        n_out=2, **attrs)
        H, W = ctx.bshapes[0][2:]
        plane = g.node("Mod", [idx, g.const(np.int64(H * W), dtype=np.int64)])
        g.node("Cast", [plane], out=ctx.outs[1], to=1)
        return
    padded = ctx.x
    if any(p) or any(e):
        pads = g.ints([0, 0, p[0], p[1], 0, 0, e[0], e[1]])
        padded = g.node("Pad", [ctx.x, pads, g.const(np.float32(0))], mode="constant")
    attrs = dict(kernel_shape=list(k), strides=list(s))
    if method == AVE:
        avg = g.node("AveragePool", [padded], **attrs)
        full = k[0] * k[1]
        size = geo.pool_size()
        if np.all(size == full):
            g.node("Identity", [avg], out=ctx.out)
        else:
            ratio = (np.float32(full) / size.astype(np.float32)).astype(np.float32)
            g.node("Mul", [avg, g.const(ratio, ctx.name + "/divisor")], out=ctx.out)
        return
    if layer.phase == caffe_pb2.TRAIN:
        ctx.fail("STOCHASTIC pooling in the TRAIN phase samples at random")
    sq = g.node("Mul", [padded, padded])
    num = g.node("AveragePool", [sq], **attrs)
    den = g.node("AveragePool", [padded], **attrs)
    g.node("Div", [num, den], out=ctx.out)
