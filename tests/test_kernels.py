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
         (5, 6, 4, 3, 0, True), (2, 3, 3, 2, 1, True), (7, 7, 7, 1, 0, True),
         (13, 13, 13, 1, 0, True)]


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


@needs_numba
def test_pooling_twins_agree_on_random_geometries():
    """Rectangular windows and strides, strides past the window and past the input, CEIL
    and FLOOR, with ties, NaN, -inf and -0.0: the compiled loops' phase layout gives the
    numpy twin's maxima, first-maximum indices and gradients (and the same maxima without
    indices, as inference runs it), and the same AVE sums to the last bit."""
    rng = np.random.default_rng(11)
    checked = 0
    while checked < 120:
        H, W = (int(v) for v in rng.integers(1, 16, 2))
        kh, kw = (int(v) for v in rng.integers(1, 7, 2))
        sh, sw = (int(v) for v in rng.integers(1, 8, 2))
        ph, pw = int(rng.integers(0, kh)), int(rng.integers(0, kw))
        if H + 2 * ph < kh or W + 2 * pw < kw:
            continue
        g = P.PoolGeometry(H, W, (kh, kw), (sh, sw), (ph, pw), bool(rng.integers(0, 2)))
        if g.oh <= 0 or g.ow <= 0:
            continue
        x = rng.integers(-2, 3, size=(2, 3, H, W)).astype(np.float32)
        x[rng.random(x.shape) < 0.08] = np.nan
        x[rng.random(x.shape) < 0.08] = -np.inf
        where = f"{H}x{W} kernel {kh}x{kw} stride {sh}x{sw} pad {ph}x{pw}"
        (y0, s0), (y1, s1) = twins(kernels.max_pool_select, x, g)
        same(y0, y1, "max " + where, zero_signs=False)
        same(kernels.select_to_index.numpy(s0, g, y0.shape),
             kernels.select_to_index.numba(s1, g, y1.shape), "index " + where)
        dy = rng.standard_normal(y0.shape).astype(np.float32)
        same(kernels.max_pool_backward.numpy(dy, s0, g, np.empty_like(x)),
             kernels.max_pool_backward.numba(dy, s1, g, np.empty_like(x)), "backward " + where)
        same(kernels.max_pool_select.numba(x, g, select=False)[0], y0,
             "max without indices " + where, zero_signs=False)
        x[rng.random(x.shape) < 0.08] = -0.0
        x[rng.random(x.shape) < 0.3] *= np.float32(0.37)
        with np.errstate(invalid="ignore"):
            same(*twins(kernels.ave_pool, x, g), "ave " + where)
        checked += 1


CONVS = [((2, 3, 9, 8), 3, 1, 1, 1), ((1, 4, 11, 7), 3, 2, 1, 1), ((2, 2, 10, 10), 5, 2, 2, 1),
         ((1, 3, 9, 9), 3, 1, 2, 2), ((3, 2, 6, 5), 2, 3, 0, 1), ((1, 2, 4, 4), 7, 1, 3, 1)]


@needs_numba
@pytest.mark.parametrize("shape,k,s,p,d", CONVS)
def test_im2col_col2im_and_bias_twins_agree_bit_for_bit(shape, k, s, p, d):
    from netrun.kernels.im2col import ConvGeometry, add_bias, col2im_sum, im2col_copy
    rng = np.random.default_rng(3)
    g = ConvGeometry((k, k), (s, s), (p, p), (d, d))
    x = rng.standard_normal(shape).astype(np.float32)
    x[0, 0, 0, 0] = -0.0
    num, C = shape[:2]
    out_sp = g.conv_out(shape[2:])
    cshape = (C,) + g.kernel + (num,) + out_sp
    c0, c1 = np.full(cshape, 7, np.float32), np.full(cshape, 7, np.float32)
    im2col_copy.numpy(g, x, c0)
    im2col_copy.numba(g, x, c1)
    same(c0, c1, "im2col")
    cols = rng.standard_normal(cshape).astype(np.float32)
    view = g.cols_view(cols.reshape(C * g.K, -1), C, num, out_sp)      # strided, as conv
    a0, a1 = np.full(shape, 7, np.float32), np.full(shape, 7, np.float32)
    col2im_sum.numpy(g, view, shape[2:], out_sp, a0)
    col2im_sum.numba(g, view, shape[2:], out_sp, a1)
    same(a0, a1, "col2im")
    # the bias add after Caffe's GEMM, in place on (num, C, P)
    y = rng.standard_normal((num, 5, 70)).astype(np.float32)
    y[0, 0, :3] = (np.nan, -0.0, np.inf)
    bias = rng.standard_normal(5).astype(np.float32)
    bias[1] = -0.0
    y0, y1 = y.copy(), y.copy()
    add_bias.numpy(y0, bias)
    add_bias.numba(y1, bias)
    same(y0, y1, "bias")


