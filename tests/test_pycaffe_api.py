"""netrun.pycaffe, the ``caffe`` module of pycaffe scripts: the same API pycaffe's own tests
cover (tests/test_pycaffe_suite.py runs those), checked here with small nets written in the
test, so it runs without ../shared."""
import os
import subprocess
import sys
import textwrap
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from netrun import pycaffe as caffe
from netrun.errors import NetrunError
from netrun.pycaffe import layers as L
from netrun.pycaffe import params as P
from netrun.pycaffe.coord_map import coord_map_from_to, crop
from netrun.proto import caffe_pb2

ROOT = Path(__file__).resolve().parent.parent

SIMPLE = """name: 'testnet' force_backward: true
layer { type: 'DummyData' name: 'data' top: 'data' top: 'label'
  dummy_data_param { num: 5 channels: 2 height: 3 width: 4  num: 5 channels: 1 height: 1 width: 1
    data_filler { type: 'gaussian' std: 1 } data_filler { type: 'constant' } } }
layer { type: 'Convolution' name: 'conv' bottom: 'data' top: 'conv'
  convolution_param { num_output: 11 kernel_size: 2 pad: 3
    weight_filler { type: 'gaussian' std: 1 } bias_filler { type: 'constant' value: 2 } }
  param { decay_mult: 1 } param { decay_mult: 0 } }
layer { type: 'InnerProduct' name: 'ip' bottom: 'conv' top: 'ip_blob'
  inner_product_param { num_output: 13
    weight_filler { type: 'gaussian' std: 2.5 } bias_filler { type: 'constant' value: -3 } } }
layer { type: 'SoftmaxWithLoss' name: 'loss' bottom: 'ip_blob' bottom: 'label' top: 'loss' }
"""

DEPLOY = """name: 'deploy'
layer { name: 'data' type: 'Input' top: 'data' input_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 } } }
layer { name: 'ip' type: 'InnerProduct' bottom: 'data' top: 'ip'
  inner_product_param { num_output: 5 weight_filler { type: 'gaussian' std: 0.1 } } }
layer { name: 'prob' type: 'Softmax' bottom: 'ip' top: 'prob' }
"""

PYLAYER = '''
import numpy as np
import caffe

class Times(caffe.Layer):
    def setup(self, bottom, top):
        self.k = float(self.param_str or 10)
    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)
    def forward(self, bottom, top):
        top[0].data[...] = self.k * bottom[0].data
    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = self.k * top[0].diff

class Broken(caffe.Layer):
    def setup(self, bottom, top):
        raise ValueError("bad param_str " + repr(self.param_str))

class Phase(caffe.Layer):
    def setup(self, bottom, top):
        self.blobs.add_blob(2)
        self.blobs[0].data[...] = [1.5, -2]
    def reshape(self, bottom, top):
        top[0].reshape()
    def forward(self, bottom, top):
        top[0].data[()] = self.phase + self.blobs[0].data.sum()
'''


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


@pytest.fixture
def simple(tmp_path):
    net = caffe.Net(write(tmp_path, "simple.prototxt", SIMPLE), caffe.TRAIN)
    net.blobs["label"].data[...] = (np.arange(5) % 13).reshape(5, 1, 1, 1)
    return net


@pytest.fixture
def pymodule(tmp_path, monkeypatch):
    write(tmp_path, "nr_pylayers.py", PYLAYER)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "caffe", caffe)     # what the runner does
    yield "nr_pylayers"
    sys.modules.pop("nr_pylayers", None)


# -- module ----------------------------------------------------------------------------------
def test_module_functions():
    assert {"Data", "Convolution", "InnerProduct", "Python"} <= set(caffe.layer_type_list())
    assert caffe.has_nccl() is False
    assert (caffe.TRAIN, caffe.TEST) == (0, 1)
    caffe.set_mode_cpu()
    caffe.set_device(0)
    with pytest.warns(UserWarning, match="CPU only"):
        caffe.set_mode_gpu()
    caffe.NCCL(None, "")                                  # as pycaffe built without NCCL
    t = caffe.Timer()
    t.start()
    t.stop()
    assert t.ms >= 0
    assert caffe.proto.caffe_pb2 is caffe_pb2
    assert caffe.io.blobproto_to_array is not None and caffe.Layer is caffe._caffe.Layer


