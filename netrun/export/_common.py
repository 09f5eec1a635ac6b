"""ONNX converters for the structural layers, with Caffe's axes and rules.

Split (identity per top), InnerProduct (x reshaped to (M, K) at ``axis``, W (N, K)
or (K, N) with transpose), Softmax (one axis: ONNX Softmax since opset 13), Concat
/ Slice (axis or legacy concat_dim/slice_dim; Slice's parts from slice_point ->
Split), Flatten / Reshape (the static target shape with the batch axis copied by 0
when it is kept, so the batch stays dynamic), Eltwise (SUM with coefficients, PROD,
MAX), Crop (Slice at the offsets, axis on), ArgMax (top_k, out_max_val, axis; ties
to the larger index as Caffe's partial_sort: TopK over the reversed axis),
Reduction (SUM, ASUM, SUMSQ, MEAN over axis.., times coeff), Tile, Embed (Gather),
DummyData (constant fillers only), Parameter (constants), BatchReindex (Gather) and
Filter (Compress: the top's first axis is the number selected).
"""
import numpy as np

from ..proto import caffe_pb2
from .onnx import converter

F = np.float32
EP = caffe_pb2.EltwiseParameter
RP = caffe_pb2.ReductionParameter


@converter("Split")
def split(ctx):
    for out in ctx.outs:
        ctx.g.node("Identity", [ctx.x], out=out)


@converter("InnerProduct")
def inner_product(ctx):
    layer, g = ctx.layer, ctx.g
    shape = ctx.bshapes[0]
    w = ctx.param(0)
    if layer.axis == 1:
        # Caffe's (N, K) weights as Gemm's B with transB (ONNX Runtime's faster form)
        x2 = g.node("Flatten", [ctx.x], axis=1) if len(shape) != 2 else ctx.x
        ins = [x2, g.const(w, f"{ctx.name}/w")]
        if layer.bias_term:
            ins.append(g.const(ctx.param(1), f"{ctx.name}/b"))
        g.node("Gemm", ins, out=ctx.out, transB=0 if layer.transpose else 1)
        return
    wt = w if layer.transpose else np.ascontiguousarray(w.T)        # (K, N)
    lead = list(shape[:layer.axis])
    x = ctx.reshape(ctx.x, lead + [layer.K], keep_batch=layer.axis > 0)
    y = g.node("MatMul", [x, g.const(wt, f"{ctx.name}/w")])
    if layer.bias_term:
        g.node("Add", [y, g.const(ctx.param(1), f"{ctx.name}/b")], out=ctx.out)
    else:
        g.node("Identity", [y], out=ctx.out)


@converter("Softmax")
def softmax(ctx):
    ctx.g.node("Softmax", [ctx.x], out=ctx.out, axis=int(ctx.layer.axis))


@converter("Concat")
def concat(ctx):
    ctx.g.node("Concat", ctx.bottoms, out=ctx.out, axis=int(ctx.layer.axis))


@converter("Slice")
def slice_(ctx):
    axis = int(ctx.layer.axis)
    sizes = [s[axis] for s in ctx.tshapes]
    if len(ctx.outs) == 1:
        ctx.g.node("Identity", [ctx.x], out=ctx.out)
        return
    ctx.g.node("Split", [ctx.x, ctx.g.ints(sizes)], out=ctx.outs, n_out=len(sizes), axis=axis)


def _static_reshape(ctx, batch_kept):
    out = list(ctx.tshapes[0])
    if ctx.dynamic and not batch_kept and out and ctx.bshapes[0] and \
            ctx.bshapes[0][0] and out[0] % ctx.bshapes[0][0] == 0:
        out[0] = -1                # the batch folded into axis 0
        batch_kept = False
        ctx.g.node("Reshape", [ctx.x, ctx.g.ints(out)], out=ctx.out)
        return
    ctx.reshape(ctx.x, out, out=ctx.out, keep_batch=batch_kept)


@converter("Flatten")
def flatten(ctx):
    p = ctx.lp.flatten_param
    rank = len(ctx.bshapes[0])
    axis = p.axis + rank if p.axis < 0 else p.axis
    _static_reshape(ctx, batch_kept=axis > 0)


@converter("Reshape")
def reshape(ctx):
    p = ctx.lp.reshape_param
    rank = len(ctx.bshapes[0])
    axis = p.axis + rank + 1 if p.axis < 0 else p.axis
    kept = axis > 0 or (len(p.shape.dim) > 0 and p.shape.dim[0] == 0) or \
        (p.num_axes == 0 and axis == 0)
    _static_reshape(ctx, batch_kept=kept)


@converter("Eltwise")
def eltwise(ctx):
    layer, g = ctx.layer, ctx.g
    xs = ctx.bottoms
    if layer.op == EP.PROD:
        acc = xs[0]
        for i, x in enumerate(xs[1:], 1):
            acc = g.node("Mul", [acc, x], out=ctx.out if i == len(xs) - 1 else None)
        return
    if layer.op == EP.MAX:
        g.node("Max", xs, out=ctx.out)
        return
    terms = [x if c == 1 else g.node("Mul", [x, g.const(F(c))]) for c, x in zip(layer.coeff, xs)]
    acc = terms[0]
    for i, t in enumerate(terms[1:], 1):            # Caffe's order: ((x0 + x1) + x2) ...
        acc = g.node("Add", [acc, t], out=ctx.out if i == len(terms) - 1 else None)


