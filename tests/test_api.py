"""The Python API mirrors pycaffe's ``caffe.Net`` (python/caffe/pycaffe.py + _caffe.cpp).

Each test names the pycaffe behaviour it checks.
"""
import os
from collections import OrderedDict

import numpy as np
import pytest

import netrun
from netrun.errors import NetrunError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LENET = os.path.join(ROOT, "models", "lenet_deploy.prototxt")
MLP = os.path.join(ROOT, "models", "mlp_loss.prototxt")


@pytest.fixture(scope="module")
def lenet_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "lenet.caffemodel"
    netrun.Net(LENET, seed=3).save(str(path))
    return str(path)


def digits(n, seed=0):
    return np.random.default_rng(seed).random((n, 1, 28, 28)).astype(np.float32)


def params_of(net):
    return {(name, k): b.data.copy() for name, blobs in net.params.items() for k, b in enumerate(blobs)}


# -- construction --------------------------------------------------------------------------------
def test_constructor_forms(lenet_weights):
    """caffe.Net(proto, phase), caffe.Net(proto, weights, phase), and the keyword form."""
    ref = params_of(netrun.Net(LENET, phase="test", weights=lenet_weights))
    for net in (netrun.Net(LENET, lenet_weights, netrun.TEST),
                netrun.Net(LENET, netrun.TEST, weights=lenet_weights),
                netrun.Net(LENET, "test", weights=lenet_weights)):
        assert net.phase == netrun.TEST
        got = params_of(net)
        assert got.keys() == ref.keys()
        for k in ref:
            np.testing.assert_array_equal(got[k], ref[k])
    assert netrun.Net(LENET, netrun.TRAIN).phase == netrun.TRAIN
    assert netrun.Net(LENET, phase="train").phase == netrun.TRAIN
    # pycaffe's Net(network_file, phase, level=0, stages=None, weights=None)
    assert netrun.Net(LENET, netrun.TEST, level=0, stages=None).phase == netrun.TEST
    assert (netrun.TRAIN, netrun.TEST) == (0, 1)


def test_missing_weights_file_is_an_error():
    with pytest.raises(NetrunError):
        netrun.Net(LENET, "no/such.caffemodel", netrun.TEST)


# -- blobs, params, layers -------------------------------------------------------------------------
def test_blobs_params_layers_views():
    net = netrun.Net(LENET, netrun.TEST)
    assert isinstance(net.blobs, OrderedDict)
    assert list(net.blobs) == ["data", "conv1", "pool1", "conv2", "pool2", "ip1", "ip2", "prob"]
    assert net._blob_names == list(net.blobs)
    assert net.inputs == ["data"]
    assert net.outputs == ["prob"]
    assert list(net._layer_names) == ["data", "conv1", "pool1", "conv2", "pool2", "ip1", "relu1",
                                      "ip2", "prob"]
    assert [layer.type for layer in net.layers] == ["Input", "Convolution", "Pooling", "Convolution",
                                                    "Pooling", "InnerProduct", "ReLU",
                                                    "InnerProduct", "Softmax"]
    assert list(net.layer_dict) == list(net._layer_names)
    assert net.layer_dict["conv1"] is net.layers[1]
    # params: layers with blobs only, in net order; the very blobs of the layers
    assert list(net.params) == ["conv1", "conv2", "ip1", "ip2"]
    assert net.params["conv1"] is net.layer_dict["conv1"].blobs
    assert net.params["conv1"][0].data.shape == (20, 1, 5, 5)
    assert net.params["conv1"][1].data.shape == (20,)
    assert net.params["ip1"][0].diff.shape == (500, 800)
    # top_names / bottom_names: OrderedDict layer -> blob names (in-place relu1 reads/writes ip1)
    assert net.top_names["conv1"] == ["conv1"]
    assert net.bottom_names["conv1"] == ["data"]
    assert net.top_names["relu1"] == net.bottom_names["relu1"] == ["ip1"]
    assert net.bottom_names["data"] == []
    assert list(net.top_names) == list(net._layer_names)


def test_mlp_inputs_outputs():
    net = netrun.Net(MLP, phase="train")
    assert net.inputs == ["data", "label"]
    assert net.outputs == ["loss"]
    assert net.layer_dict["loss"].type == "SoftmaxWithLoss"


