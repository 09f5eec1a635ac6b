"""Neuron and common layers: numeric gradients (float64, tiny shapes), in-place runs,
Dropout statistics, Reshape/Flatten/Slice/Concat shape rules, ArgMax/Accuracy order."""
import numpy as np
import pytest
from google.protobuf import text_format

from layer_helpers import build_layer, central_differences, forward_copies
from netrun.blob import Blob
from netrun.errors import LayerError
from netrun.layers import Context, layer_class
from netrun.proto import caffe_pb2


def away_from_zero(shape, rng, gap=0.2):
    """Normal values pushed at least ``gap`` away from 0 (no kinks within the step)."""
    x = rng.standard_normal(shape)
    return np.sign(x) * (np.abs(x) + gap)


def make(text, data, ntop=1, phase=caffe_pb2.TEST, dtype=np.float64, seed=0, in_place=False,
         params=None):
    """Build a layer from prototxt text with bottoms holding ``data`` (list of arrays)."""
    def init(blobs):
        rng = np.random.default_rng(seed + 7)
        for k, p in enumerate(blobs):
            if params is not None and k < len(params):
                p.data[...] = params[k]
            else:
                p.data[...] = rng.standard_normal(p.shape) * 0.5
    return build_layer(text, data, ntop, phase, dtype, seed, in_place, init, check_counts=True)


run = forward_copies


def grads(layer, bottom, top, rs, propagate=None):
    """Analytic gradients of L = sum_i sum(top_i * r_i): bottoms' then params' diffs."""
    run(layer, bottom, top)
    for t, r in zip(top, rs):
        t.diff[...] = r
    for p in layer.blobs:
        p.diff[...] = 0
    propagate = propagate if propagate is not None else [True] * len(bottom)
    layer.backward(top, propagate, bottom)
    return ([b.diff.copy() for b in bottom], [p.diff.copy() for p in layer.blobs])


def check_gradients(layer, bottom, top, which=None, seed=3, eps=1e-6, tol=1e-6):
    """Backward against central differences of L = sum_i sum(top_i * r_i)."""
    rng = np.random.default_rng(seed)
    out = run(layer, bottom, top)
    rs = [rng.standard_normal(o.shape) for o in out]
    which = list(range(len(bottom))) if which is None else which
    propagate = [i in which for i in range(len(bottom))]
    gb, gp = grads(layer, bottom, top, rs, propagate)
    targets = [(bottom[i].data, gb[i]) for i in which] + [(p.data, g) for p, g in
                                                           zip(layer.blobs, gp)]

    def loss():
        return sum(np.sum(o * r) for o, r in zip(run(layer, bottom, top), rs))

    for arr, analytic in targets:
        np.testing.assert_allclose(analytic, central_differences(arr, loss, eps),
                                   rtol=tol, atol=tol)


RNG = np.random.default_rng(42)
X = away_from_zero((2, 3, 2, 2), RNG)
POS = np.abs(X) + 0.3

NEURON_CASES = [
    ('type: "PReLU"', X),
    ('type: "PReLU" prelu_param { channel_shared: true }', X),
    ('type: "ELU" elu_param { alpha: 0.7 }', X),
    ('type: "ELU" elu_param { alpha: -0.4 }', X),
    ('type: "Power" power_param { power: 2 scale: 0.5 shift: 1 }', X),
    ('type: "Power" power_param { power: 2 scale: -1.5 }', X),
    ('type: "Power" power_param { power: 3 scale: 0.7 }', X),
    ('type: "Power" power_param { power: 0.5 scale: 2 shift: 0.5 }', POS),
    ('type: "Power" power_param { power: -1.5 scale: 1.5 shift: 0.2 }', POS),
    ('type: "Power" power_param { power: 1 scale: -2 shift: 0.3 }', X),
    ('type: "Power" power_param { power: 0 scale: 2 shift: 3 }', X),
    ('type: "Power" power_param { power: 2 scale: 0 shift: 3 }', X),
    ('type: "Exp"', X),
    ('type: "Exp" exp_param { base: -1 scale: 0.5 shift: 0.1 }', X),
    ('type: "Exp" exp_param { base: 2 scale: -0.7 shift: 0.3 }', X),
    ('type: "Log"', POS),
    ('type: "Log" log_param { base: 2 scale: 1.5 shift: 0.2 }', POS),
    ('type: "Log" log_param { base: 10 scale: 1 shift: 0 }', POS),
    ('type: "AbsVal"', X),
    ('type: "BNLL"', X * 3),
    ('type: "Clip" clip_param { min: -0.5 max: 0.7 }', X),
    ('type: "Swish"', X),
    ('type: "Swish" swish_param { beta: 1.5 }', X),
    ('type: "TanH"', X),
    ('type: "Dropout" dropout_param { dropout_ratio: 0.3 }', X),
]


