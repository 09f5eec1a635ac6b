"""In-place chains (BatchNorm -> Scale -> ReLU), led by the convolution that made
their blob (its bias add joins the tiles), run tile by tile must give exactly the
numbers of the layers run one after the other."""
import numpy as np
import pytest

import netrun
from netrun.kernels import tiles as _tiles

NET = """
name: "chains"
force_backward: true
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 3 dim: 5 dim: 9 dim: 7 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 24 kernel_size: 3 pad: 1
          weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1"
        scale_param { bias_term: true filler { type: "gaussian" std: 1 }
                      bias_filler { type: "gaussian" std: 0.5 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
        convolution_param { num_output: 16 kernel_size: 1
          weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "bn2" type: "BatchNorm" bottom: "conv2" top: "conv2" }
layer { name: "scale2" type: "Scale" bottom: "conv2" top: "conv2"
        scale_param { filler { type: "gaussian" std: 1 } } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2"
        relu_param { negative_slope: 0.1 } }
layer { name: "conv3" type: "Convolution" bottom: "conv2" top: "conv3"
        convolution_param { num_output: 6 kernel_size: 3 group: 2
          weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu3" type: "ReLU" bottom: "conv3" top: "conv3" }
layer { name: "ip" type: "InnerProduct" bottom: "conv3" top: "ip"
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.1 } } }
"""


def _run(phase, fused, tmp_path, threads, fused_runs=None):
    path = tmp_path / "chains.prototxt"
    path.write_text(NET)
    net = netrun.Net(str(path), phase=phase, seed=3)
    rng = np.random.default_rng(0)
    for name in ("bn1", "bn2"):                       # moving statistics
        bn = net.params[name]
        bn[0].data[...] = rng.normal(size=bn[0].shape)
        bn[1].data[...] = 0.5 + rng.random(bn[1].shape)
        bn[2].data[...] = 1.5
    if not fused:
        net.check_finite = "warn"                     # watching each layer: no fusion
    old = _tiles.THREADS
    _tiles.THREADS = threads
    if fused_runs is not None:                        # record the chains run fused
        run_chain = net._run_chain

        def recording(order, prepare, lead=False):
            ran = run_chain(order, prepare, lead)
            if ran:
                fused_runs.append([net.layers[k].name for k in order[:ran]])
            return ran
        net._run_chain = recording
    try:
        x = rng.normal(size=(3, 5, 9, 7)).astype(np.float32)
        net.forward(data=x)
        data = {k: b.data.copy() for k, b in net.blobs.items()}
        net.backward(ip=rng.normal(size=(3, 4)).astype(np.float32))
    finally:
        _tiles.THREADS = old
    diff = {k: b.diff.copy() for k, b in net.blobs.items()}
    params = {(k, i): (p.data.copy(), p.diff.copy()) for k, ps in net.params.items()
              for i, p in enumerate(ps)}
    return net, data, diff, params


@pytest.mark.parametrize("phase", ["test", "train"])
@pytest.mark.parametrize("threads", [1, 2])
def test_fused_chains_match_layer_by_layer(phase, threads, tmp_path, monkeypatch):
    monkeypatch.setattr(_tiles, "CHAIN_TILE_BYTES", 256)     # many tiles, several per thread
    monkeypatch.setattr(_tiles, "PARALLEL_MIN_BYTES", 0)
    runs = []
    net, d1, g1, p1 = _run(phase, True, tmp_path, threads, runs)
    _, d2, g2, p2 = _run(phase, False, tmp_path, threads)
    spans = net._chain_spans()
    names = {net.layers[a].name: net.layers[b].name for a, b in spans.items()}
    assert names == {"bn1": "relu1", "bn2": "relu2"}
    # Forward, each convolution leads the chain on its top.  relu2 has a negative
    # slope: it runs alone.  TRAIN-phase BatchNorm needs whole channels' statistics
    # first: the convolution's bias add then runs on its own, BatchNorm alone, Scale ->
    # ReLU after it fused.  Backward runs each in-place chain from its end down.
    if phase == "test":
        assert runs == [["conv1", "bn1", "scale1", "relu1"], ["conv2", "bn2", "scale2"],
                        ["conv3", "relu3"], ["scale2", "bn2"], ["relu1", "scale1", "bn1"]]
    else:
        assert runs == [["conv1"], ["scale1", "relu1"], ["conv2"], ["conv3", "relu3"],
                        ["relu1", "scale1"]]
    for k in d1:
        np.testing.assert_array_equal(d1[k], d2[k], err_msg=f"data/{k}")
        np.testing.assert_array_equal(g1[k], g2[k], err_msg=f"diff/{k}")
    for k in p1:
        np.testing.assert_array_equal(p1[k][0], p2[k][0], err_msg=f"param/{k}")
        np.testing.assert_array_equal(p1[k][1], p2[k][1], err_msg=f"param_diff/{k}")
    # the gradient is not trivial: Scale's parameters got one
    assert np.abs(p1[("scale1", 0)][1]).sum() > 0 and np.abs(p1[("scale1", 1)][1]).sum() > 0


def test_watching_each_layer_turns_fusion_off(tmp_path):
    runs = []
    _run("test", False, tmp_path, 1, runs)
    assert runs == []


def test_netrun_time_reports_a_fused_chain_on_its_first_layer(tmp_path):
    import json

    from click.testing import CliRunner

    from netrun.cli import main
    path = tmp_path / "chains.prototxt"
    path.write_text(NET)
    r = CliRunner().invoke(main, ["time", str(path), "-n", "2", "--json", "-q"])
    assert r.exit_code == 0, r.output
    layers = {d["name"]: d for d in json.loads(r.output)["layers"]}
    assert [layers[n]["forward_fused_into"] for n in ("conv1", "bn1", "scale1", "relu1")] == \
        [None, "conv1", "conv1", "conv1"]
    assert [layers[n]["backward_fused_into"] for n in ("bn1", "scale1", "relu1")] == \
        ["relu1", "relu1", None]
    assert layers["scale1"]["forward_ms"] == 0 and layers["conv1"]["forward_ms"] > 0
    assert layers["relu2"]["forward_fused_into"] is None    # negative slope: alone
