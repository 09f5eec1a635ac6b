"""Training with Caffe's solvers: SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam.

A solver is built from a ``solver.prototxt`` (``caffe_pb2.SolverParameter``).
It owns a TRAIN-phase net and any number of TEST-phase nets and runs Caffe's
loop, iteration by iteration:

1. clear the parameter diffs; every ``test_interval`` iterations (and at 0 when
   ``test_initialization``) run each test net ``test_iter[i]`` times on the
   train net's current weights and report each output's mean over the batches;
2. ``iter_size`` times forward + backward (the diffs accumulate); the
   iteration's loss is the mean of their losses, smoothed over the last
   ``average_loss`` iterations for display;
3. ``ApplyUpdate``: ``rate`` = the lr policy at ``iter``; if ``clip_gradients``
   >= 0 and the L2 norm of all learnable diffs exceeds it, scale every diff by
   ``clip_gradients / norm``; then for each learnable parameter, in net order:

   * Normalize:  ``g /= iter_size``
   * Regularize: ``g += wd * decay_mult * w`` (L2) or ``* sign(w)`` (L1)
   * ComputeUpdateValue with ``lr = rate * lr_mult`` (history ``h``, float
     arithmetic in the net's dtype):

     - SGD:      ``h = lr*g + momentum*h``;  ``g = h``
     - Nesterov: ``h' = lr*g + momentum*h``; ``g = (1+momentum)*h' - momentum*h``
     - AdaGrad:  ``h += g^2``; ``g = lr * g / (sqrt(h) + delta)``
     - RMSProp:  ``h = (1-rms_decay)*g^2 + rms_decay*h``; ``g = lr * g / (sqrt(h) + delta)``
     - AdaDelta: ``h = (1-m)*g^2 + m*h``; ``g *= sqrt((u + delta) / (h + delta))``;
       ``u = (1-m)*g^2 + m*u``; ``g *= lr``  (``m`` = momentum, ``u`` the second history set)
     - Adam:     ``m = (1-b1)*g + b1*m``; ``v = (1-b2)*g^2 + b2*v``;
       ``g = lr * sqrt(1-b2^t)/(1-b1^t) * m / (sqrt(v) + delta)``, ``t = iter+1``

   then every learnable parameter ``w -= g``;
4. ``iter += 1``; snapshot every ``snapshot`` iterations.

Learnable parameters are the parameter blobs a layer owns (a parameter shared
by ``ParamSpec.name`` belongs to its first owner).  Each has the ``lr_mult`` and
``decay_mult`` of its owner's ParamSpec (default 1); a sharing layer's explicit
value fills in where the owner gave none and must agree where it did.  Learning
rate policies (``iter`` the iteration, ``step`` the current step)::

    fixed      base_lr
    step       base_lr * gamma ^ floor(iter / stepsize)
    exp        base_lr * gamma ^ iter
    inv        base_lr * (1 + gamma * iter) ^ (-power)
    multistep  base_lr * gamma ^ step, step += 1 when iter reaches stepvalue[step]
    poly       base_lr * (1 - iter / max_iter) ^ power
    sigmoid    base_lr / (1 + exp(-gamma * (iter - stepsize)))

Snapshots (``snapshot_format: BINARYPROTO``) write ``<prefix>_iter_<N>.caffemodel``
and ``<prefix>_iter_<N>.solverstate`` (a ``caffe_pb2.SolverState``: ``iter``,
``learned_net``, ``history`` in the order above, ``current_step``); restoring one
continues exactly where the run stopped.
"""
import math
import os
import signal
import time
from collections import OrderedDict
from contextlib import contextmanager

import numpy as np

from .errors import NetrunError
from .proto import caffe_pb2
from .snapshots import Snapshots, resolve_output
from .updates import LR_POLICIES, Updates, fmt, learning_rate  # noqa: F401 (re-exported)

