"""Export a :class:`netrun.Net` to ONNX with Caffe's semantics (opset 17).

The deploy graph is walked layer by layer; each layer type has a converter (one
module per family: ``_neuron``, ``_vision``, ``_common``, ``_norm``, ``_recurrent``) that emits
ONNX nodes computing what Caffe computes -- not the nearest ONNX default (Caffe's
ceil-and-clip pooling sizes, its clipped AVE divisor, LRN's formula, BatchNorm's
moving-average scale factor...).  Weights become initializers.

Naming (SSA): an ONNX tensor is written once, a Caffe blob may be rewritten by
in-place layers.  Every write of blob ``b`` but the last is ``b#k``; the last is
``b`` itself, so ONNX input and output names are the Caffe blob names.  An input
blob rewritten in place keeps its name as the graph input and its final version
is called ``b:out`` (the only exception; :attr:`Export.onnx_names` maps blobs to
tensors).

Layers not on the path to a requested output are dropped (with a warning when
they could not have been exported: losses, Accuracy, Python layers...).  A
layer on the path that ONNX cannot express is a NetrunError naming it.
"""
import warnings

import numpy as np

from ..errors import NetrunError

OPSET = 17
_CONVERTERS = {}

# layers that compute no deploy output: dropped (with a warning) when not needed
NOT_EXPORTABLE = {
    "Accuracy": "a training metric", "Python": "a Python layer (arbitrary code)",
    "Data": "a data layer reading a database (give --input-shape to make its tops inputs)",
    "ImageData": "a data layer reading files (give --input-shape to make its tops inputs)",
    "HDF5Data": "a data layer reading HDF5 files (give --input-shape to make its tops inputs)",
    "WindowData": "a data layer reading files (give --input-shape to make its tops inputs)",
    "HDF5Output": "a layer writing files", "Silence": "a layer without outputs",
}


def converter(*types):
    """Register fn(ctx) -> None converting a Caffe layer type (ctx: LayerCtx)."""
    def deco(fn):
        for t in types:
            _CONVERTERS[t] = fn
        return fn
    return deco


def need_onnx():
    try:
        import onnx
    except ImportError:
        raise NetrunError("ONNX export needs the onnx package: pip install 'netrun[onnx]'") from None
    return onnx


class Graph:
    """Nodes and initializers under construction, with unique tensor names."""

    def __init__(self, onnx):
        self.onnx = onnx
        self.nodes, self.inits = [], []
        self.used = set()
        self._n = 0

    def fresh(self, base):
        self._n += 1
        name = f"{base}#t{self._n}"
        while name in self.used:
            self._n += 1
            name = f"{base}#t{self._n}"
        self.used.add(name)
        return name

    def const(self, value, base="const", dtype=np.float32):
        arr = np.array(value, dtype=dtype, order="C")          # keeps 0-d scalars 0-d
        name = self.fresh(base)
        self.inits.append(self.onnx.numpy_helper.from_array(arr, name))
        return name

    def ints(self, values, base="shape"):
        return self.const(np.asarray(list(values), np.int64), base, np.int64)

    def node(self, op, inputs, out=None, n_out=1, base=None, **attrs):
        """Add a node; returns its output name (or names when n_out > 1)."""
        base = base or op
        if out is None:
            outs = [self.fresh(base) for _ in range(n_out)]
        else:
            outs = [out] if isinstance(out, str) else list(out)
            self.used.update(outs)
        attrs = {k: v for k, v in attrs.items() if v is not None}
        self.nodes.append(self.onnx.helper.make_node(op, list(inputs), outs,
                                                     name=self.fresh(f"{base}:{op}"), **attrs))
        return outs[0] if n_out == 1 and out is None or isinstance(out, str) else outs