@pytest.mark.parametrize("text,x", NEURON_CASES, ids=[c[0] for c in NEURON_CASES])
def test_neuron_gradients(text, x):
    layer, bottom, top, _ = make(text, [x])
    check_gradients(layer, bottom, top)


@pytest.mark.parametrize("text,x", NEURON_CASES, ids=[c[0] for c in NEURON_CASES])
def test_neuron_in_place_matches(text, x):
    """In place gives the same output and the true gradients (netrun keeps what it needs)."""
    if "AbsVal" in text:
        with pytest.raises(LayerError, match="in-place"):
            make(text, [x], in_place=True)
        return
    rng = np.random.default_rng(5)
    r = rng.standard_normal(x.shape)
    ref, rb, rt, _ = make(text, [x], seed=1)
    y_ref = run(ref, rb, rt)[0]
    gb_ref, gp_ref = grads(ref, rb, rt, [r])
    layer, bottom, top, _ = make(text, [x], seed=1, in_place=True,
                                 params=[p.data for p in ref.blobs])
    assert top[0] is bottom[0]
    y = run(layer, bottom, top)[0]
    top[0].diff[...] = r
    for p in layer.blobs:
        p.diff[...] = 0
    layer.backward(top, [True], bottom)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(bottom[0].diff, gb_ref[0], rtol=1e-12, atol=1e-12)
    for p, g in zip(layer.blobs, gp_ref):
        np.testing.assert_allclose(p.diff, g, rtol=1e-12, atol=1e-12)


def test_prelu_values_and_defaults():
    layer, bottom, top, _ = make('type: "PReLU"', [X])
    # default filler 0.25 unless overwritten: build without the random params
    lp = text_format.Parse('type: "PReLU"', caffe_pb2.LayerParameter())
    fresh = layer_class("PReLU")(lp, Context(caffe_pb2.TEST, np.float64))
    b, t = Blob(X.shape, np.float64), Blob((), np.float64)
    b.data[...] = X
    fresh.setup([b], [t])
    assert fresh.blobs[0].shape == (3,)
    np.testing.assert_array_equal(fresh.blobs[0].data, 0.25)
    shared = layer_class("PReLU")(text_format.Parse(
        'type: "PReLU" prelu_param { channel_shared: true }', caffe_pb2.LayerParameter()),
        Context(caffe_pb2.TEST, np.float64))
    shared.setup([b], [t])
    assert shared.blobs[0].shape == ()
    a = layer.blobs[0].data.reshape(1, 3, 1, 1)
    y = run(layer, bottom, top)[0]
    np.testing.assert_allclose(y, np.where(X > 0, X, a * X))
    with pytest.raises(LayerError, match="at least 2 axes"):
        make('type: "PReLU"', [np.ones(4)])


