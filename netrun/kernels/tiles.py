"""Tiles: cache-sized pieces of multi-pass element-wise work, run on all cores.

A kernel that makes K passes over its data (pooling: K window offsets; LRN: a window
sum and a dozen element-wise steps) reads memory once instead of K times when it
runs over pieces that fit in the caches.  Tiles never share output memory, so they
can run at the same time: numpy releases the GIL inside every element-wise loop.

Threads: ``NETRUN_THREADS`` (default: the number of cores, at most 8; 1 runs every
tile on the calling thread).  They only pay off when OpenBLAS's idle workers do not
spin on the cores for long after each GEMM (by default they do, for about 0.1 s):
``import netrun`` sets ``OPENBLAS_THREAD_TIMEOUT=20`` (a spin of 2^20 cycles, ~0.4 ms)
when numpy is not imported yet and the variable is unset -- it only makes idle BLAS
threads sleep sooner.  Measured on 2 cores: float32 ``np.power`` over 4.8M elements
right after a GEMM takes 46 ms on one thread, 40 ms on two with spinning BLAS workers,
23 ms on two with quiet ones.  The shortest spin (4) costs the nets of many small GEMMs
a wake-up per call instead: on an Intel Xeon, SqueezeNet 1.1 batch 1 forward / backward
15.9 / 23.3 ms at 4, 14.6 / 19.9 at 20, the batch-8 rows unchanged within noise.
"""
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def _thread_count():
    env = os.environ.get("NETRUN_THREADS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            return 1
    try:
        cores = len(os.sched_getaffinity(0))       # the cores this process may use
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


THREADS = _thread_count()
_pool = None
_pool_lock = threading.Lock()
_local = threading.local()


def _forget_pool():
    """In a forked child the parent's worker threads do not exist: start afresh."""
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _executor():
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(THREADS - 1, thread_name_prefix="netrun-tile")
    return _pool


def run_tiles(fn, tiles, parallel=True):
    """fn(lo, hi) for every (lo, hi) in ``tiles``, spread over THREADS threads (the
    calling one included; only that one when ``parallel`` is false).  Tiles are handed
    out in order from a shared counter; an exception in any tile is raised here after
    all have stopped."""
    tiles = list(tiles)
    if (not parallel or THREADS < 2 or len(tiles) < 2
            or getattr(_local, "inside", False)):
        for lo, hi in tiles:
            fn(lo, hi)
        return
    lock = threading.Lock()
    state = {"next": 0, "error": None}

    def worker():
        _local.inside = True             # a tile that tiles again runs sequentially
        try:
            while True:
                with lock:
                    i = state["next"]
                    if i >= len(tiles) or state["error"] is not None:
                        return
                    state["next"] = i + 1
                try:
                    fn(*tiles[i])
                except BaseException as e:          # re-raised by the caller
                    with lock:
                        if state["error"] is None:
                            state["error"] = e
                    return
        finally:
            _local.inside = False

    helpers = [_executor().submit(worker) for _ in range(min(THREADS, len(tiles)) - 1)]
    worker()
    for h in helpers:
        h.result()
    if state["error"] is not None:
        raise state["error"]


# A handoff to another thread and back costs 60-100 us on a 2-core VM (measured:
# run_tiles of two empty tiles, 57-64 us; right after a BLAS call, 80-100 us), so
# work is shared only when it is worth several of them: single-pass work (copies,
# element-wise steps, the conv bias add) moving at least this many bytes ...
PARALLEL_MIN_BYTES = 8 << 20
# ... or multi-pass work (pooling's K window offsets, LRN) over this much input.
MULTIPASS_MIN_BYTES = 1 << 20


def in_parts(fn, n, nbytes):
    """fn(lo, hi) over [0, n) cut into one piece per thread when the work (``nbytes``
    moved in all) is large enough to share, else fn(0, n) on the calling thread."""
    parts = min(THREADS, n)
    if parts < 2 or nbytes < PARALLEL_MIN_BYTES:
        fn(0, n)
        return
    cuts = [n * i // parts for i in range(parts + 1)]
    run_tiles(fn, list(zip(cuts[:-1], cuts[1:])))


def parallel_copyto(dst, src):
    """np.copyto(dst, src) split along axis 0 (equal shapes), in parallel when large."""
    if dst.ndim == 0 or dst.shape[0] < 2:
        np.copyto(dst, src)
        return

    def part(lo, hi):
        np.copyto(dst[lo:hi], src[lo:hi])
    in_parts(part, dst.shape[0], dst.nbytes)


def tile_ranges(n, unit_bytes, tile_bytes, share_bytes=MULTIPASS_MIN_BYTES):
    """[lo, hi) ranges over n units of ``unit_bytes``: at most ``tile_bytes`` each (one
    unit at least), and one per thread at least when the whole (n * unit_bytes) is
    ``share_bytes`` or more."""
    step = max(1, tile_bytes // max(1, unit_bytes))
    if THREADS > 1 and n * unit_bytes >= share_bytes:
        step = min(step, max(1, -(-n // THREADS)))
    return [(a, min(n, a + step)) for a in range(0, n, step)]


# Element-wise chains (BatchNorm, Scale) run over tiles of channels this large, so
# their second and later passes read the caches instead of memory.
CHAIN_TILE_BYTES = 1 << 19


def channel_tiles(fn, outer, dim, inner, itemsize):
    """fn(lo, hi) over channel ranges of an (outer, dim, inner) array, cache-sized
    and spread over the threads when the array is large enough to share."""
    share = PARALLEL_MIN_BYTES // 2
    run_tiles(fn, tile_ranges(dim, outer * inner * itemsize, CHAIN_TILE_BYTES, share),
              parallel=outer * dim * inner * itemsize >= share)


def flat_parts(fn, *arrays):
    """fn(*pieces) over matching pieces of equally sized contiguous arrays (flat
    views), one piece per thread when they are large."""
    if not all(a.flags.c_contiguous for a in arrays):
        fn(*arrays)                     # a flat view would be a copy
        return
    flats = [a.reshape(-1) for a in arrays]
    n = flats[0].size
    in_parts(lambda lo, hi: fn(*(f[lo:hi] for f in flats)), n,
             sum(a.nbytes for a in arrays))