def test_set_random_seed_makes_fillers_repeat(tmp_path):
    path = write(tmp_path, "d.prototxt", DEPLOY)
    caffe.set_random_seed(7)
    try:
        a = caffe.Net(path, caffe.TEST).params["ip"][0].data.copy()
        b = caffe.Net(path, caffe.TEST).params["ip"][0].data.copy()
        caffe.set_random_seed(8)
        c = caffe.Net(path, caffe.TEST).params["ip"][0].data.copy()
    finally:
        caffe.pycaffe._State.seed = None
    assert np.array_equal(a, b) and not np.array_equal(a, c)


# -- Net ---------------------------------------------------------------------------------------
def test_net_views(simple):
    net = simple
    assert net.inputs == [] and net.outputs == ["loss"]
    assert list(net.layer_dict) == net._layer_names == ["data", "conv", "ip", "loss"]
    assert [l.type for l in net.layers] == ["DummyData", "Convolution", "InnerProduct",
                                            "SoftmaxWithLoss"]
    assert net.top_names == OrderedDict([("data", ["data", "label"]), ("conv", ["conv"]),
                                         ("ip", ["ip_blob"]), ("loss", ["loss"])])
    assert net.bottom_names["loss"] == ["ip_blob", "label"]
    assert list(net.blob_loss_weights.items()) == [("data", 0.0), ("label", 0.0), ("conv", 0.0),
                                                   ("ip_blob", 0.0), ("loss", 1.0)]
    assert net._blob_loss_weights == [0.0, 0.0, 0.0, 0.0, 1.0]
    assert net._outputs == [4] and net._inputs == []
    assert net._top_ids(0) == [0, 1] and net._bottom_ids(3) == [3, 1]
    assert [tuple(b.shape) for b in net._blobs][:2] == [(5, 2, 3, 4), (5, 1, 1, 1)]
    assert [p.data.shape for p in net.params["conv"]] == [(11, 2, 2, 2), (11,)]
    b = net.blobs["conv"]
    assert (b.num, b.channels, b.height, b.width, b.count) == (5, 11, 8, 9, 5 * 11 * 72)


def test_forward_backward_start_end(simple):
    net = simple
    conv = np.random.default_rng(0).uniform(size=net.blobs["conv"].data.shape).astype(np.float32)
    net.blobs["conv"].data[...] = conv
    out = net.forward(start="ip", end="ip")
    w, bias = net.params["ip"][0].data, net.params["ip"][1].data
    np.testing.assert_allclose(out["ip_blob"], conv.reshape(5, -1) @ w.T + bias, rtol=1e-4, atol=1e-4)
    top = np.random.default_rng(1).uniform(size=(5, 13)).astype(np.float32)
    net.blobs["ip_blob"].diff[...] = top
    back = net.backward(start="ip", end="ip")
    np.testing.assert_allclose(back["conv"], (top @ w).reshape(conv.shape), rtol=1e-4, atol=1e-4)
    # _forward returns the loss
    loss = net._forward(0, 3)
    assert loss == pytest.approx(float(net.blobs["loss"].data))
    net.backward()
    diff = net.params["conv"][0].diff
    assert np.abs(diff).max() > 0
    net.clear_param_diffs()
    assert not diff.any()                        # the same array, zeroed in place


def test_layer_callbacks(simple):
    seen = []
    simple.before_forward(lambda i: seen.append(("bf", i)))
    simple.after_forward(lambda i: seen.append(("af", i)))
    simple.after_backward(lambda i: seen.append(("ab", i)))
    simple.forward()
    simple.backward()
    assert seen == [("bf", 0), ("af", 0), ("bf", 1), ("af", 1), ("bf", 2), ("af", 2), ("bf", 3),
                    ("af", 3), ("ab", 3), ("ab", 2), ("ab", 1), ("ab", 0)]