def test_neuron_values():
    x = np.array([[-2.0, -0.5, 0.0, 0.5, 0.7, 3.0]])
    y = run(*make('type: "Threshold" threshold_param { threshold: 0.5 }', [x])[:3])[0]
    np.testing.assert_array_equal(y, [[0, 0, 0, 0, 1, 1]])
    assert not layer_class("Threshold").has_backward
    x = np.array([[-2.0, -0.5, 0.0, 0.5, 0.75, 3.0]])
    y = run(*make('type: "Clip" clip_param { min: -0.5 max: 0.75 }', [x])[:3])[0]
    np.testing.assert_array_equal(y, [[-0.5, -0.5, 0, 0.5, 0.75, 0.75]])
    # both ends of the clip range pass the gradient
    layer, bottom, top, _ = make('type: "Clip" clip_param { min: -0.5 max: 0.75 }', [x])
    gb, _ = grads(layer, bottom, top, [np.ones_like(x)])
    np.testing.assert_array_equal(gb[0], [[0, 1, 1, 1, 1, 0]])
    # AbsVal: sign(0) = 0
    layer, bottom, top, _ = make('type: "AbsVal"', [x])
    gb, _ = grads(layer, bottom, top, [np.ones_like(x)])
    np.testing.assert_array_equal(gb[0], np.sign(x))
    # BNLL: softplus, no overflow
    big = np.array([[-100.0, -1.0, 0.0, 1.0, 100.0]])
    y = run(*make('type: "BNLL"', [big])[:3])[0]
    np.testing.assert_allclose(y, np.logaddexp(0, big))
    layer, bottom, top, _ = make('type: "BNLL"', [big])
    gb, _ = grads(layer, bottom, top, [np.ones_like(big)])
    assert np.all(np.isfinite(gb[0]))
    # Power: power 0 gives 1, scale 0 gives shift^power; both have zero gradient
    for text, value in (('power: 0 scale: 2 shift: 3', 1.0), ('power: 2 scale: 0 shift: 3', 9.0)):
        layer, bottom, top, _ = make(f'type: "Power" power_param {{ {text} }}', [x])
        np.testing.assert_array_equal(run(layer, bottom, top)[0], value)
        gb, _ = grads(layer, bottom, top, [np.ones_like(x)])
        np.testing.assert_array_equal(gb[0], 0)
    # Exp base 2 with shift, Log base 2
    y = run(*make('type: "Exp" exp_param { base: 2 scale: 3 shift: 1 }', [x])[:3])[0]
    np.testing.assert_allclose(y, 2.0 ** (1 + 3 * x))
    y = run(*make('type: "Log" log_param { base: 2 scale: 3 shift: 7 }', [x])[:3])[0]
    np.testing.assert_allclose(y, np.log2(7 + 3 * x))
    # ELU and Swish values
    y = run(*make('type: "ELU" elu_param { alpha: 0.5 }', [x])[:3])[0]
    np.testing.assert_allclose(y, np.where(x > 0, x, 0.5 * (np.exp(x) - 1)))
    y = run(*make('type: "Swish" swish_param { beta: 2 }', [x])[:3])[0]
    np.testing.assert_allclose(y, x / (1 + np.exp(-2 * x)))


def test_float32_neurons_stay_float32():
    for text, x in NEURON_CASES:
        layer, bottom, top, _ = make(text, [x.astype(np.float32)], dtype=np.float32)
        y = run(layer, bottom, top)[0]
        assert y.dtype == np.float32
        top[0].diff[...] = 1
        layer.backward(top, [True], bottom)
        assert bottom[0].diff.dtype == np.float32


# -- Dropout ------------------------------------------------------------------------------

def test_dropout_train_statistics_and_scaling():
    x = np.ones((50, 40, 10))
    layer, bottom, top, _ = make('type: "Dropout" dropout_param { dropout_ratio: 0.3 }', [x],
                                 phase=caffe_pb2.TRAIN)
    y = run(layer, bottom, top)[0]
    kept = y != 0
    assert abs(kept.mean() - 0.7) < 0.01                    # 20000 draws: sd 0.0032
    np.testing.assert_allclose(y[kept], 1 / 0.7)
    r = np.random.default_rng(0).standard_normal(x.shape)
    top[0].diff[...] = r
    layer.backward(top, [True], bottom)
    np.testing.assert_allclose(bottom[0].diff, np.where(kept, r / 0.7, 0))
    # a new forward draws a new mask
    y2 = run(layer, bottom, top)[0]
    assert not np.array_equal(y2 != 0, kept)


def test_dropout_test_phase_is_identity():
    layer, bottom, top, _ = make('type: "Dropout" dropout_param { dropout_ratio: 0.4 }', [X])
    np.testing.assert_array_equal(run(layer, bottom, top)[0], X)
    gb, _ = grads(layer, bottom, top, [X * 2])
    np.testing.assert_array_equal(gb[0], X * 2)
    # in place
    layer, bottom, top, _ = make('type: "Dropout"', [X], in_place=True)
    np.testing.assert_array_equal(run(layer, bottom, top)[0], X)


