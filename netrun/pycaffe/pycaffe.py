"""pycaffe's Net, solvers and module functions, on :class:`netrun.Net` and :mod:`netrun.solver`.

Nothing here computes a layer: :class:`Net` is a :class:`netrun.Net` with
pycaffe's defaults and the few members pycaffe has that netrun spells
otherwise; the solvers are netrun's solvers building such nets and reading
paths as Caffe does (relative to the working folder).  Differences from pycaffe
are listed in docs/pycaffe.md.
"""
import os
import sys
import time
import warnings
from collections import OrderedDict

import numpy as np

from .. import net as _net
from .. import solver as _solver
from ..blob import Blob                          # noqa: F401  (caffe._caffe.Blob)
from ..errors import NetrunError
from ..layers import registered_types
from ..layers.python import PyLayerBase as Layer   # noqa: F401  (caffe.Layer)
from ..proto import caffe_pb2
from ..steps import Callbacks

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST
__version__ = "1.0.0"          # the pycaffe API version this module follows


# -- module state and functions -------------------------------------------------------------
class _State:
    seed = None                # caffe.set_random_seed; None: netrun's default (0)
    solver_count = 1
    solver_rank = 0
    multiprocess = False


def set_mode_cpu():
    """Nothing to do: netrun runs on the CPU."""


def set_mode_gpu():
    """netrun has no GPU: warn once and keep running on the CPU (a CPU-only pycaffe
    accepts the call and fails later, at the first GPU operation)."""
    warnings.warn("netrun runs on the CPU only; set_mode_gpu() is ignored", _net.NetrunWarning,
                  stacklevel=2)


def set_device(device_id):
    """Nothing to do: netrun runs on the CPU."""


def set_random_seed(seed):
    """Seed the fillers and random layers (Dropout, DummyData...) of nets and solvers
    made from now on.  The streams are netrun's, not Caffe's."""
    _State.seed = int(seed)


def _seed():
    return 0 if _State.seed is None else _State.seed


def layer_type_list():
    """The layer types netrun implements (Caffe's registered type strings)."""
    return registered_types()


def has_nccl():
    """netrun has no NCCL (multi-GPU) support."""
    return False


def solver_count():
    return _State.solver_count


def set_solver_count(count):
    _State.solver_count = int(count)


def solver_rank():
    return _State.solver_rank


def set_solver_rank(rank):
    _State.solver_rank = int(rank)


def set_multiprocess(flag):
    _State.multiprocess = bool(flag)


def init_log(*args):
    """Caffe's glog set-up: nothing to do (the solver's log lines go to stderr unless
    GLOG_minloglevel >= 1)."""


def log(message):
    """Write a line to Caffe's log (stderr)."""
    sys.stderr.write(f"{message}\n")


def _glog_quiet():
    try:
        return int(os.environ.get("GLOG_minloglevel", "0")) >= 1
    except ValueError:
        return False


def _warn(message):
    """netrun's notes (upgrades, Caffe quirks): Python warnings, silent when
    GLOG_minloglevel >= 2 as Caffe's log is."""
    try:
        if int(os.environ.get("GLOG_minloglevel", "0")) >= 2:
            return
    except ValueError:
        pass
    warnings.warn(message, _net.NetrunWarning, stacklevel=4)


class Timer:
    """pycaffe's Timer: ``start()``, ``stop()``, ``ms`` (wall-clock milliseconds)."""

    def __init__(self):
        self._start = None
        self._elapsed = 0.0

    def start(self):
        self._start = time.perf_counter()

    def stop(self):
        if self._start is not None:
            self._elapsed = (time.perf_counter() - self._start) * 1000.0
            self._start = None

    @property
    def ms(self):
        if self._start is not None:
            self.stop()
        return self._elapsed


class NCCL:
    """pycaffe built without NCCL: the constructor does nothing, there is no new_uid."""

    def __init__(self, solver=None, uid=""):
        self.solver = solver


