"""``netrun summary | draw | gradcheck | compare``: the tools Caffe never had.

The logic is in :mod:`netrun.tools`; these are the click commands.  They are
registered on the ``netrun`` group at the end of :mod:`netrun.cli`.
"""

import click

from .common import (build_net, gather_inputs, load_arrays, load_npz, net_options,
                   parse_assignments, parse_shape, warn)
from .common import print_json as _print_json
from ..errors import NetrunError
from ..io.atomic import atomic_write
from ..net import Net
from ..tools import compare as compare_mod
from ..tools import draw as draw_mod
from ..tools import gradcheck as gradcheck_mod
from ..tools import summary as summary_mod

CONTEXT = {"help_option_names": ["-h", "--help"]}


# -- shared options -----------------------------------------------------------------------
def _apply(f, opts):
    for o in reversed(opts):
        f = o(f)
    return f


def graph_options(f):
    """What building a net for its shapes needs (no weights, no arrays)."""
    return _apply(f, [
        click.argument("model", type=click.Path(dir_okay=False)),
        click.option("--phase", type=click.Choice(["train", "test"], case_sensitive=False),
                     default="test", show_default=True, help="Net phase for include/exclude rules."),
        click.option("--level", type=int, default=0, show_default=True, help="NetState level."),
        click.option("--stage", multiple=True, help="NetState stage (repeatable)."),
        click.option("--input-shape", multiple=True, metavar="NAME=D0,D1,...",
                     help="Override an input's declared shape (repeatable)."),
        click.option("--set", "edits", multiple=True, metavar="PATH=VALUE",
                     help="Edit the net before building, e.g. conv1.convolution_param.num_output=32 "
                          "(repeatable)."),
        click.option("-q", "--quiet", is_flag=True, help="Print less (see above)."),
    ])


def _net_opts(o, **forced):
    """The option dict the cli helpers (build_net, load_arrays, gather_inputs) read.

    Starts from the defaults of the shared ``net_options`` (whatever options they
    hold now), then takes this command's values and ``forced``.
    """
    probe = click.command("probe")(net_options(lambda **kw: None))
    with probe.make_context("probe", [str(o["model"])]) as ctx:
        base = dict(ctx.params)
    base.update(o)
    base.update(forced)
    return base


def _fail():
    click.get_current_context().exit(1)


def _build_shapes_only(o):
    """The net with its shapes and no arrays: parameters are never filled, nothing runs."""
    shapes = {n: parse_shape(n, v) for n, v in parse_assignments(o["input_shape"], "--input-shape")}
    return Net(o["model"], phase=o["phase"], level=o["level"], stages=o["stage"],
               edits=list(o["edits"]), input_shapes=shapes or None, warn=warn,
               max_memory=None, fill_params=False)


# -- summary --------------------------------------------------------------------------------
@click.command("summary", context_settings=CONTEXT)
@graph_options
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True, help="Output format.")
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.option("--show-splits", is_flag=True, help="Also list the Split layers Caffe inserts.")
def summary_command(fmt, as_json, show_splits, **o):
    """One row per layer: shapes, parameters, multiply-accumulates, memory.

    Layers come in execution order (Caffe's inserted Split layers hidden unless
    --show-splits); each row gives name, type, bottoms -> tops, top shapes,
    parameter count, multiply-accumulates (MACs) and the bytes of its tops,
    then the totals: parameters (a shared parameter counted once), MACs, and
    memory for forward (activations + parameters) and forward+backward (plus
    every diff).  Shapes come from building the net, exactly as Caffe infers
    them; nothing is run and no weights are needed.  Memory is at float32; an
    in-place top or a Split top shares its bottom's array and counts 0.

    \b
    MACs per layer type, for the whole batch (biases not counted):
      Convolution     top count x C_in/group x prod(kernel)          exact
      Deconvolution   bottom count x C_out/group x prod(kernel)      exact
      InnerProduct    M x K x N                                      exact
      LSTM, RNN       T x N x weight elements used per step          estimate
      Pooling         top count x window size                        estimate
      LRN             top count x local_size (squared WITHIN_CHANNEL) estimate
      Eltwise         top count x (bottoms - 1)                      estimate
      BatchNorm, Scale, Bias, PReLU, MVN, Power, Normalize: top count (estimate)
      anything else (activations, Softmax, losses, Concat, data...): 0

    -q prints the totals only.  --json prints {"layers": [{"name", "type",
    "bottoms", "tops": [{"name", "shape"}], "params", "macs", "memory"}],
    "totals": {"params", "macs", "memory_forward", "memory_backward"}} (plus a
    few extra keys).

    \b
    Example:
      netrun summary models/lenet_deploy.prototxt --input-shape data=64,1,28,28
    """
    net = _build_shapes_only(o)
    result = summary_mod.summarize(net, show_splits=show_splits)
    if as_json or fmt == "json":
        _print_json(result)
        return
    for line in summary_mod.format_table(result, totals_only=o["quiet"]):
        click.echo(line)