def test_dropout_scale_train_false_when_schema_has_it():
    if "scale_train" not in caffe_pb2.DropoutParameter.DESCRIPTOR.fields_by_name:
        pytest.skip("this schema has no dropout_param.scale_train")
    text = 'type: "Dropout" dropout_param { dropout_ratio: 0.25 scale_train: false }'
    layer, bottom, top, _ = make(text, [X])
    np.testing.assert_allclose(run(layer, bottom, top)[0], X * 0.75)
    layer, bottom, top, _ = make(text, [np.ones((20, 50))], phase=caffe_pb2.TRAIN)
    y = run(layer, bottom, top)[0]
    assert set(np.unique(y)) <= {0.0, 1.0}


def test_dropout_bad_ratio():
    with pytest.raises(LayerError, match="dropout_ratio"):
        make('type: "Dropout" dropout_param { dropout_ratio: 1.5 }', [X])


# -- shape layers -------------------------------------------------------------------------

COMMON_CASES = [
    ('type: "Concat"', [X, RNG.standard_normal((2, 2, 2, 2))], 1),
    ('type: "Concat" concat_param { axis: -1 }', [X, RNG.standard_normal((2, 3, 2, 3))], 1),
    ('type: "Concat" concat_param { concat_dim: 0 }', [X, X + 1, X - 1], 1),
    ('type: "Concat"', [X], 1),
    ('type: "Slice" slice_param { axis: 1 slice_point: 1 }', [X], 2),
    ('type: "Slice" slice_param { axis: -1 }', [X], 2),
    ('type: "Slice" slice_param { slice_dim: 0 }', [X], 1),
    ('type: "Flatten"', [X], 1),
    ('type: "Flatten" flatten_param { axis: 2 end_axis: 3 }', [X], 1),
    ('type: "Reshape" reshape_param { shape { dim: 0 dim: -1 dim: 2 } }', [X], 1),
    ('type: "Tile" tile_param { axis: 1 tiles: 3 }', [X], 1),
    ('type: "Tile" tile_param { axis: -1 tiles: 2 }', [X], 1),
    ('type: "Reduction"', [X], 1),
    ('type: "Reduction" reduction_param { operation: ASUM axis: 1 coeff: 0.7 }', [X], 1),
    ('type: "Reduction" reduction_param { operation: SUMSQ axis: 2 coeff: -1.3 }', [X], 1),
    ('type: "Reduction" reduction_param { operation: MEAN axis: -1 coeff: 2 }', [X], 1),
    ('type: "BatchReindex"', [X, np.array([1.0, 0.0, 1.0, 1.0])], 1),
    ('type: "Embed" embed_param { num_output: 3 input_dim: 5 }', [np.array([[0., 4, 2], [4, 4, 1]])], 1),
    ('type: "Embed" embed_param { num_output: 2 input_dim: 3 bias_term: false }',
     [np.array([2.0, 0.0, 2.0])], 1),
]


@pytest.mark.parametrize("text,data,ntop", COMMON_CASES, ids=[c[0] for c in COMMON_CASES])
def test_common_gradients(text, data, ntop):
    layer, bottom, top, _ = make(text, data, ntop=ntop)
    # indices (BatchReindex bottom 1, Embed bottom 0) take no gradient
    which = [0] if "BatchReindex" in text else ([] if "Embed" in text else None)
    check_gradients(layer, bottom, top, which=which)


