"""How many of real Caffe's numbers netrun reproduces bit for bit, on this machine.

For each net (a conformance case: its prototxt, the conformance weight recipe, its
inputs and top diffs), real Caffe's pycaffe (../shared/caffe-ref, set up with
`setup.sh --python`) runs forward and backward in its own venv and process, and
netrun runs the same; every blob's data and diff and every parameter diff are
compared element by element.  Both run with one BLAS thread (OpenBLAS's row
partition between threads differs between its versions); `OPENBLAS_CORETYPE`
picks the kernel for both (Caffe's OpenBLAS and numpy's).

    python benchmarks/real_caffe_bits.py                       # the machine's own kernel
    OPENBLAS_CORETYPE=Haswell python benchmarks/real_caffe_bits.py --nets squeezenet11,googlenet

A yardstick only: netrun never imports Caffe; this script runs it in a subprocess.
"""
import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ["OPENBLAS_NUM_THREADS"] = "1"          # before numpy loads OpenBLAS
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
CASES = Path(os.environ.get("NETRUN_CONFORMANCE", SHARED / "conformance" / "cases"))
CAFFE_REF = Path(os.environ.get("NETRUN_CAFFE_REF", SHARED / "caffe-ref"))
CAFFE_PY = Path(os.environ.get("CAFFE_REF_VENV",
                               Path.home() / ".cache" / "caffe-ref-venv")) / "bin" / "python"

RUN_CAFFE = r"""
import sys, numpy as np, caffe
caffe.set_mode_cpu()
case, weights, out = sys.argv[1:4]
net = caffe.Net(case + "/net.prototxt", weights, caffe.TEST)
inp = np.load(case + "/inputs.npz")
for k in inp.files:
    net.blobs[k].data[...] = inp[k]
net.forward()
td = np.load(case + "/top_diffs.npz")
for k in td.files:
    net.blobs[k].diff[...] = td[k]
net.backward()
res = {}
for k, b in net.blobs.items():
    res["data/" + k] = b.data.copy()
    res["diff/" + k] = b.diff.copy()
for k, ps in net.params.items():
    for i, p in enumerate(ps):
        res["param_diff/%s/%d" % (k, i)] = p.diff.copy()
np.savez(out, **res)
"""


def netrun_arrays(case, weights):
    sys.path.insert(0, str(ROOT))
    from netrun import Net
    net = Net(str(case / "net.prototxt"), phase="test", weights=weights, warn=lambda m: None)
    inp = np.load(case / "inputs.npz")
    for k in inp.files:
        net.set_input(k, inp[k])
    net.forward()
    td = np.load(case / "top_diffs.npz")
    net.backward(**{k: td[k] for k in td.files})
    res = {}
    for k, b in net.blobs.items():
        res["data/" + k], res["diff/" + k] = b.data, b.diff
    for k, ps in net.params.items():
        for i, p in enumerate(ps):
            res[f"param_diff/{k}/{i}"] = p.diff
    return res


def compare(case_name, tmp):
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests"))
    from conformance import fill_recipe
    from netrun import Net
    case = CASES / case_name
    weights = str(Path(tmp) / f"{case_name}.caffemodel")
    net = Net(str(case / "net.prototxt"), phase="test", warn=lambda m: None)
    fill_recipe(net)
    net.save(weights)
    out = Path(tmp) / f"{case_name}_caffe.npz"
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1",
               PYTHONPATH=str(CAFFE_REF / "python"),
               PATH=f"{CAFFE_REF / 'bin'}:{os.environ.get('PATH', '')}")
    script = Path(tmp) / "run_caffe.py"
    script.write_text(RUN_CAFFE)
    r = subprocess.run([str(CAFFE_PY), str(script), str(case), weights, str(out)],
                       env=env, capture_output=True, text=True)
    if r.returncode != 0:
        return f"| {case_name} | pycaffe failed: {(r.stderr.strip().splitlines() or ['?'])[-1]} | | |"
    ref = np.load(out)
    ours = netrun_arrays(case, weights)
    rows = {"data": [0, 0], "diff": [0, 0], "param_diff": [0, 0]}
    for k in ref.files:
        if k not in ours:
            continue
        kind = k.split("/", 1)[0]
        a = np.asarray(ours[k]).reshape(ref[k].shape)
        rows[kind][0] += int(np.sum(a == ref[k]))
        rows[kind][1] += ref[k].size
    cells = [f"{s:,} / {n:,} ({100.0 * s / max(n, 1):.1f}%)" for s, n in rows.values()]
    return f"| {case_name} | " + " | ".join(cells) + " |"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", default="squeezenet11,resnet50,googlenet,caffenet,mobilenet_v1")
    args = ap.parse_args()
    if not CAFFE_PY.exists():
        sys.exit(f"no pycaffe venv at {CAFFE_PY}: run `bash {CAFFE_REF}/setup.sh --python`")
    print(f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(the machine’s own)')}, "
          "1 BLAS thread; elements identical to real Caffe's:\n")
    print("| net | blob data | blob diffs | parameter diffs |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.nets.split(","):
            print(compare(f"net_{name}_deploy", tmp), flush=True)


if __name__ == "__main__":
    main()