# -- Net ---------------------------------------------------------------------------------------
class Net(_net.Net):
    """pycaffe's ``caffe.Net``: ``Net(prototxt, phase, level=0, stages=None, weights=None)``
    or the legacy ``Net(prototxt, weights, phase)``.

    A :class:`netrun.Net` (every netrun keyword works too) that allows Python layers,
    as pycaffe does (their exceptions propagate unchanged), loads ``.h5`` weights
    with :meth:`load_hdf5`, and adds pycaffe's members: ``_blobs``,
    ``_blob_loss_weights``, ``_inputs``/``_outputs`` (indices), ``_top_ids(i)``,
    ``_bottom_ids(i)``, ``_forward``/``_backward``, ``set_input_arrays`` (MemoryData),
    ``save_hdf5``/``load_hdf5`` and the ``before_/after_forward/backward`` callbacks.
    """

    def __init__(self, model, *args, weights=None, **kw):
        kw.setdefault("allow_python_layers", "raw")
        kw.setdefault("seed", _seed())
        kw.setdefault("warn", _warn)
        h5 = None
        pos = []
        for a in args:                     # an .h5 weights file is read below
            if isinstance(a, (str, os.PathLike)) and os.fspath(a).endswith(".h5"):
                h5 = a
            else:
                pos.append(a)
        if isinstance(weights, (str, os.PathLike)) and os.fspath(weights).endswith(".h5"):
            h5, weights = weights, None
        super().__init__(model, *pos, weights=weights, **kw)
        # pycaffe: every blob has a loss weight (0 for most); inputs are Input tops only
        w = self.blob_loss_weights
        self.blob_loss_weights = OrderedDict((n, float(w.get(n, 0.0))) for n in self.blobs)
        types = {t: layer.type for layer, tops in zip(self.layers, self.top_ids) for t in tops}
        self.inputs = [n for n in self.inputs if types.get(n) == "Input"]
        self._memory = None
        memory = [tops for layer, tops in zip(self.layers, self.top_ids)
                  if layer.type == "MemoryData"]
        for tops in memory:                       # Caffe's label top is (N, 1, 1, 1)
            label = self.blobs[tops[1]]
            label.reshape(label.shape + (1, 1, 1))
        if memory:
            self.reshape()
        self._callbacks = {"before_forward": [], "after_forward": [], "before_backward": [],
                           "after_backward": []}
        if h5 is not None:
            self.load_hdf5(h5)

    # -- pycaffe's index views ---------------------------------------------------------------
    @property
    def _blobs(self):
        return list(self.blobs.values())

    @property
    def _blob_loss_weights(self):
        return list(self.blob_loss_weights.values())

    @property
    def _inputs(self):
        names = list(self.blobs)
        return [names.index(n) for n in self.inputs]

    @property
    def _outputs(self):
        names = list(self.blobs)
        return [names.index(n) for n in self.outputs]

    def _top_ids(self, i):
        names = list(self.blobs)
        return [names.index(n) for n in self.top_ids[i]]

    def _bottom_ids(self, i):
        names = list(self.blobs)
        return [names.index(n) for n in self.bottom_ids[i]]

    # -- running ----------------------------------------------------------------------------
    def before_forward(self, fn):
        """Call ``fn(layer_index)`` before each layer's forward."""
        self._callbacks["before_forward"].append(fn)

    def after_forward(self, fn):
        self._callbacks["after_forward"].append(fn)

    def before_backward(self, fn):
        self._callbacks["before_backward"].append(fn)

    def after_backward(self, fn):
        self._callbacks["after_backward"].append(fn)

    def forward(self, blobs=None, start=None, end=None, on_layer=None, timer=None,
                observers=(), **kwargs):
        s = self._layer_index(start, 0)
        e = self._layer_index(end, len(self.layers) - 1)
        self._feed_memory(s, e)
        cbs = self._callbacks
        if cbs["before_forward"] or cbs["after_forward"]:      # layer by layer, as Caffe
            observers = [*observers, Callbacks(cbs["before_forward"], cbs["after_forward"])]
        return super().forward(blobs=blobs, start=start, end=end, on_layer=on_layer,
                               timer=timer, observers=observers, **kwargs)

    def backward(self, diffs=None, start=None, end=None, on_layer=None, timer=None,
                 observers=(), **kwargs):
        cbs = self._callbacks
        if cbs["before_backward"] or cbs["after_backward"]:
            observers = [*observers, Callbacks(cbs["before_backward"], cbs["after_backward"])]
        return super().backward(diffs=diffs, start=start, end=end, on_layer=on_layer,
                                timer=timer, observers=observers, **kwargs)

    def _forward(self, start, end):
        """pycaffe's ``ForwardFromTo``: run layers start..end; returns the loss."""
        self.forward(start=int(start), end=int(end))
        return self.loss

    def _backward(self, start, end):
        self.backward(start=int(start), end=int(end))

    # -- MemoryData ----------------------------------------------------------------------------
    def _memory_layer(self):
        for li, layer in enumerate(self.layers):
            if layer.type == "MemoryData":
                return li
        return None

    def set_input_arrays(self, data, labels):
        """Give the MemoryData layer its arrays: ``data`` (N, C, H, W) and ``labels``
        (N,) or (N, 1, 1, 1), N a multiple of the batch size.  Each forward then takes
        the next batch, going round, as Caffe's MemoryDataLayer."""
        labels = np.asarray(labels)
        if labels.ndim == 1:
            labels = labels[:, None, None, None]
        return self._set_input_arrays(data, labels)

    def _set_input_arrays(self, data, labels):
        li = self._memory_layer()
        if li is None or li != 0:
            raise NetrunError("set_input_arrays may only be called if the first layer is a "
                              "MemoryData layer")
        data = np.ascontiguousarray(data, dtype=self.dtype)
        labels = np.ascontiguousarray(labels, dtype=self.dtype)
        top = self.blobs[self.top_ids[li][0]]
        n = top.shape[0]
        if data.ndim != 4 or data.shape[1:] != top.shape[1:]:
            raise NetrunError(f"set_input_arrays: data has shape {data.shape}, the MemoryData "
                              f"layer takes (N, {', '.join(str(d) for d in top.shape[1:])})")
        if labels.shape[0] != data.shape[0] or labels.size != data.shape[0]:
            raise NetrunError(f"set_input_arrays: {data.shape[0]} data items but labels of "
                              f"shape {labels.shape}")
        if data.shape[0] % n:
            raise NetrunError(f"set_input_arrays: {data.shape[0]} items is not a multiple of "
                              f"the batch size {n}")
        self._memory = [li, data, labels.reshape(-1), 0]

    def _feed_memory(self, s, e):
        if self._memory is None:
            return
        li, data, labels, pos = self._memory
        if not s <= li <= e:
            return
        n = self.blobs[self.top_ids[li][0]].shape[0]
        tops = self.top_ids[li]
        self.blobs[tops[0]].data[...] = data[pos:pos + n]
        self.blobs[tops[1]].data[...] = labels[pos:pos + n].reshape(self.blobs[tops[1]].shape)
        self._memory[3] = (pos + n) % len(data)

    # -- weights -------------------------------------------------------------------------------
    def copy_from(self, weights):
        """Load weights matching layers by name (``.h5`` files as :meth:`load_hdf5`)."""
        if isinstance(weights, (str, os.PathLike)) and os.fspath(weights).endswith(".h5"):
            return self.load_hdf5(weights)
        return super().copy_from(weights)

    def _owned_params(self):
        for li, layer in enumerate(self.layers):
            yield li, [(k, b) for k, b in enumerate(layer.blobs) if self.param_owned(li, k)]

    def save_hdf5(self, path, diff=False):
        """Caffe's ToHDF5: group ``data/<layer>`` per layer holding datasets ``0``, ``1``...
        of the parameters the layer owns (and group ``diff`` alike when ``diff``)."""
        from ..layers.data import need_h5py
        h5py = need_h5py("save_hdf5")
        path = os.fspath(path)
        with h5py.File(path, "w") as f:
            for group, attr in (("data", "data"), ("diff", "diff"))[:2 if diff else 1]:
                g = f.create_group(group)
                for li, owned in self._owned_params():
                    lg = g.create_group(self._layer_names[li])
                    for k, blob in owned:
                        lg.create_dataset(str(k), data=np.asarray(getattr(blob, attr)))

    def load_hdf5(self, path):
        """Caffe's CopyTrainedLayersFromHDF5: layers matched by name (others ignored);
        each dataset ``k`` must have parameter ``k``'s shape."""
        from ..layers.data import need_h5py
        h5py = need_h5py("load_hdf5")
        path = os.fspath(path)
        index = {n: i for i, n in enumerate(self._layer_names)}
        written = set()
        try:
            f = h5py.File(path, "r")
        except OSError as e:
            raise NetrunError(f"cannot read HDF5 weights ({e})", path) from None
        with f:
            if "data" not in f:
                raise NetrunError('no "data" group: not weights written by save_hdf5', path)
            for name, group in f["data"].items():
                li = index.get(name)
                if li is None:
                    continue
                blobs = self.layers[li].blobs
                if len(group) > len(blobs):
                    raise NetrunError(f'layer "{name}": {len(group)} datasets in the file, the '
                                      f"layer has {len(blobs)} parameter blobs", path)
                for k, blob in enumerate(blobs):
                    if str(k) not in group:
                        if self.param_owned(li, k):       # a shared one may be missing
                            raise NetrunError(f'layer "{name}": parameter {k} is missing', path)
                        continue
                    ds = group[str(k)]                    # shape checked before reading
                    if ds.size != blob.count:
                        raise NetrunError(f'layer "{name}": parameter {k} has shape {ds.shape} '
                                          f"in the file, the net expects {blob.shape}", path)
                    blob.data[...] = np.asarray(ds).reshape(blob.shape)
                    written.add(id(blob))
        return written