def test_filter_forward_backward():
    sel = np.array([1.0, 0.0, 2.0])
    x = RNG.standard_normal((3, 2, 2))
    x2 = RNG.standard_normal((3, 4))
    layer, bottom, top, _ = make('type: "Filter"', [x, x2, sel], ntop=2)
    assert top[0].shape == (3, 2, 2)                 # first reshape: all items (Caffe)
    y = run(layer, bottom, top)
    np.testing.assert_array_equal(y[0], x[[0, 2]])
    np.testing.assert_array_equal(y[1], x2[[0, 2]])
    check_gradients(layer, bottom, top, which=[0, 1])
    gb, _ = grads(layer, bottom, top, [np.ones((2, 2, 2)), np.ones((2, 4))], [True, True, False])
    np.testing.assert_array_equal(gb[0][1], 0)
    np.testing.assert_array_equal(gb[0][[0, 2]], 1)
    assert not layer.allow_force_backward(2) and layer.allow_force_backward(0)
    with pytest.raises(LayerError, match="one top per filtered bottom"):
        make('type: "Filter"', [x, sel], ntop=2)
    with pytest.raises(LayerError, match="first axes must match"):
        make('type: "Filter"', [x, np.ones(2)])


def test_batch_reindex_accumulates():
    x = RNG.standard_normal((3, 2))
    idx = np.array([2.0, 2.0, 0.0, 2.0])
    layer, bottom, top, _ = make('type: "BatchReindex"', [x, idx])
    np.testing.assert_array_equal(run(layer, bottom, top)[0], x[[2, 2, 0, 2]])
    gb, _ = grads(layer, bottom, top, [np.ones((4, 2))], [True, False])
    np.testing.assert_array_equal(gb[0], [[1, 1], [0, 0], [3, 3]])
    with pytest.raises(LayerError, match="out of range"):
        run(*make('type: "BatchReindex"', [x, np.array([3.0])])[:3])


def test_embed_values_and_weight_gradient():
    idx = np.array([[1.0, 1.0], [0.0, 2.0]])
    w = np.arange(6.0).reshape(3, 2)
    b = np.array([10.0, 20.0])
    layer, bottom, top, _ = make('type: "Embed" embed_param { num_output: 2 input_dim: 3 }',
                                 [idx], params=[w, b])
    assert layer.blobs[0].shape == (3, 2) and layer.blobs[1].shape == (2,)
    y = run(layer, bottom, top)[0]
    assert y.shape == (2, 2, 2)
    np.testing.assert_array_equal(y, w[[[1, 1], [0, 2]]] + b)
    _, gp = grads(layer, bottom, top, [np.ones((2, 2, 2))], [False])
    np.testing.assert_array_equal(gp[0], [[1, 1], [2, 2], [1, 1]])
    np.testing.assert_array_equal(gp[1], [4, 4])
    assert not layer.allow_force_backward(0)
    with pytest.raises(LayerError, match="out of range"):
        run(*make('type: "Embed" embed_param { num_output: 2 input_dim: 3 }', [np.array([3.0])])[:3])


def test_parameter_layer():
    layer, bottom, top, _ = make('type: "Parameter" parameter_param { shape { dim: 2 dim: 3 } }', [])
    assert layer.blobs[0].shape == (2, 3) and top[0].shape == (2, 3)
    y = run(layer, bottom, top)[0]
    np.testing.assert_array_equal(y, layer.blobs[0].data)
    layer.blobs[0].diff[...] = 1
    top[0].diff[...] = np.arange(6.0).reshape(2, 3)
    layer.backward(top, [], bottom)
    np.testing.assert_array_equal(layer.blobs[0].diff, 1 + np.arange(6.0).reshape(2, 3))


def shape_of(text, shape):
    layer, bottom, top, _ = make(text, [np.zeros(shape)])
    return top[0].shape