LEGACY_TYPES = {caffe_pb2.SolverParameter.SGD: "SGD",
                caffe_pb2.SolverParameter.NESTEROV: "Nesterov",
                caffe_pb2.SolverParameter.ADAGRAD: "AdaGrad",
                caffe_pb2.SolverParameter.RMSPROP: "RMSProp",
                caffe_pb2.SolverParameter.ADADELTA: "AdaDelta",
                caffe_pb2.SolverParameter.ADAM: "Adam"}


# -- reading the solver file ------------------------------------------------------------------
def read_solver(path):
    """Parse (and upgrade) a solver prototxt; returns ``(SolverParameter, folder)``."""
    from .io.prototxt import parse_text, read_text
    path = os.fspath(path)
    text = read_text(path)
    param = parse_text(text, caffe_pb2.SolverParameter(), path)
    upgrade_solver(param, path)
    if not param.HasField("snapshot_prefix"):
        param.snapshot_prefix = os.path.splitext(path)[0]
    elif os.path.isdir(resolve_output(param.snapshot_prefix, os.path.dirname(path))):
        stem = os.path.splitext(os.path.basename(path))[0]
        param.snapshot_prefix = os.path.join(param.snapshot_prefix, stem)
    return param, os.path.dirname(os.path.abspath(path))


def upgrade_solver(param, where=None):
    """Caffe's UpgradeSolverAsNeeded: the legacy ``solver_type`` enum becomes ``type``."""
    if param.HasField("solver_type"):
        name = LEGACY_TYPES.get(param.solver_type)
        if param.HasField("type") and param.type != name:
            raise NetrunError(f'solver_type {caffe_pb2.SolverParameter.SolverType.Name(param.solver_type)} '
                              f'and type "{param.type}" disagree; give only type', where)
        param.type = name
        param.ClearField("solver_type")
    return param


def resolve_input(name, base_dir, what):
    """A path from the solver file: relative to the solver's folder first, then the cwd."""
    if os.path.isabs(name):
        if os.path.exists(name):
            return name
        raise NetrunError(f"{what} {name}: no such file")
    for cand in ((os.path.join(base_dir, name),) if base_dir else ()) + (name,):
        if os.path.exists(cand):
            return cand
    raise NetrunError(f"{what} {name}: no such file (looked in the solver's folder "
                      f"{base_dir or '.'} and in the current directory)")


def check_param(param):
    if param.average_loss < 1:
        raise NetrunError("average_loss must be >= 1")
    if param.iter_size < 1:
        raise NetrunError("iter_size must be >= 1")
    if param.lr_policy not in LR_POLICIES:
        raise NetrunError(f'unknown lr_policy "{param.lr_policy}" (known: {", ".join(LR_POLICIES)})'
                          if param.lr_policy else
                          f'the solver gives no lr_policy (known: {", ".join(LR_POLICIES)})')
    if param.lr_policy in ("step", "exp", "inv", "multistep", "sigmoid") and param.gamma < 0:
        raise NetrunError(f'lr_policy "{param.lr_policy}" needs gamma >= 0')
    if param.lr_policy in ("step", "sigmoid") and param.stepsize <= 0:
        raise NetrunError(f'lr_policy "{param.lr_policy}" needs stepsize > 0')
    if param.regularization_type not in ("L1", "L2"):
        raise NetrunError(f'unknown regularization_type "{param.regularization_type}" (L1 or L2)')
    if param.snapshot_format not in (caffe_pb2.SolverParameter.BINARYPROTO,):
        raise NetrunError("snapshot_format HDF5 is not supported; use BINARYPROTO")
    if param.snapshot < 0:
        raise NetrunError("snapshot must be >= 0")


