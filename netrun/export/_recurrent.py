"""ONNX converters for LSTM, RNN and LSTMUnit: Caffe's recurrences unrolled over T.

ONNX's own LSTM/RNN ops cannot restart a sequence in the middle of a batch (Caffe's
``cont`` input multiplies the carried state by 0 or 1 at every step) and order the
gates differently, so the T steps (T is fixed by the net) are written out:

    LSTM:  a_t = W_hc (cont_t h_{t-1}) + W_xc x_t + b_c [+ W_xc_static x_static]
           i, f, o, g = sigmoid, cont_t sigmoid, sigmoid, tanh of a_t's four blocks
           c_t = f c_{t-1} + i g;   h_t = o tanh(c_t)
    RNN:   h_t = tanh(W_hh (cont_t h_{t-1}) + W_xh x_t + b_h [+ W_xh_static x_static])
           o_t = tanh(W_ho h_t + b_o)
    LSTMUnit: one LSTM step from (c_prev, gate inputs, cont).

The initial state is zeros (a fresh net's first forward: netrun and Caffe carry the
final state into the next forward, which a stateless ONNX model cannot), or the h0/c0
bottoms with ``expose_hidden``, whose tops hT/cT are exported too.
"""
import numpy as np

from .onnx import converter

F = np.float32


def _wt(ctx, k, name):
    return ctx.g.const(np.ascontiguousarray(ctx.param(k).T), f"{ctx.name}/{name}")


def _steps(ctx):
    """(x transform (T, N, R) name, static transform or None, cont (T, N, 1), T)."""
    layer, g = ctx.layer, ctx.g
    T, I = layer.T, layer.I
    x = g.node("Reshape", [ctx.bottoms[0], g.ints([T, 0 if ctx.dynamic else layer.N, I])])
    gx = g.node("Add", [g.node("MatMul", [x, _wt(ctx, 0, "W_x")]),
                        g.const(ctx.param(1), ctx.name + "/b")])
    gs = None
    if layer.static:
        xs = g.node("Reshape", [ctx.bottoms[2], g.ints([0 if ctx.dynamic else layer.N,
                                                        layer.I_static])])
        gs = g.node("MatMul", [xs, _wt(ctx, 2, "W_static")])
    cont = g.node("Unsqueeze", [ctx.bottoms[1], g.ints([2])])
    return gx, gs, cont, T


def _initial(ctx, n_state):
    layer, g = ctx.layer, ctx.g
    if layer.expose:
        off = 3 if layer.static else 2
        return [g.node("Squeeze", [ctx.bottoms[off + j], g.ints([0])]) for j in range(n_state)]
    n = g.node("Slice", [g.node("Shape", [ctx.bottoms[1]]), g.ints([1]), g.ints([2])])
    shape = g.node("Concat", [n, g.ints([layer.H])], axis=0)
    zeros = g.node("ConstantOfShape", [shape],
                   value=ctx.g.onnx.numpy_helper.from_array(np.zeros(1, F)))
    return [zeros] * n_state


def _at(g, seq, t):
    return g.node("Gather", [seq, g.const(np.int64(t), dtype=np.int64)], axis=0)


def _lstm_step(g, c_prev, a, cont_t, H):
    i, f, o, gg = g.node("Split", [a, g.ints([H] * 4)], n_out=4, axis=1)
    i, o = g.node("Sigmoid", [i]), g.node("Sigmoid", [o])
    f = g.node("Mul", [cont_t, g.node("Sigmoid", [f])])
    gg = g.node("Tanh", [gg])
    c = g.node("Add", [g.node("Mul", [f, c_prev]), g.node("Mul", [i, gg])])
    h = g.node("Mul", [o, g.node("Tanh", [c])])
    return c, h


def _stack(ctx, hs, out):
    g = ctx.g
    parts = [g.node("Unsqueeze", [h, g.ints([0])]) for h in hs]
    if len(parts) == 1:
        return g.node("Identity", parts, out=out)
    return g.node("Concat", parts, out=out, axis=0)


@converter("LSTM")
def lstm(ctx):
    layer, g = ctx.layer, ctx.g
    gx, gs, cont, T = _steps(ctx)
    whc = _wt(ctx, len(layer.blobs) - 1, "W_h")
    h, c = _initial(ctx, 2)
    hs = []
    for t in range(T):
        cont_t = _at(g, cont, t)
        a = g.node("Add", [g.node("MatMul", [g.node("Mul", [cont_t, h]), whc]), _at(g, gx, t)])
        if gs is not None:
            a = g.node("Add", [a, gs])
        c, h = _lstm_step(g, c, a, cont_t, layer.H)
        hs.append(h)
    _stack(ctx, hs, ctx.outs[0])
    if layer.expose:
        g.node("Unsqueeze", [h, g.ints([0])], out=ctx.outs[1])
        g.node("Unsqueeze", [c, g.ints([0])], out=ctx.outs[2])


@converter("RNN")
def rnn(ctx):
    layer, g = ctx.layer, ctx.g
    gx, gs, cont, T = _steps(ctx)
    k = 3 if layer.static else 2
    whh, who = _wt(ctx, k, "W_hh"), _wt(ctx, k + 1, "W_ho")
    bo = g.const(ctx.param(k + 2), ctx.name + "/b_o")
    h, = _initial(ctx, 1)
    os_ = []
    for t in range(T):
        a = g.node("Add", [g.node("MatMul", [g.node("Mul", [_at(g, cont, t), h]), whh]),
                           _at(g, gx, t)])
        if gs is not None:
            a = g.node("Add", [a, gs])
        h = g.node("Tanh", [a])
        os_.append(g.node("Tanh", [g.node("Add", [g.node("MatMul", [h, who]), bo])]))
    _stack(ctx, os_, ctx.outs[0])
    if layer.expose:
        g.node("Unsqueeze", [h, g.ints([0])], out=ctx.outs[1])


@converter("LSTMUnit")
def lstm_unit(ctx):
    g = ctx.g
    c_prev, x, cont = (g.node("Squeeze", [b, g.ints([0])]) for b in ctx.bottoms)
    c, h = _lstm_step(g, c_prev, x, g.node("Unsqueeze", [cont, g.ints([1])]), ctx.layer.H)
    g.node("Unsqueeze", [c, g.ints([0])], out=ctx.outs[0])
    g.node("Unsqueeze", [h, g.ints([0])], out=ctx.outs[1])