# -- draw ------------------------------------------------------------------------------------
@click.command("draw", context_settings=CONTEXT)
@graph_options
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--rankdir", type=click.Choice(["TB", "LR", "BT", "RL"], case_sensitive=False),
              default="TB", show_default=True, help="Graph direction: top-bottom or left-right.")
@click.option("--show-splits", is_flag=True, help="Draw the Split layers Caffe inserts.")
def draw_command(out, rankdir, show_splits, **o):
    """Draw the net as a graph: OUT.dot, OUT.svg, OUT.png (or .pdf).

    Layers are boxes with name, type and key parameters (num_output, kernel,
    stride, pad...); a blob read by one layer is an edge labelled with its name
    and shape, a blob read by several layers (and every net output) an ellipse.
    In-place layers are stacked into the box of the layer whose output they
    modify ("+ relu1 (ReLU)").  Split layers are hidden unless --show-splits.

    netrun writes DOT itself; .svg/.png/.pdf run Graphviz's `dot` program, which
    must be on PATH (apt-get install graphviz / brew install graphviz).  The file
    is written atomically.  -q: do not print the "wrote" line.

    \b
    Example:
      netrun draw models/lenet_deploy.prototxt lenet.svg --rankdir LR
    """
    fmt = draw_mod.output_format(out)
    net = _build_shapes_only(o)
    text = draw_mod.to_dot(net, rankdir=rankdir.upper(), show_splits=show_splits)
    data = text.encode("utf-8") if fmt == "dot" else draw_mod.render(text, fmt)
    try:
        with atomic_write(out, "wb") as f:
            f.write(data)
    except OSError as e:
        raise NetrunError(f"cannot write it: {e.strerror or e}", out) from None
    if not o["quiet"]:
        click.echo(f"wrote {out}")


# -- gradcheck --------------------------------------------------------------------------------
@click.command("gradcheck", context_settings=CONTEXT)
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--layer", "layers", multiple=True, metavar="NAME",
              help="Layer to check (repeatable; default: every layer with bottoms or parameters, "
                   "Split layers excepted).")
@click.option("--stepsize", type=float, default=1e-2, show_default=True,
              help="Finite-difference step h.")
@click.option("--threshold", type=float, default=1e-3, show_default=True,
              help="Pass when |analytic - numeric| <= threshold * max(|analytic|, |numeric|, 1).")
@click.option("--kink", type=float, default=0.0, show_default=True,
              help="Centre of the skipped non-smooth region (on |x|).")
@click.option("--kink-range", type=float, default=-1.0, show_default=True,
              help="Skip features with kink - range <= |x| <= kink + range (-1: skip none).")
@click.option("--exhaustive", is_flag=True,
              help="One objective per top element, 2*top[i][j] (Caffe's CheckGradientExhaustive) "
                   "instead of 1/2 sum(top^2).")
@click.option("--max-features", type=int, default=0, show_default=True,
              help="Check at most this many features per blob, chosen at random (--seed); 0: all.")
@click.option("--seed", type=int, default=1701, show_default=True,
              help="Seed for the fillers, the random inputs, the random generator of stochastic "
                   "layers (reset before every forward) and --max-features.")
@click.option("--weights", "-w", type=click.Path(dir_okay=False),
              help="Trained parameters (.caffemodel) instead of the fillers.")
@click.option("--phase", type=click.Choice(["train", "test"], case_sensitive=False),
              default="test", show_default=True, help="Net phase for include/exclude rules.")
