"""ONNX converters for the element-wise (neuron) layers, with Caffe's formulas.

ReLU (negative_slope -> LeakyRelu), Sigmoid, TanH, AbsVal, ELU, BNLL (the stable
max(x,0) + log(1 + exp(-|x|))), PReLU (channel_shared: one slope, else one per
channel of axis 1), Power ((shift + scale x)^power, Caffe's constant case when
power*scale == 0), Exp (outer * exp(inner x), inner = ln(base) scale, outer =
base^shift), Log (ln(shift + scale x) / ln(base)), Threshold (x > t as 0/1),
Clip, Swish (x sigmoid(beta x)), Dropout (identity: the deploy/TEST forward).
"""
import numpy as np

from ..proto import caffe_pb2
from .onnx import converter

F = np.float32


def _affine(ctx, x, scale, shift):
    g = ctx.g
    if scale != 1:
        x = g.node("Mul", [x, g.const(F(scale), ctx.name)], base=ctx.name)
    if shift != 0:
        x = g.node("Add", [x, g.const(F(shift), ctx.name)], base=ctx.name)
    return x


@converter("ReLU")
def relu(ctx):
    slope = ctx.lp.relu_param.negative_slope
    if slope:
        ctx.g.node("LeakyRelu", [ctx.x], out=ctx.out, alpha=float(F(slope)))
    else:
        ctx.g.node("Relu", [ctx.x], out=ctx.out)


ONE_OP = {"Sigmoid": "Sigmoid", "TanH": "Tanh", "AbsVal": "Abs"}   # Caffe type -> ONNX op


@converter(*ONE_OP)
def one_op(ctx):
    """Layers that are one parameterless ONNX operator with Caffe's formula."""
    ctx.g.node(ONE_OP[ctx.lp.type], [ctx.x], out=ctx.out)


@converter("ELU")
def elu(ctx):
    ctx.g.node("Elu", [ctx.x], out=ctx.out, alpha=float(F(ctx.lp.elu_param.alpha)))


@converter("BNLL")
def bnll(ctx):
    g, x = ctx.g, ctx.x
    e = g.node("Exp", [g.node("Neg", [g.node("Abs", [x])])])
    soft = g.node("Log", [g.node("Add", [e, g.const(F(1))])])
    g.node("Add", [g.node("Relu", [x]), soft], out=ctx.out)


@converter("PReLU")
def prelu(ctx):
    slope = ctx.param(0)
    rank = len(ctx.bshapes[0])
    if ctx.lp.prelu_param.channel_shared:
        s = ctx.g.const(slope.reshape(()), ctx.name)
    else:
        s = ctx.channel_const(slope, rank)
    ctx.g.node("PRelu", [ctx.x, s], out=ctx.out)


@converter("Power")
def power(ctx):
    p = ctx.lp.power_param
    pw, scale, shift = F(p.power), F(p.scale), F(p.shift)
    g = ctx.g
    if pw * scale == 0:                     # Caffe: a constant, whatever x
        value = F(1) if pw == 0 else np.power(shift, pw)
        zero = g.node("Mul", [ctx.x, g.const(F(0))])
        g.node("Add", [zero, g.const(F(value))], out=ctx.out)
        return
    t = _affine(ctx, ctx.x, scale, shift)
    if pw == 1:
        g.node("Identity", [t], out=ctx.out)
    elif pw == 2:
        g.node("Mul", [t, t], out=ctx.out)
    else:
        g.node("Pow", [t, g.const(pw)], out=ctx.out)


@converter("Exp")
def exp(ctx):
    p = ctx.lp.exp_param
    base, scale, shift = F(p.base), F(p.scale), F(p.shift)
    log_base = F(1) if base == -1 else np.log(base)
    inner = F(log_base * scale)
    outer = F(1) if shift == 0 else (np.exp(shift) if base == -1 else np.power(base, shift))
    g = ctx.g
    x = ctx.x if inner == 1 else g.node("Mul", [ctx.x, g.const(inner)])
    if outer == 1:
        g.node("Exp", [x], out=ctx.out)
    else:
        g.node("Mul", [g.node("Exp", [x]), g.const(F(outer))], out=ctx.out)


@converter("Log")
def log(ctx):
    p = ctx.lp.log_param
    base, scale, shift = F(p.base), F(p.scale), F(p.shift)
    log_base = F(1) if base == -1 else np.log(base)
    base_scale = F(F(1) / log_base)
    g = ctx.g
    y = g.node("Log", [_affine(ctx, ctx.x, scale, shift)])
    if base_scale == 1:
        g.node("Identity", [y], out=ctx.out)
    else:
        g.node("Mul", [y, g.const(base_scale)], out=ctx.out)


@converter("Threshold")
def threshold(ctx):
    g = ctx.g
    t = F(ctx.lp.threshold_param.threshold)
    g.node("Cast", [g.node("Greater", [ctx.x, g.const(t)])], out=ctx.out, to=1)


@converter("Clip")
def clip(ctx):
    p = ctx.lp.clip_param
    g = ctx.g
    g.node("Clip", [ctx.x, g.const(F(p.min)), g.const(F(p.max))], out=ctx.out)


@converter("Swish")
def swish(ctx):
    g = ctx.g
    beta = F(ctx.lp.swish_param.beta)
    bx = ctx.x if beta == 1 else g.node("Mul", [ctx.x, g.const(beta)])
    g.node("Mul", [ctx.x, g.node("Sigmoid", [bx])], out=ctx.out)


@converter("Dropout")
def dropout(ctx):
    layer = ctx.layer
    if getattr(layer, "phase", caffe_pb2.TEST) == caffe_pb2.TRAIN:
        ctx.warn(f'layer "{ctx.name}" (Dropout): exported as the identity (its TEST '
                      "forward); the net was built in the TRAIN phase")
    if not getattr(layer, "scale_train", True):
        ratio = F(ctx.lp.dropout_param.dropout_ratio)
        ctx.g.node("Mul", [ctx.x, ctx.g.const(F(1) - ratio)], out=ctx.out)
    else:
        ctx.g.node("Identity", [ctx.x], out=ctx.out)
