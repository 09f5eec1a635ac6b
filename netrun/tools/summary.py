"""Per-layer summary of a built net: shapes, parameters, multiply-accumulates, memory.

Shapes are the blobs' shapes after the net is built (Caffe's own shape inference,
run by each layer's ``reshape``); nothing is run forward.

Multiply-accumulates (MACs) per layer, for one forward pass of the whole batch:

* ``Convolution``:   top count x (C_in/group x prod(kernel))   (exact)
* ``Deconvolution``: bottom count x (C_out/group x prod(kernel)) (exact)
* ``InnerProduct``:  M x K x N                                   (exact)
* ``LSTM``/``RNN``:  T x N x (weight elements used per step)     (estimate)
* ``Pooling``:       top count x window size                     (estimate)
* ``LRN``:           top count x local_size (x local_size WITHIN_CHANNEL) (estimate)
* ``Eltwise``:       top count x (bottoms - 1)                   (estimate)
* ``BatchNorm``, ``Scale``, ``Bias``, ``PReLU``, ``MVN``, ``Power``, ``Normalize``:
  one per top element (estimate)
* everything else (activations, softmax, losses, reshapes, concat/slice, data): 0

Biases are not counted.  Memory is the bytes of blob arrays at the net's dtype:
an in-place top shares its bottom's array and a Split top shares its bottom's data,
so both count 0 for the forward pass.  Layers' scratch buffers are not counted.
"""
import math


ONE_PER_ELEMENT = ("BatchNorm", "Scale", "Bias", "PReLU", "MVN", "Power", "Normalize")
RECURRENT = ("LSTM", "RNN")


def _prod(shape):
    return math.prod(int(d) for d in shape)


def _pool_window(lp, bottom_shape):
    pp = lp.pooling_param
    if pp.global_pooling:
        return _prod(bottom_shape[2:])
    if pp.HasField("kernel_h") or pp.HasField("kernel_w"):
        return max(int(pp.kernel_h), 1) * max(int(pp.kernel_w), 1)
    k = int(pp.kernel_size) or 1
    return k ** max(len(bottom_shape) - 2, 1)


def layer_macs(layer, bottom_shapes, top_shapes):
    """Multiply-accumulates of one forward pass of ``layer`` (see the module docstring)."""
    t = layer.type
    lp = layer.param
    w = layer.blobs[0].shape if layer.blobs else None
    top0 = _prod(top_shapes[0]) if top_shapes else 0
    if t in ("Convolution", "ConvolutionDepthwise", "DepthwiseConvolution") and w is not None:
        return top0 * _prod(w[1:])
    if t == "Deconvolution" and w is not None:
        return _prod(bottom_shapes[0]) * _prod(w[1:])
    if t == "InnerProduct" and w is not None:
        shape = bottom_shapes[0]
        axis = lp.inner_product_param.axis
        axis = axis + len(shape) if axis < 0 else axis
        return _prod(shape[:axis]) * _prod(w)
    if t in RECURRENT and layer.blobs and bottom_shapes:
        per_step = sum(b.count for b in layer.blobs if b.num_axes == 2)
        return _prod(bottom_shapes[0][:2]) * per_step
    if t == "Pooling" and bottom_shapes:
        return top0 * _pool_window(lp, bottom_shapes[0])
    if t == "LRN":
        n = int(lp.lrn_param.local_size)
        return top0 * (n * n if lp.lrn_param.norm_region == 1 else n)
    if t == "Eltwise":
        return top0 * max(len(bottom_shapes) - 1, 0)
    if t in ONE_PER_ELEMENT:
        return top0
    return 0


def _in_place(net, li, j):
    bids = net.bottom_ids[li]
    return j < len(bids) and bids[j] == net.top_ids[li][j]


def split_aliases(net):
    """Split top name -> the name of the blob the Split copies (followed through chains)."""
    alias = {}
    for li, layer in enumerate(net.layers):
        if layer.type == "Split":
            src = net.bottom_ids[li][0]
            src = alias.get(src, src)
            for t in net.top_ids[li]:
                alias[t] = src
    return alias


