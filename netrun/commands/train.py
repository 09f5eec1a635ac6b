"""``netrun train`` and ``netrun test``: Caffe's ``caffe train`` / ``caffe test``.

Log lines go to stdout in Caffe's words (``Iteration N, loss = X``,
``Iteration N, lr = Y``, ``    Train net output #0: loss = ...``); the training
progress bar goes to stderr, only when stderr is a terminal.  ``--plot FILE.png``
draws the training loss and the test outputs with Pillow (no matplotlib).
"""
import os
import sys
import time

import click
import numpy as np

from ..errors import NetrunError


def _cli():
    from . import common
    return common


class Progress:
    """A one-line progress bar on stderr: iteration, lr, smoothed loss, it/s."""

    def __init__(self, enabled, total):
        self.enabled = enabled
        self.total = total
        self.t0 = time.time()
        self.n0 = None
        self.last = 0.0
        self.text = ""

    def update(self, solver, loss):
        if not self.enabled:
            return
        if self.n0 is None:
            self.n0 = solver.iter - 1
            self.t0 = time.time()
        now = time.time()
        if now - self.last < 0.1 and solver.iter < self.total:
            return
        self.last = now
        done = solver.iter - self.n0
        speed = done / max(now - self.t0, 1e-9)
        width = 24
        frac = min(1.0, solver.iter / self.total) if self.total else 1.0
        filled = int(round(frac * width))
        bar = "#" * filled + "-" * (width - filled)
        self.text = (f"[{bar}] iter {solver.iter}/{self.total}  lr {solver.rate:.4g}  "
                     f"loss {solver.smoothed_loss:.5g}  {speed:.3g} it/s")
        self._draw()

    def _draw(self):
        sys.stderr.write("\r\x1b[K" + self.text)
        sys.stderr.flush()

    def clear(self):
        if self.enabled and self.text:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()

    def log(self, line):
        self.clear()
        click.echo(line)
        if self.enabled and self.text:
            self._draw()

    def close(self):
        if self.enabled and self.text:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self.text = ""


def _number_or_list(arr):
    a = np.asarray(arr, np.float64).ravel()
    return float(a[0]) if a.size == 1 else a.tolist()


def _split_weights(text):
    return [w for w in (s.strip() for s in text.split(",")) if w]


@click.command("train")
@click.argument("solver_file", metavar="SOLVER", type=click.Path(dir_okay=False))
@click.option("--weights", "-w", metavar="W.caffemodel[,...]",
              help="Start from these weights (comma-separated: loaded in order), as "
                   "caffe train -weights. Overrides the solver's weights field.")
@click.option("--snapshot", "resume", type=click.Path(dir_okay=False), metavar="S.solverstate",
              help="Resume from a .solverstate (iteration, history and its weights).")
@click.option("--max-iter", type=int, metavar="K",
              help="Stop at iteration K (the solver's max_iter still drives lr_policy poly).")
@click.option("--inputs", "inputs_npz", type=click.Path(dir_okay=False), metavar="X.npz",
              help="Arrays for the nets' Input blobs (keyed by blob name), set before every forward.")
@click.option("--dump", type=click.Path(dir_okay=False), metavar="OUT.npz",
              help="Save losses (per iteration), param/<layer>/<i> and history/<k>.")
@click.option("--plot", type=click.Path(dir_okay=False), metavar="OUT.png",
              help="Write a PNG of the training loss per iteration and of the test outputs "
                   "(accuracy, test loss) at each test pass. Needs Pillow (netrun[images]).")
@click.option("--seed", type=int, default=None,
              help="Seed for fillers and random layers (default: the solver's random_seed, else 0).")
@click.option("--snapshot-prefix", metavar="PREFIX", help="Override the solver's snapshot_prefix.")
@click.option("--no-final-snapshot", is_flag=True,
              help="Do not snapshot at the end (as snapshot_after_train: false).")