@needs_numba
@pytest.mark.parametrize("size", [1, 3, 5, 11])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lrn_twins_agree_bit_for_bit(size, dtype):
    """The window sums and the backward bit for bit; x^-beta: the compiled twin calls
    the C library's powf (Caffe's), the numpy twin rounds the float64 power once --
    at most an ulp apart."""
    rng = np.random.default_rng(5)
    shape = (2, 7, 3 * 37)
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    fwd = {}
    for engine in ("numpy", "numba"):
        s, p, y = (np.empty(shape, dtype) for _ in range(3))
        getattr(kernels.lrn_across_forward, engine)(x, s, p, y, size, (size - 1) // 2, 1e-4,
                                                     dtype(-0.75), 2.0)
        fwd[engine] = (s, p, y)
    (s0, p0, y0), (s1, p1, y1) = fwd["numpy"], fwd["numba"]
    same(s0, s1, "scale")
    assert np.all(np.abs(p0 - p1) <= np.spacing(np.abs(p1))), "power: more than an ulp apart"
    same(y1, x * p1, "y = x * p")
    same(y0, x * p0, "y = x * p (numpy)")
    if dtype == np.float32:                                # powf itself, from the C library
        powf = _libm_powf()
        if powf is not None:
            ref = np.array([powf(float(v), -0.75) for v in s1.ravel()[:2000]], np.float32)
            same(p1.ravel()[:2000], ref, "powf")
    dxs = []
    for engine in ("numpy", "numba"):                      # backward from the same forward
        dx = dy.copy()                                     # in place: dx is dy
        getattr(kernels.lrn_across_backward, engine)(x, dx, s1, p1, dx, size, (size - 1) // 2,
                                                      dtype(2 * 1e-4 * 0.75 / size))
        dxs.append(dx)
    same(*dxs, "dx")


def _libm_powf():
    import ctypes
    import ctypes.util
    name = ctypes.util.find_library("m")
    if name is None:
        return None
    try:
        f = ctypes.CDLL(name).powf
    except (OSError, AttributeError):
        return None
    f.restype, f.argtypes = ctypes.c_float, [ctypes.c_float, ctypes.c_float]
    return f


@needs_numba
@pytest.mark.parametrize("H,W,k,s,p,d,num,G", [
    (7, 7, 3, 1, 1, 1, 2, 3), (8, 9, 3, 2, 1, 1, 1, 4), (9, 9, 3, 1, 2, 2, 1, 3),
    (8, 6, 3, 3, 0, 1, 2, 2), (6, 7, 5, 2, 2, 1, 2, 4), (1, 1, 3, 1, 1, 1, 2, 2)])
def test_depthwise_backward_twins(H, W, k, s, p, d, num, G):
    """The input gradient bit for bit; the weight gradient (float64 sums in the
    compiled twin) to float32 rounding."""
    from netrun.kernels.im2col import ConvGeometry
    rng = np.random.default_rng(0)
    g = ConvGeometry((k, k), (s, s), (p, p), (d, d))
    x = rng.standard_normal((num, G, H, W)).astype(np.float32)
    w = rng.standard_normal((G, 1, k, k)).astype(np.float32)
    dy = rng.standard_normal((num, G) + g.conv_out((H, W))).astype(np.float32)
    dx0, dx1 = (np.full(x.shape, 7, np.float32) for _ in range(2))
    kernels.dw_wide_backward_data.numpy(g, dy, w, (H, W), dx0)
    kernels.dw_wide_backward_data.numba(g, dy, w, (H, W), dx1)
    same(dx0, dx1, "dx")
    dw0, dw1 = twins(kernels.dw_wide_weight_grad, g, x, dy)
    ref = twins(kernels.dw_wide_weight_grad, g, x.astype(np.float64), dy.astype(np.float64))[0]
    np.testing.assert_allclose(dw1, ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dw0, dw1, rtol=1e-5, atol=1e-5)