@converter("Crop")
def crop(ctx):
    window = ctx.layer.window
    start = ctx.layer.param.crop_param.axis
    rank = len(window)
    start = start + rank if start < 0 else start
    axes = list(range(start, rank))
    if not axes:
        ctx.g.node("Identity", [ctx.x], out=ctx.out)
        return
    g = ctx.g
    g.node("Slice", [ctx.x, g.ints([window[a].start for a in axes]),
                     g.ints([window[a].stop for a in axes]), g.ints(axes)], out=ctx.out)


@converter("ArgMax")
def argmax(ctx):
    layer, g = ctx.layer, ctx.g
    k = layer.top_k
    shape = ctx.bshapes[0]
    if layer.has_axis:
        axis = int(layer.axis)
        x, dim = ctx.x, shape[axis]
    else:
        axis, dim = 1, int(np.prod(shape[1:], dtype=np.int64))
        x = ctx.reshape(ctx.x, [shape[0], dim])
    rev = g.node("Slice", [x, g.ints([-1]), g.ints([-(2 ** 62)]), g.ints([axis]), g.ints([-1])])
    vals, ridx = g.node("TopK", [rev, g.ints([k])], n_out=2, axis=axis, largest=1, sorted=1)
    idx = g.node("Cast", [g.node("Sub", [g.const(np.int64(dim - 1), dtype=np.int64), ridx])], to=1)
    if layer.has_axis:
        g.node("Identity", [vals if layer.out_max_val else idx], out=ctx.out)
        return
    parts = [g.node("Unsqueeze", [idx, g.ints([1])])]
    if layer.out_max_val:
        parts.append(g.node("Unsqueeze", [vals, g.ints([1])]))
    y = g.node("Concat", parts, axis=1) if len(parts) > 1 else parts[0]
    ctx.reshape(y, ctx.tshapes[0], out=ctx.out)


@converter("Reduction")
def reduction(ctx):
    layer, g = ctx.layer, ctx.g
    rank = len(ctx.bshapes[0])
    axes = list(range(int(layer.axis), rank))
    op = layer.op
    if not axes:
        y = g.node("Abs", [ctx.x]) if op == RP.ASUM else \
            g.node("Mul", [ctx.x, ctx.x]) if op == RP.SUMSQ else ctx.x
    elif op in (RP.SUM, RP.MEAN):
        y = g.node("ReduceSum", [ctx.x, g.ints(axes)], keepdims=0)
    elif op == RP.ASUM:
        y = g.node("ReduceL1", [ctx.x], axes=axes, keepdims=0)
    else:
        y = g.node("ReduceSumSquare", [ctx.x], axes=axes, keepdims=0)
    coeff = F(layer.coeff)
    if coeff == 1:
        g.node("Identity", [y], out=ctx.out)
    else:
        g.node("Mul", [y, g.const(coeff)], out=ctx.out)


@converter("Tile")
def tile(ctx):
    reps = [1] * len(ctx.bshapes[0])
    reps[int(ctx.layer.axis)] = int(ctx.layer.tiles)
    ctx.g.node("Tile", [ctx.x, ctx.g.ints(reps)], out=ctx.out)


@converter("Embed")
def embed(ctx):
    g = ctx.g
    idx = g.node("Cast", [ctx.x], to=7)
    w = g.const(ctx.param(0), f"{ctx.name}/w")
    if len(ctx.layer.blobs) > 1:
        y = g.node("Gather", [w, idx], axis=0)
        g.node("Add", [y, g.const(ctx.param(1), f"{ctx.name}/b")], out=ctx.out)
    else:
        g.node("Gather", [w, idx], out=ctx.out, axis=0)


@converter("DummyData")
def dummy_data(ctx):
    for filler, shape, out in zip(ctx.layer.fillers, ctx.tshapes, ctx.outs):
        if (filler.type or "constant") != "constant":
            ctx.fail(f'DummyData filler "{filler.type}" draws new random values at every '
                     "forward; only constant fillers can be exported")
        ctx.g.node("Identity", [ctx.g.const(np.full(shape, F(filler.value)), ctx.name)],
                   out=out)


@converter("Parameter")
def parameter(ctx):
    ctx.g.node("Identity", [ctx.g.const(ctx.param(0), ctx.name)], out=ctx.out)


@converter("BatchReindex")
def batch_reindex(ctx):
    g = ctx.g
    g.node("Gather", [ctx.x, g.node("Cast", [ctx.bottoms[1]], to=7)], out=ctx.out, axis=0)


@converter("Filter")
def filter_(ctx):
    """Items whose selector (the last bottom) is non-zero: Compress along axis 0."""
    g = ctx.g
    sel = g.node("Reshape", [ctx.bottoms[-1], g.ints([-1])])
    keep = g.node("Not", [g.node("Equal", [sel, g.const(F(0))])])
    for x, out in zip(ctx.bottoms[:-1], ctx.outs):
        g.node("Compress", [x, keep], out=out, axis=0)
