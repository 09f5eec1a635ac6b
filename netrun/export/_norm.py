"""ONNX converters for LRN, BatchNorm, Scale, Bias and MVN, with Caffe's formulas.

* LRN ACROSS_CHANNELS: y = x (k + alpha/n sum_{window of n channels} x^2)^-beta is
  ONNX LRN exactly (same alpha/size convention, window c-(n-1)/2 .. c+(n-1)/2 for
  odd n), but ONNX Runtime's LRN kernel is slow: up to 2048 channels the window
  sum is a 1x1 Conv of x^2 with the banded (C, C) matrix alpha/n, bias k.
  WITHIN_CHANNEL: Caffe's own decomposition -- P = AVE pool of x^2 over n x n with
  pad (n-1)/2, stride 1, where the divisor is always n^2 (the zero padding counts:
  AveragePool count_include_pad=1), then y = x (1 + alpha P)^-beta (shift 1: Caffe
  ignores k in this region).
* BatchNorm with global statistics: s = blob2[0], f = 0 if s == 0 else 1/s,
  mean = f blob0, var = f blob1, y = (x - mean) / sqrt(var + eps): ONNX
  BatchNormalization with scale 1, bias 0 and those mean/var (float32, Caffe's
  order).  With batch statistics (use_global_stats false): the biased mean and
  variance over every axis but 1 (ReduceMean).
* Scale / Bias: the operand (blob or bottom[1]) covers bottom[0]'s axes
  axis .. axis + num_axes; it is reshaped to broadcast (trailing 1s).
* MVN: per (n, c) row (per n across_channels): x - E[x], divided by
  sqrt(E[(x - E[x])^2]) + eps (eps on the std).  The top is Caffe's 4-D shape.
"""
import numpy as np

from ..proto import caffe_pb2
from .onnx import converter

F = np.float32
BANDED_LRN_MAX_CHANNELS = 2048


@converter("LRN")
def lrn(ctx):
    p = ctx.lp.lrn_param
    g = ctx.g
    n = int(p.local_size)
    if p.norm_region == caffe_pb2.LRNParameter.ACROSS_CHANNELS:
        C = ctx.bshapes[0][1]
        if C > BANDED_LRN_MAX_CHANNELS:
            g.node("LRN", [ctx.x], out=ctx.out, size=n, alpha=float(F(p.alpha)),
                   beta=float(F(p.beta)), bias=float(F(p.k)))
            return
        # the same formula as a 1x1 convolution of x^2 with the banded matrix
        # alpha/n [|c - c'| <= (n-1)/2] plus k: ONNX Runtime's LRN kernel is ~10x slower
        half = (n - 1) // 2
        idx = np.arange(C)
        band = (np.abs(idx[:, None] - idx[None, :]) <= half).astype(F) * F(F(p.alpha) / F(n))
        sq = g.node("Mul", [ctx.x, ctx.x])
        scale = g.node("Conv", [sq, g.const(band.reshape(C, C, 1, 1), ctx.name + "/band"),
                                g.const(np.full(C, F(p.k)), ctx.name + "/k")],
                       kernel_shape=[1, 1])
        g.node("Mul", [ctx.x, g.node("Pow", [scale, g.const(F(-p.beta))])], out=ctx.out)
        return
    pad = (n - 1) // 2
    sq = g.node("Mul", [ctx.x, ctx.x])
    pooled = g.node("AveragePool", [sq], kernel_shape=[n, n], strides=[1, 1],
                    pads=[pad] * 4, count_include_pad=1)
    base = g.node("Add", [g.node("Mul", [pooled, g.const(F(p.alpha))]), g.const(F(1))])
    powed = g.node("Pow", [base, g.const(F(-p.beta))])
    g.node("Mul", [ctx.x, powed], out=ctx.out)