@click.option("--level", type=int, default=None, help="Train NetState level.")
@click.option("--stage", multiple=True, help="Train NetState stage (repeatable).")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32",
              show_default=True, help="Arithmetic precision.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors (no log, no bar).")
def train_command(solver_file, weights, resume, max_iter, inputs_npz, dump, plot, seed,
                  snapshot_prefix, no_final_snapshot, level, stage, dtype, quiet):
    """Train a net with a Caffe solver (SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam).

    Ctrl-C snapshots and stops; resume with --snapshot.

    \b
    Example:
      netrun train lenet_solver.prototxt --max-iter 500
      netrun train lenet_solver.prototxt --snapshot lenet_iter_500.solverstate
      netrun train models/digits/digits_solver.prototxt --plot digits_loss.png
    """
    from ..solver import get_solver, interrupt_snapshots
    cli = _cli()
    if resume and weights:
        raise NetrunError("give --snapshot to resume training or --weights to finetune, not both")
    if plot:
        check_plot_target(plot)
    arrays = cli.load_npz(inputs_npz, "--inputs") if inputs_npz else {}
    progress = Progress(not quiet and sys.stderr.isatty(), 0)
    log = (lambda line: None) if quiet else progress.log
    weight_list = [] if resume else (_split_weights(weights) if weights else None)
    solver = get_solver(solver_file, weights=weight_list, seed=seed, dtype=dtype, log=log,
                        inputs=arrays, warn=cli.warn, level=level, stages=stage)
    solver.check_inputs()
    if snapshot_prefix:
        solver.param.snapshot_prefix = os.path.abspath(snapshot_prefix)
    if no_final_snapshot:
        solver.param.snapshot_after_train = False
    if not quiet:
        for name in solver.net.inputs:
            if name not in arrays:
                cli.note({}, f'input "{name}" {solver.net.blobs[name].shape}: no array given '
                             "(--inputs), it stays zeros")
    progress.total = solver.param.max_iter if max_iter is None else max_iter
    solver.callbacks.append(progress.update)
    tests = PassRecorder(solver) if plot else None
    try:
        with interrupt_snapshots(solver):
            solver.solve(resume_file=resume, max_iter=max_iter)
    finally:
        progress.close()
    if dump:
        out = {"losses": solver.losses}
        out.update(solver.params_dict())
        out.update(solver.history_dict())
        cli.save_npz(dump, out)
        if not quiet:
            click.echo(f"saved {dump}")
    if plot:
        plot_training(plot, solver, tests)
        if not quiet:
            click.echo(f"saved {plot}")


@click.command("test")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--weights", "-w", metavar="W.caffemodel[,...]",
              help="Trained weights to score (comma-separated: loaded in order).")
@click.option("--iterations", "-n", type=int, default=50, show_default=True,
              help="Number of batches (forward passes).")
@click.option("--phase", type=click.Choice(["train", "test"], case_sensitive=False),
              default="test", show_default=True, help="Net phase for include/exclude rules.")
@click.option("--level", type=int, default=0, show_default=True, help="NetState level.")
@click.option("--stage", multiple=True, help="NetState stage (repeatable).")
@click.option("--inputs", "inputs_npz", type=click.Path(dir_okay=False), metavar="X.npz",
              help="Arrays for Input blobs, set before every batch.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed for fillers and for inputs given no array.")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32",
              show_default=True, help="Arithmetic precision.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the mean of each output.")
@click.option("--json", "as_json", is_flag=True,
              help='Print one JSON object instead: "loss" (mean), "outputs" (each output\'s '
                   'mean, a number or a list, and loss_weight) and "batches".')
