"""The tile runner: every tile once, errors raised in the caller, no deadlock when a
tile tiles again, a working pool after fork."""
import os
import threading

import numpy as np
import pytest

from netrun.kernels import tiles as _tiles


@pytest.fixture
def two_threads(monkeypatch):
    monkeypatch.setattr(_tiles, "THREADS", 2)


def test_every_tile_runs_once_on_several_threads(two_threads):
    seen = []
    lock = threading.Lock()

    def tile(lo, hi):
        with lock:
            seen.append((lo, hi))
    tiles = [(i, i + 1) for i in range(64)]
    _tiles.run_tiles(tile, tiles)
    assert sorted(seen) == tiles


def test_an_error_in_a_tile_reaches_the_caller(two_threads):
    def tile(lo, hi):
        if lo == 5:
            raise ValueError("tile 5")
    with pytest.raises(ValueError, match="tile 5"):
        _tiles.run_tiles(tile, [(i, i + 1) for i in range(10)])


def test_a_tile_that_tiles_again_runs_its_inner_tiles_itself(two_threads):
    out = np.zeros(16)

    def inner(lo, hi):
        out[lo:hi] += 1

    def outer(lo, hi):
        _tiles.run_tiles(inner, [(k, k + 1) for k in range(lo, hi)])
    _tiles.run_tiles(outer, [(0, 8), (8, 16)])
    assert (out == 1).all()


def test_pieces_and_ranges():
    assert _tiles.tile_ranges(10, 1, 3, share_bytes=1 << 40) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    a, b = np.arange(12.0), np.zeros(12)
    _tiles.flat_parts(lambda x, y: np.multiply(x, 2, out=y), a, b)
    assert (b == 2 * a).all()
    t = np.arange(12.0).reshape(3, 4).T               # not contiguous: no flat views
    c = np.zeros((4, 3))
    _tiles.flat_parts(lambda x, y: np.copyto(y, x), t, c)
    assert (c == t).all()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_gets_a_pool_of_its_own(two_threads):
    _tiles.run_tiles(lambda lo, hi: None, [(0, 1), (1, 2)])      # the parent's pool
    pid = os.fork()
    if pid == 0:                                                 # pragma: no cover
        out = np.zeros(4)
        _tiles.run_tiles(lambda lo, hi: out.__setitem__(slice(lo, hi), 1),
                         [(0, 2), (2, 4)])
        os._exit(0 if out.sum() == 4 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