@converter("BatchNorm")
def batchnorm(ctx):
    layer, g = ctx.layer, ctx.g
    rank = len(ctx.bshapes[0])
    eps = F(layer.eps)
    if layer.use_global:
        s = ctx.param(2).reshape(-1)[0]
        f = F(0) if s == 0 else F(F(1) / s)
        mean = ctx.param(0) * f
        std = np.sqrt(ctx.param(1) * f + eps).astype(F)
        if rank >= 2:
            # ONNX BatchNormalization is this formula (scale 1, bias 0), and ONNX
            # Runtime folds it into a Convolution before it
            c = mean.shape[0]
            g.node("BatchNormalization",
                   [ctx.x, g.const(np.ones(c, F), ctx.name + "/one"),
                    g.const(np.zeros(c, F), ctx.name + "/zero"),
                    g.const(mean, ctx.name + "/mean"),
                    g.const((ctx.param(1) * f).astype(F), ctx.name + "/var")],
                   out=ctx.out, epsilon=float(eps))
            return
        axis = 0
        centred = g.node("Sub", [ctx.x, ctx.channel_const(mean, rank, axis, ctx.name + "/mean")])
        g.node("Div", [centred, ctx.channel_const(std, rank, axis, ctx.name + "/std")],
               out=ctx.out)
        return
    axes = [a for a in range(rank) if a != 1] if rank > 1 else [0]
    mean = g.node("ReduceMean", [ctx.x], axes=axes, keepdims=1)
    xc = g.node("Sub", [ctx.x, mean])
    var = g.node("ReduceMean", [g.node("Mul", [xc, xc])], axes=axes, keepdims=1)
    std = g.node("Sqrt", [g.node("Add", [var, g.const(eps)])])
    g.node("Div", [xc, std], out=ctx.out)


def _operand(ctx, value_or_name, shape, axis_param):
    """Reshape a Scale/Bias operand to broadcast over bottom[0] from its axis."""
    rank = len(ctx.bshapes[0])
    nax = len(shape)
    axis = 0 if nax == 0 else (axis_param + rank if axis_param < 0 else axis_param)
    target = list(shape) + [1] * (rank - axis - nax)
    if isinstance(value_or_name, np.ndarray):
        return ctx.g.const(value_or_name.reshape(target), ctx.name)
    if axis == 0 and ctx.dynamic and nax:
        target[0] = 0
    return ctx.g.node("Reshape", [value_or_name, ctx.g.ints(target)])


@converter("Scale")
def scale(ctx):
    p = ctx.lp.scale_param
    g = ctx.g
    if len(ctx.bottoms) > 1:
        s = _operand(ctx, ctx.bottoms[1], ctx.bshapes[1], p.axis)
        shape = ctx.bshapes[1]
    else:
        shape = ctx.layer.blobs[0].shape
        s = _operand(ctx, ctx.param(0), shape, p.axis)
    if not ctx.layer.bias_term:
        g.node("Mul", [ctx.x, s], out=ctx.out)
        return
    b = _operand(ctx, ctx.param(len(ctx.layer.blobs) - 1), shape, p.axis)
    g.node("Add", [g.node("Mul", [ctx.x, s]), b], out=ctx.out)


@converter("Bias")
def bias(ctx):
    p = ctx.lp.bias_param
    if len(ctx.bottoms) > 1:
        b = _operand(ctx, ctx.bottoms[1], ctx.bshapes[1], p.axis)
    else:
        b = _operand(ctx, ctx.param(0), ctx.layer.blobs[0].shape, p.axis)
    ctx.g.node("Add", [ctx.x, b], out=ctx.out)


@converter("MVN")
def mvn(ctx):
    layer, g = ctx.layer, ctx.g
    shape4 = list(ctx.tshapes[0])
    rows = [0, -1] if layer.across else [0, shape4[1], -1]
    if not ctx.dynamic:
        rows[0] = shape4[0]
    x = g.node("Reshape", [ctx.x, g.ints(rows)])
    ax = len(rows) - 1
    xc = g.node("Sub", [x, g.node("ReduceMean", [x], axes=[ax], keepdims=1)])
    y = xc
    if layer.normalize_variance:
        var = g.node("ReduceMean", [g.node("Mul", [xc, xc])], axes=[ax], keepdims=1)
        sigma = g.node("Add", [g.node("Sqrt", [var]), g.const(F(layer.eps))])
        y = g.node("Div", [xc, sigma])
    ctx.reshape(y, shape4, out=ctx.out)
