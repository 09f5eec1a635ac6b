"""One error type for everything a user can get wrong.

The CLI prints a :class:`NetrunError` as a single line and exits with code 2;
any other exception is a bug in netrun and keeps its traceback.
"""
from contextlib import contextmanager


class NetrunError(Exception):
    """A user-facing error: bad file, unknown layer, shapes that do not fit...

    ``where`` is prepended to the message (``file:line``, ``layer "x" (Type)``),
    so the text says what is wrong and where.
    """

    def __init__(self, message, where=None):
        self.message = str(message)
        self.where = where
        super().__init__(f"{where}: {message}" if where else str(message))

    def located(self, where):
        """Return a copy of this error with ``where`` prefixed (outermost first)."""
        if self.where:
            where = f"{where}: {self.where}"
        err = type(self)(self.message, where)
        err.__cause__ = self.__cause__
        return err


class LayerError(NetrunError):
    """Raised by a layer; the net adds the file, line, layer name and type."""


def check(cond, message):
    """Raise a LayerError with ``message`` unless ``cond`` holds (Caffe's CHECK)."""
    if not cond:
        raise LayerError(message)


@contextmanager
def reading(where):
    """Turn what opening and reading a file can raise into one-line NetrunErrors naming
    ``where`` (missing, a directory, out of memory, any other OSError)."""
    try:
        yield
    except FileNotFoundError:
        raise NetrunError("no such file", where) from None
    except IsADirectoryError:
        raise NetrunError("is a directory, not a file", where) from None
    except MemoryError:
        raise NetrunError("out of memory reading it", where) from None
    except OSError as e:
        raise NetrunError(f"cannot read: {e.strerror or e}", where) from None
