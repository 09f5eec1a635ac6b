"""Snapshots of a solver: ``<prefix>_iter_<N>.caffemodel`` and ``.solverstate`` (a
``caffe_pb2.SolverState``: ``iter``, ``learned_net``, ``history``, ``current_step``),
and restoring one to continue exactly where the run stopped.
"""
import os

import numpy as np

from .errors import NetrunError
from .proto import caffe_pb2


def resolve_output(prefix, base_dir):
    """Where a relative snapshot_prefix goes: the solver's folder when its directory
    exists there, else the current directory (Caffe's only rule)."""
    if os.path.isabs(prefix) or not base_dir:
        return prefix
    cand = os.path.join(base_dir, prefix)
    if os.path.isdir(os.path.dirname(cand) or "."):
        return cand
    return prefix


class Snapshots:
    """Writing and restoring snapshots (a mixin of netrun.solver.Solver)."""

    def snapshot_filename(self, ext):
        prefix = resolve_output(self.param.snapshot_prefix, self.base_dir)
        return f"{prefix}_iter_{self.iter}{ext}"

    def snapshot(self):
        """Write ``<prefix>_iter_<N>.caffemodel`` and ``.solverstate``; returns both paths."""
        from .io.atomic import atomic_write
        from .io.caffemodel import net_to_proto
        model = self.snapshot_filename(".caffemodel")
        folder = os.path.dirname(os.path.abspath(model))
        if not os.path.isdir(folder):
            raise NetrunError(f"cannot write snapshots to {self.param.snapshot_prefix!r}: "
                              f"the folder {folder} does not exist")
        self.log(f"Snapshotting to binary proto file {model}")
        proto = net_to_proto(self.net)
        if self.param.snapshot_diff:
            for lp, layer in zip(proto.layer, self.net.layers):
                for bp, blob in zip(lp.blobs, layer.blobs):
                    if blob.dtype == np.float64:
                        bp.double_diff.extend(blob.diff.ravel().tolist())
                    else:
                        bp.diff.extend(blob.diff.ravel().tolist())
        with atomic_write(model, "wb") as f:
            f.write(proto.SerializeToString())
        state = self.solver_state(model)
        path = self.snapshot_filename(".solverstate")
        self.log(f"Snapshotting solver state to binary proto file {path}")
        with atomic_write(path, "wb") as f:
            f.write(state.SerializeToString())
        self._last_snapshot = self.iter
        return model, path

    def solver_state(self, model_filename=None):
        state = caffe_pb2.SolverState(iter=self.iter, current_step=self.current_step)
        if model_filename is not None:
            state.learned_net = model_filename
        for h in self.history:
            bp = state.history.add()
            bp.shape.dim.extend(h.shape)
            if h.dtype == np.float64:
                bp.double_data.extend(h.ravel().tolist())
            else:
                bp.data.extend(h.ravel().tolist())
        return state

    def restore(self, path):
        """Continue from a .solverstate: iter, current_step, history and the learned_net weights."""
        from .io.caffemodel import blob_array, blob_shape
        from .io.prototxt import read_binary
        path = os.fspath(path)
        if path.endswith(".h5"):
            raise NetrunError("HDF5 solver states are not supported; use a .solverstate", path)
        limit = self.net.budget.limit if getattr(self.net, "budget", None) is not None else None
        state = read_binary(path, caffe_pb2.SolverState(), limit=limit)
        if state.HasField("learned_net"):
            self.net.copy_from(self._find_learned_net(state.learned_net, path))
        self.iter = state.iter
        self.current_step = state.current_step
        if len(state.history) != len(self.history):
            raise NetrunError(f"holds {len(state.history)} history blobs, the {self.param.type} "
                              f"solver of this net needs {len(self.history)}", path)
        for k, bp in enumerate(state.history):
            shape = self.history[k].shape
            if int(np.prod(blob_shape(bp), dtype=np.int64)) != int(np.prod(shape, dtype=np.int64)):
                raise NetrunError(f"history blob {k} has shape {blob_shape(bp)}, the parameter "
                                  f"has {shape}", path)
            try:
                values = blob_array(bp, self.dtype, blob_shape(bp), limit=limit)
            except NetrunError as e:
                raise NetrunError(f"history blob {k}: {e.message}", path) from None
            self.history[k] = values.reshape(shape).copy()

    @staticmethod
    def _find_learned_net(name, state_path):
        beside = os.path.join(os.path.dirname(os.path.abspath(state_path)), os.path.basename(name))
        for cand in (beside, name):
            if os.path.exists(cand):
                return cand
        raise NetrunError(f"its learned_net {name} does not exist (looked beside the "
                          "solverstate and in the current directory)", state_path)
