"""CLI polish: --json reports (forward, backward, time, test, layers), -q and an
example in every command's --help, and `netrun completion`."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import netrun
from netrun.cli import main

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
LENET = MODELS / "lenet_deploy.prototxt"
MLP = MODELS / "mlp_loss.prototxt"
STATS = {"shape", "mean_abs", "min", "max"}


def run(*args, ok=True, env=None):
    res = CliRunner().invoke(main, [str(a) for a in args], env=env)
    if ok:
        assert res.exit_code == 0, res.output
    return res


def run_json(*args):
    """Parse stdout alone: notes go to stderr, so stdout must be exactly one JSON object."""
    return json.loads(run(*args).stdout)


def mlp_reference():
    """The numbers the CLI computes for mlp_loss with its default inputs (seed 0)."""
    net = netrun.Net(str(MLP), phase="test", seed=0)
    x = np.random.default_rng(0).standard_normal((4, 10)).astype(np.float32)
    net.forward(data=x, label=np.zeros(4, np.float32))
    net.backward()
    return net


# -- forward --------------------------------------------------------------------------------------
def test_forward_json_deploy_net():
    r = run_json("forward", LENET, "--json")
    assert {"model", "phase", "layers", "outputs", "loss", "top_classes"} <= set(r)
    assert r["phase"] == "test" and r["loss"] is None
    assert [l["name"] for l in r["layers"]] == ["data", "conv1", "pool1", "conv2", "pool2", "ip1",
                                               "relu1", "ip2", "prob"]
    conv1 = r["layers"][1]
    assert conv1["type"] == "Convolution"
    assert STATS <= set(conv1["tops"][0]) and conv1["tops"][0]["name"] == "conv1"
    assert conv1["tops"][0]["shape"] == [1, 20, 24, 24]
    relu = r["layers"][6]["tops"][0]
    assert relu["min"] >= 0                              # recorded after the in-place ReLU
    prob = r["outputs"]["prob"]
    assert prob["shape"] == [1, 10] and 0 <= prob["min"] <= prob["max"] <= 1
    assert "values" not in prob
    top = r["top_classes"]["prob"][0]
    assert top["item"] == 0 and len(top["classes"]) == 5
    assert top["classes"][0]["prob"] == pytest.approx(prob["max"])


def test_forward_json_values_and_loss(tmp_path):
    out = tmp_path / "f.npz"
    r = run_json("forward", MLP, "--json", "-v", "--save", out)
    ref = mlp_reference()
    assert r["loss"] == pytest.approx(ref.loss, rel=1e-6)
    assert r["outputs"]["loss"]["value"] == pytest.approx(r["loss"])
    np.testing.assert_allclose(r["outputs"]["loss"]["values"], ref.blobs["loss"].data, rtol=1e-6)
    ip2 = next(l for l in r["layers"] if l["name"] == "ip2")["tops"][0]
    np.testing.assert_allclose(np.array(ip2["values"]), ref.blobs["ip2"].data, rtol=1e-5, atol=1e-6)
    assert r["saved"] == str(out) and out.exists()


def test_forward_json_quiet_still_prints_json():
    res = run("forward", MLP, "--json", "-q")
    assert json.loads(res.stdout)["loss"] > 0
    assert res.stderr == ""                                # -q: not even the notes


# -- backward -------------------------------------------------------------------------------------
def test_backward_json_loss_net(tmp_path):
    dump = tmp_path / "d.npz"
    r = run_json("backward", MLP, "--json", "--dump-diffs", dump)
    assert {"model", "phase", "layers", "outputs", "loss", "params", "saved"} <= set(r)
    assert "ones_top_diffs" not in r
    ref = mlp_reference()
    assert r["loss"] == pytest.approx(ref.loss, rel=1e-6)
    layers = {l["name"]: l for l in r["layers"]}
    assert layers["data"]["backward"] is False and "diff" not in layers["data"]["tops"][0]
    assert layers["ip1"]["backward"] is True
    assert layers["ip2"]["bottoms"][0]["name"] == "ip1"
    assert STATS <= set(layers["ip2"]["bottoms"][0]["diff"])
    assert layers["ip2"]["tops"][0]["diff"]["mean_abs"] == pytest.approx(
        float(np.abs(ref.blobs["ip2"].diff).mean()), rel=1e-5)
    assert layers["ip1"]["bottoms"] == []                # data needs no diff (no force_backward)
    params = {(p["layer"], p["index"]): p for p in r["params"]}
    assert set(params) == {("ip1", 0), ("ip1", 1), ("ip2", 0), ("ip2", 1)}
    w = params[("ip1", 0)]
    assert w["shape"] == [16, 10]
    assert {"mean_abs", "min", "max"} <= set(w["diff"]) and {"mean_abs"} <= set(w["data"])
    g = ref.params["ip1"][0].diff
    assert w["diff"]["mean_abs"] == pytest.approx(float(np.abs(g).mean()), rel=1e-5)
    assert w["diff"]["max"] == pytest.approx(float(g.max()), rel=1e-5)
    assert np.load(dump)["param_diff/ip1/0"].shape == (16, 10)


def test_backward_json_net_without_loss():
    r = run_json("backward", LENET, "--json")
    assert r["loss"] is None
    assert r["ones_top_diffs"] == ["prob"]
    layers = {l["name"]: l for l in r["layers"]}
    assert layers["prob"]["tops"][0]["diff"]["min"] == layers["prob"]["tops"][0]["diff"]["max"] == 1
    assert layers["conv1"]["bottoms"][0]["name"] == "data"        # forced backward: input diffs
    assert layers["conv1"]["bottoms"][0]["diff"]["shape"] == [1, 1, 28, 28]
    assert len(r["params"]) == 8


# -- time, test, layers ----------------------------------------------------------------------------
def test_time_json():
    r = run_json("time", MLP, "-n", "2", "--json")
    keys = {"iterations", "layers", "average_forward_ms", "average_backward_ms",
            "average_forward_backward_ms", "median_forward_ms", "median_backward_ms", "total_ms"}
    assert keys <= set(r)
    assert r["iterations"] == 2
    assert [l["name"] for l in r["layers"]] == ["data", "label", "ip1", "relu1", "ip2", "loss"]
    for layer in r["layers"]:
        assert layer["forward_ms"] >= 0
    assert r["layers"][0]["backward_ms"] is None           # Input layers run no backward
    assert r["layers"][2]["backward_ms"] >= 0
    assert r["average_forward_backward_ms"] == pytest.approx(
        r["average_forward_ms"] + r["average_backward_ms"])
    fwd = run_json("time", MLP, "-n", "1", "--json", "--forward-only")
    assert all(l["backward_ms"] is None for l in fwd["layers"])


def test_test_json(tmp_path):
    w = tmp_path / "mlp.caffemodel"
    netrun.Net(str(MLP)).save(str(w))
    r = run_json("test", MLP, "--weights", w, "-n", "2", "--json")
    assert {"loss", "outputs", "batches", "iterations"} <= set(r)
    assert len(r["batches"]) == 2
    assert r["outputs"]["loss"]["loss_weight"] == 1.0
    assert r["outputs"]["loss"]["mean"] == pytest.approx(r["loss"])


def test_layers_json_and_quiet():
    types = run_json("layers", "--json")
    assert "Convolution" in types and types == sorted(types)
    assert run("layers", "-q").output.split() == types


# -- every command -------------------------------------------------------------------------------
def test_every_command_has_quiet_and_an_example():
    for name, cmd in main.commands.items():
        opts = {o for p in cmd.params for o in getattr(p, "opts", [])}
        assert {"-q", "--quiet"} <= opts, f"netrun {name} lacks -q/--quiet"
        text = run(name, "--help").output
        assert "Example" in text and "netrun " + name in text, f"netrun {name} --help has no example"


def test_number_printing_commands_have_json():
    for name in ("forward", "backward", "time", "test", "layers", "summary", "gradcheck",
                 "compare"):
        opts = {o for p in main.commands[name].params for o in getattr(p, "opts", [])}
        assert "--json" in opts, name


# -- completion -----------------------------------------------------------------------------------
@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_script(shell):
    res = run("completion", shell)
    assert "netrun" in res.stdout and "_NETRUN_COMPLETE" in res.stdout
    assert f"{shell}_complete" in res.stdout


def test_completion_shell_from_environment():
    res = run("completion", env={"SHELL": "/usr/bin/zsh"})
    assert res.stdout.startswith("#compdef netrun")
    res = run("completion", env={"SHELL": "/bin/tcsh"}, ok=False)
    assert res.exit_code == 2 and "netrun completion bash" in res.output
    assert run("completion", "powershell", ok=False).exit_code == 2


def netrun_exe():
    exe = Path(sys.executable).parent / "netrun"
    return str(exe) if exe.exists() else shutil.which("netrun")


@pytest.mark.skipif(netrun_exe() is None, reason="the netrun console script is not installed")
def test_completion_matches_click_mechanism_and_completes():
    """The printed script is what _NETRUN_COMPLETE=bash_source prints; it completes."""
    env = dict(os.environ, _NETRUN_COMPLETE="bash_source")
    via_env = subprocess.run([netrun_exe()], env=env, capture_output=True, text=True).stdout
    assert via_env.strip() == run("completion", "bash").stdout.strip()
    env = dict(os.environ, _NETRUN_COMPLETE="bash_complete", COMP_WORDS="netrun comp",
               COMP_CWORD="1")
    done = subprocess.run([netrun_exe()], env=env, capture_output=True, text=True).stdout
    assert "plain,completion" in done.split()
    env.update(COMP_WORDS="netrun forward --js", COMP_CWORD="2")
    done = subprocess.run([netrun_exe()], env=env, capture_output=True, text=True).stdout
    assert "plain,--json" in done.split()