# -- the solver ------------------------------------------------------------------------------------
class Solver(Updates, Snapshots):
    """Caffe's Solver + SGDSolver; subclasses give ComputeUpdateValue.

    ``Solver(solver, weights=None, seed=None, dtype=np.float32, log=None, inputs=None)``:
    ``solver`` is a solver prototxt path or a ``SolverParameter`` (then paths are
    relative to ``base_dir``).  ``weights``: a .caffemodel path or a list of them
    (None: the solver's own ``weights`` field; ``[]``: none).  ``log`` receives Caffe's log lines (silent when
    None); ``inputs`` are arrays set into the nets' Input blobs before every forward.
    """
    type = None
    history_sets = 1
    net_class = None          # the Net class of the solver's nets (None: netrun.Net)

    def __init__(self, solver, weights=None, seed=None, dtype=np.float32, log=None,
                 inputs=None, warn=None, base_dir=None, level=None, stages=()):
        if isinstance(solver, caffe_pb2.SolverParameter):
            param = caffe_pb2.SolverParameter()
            param.CopyFrom(solver)
            upgrade_solver(param)
            self.base_dir = base_dir or os.getcwd()
            self.path = None
        else:
            param, self.base_dir = read_solver(solver)
            self.path = os.fspath(solver)
        if level is not None:
            param.train_state.level = level
        param.train_state.stage.extend(stages)
        check_param(param)
        self.param = param
        self.log = log or (lambda line: None)
        self._warn = warn
        self.dtype = np.dtype(dtype)
        self.inputs = dict(inputs or {})
        if seed is None:
            seed = param.random_seed if param.random_seed >= 0 else 0
        self.seed = seed
        self.iter = 0
        self.current_step = 0
        self.smoothed_loss = 0.0
        self.rate = 0.0
        self._losses = []
        self.iteration_losses = []          # (iter, loss) of every iteration run
        self.test_scores = []               # one OrderedDict per test net, from the last test
        self.callbacks = []                 # f(solver, loss) after every iteration
        self._request = None                # "snapshot", "stop" or "snapshot+stop"
        self._last_snapshot = None
        self.requested_early_exit = False
        self._sanity_check()
        self.log(f"Initializing solver ({self.param.type})")
        self._init_train_net()
        self._init_test_nets()
        self._init_learnable()
        if weights is not None:
            for w in weights if isinstance(weights, (list, tuple)) else [weights]:
                self.load_weights(w)
        elif len(param.weights):
            for w in param.weights:
                self.load_weights(resolve_input(w, self.base_dir, "weights"))
        self.history = [np.zeros(b.shape, self.dtype) for _ in range(self.history_sets)
                        for b in self.learnable]
        self.log("Solver scaffolding done.")

    def _sanity_check(self):
        pass

    # -- nets -----------------------------------------------------------------------------------
    def _make_net(self, source, state, label, seed):
        from .io.prototxt import read_net
        from .net import Net, input_names
        if isinstance(source, str):
            net_param = read_net(source, warn=self._warn).param
        else:
            net_param = source
        merged = caffe_pb2.NetState()
        merged.phase = state.phase
        merged.MergeFrom(net_param.state)
        merged.MergeFrom(state)
        names = set(input_names(net_param))
        shapes = {n: np.shape(a) for n, a in self.inputs.items() if n in names}
        self.log(f"Creating {label}")
        kw = dict(phase=merged.phase, level=merged.level, stages=list(merged.stage),
                  dtype=self.dtype, seed=seed, input_shapes=shapes or None)
        if self._warn is not None:
            kw["warn"] = self._warn
        return (self.net_class or Net)(source, **kw)

    def _init_train_net(self):
        p = self.param
        given = [f for f in ("net", "net_param", "train_net", "train_net_param") if p.HasField(f)]
        if not given:
            raise NetrunError("the solver names no train net: give one of net, net_param, "
                              "train_net, train_net_param")
        if len(given) > 1:
            raise NetrunError(f"the solver gives more than one train net ({', '.join(given)}); "
                              "give one of net, net_param, train_net, train_net_param")
        f = given[0]
        if f in ("net", "train_net"):
            source = resolve_input(getattr(p, f), self.base_dir, f)
            label = f"training net from {f} file: {source}"
        else:
            source = getattr(p, f)
            label = f"training net specified in {f}"
        self.net = self._make_net(source, _train_state(p), label, self.seed)

    def _init_test_nets(self):
        p = self.param
        if p.HasField("net") and p.HasField("net_param"):
            raise NetrunError("the solver gives both net and net_param")
        n_specific = len(p.test_net_param) + len(p.test_net)
        generic = p.HasField("net") or p.HasField("net_param")
        if generic:
            if len(p.test_iter) < n_specific:
                raise NetrunError("test_iter must be given once for each test net")
        elif len(p.test_iter) != n_specific:
            raise NetrunError(f"test_iter must be given once for each test net "
                              f"({n_specific} test nets, {len(p.test_iter)} test_iter)")
        n_total = n_specific + (len(p.test_iter) - n_specific if generic else 0)
        if len(p.test_state) and len(p.test_state) != n_total:
            raise NetrunError(f"test_state must be given once per test net or not at all "
                              f"({n_total} test nets, {len(p.test_state)} test_state)")
        if n_total and p.test_interval <= 0:
            raise NetrunError("the solver has test nets: test_interval must be > 0")
        sources = []
        for tp in p.test_net_param:
            sources.append((tp, "test_net_param"))
        for name in p.test_net:
            path = resolve_input(name, self.base_dir, "test_net")
            sources.append((path, f"test_net file: {path}"))
        for _ in range(n_total - n_specific):
            if p.HasField("net_param"):
                sources.append((p.net_param, "net_param"))
            else:
                path = resolve_input(p.net, self.base_dir, "net")
                sources.append((path, f"net file: {path}"))
        self.test_nets = []
        for i, (src, label) in enumerate(sources):
            state = caffe_pb2.NetState()
            state.phase = caffe_pb2.TEST
            if len(p.test_state):
                state.MergeFrom(p.test_state[i])
            self.test_nets.append(self._make_net(src, state, f"test net (#{i}) specified by {label}",
                                                 self.seed + 1 + i))
        self.test_scores = [OrderedDict() for _ in self.test_nets]

    def _init_learnable(self):
        """Caffe's learnable_params with params_lr / params_weight_decay (AppendParam)."""
        net = self.net
        self.learnable, self.learnable_names = [], []
        self.lr_mults, self.decay_mults = [], []
        has_lr, has_decay = [], []
        index = {}
        for li, layer in enumerate(net.layers):
            specs = layer.param.param
            for k, blob in enumerate(layer.blobs):
                if not net.param_owned(li, k):
                    continue
                spec = specs[k] if k < len(specs) else caffe_pb2.ParamSpec()
                index[(li, k)] = len(self.learnable)
                self.learnable.append(blob)
                self.learnable_names.append((net.layer_names[li], k))
                self.lr_mults.append(spec.lr_mult)
                self.decay_mults.append(spec.decay_mult)
                has_lr.append(spec.HasField("lr_mult"))
                has_decay.append(spec.HasField("decay_mult"))
        for li, k, owner, spec in net._shares:
            j = index[owner]
            name = spec.name
            if spec.HasField("lr_mult"):
                if has_lr[j] and spec.lr_mult != self.lr_mults[j]:
                    raise NetrunError(f'shared parameter "{name}" has mismatched lr_mult '
                                      f"({spec.lr_mult} here, {self.lr_mults[j]} in its owner)",
                                      net.where(li))
                has_lr[j] = True
                self.lr_mults[j] = spec.lr_mult
            if spec.HasField("decay_mult"):
                if has_decay[j] and spec.decay_mult != self.decay_mults[j]:
                    raise NetrunError(f'shared parameter "{name}" has mismatched decay_mult '
                                      f"({spec.decay_mult} here, {self.decay_mults[j]} in its owner)",
                                      net.where(li))
                has_decay[j] = True
                self.decay_mults[j] = spec.decay_mult

    def load_weights(self, path):
        """Copy trained layers (a .caffemodel) into the train net and the test nets."""
        self.log(f"Finetuning from {path}")
        self.net.copy_from(path)
        for tn in self.test_nets:
            tn.copy_from(path)

    def _feed(self, net):
        for name, arr in self.inputs.items():
            if name in net.inputs:
                net.set_input(name, arr)

    def check_inputs(self):
        nets = [self.net] + self.test_nets
        for name in self.inputs:
            if not any(name in n.inputs for n in nets):
                raise NetrunError(f'input "{name}" names no Input blob of the nets '
                                  f"(inputs: {', '.join(self.net.inputs) or 'none'})")

    # -- the loop -----------------------------------------------------------------------------
    def forward_backward(self):
        self._feed(self.net)
        self.net.forward()
        loss = self.net.loss
        self.net.backward()
        return loss

    def update_smoothed_loss(self, loss, start_iter):
        n = self.param.average_loss
        if len(self._losses) < n:
            self._losses.append(loss)
            size = len(self._losses)
            self.smoothed_loss = (self.smoothed_loss * (size - 1) + loss) / size
        else:
            idx = (self.iter - start_iter) % n
            self.smoothed_loss += (loss - self._losses[idx]) / n
            self._losses[idx] = loss

    def step(self, iters):
        """Run ``iters`` iterations (fewer if a stop is requested)."""
        p = self.param
        start_iter = self.iter
        stop_iter = self.iter + iters
        self._losses = []
        self.smoothed_loss = 0.0
        self.rate = 0.0
        while self.iter < stop_iter:
            self.net.clear_param_diffs()
            if (p.test_interval and self.iter % p.test_interval == 0
                    and (self.iter > 0 or p.test_initialization)):
                self.test_all()
                if self.requested_early_exit:
                    break
            self.on_start()
            display = p.display and self.iter % p.display == 0
            loss = 0.0
            for _ in range(p.iter_size):
                loss += self.forward_backward()
            loss /= p.iter_size
            self.update_smoothed_loss(loss, start_iter)
            self.iteration_losses.append((self.iter, loss))
            if display:
                self.log(f"Iteration {self.iter}, loss = {fmt(self.smoothed_loss)}")
                self._log_outputs(self.net, "Train")
            self.on_gradients_ready()
            self.apply_update(display)
            self.iter += 1
            for cb in self.callbacks:
                cb(self, loss)
            request, self._request = self._request, None
            if (p.snapshot and self.iter % p.snapshot == 0) or request in ("snapshot",
                                                                           "snapshot+stop"):
                self.snapshot()
            if request in ("stop", "snapshot+stop"):
                self.requested_early_exit = True
                break

    def _log_outputs(self, net, kind, values=None):
        idx = 0
        for name in net.outputs:
            data = values[name] if values is not None else net.blobs[name].data
            w = net.blob_loss_weights.get(name, 0.0)
            for v in np.asarray(data).ravel():
                extra = f" (* {fmt(w)} = {fmt(w * v)} loss)" if w else ""
                self.log(f"    {kind} net output #{idx}: {name} = {fmt(v)}{extra}")
                idx += 1

    def solve(self, resume_file=None, max_iter=None):
        """Caffe's Solve: restore if asked, train up to ``max_iter`` (default the
        solver's), snapshot after training, then a final display/test pass."""
        p = self.param
        self.log(f"Solving {self.net.name}")
        self.log(f"Learning Rate Policy: {p.lr_policy}")
        self.requested_early_exit = False
        if resume_file:
            self.log(f"Restoring previous solver status from {resume_file}")
            self.restore(resume_file)
        start_iter = self.iter
        stop = p.max_iter if max_iter is None else max_iter
        self.step(max(0, stop - self.iter))
        if p.snapshot_after_train and self._last_snapshot != self.iter:
            self.snapshot()
        if self.requested_early_exit:
            self.log("Optimization stopped early.")
            return
        if p.display and self.iter % p.display == 0:
            self._feed(self.net)
            self.net.forward()
            self.update_smoothed_loss(self.net.loss, start_iter)
            self.log(f"Iteration {self.iter}, loss = {fmt(self.smoothed_loss)}")
        if p.test_interval and self.iter % p.test_interval == 0:
            self.test_all()
        self.log("Optimization Done.")

    def on_start(self):
        """Called at the start of each iteration, after any test (pycaffe's callbacks)."""

    def on_gradients_ready(self):
        """Called after each iteration's backward, before the update (pycaffe's callbacks)."""

    # -- testing ----------------------------------------------------------------------------
    def share_trained_layers(self, test_net):
        """Caffe's ShareTrainedLayersWith: same-named layers use the train net's weights."""
        test_net.share_with(self.net)

    def test_all(self):
        for i in range(len(self.test_nets)):
            if self.requested_early_exit:
                break
            self.test(i)

    def test(self, i):
        p = self.param
        net = self.test_nets[i]
        self.log(f"Iteration {self.iter}, Testing net (#{i})")
        self.share_trained_layers(net)
        sums = None
        loss = 0.0
        for _ in range(p.test_iter[i]):
            while self._request is not None:
                request, self._request = self._request, None
                if request in ("snapshot", "snapshot+stop"):
                    self.snapshot()
                if request in ("stop", "snapshot+stop"):
                    self.requested_early_exit = True
            if self.requested_early_exit:
                break
            self._feed(net)
            out = net.forward()
            if p.test_compute_loss:
                loss += net.loss
            if sums is None:
                sums = OrderedDict((k, np.asarray(v, np.float64).copy()) for k, v in out.items())
            else:
                for k, v in out.items():
                    sums[k] += v
        if self.requested_early_exit:
            self.log("Test interrupted.")
            return None
        if p.test_compute_loss:
            self.log(f"Test loss: {fmt(loss / p.test_iter[i])}")
        means = OrderedDict((k, v / p.test_iter[i]) for k, v in (sums or {}).items())
        self._log_outputs(net, "Test", means)
        self.test_scores[i] = means
        return means

    # -- requests (Ctrl-C) ----------------------------------------------------------------------
    def request(self, action):
        """Ask the loop to "snapshot", "stop" or "snapshot+stop" after the current iteration."""
        self._request = action

    @property
    def losses(self):
        return np.array([l for _, l in self.iteration_losses], np.float64)

    def params_dict(self):
        """``param/<layer>/<i>`` for every learnable (owned) parameter."""
        return OrderedDict((f"param/{ln}/{k}", b.data.copy())
                           for (ln, k), b in zip(self.learnable_names, self.learnable))

    def history_dict(self):
        return OrderedDict((f"history/{k}", h.ravel().copy()) for k, h in enumerate(self.history))


