"""Blob: a named n-d array with its gradient, as in Caffe.

``data`` holds the values, ``diff`` the gradient of the loss with respect to
them.  Both are allocated (zero-filled) the first time they are read, so
building a net only computes shapes -- the memory it needs is known before any
array exists -- and a forward-only run never pays for gradients.
"""
import math

import numpy as np

from .errors import LayerError

# No single blob may have more elements than this (2^40: 4 TiB of float32).
MAX_ELEMENTS = 1 << 40


def checked_shape(shape):
    shape = tuple(int(d) for d in shape)
    if any(d < 0 for d in shape):
        raise LayerError(f"negative dimension in shape {shape}")
    if math.prod(shape) > MAX_ELEMENTS:
        raise LayerError(f"shape {shape} has {math.prod(shape):,} elements, more than any "
                         "machine can hold")
    return shape


class Blob:
    __slots__ = ("_data", "_diff", "_shape", "dtype")

    def __init__(self, shape=(), dtype=np.float32):
        self.dtype = np.dtype(dtype)
        self._shape = checked_shape(shape)
        self._data = None
        self._diff = None

    # -- arrays ---------------------------------------------------------------
    @property
    def data(self):
        if self._data is None:
            self._data = np.zeros(self._shape, self.dtype)
        return self._data

    @data.setter
    def data(self, value):
        value = np.asarray(value, dtype=self.dtype)
        if value.shape != self._shape:
            self._shape = value.shape
            self._diff = None
        self._data = value

    @property
    def diff(self):
        if self._diff is None:
            self._diff = np.zeros(self._shape, self.dtype)
        return self._diff

    @diff.setter
    def diff(self, value):
        self._diff = np.asarray(value, dtype=self.dtype).reshape(self._shape)

    @property
    def has_data(self):
        return self._data is not None

    @property
    def has_diff(self):
        return self._diff is not None

    def free(self):
        """Drop both arrays (they come back as zeros if read again); the shape stays."""
        self._data = None
        self._diff = None

    @property
    def nbytes(self):
        return self.count * self.dtype.itemsize

    # -- shape ----------------------------------------------------------------
    @property
    def shape(self):
        return self._shape

    @property
    def count(self):
        return math.prod(self._shape)

    @property
    def num_axes(self):
        return len(self._shape)

    def reshape(self, *shape):
        """Give the blob a new shape; contents are kept when the count is unchanged."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = shape[0]
        shape = checked_shape(shape)
        if shape == self._shape:
            return
        if math.prod(shape) == self.count:
            if self._data is not None:
                self._data = self._data.reshape(shape)
            if self._diff is not None:
                self._diff = self._diff.reshape(shape)
        else:
            self._data = None
            self._diff = None
        self._shape = shape

    def reshape_like(self, other):
        self.reshape(other.shape)

    def share_data(self, other):
        """Make this blob's data the very array of ``other`` (Caffe's ShareData)."""
        self._data = other.data
        if other.shape != self._shape:
            self._diff = None
        self._shape = other.shape

    def share_diff(self, other):
        self._diff = other.diff

    # pycaffe's legacy 4-d accessors
    def _legacy(self, i):
        s = self._shape
        return s[i] if i < len(s) else 1

    num = property(lambda self: self._legacy(0))
    channels = property(lambda self: self._legacy(1))
    height = property(lambda self: self._legacy(2))
    width = property(lambda self: self._legacy(3))

    def __repr__(self):
        return f"Blob(shape={self._shape}, dtype={self.dtype.name})"