def test_command(model, weights, iterations, phase, level, stage, inputs_npz, seed, dtype, quiet,
                 as_json):
    """Score a trained model, as caffe test: each batch's outputs, then their means.

    \b
    Examples:
      netrun test lenet_train_test.prototxt --weights lenet_iter_10000.caffemodel -n 100
      netrun test lenet_train_test.prototxt -w lenet.caffemodel --json | jq .outputs.accuracy
    """
    from ..net import Net
    cli = _cli()
    if not weights:
        raise NetrunError("need --weights to score a model (as caffe test)")
    if iterations < 1:
        raise NetrunError("--iterations must be >= 1")
    arrays = cli.load_npz(inputs_npz, "--inputs") if inputs_npz else {}
    net = Net(model, phase=phase, level=level, stages=stage, dtype=dtype, seed=seed,
              input_shapes={k: np.shape(v) for k, v in arrays.items()} or None, warn=cli.warn)
    for w in _split_weights(weights):
        net.copy_from(w)
    o = {"input_files": (), "seed": seed, "quiet": quiet}
    inputs = cli.gather_inputs(net, o, arrays) if net.inputs or arrays else {}
    echo = (lambda line: None) if quiet or as_json else click.echo
    echo(f"Running for {iterations} iterations.")
    sums, loss = None, 0.0
    batches = []
    for i in range(iterations):
        for name, arr in inputs.items():
            net.set_input(name, arr)
        out = net.forward()
        loss += net.loss
        if sums is None:
            sums = {k: np.asarray(v, np.float64).ravel().copy() for k, v in out.items()}
        else:
            for k, v in out.items():
                sums[k] += np.asarray(v).ravel()
        if as_json:
            batches.append({k: _number_or_list(v) for k, v in out.items()})
        for k, v in out.items():
            for x in np.asarray(v).ravel():
                echo(f"Batch {i}, {k} = {float(x):.6g}")
    if as_json:
        cli.print_json({
            "model": model, "iterations": iterations, "loss": loss / iterations,
            "outputs": {k: {"mean": _number_or_list(s / iterations),
                            "loss_weight": net.blob_loss_weights.get(k, 0.0)}
                        for k, s in (sums or {}).items()},
            "batches": batches})
        return
    echo(f"Loss: {loss / iterations:.6g}")
    for k, s in (sums or {}).items():
        w = net.blob_loss_weights.get(k, 0.0)
        for x in s / iterations:
            extra = f" (* {w:.6g} = {w * x:.6g} loss)" if w else ""
            click.echo(f"{k} = {x:.6g}{extra}")


# -- --plot: the training curves as a PNG, drawn with Pillow's ImageDraw -----------------------
def need_pillow():
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        raise NetrunError("--plot needs Pillow: pip install netrun[images]") from None
    return Image, ImageDraw, ImageFont