def _train_state(p):
    state = caffe_pb2.NetState()
    state.phase = caffe_pb2.TRAIN
    state.MergeFrom(p.train_state)
    return state


class SGDSolver(Solver):
    type = "SGD"

    def compute_update_value(self, i, rate):
        g = self.learnable[i].diff
        h = self.history[i]
        h *= self._f(self.param.momentum)
        h += self.local_rate(i, rate) * g
        g[...] = h


class NesterovSolver(Solver):
    type = "Nesterov"

    def compute_update_value(self, i, rate):
        g = self.learnable[i].diff
        h = self.history[i]
        m = self._f(self.param.momentum)
        old = h.copy()
        h *= m
        h += self.local_rate(i, rate) * g
        g[...] = (self._f(1) + m) * h - m * old


class AdaGradSolver(Solver):
    type = "AdaGrad"

    def _sanity_check(self):
        if self.param.momentum != 0:
            raise NetrunError("momentum cannot be used with AdaGrad (set momentum: 0)")

    def compute_update_value(self, i, rate):
        g = self.learnable[i].diff
        h = self.history[i]
        h += g * g
        upd = g / (np.sqrt(h) + self._f(self.param.delta))
        g[...] = self.local_rate(i, rate) * upd


class RMSPropSolver(Solver):
    type = "RMSProp"

    def _sanity_check(self):
        if self.param.momentum != 0:
            raise NetrunError("momentum cannot be used with RMSProp (set momentum: 0)")
        if not 0 <= self.param.rms_decay < 1:
            raise NetrunError("rms_decay must lie in [0, 1)")

    def compute_update_value(self, i, rate):
        g = self.learnable[i].diff
        h = self.history[i]
        d = self._f(self.param.rms_decay)
        h *= d
        h += (self._f(1) - d) * (g * g)
        upd = g / (np.sqrt(h) + self._f(self.param.delta))
        g[...] = self.local_rate(i, rate) * upd