@click.option("--level", type=int, default=0, show_default=True, help="NetState level.")
@click.option("--stage", multiple=True, help="NetState stage (repeatable).")
@click.option("--input", "input_files", multiple=True, metavar="NAME=FILE.npy",
              help="Array for an input blob (repeatable); default N(0, 1) values (labels: 0).")
@click.option("--inputs", "inputs_npz", type=click.Path(dir_okay=False), metavar="FILE.npz",
              help="Arrays for input blobs, keyed by blob name.")
@click.option("--input-shape", multiple=True, metavar="NAME=D0,D1,...",
              help="Override an input's declared shape (repeatable).")
@click.option("--set", "edits", multiple=True, metavar="PATH=VALUE",
              help="Edit the net before building (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("-q", "--quiet", is_flag=True,
              help="Print nothing but errors; the exit code tells the result.")
def gradcheck_command(layers, stepsize, threshold, kink, kink_range, exhaustive, max_features,
                      as_json, **o):
    """Check layers' backward against finite differences (Caffe's GradientChecker).

    The net is built in float64 and run forward once on seeded random inputs
    (or --input/--inputs).  Each chosen layer is then checked in isolation, on
    the bottom values it saw: a fresh copy of the layer, fed the net's
    parameter values, with the objective E = 1/2 sum(top^2) over all its tops
    (Caffe's CheckGradient; --exhaustive: E = 2*top[i][j] for every top
    element, as CheckGradientExhaustive).  Every parameter blob (BatchNorm's
    statistics excepted) and every bottom that takes a gradient is checked:
    the analytic gradient from Backward against (E(x+h) - E(x-h)) / 2h for
    each feature x.  A feature passes when |analytic - numeric| <= threshold *
    max(|analytic|, |numeric|, 1); it is skipped when kink - kink_range <= |x|
    <= kink + kink_range.  Prints per layer and blob the worst relative error
    |analytic - numeric| / max(|analytic|, |numeric|, 1) and the failing
    indices; exits 1 when any check fails.

    Non-smooth points are conventions: ReLU's derivative at exactly 0 is taken
    as 0 (the slope, for leaky ReLU), so a feature within h of 0 fails without
    a kink window.  Check the ReLU family (ReLU, AbsVal, PReLU) as Caffe's own
    tests do, with --kink 0 --kink-range 0.01.  The step must be small against
    the values it perturbs: for max pooling/Eltwise MAX near ties, strongly
    curved functions (Log, Power with fractional powers) or the small
    activations deep inside a net, use a smaller --stepsize (1e-4 is safe in
    float64).  Each feature costs two forward passes of its layer: use --layer
    and --max-features on large nets.

    \b
    Examples:
      netrun gradcheck models/mlp_loss.prototxt
      netrun gradcheck models/mlp_loss.prototxt --layer relu1 --kink 0 --kink-range 0.01
    """
    no = _net_opts(o, dtype="float64")
    arrays = load_arrays(no)
    net = build_net(no, arrays)
    inputs = gather_inputs(net, no, arrays)
    settings = dict(stepsize=stepsize, threshold=threshold, kink=kink, kink_range=kink_range,
                    seed=o["seed"], exhaustive=exhaustive, max_features=max_features)
    text = not as_json and not o["quiet"]
    if text:
        objective = "2*top[i][j] per top element" if exhaustive else "1/2 sum(top^2)"
        window = (f"skip {kink - kink_range:g} <= |x| <= {kink + kink_range:g}"
                  if kink_range >= 0 else "no kink window")
        click.echo(f"gradient check: objective {objective}, stepsize {stepsize:g}, "
                   f"threshold {threshold:g}, {window}, float64")
        click.echo(f"{'layer':<20} {'type':<16} {'blob':<28} {'checked':>8} {'skipped':>8} "
                   f"{'worst rel err':>14}  result")

    def show(res):
        if not text:
            return
        if res["status"] == "skipped":
            click.echo(f"{res['name']:<20} {res['type']:<16} {'-':<28} {'':>8} {'':>8} {'':>14}  "
                       f"skipped: {res['reason']}")
            return
        for b in res["blobs"]:
            label = f"{b['kind']} {b['index']} {b['name'] if b['kind'] == 'bottom' else ''}".strip()
            worst = b["worst_rel_error"]
            worst = "-" if b["checked"] == 0 else f"{worst:.3g}"
            verdict = "ok" if b["status"] == "pass" else f"FAIL ({b['failures']} failing)"
            click.echo(f"{res['name']:<20} {res['type']:<16} {label:<28} {b['checked']:>8} "
                       f"{b['skipped']:>8} {worst:>14}  {verdict}")
            for f in b["failing"]:
                where = f" top element {f['top_element']}" if "top_element" in f else ""
                click.echo(f"{'':<20}   at {tuple(f['index'])}{where}: x = {f['feature']:.6g}, "
                           f"analytic {f['analytic']:.6g}, numeric {f['numeric']:.6g}")
            if b["failures"] > len(b["failing"]) and b["failing"]:
                click.echo(f"{'':<20}   ... ({b['failures']} failing in all)")
        if res.get("warning"):
            click.echo(f"{'':<20}   warning: {res['warning']}")

    results = gradcheck_mod.check_net(net, inputs, layers=list(layers), on_layer=show, **settings)
    failed = [r["name"] for r in results if r["status"] == "fail"]
    if as_json:
        _print_json({"layers": results, "failed": failed, "ok": not failed,
                     "settings": settings})
    elif text:
        n = sum(1 for r in results if r["status"] != "skipped")
        click.echo()
        if failed:
            click.echo(f"FAILED: {len(failed)} of {n} layers: {', '.join(failed)}")
        else:
            click.echo(f"all {n} checked layers pass")
    if failed:
        _fail()


