"""LRN, BatchNorm, Scale, Bias, MVN and Crop: gradients, Caffe conventions, statistics."""
import numpy as np
import pytest

from layer_helpers import build_layer, central_differences, forward_copies
from netrun.errors import LayerError
from netrun.proto import caffe_pb2


def make(text, shapes, phase=caffe_pb2.TEST, dtype=np.float64, seed=0, in_place=False,
         random_params=True):
    rng = np.random.default_rng(seed + 1)
    arrays = [rng.standard_normal(s) for s in shapes]

    def init(blobs):
        if random_params:
            for p in blobs:
                p.data[...] = 0.5 + rng.random(p.shape)
    return build_layer(text, arrays, 1, phase, dtype, seed, in_place, init)[:3]


def run(layer, bottom, top):
    return forward_copies(layer, bottom, top)[0]


def check_gradients(layer, bottom, top, params=True, eps=1e-6, tol=1e-6):
    """Backward against central differences of L = sum(top * R)."""
    run(layer, bottom, top)
    r = np.random.default_rng(7).standard_normal(top[0].shape)
    top[0].diff[...] = r
    for p in layer.blobs:
        p.diff[...] = 0
    layer.backward(top, [True] * len(bottom), bottom)
    targets = [(b.data, b.diff.copy()) for b in bottom]
    if params:
        targets += [(p.data, p.diff.copy()) for p in layer.blobs]
    for arr, analytic in targets:
        num = central_differences(arr, lambda: np.sum(run(layer, bottom, top) * r), eps)
        np.testing.assert_allclose(analytic, num, rtol=tol, atol=tol)


# -- LRN -------------------------------------------------------------------------------
def naive_lrn(x, n, alpha, beta, k, within):
    N, C, H, W = x.shape
    p = (n - 1) // 2
    y = np.zeros_like(x)
    for i, c, h, w in np.ndindex(*x.shape):
        if within:
            win = x[i, c, max(h - p, 0):h + p + 1, max(w - p, 0):w + p + 1]
            s = 1 + alpha * np.sum(win ** 2) / n ** 2
        else:
            win = x[i, max(c - p, 0):c + p + 1, h, w]
            s = k + alpha / n * np.sum(win ** 2)
        y[i, c, h, w] = x[i, c, h, w] * s ** -beta
    return y