def test_blob_accessors():
    net = netrun.Net(LENET)
    blob = net.blobs["conv1"]
    assert tuple(blob.shape) == (1, 20, 24, 24)
    assert (blob.num, blob.channels, blob.height, blob.width) == (1, 20, 24, 24)
    assert blob.count == 20 * 24 * 24
    assert blob.data.dtype == np.float32
    assert blob.diff.shape == blob.data.shape


# -- forward -------------------------------------------------------------------------------------
def test_forward_after_filling_the_input_blob():
    """net.blobs["data"].data[...] = x; out = net.forward() -> {output: array}."""
    net = netrun.Net(LENET, seed=1)
    x = digits(1)
    net.blobs["data"].data[...] = x
    out = net.forward()
    assert set(out) == {"prob"}
    prob = out["prob"]
    assert prob.shape == (1, 10)
    np.testing.assert_allclose(prob.sum(axis=1), 1, rtol=1e-5)
    assert out["prob"] is net.blobs["prob"].data
    # the keyword form gives the same numbers
    prob = prob.copy()
    net.blobs["data"].data[...] = 0
    np.testing.assert_array_equal(net.forward(data=x)["prob"], prob)


def test_forward_blobs_returns_extra_blobs():
    net = netrun.Net(LENET)
    out = net.forward(blobs=["conv1", "ip1"], data=digits(1))
    assert set(out) == {"prob", "conv1", "ip1"}
    assert out["conv1"].shape == (1, 20, 24, 24)
    assert (out["ip1"] >= 0).all()                  # after the in-place ReLU


def test_forward_start_end():
    """end=: run up to that layer (inclusive) and return its tops (+ blobs); start= resumes."""
    net = netrun.Net(LENET, seed=2)
    x = digits(2)
    full = net.forward(data=x)["prob"].copy()
    net.blobs["prob"].data[...] = 0
    out = net.forward(end="pool1", data=x)
    assert set(out) == {"pool1"}
    assert out["pool1"].shape == (2, 20, 12, 12)
    out = net.forward(end="relu1", blobs=["conv2"])    # in place: relu1's top is ip1
    assert set(out) == {"ip1", "conv2"}
    assert not net.blobs["prob"].data.any()           # not reached yet
    out = net.forward(start="ip2")
    assert set(out) == {"prob"}
    np.testing.assert_array_equal(out["prob"], full)
    # layer indices work too; an unknown layer name is an error
    np.testing.assert_array_equal(net.forward(start=1)["prob"], full)
    with pytest.raises(NetrunError, match="no layer named"):
        net.forward(end="nope")


def test_forward_loss_net():
    net = netrun.Net(MLP, phase="train")
    rng = np.random.default_rng(0)
    out = net.forward(data=rng.standard_normal((4, 10)), label=np.array([0, 1, 2, 1]))
    assert set(out) == {"loss"}
    assert out["loss"].shape == ()
    assert float(out["loss"]) == pytest.approx(net.loss)
    assert float(out["loss"]) > 0


# -- backward ------------------------------------------------------------------------------------
def test_backward_loss_net_matches_finite_differences():
    net = netrun.Net(MLP, phase="train", dtype=np.float64)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, 10))
    label = np.array([0, 2, 1, 1.0])
    net.forward(data=x, label=label)
    net.clear_param_diffs()
    diffs = net.backward()
    # default: the inputs' diffs (label is not differentiable: zeros)
    assert set(diffs) == {"data", "label"}
    assert not net.blobs["data"].diff.any()          # no force_backward: data needs no diff
    w = net.params["ip1"][0]
    grad = w.diff.copy()
    assert grad.any()
    eps = 1e-6
    for idx in [(0, 0), (3, 7), (15, 9)]:
        old = w.data[idx]
        w.data[idx] = old + eps
        lp = float(net.forward(data=x, label=label)["loss"])
        w.data[idx] = old - eps
        lm = float(net.forward(data=x, label=label)["loss"])
        w.data[idx] = old
        assert grad[idx] == pytest.approx((lp - lm) / (2 * eps), rel=1e-5, abs=1e-9)


def test_backward_param_diffs_accumulate_like_caffe():
    """Backward adds into parameter diffs (Caffe clears them in the solver, not in Backward)."""
    net = netrun.Net(MLP, phase="train")
    net.forward(data=np.ones((4, 10)), label=np.zeros(4))
    net.clear_param_diffs()
    net.backward()
    once = net.params["ip2"][0].diff.copy()
    net.backward()
    np.testing.assert_allclose(net.params["ip2"][0].diff, 2 * once, rtol=1e-6)


