"""Blob: a named n-d array with its gradient, as in Caffe.

``data`` holds the values, ``diff`` the gradient of the loss with respect to
them.  ``diff`` is allocated (zero-filled) the first time it is read, so a
forward-only run never pays for gradients.
"""
import numpy as np


class Blob:
    __slots__ = ("_data", "_diff", "dtype")

    def __init__(self, shape=(), dtype=np.float32):
        self.dtype = np.dtype(dtype)
        self._data = np.zeros(tuple(int(d) for d in shape), self.dtype)
        self._diff = None

    # -- arrays ---------------------------------------------------------------
    @property
    def data(self):
        return self._data

    @data.setter
    def data(self, value):
        value = np.asarray(value, dtype=self.dtype)
        if value.shape != self._data.shape:
            self._diff = None
        self._data = value

    @property
    def diff(self):
        if self._diff is None or self._diff.shape != self._data.shape:
            self._diff = np.zeros(self._data.shape, self.dtype)
        return self._diff

    @diff.setter
    def diff(self, value):
        self._diff = np.asarray(value, dtype=self.dtype).reshape(self._data.shape)

    @property
    def has_diff(self):
        return self._diff is not None

    def free(self):
        """Drop both arrays (inference mode); the shape is kept."""
        self._data = _Freed(self._data.shape)
        self._diff = None

    # -- shape ----------------------------------------------------------------
    @property
    def shape(self):
        return tuple(self._data.shape)

    @property
    def count(self):
        return int(np.prod(self._data.shape, dtype=np.int64))

    @property
    def num_axes(self):
        return len(self._data.shape)

    def reshape(self, *shape):
        """Give the blob a new shape; contents are kept when the count is unchanged."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = shape[0]
        shape = tuple(int(d) for d in shape)
        if shape == self._data.shape:
            return
        if any(d < 0 for d in shape):
            raise ValueError(f"negative dimension in shape {shape}")
        if isinstance(self._data, np.ndarray) and self._data.size == int(np.prod(shape, dtype=np.int64)):
            self._data = self._data.reshape(shape)
            if self._diff is not None:
                self._diff = self._diff.reshape(shape)
        else:
            self._data = np.zeros(shape, self.dtype)
            self._diff = None

    def reshape_like(self, other):
        self.reshape(other.shape)

    def share_data(self, other):
        """Make this blob's data the very array of ``other`` (Caffe's ShareData)."""
        self._data = other._data

    def share_diff(self, other):
        self._diff = other.diff

    # pycaffe's legacy 4-d accessors
    def _legacy(self, i):
        s = self.shape
        i = len(s) - 4 + i if len(s) >= 4 else i
        return s[i] if 0 <= i < len(s) else 1

    num = property(lambda self: self._legacy(0))
    channels = property(lambda self: self._legacy(1))
    height = property(lambda self: self._legacy(2))
    width = property(lambda self: self._legacy(3))

    def __repr__(self):
        return f"Blob(shape={self.shape}, dtype={self.dtype.name})"


class _Freed:
    """Placeholder for the data of a freed intermediate blob."""

    def __init__(self, shape):
        self.shape = tuple(shape)
        self.size = int(np.prod(shape, dtype=np.int64))

    def __array__(self, *a, **k):
        raise RuntimeError("this blob was freed by inference mode (low memory)")
