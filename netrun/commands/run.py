"""The core commands: forward, backward, upgrade, layers."""
import click
import numpy as np

from ..errors import NetrunError
from .common import (build_net, dump_arrays, echo, engine_option, gather_inputs, json_option,
                     load_arrays,
                     load_npy, load_npz, net_options, note, parse_assignments, print_json,
                     print_top_classes, run_forward, save_npz, show_array, stat_dict, stats,
                     visible, fmt_shape)


def _start_report(o):
    """With --json: the dict the run fills (printed at the end), else None."""
    if o["as_json"]:
        o["_report"] = {"model": o["model"], "phase": o["phase"].lower()}
    return o.get("_report")


@click.command()
@net_options
@click.option("--save", type=click.Path(dir_okay=False), metavar="OUT.npz",
              help="Save every blob (data/<blob>) and parameter (param/<layer>/<i>).")
@click.option("--low-memory", is_flag=True,
              help="Free each intermediate blob once its last reader has run; --save then "
                   "keeps the outputs and the blobs named by --keep.")
@click.option("--keep", multiple=True, metavar="BLOB",
              help="With --low-memory: a blob to keep (repeatable).")
@click.option("--labels", type=click.Path(dir_okay=False), metavar="SYNSET.txt",
              help="Class names, one a line, for the top-5 of Softmax outputs "
                   "(synset_words.txt: the text after the id).")
@engine_option
@json_option
def forward(**o):
    """Run the net forward; print every layer's tops and the outputs.

    --json prints one object instead: "layers" (name, type, and each top's shape,
    mean_abs, min, max; -v adds "values"), "outputs", "loss" (null without a loss)
    and, for Softmax outputs, "top_classes".

    \b
    Examples:
      netrun forward models/lenet_deploy.prototxt --input data=digit.npy
      netrun forward models/mlp_loss.prototxt --json | jq .loss
    """
    report = _start_report(o)
    arrays = load_arrays(o)
    net = build_net(o, arrays)
    inputs = gather_inputs(net, o, arrays)
    run_forward(net, o, inputs)
    print_top_classes(net, o)
    if o["save"]:
        save_npz(o["save"], dump_arrays(net, with_diffs=False))
        echo(o, f"saved {o['save']}")
        if report is not None:
            report["saved"] = o["save"]
    if report is not None:
        print_json(report)


@click.command()
@net_options
@click.option("--top-diff", "top_diff_files", multiple=True, metavar="NAME=FILE.npy",
              help="Diff for an output blob (repeatable).")
@click.option("--top-diffs", "top_diffs_npz", type=click.Path(dir_okay=False), metavar="FILE.npz",
              help="Diffs for output blobs, keyed by blob name.")
@click.option("--force-backward", is_flag=True,
              help="As force_backward: true: every blob gets its diff (e.g. saliency on the input).")
@click.option("--dump-diffs", type=click.Path(dir_okay=False), metavar="OUT.npz",
              help="Save data/<blob>, diff/<blob>, param/<layer>/<i>, param_diff/<layer>/<i>.")
@json_option
def backward(**o):
    """Run forward then backward; print every layer's diffs and the parameter gradients.

    A net with a loss is driven by its loss weights; a net without one gets its
    output diffs from --top-diff(s), else all ones, and gives every blob its diff.

    --json prints one object instead: as forward's, plus per layer "backward"
    (whether it ran), each top's "diff" and "bottoms" (the diffs it wrote), and
    "params" (each parameter blob's "data" and "diff" statistics).

    \b
    Examples:
      netrun backward models/relu_demo.prototxt --set relu.relu_param.negative_slope=0.1
      netrun backward models/mlp_loss.prototxt --json > grads.json
    """
    report = _start_report(o)
    arrays = load_arrays(o)
    net = build_net(o, arrays, backward=True)
    top_diffs = {}
    if o["top_diffs_npz"]:
        top_diffs.update(load_npz(o["top_diffs_npz"], "--top-diffs", net.budget.limit))
    for name, path in parse_assignments(o["top_diff_files"], "--top-diff"):
        top_diffs[name] = load_npy(path, f"--top-diff {name}", net.budget.limit)
    for name in top_diffs:
        if name not in net.blobs:
            raise NetrunError(f'top diff "{name}" names no blob of the net '
                              f"(outputs: {', '.join(net.outputs)})")
    if not net.blob_loss_weights:
        if not net.force_backward:
            net.set_force_backward(True)
        missing = [n for n in net.outputs if n not in top_diffs]
        if missing:
            note(o, "the net has no loss: output diffs of " + ", ".join(missing) +
                    " set to ones (give --top-diff NAME=FILE.npy to choose)")
            if report is not None:
                report["ones_top_diffs"] = missing
    inputs = gather_inputs(net, o, arrays)
    run_forward(net, o, inputs)
    if not net.blob_loss_weights:
        for n in net.outputs:
            if n not in top_diffs:
                top_diffs[n] = np.ones(net.blobs[n].shape, net.dtype)
    echo(o)
    echo(o, f"{'layer':<24} {'type':<16} {'blob':<24} {'':<7} statistics")

    def show(li):
        if not visible(net, li):
            return
        layer = net.layers[li]
        for t in net.top_ids[li]:
            echo(o, f"{layer.name:<24} {layer.type:<16} {t:<24} {'top':<7} {stats(net.blobs[t].diff)}")
        for j, b in enumerate(net.bottom_ids[li]):
            if net.bottom_need_backward[li][j]:
                echo(o, f"{layer.name:<24} {layer.type:<16} {b:<24} {'bottom':<7} "
                        f"{stats(net.blobs[b].diff)}")
                show_array(o, net.blobs[b].diff)

    if report is not None:
        records = o["_records"]
        for li, rec in records.items():
            rec["backward"] = bool(net.layer_need_backward[li])

        def record(li):
            rec = records.get(li)
            if rec is None:
                return
            for t, entry in zip(net.top_ids[li], rec["tops"]):
                entry["diff"] = stat_dict(net.blobs[t].diff, o["values"])
            rec["bottoms"] = [{"name": b, "diff": stat_dict(net.blobs[b].diff, o["values"])}
                              for j, b in enumerate(net.bottom_ids[li])
                              if net.bottom_need_backward[li][j]]

        net.backward(on_layer=record, **top_diffs)
        report["params"] = [{"layer": lname, "index": k, "shape": list(b.shape),
                             "data": _no_shape(stat_dict(b.data, o["values"])),
                             "diff": _no_shape(stat_dict(b.diff, o["values"]))}
                            for lname, blobs in net.params.items() for k, b in enumerate(blobs)]
        if o["dump_diffs"]:
            save_npz(o["dump_diffs"], dump_arrays(net, with_diffs=True))
            report["saved"] = o["dump_diffs"]
        print_json(report)
        return
    net.backward(on_layer=None if o["quiet"] else show, **top_diffs)
    if net.params and not o["quiet"]:
        echo(o)
        echo(o, "parameter gradients")
        for lname, blobs in net.params.items():
            for k, b in enumerate(blobs):
                echo(o, f"{lname:<24} {k:<3} {fmt_shape(b.shape):<20} {stats(b.diff)}")
                show_array(o, b.diff)
    if o["dump_diffs"]:
        save_npz(o["dump_diffs"], dump_arrays(net, with_diffs=True))
        echo(o, f"saved {o['dump_diffs']}")