def test_backward_with_top_diff_on_deploy_net():
    """net.backward(prob=diff) -> {input: diff}; a deploy net needs force_backward for it."""
    net = netrun.Net(LENET, seed=5, dtype=np.float64)
    x = digits(2).astype(np.float64)
    net.forward(data=x)
    top = np.random.default_rng(1).standard_normal((2, 10))
    net.backward(prob=top)
    assert not net.blobs["data"].diff.any()          # nothing needs backward without a loss
    net.set_force_backward(True)
    net.forward(data=x)
    net.clear_param_diffs()
    out = net.backward(prob=top)
    assert set(out) == {"data"}
    g = out["data"]
    assert g.shape == (2, 1, 28, 28) and g.any()
    assert net.params["conv1"][0].diff.any()
    # a directional derivative of sum(prob * top) agrees
    d = np.random.default_rng(2).standard_normal(x.shape)
    eps = 1e-6
    fp = float((net.forward(data=x + eps * d)["prob"] * top).sum())
    fm = float((net.forward(data=x - eps * d)["prob"] * top).sum())
    assert float((g * d).sum()) == pytest.approx((fp - fm) / (2 * eps), rel=1e-4)


def test_backward_diffs_and_start_end():
    """diffs= adds blobs; end= returns that layer's bottoms' diffs (pycaffe's bottom_names[end])."""
    net = netrun.Net(LENET, seed=6)
    net.set_force_backward(True)
    net.forward(data=digits(1))
    top = np.ones((1, 10), np.float32)
    out = net.backward(diffs=["conv1", "ip1"], prob=top)
    assert set(out) == {"data", "conv1", "ip1"}
    full = {k: v.copy() for k, v in out.items()}
    for b in net.blobs.values():
        b.diff[...] = 0
    net.blobs["prob"].diff[...] = top
    out = net.backward(end="conv2")
    assert set(out) == {"pool1"}
    assert not net.blobs["conv1"].diff.any()         # conv1..pool1 not run yet
    out = net.backward(start="pool1")
    assert set(out) == {"data"}
    np.testing.assert_allclose(out["data"], full["data"], rtol=1e-6, atol=1e-9)


def test_backward_unknown_blob_and_bad_shape():
    net = netrun.Net(LENET)
    net.forward()
    with pytest.raises(NetrunError, match="not a blob"):
        net.backward(nope=np.ones(3))
    with pytest.raises(NetrunError, match="shape"):
        net.backward(prob=np.ones((3, 3)))


# -- reshape ------------------------------------------------------------------------------------
def test_reshape_propagates_shapes():
    """blobs["data"].reshape(N, ...) then net.reshape(): every blob takes its new shape."""
    net = netrun.Net(LENET, seed=7)
    x = digits(3)
    singles = [net.forward(data=x[i:i + 1])["prob"].copy() for i in range(3)]
    net.blobs["data"].reshape(3, 1, 28, 28)
    net.reshape()
    assert net.blobs["data"].data.shape == (3, 1, 28, 28)
    assert net.blobs["conv1"].data.shape == (3, 20, 24, 24)
    assert net.blobs["prob"].data.shape == (3, 10)
    net.blobs["data"].data[...] = x
    prob = net.forward()["prob"]
    np.testing.assert_allclose(prob, np.concatenate(singles), rtol=1e-5, atol=1e-7)
    # a tuple works too, and a new spatial size reaches the inner products' input
    # (as Caffe, net.reshape() checks: 50*5*5 inputs do not fit ip1's 800-wide weights)
    net.blobs["data"].reshape((2, 1, 32, 32))
    with pytest.raises(NetrunError, match="ip1.*1250.*800"):
        net.reshape()
    assert net.blobs["pool2"].shape == (2, 50, 5, 5)


def test_loss_net_reshape_keeps_loss_weight():
    net = netrun.Net(MLP, phase="train")
    net.blobs["data"].reshape(6, 10)
    net.blobs["label"].reshape(6)
    net.reshape()
    assert net.blobs["ip2"].shape == (6, 3)
    out = net.forward()
    assert out["loss"].shape == ()
    assert net.blobs["loss"].diff == 1.0


# -- weights --------------------------------------------------------------------------------------
def test_save_and_copy_from(tmp_path):
    a = netrun.Net(LENET, seed=11)
    path = str(tmp_path / "a.caffemodel")
    a.save(path)
    b = netrun.Net(LENET, seed=12)
    assert not np.array_equal(a.params["conv1"][0].data, b.params["conv1"][0].data)
    b.copy_from(path)
    for name in a.params:
        for pa, pb in zip(a.params[name], b.params[name]):
            np.testing.assert_array_equal(pa.data, pb.data)
    x = digits(1)
    np.testing.assert_array_equal(a.forward(data=x)["prob"], b.forward(data=x)["prob"])