class LayerCtx:
    """What a converter sees: the layer, its parameters, tensor names and shapes."""

    def __init__(self, g, net, li, bottoms, outs, dynamic, warn=None):
        self.g = g
        self.warn = warn or (lambda m: None)
        self.net = net
        self.li = li
        self.layer = net.layers[li]
        self.lp = self.layer.param
        self.name = self.layer.name
        self.type = self.layer.type
        self.bottoms = bottoms                      # ONNX names of the bottoms
        self.outs = outs                            # ONNX names the tops must get
        self.bshapes = [tuple(net.blobs[b].shape) for b in net.bottom_ids[li]]
        self.tshapes = [tuple(net.blobs[t].shape) for t in net.top_ids[li]]
        self.dynamic = dynamic

    @property
    def x(self):
        return self.bottoms[0]

    @property
    def out(self):
        return self.outs[0]

    def param(self, k):
        return np.asarray(self.layer.blobs[k].data, np.float32)

    def fail(self, why):
        raise NetrunError(f"cannot export to ONNX: {why}", self.net.where(self.li))

    def reshape(self, x, shape, out=None, keep_batch=True):
        """Reshape to a static shape, the batch axis copied (0) when it is dynamic."""
        shape = list(shape)
        if self.dynamic and keep_batch and shape:
            shape[0] = 0
        return self.g.node("Reshape", [x, self.g.ints(shape)], out=out, base=self.name)

    def channel_const(self, value, rank, axis=1, base=None):
        """A parameter shaped to broadcast along ``axis`` of a rank-``rank`` tensor."""
        v = np.asarray(value, np.float32)
        shape = list(v.shape) + [1] * (rank - axis - v.ndim)
        return self.g.const(v.reshape(shape), base or self.name)


class Export:
    """The result of :func:`export`: the ModelProto and how blobs map to tensors."""

    def __init__(self, model, onnx_names, versions, inputs, outputs):
        self.model = model
        self.onnx_names = onnx_names       # blob -> final ONNX tensor name
        self.versions = versions           # (layer index, top index) -> ONNX tensor name
        self.inputs = inputs               # blob names fed to the graph
        self.outputs = outputs             # blob names given as graph outputs

    def save(self, path):
        from ..io.atomic import atomic_write
        with atomic_write(str(path), "wb") as f:
            f.write(self.model.SerializeToString())


def _load_converters():
    from . import _common, _neuron, _norm, _recurrent, _vision  # noqa: F401  (registers them)


def _plan(net, outputs, warn):
    """Which layers to export, the wanted outputs, and the needed inputs."""
    types = [layer.type for layer in net.layers]
    warned = set()
    if outputs is None:
        outputs = []
        for name in net.outputs:
            li = _producer(net, name)
            if li is not None and (net.layers[li].is_loss or types[li] == "Accuracy"):
                warned.add(li)
                warn(f'layer "{net.layers[li].name}" ({types[li]}) is not exported '
                     f'(not a forward output): "{name}" is left out of the ONNX outputs')
                continue
            if name.startswith("(automatic"):
                continue
            outputs.append(name)
        if not outputs:
            outputs = _loss_inputs(net)
            if outputs:
                warn("every output of the net is a loss or a metric: exporting what they "
                     f"read instead ({', '.join(outputs)})")
        if not outputs:
            raise NetrunError("nothing to export: every output of the net is a loss of its "
                              "inputs")
    else:
        outputs = list(outputs)
        for name in outputs:
            if name not in net.blobs:
                raise NetrunError(f'"{name}" is not a blob of the net')
    needed = set(outputs)
    keep = [False] * len(net.layers)
    for li in range(len(net.layers) - 1, -1, -1):
        if any(t in needed for t in net.top_ids[li]):
            keep[li] = True
            needed.update(net.bottom_ids[li])
    for li, k in enumerate(keep):
        if not k and li not in warned and (net.layers[li].is_loss or types[li] in NOT_EXPORTABLE
                      or types[li] not in _CONVERTERS) and types[li] != "Silence":
            warn(f'layer "{net.layers[li].name}" ({types[li]}) dropped: not on the path '
                 "to an exported output")
    inputs = [n for n in net.inputs if n in needed]
    return keep, outputs, inputs


def _loss_inputs(net):
    """The blobs the net's losses and metrics read that are not net inputs (through the
    Split layers netrun inserts): the deploy part of a training net."""
    found = []
    for li, layer in enumerate(net.layers):
        if not (layer.is_loss or layer.type == "Accuracy"):
            continue
        for b in net.bottom_ids[li]:
            src = _producer(net, b)
            while src is not None and net.layers[src].type == "Split" and "_split_" in b:
                b = net.bottom_ids[src][0]
                src = _producer(net, b)
            if b not in net.inputs and b not in found:
                found.append(b)
    return found


def _producer(net, blob):
    found = None
    for li, tops in enumerate(net.top_ids):
        if blob in tops:
            found = li
    return found