def _no_shape(d):
    d.pop("shape", None)
    return d


@click.command()
@click.argument("source")
@click.argument("target")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
def upgrade(source, target, quiet):
    """Upgrade a V0/V1 net (prototxt or caffemodel) or a legacy solver to the current format.

    The output is binary for .caffemodel/.binaryproto targets, text otherwise.

    \b
    Examples:
      netrun upgrade old_deploy.prototxt deploy.prototxt
      netrun upgrade old.caffemodel new.caffemodel
    """
    from google.protobuf import text_format
    from ..io.atomic import atomic_write
    from ..io.prototxt import parse_text, read_binary, read_text, upgrade_if_needed
    from ..io.upgrade import solver_needs_upgrade, upgrade_solver
    from ..proto import caffe_pb2
    notes = []
    if source.lower().endswith((".caffemodel", ".binaryproto")):
        msg = upgrade_if_needed(read_binary(source, caffe_pb2.NetParameter()), notes.append)
    else:
        text = read_text(source)
        try:
            msg = upgrade_if_needed(parse_text(text, caffe_pb2.NetParameter(), source), notes.append)
        except NetrunError as net_error:
            try:
                solver = parse_text(text, caffe_pb2.SolverParameter(), source)
            except NetrunError:
                raise net_error from None
            msg = upgrade_solver(solver, notes.append) if solver_needs_upgrade(solver) else solver
    binary = target.lower().endswith((".caffemodel", ".binaryproto"))
    with atomic_write(target, "wb") as f:
        f.write(msg.SerializeToString() if binary else text_format.MessageToString(msg).encode())
    if not quiet:
        for n in notes:
            click.echo(f"netrun: {n}", err=True)
        click.echo(f"wrote {target} ({'already current; ' if not notes else ''}"
                   f"{'binary' if binary else 'text'})")


@click.command("layers")
@click.option("-q", "--quiet", is_flag=True,
              help="Only the type names (no fork column).")
@json_option
def list_layers(quiet, as_json):
    """List the layer types netrun implements, one a line (--json: a JSON list of the
    names).  A type from a Caffe fork (SSD, SegNet/ENet, ShuffleNet, Faster R-CNN) is
    followed by the fork it comes from; Python layers that netrun has built in are
    listed after "Python".  -q: the names only.

    \b
    Examples:
      netrun layers
      netrun layers | grep -i loss
      netrun layers | grep fork
    """
    from ..layers import registered_types
    from ..layers.base import python_builtins
    from ..layers.forks import FORK_LAYERS, PYTHON_FORK_LAYERS
    if as_json:
        print_json(registered_types())
        return
    types = registered_types()
    width = max(len(t) for t in types) + 2
    for t in types:
        if quiet:
            click.echo(t)
        elif t in FORK_LAYERS:
            click.echo(f"{t:<{width}}fork: {FORK_LAYERS[t]}")
        elif t == "Python" and python_builtins():
            built = ", ".join(f"{m}.{c} (fork: {PYTHON_FORK_LAYERS.get((m, c), '?')})"
                              for m, c in sorted(python_builtins()))
            click.echo(f"{t:<{width}}built in, no --allow-python-layers needed: {built}")
        else:
            click.echo(t)
