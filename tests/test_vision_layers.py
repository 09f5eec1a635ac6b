"""Convolution, Deconvolution, Im2col, Pooling and SPP: gradients, size rules, Caffe details."""
import itertools

import numpy as np
import pytest

import netrun
from layer_helpers import build_layer, central_differences, forward_copies
from netrun.errors import LayerError
from netrun import kernels
from netrun.kernels import im2col
from netrun.layers import vision
from netrun.proto import caffe_pb2


def make(text, shapes, ntop=1, phase=caffe_pb2.TEST, dtype=np.float64, seed=0, data=None):
    rng = np.random.default_rng(seed + 1)
    arrays = [rng.standard_normal(s) if data is None else data[i] for i, s in enumerate(shapes)]

    def init(blobs):
        for p in blobs:
            p.data[...] = rng.standard_normal(p.shape)
    return build_layer(text, arrays, ntop, phase, dtype, seed, init_params=init)


run = forward_copies


def check_gradients(layer, bottom, top, seed=3, eps=1e-6, tol=1e-6):
    """Backward against central differences of L = sum(top[0] * R)."""
    run(layer, bottom, top)
    r = np.random.default_rng(seed).standard_normal(top[0].shape)
    top[0].diff[...] = r
    for p in layer.blobs:
        p.diff[...] = 0
    layer.backward(top, [True] * len(bottom), bottom)
    targets = [(b.data, b.diff.copy()) for b in bottom]
    targets += [(p.data, p.diff.copy()) for p in layer.blobs]
    for arr, analytic in targets:
        num = central_differences(arr, lambda: np.sum(run(layer, bottom, top)[0] * r), eps)
        np.testing.assert_allclose(analytic, num, rtol=tol, atol=tol)


def naive_conv(x, w, b, stride, pad, dil, group):
    """Direct N-d convolution, one output position at a time (tiny shapes only)."""
    N, C = x.shape[:2]
    O = w.shape[0]
    ksp = w.shape[2:]
    nsp = len(ksp)
    xp = np.pad(x, [(0, 0), (0, 0)] + [(p, p) for p in pad])
    out_sp = [(n + 2 * p - (d * (k - 1) + 1)) // s + 1
              for n, k, s, p, d in zip(x.shape[2:], ksp, stride, pad, dil)]
    y = np.zeros((N, O) + tuple(out_sp))
    cg, og = C // group, O // group
    for o in range(O):
        g = o // og
        for pos in np.ndindex(*out_sp):
            sl = tuple(slice(q * s, q * s + d * (k - 1) + 1, d)
                       for q, s, d, k in zip(pos, stride, dil, ksp))
            patch = xp[(slice(None), slice(g * cg, (g + 1) * cg)) + sl]
            y[(slice(None), o) + pos] = np.sum(patch * w[o], axis=tuple(range(1, 2 + nsp)))
    if b is not None:
        y += b.reshape((O,) + (1,) * nsp)
    return y


# -- convolution -----------------------------------------------------------------------
CONV_CASES = [
    ("num_output: 4 kernel_size: 3 pad: 1", (2, 3, 5, 4)),
    ("num_output: 6 kernel_size: 2 stride: 2 pad: 1 dilation: 2 group: 3", (2, 6, 6, 5)),
    ("num_output: 4 kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 group: 2",
     (1, 4, 5, 4)),
    ("num_output: 6 kernel_size: 3 pad: 1 group: 3 bias_term: false", (2, 3, 4, 4)),  # dw x2
    ("num_output: 3 kernel_size: 3 stride: 2 pad: 1 group: 3", (2, 3, 5, 5)),         # dw
    ("num_output: 5 kernel_size: 1", (3, 4, 2, 3)),                                   # 1x1
    ("num_output: 5 kernel_size: 1", (1, 4, 2, 3)),
]