def test_save_copy_from_and_hdf5(simple, tmp_path):
    pytest.importorskip("h5py")
    path = write(tmp_path, "simple2.prototxt", SIMPLE)
    simple.save(str(tmp_path / "w.caffemodel"))
    simple.save_hdf5(str(tmp_path / "w.h5"))
    import h5py
    with h5py.File(tmp_path / "w.h5", "r") as f:
        assert list(f["data"]) == ["conv", "data", "ip", "loss"]     # one group per layer
        assert f["data/conv/0"].shape == (11, 2, 2, 2)
    caffe.set_random_seed(99)
    try:
        legacy = caffe.Net(path, str(tmp_path / "w.caffemodel"), caffe.TRAIN)
        named = caffe.Net(path, caffe.TRAIN, weights=str(tmp_path / "w.h5"))
        other = caffe.Net(path, caffe.TRAIN)
    finally:
        caffe.pycaffe._State.seed = None
    assert not np.array_equal(other.params["ip"][0].data, simple.params["ip"][0].data)
    other.load_hdf5(str(tmp_path / "w.h5"))
    for net in (legacy, named, other):
        for name in simple.params:
            for a, b in zip(net.params[name], simple.params[name]):
                assert np.array_equal(a.data, b.data)


def test_levels_and_stages(tmp_path):
    text = """layer { name: 'data' type: 'DummyData' top: 'data' dummy_data_param { shape { dim: 1 dim: 3 } } }
    layer { name: 'A' type: 'InnerProduct' bottom: 'data' top: 'A' include { stage: 'A' } inner_product_param { num_output: 1 } }
    layer { name: 'L1' type: 'InnerProduct' bottom: 'data' top: 'L1' include { min_level: 1 } inner_product_param { num_output: 1 } }
    layer { name: 'AB' type: 'InnerProduct' bottom: 'data' top: 'AB' include { stage: 'A' stage: 'B' } inner_product_param { num_output: 1 } }"""
    path = write(tmp_path, "s.prototxt", text)
    assert caffe.Net(path, caffe.TEST).outputs == ["data"]
    assert caffe.Net(path, caffe.TEST, level=1).outputs == ["L1"]
    assert caffe.Net(path, caffe.TEST, stages=["A"]).outputs == ["A"]
    assert caffe.Net(path, caffe.TEST, stages=["A", "B"]).outputs == ["A", "AB"]


