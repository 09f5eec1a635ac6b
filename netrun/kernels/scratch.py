"""Scratch buffers: reusable per-thread arrays for kernel temporaries.

Column buffers, GEMM outputs and padded planes run to hundreds of MB; allocating
them afresh in every call costs page faults.  ``Net(..., inference=True)`` frees
them after each layer (``release_scratch``).
"""
import threading

import numpy as np


_SCRATCH = threading.local()


def scratch(name, shape, dtype):
    """A reusable per-thread buffer for a temporary (column buffers, GEMM outputs):
    allocating hundreds of MB afresh in every call costs page faults.  Contents are
    undefined; the array is valid until the next request of the same name."""
    bufs = getattr(_SCRATCH, "bufs", None)
    if bufs is None:
        bufs = _SCRATCH.bufs = {}
    dt = np.dtype(dtype)
    n = 1
    for k in shape:
        n *= int(k)
    b = bufs.get((name, dt))
    if b is None or b.size < n:
        b = bufs[(name, dt)] = np.empty(max(n, 1), dt)
    return b[:n].reshape(shape)


def release_scratch():
    """Free this thread's scratch buffers."""
    _SCRATCH.bufs = {}
