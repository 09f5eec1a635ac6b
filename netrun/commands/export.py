"""``netrun export``: the net (deploy graph and weights) to ONNX, with Caffe's semantics."""
import click
import numpy as np

from ..errors import NetrunError
from .common import build_net, echo, gather_inputs, load_arrays, net_options, warn

# the conformance suite's net tolerance (../shared/conformance/README.md)
RTOL, ATOL_SCALE = 1e-3, 1e-4


def worst_difference(ours, ref):
    """(ratio to the net tolerance, max abs difference) of ``ours`` against ``ref``."""
    ours = np.asarray(ours, np.float64)
    ref = np.asarray(ref, np.float64)
    if ours.shape != ref.shape:
        return np.inf, np.inf
    if ref.size == 0:
        return 0.0, 0.0
    diff = np.abs(ours - ref)
    if not np.array_equal(np.isfinite(ours), np.isfinite(ref)):
        return np.inf, np.inf
    finite = np.isfinite(ref)
    diff = np.where(finite, diff, 0)
    atol = ATOL_SCALE * max(1.0, float(np.max(np.abs(np.where(finite, ref, 0)))))
    ratio = diff / (atol + RTOL * np.abs(np.where(finite, ref, 0)))
    return float(ratio.max()), float(diff.max())


@click.command("export")
@net_options
@click.option("-o", "--output", "out", required=True, type=click.Path(dir_okay=False),
              metavar="MODEL.onnx", help="Where to write the ONNX model.")
@click.option("--static", is_flag=True,
              help="Freeze the batch axis at the net's batch (default: a dynamic batch axis N).")
@click.option("--blob", "blobs", multiple=True, metavar="BLOB",
              help="Export this blob as an output (repeatable; default: the net's outputs "
                   "that are not losses).")
@click.option("--check", is_flag=True,
              help="Run the ONNX model in ONNX Runtime beside netrun's engine on the same input "
                   "and report the worst difference; exit 1 beyond the net tolerance "
                   "(rtol 1e-3, atol 1e-4 * max(1, max|x|)).")
def export_command(**o):
    """Export the net to ONNX (opset 17) with Caffe's semantics.

    ONNX input and output names are the Caffe blob names; the weights are
    initializers.  Layers not on the path to an exported output are dropped with a
    warning; a layer on it that ONNX cannot express is an error naming it.

    \b
    Examples:
      netrun export deploy.prototxt -w model.caffemodel -o model.onnx --check
      netrun export lenet.prototxt -o lenet.onnx --static --input-shape data=1,1,28,28
    """
    from ..export.onnx import export
    arrays = load_arrays(o)
    net = build_net(o, arrays)
    ex = export(net, outputs=list(o["blobs"]) or None, dynamic_batch=not o["static"], warn=warn)
    ex.save(o["out"])
    nodes = len(ex.model.graph.node)
    echo(o, f"wrote {o['out']} (ONNX opset 17, {nodes} nodes; inputs "
            f"{', '.join(ex.inputs)}; outputs {', '.join(ex.outputs)}; "
            f"batch {'static' if o['static'] else 'dynamic'})")
    if not o["check"]:
        return
    from ..engines.onnxruntime import need_onnxruntime, cpu_count
    ort = need_onnxruntime()
    inputs = gather_inputs(net, o, arrays)
    ref = net.forward(blobs=list(ex.outputs), **inputs)
    so = ort.SessionOptions()
    so.intra_op_num_threads = cpu_count()
    so.log_severity_level = 3
    try:
        sess = ort.InferenceSession(ex.model.SerializeToString(), so,
                                    providers=["CPUExecutionProvider"])
    except Exception as e:                        # an exporter bug, not a user error
        raise NetrunError(f"ONNX Runtime rejects the exported model: {e}") from e
    feeds = {n: np.ascontiguousarray(net.blobs[n].data, np.float32) for n in ex.inputs}
    got = sess.run(list(ex.outputs.values()), feeds)
    worst = 0.0
    for blob, arr in zip(ex.outputs, got):
        ratio, diff = worst_difference(arr, ref[blob])
        worst = max(worst, ratio)
        click.echo(f"check {blob}: max |onnxruntime - netrun| = {diff:.3g} "
                   f"({ratio:.3g}x the net tolerance)")
    if worst > 1:
        click.echo(f"netrun: check failed: ONNX Runtime differs from netrun by {worst:.3g}x the "
                   "net tolerance", err=True)
        click.get_current_context().exit(1)
    click.echo(f"check passed: worst {worst:.3g}x the net tolerance")
