"""Training with Caffe's solvers: the Caffe-computed solver cases, snapshots, lr policies."""
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from netrun.cli import main
from netrun.errors import NetrunError
from netrun.io.prototxt import read_net
from netrun.layers import layer_class
from netrun.net import filter_layers
from netrun.proto import caffe_pb2
from netrun.solver import SOLVERS, get_solver, learning_rate

ROOT = Path(__file__).resolve().parent.parent


def solver_cases_dir():
    env = os.environ.get("NETRUN_SOLVER_CASES")
    if env:
        return Path(env)
    return ROOT.parent / "shared" / "conformance" / "solver_cases"


def case_names():
    d = solver_cases_dir()
    if not d.is_dir():
        return []
    return sorted(p.name for p in d.iterdir() if (p / "case.json").exists())


def missing_types(folder):
    src = read_net(folder / "net.prototxt", warn=lambda m: None)
    kept = [src.param.layer[i] for i in filter_layers(src.param, caffe_pb2.NetState(phase=0))]
    return sorted({lp.type for lp in kept if layer_class(lp.type) is None})


def run(*args, ok=True):
    res = CliRunner().invoke(main, [str(a) for a in args])
    if ok:
        assert res.exit_code == 0, res.output + repr(res.exception)
    return res


def copy_case(name, tmp_path):
    dst = tmp_path / name
    shutil.copytree(solver_cases_dir() / name, dst)
    return dst


def compare(ours, expected):
    """Worst |ours - caffe| / (atol + rtol |caffe|) per key; rtol 1e-3, atol 1e-4 max(1, max|caffe|)."""
    bad = []
    for k in expected.files:
        assert k in ours.files, f"{k} missing from the dump"
        x, y = ours[k], expected[k]
        assert x.shape == y.shape, f"{k}: shape {x.shape}, Caffe {y.shape}"
        atol = 1e-4 * max(1.0, float(np.abs(y).max()) if y.size else 1.0)
        ratio = float((np.abs(x.astype(np.float64) - y) / (atol + 1e-3 * np.abs(y))).max())
        if ratio > 1:
            bad.append(f"{k}: {ratio:.3g} x tolerance")
    return bad


def _case_params():
    out = []
    for name in case_names():
        missing = missing_types(solver_cases_dir() / name)
        marks = [pytest.mark.xfail(reason="not implemented: " + ", ".join(missing), run=False)] \
            if missing else []
        out.append(pytest.param(name, marks=marks, id=name))
    return out or [pytest.param("none", marks=pytest.mark.skip(
        reason=f"no solver cases in {solver_cases_dir()}"))]


@pytest.mark.parametrize("name", _case_params())
def test_solver_case_cli(name, tmp_path):
    folder = copy_case(name, tmp_path)
    case = json.loads((folder / "case.json").read_text())
    k = case["iterations"]
    out = folder / "out.npz"
    cwd = os.getcwd()
    os.chdir(folder)                 # the acceptance command, run from the case folder
    try:
        run("train", "solver.prototxt", "--weights", "weights.caffemodel", "--inputs", "inputs.npz",
            "--max-iter", k, "--dump", out, "-q")
    finally:
        os.chdir(cwd)
    ours, exp = np.load(out), np.load(folder / "expected.npz")
    assert ours["losses"].dtype == np.float64 and ours["losses"].shape == (k,)
    assert not compare(ours, exp), compare(ours, exp)
    # snapshot_after_train: the final snapshot, next to the solver (no snapshot_prefix given)
    state = caffe_pb2.SolverState.FromString((folder / f"solver_iter_{k}.solverstate").read_bytes())
    assert state.iter == k and len(state.history) == case["history_blobs"]


def _small_case():
    for name in ("sgd_multistep_itersize", "nesterov_exp", "adam"):
        if name in case_names() and not missing_types(solver_cases_dir() / name):
            return name
    pytest.skip("no runnable small solver case")


