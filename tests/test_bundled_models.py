"""The bundled models run from a fresh clone: the trained digits classifier gets its samples right."""
from pathlib import Path

import pytest
from click.testing import CliRunner

from netrun.cli import main

DIGITS = Path(__file__).resolve().parent.parent / "models" / "digits"


@pytest.mark.parametrize("digit", range(10))
def test_bundled_digits_model_classifies_its_samples(digit):
    pytest.importorskip("PIL")
    res = CliRunner().invoke(main, [
        "forward", str(DIGITS / "digits_deploy.prototxt"),
        "--weights", str(DIGITS / "digits.caffemodel"),
        "--input", f"data={DIGITS / 'samples' / f'digit_{digit}.png'}", "--raw-scale", "1"])
    assert res.exit_code == 0, res.output
    top = res.output.split("top-5 of prob")[1].splitlines()[1].split()
    assert top[:3] == ["1.", "class", str(digit)], res.output
    assert float(top[3]) > 0.9


@pytest.mark.parametrize("model", ["lenet_deploy", "relu_demo", "mlp_loss"])
def test_bundled_prototxts_run(model, tmp_path):
    res = CliRunner().invoke(main, ["backward", str(DIGITS.parent / f"{model}.prototxt"), "-q",
                                    "--dump-diffs", str(tmp_path / "d.npz")])
    assert res.exit_code == 0, res.output