def test_forward_all_and_forward_backward_all(tmp_path):
    net = caffe.Net(write(tmp_path, "d.prototxt", DEPLOY), caffe.TEST)
    x = np.random.default_rng(2).normal(size=(5, 3, 4, 4)).astype(np.float32)
    w, b = net.params["ip"][0].data, net.params["ip"][1].data
    logits = x.reshape(5, -1) @ w.T + b
    prob = np.exp(logits - logits.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    out = net.forward_all(data=x, blobs=["ip"])            # batches of 2, last one padded
    np.testing.assert_allclose(out["prob"], prob, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["ip"], logits, rtol=1e-5, atol=1e-5)
    assert net.blobs["data"].shape == (2, 3, 4, 4)
    g = np.ones((5, 5), np.float32)
    outs, diffs = net.forward_backward_all(data=x, prob=g)
    assert diffs["data"].shape == (5, 3, 4, 4)
    # softmax' with an all-ones top diff is zero
    np.testing.assert_allclose(diffs["data"], 0, atol=1e-6)


def test_set_input_arrays_memory_data(tmp_path):
    text = """layer { name: 'mem' type: 'MemoryData' top: 'data' top: 'label'
      memory_data_param { batch_size: 2 channels: 1 height: 1 width: 3 } }
    layer { name: 'ip' type: 'InnerProduct' bottom: 'data' top: 'ip'
      inner_product_param { num_output: 1 weight_filler { type: 'constant' value: 1 } } }"""
    net = caffe.Net(write(tmp_path, "m.prototxt", text), caffe.TEST)
    assert net.inputs == []                                 # as Caffe: not an Input layer
    data = np.arange(12, dtype=np.float32).reshape(4, 1, 1, 3)
    net.set_input_arrays(data, np.array([10, 11, 12, 13], np.float32))
    sums = []
    for _ in range(3):                                      # batches go round
        sums.append(net.forward()["ip"].ravel().tolist())
        labels = net.blobs["label"].data.ravel().tolist()
    assert net.blobs["label"].shape == (2, 1, 1, 1)            # as Caffe
    assert sums == [[3, 12], [21, 30], [3, 12]] and labels == [10, 11]
    with pytest.raises(NetrunError, match="multiple of the batch size"):
        net.set_input_arrays(data[:3], np.zeros(3, np.float32))


# -- Python layers -------------------------------------------------------------------------
def test_python_layers(tmp_path, pymodule):
    text = f"""name: 'py' force_backward: true
    layer {{ name: 'data' type: 'Input' top: 'data' input_param {{ shape {{ dim: 2 dim: 3 }} }} }}
    layer {{ type: 'Python' name: 'one' bottom: 'data' top: 'one' python_param {{ module: '{pymodule}' layer: 'Times' }} }}
    layer {{ type: 'Python' name: 'two' bottom: 'one' top: 'two' python_param {{ module: '{pymodule}' layer: 'Times' param_str: '2' }} }}"""
    net = caffe.Net(write(tmp_path, "p.prototxt", text), caffe.TRAIN)
    net.blobs["data"].data[...] = 3
    assert net.forward()["two"].tolist() == [[60.0] * 3] * 2
    net.blobs["two"].diff[...] = 1
    net.backward()
    assert net.blobs["data"].diff.tolist() == [[20.0] * 3] * 2
    assert net.layer_dict["two"].k == 2.0              # the user's object's attributes
    net.blobs["data"].reshape(4, 1)
    assert net.forward()["two"].shape == (4, 1)


def test_python_layer_errors_propagate_unchanged(tmp_path, pymodule):
    text = f"""layer {{ name: 'data' type: 'Input' top: 'data' input_param {{ shape {{ dim: 1 }} }} }}
    layer {{ type: 'Python' name: 'b' bottom: 'data' top: 'b' python_param {{ module: '{pymodule}' layer: 'Broken' param_str: 'x' }} }}"""
    with pytest.raises(ValueError, match="bad param_str 'x'"):
        caffe.Net(write(tmp_path, "b.prototxt", text), caffe.TEST)


def test_python_layer_phase_and_blobs(tmp_path, pymodule):
    text = f"""layer {{ type: 'Python' name: 'ph' top: 'phase' python_param {{ module: '{pymodule}' layer: 'Phase' }} }}"""
    path = write(tmp_path, "ph.prototxt", text)
    for phase in (caffe.TRAIN, caffe.TEST):
        net = caffe.Net(path, phase)
        assert float(net.forward()["phase"]) == phase - 0.5
    net.params["ph"][0].data[...] = [4, 5]
    net.save(str(tmp_path / "ph.caffemodel"))
    again = caffe.Net(path, caffe.TEST, weights=str(tmp_path / "ph.caffemodel"))
    assert again.params["ph"][0].data.tolist() == [4, 5]


# -- solvers ----------------------------------------------------------------------------------
def solver_file(tmp_path, extra=""):
    net = write(tmp_path, "simple.prototxt", SIMPLE)
    return write(tmp_path, "solver.prototxt", f"""net: '{net}' test_iter: 2 test_interval: 10
        base_lr: 0.01 momentum: 0.9 weight_decay: 0.0005 lr_policy: 'inv' gamma: 0.0001
        power: 0.75 max_iter: 20 snapshot_after_train: false snapshot_prefix: "model" {extra}""")


def test_solver_basics(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GLOG_minloglevel", "2")
    solver = caffe.SGDSolver(solver_file(tmp_path))
    assert isinstance(caffe.get_solver(solver_file(tmp_path, "type: 'Adam'")), caffe.AdamSolver)
    assert isinstance(solver.net, caffe.Net) and len(solver.test_nets) == 1
    assert solver.iter == 0 and solver.lr == pytest.approx(0.01)
    calls = []
    solver.add_callback(lambda: calls.append("start"), lambda: calls.append("grads"))
    solver.step(2)
    assert solver.iter == 2 and calls == ["start", "grads"] * 2
    assert solver.lr == pytest.approx(0.01 * (1 + 0.0001 * 2) ** -0.75)
    # apply_update alone: w = 0, g = 1 -> momentum history is not zero after step, so use a fresh one
    fresh = caffe.SGDSolver(solver_file(tmp_path))
    w = fresh.net.layers[1].blobs[0].data
    w[...] = 0
    fresh.net.layers[1].blobs[0].diff[...] = 1
    fresh.apply_update()
    np.testing.assert_allclose(w, -0.01, rtol=1e-6)
    assert fresh.iter == 0
    fresh.solve()
    assert fresh.iter == 20
    fresh.snapshot()                          # relative prefix: the working folder, as Caffe
    assert (tmp_path / "model_iter_20.caffemodel").is_file()
    assert (tmp_path / "model_iter_20.solverstate").is_file()
    other = caffe.SGDSolver(solver_file(tmp_path))
    other.restore("model_iter_20.solverstate")
    assert other.iter == 20
    assert np.array_equal(other.net.params["ip"][0].data, fresh.net.params["ip"][0].data)
    test_net = caffe.Net(str(tmp_path / "simple.prototxt"), caffe.TEST)
    other.share_weights(test_net)
    assert test_net.params["ip"][0].data is other.net.params["ip"][0].data


# -- io ---------------------------------------------------------------------------------------
def test_blobproto_and_datum():
    blob = caffe_pb2.BlobProto()
    blob.data.extend(range(6))
    blob.num, blob.channels, blob.height, blob.width = 1, 1, 2, 3
    assert caffe.io.blobproto_to_array(blob).shape == (1, 1, 2, 3)
    blob = caffe.io.array_to_blobproto(np.arange(6.0).reshape(2, 3), diff=np.ones((2, 3)))
    assert caffe.io.blobproto_to_array(blob).tolist() == [[0, 1, 2], [3, 4, 5]]
    assert caffe.io.blobproto_to_array(blob, return_diff=True).sum() == 6
    bare = caffe_pb2.BlobProto()
    bare.data.extend([1, 2])
    with pytest.raises(ValueError):
        caffe.io.blobproto_to_array(bare)
    scalar = caffe_pb2.BlobProto()
    scalar.data.append(123)
    assert caffe.io.blobproto_to_array(scalar) == 123
    arrays = [np.ones((2, 2)), np.zeros(3)]
    back = caffe.io.blobprotovector_str_to_arraylist(caffe.io.arraylist_to_blobprotovector_str(arrays))
    assert [a.tolist() for a in back] == [a.tolist() for a in arrays]
    d8 = caffe.io.array_to_datum(np.arange(24, dtype=np.uint8).reshape(2, 3, 4), label=5)
    assert d8.label == 5 and len(d8.data) == 24
    assert np.array_equal(caffe.io.datum_to_array(d8), np.arange(24).reshape(2, 3, 4))
    df = caffe.io.array_to_datum(np.full((1, 2, 2), 0.5))
    assert not df.HasField("label") and caffe.io.datum_to_array(df).tolist() == [[[0.5] * 2] * 2]
    with pytest.raises(ValueError):
        caffe.io.array_to_datum(np.ones((2, 2)))


def test_resize_and_oversample():
    im = np.arange(12, dtype=np.float32).reshape(2, 2, 3)
    up = caffe.io.resize_image(im, (4, 4))
    # half-pixel centres: outputs sample 0, 0.25, 0.75, 1 of the way between the two pixels
    np.testing.assert_allclose(up[0, :, 0], [0, 0.75, 2.25, 3])
    np.testing.assert_allclose(up[:, 0, 0], [0, 1.5, 4.5, 6])
    assert up.dtype == np.float32 and up.shape == (4, 4, 3)
    down = caffe.io.resize_image(np.kron(np.arange(4.0).reshape(2, 2), np.ones((2, 2)))[..., None], (2, 2))
    assert down[..., 0].tolist() == [[0, 1], [2, 3]]
    assert caffe.io.resize_image(im, (3, 1), interp_order=0).shape == (3, 1, 3)
    crops = caffe.io.oversample([np.arange(16, dtype=np.float32).reshape(4, 4, 1)], (2, 2))
    assert crops.shape == (10, 2, 2, 1)
    assert crops[0, ..., 0].tolist() == [[0, 1], [4, 5]]
    assert crops[3, ..., 0].tolist() == [[10, 11], [14, 15]]
    assert crops[4, ..., 0].tolist() == [[5, 6], [9, 10]]          # center
    assert crops[5, ..., 0].tolist() == [[1, 0], [5, 4]]            # mirrored corner


def test_transformer():
    t = caffe.io.Transformer({"data": (1, 3, 2, 2)})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255)
    t.set_mean("data", np.array([10.0, 20.0, 30.0]))
    t.set_input_scale("data", 0.5)
    img = np.random.default_rng(3).uniform(size=(2, 2, 3)).astype(np.float32)
    x = t.preprocess("data", img)
    expected = (img.transpose(2, 0, 1)[::-1] * 255 - np.array([10, 20, 30])[:, None, None]) * 0.5
    np.testing.assert_allclose(x, expected, rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(t.deprocess("data", x[None]), img, atol=1e-6)
    assert t.preprocess("data", np.zeros((4, 6, 3))).shape == (3, 2, 2)      # resized
    with pytest.raises(Exception, match="not one of the net inputs"):
        t.preprocess("nope", img)
    with pytest.raises(ValueError):
        t.set_mean("data", np.zeros(2))


def test_load_image(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    rgb = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [255, 255, 255]]], np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "g.png")
    c = caffe.io.load_image(str(tmp_path / "c.png"))
    assert c.dtype == np.float32 and np.array_equal(c, rgb / np.float32(255))     # RGB, [0, 1]
    g = caffe.io.load_image(str(tmp_path / "c.png"), color=False)
    np.testing.assert_allclose(g[..., 0], [[0.2125, 0.7154], [0.0721, 1.0]], atol=1e-6)
    assert caffe.io.load_image(str(tmp_path / "g.png")).shape == (2, 2, 3)
    assert caffe.io.load_image(str(tmp_path / "g.png"), color=False).shape == (2, 2, 1)


