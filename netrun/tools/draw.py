"""Draw a built net as a Graphviz graph.

* Layers are boxes labelled with name, type and key parameters (kernel, stride,
  num_output, ...).
* A blob read by one layer is an edge labelled with its name and shape; a blob
  read by several layers, and every net output (also one that is read, as a
  loss-weighted hidden blob), is an ellipse of its own.
* In-place layers (top named as their bottom) are stacked into the box of the
  layer that produced the blob, one ``+ name (Type)`` line each.
* The Split layers Caffe inserts are hidden (their consumers read the original
  blob) unless ``show_splits``.

:func:`to_dot` writes the DOT text itself; :func:`render` runs Graphviz's
``dot`` program for SVG/PNG/PDF.
"""
import shutil
import subprocess

from ..errors import NetrunError

DOT_SUFFIXES = (".dot", ".gv")
RENDERED_SUFFIXES = (".svg", ".png", ".pdf")

COLORS = {
    "Convolution": "#cfe2f3", "Deconvolution": "#cfe2f3", "InnerProduct": "#fce5cd",
    "Pooling": "#d9ead3", "SPP": "#d9ead3", "LRN": "#ead1dc", "BatchNorm": "#ead1dc",
    "Concat": "#fff2cc", "Eltwise": "#fff2cc", "Input": "#eeeeee", "DummyData": "#eeeeee",
    "Data": "#eeeeee", "ImageData": "#eeeeee", "HDF5Data": "#eeeeee", "MemoryData": "#eeeeee",
    "Split": "#f3f3f3",
}
LOSS_COLOR = "#f4cccc"


def _quote(text):
    """A DOT double-quoted string; newlines become centred line breaks."""
    text = str(text).replace("\\", "\\\\").replace('"', '\\"')
    return '"' + text.replace("\r", "").replace("\n", "\\n") + '"'


def _shape(shape):
    return "(" + ", ".join(str(d) for d in shape) + ")" if len(shape) else "scalar"


def _enum_name(msg, field):
    value = getattr(msg, field)
    enum = msg.DESCRIPTOR.fields_by_name[field].enum_type
    v = enum.values_by_number.get(value)
    return v.name if v is not None else str(value)


def _dims(values, default):
    vals = [int(v) for v in values]
    if not vals or all(v == default for v in vals):
        return None
    return "x".join(str(v) for v in vals)


def _hw(msg, base, hname, wname, default):
    if msg.HasField(hname) or msg.HasField(wname):
        h, w = getattr(msg, hname), getattr(msg, wname)
        return None if (h == default and w == default) else f"{h}x{w}"
    vals = getattr(msg, base)
    if isinstance(vals, int):
        if not msg.HasField(base):
            return None
        return None if vals == default else str(vals)
    return _dims(vals, default)


def key_params(layer):
    """A short line with the parameters that matter most for ``layer``."""
    lp, t = layer.param, layer.type
    parts = []
    if t in ("Convolution", "Deconvolution", "ConvolutionDepthwise", "DepthwiseConvolution"):
        cp = lp.convolution_param
        parts.append(f"out {cp.num_output}")
        if layer.blobs and layer.blobs[0].num_axes > 2:
            parts.append("kernel " + "x".join(str(d) for d in layer.blobs[0].shape[2:]))
        for label, base, h, w, default in (("stride", "stride", "stride_h", "stride_w", 1),
                                           ("pad", "pad", "pad_h", "pad_w", 0)):
            v = _hw(cp, base, h, w, default)
            if v:
                parts.append(f"{label} {v}")
        d = _dims(cp.dilation, 1)
        if d:
            parts.append(f"dilation {d}")
        if cp.group != 1:
            parts.append(f"group {cp.group}")
        if not cp.bias_term:
            parts.append("no bias")
    elif t == "Pooling":
        pp = lp.pooling_param
        parts.append(_enum_name(pp, "pool"))
        if pp.global_pooling:
            parts.append("global")
        else:
            k = _hw(pp, "kernel_size", "kernel_h", "kernel_w", -1)
            if k:
                parts.append(f"kernel {k}")
            for label, base, h, w, default in (("stride", "stride", "stride_h", "stride_w", 1),
                                               ("pad", "pad", "pad_h", "pad_w", 0)):
                v = _hw(pp, base, h, w, default)
                if v:
                    parts.append(f"{label} {v}")
    elif t == "InnerProduct":
        ip = lp.inner_product_param
        parts.append(f"out {ip.num_output}")
        if ip.axis != 1:
            parts.append(f"axis {ip.axis}")
        if ip.transpose:
            parts.append("transpose")
    elif t == "LRN":
        p = lp.lrn_param
        parts.append(f"size {p.local_size} alpha {p.alpha:g} beta {p.beta:g}")
        if p.norm_region:
            parts.append(_enum_name(p, "norm_region"))
    elif t == "Dropout":
        parts.append(f"ratio {lp.dropout_param.dropout_ratio:g}")
    elif t == "Eltwise":
        parts.append(_enum_name(lp.eltwise_param, "operation"))
    elif t in ("Concat", "Slice"):
        p = lp.concat_param if t == "Concat" else lp.slice_param
        if p.axis != 1:
            parts.append(f"axis {p.axis}")
    elif t == "ReLU" and lp.relu_param.negative_slope:
        parts.append(f"slope {lp.relu_param.negative_slope:g}")
    elif t == "BatchNorm" and lp.batch_norm_param.HasField("use_global_stats"):
        parts.append(f"global stats {str(lp.batch_norm_param.use_global_stats).lower()}")
    elif t in ("LSTM", "RNN"):
        parts.append(f"out {lp.recurrent_param.num_output}")
    elif t == "Embed":
        parts.append(f"out {lp.embed_param.num_output} vocab {lp.embed_param.input_dim}")
    elif t == "Power":
        p = lp.power_param
        parts.append(f"({p.shift:g} + {p.scale:g}x)^{p.power:g}")
    return ", ".join(parts)


