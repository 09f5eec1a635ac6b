"""`netrun gradcheck` passes on every single-layer conformance case that has a backward,
with Caffe's own GradientChecker settings for the layers whose tests use them."""
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from netrun.cli import main

CASES = Path(__file__).resolve().parent / "data" / "conformance"

# Caffe's layer tests check these with a kink window, a smaller step or a looser threshold
SETTINGS = {
    **{n: ["--kink", "0", "--kink-range", "0.01"] for n in
       ("relu", "relu_leaky", "relu_inplace_on_input", "relu_leaky_inplace", "prelu",
        "prelu_shared", "absval", "graph_split_fanout", "reduction_asum", "threshold", "elu")},
    **{n: ["--stepsize", "1e-4", "--threshold", "1e-2"] for n in
       ("pool_max", "pool_max_pad", "spp", "eltwise_max")},
    "clip": ["--stepsize", "1e-4"],
    "log": ["--threshold", "1e-2"],
    "multinomial_logistic": ["--threshold", "1e-2"],
}
NO_DERIVATIVE = {"pool_max_ties": "built from exact ties: max pooling has no derivative there, "
                                  "so finite differences cannot agree with any choice"}


def _cases():
    out = []
    for d in sorted(CASES.iterdir()) if CASES.is_dir() else []:
        if not (d / "case.json").exists():
            continue
        meta = json.loads((d / "case.json").read_text())
        if meta["backward"] == "none":
            continue
        marks = [pytest.mark.xfail(reason=NO_DERIVATIVE[d.name], strict=True)] \
            if d.name in NO_DERIVATIVE else []
        out.append(pytest.param(d, meta["phase"].lower(), id=d.name, marks=marks))
    return out


@pytest.mark.parametrize("folder,phase", _cases())
def test_gradcheck_case(folder, phase):
    args = ["gradcheck", str(folder / "net.prototxt"), "--phase", phase,
            "--inputs", str(folder / "inputs.npz"), "-q", *SETTINGS.get(folder.name, [])]
    if (folder / "weights.caffemodel").exists():
        args += ["--weights", str(folder / "weights.caffemodel")]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
