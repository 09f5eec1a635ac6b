"""netrun: run Caffe networks forward and backward in pure Python, with Caffe's numbers.

``netrun.Net`` mirrors pycaffe's ``caffe.Net``; the whole pycaffe API is
``netrun.pycaffe`` (``netrun pycaffe SCRIPT.py`` runs an unmodified pycaffe script)::

    net = netrun.Net("deploy.prototxt", "w.caffemodel", netrun.TEST)
    net.blobs["data"].data[...] = x
    prob = net.forward()["prob"]
"""
import os as _os
import sys as _sys
import warnings as _warnings

# Idle OpenBLAS workers spin on the cores for ~0.1 s after each GEMM (2^28 cycles),
# starving the element-wise tiles netrun runs on the same cores (see kernels/tiles.py);
# 2^20 cycles (~0.4 ms) keeps them awake between the GEMMs of one layer and the next
# and lets them sleep before a long tile.  It only changes when idle BLAS threads
# sleep; it must be set before numpy loads.
if "numpy" not in _sys.modules:
    _os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "20")

from .blob import Blob
from .errors import NetrunError
from .layers.base import Layer
from .net import Net, NetrunWarning
from .proto import caffe_pb2
from .solver import (AdaDeltaSolver, AdaGradSolver, AdamSolver, NesterovSolver, RMSPropSolver,
                     SGDSolver, get_solver)

__all__ = ["Blob", "NetrunError", "Layer", "Net", "NetrunWarning", "caffe_pb2", "AdaDeltaSolver",
           "AdaGradSolver", "AdamSolver", "NesterovSolver", "RMSPropSolver", "SGDSolver",
           "get_solver", "TRAIN", "TEST", "set_mode_cpu", "set_mode_gpu", "set_device",
           "__version__", "extract"]

__version__ = "0.1.0"
TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST   # 0, 1 as in Caffe


# pycaffe's device selection: netrun always runs on the CPU.
def set_mode_cpu():
    """Nothing to do: netrun runs on the CPU."""


def set_mode_gpu():
    """netrun has no GPU mode: warn and keep running on the CPU."""
    _warnings.warn("netrun runs on the CPU only; set_mode_gpu() is ignored", NetrunWarning,
                   stacklevel=2)


def set_device(device_id):
    """Nothing to do: netrun runs on the CPU."""


def extract(model, data, out, **options):
    """Run a model over a whole dataset into a Zarr store or HDF5 file (``netrun extract``);
    see :func:`netrun.extraction.extract` for the options.  Returns ``out``."""
    from .extraction import extract as _extract    # needs zarr/dask only when called
    return _extract(model, data, out, **options)
