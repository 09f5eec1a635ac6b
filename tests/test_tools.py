"""netrun summary / draw / gradcheck / compare (the tools Caffe never had).

Fast: the conformance nets are built shapes-only (no weights are filled), the
gradient checks run on small single-layer cases.
"""
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conformance import Case, shared_cases_dir
from netrun import Net
from netrun.cli import main
from netrun.io.prototxt import read_net
from netrun.layers import layer_class
from netrun.net import PHASES, filter_layers
from netrun.proto import caffe_pb2
from netrun.tools.summary import split_aliases

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
CASES = shared_cases_dir()
EXTRA = CASES.parent / "extra_nets"


def run(*args, code=0):
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == code, (res.exit_code, res.output, res.exception)
    return res


def missing_types(prototxt, phase="test"):
    src = read_net(str(prototxt), warn=lambda m: None)
    state = caffe_pb2.NetState(phase=PHASES[phase])
    kept = [src.param.layer[i] for i in filter_layers(src.param, state)]
    return sorted({lp.type for lp in kept if layer_class(lp.type) is None})


def case_or_skip(name):
    d = CASES / name
    if not (d / "case.json").exists():
        pytest.skip(f"conformance case {name} not available")
    return Case(d)


# -- summary ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["net_resnet50_deploy", "net_googlenet_deploy",
                                  "net_caffenet_deploy"])
def test_summary_matches_caffe_shapes_and_param_counts(name):
    case = case_or_skip(name)
    missing = case.missing_types()
    if missing:
        pytest.xfail(f"layer types not implemented yet: {', '.join(missing)}")
    out = json.loads(run("summary", case.prototxt, "--phase", case.phase, "--json").stdout)
    caffe = case.summary()
    shapes = {t["name"]: t["shape"] for layer in out["layers"] for t in layer["tops"]}
    want = {k[len("data/"):]: v["shape"] for k, v in caffe.items() if k.startswith("data/")}
    assert want
    assert {k: shapes.get(k) for k in want} == want
    counts = sum(v["count"] for k, v in caffe.items() if k.startswith("param/"))
    assert out["totals"]["params"] == counts
    assert out["totals"]["macs"] > 0
    assert out["totals"]["memory_backward"] > out["totals"]["memory_forward"] > 0
    # the table prints the same shapes
    table = run("summary", case.prototxt, "--phase", case.phase).stdout
    for shape in set(map(tuple, want.values())):
        assert "(" + ", ".join(map(str, shape)) + ")" in table
    assert f"parameters: {counts:,}" in table


def test_summary_rows_macs_memory_and_totals():
    out = json.loads(run("summary", MODELS / "mlp_loss.prototxt", "--format", "json").stdout)
    rows = {r["name"]: r for r in out["layers"]}
    assert [r["name"] for r in out["layers"]] == ["data", "label", "ip1", "relu1", "ip2", "loss"]
    assert rows["ip1"]["bottoms"] == ["data"]
    assert rows["ip1"]["tops"][0]["name"] == "ip1" and rows["ip1"]["tops"][0]["shape"] == [4, 16]
    assert rows["ip1"]["params"] == 16 * 10 + 16
    assert rows["ip1"]["macs"] == 4 * 10 * 16          # M*K*N
    assert rows["ip2"]["macs"] == 4 * 16 * 3
    assert rows["relu1"]["memory"] == 0                # in place
    assert rows["ip1"]["memory"] == 4 * 16 * 4         # float32 bytes
    t = out["totals"]
    assert t["params"] == 176 + 51
    assert t["macs"] == 640 + 192
    act = 4 * (40 + 4 + 64 + 12 + 1)
    assert t["memory_forward"] == act + 4 * 227
    assert t["memory_backward"] == 2 * (act + 4 * 227)
    quiet = run("summary", MODELS / "mlp_loss.prototxt", "-q").stdout
    assert "ip1" not in quiet and "parameters: 227" in quiet