@pytest.mark.parametrize("spec,shape", CONV_CASES)
def test_conv_matches_direct_and_gradients(spec, shape):
    layer, bottom, top, _ = make(f'type: "Convolution" convolution_param {{ {spec} }}',
                                 [shape])
    y = run(layer, bottom, top)[0]
    g = layer.geom
    ref = naive_conv(bottom[0].data, layer.blobs[0].data,
                     layer.blobs[1].data if layer.bias_term else None,
                     g.stride, g.pad, g.dilation, layer.group)
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)
    check_gradients(layer, bottom, top)


def test_conv_3d_and_per_axis_values():
    spec = ("num_output: 2 kernel_size: 2 kernel_size: 1 kernel_size: 2 "
            "stride: 1 stride: 2 stride: 1 pad: 0 pad: 1 pad: 1 "
            "dilation: 1 dilation: 1 dilation: 2")
    layer, bottom, top, _ = make(f'type: "Convolution" convolution_param {{ {spec} }}',
                                 [(2, 2, 3, 4, 4)])
    y = run(layer, bottom, top)[0]
    assert layer.blobs[0].shape == (2, 2, 2, 1, 2)
    ref = naive_conv(bottom[0].data, layer.blobs[0].data, layer.blobs[1].data,
                     (1, 2, 1), (0, 1, 1), (1, 1, 2), 1)
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)
    check_gradients(layer, bottom, top)


def test_conv_no_spatial_axes_is_a_matmul():
    layer, bottom, top, _ = make('type: "Convolution" convolution_param { num_output: 3 }',
                                 [(4, 5)])
    y = run(layer, bottom, top)[0]
    np.testing.assert_allclose(y, bottom[0].data @ layer.blobs[0].data.T + layer.blobs[1].data)


def test_conv_two_bottoms_share_weights_and_accumulate():
    layer, bottom, top, _ = make('type: "Convolution" convolution_param '
                                 '{ num_output: 2 kernel_size: 2 }', [(1, 2, 3, 3)] * 2, ntop=2)
    run(layer, bottom, top)
    for t in top:
        t.diff[...] = 1
    layer.backward(top, [True, True], bottom)
    both = layer.blobs[0].diff.copy()
    single, sb, st, _ = make('type: "Convolution" convolution_param '
                             '{ num_output: 2 kernel_size: 2 }', [(2, 2, 3, 3)],
                             data=[np.concatenate([b.data for b in bottom])])
    single.blobs[0].data[...] = layer.blobs[0].data
    run(single, sb, st)
    st[0].diff[...] = 1
    single.backward(st, [True], sb)
    np.testing.assert_allclose(both, single.blobs[0].diff)


def test_conv_chunked_column_buffer(monkeypatch):
    spec = 'type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 group: 2 }'
    layer, bottom, top, _ = make(spec, [(5, 4, 6, 6)])
    y = run(layer, bottom, top)[0]
    top[0].diff[...] = 1
    layer.backward(top, [True], bottom)
    dx, dw = bottom[0].diff.copy(), layer.blobs[0].diff.copy()
    monkeypatch.setattr(vision, "COL_BUFFER_BYTES", 1)        # one image at a time
    layer.blobs[0].diff[...] = 0
    np.testing.assert_allclose(run(layer, bottom, top)[0], y)
    layer.backward(top, [True], bottom)
    np.testing.assert_allclose(bottom[0].diff, dx)
    np.testing.assert_allclose(layer.blobs[0].diff, dw)


def test_conv_1x1_per_image_gemm(monkeypatch):
    spec = 'type: "Convolution" convolution_param { num_output: 4 kernel_size: 1 group: 2 }'
    layer, bottom, top, _ = make(spec, [(3, 4, 3, 2)])
    results = []
    for big in (10 ** 9, 1):                   # one transposed GEMM, then one per image
        monkeypatch.setattr(im2col, "_BIG_PLANE", big)
        layer.blobs[0].diff[...] = 0
        y = run(layer, bottom, top)[0]
        top[0].diff[...] = np.arange(top[0].count).reshape(top[0].shape)
        layer.backward(top, [True], bottom)
        results.append((y, bottom[0].diff.copy(), layer.blobs[0].diff.copy()))
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_conv_output_size_truncates_like_c():
    # (2 + 0 - 3) / 2 + 1 = 1 in C (truncation), 0 with floor division
    layer, bottom, top, _ = make('type: "Convolution" convolution_param '
                                 '{ num_output: 1 kernel_size: 3 stride: 2 bias_term: false }',
                                 [(1, 1, 2, 7)])
    assert top[0].shape == (1, 1, 1, 3)
    y = run(layer, bottom, top)[0]
    w = layer.blobs[0].data[0, 0]
    np.testing.assert_allclose(y[0, 0, 0, 0], np.sum(bottom[0].data[0, 0, :, 0:3] * w[:2]))