def test_snapshot_resume_is_bit_identical(tmp_path):
    name = _small_case()
    folder = copy_case(name, tmp_path)
    text = (folder / "solver.prototxt").read_text()
    (folder / "s.prototxt").write_text(text.replace("max_iter: 1000", "max_iter: 7")
                                       + '\nsnapshot: 3\nsnapshot_prefix: "snaps/run"\n')
    (folder / "snaps").mkdir()
    common = ["--inputs", folder / "inputs.npz", "-q"]
    run("train", folder / "s.prototxt", "--weights", folder / "weights.caffemodel",
        "--dump", folder / "full.npz", *common)
    snap = folder / "snaps" / "run_iter_3.solverstate"
    assert snap.exists() and (folder / "snaps" / "run_iter_7.caffemodel").exists()
    state = caffe_pb2.SolverState.FromString(snap.read_bytes())
    assert state.iter == 3
    assert Path(state.learned_net).name == "run_iter_3.caffemodel"
    # move the snapshot away: learned_net is found beside the .solverstate
    moved = tmp_path / "moved"
    shutil.copytree(folder / "snaps", moved)
    shutil.rmtree(folder / "snaps")
    os.mkdir(folder / "snaps")
    run("train", folder / "s.prototxt", "--snapshot", moved / "run_iter_3.solverstate",
        "--dump", folder / "resumed.npz", *common)
    full, resumed = np.load(folder / "full.npz"), np.load(folder / "resumed.npz")
    assert len(resumed["losses"]) == 4
    np.testing.assert_array_equal(full["losses"][3:], resumed["losses"])
    for k in full.files:
        if k != "losses":
            np.testing.assert_array_equal(full[k], resumed[k], err_msg=k)


def test_interrupt_request_snapshots_and_stops(tmp_path):
    name = _small_case()
    folder = copy_case(name, tmp_path)
    inputs = dict(np.load(folder / "inputs.npz"))
    s = get_solver(str(folder / "solver.prototxt"), weights=str(folder / "weights.caffemodel"),
                   inputs=inputs)
    s.param.snapshot_prefix = str(tmp_path / "int")
    s.callbacks.append(lambda solver, loss: solver.iter == 2 and solver.request("snapshot+stop"))
    s.solve()
    assert s.iter == 2 and s.requested_early_exit
    files = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("int_"))
    assert files == ["int_iter_2.caffemodel", "int_iter_2.solverstate"]


# -- lr policies ---------------------------------------------------------------------------------
def sp(text):
    from google.protobuf import text_format
    return text_format.Parse(text, caffe_pb2.SolverParameter())