def test_reshape_inference():
    r = 'type: "Reshape" reshape_param {{ {} }}'
    assert shape_of(r.format("shape { dim: 0 dim: -1 dim: 5 }"), (2, 3, 6, 5)) == (2, 18, 5)
    assert shape_of(r.format("shape { dim: -1 }"), (2, 3, 4)) == (24,)
    assert shape_of(r.format("shape { dim: 0 dim: 0 dim: -1 }"), (2, 3, 4, 5)) == (2, 3, 20)
    assert shape_of(r.format("shape { dim: 8 dim: 0 }"), (2, 3, 4)) == (8, 3)
    # axis / num_axes: replace only a range of axes
    assert shape_of(r.format("shape { dim: 2 dim: 2 } axis: 1 num_axes: 1"), (3, 4, 5)) == (3, 2, 2, 5)
    assert shape_of(r.format("shape { dim: -1 } axis: 1"), (3, 4, 5)) == (3, 20)
    assert shape_of(r.format("shape { dim: 1 } axis: -1 num_axes: 0"), (3, 4)) == (3, 4, 1)
    assert shape_of(r.format("shape { dim: 1 } axis: 0 num_axes: 0"), (3, 4)) == (1, 3, 4)
    assert shape_of(r.format("shape { dim: -1 dim: 1 } axis: 1 num_axes: 2"), (2, 3, 4, 5)) == (2, 12, 1, 5)
    assert shape_of(r.format("shape { }"), (1, 1)) == ()
    with pytest.raises(LayerError, match="more than one -1"):
        shape_of(r.format("shape { dim: -1 dim: -1 }"), (2, 3))
    with pytest.raises(LayerError, match="divisible"):
        shape_of(r.format("shape { dim: -1 dim: 4 }"), (2, 3))
    with pytest.raises(LayerError, match="does not fit"):
        shape_of(r.format("shape { dim: 4 dim: 2 }"), (2, 3))
    with pytest.raises(LayerError, match="no axis"):
        shape_of(r.format("shape { dim: 0 dim: 0 dim: 0 }"), (2, 3))
    # the top is a view of the bottom's data
    layer, bottom, top, _ = make(r.format("shape { dim: -1 }"), [X])
    run(layer, bottom, top)
    assert np.shares_memory(top[0].data, bottom[0].data)
    np.testing.assert_array_equal(top[0].data, X.ravel())
    with pytest.raises(LayerError, match="in-place"):
        make(r.format("shape { dim: -1 }"), [X], in_place=True)


def test_flatten_slice_concat_tile_shapes():
    assert shape_of('type: "Flatten"', (2, 3, 4, 5)) == (2, 60)
    assert shape_of('type: "Flatten" flatten_param { axis: 0 }', (2, 3, 4)) == (24,)
    assert shape_of('type: "Flatten" flatten_param { axis: 1 end_axis: 2 }', (2, 3, 4, 5)) == (2, 12, 5)
    assert shape_of('type: "Flatten" flatten_param { axis: -2 }', (2, 3, 4, 5)) == (2, 3, 20)
    assert shape_of('type: "Tile" tile_param { axis: 1 tiles: 3 }', (2, 3, 4)) == (2, 9, 4)
    with pytest.raises(LayerError, match="tiles"):
        shape_of('type: "Tile" tile_param { axis: 1 }', (2, 3))
    x = np.arange(24.0).reshape(2, 3, 4)
    y = run(*make('type: "Tile" tile_param { axis: 1 tiles: 2 }', [x])[:3])[0]
    np.testing.assert_array_equal(y, np.concatenate([x, x], axis=1))
    y = run(*make('type: "Tile" tile_param { axis: 2 tiles: 2 }', [x])[:3])[0]
    np.testing.assert_array_equal(y, np.tile(x, (1, 1, 2)))
    # Slice
    layer, bottom, top, _ = make('type: "Slice" slice_param { axis: 2 slice_point: 1 slice_point: 3 }',
                                 [x], ntop=3)
    ys = run(layer, bottom, top)
    assert [t.shape for t in top] == [(2, 3, 1), (2, 3, 2), (2, 3, 1)]
    np.testing.assert_array_equal(np.concatenate(ys, axis=2), x)
    with pytest.raises(LayerError, match="one fewer"):
        make('type: "Slice" slice_param { slice_point: 1 }', [x], ntop=3)
    with pytest.raises(LayerError, match="evenly divide"):
        make('type: "Slice"', [x], ntop=2)
    with pytest.raises(LayerError, match="increase"):
        make('type: "Slice" slice_param { axis: 2 slice_point: 2 slice_point: 2 }', [x], ntop=3)
    with pytest.raises(LayerError, match="not both"):
        make('type: "Slice" slice_param { axis: 1 slice_dim: 1 }', [x], ntop=3)
    # Concat
    with pytest.raises(LayerError, match="except at axis 1"):
        make('type: "Concat"', [x, np.zeros((2, 3, 5))])
    layer, bottom, top, _ = make('type: "Concat" concat_param { concat_dim: 2 }', [x, x])
    assert top[0].shape == (2, 3, 8)


