"""pycaffe's ``caffe.draw``: draw a NetParameter (as written, not built) with Graphviz.

Layers are filled records (convolutions red, pooling orange, inner products
purple, in-place layers green, others blue) labelled with name, type and the
kernel/stride/pad of spatial layers; blobs are grey octagons; layer -> top edges
carry the output count (or the Data batch size).  ``phase`` keeps only the layers
of that phase.  The DOT text is netrun's own (:func:`to_dot`); ``get_pydot_graph``
needs pydot, and ``draw_net`` renders through pydot when it is installed, else
through Graphviz's ``dot`` directly (:func:`netrun.tools.draw.render`).  ``.dot``,
``.gv`` and ``.raw`` outputs are the DOT text itself.
"""
from ..proto import caffe_pb2
from ..tools.draw import _quote, render

LAYER_STYLE_DEFAULT = {"shape": "record", "fillcolor": "#6495ED", "style": "filled"}
NEURON_LAYER_STYLE = {"shape": "record", "fillcolor": "#90EE90", "style": "filled"}
BLOB_STYLE = {"shape": "octagon", "fillcolor": "#E0E0E0", "style": "filled"}
TYPE_COLORS = {"Convolution": "#FF5050", "Deconvolution": "#FF5050", "Pooling": "#FF9900",
               "InnerProduct": "#CC33FF"}
TEXT_FORMATS = ("dot", "gv", "raw")


def get_pooling_types_dict():
    """{pool enum number: name}: 0 -> "MAX", ..."""
    desc = caffe_pb2.PoolingParameter.PoolMethod.DESCRIPTOR
    return {v.number: name for name, v in desc.values_by_name.items()}


def choose_color_by_layertype(layertype):
    return TYPE_COLORS.get(layertype, LAYER_STYLE_DEFAULT["fillcolor"])


def get_edge_label(layer):
    """The label of a layer's output edges: Data batch size, or the output count."""
    if layer.type == "Data":
        return f"Batch {layer.data_param.batch_size}"
    if layer.type in ("Convolution", "Deconvolution"):
        return str(layer.convolution_param.num_output)
    if layer.type == "InnerProduct":
        return str(layer.inner_product_param.num_output)
    return ""


def get_layer_lr_mult(layer):
    """(weights, bias) lr_mult of a Convolution/Deconvolution/InnerProduct (1 when unset)."""
    if layer.type not in ("Convolution", "Deconvolution", "InnerProduct"):
        raise ValueError(f"{layer.type} layers do not have a learning rate multiplier")
    specs = list(layer.param)
    if len(specs) > 2:
        raise ValueError("Could not parse the learning rate multiplier")
    mults = [s.lr_mult for s in specs] + [1.0] * (2 - len(specs))
    return tuple(mults)


def _first(values, default):
    return values[0] if len(values) else default


def get_layer_label(layer, rankdir, display_lrm=False):
    """The node label as pycaffe gives it: in double quotes, lines joined by a literal
    backslash-n (see :func:`layer_label`)."""
    return '"' + layer_label(layer, rankdir, display_lrm).replace("\n", "\\n") + '"'


def layer_label(layer, rankdir, display_lrm=False):
    """Name, (Type) -- (Pooling MAX) for pooling --, kernel/stride/pad of spatial layers,
    and the lr multipliers when asked; one per line for LR/RL graphs."""
    sep = " " if rankdir in ("TB", "BT") else "\n"
    parts = [layer.name]
    if layer.type == "Pooling":
        pool = get_pooling_types_dict().get(layer.pooling_param.pool, layer.pooling_param.pool)
        parts.append(f"(Pooling {pool})")
    else:
        parts.append(f"({layer.type})")
    if layer.type == "Pooling":
        pp = layer.pooling_param
        parts.append(sep.join([f"kernel size: {pp.kernel_size}", f"stride: {pp.stride}",
                               f"pad: {pp.pad}"]))
    elif layer.type in ("Convolution", "Deconvolution"):
        cp = layer.convolution_param
        parts.append(sep.join([f"kernel size: {_first(cp.kernel_size, 1)}",
                               f"stride: {_first(cp.stride, 1)}", f"pad: {_first(cp.pad, 0)}"]))
    if display_lrm and layer.type in ("Convolution", "Deconvolution", "InnerProduct"):
        w, b = get_layer_lr_mult(layer)
        if w or b:
            parts.append(f"lr mult: {w:.1f}, {b:.1f}")
    return sep.join(parts)