def test_copy_from_wrong_shapes_is_an_error(tmp_path):
    path = str(tmp_path / "mlp.caffemodel")
    net = netrun.Net(MLP)
    net.save(path)
    # mlp's ip1 is 16x10; rename nothing, but load into a net whose ip1 differs
    other = netrun.Net(MLP, edits=["ip1.inner_product_param.num_output=8"])
    with pytest.raises(NetrunError, match="ip1"):
        other.copy_from(path)


def test_share_with():
    """Caffe's ShareTrainedLayersWith: same-named layers use the other net's parameter data."""
    train = netrun.Net(LENET, netrun.TRAIN, seed=1)
    test = netrun.Net(LENET, netrun.TEST, seed=2)
    test.share_with(train)
    assert test.params["ip1"][0].data is train.params["ip1"][0].data
    train.params["ip2"][1].data[...] = 0.5
    assert (test.params["ip2"][1].data == 0.5).all()
    # gradients stay apart
    assert test.params["ip2"][1].diff is not train.params["ip2"][1].diff
    other = netrun.Net(LENET, edits=["ip2.inner_product_param.num_output=7"])
    with pytest.raises(NetrunError, match="ip2"):
        other.share_with(train)


# -- batched helpers -------------------------------------------------------------------------------
def test_forward_all_batches_and_pads():
    net = netrun.Net(LENET, seed=8)
    net.blobs["data"].reshape(2, 1, 28, 28)
    net.reshape()
    x = digits(5)
    out = net.forward_all(blobs=["ip2"], data=x)
    assert set(out) == {"prob", "ip2"}
    assert out["prob"].shape == (5, 10)
    assert out["ip2"].shape == (5, 10)
    assert net.blobs["data"].shape == (2, 1, 28, 28)    # batch size kept
    want = np.concatenate([net.forward(data=x[i:i + 1])["prob"].copy() for i in range(5)])
    np.testing.assert_allclose(out["prob"], want, rtol=1e-5, atol=1e-7)


def test_forward_backward_all():
    net = netrun.Net(LENET, seed=9, dtype=np.float64)
    net.set_force_backward(True)
    net.blobs["data"].reshape(2, 1, 28, 28)
    net.reshape()
    x = digits(3).astype(np.float64)
    top = np.random.default_rng(3).standard_normal((3, 10))
    outs, diffs = net.forward_backward_all(blobs=["ip1"], diffs=["conv1"], data=x, prob=top)
    assert set(outs) == {"prob", "ip1"} and set(diffs) == {"data", "conv1"}
    assert outs["prob"].shape == (3, 10) and diffs["data"].shape == (3, 1, 28, 28)
    net.blobs["data"].reshape(1, 1, 28, 28)
    net.reshape()
    for i in range(3):
        net.forward(data=x[i:i + 1])
        g = net.backward(prob=top[i:i + 1])["data"]
        np.testing.assert_allclose(diffs["data"][i:i + 1], g, rtol=1e-6, atol=1e-12)


def test_forward_all_checks_item_counts():
    net = netrun.Net(MLP)
    with pytest.raises(NetrunError, match="items"):
        net.forward_all(data=np.zeros((4, 10)), label=np.zeros(3))


# -- module -------------------------------------------------------------------------------------
def test_module_level_names():
    assert netrun.Net and netrun.Blob and netrun.TRAIN == 0 and netrun.TEST == 1
    from netrun.proto import caffe_pb2
    assert netrun.caffe_pb2 is caffe_pb2
    assert netrun.Layer is not None
    assert callable(netrun.get_solver) and netrun.SGDSolver.type == "SGD"
    netrun.set_mode_cpu()                             # pycaffe scripts call these: harmless
    netrun.set_device(0)
    with pytest.warns(netrun.NetrunWarning, match="CPU"):
        netrun.set_mode_gpu()
    net = netrun.Net(netrun.caffe_pb2.NetParameter(
        layer=[netrun.caffe_pb2.LayerParameter(name="x", type="Input", top=["x"],
                                               input_param={"shape": [{"dim": [2, 3]}]})]))
    assert net.inputs == net.outputs == ["x"]
