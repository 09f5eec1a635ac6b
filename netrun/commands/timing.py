"""``netrun time``: per-layer forward/backward timings, printed as ``caffe time`` prints them."""
import statistics
import sys
import time

import click

from .common import (build_net, echo, engine_option, gather_inputs, json_option, load_arrays,
                     net_options, print_json)


@click.command("time")
@net_options
@click.option("--iterations", "-n", type=click.IntRange(1), default=50, show_default=True,
              help="Timed iterations (after one warm-up).")
@click.option("--forward-only", is_flag=True, help="Time the forward pass only.")
@click.option("--force-backward", is_flag=True, help="As force_backward: true.")
@engine_option
@json_option
def time_command(**o):
    """Benchmark a net: one warm-up, then per-layer forward and backward averages.

    Layers run as in Net.forward/backward: a chain of in-place layers that netrun
    runs together (BatchNorm -> Scale -> ReLU) is timed as one step, reported on its
    first layer.  NaN/Inf watching is off unless --check-finite is given.

    The last lines are spelled as `caffe time` spells them
    (`Average Forward pass: X ms.`, `Average Backward pass: Y ms.`), so scripts that
    parse Caffe's output keep working.  --json prints one object instead: "layers"
    (name, type, forward_ms, backward_ms: averages per iteration; forward_/backward_fused_into:
    the layer whose step ran it, or null) and the
    average_/median_ forward, backward and forward_backward times in ms.

    \b
    Examples:
      netrun time deploy.prototxt --input-shape data=8,3,224,224 --iterations 10
      netrun time models/lenet_deploy.prototxt -n 5 --json
    """
    arrays = load_arrays(o)
    if o["check_finite"] is None:       # time the layers, as caffe time does: no NaN watch
        o["check_finite"] = False
    net = build_net(o, arrays, backward=not o["forward_only"])
    if not o["forward_only"] and not net.blob_loss_weights and not net.force_backward:
        net.set_force_backward(True)
    for name, arr in gather_inputs(net, o, arrays).items():
        net.set_input(name, arr)
    if o["engine"] == "onnxruntime":
        return _time_onnxruntime(net, o)
    n_layers = len(net.layers)
    seed_diffs = {} if net.blob_loss_weights else {
        name: 1.0 for name in net.outputs}
    fused_into = ({}, {})    # forward, backward: layer -> the first of its fused chain

    def clock(store, fused):
        """A Net timer: each step's time goes to its first layer (a chain of in-place
        layers runs as one step; its other layers get 0)."""
        mark = [time.perf_counter()]

        def tick(indices):
            now = time.perf_counter()
            indices = list(indices)
            store[indices[0]].append(now - mark[0])
            for k in indices[1:]:
                store[k].append(0.0)
                fused[k] = indices[0]
            mark[0] = now
        return tick

    def one_pass(fwd, bwd):
        t_start = time.perf_counter()
        net.forward(timer=clock(fwd, fused_into[0]))
        t_mid = time.perf_counter()
        if not o["forward_only"]:
            for name, v in seed_diffs.items():
                net.blobs[name].diff[...] = v
            net.backward(timer=clock(bwd, fused_into[1]))
        t_end = time.perf_counter()
        return t_mid - t_start, t_end - t_mid

    echo(o, "*** Benchmark begins ***")
    echo(o, f"Testing for {o['iterations']} iterations.")
    warm = [[] for _ in range(n_layers)]
    one_pass(warm, [[] for _ in range(n_layers)])
    fwd = [[] for _ in range(n_layers)]
    bwd = [[] for _ in range(n_layers)]
    totals = []
    show_bar = (not o["quiet"] and not o["as_json"] and sys.stderr.isatty()
                and o["iterations"] > 1)
    with click.progressbar(range(o["iterations"]), label="timing", file=sys.stderr,
                           hidden=not show_bar) as bar:
        for it in bar:
            f, b = one_pass(fwd, bwd)
            totals.append((f, b))
            if not show_bar:
                echo(o, f"Iteration: {it + 1} forward-backward time: {(f + b) * 1e3:.3f} ms.")
    ms = lambda xs: 1e3 * sum(xs) / len(xs) if xs else 0.0  # noqa: E731

    def fused_name(direction, li):
        k = fused_into[direction].get(li)
        return None if k is None else net.layers[k].name
    if o["as_json"]:
        f_all = [f for f, _ in totals]
        b_all = [b for _, b in totals]
        fb_all = [f + b for f, b in totals]
        print_json({
            "model": o["model"], "iterations": o["iterations"],
            "forward_only": bool(o["forward_only"]),
            "layers": [{"name": layer.name, "type": layer.type, "forward_ms": ms(fwd[li]),
                        "backward_ms": ms(bwd[li]) if bwd[li] else None,
                        "forward_fused_into": fused_name(0, li),
                        "backward_fused_into": fused_name(1, li)}
                       for li, layer in enumerate(net.layers)],
            "average_forward_ms": ms(f_all), "average_backward_ms": ms(b_all),
            "average_forward_backward_ms": ms(fb_all),
            "median_forward_ms": 1e3 * statistics.median(f_all),
            "median_backward_ms": 1e3 * statistics.median(b_all),
            "median_forward_backward_ms": 1e3 * statistics.median(fb_all),
            "total_ms": 1e3 * sum(fb_all)})
        return
    echo(o, "Average time per layer: ")
    width = max((len(n) for n in net.layer_names), default=10)
    for li, layer in enumerate(net.layers):
        notes = [f" (run with {n}, whose time includes it)" if n else ""
                 for n in (fused_name(0, li), fused_name(1, li))]
        echo(o, f"{layer.name:>{width}}\tforward: {ms(fwd[li]):.5g} ms.{notes[0]}")
        echo(o, f"{layer.name:>{width}}\tbackward: {ms(bwd[li]):.5g} ms.{notes[1]}")
    f_all = [f for f, _ in totals]
    b_all = [b for _, b in totals]
    echo(o, f"Median Forward pass: {1e3 * statistics.median(f_all):.3f} ms.")
    echo(o, f"Median Backward pass: {1e3 * statistics.median(b_all):.3f} ms.")
    click.echo(f"Average Forward pass: {ms(f_all):.3f} ms.")
    click.echo(f"Average Backward pass: {ms(b_all):.3f} ms.")
    echo(o, f"Average Forward-Backward: {ms([f + b for f, b in totals]):.3f} ms.")
    echo(o, f"Total Time: {1e3 * sum(f + b for f, b in totals):.3f} ms.")
    echo(o, "*** Benchmark ends ***")


