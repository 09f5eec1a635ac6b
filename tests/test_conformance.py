"""Every Caffe-computed conformance case, through the Python API and the CLI.

Compared by the README's Tolerances (``conformance.compare``): element by element, except
the backward arrays of the ``net_`` cases, by relative L2.  Cases whose layer types netrun
does not implement yet are expected failures with that reason; the summary prints the
worst ratio of every case under that rule, and the element-wise worst beside it (for
information: on another CPU kind than the goldens' the net backward arrays exceed it).
"""
import pytest

import conformance as C
from netrun import kernels

CASES = C.case_dirs()
WORST = {}


def pytest_terminal_summary_lines():
    lines = []
    for (name, route, engine), (ratio, key, absdiff, ew) in sorted(WORST.items()):
        lines.append(f"{name:<34} {route:<4} {engine:<6} worst {ratio:8.3g} x tol   "
                     f"abs {absdiff:9.3g}   {key:<34} element-wise {ew:8.3g} x")
    return lines


def _params():
    out = []
    for name, folder in CASES.items():
        case = C.Case(folder)
        missing = case.missing_types()
        for route in ("api", "cli"):
            marks = []
            if missing:
                marks.append(pytest.mark.xfail(reason="not implemented: " + ", ".join(missing),
                                               strict=True, run=False))
            out.append(pytest.param(name, route, marks=marks, id=f"{name}-{route}"))
    return out


if not CASES:
    pytest.skip(f"no conformance cases: {C.shared_cases_dir()} does not exist and "
                "tests/data/conformance is empty", allow_module_level=True)


@pytest.fixture(autouse=True, params=[e for e in kernels.ENGINES
                                      if e == "numpy" or kernels.numba_available()])
def kernel_engine(request):
    """Every case on both kernel engines (compiled and numpy)."""
    with kernels.use(request.param):
        yield request.param


@pytest.mark.parametrize("name,route", _params())
def test_case(name, route, kernel_engine):
    case = C.Case(CASES[name])
    ours = C.run_api(case) if route == "api" else C.run_cli(case)
    rep = C.compare(case, ours)
    key, ratio, absdiff, _ = rep.worst
    WORST[(name, route, kernel_engine)] = (ratio, key, absdiff, rep.worst_elementwise()[1])
    assert rep.ok, rep.failures()
