"""ONNX Runtime engine vs OpenCV dnn vs real Caffe: forward time on the published nets.

Rows: CaffeNet, GoogLeNet, ResNet-50, SqueezeNet 1.1, MobileNet v1 at batch 1 and 8
(the conformance cases' deploy prototxts without the final Softmax, weights from the
conformance recipe: random weights time as trained ones do).  Per row, each engine
runs in its own process -- one warm-up, then N timed forward passes, the fastest
kept (Caffe: the average ``caffe time`` prints) -- and the rows are interleaved
over several rounds; the table keeps each engine's fastest round (the machine is
shared: the numbers are noisy).

* onnxruntime: netrun's ONNX Runtime engine (netrun.engines.onnxruntime: the net
  exported with Caffe's semantics, CPU provider, threads = cores);
* opencv: OpenCV 4.x ``cv2.dnn.readNetFromCaffe`` (pip opencv-python-headless<5),
  ``setNumThreads(cores)``;
* caffe: BVLC Caffe's ``caffe time`` (../shared/caffe-ref, OpenBLAS with as many
  threads as cores): its "Average Forward pass".

    python benchmarks/onnx_bench.py                       # all rows, 3 rounds
    python benchmarks/onnx_bench.py --nets resnet50 --batches 1 --rounds 1

Writes benchmarks/onnx_results.md (and prints it).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = Path(os.environ.get("NETRUN_CONFORMANCE", ROOT.parent / "shared" / "conformance" / "cases"))
CAFFE_ENV = ROOT.parent / "shared" / "caffe-ref" / "env.sh"
NETS = {
    "caffenet": ("CaffeNet", "net_caffenet_deploy"),
    "googlenet": ("GoogLeNet", "net_googlenet_deploy"),
    "resnet50": ("ResNet-50", "net_resnet50_deploy"),
    "squeezenet": ("SqueezeNet 1.1", "net_squeezenet11_deploy"),
    "mobilenet": ("MobileNet v1", "net_mobilenet_v1_deploy"),
}
ENGINES = ("onnxruntime", "opencv", "caffe")


def cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def prepare(net_key, batch, folder):
    """(deploy prototxt at this batch, recipe caffemodel, input shape) in ``folder``."""
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests"))
    from google.protobuf import text_format
    from conformance import fill_recipe
    from netrun import Net
    from netrun.io.prototxt import read_net
    param = read_net(CASES / NETS[net_key][1] / "net.prototxt", warn=lambda m: None).param
    if len(param.layer) and param.layer[-1].type == "Softmax":
        del param.layer[-1]
    param.force_backward = False
    for lp in param.layer:
        if lp.type == "Input":
            for s in lp.input_param.shape:
                s.dim[0] = batch
    proto = os.path.join(folder, f"{net_key}_{batch}.prototxt")
    with open(proto, "w") as f:
        f.write(text_format.MessageToString(param))
    model = os.path.join(folder, f"{net_key}.caffemodel")
    net = Net(proto, phase="test", warn=lambda m: None)
    if not os.path.exists(model):
        fill_recipe(net)
        net.save(model)
    return proto, model, tuple(net.blobs[net.inputs[0]].shape)


def worker(engine, proto, model, shape, iterations):
    """In a child process: the fastest forward pass of one engine, in ms."""
    import numpy as np
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    if engine == "onnxruntime":
        sys.path.insert(0, str(ROOT))
        from netrun import Net
        from netrun.engines.onnxruntime import OrtEngine
        net = Net(proto, weights=model, phase="test", warn=lambda m: None)
        net.set_input(net.inputs[0], x)
        eng = OrtEngine(net, threads=cores())
        feeds = eng.feeds()
        run = lambda: eng.run(feeds)  # noqa: E731
    else:
        import cv2
        cv2.setNumThreads(cores())
        dnn = cv2.dnn.readNetFromCaffe(proto, model)
        dnn.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        dnn.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)

        def run():
            dnn.setInput(x)
            return dnn.forward()
    run()
    times = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return 1e3 * min(times)


def caffe_time(proto, iterations):
    cmd = (f"source {CAFFE_ENV} && OPENBLAS_NUM_THREADS={cores()} GLOG_minloglevel=0 "
           f"caffe time -model {proto} -iterations {iterations} 2>&1")
    out = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True).stdout
    m = re.search(r"Average Forward pass: ([\d.]+) ms", out)
    return float(m.group(1)) if m else None


def child(engine, proto, model, shape, iterations):
    if engine == "caffe":
        return caffe_time(proto, iterations) if CAFFE_ENV.exists() else None
    cmd = [sys.executable, __file__, "--worker", engine, proto, model,
           ",".join(map(str, shape)), str(iterations)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        print(out.stderr[-2000:], file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])["ms"]


def machine():
    model = "?"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = re.search(r"Model name:\s*(.+)", out).group(1).strip()
    except Exception:
        pass
    import numpy
    import threadpoolctl
    pools = [f"{p['internal_api']} {p.get('version')} ({p['num_threads']} threads, "
             f"{p.get('architecture')})" for p in threadpoolctl.threadpool_info()]
    import onnxruntime
    import cv2
    return model, pools, numpy.__version__, onnxruntime.__version__, cv2.__version__


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nets", default=",".join(NETS))
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "onnx_results.md"))
    a = ap.parse_args()
    rows = [(n, int(b)) for b in a.batches.split(",") for n in a.nets.split(",")]
    best = {}
    with tempfile.TemporaryDirectory() as folder:
        prepared = {r: prepare(r[0], r[1], folder) for r in rows}
        for rnd in range(a.rounds):
            for r in rows:                                   # interleaved rows and engines
                proto, model, shape = prepared[r]
                for eng in ENGINES:
                    it = max(3, a.iterations // (4 if r[1] > 1 and eng == "caffe" else 1))
                    ms = child(eng, proto, model, shape, it)
                    print(f"round {rnd + 1} {r[0]} b{r[1]} {eng}: {ms}", file=sys.stderr, flush=True)
                    if ms is not None:
                        best[(r, eng)] = min(ms, best.get((r, eng), float("inf")))
    cpu, pools, npv, ortv, cvv = machine()
    lines = ["# ONNX Runtime engine vs OpenCV dnn vs Caffe (forward, ms)", "",
             f"CPU: {cpu}; {cores()} cores usable.  numpy {npv}; BLAS: {'; '.join(pools)}.",
             f"onnxruntime {ortv}, OpenCV {cvv} (`readNetFromCaffe`, OpenCV backend), BVLC "
             "Caffe 9b891540 `caffe time` (OpenBLAS).", "",
             f"Fastest of {a.rounds} interleaved rounds; per round the fastest of {a.iterations} "
             "forward passes for ONNX Runtime and OpenCV, the average forward pass of `caffe "
             "time` for Caffe (it prints no minimum; at batch 8 fewer iterations, as it also "
             "runs backward), so Caffe's figures are biased upwards under load.  The "
             "machine is shared with other jobs: the numbers are noisy (2x swings were seen).",
             "", "| net | batch | ONNX Runtime engine | OpenCV dnn | Caffe | ORT vs OpenCV |",
             "|---|---:|---:|---:|---:|---:|"]
    fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    for r in rows:
        o, c, f = (best.get((r, e)) for e in ENGINES)
        ratio = f"{c / o:.2f}x faster" if o and c and o <= c else \
            (f"{o / c:.2f}x slower" if o and c else "-")
        lines.append(f"| {NETS[r[0]][0]} | {r[1]} | {fmt(o)} | {fmt(c)} | {fmt(f)} | {ratio} |")
    text = "\n".join(lines) + "\n"
    print(text)
    Path(a.out).write_text(text)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        engine, proto, model, shape, iterations = sys.argv[2:7]
        ms = worker(engine, proto, model, tuple(int(s) for s in shape.split(",")), int(iterations))
        print(json.dumps({"ms": ms}))
    else:
        main()
