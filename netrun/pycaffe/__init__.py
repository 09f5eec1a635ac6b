"""pycaffe on netrun: the ``caffe`` module (``Net``, ``SGDSolver``, ``io``, ``NetSpec``...).

``netrun pycaffe SCRIPT.py`` / ``python -m netrun.pycaffe SCRIPT.py`` run an
unmodified pycaffe script with ``import caffe`` (and ``caffe.io``,
``caffe.proto.caffe_pb2``, ``caffe.draw``...) resolving here, without installing a
top-level ``caffe`` package (see :mod:`netrun.pycaffe.runner`).  In your own
code, ``from netrun import pycaffe as caffe`` does the same for one module.
Everything is a thin layer over :class:`netrun.Net` and :mod:`netrun.solver`;
what differs from pycaffe is in docs/pycaffe.md.
"""
from .. import proto                                  # noqa: F401  (caffe.proto.caffe_pb2)
from .pycaffe import (TRAIN, TEST, NCCL, AdaDeltaSolver, AdaGradSolver, AdamSolver, Blob,
                      Layer, NesterovSolver, Net, RMSPropSolver, SGDSolver, Timer, __version__,
                      get_solver, has_nccl, init_log, layer_type_list, log, set_device,
                      set_mode_cpu, set_mode_gpu, set_multiprocess, set_random_seed,
                      set_solver_count, set_solver_rank, solver_count, solver_rank)
from . import io                                      # noqa: F401
from .classifier import Classifier
from .detector import Detector
from .net_spec import NetSpec, layers, params, to_proto
from . import pycaffe as _caffe                       # noqa: F401  (caffe._caffe)

__all__ = ["TRAIN", "TEST", "NCCL", "AdaDeltaSolver", "AdaGradSolver", "AdamSolver", "Blob",
           "Layer", "NesterovSolver", "Net", "RMSPropSolver", "SGDSolver", "Timer",
           "get_solver", "has_nccl", "init_log", "layer_type_list", "log", "set_device",
           "set_mode_cpu", "set_mode_gpu", "set_multiprocess", "set_random_seed",
           "set_solver_count", "set_solver_rank", "solver_count", "solver_rank", "io",
           "Classifier", "Detector", "NetSpec", "layers", "params", "to_proto", "proto"]