def test_conv_bad_params():
    with pytest.raises(LayerError):
        make('type: "Convolution" convolution_param { num_output: 3 kernel_size: 1 group: 2 }',
             [(1, 4, 3, 3)])
    with pytest.raises(LayerError):
        make('type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 '
             'kernel_h: 3 kernel_w: 3 }', [(1, 4, 3, 3)])
    with pytest.raises(LayerError):
        make('type: "Convolution" convolution_param { num_output: 2 kernel_size: 5 }',
             [(1, 1, 3, 3)])


# -- deconvolution -----------------------------------------------------------------------
@pytest.mark.parametrize("spec,shape,out", [
    ("num_output: 3 kernel_size: 4 stride: 2 pad: 1", (2, 2, 3, 2), (2, 3, 6, 4)),
    ("num_output: 4 kernel_size: 3 stride: 2 group: 2", (1, 4, 2, 3), (1, 4, 5, 7)),
    ("num_output: 2 kernel_size: 3 stride: 2 group: 2 bias_term: false", (1, 2, 2, 2),
     (1, 2, 5, 5)),
    ("num_output: 3 kernel_size: 2 dilation: 2 pad: 1", (1, 2, 3, 3), (1, 3, 3, 3)),
])
def test_deconv_is_conv_transpose(spec, shape, out):
    layer, bottom, top, _ = make(f'type: "Deconvolution" convolution_param {{ {spec} }}',
                                 [shape])
    y = run(layer, bottom, top)[0]
    assert y.shape == out
    assert layer.blobs[0].shape[:2] == (shape[1], out[1] // layer.group)
    # <deconv(x), r> == <x, conv(r)> with the same weights, no bias
    r = np.random.default_rng(7).standard_normal(out)
    g = layer.geom
    conv_r = naive_conv(r, layer.blobs[0].data, None, g.stride, g.pad, g.dilation, layer.group)
    y0 = y - (layer.blobs[1].data.reshape(-1, 1, 1) if layer.bias_term else 0)
    np.testing.assert_allclose(np.sum(y0 * r), np.sum(bottom[0].data * conv_r), rtol=1e-10)
    check_gradients(layer, bottom, top)


# -- im2col --------------------------------------------------------------------------------
def test_im2col_layout_and_gradient():
    layer, bottom, top, _ = make('type: "Im2col" convolution_param '
                                 '{ kernel_size: 2 stride: 2 pad: 1 dilation: 1 }', [(2, 3, 4, 3)])
    y = run(layer, bottom, top)[0]
    assert y.shape == (2, 12, 3, 2)
    xp = np.pad(bottom[0].data, [(0, 0), (0, 0), (1, 1), (1, 1)])
    for c, i, j in itertools.product(range(3), range(2), range(2)):
        np.testing.assert_array_equal(y[:, c * 4 + i * 2 + j], xp[:, c, i:i + 5:2, j:j + 3:2])
    check_gradients(layer, bottom, top)


# -- pooling -------------------------------------------------------------------------------
def pool(spec, shape, ntop=1, **kw):
    return make(f'type: "Pooling" pooling_param {{ {spec} }}', [shape], ntop=ntop, **kw)


@pytest.mark.parametrize("n,k,s,p,ceil,expected", [
    (6, 3, 2, 0, True, 3),     # ceil(3/2) + 1
    (5, 2, 2, 0, True, 3),     # ceil(3/2) + 1: the last window hangs over the edge
    (5, 2, 2, 0, False, 2),    # floor(3/2) + 1
    (6, 3, 2, 1, True, 4),     # ceil(5/2) + 1 = 4; (4-1)*2 = 6 < 6+1: kept
    (3, 3, 3, 2, True, 2),     # ceil(4/3) + 1 = 3; (3-1)*3 = 6 >= 3+2: dropped
    (2, 3, 2, 2, True, 2),     # ceil(3/2) + 1 = 3; (3-1)*2 = 4 >= 2+2: dropped
    (2, 3, 2, 2, False, 2),    # floor(3/2) + 1 = 2; 2 < 4: kept
    (2, 3, 2, 0, True, 1),     # kernel larger than the input: ceil(-1/2) + 1, one window
    (2, 3, 1, 0, True, 0),     # ceil(-1/1) + 1: nothing
])
def test_pool_output_size_rule(n, k, s, p, ceil, expected):
    g = vision.PoolGeometry(n, n, (k, k), (s, s), (p, p), ceil=ceil)
    assert (g.oh, g.ow) == (expected, expected)


def test_pool_round_mode_and_ceil_mode():
    layer, _, top, warns = pool("pool: MAX kernel_size: 2 stride: 2 round_mode: FLOOR",
                                (1, 1, 5, 5))
    assert top[0].shape == (1, 1, 2, 2) and not warns
    layer, _, top, warns = pool("pool: MAX kernel_size: 2 stride: 2 ceil_mode: false",
                                (1, 1, 5, 5))
    assert top[0].shape == (1, 1, 2, 2) and len(warns) == 1
    layer, _, top, warns = pool("pool: MAX kernel_size: 2 stride: 2", (1, 1, 5, 5))
    assert top[0].shape == (1, 1, 3, 3) and not warns


def test_max_pool_ties_nan_mask_and_padding():
    x = np.array([[1., 3., 3.], [3., np.nan, 0.], [-5., -6., -7.]]).reshape(1, 1, 3, 3)
    layer, bottom, top, _ = pool("pool: MAX kernel_size: 2 stride: 1 pad: 1", (1, 1, 3, 3),
                                 ntop=2, data=[x])
    y, mask = run(layer, bottom, top)
    assert y.shape == (1, 1, 4, 4)          # ceil(3/1) + 1, window 3 starts at 2 < 3+1
    # window at (1,1) covers x[0:2, 0:2] = 1 3 / 3 nan: first 3 wins (index 1)
    assert y[0, 0, 1, 1] == 3 and mask[0, 0, 1, 1] == 1
    # window (2,2) covers x[1:3, 1:3] = nan 0 / -6 -7 : NaN never wins
    assert y[0, 0, 2, 2] == 0 and mask[0, 0, 2, 2] == 5
    assert mask[0, 0, 0, 0] == 0 and y[0, 0, 0, 0] == 1    # padding is never chosen
    assert mask[0, 0, 3, 3] == 8 and y[0, 0, 3, 3] == -7
    top[0].diff[...] = 1
    layer.backward(top, [True], bottom)
    expect = np.zeros(9)
    np.add.at(expect, mask.ravel().astype(int), 1)
    np.testing.assert_array_equal(bottom[0].diff.ravel(), expect)


def test_max_pool_all_minus_inf_window():
    x = np.full((1, 1, 2, 2), -np.inf, np.float32)
    layer, bottom, top, _ = pool("pool: MAX global_pooling: true", (1, 1, 2, 2), ntop=2,
                                 data=[x], dtype=np.float32)
    y, mask = run(layer, bottom, top)
    assert y[0, 0, 0, 0] == -np.finfo(np.float32).max and mask[0, 0, 0, 0] == -1


@pytest.mark.parametrize("spec,shape", [
    ("pool: MAX kernel_size: 3 stride: 2", (2, 2, 5, 6)),
    ("pool: MAX kernel_h: 2 kernel_w: 3 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 1", (1, 2, 5, 4)),
    ("pool: AVE kernel_size: 3 stride: 2 pad: 1", (2, 2, 5, 6)),
    ("pool: AVE kernel_size: 2 stride: 2", (1, 2, 5, 5)),
    ("pool: AVE global_pooling: true", (2, 3, 3, 4)),
    ("pool: AVE global_pooling: true", (1, 2, 5, 5)),
    ("pool: MAX global_pooling: true", (2, 3, 5, 5)),
])
def test_pool_gradients(spec, shape):
    layer, bottom, top, _ = pool(spec, shape)
    check_gradients(layer, bottom, top)


def test_ave_pool_divides_by_padded_window():
    x = np.ones((1, 1, 3, 3))
    layer, bottom, top, _ = pool("pool: AVE kernel_size: 3 stride: 2 pad: 1", (1, 1, 3, 3),
                                 data=[x])
    y = run(layer, bottom, top)[0][0, 0]
    # window (0,0) holds 4 real pixels of 9 (all inside the padded input): 4/9;
    # window (1,1) starts at 1, ends min(4, 3+1) = 4: 3x3 = 9 of which 4 real
    np.testing.assert_allclose(y, np.full((2, 2), 4 / 9))
    layer, bottom, top, _ = pool("pool: AVE kernel_size: 2 stride: 2", (1, 1, 3, 3), data=[x])
    y = run(layer, bottom, top)[0][0, 0]   # no pad: last windows clipped to 3 -> size 2, 1
    np.testing.assert_allclose(y, [[1, 1], [1, 1]])


def test_stochastic_pool():
    x = np.random.default_rng(0).random((2, 2, 4, 5)).astype(np.float32) + 0.1
    layer, bottom, top, _ = pool("pool: STOCHASTIC kernel_size: 2 stride: 2", x.shape,
                                 data=[x], dtype=np.float32)
    y = run(layer, bottom, top)[0]
    win = np.pad(x, [(0, 0), (0, 0), (0, 0), (0, 1)]).reshape(2, 2, 2, 2, 3, 2)
    win = win.transpose(0, 1, 2, 4, 3, 5).reshape(2, 2, 2, 3, 4)
    np.testing.assert_allclose(y, (win ** 2).sum(-1) / win.sum(-1), rtol=1e-6)
    layer, bottom, top, _ = pool("pool: STOCHASTIC kernel_size: 2 stride: 2", x.shape,
                                 data=[x], dtype=np.float32, phase=caffe_pb2.TRAIN)
    y = run(layer, bottom, top)[0]
    assert np.all(np.any(np.isclose(win, y[..., None]), axis=-1))
    top[0].diff[...] = 1
    layer.backward(top, [True], bottom)
    d = bottom[0].diff
    assert d.sum() == y.size and set(np.unique(d)) <= {0.0, 1.0}
    np.testing.assert_array_equal(x[d == 1].sum(), y.sum())


def test_pool_bad_params():
    with pytest.raises(LayerError):
        pool("pool: MAX kernel_size: 2 pad: 2", (1, 1, 4, 4))
    with pytest.raises(LayerError):
        pool("pool: AVE kernel_size: 2", (1, 1, 4, 4), ntop=2)
    with pytest.raises(LayerError):
        pool("pool: MAX global_pooling: true kernel_size: 2", (1, 1, 4, 4))


# -- SPP -------------------------------------------------------------------------------------
def test_spp_levels_and_gradient():
    layer, bottom, top, _ = make('type: "SPP" spp_param { pyramid_height: 3 pool: MAX }',
                                 [(2, 2, 7, 6)])
    y = run(layer, bottom, top)[0]
    assert y.shape == (2, 2 * (1 + 4 + 16))
    x = bottom[0].data
    np.testing.assert_allclose(y[:, :2], x.max(axis=(2, 3)))
    # level 1: bins 2, kernel (4, 3), pad ((8-7+1)//2, 0) = (1, 0)
    g = vision.PoolGeometry(7, 6, (4, 3), (4, 3), (1, 0))
    np.testing.assert_allclose(y[:, 2:10].reshape(2, 2, 2, 2), vision.max_pool(x, g)[0])
    check_gradients(layer, bottom, top)
    layer, bottom, top, _ = make('type: "SPP" spp_param { pyramid_height: 2 pool: AVE }',
                                 [(1, 2, 5, 4)])
    check_gradients(layer, bottom, top)
    layer, bottom, top, _ = make('type: "SPP" spp_param { pyramid_height: 1 pool: AVE }',
                                 [(1, 2, 5, 4)])
    assert run(layer, bottom, top)[0].shape == (1, 2, 1, 1)


@pytest.mark.parametrize("H,W,k,s,p,d,num,G", [
    (14, 14, 3, 1, 1, 1, 1, 8), (15, 13, 3, 2, 1, 1, 2, 5), (7, 9, 5, 2, 2, 1, 3, 4),
    (9, 9, 3, 1, 2, 2, 1, 3), (8, 6, 3, 3, 0, 1, 2, 2), (6, 7, 3, 2, 0, 2, 2, 4),
    (1, 1, 3, 1, 1, 1, 2, 2)])
def test_depthwise_wide_layout_matches_the_offset_loop(H, W, k, s, p, d, num, G, monkeypatch):
    """The flat-plane (wide) depthwise backward kernels give the per-offset loop's
    numbers: the input gradient bit for bit (same order of sums), the weight
    gradient to float32 rounding (its sums run along whole planes).  The forward is
    the GEMM per group of every grouped convolution, checked against float64."""
    from netrun.kernels import depthwise
    from netrun.kernels.im2col import ConvGeometry
    rng = np.random.default_rng(0)
    g = ConvGeometry((k, k), (s, s), (p, p), (d, d))
    x = rng.standard_normal((num, G, H, W)).astype(np.float32)
    w = rng.standard_normal((G, 1, k, k)).astype(np.float32)
    osp = g.conv_out((H, W))
    dy = rng.standard_normal((num, G) + osp).astype(np.float32)

    def run():
        prep = g.prepare(x, osp, G, backward=True)
        return (prep[0], g.conv_backward_data(dy, w, G, (H, W)).copy(),
                g.conv_weight_grad(prep, dy, G, np.zeros_like(w)))
    kind, dx, dw = run()
    assert kind == "dw-wide"
    monkeypatch.setattr(depthwise, "wide_ok", lambda g, in_sp: False)
    kind0, dx0, dw0 = run()
    assert kind0 == "dw"
    np.testing.assert_array_equal(dx, dx0)
    np.testing.assert_allclose(dw, dw0, rtol=1e-5, atol=1e-5)
    y = g.conv_forward(g.prepare(x, osp, G), w, G, num, osp)
    cols = g.im2col(x.astype(np.float64), osp, G)                    # (G, num*P, K)
    ref = np.matmul(cols, w.reshape(G, -1, 1).astype(np.float64))[..., 0]
    ref = ref.reshape((G, num) + osp).transpose(1, 0, 2, 3)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("H,W,k,s,p,ceil", [
    (9, 9, 3, 2, 0, True), (10, 7, 3, 2, 1, True), (11, 13, 3, 3, 1, False),
    (8, 8, 2, 2, 0, True), (12, 9, 5, 4, 2, True), (7, 7, 3, 1, 1, True), (5, 6, 4, 3, 0, True),
    (2, 3, 3, 2, 1, True)])
def test_pool_phase_planes_match_the_offset_loop(H, W, k, s, p, ceil, monkeypatch):
    """Strided pooling on s x s phase planes (one contiguous slice per window offset)
    gives the per-offset loop's numbers bit for bit: MAX values and first-maximum
    index (ties, NaN, -inf and all -FLT_MAX windows included), AVE values and both
    backward passes."""
    from netrun.kernels import pooling as V
    rng = np.random.default_rng(7)
    x = rng.integers(-3, 4, size=(2, 3, H, W)).astype(np.float32)     # many ties
    x[0, 0, 0, :2] = np.nan
    x[1, 2, -1, -1] = -np.inf
    x[0, 1] = -3.4028235e38                                           # -FLT_MAX plane
    g = V.PoolGeometry(H, W, (k, k), (s, s), (p, p), ceil)
    dy = rng.standard_normal((2, 3) + g.out_shape).astype(np.float32)

    def run():
        y, sel = V.max_pool_select(x, g)
        idx = V.select_to_index(sel, g, y.shape)
        dx = V.max_pool_backward(dy, sel, g, np.empty_like(x))
        with np.errstate(over="ignore", invalid="ignore"):    # sums of -FLT_MAX: -inf
            ya = V.ave_pool(x, g)
        dxa = V.ave_pool_backward(dy, g)
        return y.copy(), idx.copy(), dx.copy(), ya.copy(), dxa.copy()
    assert V._WidePlan.usable(g, 6)
    with kernels.use("numpy"):
        wide = run()
        monkeypatch.setattr(V._WidePlan, "usable", staticmethod(lambda g, NC: False))
        loop = run()
    for a, b, what in zip(wide, loop, ("max", "index", "max backward", "ave", "ave backward")):
        np.testing.assert_array_equal(a, b, err_msg=what)


KEEP_NET = """
name: "keep"
force_backward: true
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 3 dim: 4 dim: 9 dim: 8 } } }
layer { name: "c1" type: "Convolution" bottom: "data" top: "c1"
        convolution_param { num_output: 6 kernel_size: 3 pad: 1
          weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "c2" type: "Convolution" bottom: "c1" top: "c2"
        convolution_param { num_output: 5 kernel_size: 1
          weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "c3" type: "Convolution" bottom: "c1" top: "c3"
        convolution_param { num_output: 4 kernel_size: 2 stride: 2
          weight_filler { type: "gaussian" std: 0.5 } } }
"""


@pytest.mark.parametrize("limit", [0, 1 << 30])
def test_convolutions_keep_their_columns_for_backward(limit, tmp_path, monkeypatch):
    """Keeping the forward's columns for the weight gradient gives the numbers of
    building them again (c2 is 1x1: its forward reads x itself, image by image, so
    there is nothing to keep); a forward-only net keeps nothing."""
    from netrun.layers import vision as V
    monkeypatch.setattr(V, "KEEP_COLS_BYTES", limit)
    path = tmp_path / "keep.prototxt"
    path.write_text(KEEP_NET)
    net = netrun.Net(str(path), phase="test", seed=2)
    x = np.random.default_rng(3).normal(size=(3, 4, 9, 8)).astype(np.float32)
    net.forward(data=x)
    kept = {n: net.layer_dict[n]._kept is not None for n in ("c1", "c2", "c3")}
    assert kept == {"c1": limit > 0, "c2": False, "c3": limit > 0}
    assert all(n.inputs_stable for n in net.layers)
    net.backward(c2=np.ones((3, 5, 9, 8), np.float32), c3=np.ones((3, 4, 4, 4), np.float32))
    grads = {n: net.params[n][0].diff.copy() for n in ("c1", "c2", "c3")}
    ref = netrun.Net(str(path), phase="test", seed=2)
    monkeypatch.setattr(V, "KEEP_COLS_BYTES", 0)
    ref.forward(data=x)
    ref.backward(c2=np.ones((3, 5, 9, 8), np.float32), c3=np.ones((3, 4, 4, 4), np.float32))
    for n, g in grads.items():
        np.testing.assert_array_equal(g, ref.params[n][0].diff, err_msg=n)
    monkeypatch.setattr(V, "KEEP_COLS_BYTES", limit)
    inference = netrun.Net(str(path), phase="test", seed=2, inference=True)
    inference.set_force_backward(False)
    inference.forward(data=x)
    assert all(inference.layer_dict[n]._kept is None for n in ("c1", "c2", "c3"))
