"""Loss layers (SigmoidCrossEntropy, Hinge, MultinomialLogistic, Infogain, Contrastive)
and recurrent layers (RNN, LSTM, LSTMUnit): float64 numeric-gradient checks on tiny
shapes, and the Caffe conventions that gradients alone do not show."""
import numpy as np
import pytest
from google.protobuf import text_format

from layer_helpers import build_layer, central_differences, forward_copies
from netrun import Net
from netrun.errors import LayerError, NetrunError
from netrun.proto import caffe_pb2

F64 = np.float64


def make(text, arrays, ntop=1, dtype=F64, seed=0, params=True):
    def init(blobs):
        if params:
            rng = np.random.default_rng(seed + 7)
            for p in blobs:
                p.data[...] = rng.uniform(-0.6, 0.6, p.shape)
    return build_layer(text, arrays, ntop, caffe_pb2.TEST, dtype, seed, init_params=init,
                       check_counts=True)[:3]


fwd = forward_copies


def grad_check(layer, bottom, top, check_bottoms, rtol=1e-6, atol=1e-8, seed=3,
               top_weights=None, before_forward=None, check_params=True, eps=1e-6):
    """Compare backward with central differences of E = sum_i <top_i, w_i>."""
    rng = np.random.default_rng(seed)

    def run():
        if before_forward is not None:
            before_forward()
        fwd(layer, bottom, top)
        return sum(float(np.sum(t.data * w)) for t, w in zip(top, weights))

    if before_forward is not None:
        before_forward()
    fwd(layer, bottom, top)
    if top_weights is None:
        weights = [np.full(t.shape, 1.7) if t.shape == () else rng.standard_normal(t.shape)
                   for t in top]
    else:
        weights = top_weights
    for t, w in zip(top, weights):
        t.diff[...] = w
    for p in layer.blobs:
        p.diff[...] = 0
    pd = [i in check_bottoms for i in range(len(bottom))]
    layer.backward(top, pd, bottom)
    analytic = [bottom[i].diff.copy() for i in check_bottoms]
    analytic_p = [p.diff.copy() for p in layer.blobs]
    targets = [(bottom[i].data, a, f"bottom {i}") for i, a in zip(check_bottoms, analytic)]
    if check_params:
        targets += [(p.data, a, f"param {k}") for k, (p, a) in enumerate(zip(layer.blobs,
                                                                            analytic_p))]
    for arr, ana, what in targets:
        np.testing.assert_allclose(ana, central_differences(arr, run, eps), rtol=rtol,
                                   atol=atol, err_msg=what)


RNG = np.random.default_rng(42)


# -- SigmoidCrossEntropyLoss ------------------------------------------------------------------
def xent_ref(x, t, valid, norm):
    per = -(x * (t - (x >= 0)) - np.log1p(np.exp(x - 2 * x * (x >= 0))))
    return np.sum(per * valid) / norm


def test_sigmoid_xent_gradient_and_default_batch_normalization():
    x = RNG.standard_normal((3, 2, 2)) * 3
    t = RNG.integers(0, 2, (3, 2, 2)).astype(float)
    layer, bottom, top = make('type: "SigmoidCrossEntropyLoss"', [x, t])
    (loss,) = fwd(layer, bottom, top)
    assert loss == pytest.approx(xent_ref(x, t, 1, 3))       # default: BATCH_SIZE
    p = 1 / (1 + np.exp(-x))
    expected_ce = -(t * np.log(p) + (1 - t) * np.log(1 - p)).sum() / 3
    assert loss == pytest.approx(expected_ce)
    grad_check(layer, bottom, top, [0])


@pytest.mark.parametrize("norm, expect", [("normalization: FULL", 12), ("normalization: VALID", 9),
                                          ("normalization: BATCH_SIZE", 3),
                                          ("normalization: NONE", 1), ("normalize: true", 9),
                                          ("normalize: false", 3)])
def test_sigmoid_xent_ignore_label_and_normalization(norm, expect):
    x = RNG.standard_normal((3, 4))
    t = RNG.integers(0, 2, (3, 4)).astype(float)
    t[0, :3] = -1
    layer, bottom, top = make(
        f'type: "SigmoidCrossEntropyLoss" loss_param {{ ignore_label: -1 {norm} }}', [x, t])
    (loss,) = fwd(layer, bottom, top)
    valid = t != -1
    assert loss == pytest.approx(xent_ref(x, t, valid, expect))
    grad_check(layer, bottom, top, [0])
    layer.backward(top, [True, False], bottom)
    assert np.all(bottom[0].diff[~valid] == 0)