def _time_onnxruntime(net, o):
    """--engine onnxruntime: the whole forward pass, timed as one step (ONNX Runtime
    fuses and reorders the layers, so there is no per-layer time); forward only."""
    engine = net.engine_session()
    feeds = engine.feeds()
    echo(o, "*** Benchmark begins ***")
    echo(o, f"Testing for {o['iterations']} iterations (ONNX Runtime, forward only).")
    engine.run(feeds)                             # warm-up
    times = []
    for it in range(o["iterations"]):
        t0 = time.perf_counter()
        engine.run(feeds)
        times.append(time.perf_counter() - t0)
        if not o["as_json"]:
            echo(o, f"Iteration: {it + 1} forward time: {times[-1] * 1e3:.3f} ms.")
    avg = 1e3 * sum(times) / len(times)
    med = 1e3 * statistics.median(times)
    if o["as_json"]:
        print_json({"model": o["model"], "iterations": o["iterations"], "forward_only": True,
                    "engine": "onnxruntime", "layers": [],
                    "average_forward_ms": avg, "median_forward_ms": med,
                    "average_backward_ms": None, "total_ms": 1e3 * sum(times)})
        return
    echo(o, f"Median Forward pass: {med:.3f} ms.")
    click.echo(f"Average Forward pass: {avg:.3f} ms.")
    echo(o, "*** Benchmark ends ***")
