"""What the commands share: the net options, loading inputs, building the net, printing."""
import json
import math
import re
import zipfile
import zlib

import click
import numpy as np

from ..errors import NetrunError, reading
from ..memory import parse_size
from ..net import Net


def warn(message):
    click.echo(f"netrun: warning: {message}", err=True)


def note(ctx_obj, message):
    if not ctx_obj.get("quiet"):
        click.echo(f"netrun: {message}", err=True)


# -- JSON output ------------------------------------------------------------------------------
def json_option(f):
    return click.option("--json", "as_json", is_flag=True,
                        help="Print one JSON object on stdout instead of the text report.")(f)


def finite(obj):
    """Make ``obj`` strict JSON: NaN and infinities become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if isinstance(obj, np.generic):
        return finite(obj.item())
    return obj


_SCALAR = r"(?:-?[\d.eE+-]+|null|true|false)"
# json.dumps(indent=...) puts a raw newline after "[" only outside strings
_NUMBER_LIST = re.compile(r"\[\n\s*(" + _SCALAR + r"(?:,\n\s*" + _SCALAR + r")*)\n\s*\]")


def print_json(obj):
    """Indented JSON with lists of plain numbers (shapes, indices) kept on one line."""
    text = json.dumps(finite(obj), indent=1, allow_nan=False)
    click.echo(_NUMBER_LIST.sub(lambda m: "[" + re.sub(r"\s+", " ", m.group(1)) + "]", text))


def stat_dict(arr, values=False):
    """Shape, mean |x|, min and max of an array (and the values, if asked) for JSON."""
    a = np.asarray(arr)
    out = {"shape": list(a.shape)}
    if a.size:
        out.update(mean_abs=float(np.mean(np.abs(a), dtype=np.float64)), min=float(a.min()),
                   max=float(a.max()))
    if a.size == 1:
        out["value"] = float(a.ravel()[0])
    if values:
        out["values"] = a.tolist()
    return out


# -- shared options -----------------------------------------------------------------------
def net_options(f):
    opts = [
        click.argument("model"),
        click.option("--weights", "-w", metavar="W.caffemodel",
                     help="Trained parameters (.caffemodel). Without it, parameters come from "
                          "their fillers, seeded by --seed."),
        click.option("--phase", type=click.Choice(["train", "test"], case_sensitive=False),
                     default="test", show_default=True, help="Net phase for include/exclude rules."),
        click.option("--level", type=int, default=0, show_default=True, help="NetState level."),
        click.option("--stage", multiple=True, help="NetState stage (repeatable)."),
        click.option("--input", "input_files", multiple=True, metavar="NAME=FILE.npy",
                     help="Array (.npy) or image (.png, .jpg, ...) for an input blob (repeatable; "
                          "several images for one input make a batch)."),
        click.option("--inputs", "inputs_npz", metavar="FILE.npz", help="Arrays for input blobs, keyed by blob name."),
        click.option("--input-shape", multiple=True, metavar="NAME=D0,D1,...",
                     help="Override an input's declared shape (repeatable)."),
        click.option("--raw-scale", type=float, default=None, metavar="R",
                     help="Image inputs: pixels read as [0, 1] times R (pycaffe's raw_scale); "
                          "default: 0-255 values."),
        click.option("--mean", default=None, metavar="B,G,R",
                     help="Image inputs: subtract this mean (one value per channel, BGR order, "
                          "or one for all), after --raw-scale."),
        click.option("--mean-file", default=None, metavar="MEAN.binaryproto",
                     help="Image inputs: subtract this mean image (.binaryproto or .npy)."),
        click.option("--scale", type=float, default=None, metavar="S",
                     help="Image inputs: multiply by S after the mean, as Caffe's (x - mean) * scale."),
        click.option("--allow-python-layers", is_flag=True,
                     help="Load Python layers (this runs the code of their python_param.module)."),
        click.option("--seed", type=int, default=0, show_default=True,
                     help="Seed for fillers and for inputs given no array."),
        click.option("--set", "edits", multiple=True, metavar="PATH=VALUE",
                     help="Edit the net before building, e.g. relu1.relu_param.negative_slope=0.1 "
                          "or net.force_backward=true (repeatable)."),
        click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32",
                     show_default=True, help="Arithmetic precision."),
        click.option("--max-memory", default=None, metavar="SIZE",
                     help="Refuse nets needing more memory than this (e.g. 8G); "
                          "default: 80% of the available memory."),
        click.option("--check-finite/--no-check-finite", default=None,
                     help="Report the first layer and blob where NaN/Inf appears "
                          "(default: on for backward, off for forward and time)."),
        click.option("--strict", is_flag=True, help="With --check-finite: stop at the first NaN/Inf."),
        click.option("-v", "--values", is_flag=True, help="Also print the arrays themselves."),
        click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def parse_assignments(items, what):
    out = []
    for item in items:
        if "=" not in item:
            raise NetrunError(f"{what} {item!r}: expected NAME=VALUE")
        name, value = item.split("=", 1)
        out.append((name.strip(), value.strip()))
    return out


def parse_shape(name, text):
    try:
        dims = tuple(int(d) for d in text.replace("x", ",").split(",") if d.strip())
    except ValueError:
        raise NetrunError(f"--input-shape {name}={text}: dims must be integers, e.g. 1,3,224,224") from None
    if not dims or any(d <= 0 for d in dims):
        raise NetrunError(f"--input-shape {name}={text}: dims must be positive")
    return dims


def load_npy(path, what, limit=None):
    """An .npy array for a command: its header (shape x dtype, numeric, data present)
    is checked against the memory ``limit`` (default: 80% of the available memory)
    before the array is read (:func:`netrun.io.limits.check_npy_file`)."""
    from ..io.limits import check_npy_file
    where = f"{path} ({what})"
    if is_zip(path):
        raise NetrunError("is an .npz archive; pass it with --inputs/--top-diffs", path)
    check_npy_file(path, where, limit)
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise NetrunError("no such file", where) from None
    except MemoryError:
        raise NetrunError("out of memory reading it", where) from None
    except ValueError as e:
        raise NetrunError(f"cannot read ({e}; pickled arrays are refused)", where) from None
    except OSError as e:
        raise NetrunError(f"not a .npy file ({e})", where) from None
    if isinstance(arr, np.lib.npyio.NpzFile):
        arr.close()
        raise NetrunError("is an .npz archive; pass it with --inputs/--top-diffs", path)
    return check_numeric(arr, where)


def is_zip(path):
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def load_npz(path, what, limit=None):
    """The arrays of an .npz archive, keyed by name.  Before any array is read, the
    zip's entry count, every member's .npy header (numeric dtype, data present) and
    the arrays' total bytes are checked against the memory ``limit`` (default: 80%
    of the available memory; :func:`netrun.io.limits.check_npz_file`)."""
    from ..io.limits import check_npz_file
    where = f"{path} ({what})"
    with reading(where), open(path, "rb") as f:
        magic = f.read(6)
    if magic == b"\x93NUMPY":
        raise NetrunError("is a single .npy array, not an .npz archive", path)
    check_npz_file(path, what, limit)
    try:
        with np.load(path, allow_pickle=False) as z:
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise NetrunError("is a single .npy array, not an .npz archive", path)
            return {k: check_numeric(z[k], f"{path}[{k}]") for k in z.files}
    except FileNotFoundError:
        raise NetrunError("no such file", where) from None
    except MemoryError:
        raise NetrunError("out of memory reading it", where) from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError) as e:
        raise NetrunError(f"not a readable .npz archive ({e})", where) from None
    except AttributeError:
        raise NetrunError("is a single .npy array, not an .npz archive", path) from None


def check_numeric(arr, where):
    if arr.dtype.kind not in "biuf":
        raise NetrunError(f"array of dtype {arr.dtype} is not numeric", where)
    return arr


def memory_limit(o):
    """--max-memory in bytes (None: the default, 80% of the available memory)."""
    return parse_size(o["max_memory"]) if o.get("max_memory") else None


def load_arrays(o):
    """The --inputs/--input arrays (images are loaded once the net is built).  Their
    declared sizes are checked against --max-memory before they are read."""
    given = {}
    limit = memory_limit(o)
    if o["inputs_npz"]:
        given.update(load_npz(o["inputs_npz"], "--inputs", limit))
    for name, path in parse_assignments(o["input_files"], "--input"):
        if not is_image(path):
            given[name] = load_npy(path, f"--input {name}", limit)
    return given


def build_net(o, arrays, backward=False):
    shapes = {n: parse_shape(n, v) for n, v in parse_assignments(o["input_shape"], "--input-shape")}
    for name, arr in arrays.items():
        shapes.setdefault(name, arr.shape)
    edits = list(o["edits"])
    if backward and o["force_backward"]:
        edits.append("net.force_backward=true")
    net = Net(o["model"], phase=o["phase"], weights=o["weights"], level=o["level"],
              stages=o["stage"], dtype=o["dtype"], seed=o["seed"], edits=edits,
              input_shapes=shapes or None, warn=warn,
              allow_python_layers=bool(o.get("allow_python_layers")),
              max_memory=parse_size(o["max_memory"]) if o["max_memory"] else "default",
              inference=bool(o.get("low_memory")), engine=o.get("engine", "numpy"))
    check = o["check_finite"]
    if check is None:
        check = backward
    if check or o["strict"]:
        net.check_finite = "strict" if o["strict"] else "warn"
    for name, arr in arrays.items():
        declared = net.declared_input_shapes.get(name)
        if declared is not None and tuple(declared) != tuple(arr.shape):
            note(o, f'input "{name}" has shape {tuple(arr.shape)}, the net declares '
                    f"{tuple(declared)}: reshaping the net")
    return net


def gather_inputs(net, o, arrays):
    given = dict(arrays)
    images = {}
    for name, path in parse_assignments(o["input_files"], "--input"):
        if is_image(path):
            images.setdefault(name, []).append(path)
    for name, paths in images.items():          # several images for one input form a batch
        given[name] = load_image_input(net, name, paths, o)
    o["_image_paths"] = images
    for name in given:
        if name not in net.inputs:
            raise NetrunError(f'input "{name}" names no input of the net '
                              f"(inputs: {', '.join(net.inputs) or 'none'})")
    rng = np.random.default_rng(o["seed"])
    for name in net.inputs:
        blob = net.blobs[name]
        if name in given:
            continue
        if label_like(net, name):
            given[name] = np.zeros(blob.shape, net.dtype)
            note(o, f'input "{name}" {blob.shape}: no array given, using zeros (class 0 labels)')
        else:
            given[name] = rng.standard_normal(blob.shape).astype(net.dtype)
            note(o, f'input "{name}" {blob.shape}: no array given, using N(0, 1) values '
                    f"from --seed {o['seed']}")
    return given


IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def is_image(path):
    return path.lower().endswith(IMAGE_EXTS)


def load_image_input(net, name, paths, o):
    from ..io.images import load_images
    return load_images(net, name, [paths] if isinstance(paths, str) else list(paths), o)


def print_top_classes(net, o):
    """Top-5 classes per item of each output made by a Softmax layer."""
    from ..io.images import read_labels, softmax_outputs, top_k_lines
    labels = read_labels(o["labels"]) if o.get("labels") else None
    images = o.get("_image_paths") or {}
    names = next(iter(images.values())) if len(images) == 1 else None
    report = o.get("_report")
    if report is not None:
        tops = {}
        for name, probs in softmax_outputs(net):
            order = np.argsort(-probs, axis=1, kind="stable")[:, :min(5, probs.shape[1])]
            tops[name] = [
                {"item": i, **({"image": names[i]} if names and i < len(names) else {}),
                 "classes": [{"class": int(c), "prob": float(probs[i, c]),
                              **({"label": labels[c]} if labels and c < len(labels) else {})}
                             for c in order[i]]}
                for i in range(probs.shape[0])]
        if tops:
            report["top_classes"] = tops
        return
    lines = top_k_lines(net, 5, labels, names)
    if lines:
        echo(o)
    for line in lines:
        echo(o, line)


# layers whose bottom >= 1 is a class index (filled with class 0 when no array is given)
LABEL_READERS = {"SoftmaxWithLoss", "Accuracy", "MultinomialLogisticLoss", "InfogainLoss",
                 "HingeLoss", "SigmoidCrossEntropyLoss", "ContrastiveLoss"}


def label_like(net, name):
    """True when every consumer of the blob reads it as a class label."""
    uses = []
    for li, bids in enumerate(net.bottom_ids):
        if net.layers[li].type == "Split":       # look through splits at their consumers
            continue
        for j, b in enumerate(bids):
            if b == name or b.startswith(f"{name}_") and "_split_" in b:
                uses.append((net.layers[li], j))
    return bool(uses) and all(j >= 1 and l.type in LABEL_READERS for l, j in uses)


def stats(arr):
    a = np.asarray(arr)
    if a.size == 0:
        return "empty"
    return (f"mean|x| {float(np.mean(np.abs(a))):<11.5g} min {float(a.min()):<11.5g} "
            f"max {float(a.max()):.5g}")


def fmt_shape(shape):
    return "(" + ", ".join(str(d) for d in shape) + ")" if shape else "scalar"


def echo(o, text=""):
    if not o["quiet"] and not o.get("as_json"):
        click.echo(text)


def show_array(o, arr):
    if o["values"] and not o["quiet"] and not o.get("as_json"):
        with np.printoptions(precision=5, suppress=True, threshold=2000, linewidth=100):
            click.echo(np.array2string(np.asarray(arr), prefix="    "))


def visible(net, li):
    return net.layers[li].type != "Split"


def engine_option(f):
    """--engine numpy|onnxruntime (forward and time)."""
    return click.option("--engine", type=click.Choice(["numpy", "onnxruntime"]), default="numpy",
                        show_default=True,
                        help="Forward engine: netrun's own, or ONNX Runtime on the net exported "
                             "with Caffe's semantics (pip install 'netrun[onnx]').")(f)


def forward_engine(net, o):
    """net.forward; on another engine (--engine onnxruntime) every blob version is
    fetched when the blobs are printed or saved."""
    every = not o.get("quiet") or o.get("_report") is not None or bool(o.get("save"))
    if net.engine == "numpy" or not every:
        return net.forward

    def forward(blobs=None, on_layer=None, **inputs):
        return net.forward(blobs=blobs, on_layer=on_layer or (lambda li: None), **inputs)
    return forward


def run_forward(net, o, inputs):
    """Forward, printing each layer's tops; with ``o["_report"]`` (a dict, for --json)
    fill it instead: ``layers`` (each with ``tops`` statistics), ``outputs``, ``loss``.
    ``o["_records"]`` then maps each layer index to its entry of ``layers``."""
    report = o.get("_report")
    if report is not None:
        records = o["_records"] = {}
        report.setdefault("layers", [])

        def record(li):
            if visible(net, li):
                layer = net.layers[li]
                records[li] = {"name": layer.name, "type": layer.type,
                               "tops": [{"name": t, **stat_dict(net.blobs[t].data, o["values"])}
                                        for t in net.top_ids[li]]}
                report["layers"].append(records[li])

        forward_engine(net, o)(blobs=o.get("keep"), on_layer=record, **inputs)
        report["outputs"] = {n: stat_dict(net.blobs[n].data, o["values"]) for n in net.outputs}
        report["loss"] = float(net.loss) if net.blob_loss_weights else None
        return
    echo(o, f"{'layer':<24} {'type':<16} {'top':<24} {'shape':<20} statistics")

    def show(li):
        if not visible(net, li):
            return
        layer = net.layers[li]
        for t in net.top_ids[li]:
            blob = net.blobs[t]
            echo(o, f"{layer.name:<24} {layer.type:<16} {t:<24} {fmt_shape(blob.shape):<20} "
                    f"{stats(blob.data)}")
            show_array(o, blob.data)

    forward_engine(net, o)(blobs=o.get("keep"), on_layer=None if o["quiet"] else show, **inputs)
    loss = net.loss
    echo(o)
    for name in net.outputs:
        data = net.blobs[name].data
        if data.size == 1:
            echo(o, f"output {name} = {float(data.ravel()[0]):.8g}")
        else:
            echo(o, f"output {name} {fmt_shape(data.shape)} {stats(data)}")
            show_array(o, data)
    if net.blob_loss_weights:
        echo(o, f"total loss = {loss:.8g}")


def save_npz(path, arrays):
    from ..io.atomic import atomic_write
    with atomic_write(path, "wb") as f:
        np.savez(f, **arrays)


def dump_arrays(net, with_diffs):
    out = {}
    for name, blob in net.blobs.items():
        if name.startswith("(automatic") or (net.inference and not blob.has_data):
            continue
        out[f"data/{name}"] = np.asarray(blob.data)
        if with_diffs:
            out[f"diff/{name}"] = np.asarray(blob.diff)
    for lname, blobs in net.params.items():
        for k, b in enumerate(blobs):
            out[f"param/{lname}/{k}"] = b.data
            if with_diffs:
                out[f"param_diff/{lname}/{k}"] = b.diff
    return out