def test_sigmoid_xent_count_mismatch():
    with pytest.raises(LayerError, match="same count"):
        make('type: "SigmoidCrossEntropyLoss"', [np.zeros((2, 3)), np.zeros((2, 4))])


# -- HingeLoss --------------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["L1", "L2"])
def test_hinge_gradient(norm):
    x = RNG.uniform(-2, 2, (4, 5))
    lab = np.array([0, 3, 4, 1], float)
    layer, bottom, top = make(f'type: "HingeLoss" hinge_loss_param {{ norm: {norm} }}', [x, lab])
    (loss,) = fwd(layer, bottom, top)
    s = np.ones_like(x)
    s[np.arange(4), lab.astype(int)] = -1
    m = np.maximum(0, 1 + s * x)
    assert loss == pytest.approx((np.abs(m).sum() if norm == "L1" else (m ** 2).sum()) / 4)
    # Caffe leaves the margins in bottom[0].diff after forward
    np.testing.assert_allclose(bottom[0].diff, m)
    grad_check(layer, bottom, top, [0])


def test_hinge_label_out_of_range():
    layer, bottom, top = make('type: "HingeLoss"', [np.zeros((2, 3)), [0, 3]])
    with pytest.raises(LayerError, match="out of range"):
        fwd(layer, bottom, top)


# -- MultinomialLogisticLoss ------------------------------------------------------------------
def test_multinomial_logistic_gradient_and_threshold():
    p = RNG.uniform(0.05, 1, (3, 4))
    p /= p.sum(1, keepdims=True)
    lab = np.array([2, 0, 3], float)
    layer, bottom, top = make('type: "MultinomialLogisticLoss"', [p, lab])
    (loss,) = fwd(layer, bottom, top)
    assert loss == pytest.approx(-np.log(p[[0, 1, 2], [2, 0, 3]]).sum() / 3)
    grad_check(layer, bottom, top, [0])
    bottom[0].data[1, 0] = 0.0                       # clamped to kLOG_THRESHOLD = 1e-20
    (loss,) = fwd(layer, bottom, top)
    assert loss == pytest.approx((-np.log(p[0, 2]) - np.log(1e-20) - np.log(p[2, 3])) / 3)


def test_multinomial_logistic_label_shape():
    with pytest.raises(LayerError, match="one value per item"):
        make('type: "MultinomialLogisticLoss"', [np.ones((2, 3)) / 3, np.zeros((2, 2))])


# -- InfogainLoss -----------------------------------------------------------------------------
def softmax(x, axis):
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def test_infogain_bottom_H_gradient_and_prob_top():
    x = RNG.standard_normal((3, 4))
    lab = np.array([1, 3, 0], float)
    H = RNG.uniform(0, 2, (1, 1, 4, 4))
    layer, bottom, top = make('type: "InfogainLoss"', [x, lab, H], ntop=2)
    loss, prob = fwd(layer, bottom, top)
    p = softmax(x, 1)
    Hm = H.reshape(4, 4)
    assert loss == pytest.approx(-(Hm[[1, 3, 0]] * np.log(p)).sum() / 3)
    np.testing.assert_allclose(prob, p)
    grad_check(layer, bottom, top, [0], top_weights=[np.array(1.3), np.zeros((3, 4))])


def test_infogain_identity_equals_softmax_loss():
    x = RNG.standard_normal((2, 5))
    lab = np.array([4, 2], float)
    a, ab, at = make('type: "InfogainLoss"', [x, lab, np.eye(5)])
    b, bb, bt = make('type: "SoftmaxWithLoss"', [x, lab])
    assert fwd(a, ab, at)[0] == pytest.approx(fwd(b, bb, bt)[0])


def test_infogain_axis_ignore_label_and_source(tmp_path):
    x = RNG.standard_normal((2, 3, 2, 2))                # 3 labels on axis 1
    lab = RNG.integers(0, 3, (2, 1, 2, 2)).astype(float)
    lab[0, 0, 0, 0] = 7
    H = RNG.uniform(0, 1, (3, 3))
    bp = caffe_pb2.BlobProto()
    bp.shape.dim.extend([1, 1, 3, 3])
    bp.data.extend(H.ravel().tolist())
    path = tmp_path / "H.binaryproto"
    path.write_bytes(bp.SerializeToString())
    text = (f'type: "InfogainLoss" infogain_loss_param {{ source: "{path}" }} '
            'loss_param { ignore_label: 7 }')
    layer, bottom, top = make(text, [x, lab])
    (loss,) = fwd(layer, bottom, top)
    p = softmax(x, 1)
    L = lab[:, 0].astype(int)
    valid = L != 7
    Hf = np.asarray(np.float32(H), F64)            # the source is float32 on disk
    logp = np.log(p)
    per = np.einsum("nhwk,nkhw->nhw", Hf[np.where(valid, L, 0)], logp)
    assert loss == pytest.approx(-per[valid].sum() / valid.sum())     # VALID default
    grad_check(layer, bottom, top, [0])
    layer.backward(top, [True, False], bottom)
    assert np.all(bottom[0].diff[0, :, 0, 0] == 0)


