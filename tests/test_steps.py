"""A pass is a plan of steps (a layer, or an in-place chain run fused) that timers,
callbacks and freeing observe through one interface (netrun.steps)."""
import numpy as np

import netrun
from netrun import steps
from test_fusion import NET


class Record(steps.Observer):
    def __init__(self, per_layer=False):
        self.per_layer = per_layer
        self.before, self.steps = [], []

    def before_layer(self, i):
        self.before.append(i)

    def after(self, step):
        self.steps.append((tuple(step.indices), step.runs))


def make(tmp_path, phase="test", **kw):
    path = tmp_path / "chains.prototxt"
    path.write_text(NET)
    return netrun.Net(str(path), phase=phase, seed=3, **kw)


def test_fused_chains_are_one_step_and_layers_are_steps(tmp_path):
    net = make(tmp_path)
    names = [layer.name for layer in net.layers]
    x = np.random.default_rng(0).normal(size=(3, 5, 9, 7)).astype(np.float32)
    rec, timed = Record(), []
    net.forward(data=x, observers=[rec], timer=lambda idx: timed.append(tuple(idx)))
    got = [[names[i] for i in idx] for idx, _ in rec.steps]
    # a convolution leads the chain on its top; relu2 is leaky (negative_slope 0.1):
    # it has no channel-tile form, so it runs alone
    assert got == [["data"], ["conv1", "bn1", "scale1", "relu1"], ["conv2", "bn2", "scale2"],
                   ["relu2"], ["conv3", "relu3"], ["ip"]]
    assert timed == [idx for idx, _ in rec.steps] and rec.before == [0, 8, 11]
    rec = Record()
    net.backward(ip=np.ones((3, 4), np.float32), observers=[rec])
    got = [[names[i] for i in idx] for idx, _ in rec.steps]
    assert got == [["ip"], ["relu3"], ["conv3"], ["relu2"], ["scale2", "bn2"], ["conv2"],
                   ["relu1", "scale1", "bn1"], ["conv1"], ["data"]]
    assert all(runs == bool(net.layer_need_backward[idx[0]]) for idx, runs in rec.steps)


def test_a_per_layer_observer_sees_every_layer_and_the_same_numbers(tmp_path):
    x = np.random.default_rng(0).normal(size=(3, 5, 9, 7)).astype(np.float32)
    fused = make(tmp_path)
    ref = fused.forward(data=x)["ip"].copy()
    net = make(tmp_path)
    rec = Record(per_layer=True)
    out = net.forward(data=x, observers=[rec])["ip"]
    n = len(net.layers)
    assert rec.before == list(range(n)) and [s for s, _ in rec.steps] == [(i,) for i in range(n)]
    np.testing.assert_array_equal(out, ref)
    rec = Record(per_layer=True)
    net.backward(ip=np.ones((3, 4), np.float32), observers=[rec])
    assert rec.before == list(range(n - 1, -1, -1))           # every layer, as Caffe's callbacks
    assert rec.steps == [((i,), bool(net.layer_need_backward[i])) for i in range(n - 1, -1, -1)]


def test_inference_frees_through_the_same_steps(tmp_path):
    net = make(tmp_path, inference=True)
    x = np.random.default_rng(0).normal(size=(3, 5, 9, 7)).astype(np.float32)
    rec = Record()
    out = net.forward(data=x, observers=[rec])
    assert list(out) == ["ip"] and out["ip"].shape == (3, 4)
    assert len(rec.steps) == 6
    freed = {name for name, blob in net.blobs.items() if blob._data is None}
    assert freed == set(net.blobs) - {"ip"}                     # all but the output