def to_dot(net, rankdir="TB", show_splits=False):
    """The DOT text of ``net`` (see the module docstring)."""
    nodes = {}            # node id -> dict(lines, color)
    order = []
    versions = []         # each: dict(name, writer, consumers, via_split)
    current = {}          # blob name -> index into versions
    split_nodes = set()

    def new_node(layer):
        nid = f"L{len(order)}"
        lines = [layer.name, layer.type]
        extra = key_params(layer)
        if extra:
            lines.append(extra)
        color = LOSS_COLOR if layer.is_loss else COLORS.get(layer.type, "#ffffff")
        nodes[nid] = {"lines": lines, "color": color}
        order.append(nid)
        return nid

    for li, layer in enumerate(net.layers):
        bids, tids = net.bottom_ids[li], net.top_ids[li]
        if layer.type == "Split" and not show_splits:
            src = current[bids[0]]
            versions[src]["via_split"] = True
            for t in tids:
                current[t] = src
                versions[src]["names"].append(t)
            continue
        in_place = [j for j, t in enumerate(tids) if j < len(bids) and bids[j] == t]
        node = None
        if in_place:
            v = versions[current[bids[in_place[0]]]]
            if (v["writer"] is not None and v["writer"] not in split_nodes
                    and not v["via_split"] and not v["consumers"]):
                node = v["writer"]
                extra = key_params(layer)
                nodes[node]["lines"].append(f"+ {layer.name} ({layer.type})"
                                            + (f": {extra}" if extra else ""))
        stacked = node is not None
        if not stacked:
            node = new_node(layer)
            if layer.type == "Split":
                split_nodes.add(node)
        for j, b in enumerate(bids):
            if stacked and j in in_place:
                continue
            versions[current[b]]["consumers"].append(node)
        for j, t in enumerate(tids):
            if stacked and j in in_place:
                continue
            versions.append({"name": t, "names": [t], "writer": node, "consumers": [],
                             "via_split": False})
            current[t] = len(versions) - 1

    out = [f"digraph {_quote(net.name or 'net')} {{",
           f"  rankdir={rankdir};",
           '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10];',
           '  edge [fontname="Helvetica", fontsize=9];']
    for nid in order:
        n = nodes[nid]
        out.append(f"  {nid} [label={_quote(chr(10).join(n['lines']))}, fillcolor={_quote(n['color'])}];")
    outputs = set(net.outputs)
    for k, v in enumerate(versions):
        name = v["name"]
        if name.startswith("(automatic") or v["writer"] is None:
            continue
        label = f"{name}\n{_shape(net.blobs[name].shape)}"
        cons = v["consumers"]
        is_output = any(n in outputs for n in v["names"])
        if len(cons) == 1 and not is_output:
            out.append(f"  {v['writer']} -> {cons[0]} [label={_quote(label)}];")
            continue
        bid = f"B{k}"
        out.append(f"  {bid} [label={_quote(label)}, shape=ellipse, style=filled, "
                   f'fillcolor="#f7f7f7", fontsize=9];')
        out.append(f"  {v['writer']} -> {bid};")
        for c in cons:
            out.append(f"  {bid} -> {c};")
    out.append("}")
    return "\n".join(out) + "\n"


def output_format(path):
    """'dot', 'svg', 'png' or 'pdf' from the output file's suffix."""
    low = str(path).lower()
    if low.endswith(DOT_SUFFIXES):
        return "dot"
    for s in RENDERED_SUFFIXES:
        if low.endswith(s):
            return s[1:]
    raise NetrunError(f"cannot tell the output format of {path}: name it .dot, .gv, .svg, .png or .pdf")


def render(dot_text, fmt):
    """Bytes of ``dot_text`` rendered by Graphviz's ``dot`` (``fmt``: svg, png or pdf)."""
    exe = shutil.which("dot")
    if exe is None:
        raise NetrunError(f"writing .{fmt} needs Graphviz's `dot` program, which is not on PATH: "
                          "install Graphviz (apt-get install graphviz / brew install graphviz) "
                          "or write a .dot file instead")
    try:
        res = subprocess.run([exe, f"-T{fmt}"], input=dot_text.encode("utf-8"),
                             capture_output=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NetrunError(f"running Graphviz's dot failed: {e}") from None
    if res.returncode != 0:
        msg = res.stderr.decode("utf-8", "replace").strip().splitlines()
        raise NetrunError("Graphviz's dot failed: " + (msg[0] if msg else f"exit code {res.returncode}"))
    return res.stdout