def test_infogain_errors():
    with pytest.raises(LayerError, match="source must be specified"):
        make('type: "InfogainLoss"', [np.zeros((2, 3)), [0, 1]])
    with pytest.raises(LayerError, match="normalize is deprecated"):
        make('type: "InfogainLoss" loss_param { normalize: true }',
             [np.zeros((2, 3)), [0, 1], np.eye(3)])
    with pytest.raises(LayerError, match="3x3"):
        make('type: "InfogainLoss"', [np.zeros((2, 3)), [0, 1], np.eye(4)])


# -- ContrastiveLoss --------------------------------------------------------------------------
@pytest.mark.parametrize("legacy", [False, True])
def test_contrastive(legacy):
    a = RNG.standard_normal((4, 3)) * 0.5
    b = RNG.standard_normal((4, 3)) * 0.5
    y = np.array([1, 0, 0, 1], float)
    text = ('type: "ContrastiveLoss" contrastive_loss_param '
            f'{{ margin: 2.5 legacy_version: {str(legacy).lower()} }}')
    layer, bottom, top = make(text, [a, b, y])
    (loss,) = fwd(layer, bottom, top)
    d2 = ((a - b) ** 2).sum(1)
    dis = np.maximum(2.5 - d2, 0) if legacy else np.maximum(2.5 - np.sqrt(d2), 0) ** 2
    assert loss == pytest.approx(np.where(y == 1, d2, dis).sum() / 8)
    # Caffe's non-legacy gradient divides by (d + 1e-4): close to, not equal to, exact
    grad_check(layer, bottom, top, [0, 1], rtol=1e-6 if legacy else 1e-3, atol=1e-8)


def test_contrastive_shape_checks():
    with pytest.raises(LayerError, match="same channels"):
        make('type: "ContrastiveLoss"', [np.zeros((2, 3)), np.zeros((2, 4)), [1, 0]])
    with pytest.raises(LayerError, match=r"\(N, C\)"):
        make('type: "ContrastiveLoss"', [np.zeros((2, 3, 2)), np.zeros((2, 3, 2)), [1, 0]])


# -- LSTMUnit ---------------------------------------------------------------------------------
def test_lstm_unit_gradient_and_cont_reset():
    N, H = 3, 2
    c_prev = RNG.standard_normal((1, N, H))
    xg = RNG.standard_normal((1, N, 4 * H))
    cont = np.array([[1, 0, 1]], float)
    layer, bottom, top = make('type: "LSTMUnit"', [c_prev, xg, cont], ntop=2)
    c, h = fwd(layer, bottom, top)
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    X = xg[0]
    i, f, o, g = sig(X[:, :H]), sig(X[:, H:2 * H]) * cont[0][:, None], sig(X[:, 2 * H:3 * H]), \
        np.tanh(X[:, 3 * H:])
    np.testing.assert_allclose(c[0], f * c_prev[0] + i * g)
    np.testing.assert_allclose(h[0], o * np.tanh(c[0]))
    np.testing.assert_allclose(c[0, 1], (i * g)[1])          # cont 0: c_prev forgotten
    grad_check(layer, bottom, top, [0, 1])
    with pytest.raises(LayerError, match="sequence indicators"):
        layer.backward(top, [True, True, True], bottom)
    assert not layer.allow_force_backward(2)


def test_lstm_unit_shapes():
    with pytest.raises(LayerError, match="4 x 2"):
        make('type: "LSTMUnit"', [np.zeros((1, 3, 2)), np.zeros((1, 3, 6)), np.ones((1, 3))],
             ntop=2)
    with pytest.raises(LayerError, match="cont"):
        make('type: "LSTMUnit"', [np.zeros((1, 3, 2)), np.zeros((1, 3, 8)), np.ones((3,))],
             ntop=2)


# -- LSTM / RNN -------------------------------------------------------------------------------
T, N, I, HID = 3, 2, 3, 2
CONT = np.array([[0, 0], [1, 0], [0, 1]], float)       # resets in the middle of both streams


