"""The digits example (models/digits): make_data.py, then the real solver through the
CLI reaches >= 95% test accuracy; ``netrun train --plot`` writes the curve as a PNG."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from netrun.cli import main

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "models" / "digits"
ACCURACY = re.compile(r"Test net output #\d+: accuracy = ([0-9.eE+-]+)")


def needs_examples_extra():
    missing = []
    for module, package in (("sklearn", "scikit-learn"), ("h5py", "h5py"), ("PIL", "Pillow")):
        try:
            __import__(module)
        except ImportError:
            missing.append(package)
    if missing:
        pytest.skip(f"the digits example needs {', '.join(missing)} "
                    '(pip install -e ".[examples]")')


def one_thread_env():
    """The example's matrices are small: a multi-threaded BLAS only fights the other
    processes of a busy machine (several times slower), so the test runs on one."""
    env = dict(os.environ)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = "1"
    return env


def test_digits_trains_to_95_percent(tmp_path):
    """The README's two commands, in a copy of models/digits: the full solver
    (500 iterations, ~10 s on one core) must end at >= 95% test accuracy."""
    needs_examples_extra()
    work = tmp_path / "digits"
    work.mkdir()
    for name in ("digits_solver.prototxt", "digits_train_test.prototxt"):
        shutil.copy(DIGITS / name, work / name)
    env = one_thread_env()
    made = subprocess.run([sys.executable, str(DIGITS / "make_data.py"), "--out", str(work / "data")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert made.returncode == 0, made.stdout + made.stderr
    assert "1347 images" in made.stdout and "450 images" in made.stdout

    import h5py
    with h5py.File(work / "data" / "train.h5", "r") as f:
        assert f["data"].shape == (1347, 1, 8, 8) and f["label"].shape == (1347,)
        assert 0.0 <= f["data"][()].min() and f["data"][()].max() <= 1.0
    with h5py.File(work / "data" / "test.h5", "r") as f:
        assert f["data"].shape == (450, 1, 8, 8)
        assert sorted(set(f["label"][()].tolist())) == list(range(10))

    png = tmp_path / "digits_loss.png"
    # run from the copy's folder so the relative HDF5 sources resolve to this copy
    trained = subprocess.run([sys.executable, "-m", "netrun", "train", "digits_solver.prototxt",
                              "--plot", str(png)],
                             cwd=work, capture_output=True, text=True, env=env, timeout=300)
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    accuracies = [float(a) for a in ACCURACY.findall(trained.stdout)]
    assert len(accuracies) == 11                  # iterations 0, 50, ..., 500
    assert accuracies[0] < 0.5                    # untrained
    assert accuracies[-1] >= 0.95, accuracies
    assert "Optimization Done." in trained.stdout
    assert (work / "data" / "digits_iter_500.caffemodel").exists()

    from PIL import Image
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == (960, 660)
    assert not list(tmp_path.glob(".netrun-*.part"))


def test_plot_without_pillow_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)      # import PIL raises ImportError
    res = CliRunner().invoke(main, ["train", str(DIGITS / "digits_solver.prototxt"),
                                    "--plot", str(tmp_path / "loss.png")])
    assert res.exit_code == 2, res.output
    assert "--plot needs Pillow" in res.output and "netrun[images]" in res.output
    assert not (tmp_path / "loss.png").exists()


def test_plot_into_a_missing_folder_fails_before_training(tmp_path):
    pytest.importorskip("PIL", reason="--plot needs Pillow")
    res = CliRunner().invoke(main, ["train", str(DIGITS / "digits_solver.prototxt"),
                                    "--plot", str(tmp_path / "nope" / "loss.png")])
    assert res.exit_code == 2, res.output
    assert "does not exist" in res.output and "Iteration" not in res.output


def test_plot_helpers():
    from netrun.commands.train import log_ticks, moving_average, nice_ticks
    lo, hi, ticks = nice_ticks(0, 500, 8)
    assert (lo, hi) == (0, 500) and ticks == [0, 100, 200, 300, 400, 500]
    assert nice_ticks(0.09, 0.98, 5)[2] == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    lo, hi, ticks = log_ticks(3e-4, 2.4)
    assert (lo, hi) == (1e-4, 10) and ticks[0] == pytest.approx(1e-4)
    assert list(moving_average([1, 3, 5, 7], 2)) == [1, 2, 4, 6]