def test_summary_conv_macs_splits_and_shared_params(tmp_path):
    net = tmp_path / "n.prototxt"
    net.write_text("""
        name: "n"
        layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 4 dim: 5 dim: 5 } } }
        layer { name: "c" type: "Convolution" bottom: "x" top: "c"
                convolution_param { num_output: 6 kernel_size: 3 pad: 1 group: 2 } }
        layer { name: "a" type: "InnerProduct" bottom: "c" top: "a" param { name: "w" }
                inner_product_param { num_output: 3 bias_term: false } }
        layer { name: "b" type: "InnerProduct" bottom: "c" top: "b" param { name: "w" }
                inner_product_param { num_output: 3 bias_term: false } }
    """)
    out = json.loads(run("summary", net, "--json").stdout)
    rows = {r["name"]: r for r in out["layers"]}
    assert rows["c"]["macs"] == (2 * 6 * 5 * 5) * (4 // 2 * 3 * 3)
    assert rows["c"]["params"] == 6 * 2 * 3 * 3 + 6
    assert rows["b"]["shared_params"] == 3 * 150
    assert out["totals"]["params"] == 6 * 2 * 9 + 6 + 3 * 150      # "w" counted once
    assert "c_c_0_split" not in rows and rows["a"]["bottoms"] == ["c"]
    shown = json.loads(run("summary", net, "--json", "--show-splits").stdout)
    assert any(r["type"] == "Split" for r in shown["layers"])
    bigger = json.loads(run("summary", net, "--json", "--input-shape", "x=8,4,5,5").stdout)
    assert bigger["totals"]["macs"] == 4 * out["totals"]["macs"]


# -- draw -------------------------------------------------------------------------------------
def _draw_nets():
    nets = []
    if CASES.is_dir():
        for d in sorted(CASES.iterdir()):
            if (d / "case.json").exists():
                nets.append(pytest.param(d / "net.prototxt", Case(d).phase, id=d.name))
    if EXTRA.is_dir():
        for f in sorted(EXTRA.glob("net_*.prototxt")):
            nets.append(pytest.param(f, "test", id=f.stem))
    return nets


def _escaped(name):
    return name.replace("\\", "\\\\").replace('"', '\\"')


@pytest.mark.parametrize("prototxt,phase", _draw_nets())
def test_draw_writes_valid_dot(prototxt, phase, tmp_path):
    missing = missing_types(prototxt, phase)
    if missing:
        pytest.skip(f"layer types not implemented yet: {', '.join(missing)}")
    out = tmp_path / "net.dot"
    run("draw", prototxt, out, "--phase", phase, "-q")
    dot = out.read_text()
    assert dot.startswith("digraph ") and dot.rstrip().endswith("}")
    outside = re.sub(r'"(?:[^"\\]|\\.)*"', '""', dot)          # braces outside quoted strings
    assert outside.count("{") == outside.count("}") == 1
    net = Net(str(prototxt), phase=phase, warn=lambda m: None, max_memory=None, fill_params=False)
    for layer in net.layers:
        if layer.type == "Split":
            continue
        name = _escaped(layer.name)
        assert f'label="{name}\\n' in dot or f"\\n+ {name} (" in dot, layer.name
    alias = split_aliases(net)
    for name in net.outputs:
        if not name.startswith("(automatic"):
            assert f'label="{_escaped(alias.get(name, name))}\\n' in dot
    assert not list(tmp_path.glob(".netrun-*"))          # no temporary file left


def test_draw_stacks_in_place_layers_and_hides_splits(tmp_path):
    net = tmp_path / "n.prototxt"
    net.write_text("""
        name: "fan"
        layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
        layer { name: "a" type: "InnerProduct" bottom: "x" top: "a" inner_product_param { num_output: 4 } }
        layer { name: "r" type: "ReLU" bottom: "a" top: "a" }
        layer { name: "s1" type: "Sigmoid" bottom: "a" top: "s1" }
        layer { name: "s2" type: "TanH" bottom: "a" top: "s2" }
    """)
    dot_path = tmp_path / "n.dot"
    run("draw", net, dot_path, "--rankdir", "LR")
    dot = dot_path.read_text()
    assert "rankdir=LR;" in dot
    assert "a\\nInnerProduct\\nout 4\\n+ r (ReLU)" in dot      # stacked into the producer
    assert "Split" not in dot and "_split" not in dot
    assert 'label="a\\n(2, 4)", shape=ellipse' in dot          # two consumers: a blob node
    assert 'label="x\\n(2, 3)"' in dot                          # one consumer: a labelled edge
    run("draw", net, dot_path, "--show-splits")
    assert "Split" in dot_path.read_text()


def test_draw_conv_key_params(tmp_path):
    out = tmp_path / "lenet.dot"
    run("draw", MODELS / "lenet_deploy.prototxt", out)
    dot = out.read_text()
    assert "Convolution\\nout 20, kernel 5x5" in dot
    assert "Pooling\\nMAX, kernel 2, stride 2" in dot


def test_draw_svg_with_graphviz(tmp_path):
    if shutil.which("dot") is None:
        pytest.skip("Graphviz's dot program is not installed")
    out = tmp_path / "lenet.svg"
    run("draw", MODELS / "lenet_deploy.prototxt", out, "-q")
    assert "<svg" in out.read_text()


def test_draw_svg_without_graphviz_fails_with_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    out = tmp_path / "lenet.svg"
    res = run("draw", MODELS / "lenet_deploy.prototxt", out, code=2)
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "apt-get install graphviz" in lines[0] and "brew" in lines[0]
    assert not out.exists() and not list(tmp_path.glob(".netrun-*"))
    run("draw", MODELS / "lenet_deploy.prototxt", tmp_path / "x.txt", code=2)


# -- gradcheck ---------------------------------------------------------------------------------
KINK = ("--kink", "0", "--kink-range", "0.01")
FINE = ("--stepsize", "1e-4")        # max-type layers: random values within 2h of a tie flip
CASE_INPUTS = ("@inputs",)           # the case's own inputs.npz instead of N(0, 1) values
# A subset covering every family (weights, windows, normalizers, losses, element-wise,
# in-place, shared parameters), small enough for a few seconds in all.
GRADCHECK_CASES = {
    "conv": (), "conv_group_nobias": (), "conv_dilation": (), "deconv_group": (),
    "innerproduct_transpose": (), "im2col": (),
    "pool_ave_pad": (), "pool_max_pad": FINE, "pool_rect": FINE, "spp": FINE,
    "lrn_across": (), "lrn_within": (), "batchnorm_train": (), "batchnorm_global": (),
    "scale_two_bottoms": (), "bias": (), "mvn": (),
    "softmax_axis2": (), "softmax_loss_spatial_ignore": (), "euclidean_loss": (),
    "sigmoid_xent_loss": (),
    "eltwise_prod": (), "eltwise_max": FINE, "concat_ch": (), "slice_points": (), "crop": (),
    "sigmoid": (), "tanh": (), "elu": (), "swish": (), "bnll": (), "power": (), "exp": (),
    "relu": KINK, "relu_leaky": KINK, "relu_inplace_on_input": KINK, "prelu": KINK,
    "absval": KINK, "dropout_test": (),
    "graph_shared_params": (), "graph_split_fanout": KINK,
    # cont must be 0/1: Caffe's LSTMUnit differentiates f = cont * sigmoid(x_f) as f (1 - f)
    "lstm_unit": CASE_INPUTS, "lstm": CASE_INPUTS, "rnn": CASE_INPUTS,
    # index inputs must be valid indices; infogain/contrastive need their labels
    "embed": CASE_INPUTS, "batch_reindex": CASE_INPUTS, "infogain": CASE_INPUTS,
    "contrastive": CASE_INPUTS, "reduction_asum": KINK, "tile": (), "parameter_layer": (),
}


@pytest.mark.parametrize("name", sorted(GRADCHECK_CASES))
def test_gradcheck_passes_on_conformance_case(name):
    case = case_or_skip(name)
    if case.backward == "none":
        pytest.skip("Caffe runs no backward for this case")
    missing = case.missing_types()
    if missing:
        pytest.skip(f"layer types not implemented yet: {', '.join(missing)}")
    args = ["gradcheck", case.prototxt, "--phase", case.phase, "--json", "-q"]
    for a in GRADCHECK_CASES[name]:
        args += ["--inputs", case.dir / "inputs.npz"] if a == "@inputs" else [a]
    if case.caffemodel:
        args += ["--weights", case.caffemodel]
    res = CliRunner().invoke(main, [str(a) for a in args])
    out = json.loads(res.stdout) if res.stdout.strip() else None
    assert res.exit_code == 0, (res.output, out and [
        (r["name"], b["name"], b["worst_rel_error"], b["failing"][:2])
        for r in out["layers"] for b in r["blobs"] if b["status"] == "fail"])
    checked = [b for r in out["layers"] for b in r["blobs"]]
    assert checked and sum(b["checked"] for b in checked) > 0
    assert all(b["worst_rel_error"] <= 1e-3 for b in checked if b["checked"])


def _write(tmp_path, text):
    p = tmp_path / "n.prototxt"
    p.write_text(text)
    return p


SMALL = """
    name: "small"
    layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 3 dim: 5 } } }
    layer { name: "ip" type: "InnerProduct" bottom: "x" top: "h"
            inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.5 }
                                  bias_filler { type: "gaussian" std: 0.5 } } }
    layer { name: "squash" type: "Sigmoid" bottom: "h" top: "y" }
"""


def test_gradcheck_fails_and_names_a_layer_with_a_broken_backward(tmp_path, monkeypatch):
    net = _write(tmp_path, SMALL)
    run("gradcheck", net, "-q")                               # the real backward passes
    sigmoid = layer_class("Sigmoid")
    original = sigmoid.backward

    def broken(self, top, propagate_down, bottom):
        original(self, top, propagate_down, bottom)
        if propagate_down[0]:
            bottom[0].diff[...] += 0.01                       # off by 0.01 everywhere

    monkeypatch.setattr(sigmoid, "backward", broken)
    res = run("gradcheck", net, code=1)
    assert "FAILED: 1 of 2 layers: squash" in res.output
    assert re.search(r"squash\s+Sigmoid\s+bottom 0 h .*FAIL \(12 failing\)", res.output)
    assert re.search(r"ip\s+InnerProduct\s+param 0 .* ok", res.output)
    out = json.loads(run("gradcheck", net, "--json", code=1).stdout)
    assert out["failed"] == ["squash"] and not out["ok"]
    bad = [r for r in out["layers"] if r["name"] == "squash"][0]["blobs"][0]
    assert bad["failures"] == 12 and len(bad["failing"]) == 10 and bad["worst_rel_error"] > 1e-3
    assert run("gradcheck", net, "-q", code=1).output == ""
    run("gradcheck", net, "--layer", "ip", "-q")              # the other layer alone passes


def test_gradcheck_kink_window_and_relu_convention(tmp_path):
    net = _write(tmp_path, """
        name: "r"
        layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 4 } } }
        layer { name: "relu" type: "ReLU" bottom: "x" top: "x" }
    """)
    x = np.array([[0.0, 1.0, -1.0, 0.005], [2.0, -0.5, 0.0, 0.3]])
    np.save(tmp_path / "x.npy", x)
    # at exactly 0 the analytic gradient is 0 (ReLU's convention), while the central
    # difference of E = x^2/2 gives (h^2/2)/(2h) = h/4 = 0.0025 > threshold
    out = json.loads(run("gradcheck", net, "--input", f"x={tmp_path / 'x.npy'}", "--json",
                         code=1).stdout)
    blob = out["layers"][0]["blobs"][0]
    assert sorted(tuple(f["index"]) for f in blob["failing"]) == [(0, 0), (1, 2)]
    assert all(f["analytic"] == 0 and f["numeric"] == pytest.approx(0.0025)
               for f in blob["failing"])
    out = json.loads(run("gradcheck", net, "--input", f"x={tmp_path / 'x.npy'}", "--json",
                         *KINK).stdout)
    blob = out["layers"][0]["blobs"][0]
    assert blob["skipped"] == 3 and blob["checked"] == 5 and blob["failures"] == 0


def test_gradcheck_exhaustive_and_max_features(tmp_path):
    net = _write(tmp_path, SMALL)
    out = json.loads(run("gradcheck", net, "--exhaustive", "--json").stdout)
    assert out["ok"] and all(b["checked"] == b["features"] for r in out["layers"]
                             for b in r["blobs"])
    out = json.loads(run("gradcheck", net, "--max-features", "3", "--json").stdout)
    assert all(b["checked"] == min(3, b["features"]) for r in out["layers"] for b in r["blobs"])
    res = run("gradcheck", net, "--layer", "nope", code=2)
    assert 'no layer named "nope"' in res.output


def test_gradcheck_dropout_train_reuses_its_mask(tmp_path):
    net = _write(tmp_path, """
        name: "d"
        layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 4 dim: 6 } } }
        layer { name: "drop" type: "Dropout" bottom: "x" top: "y" dropout_param { dropout_ratio: 0.5 } }
    """)
    run("gradcheck", net, "--phase", "train", "-q")


# -- compare ---------------------------------------------------------------------------------
def test_compare_exit_codes_and_keys_in_one_file(tmp_path):
    a, b, c, d = (tmp_path / f"{k}.npz" for k in "abcd")
    x = np.linspace(-1, 1, 12).reshape(3, 4)
    np.savez(a, x=x, y=np.ones(3), only_a=np.zeros(2), n=np.array([np.nan, 1.0]))
    np.savez(b, x=x * (1 + 1e-7), y=np.ones(3), only_b=np.zeros(2), n=np.array([np.nan, 1.0]))
    np.savez(c, x=x + 1e-3, y=np.ones(3))
    np.savez(d, x=x.reshape(4, 3), y=np.ones(3))
    res = run("compare", a, b)
    assert "only in A" in res.output and "only_a" in res.output
    assert "only in B" in res.output and "only_b" in res.output
    assert "FAIL" not in res.output
    run("compare", a, b, "--strict-keys", code=1)
    res = run("compare", a, c, code=1)
    assert re.search(r"^x .*FAIL", res.output, re.M) and re.search(r"^y .* ok", res.output, re.M)
    run("compare", a, c, "--atol", "2e-3")
    res = run("compare", a, d, code=1)
    assert "shapes differ" in res.output
    out = json.loads(run("compare", a, c, "--json", code=1).stdout)
    rows = {r["key"]: r for r in out["keys"]}
    assert not out["ok"] and out["only_in_a"] == ["n", "only_a"] and out["only_in_b"] == []
    assert rows["x"]["max_abs"] == pytest.approx(1e-3) and not rows["x"]["ok"] and rows["y"]["ok"]
    assert run("compare", a, c, "-q", code=1).output == ""
    assert "no such file" in run("compare", a, tmp_path / "missing.npz", code=2).output


@pytest.mark.parametrize("command", ["summary", "draw", "gradcheck", "compare"])
def test_help_has_an_example(command):
    text = run(command, "--help").output
    assert "Example" in text and f"netrun {command}" in text
    assert "-q, --quiet" in text
    if command != "draw":
        assert "--json" in text