def recurrent_layer(kind, extra="", static=False, expose=False, seed=0, cont=CONT, t=T):
    x = RNG.standard_normal((t, N, I))
    arrays = [x, cont]
    if static:
        arrays.append(RNG.standard_normal((N, 2, 2)))
    if expose:
        arrays += [RNG.standard_normal((1, N, HID)) for _ in range(2 if kind == "LSTM" else 1)]
    ntop = 1 + ((2 if kind == "LSTM" else 1) if expose else 0)
    text = (f'type: "{kind}" name: "r" recurrent_param {{ num_output: {HID} '
            f'expose_hidden: {str(expose).lower()} {extra} }}')
    return make(text, arrays, ntop=ntop, seed=seed)


def fresh(layer):
    def reset():
        layer.state = None
    return reset


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_recurrent_param_shapes_and_order(kind):
    layer, _, top = recurrent_layer(kind, static=True)
    shapes = [p.shape for p in layer.blobs]
    if kind == "LSTM":
        assert shapes == [(8, I), (8,), (8, 4), (8, HID)]
    else:
        assert shapes == [(HID, I), (HID,), (HID, 4), (HID, HID), (HID, HID), (HID,)]
    assert top[0].shape == (T, N, HID)


def test_recurrent_fillers():
    text = ('type: "LSTM" recurrent_param { num_output: 2 weight_filler { type: "constant" '
            'value: 0.5 } bias_filler { type: "constant" value: -1 } }')
    layer, _, _ = make(text, [np.zeros((2, 1, 3)), np.ones((2, 1))], params=False)
    assert np.all(layer.blobs[0].data == 0.5) and np.all(layer.blobs[1].data == -1)
    assert np.all(layer.blobs[2].data == 0.5)


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
@pytest.mark.parametrize("static", [False, True])
def test_recurrent_gradient(kind, static):
    layer, bottom, top = recurrent_layer(kind, static=static)
    checks = [0, 2] if static else [0]
    grad_check(layer, bottom, top, checks, rtol=1e-5, atol=1e-8, before_forward=fresh(layer))
    assert np.all(bottom[1].diff == 0)
    with pytest.raises(LayerError, match="sequence indicators"):
        layer.backward(top, [True, True] + [False] * (len(bottom) - 2), bottom)


def reference_lstm(x, cont, W, b, Whc, h, c):
    H = Whc.shape[1]
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    out = []
    for t in range(x.shape[0]):
        a = (cont[t][:, None] * h) @ Whc.T + x[t] @ W.T + b
        i, f = sig(a[:, :H]), sig(a[:, H:2 * H])
        o, g = sig(a[:, 2 * H:3 * H]), np.tanh(a[:, 3 * H:])
        c = cont[t][:, None] * f * c + i * g
        h = o * np.tanh(c)
        out.append(h)
    return np.stack(out), h, c


def test_lstm_matches_reference_and_exposed_hidden():
    layer, bottom, top = recurrent_layer("LSTM", expose=True, cont=np.ones((T, N)))
    h_seq, hT, cT = fwd(layer, bottom, top)
    W, b, Whc = (p.data for p in layer.blobs)
    ref, rh, rc = reference_lstm(bottom[0].data, bottom[1].data, W, b, Whc,
                                 bottom[2].data[0], bottom[3].data[0])
    np.testing.assert_allclose(h_seq, ref, rtol=1e-12)
    np.testing.assert_allclose(hT[0], rh, rtol=1e-12)
    np.testing.assert_allclose(cT[0], rc, rtol=1e-12)
    # gradients w.r.t. x and params; the diffs of hT/cT are ignored and h0/c0 get zeros
    weights = [RNG.standard_normal(t.shape) for t in top]
    grad_check(layer, bottom, top, [0], rtol=1e-5, top_weights=[weights[0], 0 * weights[1],
                                                                0 * weights[2]])
    fwd(layer, bottom, top)

    def param_diffs(top_diffs):
        for t, w in zip(top, top_diffs):
            t.diff[...] = w
        for p in layer.blobs:
            p.diff[...] = 0
        bottom[2].diff[...] = 5
        layer.backward(top, [True, False, True, True], bottom)
        assert np.all(bottom[2].diff == 0) and np.all(bottom[3].diff == 0)
        return [p.diff.copy() for p in layer.blobs]

    without = param_diffs([weights[0], 0 * weights[1], 0 * weights[2]])
    for a, b in zip(param_diffs(weights), without):
        np.testing.assert_array_equal(a, b)              # hT/cT diffs changed nothing


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_state_carries_over_between_forward_passes(kind):
    """Without expose_hidden, the last state of one pass starts the next (Caffe)."""
    x = RNG.standard_normal((2 * T, N, I))
    cont = np.ones((2 * T, N))
    cont[0] = 0
    cont[4, 1] = 0
    text = f'type: "{kind}" recurrent_param {{ num_output: {HID} }}'
    long_layer, lb, lt = make(text, [x, cont], seed=5)
    short_layer, sb, st = make(text, [x[:T], cont[:T]], seed=5)
    (whole,) = fwd(long_layer, lb, lt)
    (first,) = fwd(short_layer, sb, st)
    sb[0].data[...] = x[T:]
    sb[1].data[...] = cont[T:]
    (second,) = fwd(short_layer, sb, st)
    np.testing.assert_allclose(np.concatenate([first, second]), whole, rtol=1e-12)