# -- ArgMax / Accuracy ----------------------------------------------------------------------

def test_argmax_shapes_and_ties():
    x = np.array([[[1.0, 3.0, 3.0, 0.0]], [[5.0, 5.0, 1.0, 5.0]]])        # (2, 1, 4)
    layer, bottom, top, _ = make('type: "ArgMax" argmax_param { top_k: 2 }', [x])
    assert top[0].shape == (2, 1, 2)
    # ties go to the larger index (partial_sort with greater<pair>)
    np.testing.assert_array_equal(run(layer, bottom, top)[0], [[[2, 1]], [[3, 1]]])
    layer, bottom, top, _ = make('type: "ArgMax" argmax_param { top_k: 2 out_max_val: true }', [x])
    assert top[0].shape == (2, 2, 2)
    np.testing.assert_array_equal(run(layer, bottom, top)[0],
                                  [[[2, 1], [3, 3]], [[3, 1], [5, 5]]])
    # without axis, 2-D input: padded to 3 axes; 4-D input: 4 axes
    assert shape_of('type: "ArgMax"', (3, 7)) == (3, 1, 1)
    assert shape_of('type: "ArgMax" argmax_param { top_k: 3 }', (3, 2, 4, 5)) == (3, 1, 3, 1)
    # with axis
    z = RNG.standard_normal((2, 3, 4))
    layer, bottom, top, _ = make('type: "ArgMax" argmax_param { axis: 1 top_k: 2 }', [z])
    assert top[0].shape == (2, 2, 4)
    np.testing.assert_array_equal(run(layer, bottom, top)[0], np.argsort(-z, axis=1)[:, :2])
    layer, bottom, top, _ = make('type: "ArgMax" argmax_param { axis: -1 out_max_val: true }', [z])
    np.testing.assert_array_equal(run(layer, bottom, top)[0], z.max(axis=-1, keepdims=True))
    with pytest.raises(LayerError, match="top_k"):
        make('type: "ArgMax" argmax_param { axis: 1 top_k: 4 }', [z])
    assert not layer_class("ArgMax").has_backward


def test_accuracy():
    x = np.array([[0.1, 0.5, 0.5, 0.2],      # label 1 ties with 2: 2 ranks first
                  [0.9, 0.1, 0.3, 0.2],
                  [0.1, 0.2, 0.3, 0.4]])
    lab = np.array([1.0, 0.0, 2.0])
    acc = lambda text, ntop=1: run(*make(f'type: "Accuracy" {text}', [x, lab], ntop=ntop)[:3])
    assert acc("")[0] == pytest.approx(1 / 3)
    assert acc("accuracy_param { top_k: 2 }")[0] == pytest.approx(3 / 3)
    assert acc("accuracy_param { ignore_label: 0 }")[0] == pytest.approx(0 / 2)
    y, per = acc("accuracy_param { top_k: 2 ignore_label: 2 }", ntop=2)
    assert y.shape == () and per.shape == (4,)
    assert y == pytest.approx(1.0)
    np.testing.assert_allclose(per, [1, 1, 0, 0])
    # all ignored: 0/0 as in Caffe
    y = run(*make('type: "Accuracy" accuracy_param { ignore_label: 3 }',
                  [x, np.array([3.0, 3.0, 3.0])])[:3])[0]
    assert np.isnan(y)
    # spatial labels along axis 1
    s = RNG.standard_normal((2, 3, 4))
    sl = np.argmax(s, axis=1).astype(float)
    sl[0, 0] = (sl[0, 0] + 1) % 3
    y = run(*make('type: "Accuracy"', [s, sl])[:3])[0]
    assert y == pytest.approx(7 / 8)
    with pytest.raises(LayerError, match="labels"):
        make('type: "Accuracy"', [s, np.zeros(3)])
    with pytest.raises(LayerError, match="out of range"):
        run(*make('type: "Accuracy"', [x, np.array([4.0, 0.0, 0.0])])[:3])
    assert not layer_class("Accuracy").has_backward
