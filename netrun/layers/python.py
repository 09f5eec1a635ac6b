"""The ``Python`` layer: a user's pycaffe-style layer class (``python_param``: module,
layer, param_str), loaded only with ``--allow-python-layers`` / ``Net(...,
allow_python_layers=True)``.  The class sees pycaffe's surface: ``setup``, ``reshape``,
``forward``, ``backward`` with blob lists, ``self.blobs``, ``self.param_str``, ``self.phase``.
"""
import importlib
import os
import sys

import numpy as np

from ..errors import LayerError, NetrunError, check
from .base import Layer, register


class BlobVec(list):
    """pycaffe's ``layer.blobs``: a list of Blobs with ``add_blob(*shape)``."""

    def __init__(self, dtype):
        super().__init__()
        self.dtype = dtype

    def add_blob(self, *shape):
        from ..blob import Blob
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        b = Blob(shape, self.dtype)
        self.append(b)
        return b


class PyLayerBase:
    """Base class of pycaffe layers: ``caffe.Layer`` of :mod:`netrun.pycaffe`."""

    def __init__(self, param=None):
        self.param = param
        self.blobs = BlobVec(np.float32)
        self.param_str = ""
        self.phase = 1

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        pass


def ensure_caffe_module():
    """Let ``import caffe`` work in layer modules: when pycaffe is not installed,
    ``caffe`` (and ``caffe.io``, ``caffe.proto``...) become netrun's pycaffe API,
    :mod:`netrun.pycaffe`, in this process."""
    if "caffe" in sys.modules:
        return
    import importlib.util
    if importlib.util.find_spec("caffe") is not None:
        return
    from ..pycaffe.runner import install
    install()


def load_python_class(module, layer, ctx):
    ensure_caffe_module()
    extra = [d for d in dict.fromkeys([os.getcwd(), os.path.abspath(ctx.base_dir or ".")])
             if d not in sys.path]
    sys.path[:0] = extra
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and module.split(".")[0] == e.name.split(".")[0]:
            raise LayerError(f'cannot import Python layer module "{module}" (looked on PYTHONPATH, '
                             "in the current directory and next to the prototxt)") from None
        raise LayerError(f'Python layer module "{module}" failed to import: {e}') from e
    except Exception as e:
        raise LayerError(f'Python layer module "{module}" failed to import: '
                         f"{type(e).__name__}: {e}") from e
    finally:
        for d in extra:
            if d in sys.path:
                sys.path.remove(d)
    cls = getattr(mod, layer, None)
    if cls is None:
        raise LayerError(f'Python module "{module}" ({getattr(mod, "__file__", "?")}) has no '
                         f'class "{layer}"')
    return cls


@register("Python")
class Python(Layer):
    """A pycaffe layer: class ``python_param.layer`` of module ``python_param.module``.

    It runs the user's code, so it is loaded only when the net is built with
    ``allow_python_layers=True`` (``--allow-python-layers``), or ``"raw"`` (pycaffe's
    Net: exceptions raised by the user's code propagate unchanged).  As in pycaffe the
    class is instantiated with the LayerParameter, gets ``param_str`` and ``phase``
    before ``setup(bottom, top)``, then ``reshape(bottom, top)`` before every
    ``forward(bottom, top)``, and ``backward(top, propagate_down, bottom)``.
    Blobs have ``.data``, ``.diff``, ``.reshape(*shape)``, ``.shape``, ``.count``;
    learnable parameters go in ``self.blobs`` (``self.blobs.add_blob(*shape)``).
    """

    def __init__(self, param, ctx):
        super().__init__(param, ctx)
        pp = param.python_param
        self.where = f"{pp.module}.{pp.layer}"
        if not ctx.allow_python_layers:
            raise LayerError(f'Python layer class "{pp.layer}" from module "{pp.module}" would run '
                             "code from that module: pass --allow-python-layers "
                             "(Net(..., allow_python_layers=True)) to allow it")
        check(bool(pp.module) and bool(pp.layer), "python_param needs module and layer")
        cls = load_python_class(pp.module, pp.layer, ctx)
        # allow_python_layers="raw" (pycaffe's Net): the user's exceptions propagate as
        # they are, as in pycaffe, instead of becoming one-line netrun errors
        self.raw_errors = ctx.allow_python_layers == "raw"
        try:
            if getattr(cls, "__init__", object.__init__) is object.__init__:
                impl = cls()
            else:
                impl = cls(param)
        except NetrunError:
            raise
        except Exception as e:
            self._user_error(e)
            raise LayerError(f"{self.where}(...) raised {type(e).__name__}: {e}") from e
        blobs = getattr(impl, "blobs", None)
        if not isinstance(blobs, BlobVec):
            vec = BlobVec(self.dtype)
            vec.extend(blobs or [])
            blobs = vec
        blobs.dtype = self.dtype
        impl.blobs = blobs
        self.blobs = blobs
        self.impl = impl
        impl.param_str = pp.param_str
        impl.phase = int(self.phase)

    def _call(self, method, *args):
        fn = getattr(self.impl, method, None)
        if fn is None:
            if method == "backward":
                return None
            raise LayerError(f'Python layer {self.where} has no method "{method}"')
        try:
            return fn(*args)
        except NetrunError:
            raise
        except Exception as e:
            self._user_error(e)
            raise LayerError(f"{self.where}.{method} raised {type(e).__name__}: {e}") from e

    def __getattr__(self, name):
        """The user's own attributes (pycaffe's ``net.layers[i]`` is the user's object)."""
        impl = self.__dict__.get("impl")
        if impl is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(impl, name)

    def _user_error(self, e):
        """In raw mode re-raise ``e`` itself, marked so the net passes it on unchanged."""
        if self.raw_errors:
            e.netrun_user_code = True
            raise e

    def setup(self, bottom, top):
        self._call("setup", bottom, top)

    def reshape(self, bottom, top):
        self._call("reshape", bottom, top)

    def forward(self, bottom, top):
        self._call("forward", bottom, top)

    def backward(self, top, propagate_down, bottom):
        self._call("backward", top, list(propagate_down), bottom)