@needs_numba
def test_a_read_only_install_caches_compiled_kernels_in_the_user_cache(tmp_path, monkeypatch):
    import numba
    from netrun.kernels import select
    monkeypatch.setattr(numba.config, "CACHE_DIR", "")       # restored afterwards
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(select.os, "access", lambda path, mode: False)
    select._prepare_numba()
    want = str(tmp_path / "netrun" / "numba")
    assert os.environ["NUMBA_CACHE_DIR"] == want
    assert numba.config.CACHE_DIR == want


def test_small_calls_run_the_numpy_twin_by_default(monkeypatch):
    from netrun.kernels import select
    calls = []
    k = select.kernel(lambda a: calls.append("numpy"), lambda a: calls.append("numba"))
    monkeypatch.setattr(select, "_engine", "numba")
    monkeypatch.setattr(select, "_min_bytes", None)
    k(np.zeros(4, np.float32))
    k(np.zeros(select.MIN_COMPILED_BYTES // 4, np.float32))
    monkeypatch.setattr(select, "_min_bytes", 0)                    # NETRUN_KERNELS=numba
    k(np.zeros(4, np.float32))
    assert calls == ["numpy", "numba", "numba"]


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_element_wise_twins_agree_bit_for_bit(dtype):
    rng = np.random.default_rng(9)
    n = 3000
    arrays = [rng.standard_normal(n).astype(dtype) * 10 ** k for k in range(4)]
    arrays[1][:3] = (np.nan, np.inf, -0.0)
    for count in (2, 3, 4):
        o0, o1 = np.empty(n, dtype), np.empty(n, dtype)
        kernels.sum_into.numpy(o0, arrays[:count])
        kernels.sum_into.numba(o1, arrays[:count])
        same(o0, o1, f"sum of {count}")
    i0, i1 = arrays[0].copy(), arrays[0].copy()                 # out += b, in place
    kernels.sum_into.numpy(i0, [i0, arrays[1]])
    kernels.sum_into.numba(i1, [i1, arrays[1]])
    same(i0, i1, "sum in place")
    x = rng.standard_normal(n).astype(dtype)
    x[:4] = (0.0, -0.0, np.nan, -np.inf)
    dy = rng.standard_normal(n).astype(dtype)
    dy[4:8] = (np.nan, np.inf, -np.inf, -0.0)
    x[4:8] = (-1, -1, 1, -1)
    d0, d1 = np.empty(n, dtype), dy.copy()
    with np.errstate(invalid="ignore"):                       # inf * 0, as Caffe
        kernels.relu_backward.numpy(dy, x, d0)
    kernels.relu_backward.numba(d1, x, d1)                    # in place
    same(d0, d1, "relu backward")
    y0, y1 = np.empty(n, dtype), x.copy()
    kernels.relu_forward.numpy(x, y0)
    kernels.relu_forward.numba(y1, y1)                        # in place
    same(y0, y1, "relu forward")


@needs_numba
def test_ordered_sums_of_many_arrays_agree_bit_for_bit():
    rng = np.random.default_rng(2)
    arrays = [(rng.standard_normal(5000) * 10 ** (k % 5)).astype(np.float32) for k in range(7)]
    for count in (5, 7):
        o0, o1 = np.empty(5000, np.float32), np.empty(5000, np.float32)
        kernels.sum_into.numpy(o0, arrays[:count])
        kernels.sum_into.numba(o1, arrays[:count])
        same(o0, o1, f"sum of {count}")


def test_a_broken_numba_falls_back_to_the_numpy_twins(monkeypatch):
    from netrun.kernels import select

    def broken():
        raise ImportError("numba needs numpy < 2.5")
    calls = []
    k = select.kernel(lambda a: calls.append("numpy"), lambda a: calls.append("numba"))
    monkeypatch.setattr(select, "_engine", "numba")
    monkeypatch.setattr(select, "_min_bytes", 0)
    monkeypatch.setattr(select, "_numba_state", None)
    monkeypatch.setattr(select, "_prepare_numba", broken)
    with pytest.warns(UserWarning, match="numba cannot be imported"):
        k(np.zeros(4))
    k(np.zeros(4))
    assert calls == ["numpy", "numpy"] and select.engine() == "numpy"


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_chain_step_twins_agree_bit_for_bit(dtype):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 6, 50)).astype(dtype)
    x[0, 0, :3] = (np.nan, -0.0, np.inf)
    m, s, b = (rng.standard_normal(6).astype(dtype) for _ in range(3))
    s[1] = 0
    view = (slice(None), slice(1, 5))                       # a channel range, as the chains
    for kern, args in ((kernels.normalize, (m[1:5], s[1:5])),
                       (kernels.scale_bias, (s[1:5], b[1:5])),
                       (kernels.scale_bias, (s[1:5], None))):
        o0, o1 = np.zeros_like(x), np.zeros_like(x)
        with np.errstate(all="ignore"):
            kern.numpy(x[view], *args, o0[view])
            kern.numba(x[view], *args, o1[view])
        same(o0, o1, kern.__name__)
        i1 = x.copy()                                       # in place (the chains' case)
        with np.errstate(all="ignore"):
            kern.numba(i1[view], *args, i1[view])
        same(o0[view], i1[view], kern.__name__ + " in place")