def test_rnn_reference_and_reset():
    layer, bottom, top = recurrent_layer("RNN")
    (o,) = fwd(layer, bottom, top)
    Wxh, bh, Whh, Who, bo = (p.data for p in layer.blobs)
    h = np.zeros((N, HID))
    for t in range(T):
        h = np.tanh((CONT[t][:, None] * h) @ Whh.T + bottom[0].data[t] @ Wxh.T + bh)
        np.testing.assert_allclose(o[t], np.tanh(h @ Who.T + bo), rtol=1e-12)


def test_lstm_equals_chain_of_lstm_units():
    layer, bottom, top = recurrent_layer("LSTM", cont=CONT)
    (h_seq,) = fwd(layer, bottom, top)
    W, b, Whc = (p.data for p in layer.blobs)
    h = np.zeros((1, N, HID))
    c = np.zeros((1, N, HID))
    for t in range(T):
        gates = (CONT[t][:, None] * h[0]) @ Whc.T + bottom[0].data[t] @ W.T + b
        unit, ub, ut = make('type: "LSTMUnit"', [c, gates[None], CONT[t][None]], ntop=2)
        c, h = fwd(unit, ub, ut)
        np.testing.assert_allclose(h[0], h_seq[t], rtol=1e-12)


def test_recurrent_errors():
    with pytest.raises(LayerError, match="num_output must be positive"):
        make('type: "RNN"', [np.zeros((2, 1, 3)), np.ones((2, 1))])
    with pytest.raises(LayerError, match="cont must be"):
        make('type: "RNN" recurrent_param { num_output: 2 }', [np.zeros((2, 1, 3)), np.ones((2,))])
    with pytest.raises(LayerError, match="at least 3 axes"):
        make('type: "LSTM" recurrent_param { num_output: 2 }', [np.zeros((2, 1)), np.ones((2, 1))])
    layer, bottom, top = make('type: "LSTM" recurrent_param { num_output: 2 }',
                              [np.zeros((2, 1, 3)), np.ones((2, 1))])
    bottom[0].reshape((3, 1, 3))
    bottom[1].reshape((3, 1))
    with pytest.raises(LayerError, match="time steps"):
        layer.reshape(bottom, top)


def test_lstm_in_a_net_with_expose_hidden():
    text = """
    force_backward: true
    layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 4 } } }
    layer { name: "cont" type: "Input" top: "cont" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "h0" type: "Input" top: "h0" input_param { shape { dim: 1 dim: 3 dim: 5 } } }
    layer { name: "c0" type: "Input" top: "c0" input_param { shape { dim: 1 dim: 3 dim: 5 } } }
    layer { name: "L" type: "LSTM" bottom: "x" bottom: "cont" bottom: "h0" bottom: "c0"
            top: "h" top: "hT" top: "cT"
            recurrent_param { num_output: 5 expose_hidden: true
                              weight_filler { type: "uniform" min: -0.1 max: 0.1 } } }
    """
    net = Net(text_format.Parse(text, caffe_pb2.NetParameter()), phase="test", dtype=F64)
    assert [p.shape for p in net.params["L"]] == [(20, 4), (20,), (20, 5)]
    out = net.forward(x=RNG.standard_normal((2, 3, 4)), cont=np.ones((2, 3)),
                      h0=RNG.standard_normal((1, 3, 5)), c0=RNG.standard_normal((1, 3, 5)))
    np.testing.assert_allclose(out["hT"][0], out["h"][1])
    diffs = net.backward(h=np.ones((2, 3, 5)))
    assert np.abs(diffs["x"]).sum() > 0
    assert np.all(diffs["cont"] == 0)
    with pytest.raises(NetrunError, match="at least 4 bottom"):
        Net(text_format.Parse(text.replace('bottom: "c0"', ""), caffe_pb2.NetParameter()),
            phase="test")
