"""Atomic output files: write to a temporary file beside the target, then rename.

On any failure the temporary file is removed, so a failed or killed run never
leaves a half-written output behind.
"""
import contextlib
import os
import tempfile

from ..errors import NetrunError


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise NetrunError("is a directory; give a file name to write", path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".netrun-", suffix=".part", dir=folder)
    except FileNotFoundError:
        raise NetrunError(f"cannot write: folder {folder} does not exist", path) from None
    except OSError as e:
        raise NetrunError(f"cannot write: {e.strerror}", path) from None
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)          # mkstemp makes 0600; give the usual file mode
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