# -- net_spec -----------------------------------------------------------------------------------
def lenet(n_spec):
    n = caffe.NetSpec() if n_spec else None
    data, label = L.DummyData(shape=[dict(dim=[2, 1, 8, 8]), dict(dim=[2])], ntop=2)
    conv = L.Convolution(data, kernel_size=3, num_output=4, weight_filler=dict(type="xavier"),
                         param=[dict(lr_mult=1), dict(lr_mult=2)])
    pool = L.Pooling(conv, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    relu = L.ReLU(pool, in_place=True)
    ip = L.InnerProduct(relu, num_output=3)
    loss = L.SoftmaxWithLoss(ip, label, loss_weight=2)
    if not n_spec:
        return loss.to_proto()
    n.data, n.label, n.conv, n.pool, n.relu, n.ip, n.loss = data, label, conv, pool, relu, ip, loss
    return n.to_proto()


def test_net_spec_names_and_params(tmp_path):
    named = lenet(True)
    assert [l.name for l in named.layer] == ["data", "conv", "pool", "relu", "ip", "loss"]
    assert list(named.layer[3].bottom) == list(named.layer[3].top) == ["pool"]
    conv = named.layer[1]
    assert conv.convolution_param.kernel_size == [3] and conv.convolution_param.num_output == 4
    assert conv.convolution_param.weight_filler.type == "xavier"
    assert [p.lr_mult for p in conv.param] == [1, 2]
    assert named.layer[2].pooling_param.pool == caffe_pb2.PoolingParameter.MAX
    assert list(named.layer[5].loss_weight) == [2]
    anon = lenet(False)
    assert [l.name for l in anon.layer] == ["DummyData1", "Convolution1", "Pooling1", "ReLU1",
                                            "InnerProduct1", "SoftmaxWithLoss1"]
    assert list(anon.layer[0].top) == ["DummyData1", "DummyData2"]
    net = caffe.Net(write(tmp_path, "n.prototxt", str(named)), caffe.TEST)
    assert len(net.layers) == 6 and net.outputs == ["loss"]
    deconv = L.Deconvolution(L.Input(shape=dict(dim=[1, 1, 4, 4])), num_output=2, kernel_size=4,
                             stride=2).to_proto()
    assert deconv.layer[1].convolution_param.stride == [2]      # pycaffe cannot do this one


def test_net_spec_zero_tops_and_type_error(tmp_path):
    n = caffe.NetSpec()
    n.data, n.data2 = L.DummyData(shape=dict(dim=3), ntop=2)
    n.silence = L.Silence(n.data, n.data2, ntop=0)
    proto = n.to_proto()
    assert [l.name for l in proto.layer] == ["data", "silence"]
    net = caffe.Net(write(tmp_path, "z.prototxt", str(proto)), caffe.TEST)
    assert len(net.forward()) == 0
    with pytest.raises(TypeError, match=r"^Silence input 0 is not a Top \(type is <class 'tuple'>\)$"):
        L.Silence(L.DummyData(ntop=2), ntop=0)


# -- coord_map ----------------------------------------------------------------------------------
def coord_net(ks=3, stride=1, pad=0, pool=2, dstride=2, dpad=0):
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 1, 100, 100]))
    n.conv = L.Convolution(n.data, num_output=10, kernel_size=ks, stride=stride, pad=pad)
    n.pool = L.Pooling(n.conv, pool=P.Pooling.MAX, kernel_size=pool, stride=pool, pad=0)
    n.deconv = L.Deconvolution(n.pool, num_output=10, kernel_size=dstride * 2, stride=dstride,
                               pad=dpad)
    return n