def export(net, outputs=None, dynamic_batch=True, all_versions=False, warn=None):
    """Build the ONNX model of ``net``; returns an :class:`Export`.

    ``outputs``: blob names to make graph outputs (default: the net's outputs that
    are not losses).  ``all_versions``: also make every intermediate version of
    every exported blob a graph output (what the ONNX Runtime engine shows per
    layer).
    """
    onnx = need_onnx()
    _load_converters()
    if warn is None:
        warn = lambda m: warnings.warn(m, stacklevel=3)  # noqa: E731
    keep, outputs, inputs = _plan(net, outputs, warn)
    g = Graph(onnx)
    batch = None
    # how often each blob is written by exported layers
    writes = {}
    for li in range(len(net.layers)):
        if keep[li]:
            for t in net.top_ids[li]:
                writes[t] = writes.get(t, 0) + 1
    for n in inputs:
        g.used.add(n)
    current = {}                 # blob -> ONNX name of its current version
    seen = {}
    versions = {}
    graph_inputs = []
    for li, layer in enumerate(net.layers):
        if not keep[li]:
            continue
        tops = net.top_ids[li]
        if getattr(layer, "is_input", False) or layer.type == "Input":
            for t in tops:
                if t in inputs:
                    shape = list(net.blobs[t].shape)
                    dims = list(shape)
                    if dynamic_batch and dims:
                        if batch is None:
                            batch = dims[0]
                        if dims[0] == batch:
                            dims[0] = "N"
                    graph_inputs.append(onnx.helper.make_tensor_value_info(
                        t, onnx.TensorProto.FLOAT, dims))
                current[t] = t
                seen[t] = 1
            for j, t in enumerate(tops):
                versions[(li, j)] = t
            continue
        fn = _CONVERTERS.get(layer.type)
        if fn is None or layer.is_loss:
            why = NOT_EXPORTABLE.get(layer.type, "a loss" if layer.is_loss else
                                     "no ONNX converter for this layer type")
            raise NetrunError(f"cannot export to ONNX: {why}", net.where(li))
        bottoms = []
        for b in net.bottom_ids[li]:
            if b not in current:
                raise NetrunError(f'cannot export to ONNX: bottom "{b}" has no exported producer',
                                  net.where(li))
            bottoms.append(current[b])
        outs = []
        for t in tops:
            k = seen.get(t, 0) + 1
            seen[t] = k
            if k == writes[t] + (1 if t in inputs else 0):
                name = f"{t}:out" if t in inputs else t
            else:
                name = f"{t}#{k}"
            g.used.add(name)
            outs.append(name)
        ctx = LayerCtx(g, net, li, bottoms, outs, dynamic_batch, warn)
        fn(ctx)
        for j, t in enumerate(tops):
            current[t] = outs[j]
            versions[(li, j)] = outs[j]
    out_infos = []
    out_names = {}
    for name in outputs:
        tensor = current[name]
        if tensor in inputs:            # an input given straight back: ONNX needs a node
            tensor = g.node("Identity", [tensor], out=f"{name}:out")
        out_names[name] = tensor
        out_infos.append(_value_info(onnx, tensor, net.blobs[name].shape))
    if all_versions:
        listed = set(out_names.values())
        for key, tensor in versions.items():
            if tensor not in listed and tensor not in inputs:
                listed.add(tensor)
                blob = net.top_ids[key[0]][key[1]]
                out_infos.append(_value_info(onnx, tensor, net.blobs[blob].shape))
    graph = onnx.helper.make_graph(g.nodes, net.name or "netrun", graph_inputs, out_infos,
                                   initializer=g.inits)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", OPSET)],
                                   producer_name="netrun")
    model.ir_version = min(model.ir_version, 8)
    return Export(model, {b: current[b] for b in current}, versions, inputs, out_names)


def _value_info(onnx, name, shape):
    """A float tensor of known rank (the sizes are left to ONNX's shape inference)."""
    return onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [None] * len(shape))


def to_onnx(net, path=None, outputs=None, dynamic_batch=True, warn=None):
    """Export ``net`` (its current weights) to ONNX; save to ``path`` when given."""
    ex = export(net, outputs=outputs, dynamic_batch=dynamic_batch, warn=warn)
    if path is not None:
        ex.save(path)
    return ex
