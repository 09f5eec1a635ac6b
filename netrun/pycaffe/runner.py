"""Run a pycaffe script on netrun: ``import caffe`` resolves to :mod:`netrun.pycaffe`.

:func:`install` puts a finder first on ``sys.meta_path`` that answers the
``caffe`` module names -- ``caffe``, ``caffe.io``, ``caffe.proto``,
``caffe.proto.caffe_pb2``, ``caffe.net_spec``, ``caffe.draw``, ``caffe.coord_map``,
``caffe.classifier``, ``caffe.detector``, ``caffe.pycaffe``, ``caffe._caffe`` --
with netrun's modules.  Nothing is installed on disk, so a real Caffe on the same
machine keeps working in every other process.  :func:`main` then runs the
script (or ``-m module``, ``-c code``) as ``__main__`` with ``sys.argv`` set, as
``python`` would.
"""
import importlib
import importlib.abc
import importlib.util
import os
import runpy
import sys

ALIASES = {
    "caffe": "netrun.pycaffe",
    "caffe.io": "netrun.pycaffe.io",
    "caffe.net_spec": "netrun.pycaffe.net_spec",
    "caffe.draw": "netrun.pycaffe.draw",
    "caffe.coord_map": "netrun.pycaffe.coord_map",
    "caffe.classifier": "netrun.pycaffe.classifier",
    "caffe.detector": "netrun.pycaffe.detector",
    "caffe.pycaffe": "netrun.pycaffe.pycaffe",
    "caffe._caffe": "netrun.pycaffe.pycaffe",
    "caffe.proto": "netrun.proto",
    "caffe.proto.caffe_pb2": "netrun.proto.caffe_pb2",
}

USAGE = ("usage: netrun pycaffe SCRIPT.py [ARGS...]\n"
         "       netrun pycaffe -m MODULE [ARGS...]\n"
         "       netrun pycaffe -c CODE [ARGS...]\n"
         "Runs a pycaffe script with `import caffe` resolving to netrun (Python layers allowed).")


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target):
        self.target = target

    def create_module(self, spec):
        return importlib.import_module(self.target)

    def exec_module(self, module):
        pass                      # the netrun module is already executed


class CaffeAliasFinder(importlib.abc.MetaPathFinder):
    """Answers the ``caffe`` names of :data:`ALIASES` with netrun's modules."""

    def find_spec(self, fullname, path=None, target=None):
        dest = ALIASES.get(fullname)
        if dest is None:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(dest),
                                               is_package=fullname in ("caffe", "caffe.proto"))


def install():
    """Make ``import caffe`` (and its submodules) give netrun's modules in this process."""
    if not any(isinstance(f, CaffeAliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, CaffeAliasFinder())
    for name in ("caffe", "caffe.proto", "caffe.proto.caffe_pb2", "caffe.io"):
        stale = sys.modules.get(name)
        if stale is not None and not getattr(stale, "__name__", "").startswith("netrun"):
            del sys.modules[name]
        sys.modules[name] = importlib.import_module(ALIASES[name])
    return sys.modules["caffe"]


def main(argv=None):
    """``[-m MODULE | -c CODE | SCRIPT] [ARGS...]``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr if not argv else sys.stdout)
        return 2 if not argv else 0
    install()
    if argv[0] in ("-m", "-c"):
        if len(argv) < 2:
            print(f"netrun pycaffe: {argv[0]} needs an argument\n{USAGE}", file=sys.stderr)
            return 2
        mode, what, rest = argv[0], argv[1], argv[2:]
    else:
        mode, what, rest = "script", argv[0], argv[1:]
    if mode == "-m":
        sys.argv = [what] + rest
        _set_path0(os.getcwd())
        runpy.run_module(what, run_name="__main__", alter_sys=True)
    elif mode == "-c":
        sys.argv = ["-c"] + rest
        _set_path0(os.getcwd())
        code = compile(what, "<string>", "exec")
        exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
    else:
        if not os.path.exists(what):
            print(f"netrun pycaffe: can't open file {what!r}: no such file", file=sys.stderr)
            return 2
        sys.argv = [what] + rest
        _set_path0(os.path.dirname(os.path.abspath(what)))
        runpy.run_path(what, run_name="__main__")
    return 0


def _set_path0(folder):
    """``sys.path[0]`` as ``python`` sets it: the script's folder, or the cwd for -m/-c."""
    if sys.path and sys.path[0] in ("", os.getcwd()) and folder == os.getcwd():
        return
    sys.path.insert(0, folder)