def test_coord_map():
    n = coord_net()
    assert coord_map_from_to(n.deconv, n.data) == (1, 1, 0)
    n4 = coord_net(pool=4, dstride=4)
    assert coord_map_from_to(n4.deconv, n4.data) == (1, 1, -1)
    n3 = coord_net(pad=3)
    assert coord_map_from_to(n3.deconv, n3.data)[2] == -3
    n.crop = crop(n.deconv, n.data)
    assert coord_map_from_to(n.crop, n.data) == (1, 1, 0)
    proto = n.to_proto()
    assert proto.layer[-1].type == "Crop" and proto.layer[-1].crop_param.axis == 2
    n.ip = L.InnerProduct(n.deconv, num_output=10)
    with pytest.raises(RuntimeError):
        coord_map_from_to(n.ip, n.data)
    with pytest.raises(AssertionError):
        m = coord_net(pool=3, dstride=2)
        crop(m.deconv, m.data)
    with pytest.raises(AssertionError):
        m = coord_net(dpad=10)
        crop(m.deconv, m.data)


# -- draw ----------------------------------------------------------------------------------------
def test_draw(tmp_path):
    from netrun.pycaffe import draw
    proto = lenet(True)
    dot = draw.to_dot(proto, "LR")
    assert '"conv_Convolution" [label="conv\\n(Convolution)\\nkernel size: 3\\nstride: 1\\npad: 0"' in dot
    assert '"pool_Pooling" [label="pool\\n(Pooling MAX)' in dot
    assert '"conv_Convolution" -> "conv_blob" [label="4"];' in dot
    assert '"relu_ReLU" [label="relu\\n(ReLU)", shape="record", fillcolor="#90EE90"' in dot
    assert draw.draw_net(proto, "TB", ext="dot").decode().count("->") == 13
    assert draw.get_layer_lr_mult(proto.layer[1]) == (1, 2)
    import shutil
    if shutil.which("dot") is None:
        pytest.skip("Graphviz's dot is not installed")
    draw.draw_net_to_file(proto, str(tmp_path / "n.png"))
    assert (tmp_path / "n.png").read_bytes()[:4] == b"\x89PNG"


