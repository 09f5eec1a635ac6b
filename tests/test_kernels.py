"""The kernel twins: the compiled (numba) kernels give the numpy twins' numbers bit for
bit, and the engine is picked in one place (NETRUN_KERNELS, kernels.use)."""
import os
import subprocess
import sys

import numpy as np
import pytest

from netrun import kernels
from netrun.kernels import pooling as P

needs_numba = pytest.mark.skipif(not kernels.numba_available(),
                                 reason="numba is not installed (the numpy kernels run)")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def twins(kernel, *args, **kw):
    """(numpy result, numba result) of one kernel on the same arguments."""
    return kernel.numpy(*args, **kw), kernel.numba(*args, **kw)


def same(a, b, what="", zero_signs=True):
    np.testing.assert_array_equal(a, b, err_msg=what)
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind == "f" and zero_signs:
        assert (np.signbit(a) == np.signbit(b)).all(), f"signs of zeros differ: {what}"


def test_the_engine_is_picked_in_one_place():
    assert kernels.engine() in kernels.ENGINES
    with kernels.use("numpy"):
        assert kernels.engine() == "numpy"
        assert "numpy" in repr(kernels.max_pool_select)
    with pytest.raises(ValueError, match="one of numpy, numba"):
        kernels.set_engine("fortran")


@pytest.mark.parametrize("env,expected", [("numpy", "numpy"), ("", None)])
def test_NETRUN_KERNELS_forces_an_engine(env, expected):
    code = "from netrun import kernels; print(kernels.engine())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, env=dict(os.environ, NETRUN_KERNELS=env), check=True)
    want = expected or ("numba" if kernels.numba_available() else "numpy")
    assert out.stdout.strip() == want


POOLS = [(9, 9, 3, 2, 0, True), (10, 7, 3, 2, 1, True), (11, 13, 3, 3, 1, False),
         (8, 8, 2, 2, 0, True), (12, 9, 5, 4, 2, True), (7, 7, 3, 1, 1, True),
         (5, 6, 4, 3, 0, True), (2, 3, 3, 2, 1, True), (7, 7, 7, 1, 0, True)]


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("H,W,k,s,p,ceil", POOLS)
def test_pooling_twins_agree_bit_for_bit(H, W, k, s, p, ceil, dtype):
    """MAX (values, first-maximum index, backward) and AVE (both passes): ties, NaN,
    -inf, an all -FLT_MAX plane and a NaN gradient included."""
    rng = np.random.default_rng(7)
    x = rng.integers(-3, 4, size=(2, 3, H, W)).astype(dtype)
    x[0, 0, 0, :2] = np.nan
    x[1, 2, -1, -1] = -np.inf
    x[0, 1] = -3.4028235e38
    x[1, 1, 0, 0] = -0.0
    g = P.PoolGeometry(H, W, (k, k), (s, s), (p, p), ceil)
    dy = rng.standard_normal((2, 3) + g.out_shape).astype(dtype)
    dy[0, 0, 0, 0] = np.nan
    (y0, s0), (y1, s1) = twins(kernels.max_pool_select, x, g)
    # a tie of -0.0 and +0.0: the compiled loop keeps the first (Caffe's value of
    # x[argmax]); numpy's fmax may return either zero
    same(y0, y1, "max", zero_signs=False)
    assert (np.signbit(y1) == np.signbit(x.reshape(6, -1)[
        np.arange(6)[:, None], np.maximum(s1.reshape(6, -1), 0)].reshape(y1.shape))
        | (s1 < 0)).all()
    same(kernels.select_to_index.numpy(s0, g, y0.shape),
         kernels.select_to_index.numba(s1, g, y1.shape), "index")
    same(kernels.max_pool_backward.numpy(dy, s0, g, np.empty_like(x)),
         kernels.max_pool_backward.numba(dy, s1, g, np.empty_like(x)), "max backward")
    with np.errstate(over="ignore", invalid="ignore"):
        same(*twins(kernels.ave_pool, x, g), "ave")
    same(*twins(kernels.ave_pool_backward, dy, g), "ave backward")