class AdaDeltaSolver(Solver):
    type = "AdaDelta"
    history_sets = 2

    def compute_update_value(self, i, rate):
        n = len(self.learnable)
        g = self.learnable[i].diff
        h, u = self.history[i], self.history[n + i]
        m = self._f(self.param.momentum)
        delta = self._f(self.param.delta)
        h *= m
        h += (self._f(1) - m) * (g * g)
        g *= np.sqrt((u + delta) / (h + delta))
        u *= m
        u += (self._f(1) - m) * (g * g)
        g *= self.local_rate(i, rate)


class AdamSolver(Solver):
    type = "Adam"
    history_sets = 2

    def compute_update_value(self, i, rate):
        n = len(self.learnable)
        g = self.learnable[i].diff
        m, v = self.history[i], self.history[n + i]
        b1, b2 = self._f(self.param.momentum), self._f(self.param.momentum2)
        t = self.iter + 1
        correction = self._f(math.sqrt(1.0 - math.pow(float(b2), t)) / (1.0 - math.pow(float(b1), t)))
        m *= b1
        m += (self._f(1) - b1) * g
        v *= b2
        v += (self._f(1) - b2) * (g * g)
        upd = m / (np.sqrt(v) + self._f(self.param.delta))
        g[...] = (self.local_rate(i, rate) * correction) * upd


