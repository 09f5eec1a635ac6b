"""A Concat's bottoms written straight into its top (Net._join_concats) must leave every
blob's data and diff exactly as the copying Concat does, and stay out of the way
where Caffe's separate copies would be seen."""
import numpy as np
import pytest

import netrun

NET = """
name: "joins"
force_backward: true
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: 9 dim: 8 } } }
layer { name: "sq" type: "Convolution" bottom: "data" top: "sq"
        convolution_param { num_output: 4 kernel_size: 1
          weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "a" type: "Convolution" bottom: "sq" top: "a"
        convolution_param { num_output: 5 kernel_size: 1
          weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu_a" type: "ReLU" bottom: "a" top: "a" }
layer { name: "b" type: "Convolution" bottom: "sq" top: "b"
        convolution_param { num_output: 3 kernel_size: 3 pad: 1
          weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu_b" type: "ReLU" bottom: "b" top: "b" }
layer { name: "cat" type: "Concat" bottom: "a" bottom: "b" top: "cat" }
layer { name: "c" type: "Convolution" bottom: "cat" top: "c"
        convolution_param { num_output: 2 kernel_size: 1
          weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "sq2" type: "ReLU" bottom: "sq" top: "sq2" }
layer { name: "cat2" type: "Concat" bottom: "c" bottom: "sq2" top: "cat2" }
layer { name: "relu_cat2" type: "ReLU" bottom: "cat2" top: "cat2" }
"""


def _run(tmp_path, join, shape=(1, 3, 9, 8), monkeypatch=None):
    path = tmp_path / "joins.prototxt"
    path.write_text(NET)
    net = netrun.Net(str(path), phase="test", seed=4)
    if not join:
        net._joins = {}
    x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    net.forward(data=x)
    data = {k: b.data.copy() for k, b in net.blobs.items()}
    net.backward(cat2=np.random.default_rng(2).normal(size=net.blobs["cat2"].shape)
                 .astype(np.float32))
    diff = {k: b.diff.copy() for k, b in net.blobs.items()}
    pdiff = {(k, i): p.diff.copy() for k, ps in net.params.items() for i, p in enumerate(ps)}
    return net, data, diff, pdiff


@pytest.mark.parametrize("shape", [(1, 3, 9, 8), (2, 3, 9, 8), (1, 3, 5, 6)])
def test_joined_concat_gives_the_copying_concats_numbers(tmp_path, shape):
    net, d1, g1, p1 = _run(tmp_path, True)
    if shape != (1, 3, 9, 8):                     # a new input shape: joins follow it
        x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
        net.forward(data=x)
        net.forward(data=x)
        d1 = {k: b.data.copy() for k, b in net.blobs.items()}
        ref = _run(tmp_path, False)[0]
        ref.forward(data=x)
        for k in d1:
            np.testing.assert_array_equal(d1[k], ref.blobs[k].data, err_msg=k)
        return
    # cat's bottoms live in cat; cat2's do not (its top is rewritten in place after it,
    # which Caffe's separate copy of c would not see)
    assert [net.layers[li].name for li in net._concat_joins()] == ["cat"]
    top = net.blobs["cat"].data
    assert np.shares_memory(net.blobs["a"].data, top) and np.shares_memory(net.blobs["b"].data, top)
    assert not np.shares_memory(net.blobs["c"].data, net.blobs["cat2"].data)
    _, d2, g2, p2 = _run(tmp_path, False)
    for k in d1:
        np.testing.assert_array_equal(d1[k], d2[k], err_msg=f"data/{k}")
        np.testing.assert_array_equal(g1[k], g2[k], err_msg=f"diff/{k}")
    for k in p1:
        np.testing.assert_array_equal(p1[k], p2[k], err_msg=f"param_diff/{k}")


def test_joins_survive_inference_freeing(tmp_path):
    path = tmp_path / "joins.prototxt"
    path.write_text(NET)
    x = np.random.default_rng(1).normal(size=(1, 3, 9, 8)).astype(np.float32)
    ref = netrun.Net(str(path), phase="test", seed=4).forward(data=x)["cat2"].copy()
    net = netrun.Net(str(path), phase="test", seed=4, inference=True)
    for _ in range(2):
        np.testing.assert_array_equal(net.forward(data=x)["cat2"], ref)