@pytest.mark.parametrize("region", ["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
def test_lrn_forward_matches_definition(region):
    # alpha/beta are float32 proto fields: use values float32 holds exactly
    layer, bottom, top = make(f'type: "LRN" lrn_param {{ local_size: 3 alpha: 0.75 beta: 0.625 '
                              f'k: 1.5 norm_region: {region} }}', [(2, 5, 4, 3)])
    y = run(layer, bottom, top)
    ref = naive_lrn(bottom[0].data, 3, 0.75, 0.625, 1.5, region == "WITHIN_CHANNEL")
    np.testing.assert_allclose(y, ref, rtol=1e-12)


@pytest.mark.parametrize("region,size", [("ACROSS_CHANNELS", 3), ("ACROSS_CHANNELS", 5),
                                         ("WITHIN_CHANNEL", 3)])
def test_lrn_gradient(region, size):
    layer, bottom, top = make(f'type: "LRN" lrn_param {{ local_size: {size} alpha: 0.8 '
                              f'beta: 0.75 k: 2 norm_region: {region} }}', [(2, 4, 3, 3)])
    check_gradients(layer, bottom, top)


def test_lrn_in_place_keeps_input():
    text = 'type: "LRN" lrn_param { local_size: 3 alpha: 0.8 }'
    a, ab, at = make(text, [(1, 4, 2, 2)])
    b, bb, bt = make(text, [(1, 4, 2, 2)], in_place=True)
    run(a, ab, at)
    run(b, bb, bt)
    at[0].diff[...] = 1
    bt[0].diff[...] = 1
    a.backward(at, [True], ab)
    b.backward(bt, [True], bb)
    np.testing.assert_allclose(bb[0].diff, ab[0].diff)


def test_lrn_even_size_is_rejected():
    with pytest.raises(LayerError, match="odd"):
        make('type: "LRN" lrn_param { local_size: 4 }', [(1, 4, 2, 2)])


# -- BatchNorm ---------------------------------------------------------------------------
def test_batchnorm_train_gradient_and_no_param_gradient():
    layer, bottom, top = make('type: "BatchNorm"', [(3, 2, 2, 2)], phase=caffe_pb2.TRAIN)
    check_gradients(layer, bottom, top, params=False)
    assert all(not np.any(p.diff) for p in layer.blobs)


def test_batchnorm_global_gradient():
    layer, bottom, top = make('type: "BatchNorm" batch_norm_param { eps: 0.01 }', [(2, 3, 2)])
    assert layer.use_global
    check_gradients(layer, bottom, top, params=False)
    assert all(not np.any(p.diff) for p in layer.blobs)


def test_batchnorm_global_stats_formula():
    layer, bottom, top = make('type: "BatchNorm" batch_norm_param { eps: 0.001 }', [(2, 3, 4)])
    m, v = np.array([0.1, -0.2, 0.3]), np.array([0.5, 1.0, 2.0])
    layer.blobs[0].data[...] = 4 * m
    layer.blobs[1].data[...] = 4 * v
    layer.blobs[2].data[...] = 4
    y = run(layer, bottom, top)
    x = bottom[0].data
    np.testing.assert_allclose(y, (x - m[:, None]) / np.sqrt(v[:, None] + 0.001))
    layer.blobs[2].data[...] = 0                     # scale factor 0: mean = var = 0
    y = run(layer, bottom, top)
    np.testing.assert_allclose(y, x / np.sqrt(0.001))


def test_batchnorm_moving_average_update():
    layer, bottom, top = make('type: "BatchNorm" batch_norm_param { moving_average_fraction: 0.9 }',
                              [(2, 3, 2, 2)], phase=caffe_pb2.TRAIN, random_params=False)
    assert not layer.use_global
    assert [tuple(b.shape) for b in layer.blobs] == [(3,), (3,), (1,)]
    assert all(not np.any(b.data) for b in layer.blobs)           # start at zero
    x = bottom[0].data
    mean = x.mean(axis=(0, 2, 3))
    var = x.var(axis=(0, 2, 3))
    m = 2 * 2 * 2
    y = run(layer, bottom, top)
    np.testing.assert_allclose(layer.blobs[2].data, [1.0])
    np.testing.assert_allclose(layer.blobs[0].data, mean)
    np.testing.assert_allclose(layer.blobs[1].data, var * m / (m - 1))
    np.testing.assert_allclose(y, (x - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5),
                               rtol=1e-6)
    run(layer, bottom, top)
    np.testing.assert_allclose(layer.blobs[2].data, [1.9])
    np.testing.assert_allclose(layer.blobs[0].data, 1.9 * mean)
    np.testing.assert_allclose(layer.blobs[1].data, 1.9 * var * m / (m - 1))
    # in TEST the stored sums, divided by the scale factor, give back the batch statistics
    test, tb, tt = make('type: "BatchNorm"', [(2, 3, 2, 2)], random_params=False)
    for a, b in zip(test.blobs, layer.blobs):
        a.data[...] = b.data
    tb[0].data[...] = x
    np.testing.assert_allclose(run(test, tb, tt),
                               (x - mean[:, None, None]) / np.sqrt(var[:, None, None] * m / (m - 1)
                                                                   + 1e-5))


def test_batchnorm_adds_zero_lr_specs_and_rejects_learning():
    layer, _, _ = make('type: "BatchNorm"', [(2, 3)])
    assert [p.lr_mult for p in layer.param.param] == [0, 0, 0]
    layer, _, _ = make('type: "BatchNorm" param { lr_mult: 0 }', [(2, 3)])
    assert len(layer.param.param) == 3
    with pytest.raises(LayerError, match="batch normalization statistics"):
        make('type: "BatchNorm" param { lr_mult: 0 } param { lr_mult: 1 }', [(2, 3)])


def test_batchnorm_in_place_backward_uses_saved_output():
    layer, bottom, top = make('type: "BatchNorm"', [(4, 2)], phase=caffe_pb2.TRAIN,
                              in_place=True)
    x = bottom[0].data.copy()
    y = run(layer, bottom, top)
    top[0].data[...] = 123                            # a later in-place layer clobbers it
    top[0].diff[...] = 1
    layer.backward(top, [True], bottom)
    # dE/dy = 1 everywhere: the batch-statistics gradient is zero
    np.testing.assert_allclose(bottom[0].diff, 0, atol=1e-12)
    assert np.allclose(y, (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5))


# -- Scale / Bias ------------------------------------------------------------------------
SCALE_CASES = [
    ('scale_param { bias_term: true }', [(2, 3, 2, 2)]),
    ('scale_param { axis: 0 num_axes: 2 }', [(2, 3, 2)]),
    ('scale_param { axis: -1 num_axes: -1 bias_term: true }', [(2, 3, 2)]),
    ('scale_param { num_axes: 0 bias_term: true }', [(2, 3, 2)]),         # scalar
    ('scale_param { axis: 0 num_axes: -1 }', [(2, 3)]),                   # element-wise
    ('scale_param { axis: 0 }', [(2, 3, 2, 2), (2, 3)]),
    ('scale_param { axis: 1 bias_term: true }', [(2, 3, 2), (3, 2)]),
]


@pytest.mark.parametrize("spec,shapes", SCALE_CASES)
def test_scale_gradient(spec, shapes):
    layer, bottom, top = make(f'type: "Scale" {spec}', shapes)
    check_gradients(layer, bottom, top)


def test_scale_default_fillers_and_shapes():
    layer, _, _ = make('type: "Scale" scale_param { bias_term: true }', [(2, 3, 4)],
                       random_params=False)
    assert layer.blobs[0].shape == (3,) and np.all(layer.blobs[0].data == 1)
    assert layer.blobs[1].shape == (3,) and np.all(layer.blobs[1].data == 0)
    layer, _, _ = make('type: "Scale" scale_param { axis: 0 bias_term: true }', [(2, 3, 4), (2, 3)],
                       random_params=False)
    assert len(layer.blobs) == 1 and layer.blobs[0].shape == (2, 3)
    with pytest.raises(LayerError):
        make('type: "Scale"', [(2, 3, 4), (4, 3)])              # mismatch at axis 1


def test_scale_in_place_and_param_accumulates():
    text = 'type: "Scale" scale_param { bias_term: true }'
    a, ab, at = make(text, [(2, 3, 2)])
    b, bb, bt = make(text, [(2, 3, 2)], in_place=True)
    run(a, ab, at)
    run(b, bb, bt)
    for layer, bot, t in ((a, ab, at), (b, bb, bt)):
        t[0].diff[...] = 1
        for p in layer.blobs:
            p.diff[...] = 1
        layer.backward(t, [True], bot)
    np.testing.assert_allclose(bb[0].diff, ab[0].diff)
    for pa, pb in zip(a.blobs, b.blobs):
        np.testing.assert_allclose(pa.diff, pb.diff)
    np.testing.assert_allclose(a.blobs[1].diff, 1 + 4)       # += sum over outer * inner


@pytest.mark.parametrize("spec,shapes", [
    ('bias_param { axis: 1 num_axes: 1 }', [(2, 3, 2, 2)]),
    ('bias_param { axis: 0 num_axes: -1 }', [(2, 3)]),
    ('bias_param { num_axes: 0 }', [(2, 3)]),
    ('bias_param { axis: 1 }', [(2, 3, 2), (3, 2)]),
])
def test_bias_gradient(spec, shapes):
    layer, bottom, top = make(f'type: "Bias" {spec}', shapes)
    check_gradients(layer, bottom, top)


# -- MVN ---------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["", "mvn_param { across_channels: true }",
                                  "mvn_param { normalize_variance: false }",
                                  "mvn_param { eps: 0 }"])