def check_plot_target(path):
    """Fail before training, not after it: Pillow present, a writable file name."""
    need_pillow()
    if os.path.isdir(path):
        raise NetrunError("--plot: is a directory; give a file name such as loss.png", path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise NetrunError(f"--plot: folder {folder} does not exist", path)


class PassRecorder:
    """Keeps every test pass of a solver: ``passes`` is a list of
    ``(iteration, test net index, {output: mean})`` (scalar outputs only)."""

    def __init__(self, solver):
        self.passes = []
        original = solver.test

        def test(i):
            means = original(i)
            if means is not None:
                scalars = {k: float(np.asarray(v).ravel()[0]) for k, v in means.items()
                           if np.asarray(v).size == 1}
                self.passes.append((solver.iter, i, scalars))
            return means

        solver.test = test

    def series(self, solver):
        """``[(label, iters, values, is_loss)]``, one per (test net, output)."""
        out = {}
        for it, i, scalars in self.passes:
            for name, v in scalars.items():
                key = (i, name)
                if key not in out:
                    weight = solver.test_nets[i].blob_loss_weights.get(name, 0.0)
                    label = f"test {name}" if len(solver.test_nets) == 1 else f"test #{i} {name}"
                    out[key] = (label, [], [], bool(weight))
                out[key][1].append(it)
                out[key][2].append(v)
        return [(label, np.array(its, np.float64), np.array(vs, np.float64), is_loss)
                for label, its, vs, is_loss in out.values()]


def moving_average(values, window):
    """Mean of the last ``window`` values at each position (fewer at the start)."""
    values = np.asarray(values, np.float64)
    if window <= 1 or values.size == 0:
        return values
    c = np.concatenate([[0.0], np.cumsum(values)])
    idx = np.arange(1, values.size + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def nice_ticks(lo, hi, n=6):
    """Round tick values covering [lo, hi] with about ``n`` steps of 1, 2, 2.5 or 5 x 10^k;
    returns (lo', hi', ticks) with the limits widened to whole steps."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        lo, hi = 0.0, 1.0
    if hi <= lo:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / n
    mag = 10.0 ** np.floor(np.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw * (1 - 1e-9))
    lo2 = np.floor(lo / step + 1e-9) * step
    hi2 = np.ceil(hi / step - 1e-9) * step
    ticks = lo2 + step * np.arange(int(round((hi2 - lo2) / step)) + 1)
    return float(lo2), float(hi2), [float(round(t, 12)) for t in ticks]


def log_ticks(lo, hi):
    """Decade limits 10^a <= lo, hi <= 10^b and ticks at the decades (or 1-2-5 steps when
    the range spans fewer than two decades)."""
    a, b = int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi)))
    if b == a:
        b += 1
    if b - a < 2:
        ticks = [m * 10.0 ** e for e in range(a, b + 1) for m in (1, 2, 5) if m * 10.0 ** e <= 10.0 ** b]
    else:
        every = max(1, (b - a + 5) // 6)
        ticks = [10.0 ** e for e in range(a, b + 1, every)]
    return 10.0 ** a, 10.0 ** b, ticks


def tick_label(v):
    return f"{v:.6g}" if v != 0 else "0"


class _Panel:
    """One plot area: data limits mapped to a pixel box (x0, y0, x1, y1)."""

    def __init__(self, box, xlim, ylim, log):
        self.box, self.xlim, self.ylim, self.log = box, xlim, ylim, log

    def px(self, x):
        x0, _, x1, _ = self.box
        lo, hi = self.xlim
        return x0 + (np.asarray(x, np.float64) - lo) / (hi - lo) * (x1 - x0)

    def py(self, y):
        _, y0, _, y1 = self.box
        lo, hi = self.ylim
        y = np.asarray(y, np.float64)
        if self.log:
            y, lo, hi = np.log10(y), np.log10(lo), np.log10(hi)
        return y1 - (y - lo) / (hi - lo) * (y1 - y0)


# colors (RGB)
_INK, _GRID, _FRAME = (40, 40, 40), (225, 225, 225), (120, 120, 120)
_RAW, _SMOOTH = (160, 190, 230), (31, 100, 180)
_SERIES = [(40, 150, 60), (220, 110, 20), (150, 60, 170), (200, 40, 40), (20, 150, 160),
           (120, 120, 20)]


def plot_training(path, solver, tests):
    """The PNG of ``--plot``: panel 1 the training loss of every iteration (raw and a
    moving average; log scale when it spans two decades or more) with the test losses
    as points, panel 2 the other test outputs (accuracy) at each test pass."""
    Image, ImageDraw, ImageFont = need_pillow()
    try:
        ImageFont.load_default(size=10)
        scale = 2                                   # draw at 2x, downsample: smooth lines
    except (TypeError, AttributeError, OSError):   # Pillow < 10.1: fixed bitmap font only
        scale = 1

    def font(size):
        try:
            return ImageFont.load_default(size=size * scale)
        except (TypeError, AttributeError, OSError):
            return ImageFont.load_default()

    f_title, f_text, f_small = font(17), font(13), font(12)
    S = scale
    pairs = [(it, l) for it, l in solver.iteration_losses if np.isfinite(l)]
    iters = np.array([p[0] for p in pairs], np.float64)
    losses = np.array([p[1] for p in pairs], np.float64)
    series = tests.series(solver) if tests is not None else []
    test_losses = [s for s in series if s[3]]
    others = [s for s in series if not s[3]]

    W, H = 960, (660 if others else 420)
    img = Image.new("RGB", (W * S, H * S), "white")
    d = ImageDraw.Draw(img)

    def text(xy, s, fnt, fill=_INK, anchor="la"):
        d.text((xy[0] * S, xy[1] * S), s, font=fnt, fill=fill, anchor=anchor)

    def text_w(s, fnt):
        x0, _, x1, _ = d.textbbox((0, 0), s, font=fnt)
        return (x1 - x0) / S

    # x range: every iteration run and every test pass
    xs = [iters] + [s[1] for s in series]
    allx = np.concatenate(xs) if any(a.size for a in xs) else np.array([0.0, 1.0])
    xlo, xhi, xticks = nice_ticks(float(allx.min()), float(allx.max()), 8)
    xlo = max(xlo, 0.0) if allx.min() >= 0 else xlo
    xticks = [t for t in xticks if xlo <= t <= xhi]

    name = solver.net.name or "net"
    n_run = len(solver.iteration_losses)
    title = f"{name}: {solver.param.type} solver, {n_run} iterations"
    if solver.iter != n_run:                        # resumed from a snapshot
        title += f" (iteration {solver.iter - n_run} to {solver.iter})"
    text((W / 2, 14), title, f_title, anchor="ma")

    left, right, top = 84, W - 24, 52
    if others:
        boxes = [(left, top, right, 330), (left, 384, right, H - 58)]
    else:
        boxes = [(left, top, right, H - 58)]

    def frame(panel, yticks, ylabel, xlabels):
        x0, y0, x1, y1 = panel.box
        for t in xticks:
            x = float(panel.px(t))
            d.line([(x * S, y0 * S), (x * S, y1 * S)], fill=_GRID, width=S)
            if xlabels:
                text((x, y1 + 6), tick_label(t), f_small, anchor="ma")
        for t in yticks:
            y = float(panel.py(t))
            d.line([(x0 * S, y * S), (x1 * S, y * S)], fill=_GRID, width=S)
            text((x0 - 6, y), tick_label(t), f_small, anchor="rm")
        d.rectangle([x0 * S, y0 * S, x1 * S, y1 * S], outline=_FRAME, width=S)
        # y label, written vertically
        tw = int(text_w(ylabel, f_text) * S) + 4 * S
        tmp = Image.new("RGB", (tw, 20 * S), "white")
        ImageDraw.Draw(tmp).text((2 * S, 2 * S), ylabel, font=f_text, fill=_INK)
        tmp = tmp.rotate(90, expand=True)
        img.paste(tmp, (int(8 * S), int(((y0 + y1) / 2) * S - tmp.size[1] / 2)))
        if xlabels:
            text(((x0 + x1) / 2, y1 + 24), "iteration", f_text, anchor="ma")

    def polyline(panel, x, y, color, width):
        if len(x) == 0:
            return
        pts = list(zip((panel.px(x) * S).tolist(), (panel.py(y) * S).tolist()))
        if len(pts) == 1:
            pts = pts * 2
        d.line(pts, fill=color, width=int(width * S), joint="curve")

    def points(panel, x, y, color, r=3.5):
        for px_, py_ in zip(panel.px(x).tolist(), panel.py(y).tolist()):
            d.ellipse([(px_ - r) * S, (py_ - r) * S, (px_ + r) * S, (py_ + r) * S], fill=color,
                      outline="white", width=S)

    def legend(panel, entries, corner):
        if not entries:
            return
        x0, y0, x1, y1 = panel.box
        row = 19
        wmax = max(text_w(e[0], f_small) for e in entries)
        bw, bh = wmax + 46, row * len(entries) + 10
        bx = x1 - bw - 10
        by = y0 + 10 if corner == "upper" else y1 - bh - 10
        d.rectangle([bx * S, by * S, (bx + bw) * S, (by + bh) * S], fill="white",
                    outline=_FRAME, width=S)
        for k, (label, color, kind) in enumerate(entries):
            cy = by + 5 + row * k + row / 2
            if kind == "line":
                d.line([((bx + 8) * S, cy * S), ((bx + 32) * S, cy * S)], fill=color, width=2 * S)
            else:
                d.line([((bx + 8) * S, cy * S), ((bx + 32) * S, cy * S)], fill=color, width=2 * S)
                d.ellipse([(bx + 16.5) * S, (cy - 3.5) * S, (bx + 23.5) * S, (cy + 3.5) * S],
                          fill=color)
            text((bx + 38, cy), label, f_small, anchor="lm")

    # panel 1: training loss (and test losses)
    vals = [losses] + [s[2][np.isfinite(s[2])] for s in test_losses]
    ally = np.concatenate(vals) if any(v.size for v in vals) else np.array([0.0, 1.0])
    log = bool(ally.size and ally.min() > 0 and ally.max() / ally.min() >= 100)
    if log:
        ylo, yhi, yticks = log_ticks(float(ally.min()), float(ally.max()))
    else:
        ylo, yhi, yticks = nice_ticks(min(0.0, float(ally.min())), float(ally.max()), 5)
    p1 = _Panel(boxes[0], (xlo, xhi), (ylo, yhi), log)
    frame(p1, yticks, "loss (log scale)" if log else "loss", xlabels=not others)
    window = solver.param.average_loss if solver.param.average_loss > 1 else max(1, len(losses) // 50)
    entries = []
    if len(losses):
        polyline(p1, iters, losses, _RAW, 1)
        entries.append(("training loss (each iteration)", _RAW, "line"))
        if window > 1:
            polyline(p1, iters, moving_average(losses, window), _SMOOTH, 2)
            entries.append((f"training loss (mean of last {window})", _SMOOTH, "line"))
    else:
        text(((p1.box[0] + p1.box[2]) / 2, (p1.box[1] + p1.box[3]) / 2), "no iterations run",
             f_text, anchor="mm")
    for k, (label, x, y, _) in enumerate(test_losses):
        ok = np.isfinite(y)
        color = _SERIES[(k + 1) % len(_SERIES)]
        polyline(p1, x[ok], y[ok], color, 1.5)
        points(p1, x[ok], y[ok], color)
        entries.append((label, color, "points"))
    legend(p1, entries, "upper")

    # panel 2: the other test outputs (accuracy), one series per (test net, output)
    if others:
        ys = np.concatenate([s[2][np.isfinite(s[2])] for s in others] + [np.array([0.0])])
        if ys.min() >= 0 and ys.max() <= 1:
            ylo, yhi, yticks = 0.0, 1.0, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
        else:
            ylo, yhi, yticks = nice_ticks(float(ys.min()), float(ys.max()), 5)
        p2 = _Panel(boxes[1], (xlo, xhi), (ylo, yhi), False)
        names = sorted({label.split()[-1] for label, *_ in others})
        frame(p2, yticks, names[0] if len(names) == 1 else "test output", xlabels=True)
        entries = []
        for k, (label, x, y, _) in enumerate(others):
            ok = np.isfinite(y)
            color = _SERIES[k % len(_SERIES)]
            polyline(p2, x[ok], y[ok], color, 2)
            points(p2, x[ok], y[ok], color)
            if ok.any():
                last = f"{y[ok][-1]:.4g}"
                text((float(p2.px(x[ok][-1])) - 6, float(p2.py(y[ok][-1])) - 8), last, f_small,
                     fill=color, anchor="rb")
                label = f"{label} (last {last})"
            entries.append((label, color, "points"))
        legend(p2, entries, "lower")

    if S > 1:
        img = img.resize((W, H), Image.LANCZOS)
    img = img.quantize(colors=128)                  # a palette PNG: a third of the size
    from ..io.atomic import atomic_write
    with atomic_write(path, "wb") as f:
        img.save(f, format="PNG", optimize=True)