SOLVERS = {cls.type: cls for cls in (SGDSolver, NesterovSolver, AdaGradSolver, RMSPropSolver,
                                     AdaDeltaSolver, AdamSolver)}


def get_solver(solver, **kw):
    """Build the solver class that the file's ``type`` (or legacy ``solver_type``) names."""
    if isinstance(solver, caffe_pb2.SolverParameter):
        param = caffe_pb2.SolverParameter()
        param.CopyFrom(solver)
        upgrade_solver(param)
    else:
        param, _ = read_solver(solver)
    cls = SOLVERS.get(param.type)
    if cls is None:
        raise NetrunError(f'unknown solver type "{param.type}" (known: {", ".join(SOLVERS)})')
    return cls(solver, **kw)


@contextmanager
def interrupt_snapshots(solver):
    """While active, Ctrl-C (SIGINT) asks the solver to snapshot and stop after the
    current iteration (a second Ctrl-C interrupts at once); SIGHUP snapshots."""
    import threading
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    hits = []

    def on_int(signum, frame):
        if hits:
            raise KeyboardInterrupt
        hits.append(time.time())
        solver.request("snapshot+stop")

    def on_hup(signum, frame):
        solver.request("snapshot")

    old_int = signal.signal(signal.SIGINT, on_int)
    old_hup = signal.signal(signal.SIGHUP, on_hup) if hasattr(signal, "SIGHUP") else None
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old_int)
        if old_hup is not None:
            signal.signal(signal.SIGHUP, old_hup)