# -- compare ---------------------------------------------------------------------------------
@click.command("compare", context_settings=CONTEXT)
@click.argument("a", type=click.Path(dir_okay=False))
@click.argument("b", type=click.Path(dir_okay=False))
@click.option("--rtol", type=float, default=1e-5, show_default=True, help="Relative tolerance.")
@click.option("--atol", type=float, default=1e-8, show_default=True, help="Absolute tolerance.")
@click.option("--strict-keys", is_flag=True, help="Also fail when a key is in one file only.")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
@click.option("-q", "--quiet", is_flag=True,
              help="Print nothing but errors; the exit code tells the result.")
def compare_command(a, b, rtol, atol, strict_keys, as_json, quiet):
    """Compare two .npz files array by array (B is the reference).

    For every key in both files: max |a - b|, max relative difference
    |a - b| / max(|a|, |b|), and ok when every element has
    |a - b| <= atol + rtol * |b| (numpy.allclose; NaN matches NaN) and the
    shapes agree.  Keys found in one file only are listed.  Exits 1 when a
    shared key is beyond tolerance or its shapes differ (and, with
    --strict-keys, when a key is missing from one file), 0 otherwise.

    \b
    Example:
      netrun backward net.prototxt --dump-diffs ours.npz
      netrun compare ours.npz caffe.npz --rtol 1e-4 --atol 1e-5
    """
    A = load_npz(a, "A")
    B = load_npz(b, "B")
    report = compare_mod.compare_files(A, B, rtol=rtol, atol=atol, strict_keys=strict_keys)
    if as_json:
        _print_json(report)
    elif not quiet:
        rows = report["keys"]
        width = max([len(r["key"]) for r in rows] + [3])
        click.echo(f"{'key':<{width}}  {'shape':<20} {'max abs':>11} {'max rel':>11}  result")
        for r in rows:
            shape = "(" + ", ".join(str(d) for d in r["shape_b"]) + ")"
            if r["max_abs"] is None:
                click.echo(f"{r['key']:<{width}}  {shape:<20} {'-':>11} {'-':>11}  FAIL: {r['reason']}")
                continue
            verdict = "ok" if r["ok"] else f"FAIL: {r['reason']}"
            click.echo(f"{r['key']:<{width}}  {shape:<20} {r['max_abs']:>11.4g} "
                       f"{r['max_rel']:>11.4g}  {verdict}")
        for side, keys in (("A", report["only_in_a"]), ("B", report["only_in_b"])):
            if keys:
                click.echo(f"only in {side} ({a if side == 'A' else b}): {', '.join(keys)}")
        n_bad = sum(1 for r in rows if not r["ok"])
        click.echo(f"{len(rows)} shared keys, {n_bad} beyond tolerance "
                   f"(rtol {rtol:g}, atol {atol:g})" + ("" if report["ok"] else ": FAIL"))
    if not report["ok"]:
        _fail()