def _included(layer, phase):
    if phase is None:
        return True
    if len(layer.include) and len(layer.exclude):
        raise ValueError(f"layer {layer.name} has both include and exclude specified.")
    if len(layer.include):
        return any(r.phase == phase for r in layer.include)
    return not any(r.phase == phase for r in layer.exclude)


def _attrs(d):
    return ", ".join(f"{k}={_quote(v)}" for k, v in d.items())


def graph(caffe_net, rankdir="LR", label_edges=True, phase=None, display_lrm=False):
    """(nodes {id: attributes}, edges [(src, dst, label)]) of a NetParameter (module doc)."""
    nodes = {}                # id -> attributes, in first-seen order
    edges = []
    for layer in caffe_net.layer:
        if not _included(layer, phase):
            continue
        lid = f"{layer.name}_{layer.type}"
        in_place = (len(layer.bottom) == 1 and len(layer.top) == 1
                    and layer.bottom[0] == layer.top[0])
        style = dict(NEURON_LAYER_STYLE if in_place else LAYER_STYLE_DEFAULT)
        if not in_place:
            style["fillcolor"] = choose_color_by_layertype(layer.type)
        nodes[lid] = dict(label=layer_label(layer, rankdir, display_lrm), **style)
        for b in layer.bottom:
            nodes[f"{b}_blob"] = dict(label=b, **BLOB_STYLE)
            edges.append((f"{b}_blob", lid, ""))
        for t in layer.top:
            nodes.setdefault(f"{t}_blob", dict(label=t, **BLOB_STYLE))
            edges.append((lid, f"{t}_blob", get_edge_label(layer) if label_edges else ""))
    return nodes, edges


def to_dot(caffe_net, rankdir="LR", label_edges=True, phase=None, display_lrm=False):
    """The DOT text of a NetParameter (module doc)."""
    nodes, edges = graph(caffe_net, rankdir, label_edges, phase, display_lrm)
    out = [f"digraph {_quote(caffe_net.name or 'Net')} {{", f"  rankdir={rankdir};"]
    out += [f"  {_quote(nid)} [{_attrs(a)}];" for nid, a in nodes.items()]
    out += [f"  {_quote(s)} -> {_quote(d)}" + (f" [label={_quote(lab)}];" if lab else ";")
            for s, d, lab in edges]
    out.append("}")
    return "\n".join(out) + "\n"


def _pydot():
    try:
        import pydot
    except ImportError:
        return None
    return pydot


def get_pydot_graph(caffe_net, rankdir, label_edges=True, phase=None, display_lrm=False):
    """The graph as a ``pydot.Dot`` (needs pydot: pip install pydot)."""
    pydot = _pydot()
    if pydot is None:
        raise ImportError("get_pydot_graph needs pydot: pip install pydot (or netrun[draw])")
    nodes, edges = graph(caffe_net, rankdir, label_edges, phase, display_lrm)
    g = pydot.Dot(_quote(caffe_net.name or "Net"), graph_type="digraph", rankdir=rankdir)
    for nid, attrs in nodes.items():
        g.add_node(pydot.Node(_quote(nid), **{k: _quote(v) for k, v in attrs.items()}))
    for s, d, lab in edges:
        g.add_edge(pydot.Edge(_quote(s), _quote(d), **({"label": _quote(lab)} if lab else {})))
    return g


def draw_net(caffe_net, rankdir, ext="png", phase=None, display_lrm=False):
    """The drawing as bytes in format ``ext`` (png, svg, pdf, ...; dot/gv/raw: the DOT text)."""
    if ext in TEXT_FORMATS:
        return to_dot(caffe_net, rankdir, phase=phase, display_lrm=display_lrm).encode("utf-8")
    pydot = _pydot()
    if pydot is not None:
        return get_pydot_graph(caffe_net, rankdir, phase=phase,
                               display_lrm=display_lrm).create(format=ext)
    return render(to_dot(caffe_net, rankdir, phase=phase, display_lrm=display_lrm), ext)


def draw_net_to_file(caffe_net, filename, rankdir="LR", phase=None, display_lrm=False):
    """Draw into ``filename``; its extension names the format."""
    ext = filename[filename.rfind(".") + 1:]
    data = draw_net(caffe_net, rankdir, ext, phase, display_lrm)
    with open(filename, "wb") as f:
        f.write(data)