# -- Classifier / Detector --------------------------------------------------------------------
def tiny_classifier_files(tmp_path, channels=1):
    text = """layer { name: 'data' type: 'Input' top: 'data' input_param { shape { dim: 3 dim: %d dim: 4 dim: 4 } } }
    layer { name: 'ip' type: 'InnerProduct' bottom: 'data' top: 'ip'
      inner_product_param { num_output: 2 weight_filler { type: 'gaussian' std: 1 } } }
    layer { name: 'prob' type: 'Softmax' bottom: 'ip' top: 'prob' }""" % channels
    model = write(tmp_path, "c.prototxt", text)
    net = caffe.Net(model, caffe.TEST)
    net.save(str(tmp_path / "c.caffemodel"))
    return model, str(tmp_path / "c.caffemodel"), net


def test_classifier(tmp_path):
    model, weights, net = tiny_classifier_files(tmp_path)
    clf = caffe.Classifier(model, weights, raw_scale=2.0)
    rng = np.random.default_rng(4)
    images = [rng.uniform(size=(4, 4, 1)).astype(np.float32) for _ in range(5)]
    probs = clf.predict(images, oversample=False)
    x = np.stack([im.transpose(2, 0, 1) * 2 for im in images])
    w, b = net.params["ip"][0].data, net.params["ip"][1].data
    logits = x.reshape(5, -1) @ w.T + b
    expected = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)
    over = caffe.Classifier(model, weights, image_dims=(6, 6)).predict(images)
    assert over.shape == (5, 2)
    np.testing.assert_allclose(over.sum(1), 1, atol=1e-6)


