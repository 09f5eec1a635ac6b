"""pycaffe's own unit tests (../shared/caffe-ref/python/caffe/test, 52 tests), run unmodified
with ``caffe`` resolving to netrun (``python -m netrun.pycaffe -m unittest discover``)."""
import os
import re
import shutil
import subprocess
import sys
import unittest
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT.parent / "shared" / "caffe-ref" / "python" / "caffe" / "test"

# Python 3.12 dropped the old unittest aliases pycaffe's tests still call
SHIM = ("import unittest, sys\n"
        "for old, new in (('assertEquals', 'assertEqual'), "
        "('assertRaisesRegexp', 'assertRaisesRegex')):\n"
        "    if not hasattr(unittest.TestCase, old):\n"
        "        setattr(unittest.TestCase, old, getattr(unittest.TestCase, new))\n"
        "unittest.main(module=None, argv=['unittest'] + sys.argv[1:])\n")


@pytest.mark.skipif(not TESTS.is_dir(), reason="../shared/caffe-ref (pycaffe's tests) is absent")
def test_pycaffe_own_suite_passes_on_netrun(tmp_path):
    for module in ("six", "pydot", "h5py"):       # what pycaffe's tests import
        pytest.importorskip(module)
    if shutil.which("dot") is None:
        pytest.skip("Graphviz's dot is not installed (test_draw renders every model)")
    env = dict(os.environ, GLOG_minloglevel="2", PYTHONPATH=str(ROOT), PYTHONWARNINGS="ignore")
    if hasattr(unittest.TestCase, "assertEquals"):
        cmd = [sys.executable, "-m", "netrun.pycaffe", "-m", "unittest", "discover", "-s", str(TESTS)]
    else:
        cmd = [sys.executable, "-m", "netrun.pycaffe", "-c", SHIM, "discover", "-s", str(TESTS)]
    # pycaffe's tests write snapshots into the working folder: a temporary one
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    report = res.stdout + res.stderr
    ran = re.search(r"Ran (\d+) tests?", report)
    assert ran and int(ran.group(1)) == 52, report
    assert res.returncode == 0 and "\nOK" in report, report
    assert "skipped" not in report.split("Ran ")[-1], report     # Python layer tests ran too
