"""``netrun train`` and ``netrun test``: Caffe's ``caffe train`` / ``caffe test``.

Log lines go to stdout in Caffe's words (``Iteration N, loss = X``,
``Iteration N, lr = Y``, ``    Train net output #0: loss = ...``); the training
progress bar goes to stderr, only when stderr is a terminal.
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
def train_command(solver_file, weights, resume, max_iter, inputs_npz, dump, seed, snapshot_prefix,
                  no_final_snapshot, level, stage, dtype, quiet):
    """Train a net with a Caffe solver (SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam).

    Ctrl-C snapshots and stops; resume with --snapshot.

    \b
    Example:
      netrun train lenet_solver.prototxt --max-iter 500
      netrun train lenet_solver.prototxt --snapshot lenet_iter_500.solverstate
    """
    from ..solver import get_solver, interrupt_snapshots
    cli = _cli()
    if resume and weights:
        raise NetrunError("give --snapshot to resume training or --weights to finetune, not both")
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
def test_command(model, weights, iterations, phase, level, stage, inputs_npz, seed, dtype, quiet):
    """Score a trained model, as caffe test: each batch's outputs, then their means.

    \b
    Example:
      netrun test lenet_train_test.prototxt --weights lenet_iter_10000.caffemodel -n 100
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
    echo = (lambda line: None) if quiet else click.echo
    echo(f"Running for {iterations} iterations.")
    sums, loss = None, 0.0
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
        for k, v in out.items():
            for x in np.asarray(v).ravel():
                echo(f"Batch {i}, {k} = {float(x):.6g}")
    echo(f"Loss: {loss / iterations:.6g}")
    for k, s in (sums or {}).items():
        w = net.blob_loss_weights.get(k, 0.0)
        for x in s / iterations:
            extra = f" (* {w:.6g} = {w * x:.6g} loss)" if w else ""
            click.echo(f"{k} = {x:.6g}{extra}")