def test_detector_windows(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    model, weights, net = tiny_classifier_files(tmp_path, channels=3)
    img = (np.arange(64).reshape(8, 8) * 4).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "i.png")
    det = caffe.Detector(model, weights, raw_scale=1.0)
    windows = np.array([[0, 0, 4, 4], [2, 4, 6, 8]])
    found = det.detect_windows([(str(tmp_path / "i.png"), windows)])
    assert [d["filename"] for d in found] == [str(tmp_path / "i.png")] * 2
    gray = img / np.float32(255)                              # load_image repeats gray to RGB
    crops = np.repeat(np.stack([gray[0:4, 0:4], gray[2:6, 4:8]])[:, None], 3, axis=1)
    w, b = net.params["ip"][0].data, net.params["ip"][1].data
    logits = crops.reshape(2, -1) @ w.T + b
    expected = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(np.stack([d["prediction"] for d in found]), expected, atol=1e-6)
    padded = caffe.Detector(model, weights, raw_scale=1.0, context_pad=1)
    assert padded.crop(np.ones((8, 8, 3), np.float32), np.array([2, 2, 5, 5])).shape == (4, 4, 3)


# -- the runner ---------------------------------------------------------------------------------
def test_runner_aliases_caffe_modules(tmp_path):
    script = write(tmp_path, "s.py", textwrap.dedent("""
        import sys
        import caffe, caffe.io, caffe.draw, caffe.coord_map
        from caffe.proto import caffe_pb2
        from caffe import layers as L, params as P
        import netrun.pycaffe, netrun.proto.caffe_pb2
        assert caffe is netrun.pycaffe and caffe_pb2 is netrun.proto.caffe_pb2
        assert caffe._caffe.Net is caffe.Net and caffe.pycaffe.Net is caffe.Net
        print("argv", sys.argv[1:], __name__)
        sys.exit(3)
        """))
    env = dict(os.environ, PYTHONPATH=str(ROOT), GLOG_minloglevel="2")
    res = subprocess.run([sys.executable, "-m", "netrun", "pycaffe", script, "a", "--b"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 3, res.stderr
    assert res.stdout.strip() == "argv ['a', '--b'] __main__"
    res = subprocess.run([sys.executable, "-m", "netrun.pycaffe", "-c",
                          "import caffe, sys; print(caffe.__name__, sys.argv)", "x"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "netrun.pycaffe ['-c', 'x']", res.stderr
    # netrun's user errors: one line, exit status 2, as every netrun command
    res = subprocess.run([sys.executable, "-m", "netrun", "pycaffe", "-q", "-c",
                          "import caffe; caffe.Net('missing.prototxt', caffe.TEST)"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and res.stderr == "netrun: error: missing.prototxt: no such file\n"
    # nothing is installed: outside the runner there is no caffe module
    res = subprocess.run([sys.executable, "-c", "import netrun.pycaffe, caffe"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "No module named 'caffe'" in res.stderr


def test_hdf5_snapshots(tmp_path, monkeypatch):
    h5py = pytest.importorskip("h5py")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GLOG_minloglevel", "2")
    net = write(tmp_path, "const.prototxt", SIMPLE.replace("type: 'gaussian' std: 1 }",
                                                           "type: 'constant' value: 0.5 }"))
    path = write(tmp_path, "solver.prototxt", f"""net: '{net}' base_lr: 0.01 lr_policy: 'fixed'
        type: 'Adam' max_iter: 20 snapshot_prefix: "model" snapshot_format: HDF5""")
    straight = caffe.get_solver(path)
    straight.step(4)
    first = caffe.get_solver(path)
    first.step(2)
    first.snapshot()
    with h5py.File("model_iter_2.solverstate.h5", "r") as f:       # Caffe's layout
        assert f["iter"][()].tolist() == [2] and f["current_step"][()].tolist() == [0]
        assert f["learned_net"][()] == b"model_iter_2.caffemodel.h5"
        assert sorted(f["history"]) == ["0", "1", "2", "3", "4", "5", "6", "7"]   # Adam: 2 x 4
    with h5py.File("model_iter_2.caffemodel.h5", "r") as f:
        assert f["data/ip/0"].shape == (13, 11 * 8 * 9)
    resumed = caffe.get_solver(path)
    resumed.restore("model_iter_2.solverstate.h5")
    assert resumed.iter == 2
    resumed.step(2)
    for name in ("conv", "ip"):
        for a, b in zip(resumed.net.params[name], straight.net.params[name]):
            np.testing.assert_array_equal(a.data, b.data)