# -- solvers ----------------------------------------------------------------------------------
def read_solver_param(path):
    """A solver file read as Caffe does: paths and ``snapshot_prefix`` are relative to the
    working folder; a missing prefix is the file's path without its extension, a prefix
    naming a folder gets the file's stem appended."""
    from ..io.prototxt import parse_text, read_text
    path = os.fspath(path)
    param = parse_text(read_text(path), caffe_pb2.SolverParameter(), path)
    _solver.upgrade_solver(param, path)
    if not param.HasField("snapshot_prefix"):
        param.snapshot_prefix = os.path.splitext(path)[0]
    elif os.path.isdir(param.snapshot_prefix):
        stem = os.path.splitext(os.path.basename(path))[0]
        param.snapshot_prefix = os.path.join(param.snapshot_prefix, stem)
    return param


class _PycaffeSolver:
    """What pycaffe's solvers add to netrun's: construction from a file name with Caffe's
    path rules, nets of :class:`Net`, ``add_callback``, ``lr``, ``share_weights``."""
    net_class = Net

    def __init__(self, filename, **kw):
        if isinstance(filename, caffe_pb2.SolverParameter):
            param = filename
        else:
            param = read_solver_param(filename)
        # snapshot_format: HDF5 is written here (netrun's solver writes BINARYPROTO)
        self._hdf5 = param.snapshot_format == caffe_pb2.SolverParameter.HDF5
        if self._hdf5:
            copy = caffe_pb2.SolverParameter()
            copy.CopyFrom(param)
            copy.snapshot_format = caffe_pb2.SolverParameter.BINARYPROTO
            param = copy
        if "seed" not in kw and param.random_seed < 0:
            kw["seed"] = _seed()
        kw.setdefault("log", None if _glog_quiet() else log)
        kw.setdefault("base_dir", os.getcwd())
        self._py_callbacks = []
        super().__init__(param, **kw)
        self.path = None if isinstance(filename, caffe_pb2.SolverParameter) else os.fspath(filename)

    def add_callback(self, on_start, on_gradients_ready):
        """``on_start()`` at the start of each iteration (after any test),
        ``on_gradients_ready()`` after backward, before the update."""
        self._py_callbacks.append((on_start, on_gradients_ready))

    def on_start(self):
        for fn, _ in self._py_callbacks:
            fn()

    def on_gradients_ready(self):
        for _, fn in self._py_callbacks:
            fn()

    @property
    def lr(self):
        """The learning rate at the current iteration."""
        return _solver.learning_rate(self.param, self.iter, self.current_step)[0]

    def snapshot_filename(self, ext):
        """``<snapshot_prefix>_iter_<N><ext>``, relative to the working folder as in Caffe."""
        return f"{self.param.snapshot_prefix}_iter_{self.iter}{ext}"

    def snapshot(self):
        """Write ``<prefix>_iter_<N>.caffemodel`` and ``.solverstate`` (``.caffemodel.h5``
        and ``.solverstate.h5`` with ``snapshot_format: HDF5``, Caffe's layout)."""
        if not self._hdf5:
            return super().snapshot()
        from ..layers.data import need_h5py
        h5py = need_h5py("snapshot_format HDF5")
        model = self.snapshot_filename(".caffemodel.h5")
        self.log(f"Snapshotting to HDF5 file {model}")
        self.net.save_hdf5(model, diff=bool(self.param.snapshot_diff))
        path = self.snapshot_filename(".solverstate.h5")
        self.log(f"Snapshotting solver state to HDF5 file {path}")
        with h5py.File(path, "w") as f:
            f.create_dataset("iter", data=np.array([self.iter], np.int32))
            f.create_dataset("learned_net", data=np.bytes_(model.encode()))  # fixed-length
            f.create_dataset("current_step", data=np.array([self.current_step], np.int32))
            g = f.create_group("history")
            for k, h in enumerate(self.history):
                g.create_dataset(str(k), data=h)
        self._last_snapshot = self.iter
        return model, path

    def restore(self, path):
        """Continue from a ``.solverstate`` or a ``.solverstate.h5``."""
        if not os.fspath(path).endswith(".h5"):
            return super().restore(path)
        from ..layers.data import need_h5py
        h5py = need_h5py("restoring an HDF5 solver state")
        path = os.fspath(path)
        with h5py.File(path, "r") as f:
            if "learned_net" in f:
                learned = f["learned_net"][()]
                learned = learned.decode() if isinstance(learned, bytes) else str(learned)
                self.net.copy_from(self._find_learned_net(learned, path))
            self.iter = int(np.ravel(f["iter"][()])[0])
            self.current_step = int(np.ravel(f["current_step"][()])[0])
            hist = f["history"]
            if len(hist) != len(self.history):
                raise NetrunError(f"holds {len(hist)} history blobs, the {self.param.type} "
                                  f"solver of this net needs {len(self.history)}", path)
            for k in range(len(self.history)):
                ds = hist[str(k)]                         # shape checked before reading
                if ds.size != self.history[k].size:
                    raise NetrunError(f"history blob {k} has shape {ds.shape}, the parameter "
                                      f"has {self.history[k].shape}", path)
                self.history[k] = np.asarray(ds, self.dtype).reshape(self.history[k].shape).copy()

    def share_weights(self, net):
        """Make ``net``'s same-named layers use this solver's train-net weights."""
        net.share_with(self.net)



def _solver_class(base):
    return type(base.__name__, (_PycaffeSolver, base), {"__module__": __name__,
                                                         "__doc__": base.__doc__})


SGDSolver = _solver_class(_solver.SGDSolver)
NesterovSolver = _solver_class(_solver.NesterovSolver)
AdaGradSolver = _solver_class(_solver.AdaGradSolver)
RMSPropSolver = _solver_class(_solver.RMSPropSolver)
AdaDeltaSolver = _solver_class(_solver.AdaDeltaSolver)
AdamSolver = _solver_class(_solver.AdamSolver)
SOLVERS = {cls.type: cls for cls in (SGDSolver, NesterovSolver, AdaGradSolver, RMSPropSolver,
                                     AdaDeltaSolver, AdamSolver)}
Solver = _PycaffeSolver


def get_solver(filename):
    """The solver the file's ``type`` names, as pycaffe's ``caffe.get_solver``."""
    param = read_solver_param(filename) if not isinstance(filename, caffe_pb2.SolverParameter) \
        else filename
    cls = SOLVERS.get(param.type)
    if cls is None:
        raise NetrunError(f'unknown solver type "{param.type}" (known: {", ".join(SOLVERS)})')
    return cls(param)