def summarize(net, show_splits=False):
    """A dict ``{"layers": [...], "totals": {...}}`` describing ``net`` (see the module doc)."""
    alias = {} if show_splits else split_aliases(net)
    itemsize = net.dtype.itemsize
    rows = []
    act_bytes = 0
    total_macs = 0
    for li, layer in enumerate(net.layers):
        bids, tids = net.bottom_ids[li], net.top_ids[li]
        bshapes = [net.blobs[b].shape for b in bids]
        tshapes = [net.blobs[t].shape for t in tids]
        is_split = layer.type == "Split"
        memory = 0
        for j, t in enumerate(tids):
            if not is_split and not _in_place(net, li, j):
                memory += net.blobs[t].nbytes
        macs = layer_macs(layer, bshapes, tshapes)
        act_bytes += memory
        total_macs += macs
        if is_split and not show_splits:
            continue
        params = sum(b.count for b in layer.blobs)
        shared = sum(b.count for k, b in enumerate(layer.blobs) if not net.param_owned(li, k))
        rows.append({
            "name": layer.name,
            "type": layer.type,
            "bottoms": [alias.get(b, b) for b in bids],
            "tops": [{"name": t, "shape": list(s), "in_place": _in_place(net, li, j)}
                     for j, (t, s) in enumerate(zip(tids, tshapes))],
            "params": params,
            "shared_params": shared,
            "param_shapes": [list(b.shape) for b in layer.blobs],
            "macs": macs,
            "memory": memory,
        })
    params = 0
    for li, layer in enumerate(net.layers):
        for k, b in enumerate(layer.blobs):
            if net.param_owned(li, k):
                params += b.count
    param_bytes = params * itemsize
    diff_bytes = sum(b.nbytes for name, b in net.blobs.items())
    totals = {
        "params": params,
        "macs": total_macs,
        "memory_forward": act_bytes + param_bytes,
        "memory_backward": act_bytes + param_bytes + diff_bytes + param_bytes,
        "activation_bytes": act_bytes,
        "activation_diff_bytes": diff_bytes,
        "param_bytes": param_bytes,
        "dtype": net.dtype.name,
    }
    return {"name": net.name, "layers": rows, "totals": totals}


# -- text rendering -------------------------------------------------------------------
def human(n, unit=""):
    """1234567 -> '1.23M' (SI, for counts)."""
    n = float(n)
    for suffix in ("", "K", "M", "G", "T", "P"):
        if abs(n) < 1000 or suffix == "P":
            return (f"{n:.0f}{suffix}" if suffix == "" else f"{n:.2f}{suffix}") + unit
        n /= 1000.0
    return str(n)


def human_bytes(n):
    n = float(n)
    for suffix in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or suffix == "TiB":
            return f"{n:.0f} {suffix}" if suffix == "B" else f"{n:.2f} {suffix}"
        n /= 1024.0
    return str(n)


def fmt_shape(shape):
    return "(" + ", ".join(str(d) for d in shape) + ")" if len(shape) else "()"


def _names(names, limit):
    text = ", ".join(names)
    if len(text) <= limit or len(names) < 2:
        return text
    return f"{names[0]} +{len(names) - 1} more"


def _flow(bottoms, tops, limit=60):
    """'a, b -> c', shortened to 'a +3 more -> c' when too wide for a table."""
    return (_names(bottoms, limit // 2) + " -> " + _names(tops, limit // 2)).strip()


def format_table(summary, totals_only=False):
    """The summary as aligned text lines."""
    lines = []
    if not totals_only:
        head = ["layer", "type", "bottoms -> tops", "top shape", "params", "MACs", "memory"]
        table = []
        for r in summary["layers"]:
            tops = r["tops"] or [{"name": "", "shape": None}]
            flow = _flow(r["bottoms"], [t["name"] for t in r["tops"]])
            params = f"{r['params']:,}" + (" (shared)" if r["shared_params"] else "")
            first = tops[0]
            table.append([r["name"], r["type"], flow.strip(),
                          fmt_shape(first["shape"]) if first["shape"] is not None else "",
                          params if r["params"] else "", human(r["macs"]) if r["macs"] else "",
                          human_bytes(r["memory"]) if r["memory"] else ""])
            for t in tops[1:]:
                table.append(["", "", "", fmt_shape(t["shape"]), "", "", ""])
        widths = [max(len(row[i]) for row in table + [head]) for i in range(len(head))]
        right = {4, 5, 6}

        def line(row):
            cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
            return "  ".join(cells).rstrip()
        lines.append(line(head))
        lines.append("  ".join("-" * w for w in widths))
        lines.extend(line(row) for row in table)
        lines.append("")
    t = summary["totals"]
    lines.append(f"parameters: {t['params']:,} ({human_bytes(t['param_bytes'])} as {t['dtype']})")
    lines.append(f"multiply-accumulates: {human(t['macs'])} ({t['macs']:,})")
    lines.append(f"memory, forward: {human_bytes(t['memory_forward'])} "
                 f"(activations {human_bytes(t['activation_bytes'])} + parameters); "
                 f"forward+backward: {human_bytes(t['memory_backward'])}")
    return lines
