"""An ordinary pycaffe script (tests/data/pycaffe/lenet_pycaffe.py) runs unmodified through
``netrun pycaffe``: NetSpec LeNet on HDF5 data, SGDSolver.step with a Python loss layer, net
surgery, Transformer preprocessing of a real image, Classifier.predict."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "data" / "pycaffe" / "lenet_pycaffe.py"
DIGITS = ROOT / "models" / "digits"


def pycaffe_env():
    env = dict(os.environ, GLOG_minloglevel="2", PYTHONPATH=str(ROOT), PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTHONSTARTUP", None)
    return env


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    pytest.importorskip("h5py")
    pytest.importorskip("PIL")
    work = tmp_path_factory.mktemp("pycaffe_script")
    res = subprocess.run([sys.executable, "-m", "netrun", "pycaffe", str(SCRIPT), str(work / "out")],
                         cwd=work, env=pycaffe_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    out = work / "out"
    return (json.loads((out / "results.json").read_text()), dict(np.load(out / "arrays.npz")),
            out)


def test_netspec_net_and_solver(run):
    results, arrays, out = run
    # NetSpec names; Caffe's split of "fc" (read by both losses) is in the built net
    assert results["layers"] == ["data", "conv1", "relu1", "pool1", "fc", "fc_fc_0_split",
                                 "loss", "eucl"]
    assert results["outputs"] == ["eucl", "loss"]
    assert results["iter"] == 100
    assert 1.5 < results["softmax_loss_first"] < 4.0
    assert results["softmax_loss_last"] < 0.5 * results["softmax_loss_first"]
    # solver.snapshot() writes into the working folder, as Caffe does
    assert results["snapshot_files"] == ["lenet_iter_100.caffemodel", "lenet_iter_100.solverstate"]
    assert "snapshot_prefix: \"lenet\"" in (out / "solver.prototxt").read_text()


def test_python_loss_layer(run):
    _, a, _ = run
    fc, onehot = a["fc"].astype(np.float64), a["onehot"].astype(np.float64)
    expected = 0.5 * np.sum((fc - onehot.reshape(fc.shape)) ** 2) / fc.shape[0] / 2.0  # param_str 0.5
    assert a["eucl"].shape == (1,)
    np.testing.assert_allclose(a["eucl"][0], expected, rtol=1e-5)
    assert expected > 0.05                        # not trivially zero


def test_net_surgery(run):
    results, _, _ = run
    assert results["conv_out_shape"] == [1, 10, 1, 9]
    assert results["surgery_max_diff"] < 1e-5


def test_transformer_preprocessing(run):
    from PIL import Image
    _, a, _ = run
    pixels = np.asarray(Image.open(DIGITS / "samples" / "digit_7.png"), np.float64)
    # load_image -> [0, 1]; 16x16 -> 8x8 resize; *255; -128; /255
    np.testing.assert_allclose(a["preprocessed"], ((pixels - 128) / 255)[None], atol=1e-6)
    np.testing.assert_allclose(a["deprocessed"], (pixels / 255)[..., None], atol=1e-6)


def test_classifier_predict(run):
    from PIL import Image
    import netrun
    results, a, _ = run
    assert results["predicted"] == list(range(10))
    net = netrun.Net(str(DIGITS / "digits_deploy.prototxt"), str(DIGITS / "digits.caffemodel"),
                     netrun.TEST)
    for d in range(10):
        x = np.asarray(Image.open(DIGITS / "samples" / f"digit_{d}.png"), np.float32) / 255
        prob = net.forward(data=x[None, None])["prob"][0]
        np.testing.assert_allclose(a["probs"][d], prob, atol=1e-6)
    over = a["probs_oversampled"]
    assert over.shape == (10, 10)
    np.testing.assert_allclose(over.sum(1), 1.0, atol=1e-5)


def test_python_loss_layer_and_sgd_match_real_pycaffe(tmp_path):
    """Forward, backward and three SGD steps (momentum, weight decay) through a Python loss
    layer with loss_weight 3: the numbers real pycaffe wrote (real_pycaffe.npy)."""
    folder = SCRIPT.parent / "pyloss_check"
    res = subprocess.run([sys.executable, "-m", "netrun", "pycaffe", "check_pyloss.py",
                          str(tmp_path / "out.npy")], cwd=folder, env=pycaffe_env(),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    got, want = np.load(tmp_path / "out.npy"), np.load(folder / "real_pycaffe.npy")
    assert got.shape == want.shape == (35,)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