def test_mvn_gradient(spec):
    layer, bottom, top = make(f'type: "MVN" {spec}', [(2, 3, 2, 2)])
    check_gradients(layer, bottom, top)


def test_mvn_divides_by_std_plus_eps_and_gives_4d_top():
    layer, bottom, top = make('type: "MVN" mvn_param { eps: 0.5 }', [(3, 4)])
    y = run(layer, bottom, top)
    assert y.shape == (3, 4, 1, 1)           # Caffe's legacy 4-D top shape
    # one value per (n, c) group: x - mean = 0, so y = 0 / (0 + eps)
    np.testing.assert_allclose(y, 0)
    layer, bottom, top = make('type: "MVN" mvn_param { eps: 0.5 across_channels: true }',
                              [(3, 4)])
    x = bottom[0].data
    xc = x - x.mean(1, keepdims=True)
    np.testing.assert_allclose(run(layer, bottom, top).reshape(3, 4),
                               xc / (np.sqrt((xc ** 2).mean(1, keepdims=True)) + 0.5))


# -- Crop --------------------------------------------------------------------------------
def test_crop_forward_backward():
    layer, bottom, top = make('type: "Crop" crop_param { axis: 2 offset: 1 offset: 2 }',
                              [(2, 3, 6, 5), (2, 3, 4, 2)])
    y = run(layer, bottom, top)
    np.testing.assert_array_equal(y, bottom[0].data[:, :, 1:5, 2:4])
    top[0].diff[...] = 1
    bottom[0].diff[...] = 7
    layer.backward(top, [True, True], bottom)
    expect = np.zeros((2, 3, 6, 5))
    expect[:, :, 1:5, 2:4] = 1
    np.testing.assert_array_equal(bottom[0].diff, expect)
    assert not np.any(bottom[1].diff)                  # no gradient to the reference


def test_crop_single_offset_and_errors():
    layer, bottom, top = make('type: "Crop" crop_param { axis: 1 offset: 1 }',
                              [(2, 4, 5), (9, 2, 3)])
    np.testing.assert_array_equal(run(layer, bottom, top), bottom[0].data[:, 1:3, 1:4])
    with pytest.raises(LayerError, match="out of bounds"):
        make('type: "Crop" crop_param { axis: 1 offset: 3 }', [(2, 4, 5), (2, 2, 3)])
    with pytest.raises(LayerError):
        make('type: "Crop" crop_param { axis: 1 offset: 1 offset: 1 offset: 1 }',
             [(2, 4, 5), (2, 2, 3)])
