"""The one place that picks the kernel implementation: compiled (numba) or numpy.

Every kernel comes in two twins of the same signature, side by side in its module:
a numpy one (always there) and a numba one (compiled loops: one pass where numpy
needs several).  ``kernel(numpy_fn, numba_fn)`` makes the function the layers call;
it runs the twin of the engine in use:

- ``NETRUN_KERNELS=numpy`` or ``numba`` forces one for every call (read at import);
- by default numba when it can be imported, else numpy (a Python version numba
  does not support yet: the numpy twins are the fallback).  By default a call
  whose work is small (under ``MIN_COMPILED_BYTES``: a 28x28 LeNet's layers) runs
  the numpy twin: loading numba and its compiled kernels costs about a second
  (more on a busy machine), which a small net never wins back -- the README's
  first command does not load numba at all;
- ``use("numpy")`` / ``use("numba")`` forces one inside a ``with`` block (tests run
  both engines, every call).

numba is imported only when a compiled twin first runs (an import costs ~0.3 s).
Its kernels are compiled with ``cache=True``: the first run of a fresh install
compiles them (seconds), later runs load them from numba's on-disk cache.  When
netrun's own folder is not writable (a system-wide install) and NUMBA_CACHE_DIR is
unset, the cache goes to ``$XDG_CACHE_HOME/netrun/numba`` (default
``~/.cache/netrun/numba``).  No fastmath: the compiled loops do the same float
operations in the same order as the numpy twins (no reassociation, no fused
multiply-adds), so the numbers do not change.  The loops release the GIL
(``nogil``) and run on netrun's tile threads (kernels/tiles.py), the same threads
the numpy twins use; numba's own thread pool is not used, so it never competes
with OpenBLAS's or netrun's threads.
"""
import contextlib
import importlib.util
import os
import threading
import warnings

ENGINES = ("numpy", "numba")


def numba_available():
    """True when numba can be found (without importing it)."""
    try:
        return importlib.util.find_spec("numba") is not None
    except (ImportError, ValueError):
        return False


def _initial_engine():
    env = os.environ.get("NETRUN_KERNELS", "").strip().lower()
    if env == "numpy":
        return "numpy"
    if env not in ("", "numba"):
        warnings.warn(f"NETRUN_KERNELS={env!r} is not one of numpy, numba: ignored",
                      stacklevel=2)
    if numba_available():
        return "numba"
    if env == "numba":
        warnings.warn("NETRUN_KERNELS=numba but numba cannot be imported: "
                      "using the numpy kernels", stacklevel=2)
    return "numpy"


_engine = _initial_engine()
# default (auto): small calls run the numpy twin; a forced engine runs every call
_min_bytes = 0 if os.environ.get("NETRUN_KERNELS", "").strip().lower() == "numba" else None
MIN_COMPILED_BYTES = 1 << 16
_lock = threading.RLock()


def engine():
    """The kernel engine in use: "numpy" or "numba"."""
    return _engine


def set_engine(name, every_call=True):
    """Select the kernel engine for the whole process (numba: for every call, or
    with ``every_call=False`` only where the work is large)."""
    global _engine, _min_bytes
    name = str(name).lower()
    if name not in ENGINES:
        raise ValueError(f"kernel engine must be one of {', '.join(ENGINES)}, got {name!r}")
    if name == "numba" and not numba_available():
        raise ValueError("the numba kernels need numba (pip install numba)")
    _engine = name
    _min_bytes = 0 if every_call else None


@contextlib.contextmanager
def use(name):
    """``with use("numpy"): ...`` runs the block with that engine's kernels."""
    old = _engine, _min_bytes
    set_engine(name)
    try:
        yield
    finally:
        set_engine(old[0], every_call=old[1] == 0)