@pytest.mark.parametrize("M,K,N", [(64, 300, 57), (7, 1, 33), (16, 49, 2)])
def test_gemm_acc_is_a_beta_one_gemm(M, K, N, monkeypatch):
    """kernels.blas.gemm_acc: c += a @ b in one GEMM with beta = 1 (Caffe's
    accumulation), whatever the operands' layouts.  Into zeros it is numpy's matmul to
    float32 rounding (OpenBLAS's small-matrix kernels for beta = 0 and 1, and for each
    transposition, may sum in other orders); without a reachable OpenBLAS the
    scratch-buffer path gives numpy's c + a @ b bit for bit."""
    from netrun.kernels import blas
    rng = np.random.default_rng(7)
    a = rng.standard_normal((M, K)).astype(np.float32)
    b = rng.standard_normal((K, N)).astype(np.float32)
    c0 = rng.standard_normal((M, N)).astype(np.float32)
    results = []
    for aa in (a, np.asfortranarray(a)):
        for bb in (b, np.asfortranarray(b), np.repeat(b, 2, axis=1)[:, ::2]):   # strided
            z = np.zeros((M, N), np.float32)
            np.testing.assert_allclose(blas.gemm_acc(aa, bb, z), a @ b, rtol=1e-5, atol=1e-5)
            c = c0.copy()
            blas.gemm_acc(aa, bb, c)
            results.append(c)
    for r in results:
        np.testing.assert_allclose(r, c0 + a @ b, rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(blas, "_cblas", {})                       # no BLAS found
    c = c0.copy()
    blas.gemm_acc(a, b, c)
    same(c, c0 + a @ b, "fallback")


def test_gemm_with_one_row_is_a_gemm(monkeypatch):
    """kernels.blas.gemm: c = a @ b as a GEMM even for one row (InnerProduct at batch 1,
    as Caffe calls it), numpy's product to float32 rounding; without a reachable OpenBLAS,
    numpy's matmul itself."""
    from netrun.kernels import blas
    rng = np.random.default_rng(8)
    a = rng.standard_normal((1, 300)).astype(np.float32)
    w = rng.standard_normal((40, 300)).astype(np.float32)
    c = np.full((1, 40), 7, np.float32)
    blas.gemm(a, w.T, c)
    np.testing.assert_allclose(c, a @ w.T, rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(blas, "_cblas", {})
    blas.gemm(a, w.T, c)
    same(c, a @ w.T, "fallback")