@pytest.mark.parametrize("text,expect", [
    ('lr_policy: "fixed" base_lr: 0.1', lambda i: 0.1),
    ('lr_policy: "step" base_lr: 0.1 gamma: 0.5 stepsize: 3', lambda i: 0.1 * 0.5 ** (i // 3)),
    ('lr_policy: "exp" base_lr: 0.1 gamma: 0.9', lambda i: 0.1 * 0.9 ** i),
    ('lr_policy: "inv" base_lr: 0.01 gamma: 0.0001 power: 0.75',
     lambda i: 0.01 * (1 + 0.0001 * i) ** -0.75),
    ('lr_policy: "poly" base_lr: 0.5 power: 2 max_iter: 10', lambda i: 0.5 * (1 - i / 10) ** 2),
    ('lr_policy: "sigmoid" base_lr: 0.01 gamma: 0.5 stepsize: 3',
     lambda i: 0.01 / (1 + math.exp(-0.5 * (i - 3)))),
])
def test_lr_policy(text, expect):
    p = sp(text)
    step = 0
    for i in range(12):
        rate, step = learning_rate(p, i, step)
        assert rate == pytest.approx(expect(i), rel=1e-6), i


def test_lr_multistep_steps_once_per_call():
    p = sp('lr_policy: "multistep" base_lr: 1 gamma: 0.1 stepvalue: 2 stepvalue: 4')
    rates, step = [], 0
    for i in range(6):
        r, step = learning_rate(p, i, step)
        rates.append(r)
    assert rates == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    assert step == 2


def test_lr_policy_errors():
    with pytest.raises(NetrunError, match="unknown lr_policy"):
        learning_rate(sp('lr_policy: "cosine" base_lr: 1'), 0)
    with pytest.raises(NetrunError, match="stepsize"):
        learning_rate(sp('lr_policy: "step" base_lr: 1'), 0)


# -- solver building -------------------------------------------------------------------------------
SHARED_NET = """
name: "shared"
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "t" type: "Input" top: "t" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "a" type: "InnerProduct" bottom: "x" top: "a"
  param { name: "w" } param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "b" type: "InnerProduct" bottom: "a" top: "b"
  param { name: "w" lr_mult: 3 decay_mult: 0.5 } param { lr_mult: 0 }
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "b" bottom: "t" top: "loss" }
"""


def _shared_solver(tmp_path, extra=""):
    (tmp_path / "net.prototxt").write_text(SHARED_NET)
    (tmp_path / "s.prototxt").write_text(
        'net: "net.prototxt" base_lr: 0.1 momentum: 0.9 weight_decay: 0.01 lr_policy: "fixed" '
        f'max_iter: 3 snapshot_after_train: false {extra}')
    rng = np.random.default_rng(3)
    inputs = {"x": rng.standard_normal((2, 3)).astype(np.float32),
              "t": rng.standard_normal((2, 3)).astype(np.float32)}
    return get_solver(str(tmp_path / "s.prototxt"), inputs=inputs), inputs


def test_shared_params_take_owner_lr_and_decay(tmp_path):
    s, _ = _shared_solver(tmp_path)
    # a/0 (owner of "w"), a/1, b/1 -- b/0 is a's "w"
    assert s.learnable_names == [("a", 0), ("a", 1), ("b", 1)]
    assert s.lr_mults == [3, 2, 0]          # "w": the sharer's explicit lr_mult fills in
    assert s.decay_mults == [0.5, 0, 1]
    assert len(s.history) == 3


def test_sgd_step_by_hand(tmp_path):
    s, inputs = _shared_solver(tmp_path)
    w0 = [b.data.astype(np.float64).copy() for b in s.learnable]
    s.net.clear_param_diffs()
    s.forward_backward()
    g = [b.diff.astype(np.float64).copy() for b in s.learnable]
    s.apply_update()
    for k, blob in enumerate(s.learnable):
        grad = g[k] + 0.01 * s.decay_mults[k] * w0[k]
        expect = w0[k] - 0.1 * s.lr_mults[k] * grad
        np.testing.assert_allclose(blob.data, expect, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(s.history[k], 0.1 * s.lr_mults[k] * grad, rtol=1e-5, atol=1e-7)


def test_legacy_solver_type_and_unknown_type(tmp_path):
    (tmp_path / "net.prototxt").write_text(SHARED_NET)
    (tmp_path / "a.prototxt").write_text('net: "net.prototxt" base_lr: 0.1 lr_policy: "fixed" '
                                         "solver_type: ADAGRAD")
    s = get_solver(str(tmp_path / "a.prototxt"))
    assert type(s) is SOLVERS["AdaGrad"] and s.param.type == "AdaGrad"
    (tmp_path / "b.prototxt").write_text('net: "net.prototxt" base_lr: 0.1 lr_policy: "fixed" '
                                         'type: "Adamax"')
    res = run("train", tmp_path / "b.prototxt", ok=False)
    assert res.exit_code == 2 and "unknown solver type" in res.output
    (tmp_path / "c.prototxt").write_text('net: "net.prototxt" base_lr: 0.1 lr_policy: "fixed" '
                                         'type: "RMSProp" momentum: 0.9')
    res = run("train", tmp_path / "c.prototxt", ok=False)
    assert res.exit_code == 2 and "momentum cannot be used with RMSProp" in res.output


def test_train_log_lines_and_test_nets(tmp_path):
    _shared_solver(tmp_path)
    (tmp_path / "d.prototxt").write_text(
        'net: "net.prototxt" base_lr: 0.1 lr_policy: "fixed" max_iter: 4 display: 2 '
        'test_iter: 2 test_interval: 2 snapshot_after_train: false')
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "in.npz", x=rng.standard_normal((2, 3)).astype(np.float32),
             t=rng.standard_normal((2, 3)).astype(np.float32))
    out = run("train", tmp_path / "d.prototxt", "--inputs", tmp_path / "in.npz").output
    for line in ("Iteration 0, Testing net (#0)", "Iteration 0, loss = ", "Iteration 0, lr = 0.1",
                 "    Train net output #0: loss = ", "    Test net output #0: loss = ",
                 "Iteration 4, Testing net (#0)", "Optimization Done."):
        assert line in out, line
    res = run("test", tmp_path / "net.prototxt", "--weights", _weights(tmp_path), "-n", 2,
              "--inputs", tmp_path / "in.npz")
    assert "Batch 1, loss = " in res.output and "(* 1 = " in res.output


def _weights(tmp_path):
    s, _ = _shared_solver(tmp_path)
    path = tmp_path / "w.caffemodel"
    s.net.save(path)
    return path


def test_test_state_stage_selects_layers(tmp_path):
    net = SHARED_NET + """
layer { name: "extra" type: "EuclideanLoss" bottom: "a" bottom: "t" top: "extra"
  include { phase: TEST stage: "val" } }
"""
    (tmp_path / "net.prototxt").write_text(net)
    (tmp_path / "s.prototxt").write_text(
        'net: "net.prototxt" base_lr: 0.1 lr_policy: "fixed" max_iter: 1 '
        'test_iter: 1 test_iter: 1 test_interval: 1 snapshot_after_train: false '
        'test_state { stage: "val" } test_state { }')
    s = get_solver(str(tmp_path / "s.prototxt"))
    assert "extra" in s.test_nets[0].layer_names
    assert "extra" not in s.test_nets[1].layer_names
    assert "extra" not in s.net.layer_names
    s.solve()
    assert set(s.test_scores[0]) == {"extra", "loss"} and set(s.test_scores[1]) == {"loss"}