class Kernel:
    """A kernel's two twins; calling it runs the engine's one.  ``work(*args)`` is
    the call's size in bytes (by default the largest array argument's); the twins
    whose state passes between calls (pooling's argmax) measure the same thing in
    each of their calls, so a forward and its backward always run the same twin."""

    def __init__(self, numpy_fn, numba_fn, work=None):
        self.numpy = numpy_fn
        self.numba = numba_fn
        self.work = work or _largest_array
        self.__name__ = numpy_fn.__name__.replace("_numpy", "")
        self.__doc__ = numpy_fn.__doc__

    def __call__(self, *args, **kwargs):
        if (_engine == "numba" and (_min_bytes == 0 or
                                    self.work(*args, **kwargs) >= MIN_COMPILED_BYTES)
                and _numba_loads()):
            return self.numba(*args, **kwargs)
        return self.numpy(*args, **kwargs)

    def __repr__(self):
        return f"<kernel {self.__name__} ({_engine})>"


def _largest_array(*args, **kwargs):
    return max((getattr(a, "nbytes", 0) for a in args), default=0)


def kernel(numpy_fn, numba_fn, work=None):
    """The function layers call: numpy_fn or numba_fn, per the engine in use."""
    return Kernel(numpy_fn, numba_fn, work)


# -- compiling ------------------------------------------------------------------------
def _cache_dir():
    """Where numba keeps compiled kernels, when it cannot write beside the sources."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "netrun", "numba")


def _prepare_numba():
    """Import numba, its cache in a user-writable folder when netrun's is not."""
    chosen = None
    if not os.environ.get("NUMBA_CACHE_DIR"):
        here = os.path.dirname(os.path.abspath(__file__))
        pycache = os.path.join(here, "__pycache__")
        target = pycache if os.path.isdir(pycache) else here
        if not os.access(target, os.W_OK):
            chosen = os.environ["NUMBA_CACHE_DIR"] = _cache_dir()
    import numba
    if chosen and not numba.config.CACHE_DIR:       # numba was imported before netrun
        numba.config.CACHE_DIR = chosen
    return numba


_numba_state = None                   # None: not tried yet; then True / False


def _numba_loads():
    """Import numba on the first compiled call; if that fails (numba installed but
    broken, e.g. built for another numpy), warn once and use the numpy twins."""
    global _numba_state, _engine
    if _numba_state is None:
        with _lock:
            if _numba_state is None:
                try:
                    _prepare_numba()
                    _numba_state = True
                except Exception as e:                  # noqa: BLE001 - any import error
                    warnings.warn(f"numba cannot be imported ({type(e).__name__}: {e}); "
                                  "netrun uses its numpy kernels", stacklevel=3)
                    _numba_state, _engine = False, "numpy"
    return _numba_state


class _Jit:
    """A loop compiled with numba on its first call (numba imported then).

    Inside compiled loops the module's names ``uint64``, ``int32`` and ``float64``
    are numba's types, and the loops a loop calls are compiled first and called directly (their
    module names are rebound to the compiled functions)."""

    def __init__(self, fn):
        self.py = fn
        self.fn = None
        self.__name__ = fn.__name__

    def compiled(self):
        if self.fn is None:
            with _lock:
                if self.fn is None:
                    numba = _prepare_numba()
                    g = self.py.__globals__
                    g.update(uint64=numba.uint64, int32=numba.int32, float64=numba.float64)
                    for name in self.py.__code__.co_names:   # loops it calls: compiled
                        if isinstance(g.get(name), _Jit):     # first, called directly
                            g[name] = g[name].compiled()
                    self.fn = numba.njit(self.py, cache=True, nogil=True,
                                         error_model="numpy", fastmath=False)
        return self.fn

    def __call__(self, *args):
        return (self.fn or self.compiled())(*args)


def uint64(v):
    """An index as unsigned (inside compiled loops: no negative-index check, so the
    loop vectorizes; in plain Python the value itself)."""
    return v


int32 = int
float64 = float


def jit(fn):
    """Decorator: compile ``fn`` with numba (nopython, cached, GIL released, numpy's
    float error model: x / 0 is inf or nan, never an exception) when first called."""
    return _Jit(fn)
