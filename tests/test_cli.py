"""The CLI contract: forward/backward printing, dumps, --set, inputs, errors."""
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from netrun.cli import main

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"


def run(*args, ok=True):
    res = CliRunner().invoke(main, [str(a) for a in args])
    if ok:
        assert res.exit_code == 0, res.output
    return res


def test_relu_demo_leaky_by_set(tmp_path):
    plain, leaky = tmp_path / "plain.npz", tmp_path / "leaky.npz"
    out_plain = run("backward", MODELS / "relu_demo.prototxt", "--dump-diffs", plain).output
    out_leaky = run("backward", MODELS / "relu_demo.prototxt",
                    "--set", "relu.relu_param.negative_slope=0.1", "--dump-diffs", leaky).output
    assert out_plain != out_leaky
    p, q = np.load(plain), np.load(leaky)
    x = q["data/x"]
    np.testing.assert_array_equal(p["data/x"], x)          # same seeded inputs
    neg, pos = x < 0, x > 0
    assert neg.any() and pos.any()
    # plain ReLU: no gradient reaches negative inputs
    assert np.all(p["diff/x"][neg] == 0)
    # LeakyReLU: 0.1 x the top diff on negative inputs, the top diff itself on positive ones
    np.testing.assert_allclose(q["diff/x"][neg], 0.1 * q["diff/y"][neg], rtol=1e-6)
    np.testing.assert_allclose(q["diff/x"][pos], q["diff/y"][pos], rtol=1e-6)
    assert not np.allclose(p["diff/x"], q["diff/x"])


def test_relu_derivative_at_zero_is_the_slope(tmp_path):
    x = np.array([[-1.0, 0.0, 0.0, 2.0, -3.0, 0.0, 1.0, 4.0]] * 2, np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "g.npy", np.ones((2, 8), np.float32))
    for slope in (0.0, 0.25):
        out = tmp_path / f"d{slope}.npz"
        run("backward", MODELS / "relu_demo.prototxt", "--input", f"x={tmp_path / 'x.npy'}",
            "--input", f"t={tmp_path / 'x.npy'}", "--set", f"relu.relu_param.negative_slope={slope}",
            "--dump-diffs", out, "-q")
        d = np.load(out)
        dy = d["diff/y"]
        np.testing.assert_allclose(d["diff/x"][x == 0], slope * dy[x == 0])


def test_forward_prints_layers_and_outputs():
    res = run("forward", MODELS / "mlp_loss.prototxt")
    for word in ("ip1", "InnerProduct", "relu1", "loss", "mean|x|", "total loss"):
        assert word in res.output


def test_backward_prints_param_gradients(tmp_path):
    out = tmp_path / "d.npz"
    res = run("backward", MODELS / "mlp_loss.prototxt", "--dump-diffs", out)
    assert "parameter gradients" in res.output
    d = np.load(out)
    assert d["param_diff/ip1/0"].shape == (16, 10)
    assert np.abs(d["param_diff/ip2/0"]).sum() > 0
    # the inputs need no gradient: Caffe's pruning leaves their diff at zero
    assert np.all(d["diff/data"] == 0)


def test_force_backward_gives_input_diffs(tmp_path):
    out = tmp_path / "d.npz"
    run("backward", MODELS / "mlp_loss.prototxt", "--force-backward", "--dump-diffs", out, "-q")
    d = np.load(out)
    assert np.abs(d["diff/data"]).sum() > 0
    assert np.all(d["diff/label"] == 0)        # never forced into labels


def test_net_without_loss_gets_ones(tmp_path):
    proto = tmp_path / "n.prototxt"
    proto.write_text('layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }\n'
                     'layer { name: "s" type: "Sigmoid" bottom: "x" top: "y" }\n')
    out = tmp_path / "d.npz"
    res = run("backward", proto, "--dump-diffs", out)
    assert "set to ones" in res.output
    d = np.load(out)
    y = d["data/y"]
    np.testing.assert_allclose(d["diff/x"], y * (1 - y), rtol=1e-6)


def test_input_shape_and_reshape(tmp_path):
    out = tmp_path / "f.npz"
    run("forward", MODELS / "mlp_loss.prototxt", "--input-shape", "data=7,10",
        "--input-shape", "label=7", "--save", out, "-q")
    assert np.load(out)["data/ip2"].shape == (7, 3)
    np.save(tmp_path / "x.npy", np.zeros((5, 10), np.float32))
    res = run("forward", MODELS / "mlp_loss.prototxt", "--input", f"data={tmp_path / 'x.npy'}",
              "--input-shape", "label=5")
    assert "reshaping the net" in res.output


def test_float64(tmp_path):
    out = tmp_path / "f.npz"
    run("forward", MODELS / "mlp_loss.prototxt", "--dtype", "float64", "--save", out, "-q")
    assert np.load(out)["data/ip1"].dtype == np.float64


def test_values_flag():
    res = run("forward", MODELS / "relu_demo.prototxt", "-v")
    assert "[[" in res.output


@pytest.mark.parametrize("args,needle", [
    (["forward", "nope.prototxt"], "nope.prototxt: no such file"),
    (["forward", "{model}", "--set", "relu.relu_param.slope=1"], "has no field 'slope'"),
    (["forward", "{model}", "--set", "relu.relu_param.negative_slope=abc"], "is not a number"),
    (["forward", "{model}", "--set", "nolayer.x=1"], 'no layer named "nolayer"'),
    (["forward", "{model}", "--input-shape", "zzz=1,2"], '"zzz"'),
])
def test_user_errors_are_one_line(args, needle):
    args = [a.replace("{model}", str(MODELS / "relu_demo.prototxt")) for a in args]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2, res.output
    assert needle in res.output
    assert "Traceback" not in res.output


def test_parse_error_names_file_line_col(tmp_path):
    bad = tmp_path / "bad.prototxt"
    bad.write_text('name: "x"\nlayer {\n  name: "a"\n  tpye: "ReLU"\n}\n')
    res = CliRunner().invoke(main, ["forward", str(bad)])
    assert res.exit_code == 2
    assert f"{bad}:4:" in res.output


def test_unknown_layer_type_suggests(tmp_path):
    bad = tmp_path / "bad.prototxt"
    bad.write_text('layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 } } }\n'
                   'layer { name: "r" type: "Relu" bottom: "x" top: "y" }\n')
    res = CliRunner().invoke(main, ["forward", str(bad)])
    assert res.exit_code == 2
    assert f"{bad}:2" in res.output and '"Relu"' in res.output and "ReLU" in res.output
