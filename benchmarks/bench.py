"""Benchmark netrun on the published nets against BVLC Caffe's CPU figures.

Each (net, batch) runs in its own process: one warm-up, then N timed
iterations; the table gives the median forward and backward times, their
ratio to `caffe time` on the same kind of machine (2 cores, OpenBLAS), and the
peak RSS of the process.

    python benchmarks/bench.py                      # all rows, 5 iterations
    python benchmarks/bench.py --iterations 10 --nets caffenet,resnet50 --batches 1
    python benchmarks/bench.py --low-memory         # forward-only peak RSS, both modes

Writes benchmarks/results.md (and prints it).  The conformance cases'
net.prototxt are used (deploy nets), without their final Softmax, weights
from the conformance recipe (random weights time the same as trained ones).
"""
import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = Path(os.environ.get("NETRUN_CONFORMANCE", ROOT.parent / "shared" / "conformance" / "cases"))

NETS = {
    "caffenet": "net_caffenet_deploy",
    "googlenet": "net_googlenet_deploy",
    "resnet50": "net_resnet50_deploy",
    "squeezenet": "net_squeezenet11_deploy",
    "mobilenet": "net_mobilenet_v1_deploy",
}
# `caffe time` on this machine kind (ms): (net, batch) -> (forward, backward)
CAFFE = {
    ("caffenet", 1): (39.9, 57.2), ("googlenet", 1): (47.0, 57.5),
    ("resnet50", 1): (85.8, 136.0), ("squeezenet", 1): (10.7, 15.7),
    ("mobilenet", 1): (27.6, 48.8), ("caffenet", 8): (157.0, 262.8),
    ("googlenet", 8): (523.3, 638.3), ("resnet50", 8): (970.9, 1486.8),
}


def strip_softmax(param):
    """Drop a final Softmax layer (caffe time was run without it)."""
    if len(param.layer) and param.layer[-1].type == "Softmax":
        del param.layer[-1]
    return param


def worker(args):
    """Run in a child process: time one net and print a JSON line."""
    import numpy as np
    sys.path.insert(0, str(ROOT))
    from netrun import Net
    from netrun.io.prototxt import read_net
    sys.path.insert(0, str(ROOT / "tests"))
    from conformance import fill_recipe

    case = CASES / NETS[args.net]
    param = strip_softmax(read_net(case / "net.prototxt", warn=lambda m: None).param)
    param.force_backward = not args.forward_only
    net = Net(param, phase="test", warn=lambda m: None, inference=args.low_memory)
    fill_recipe(net)
    name = net.inputs[0]
    shape = (args.batch,) + net.blobs[name].shape[1:]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    net.set_input(name, x)
    backward_layers = [i for i in range(len(net.layers) - 1, -1, -1) if net.layer_need_backward[i]]

    def once():
        t0 = time.perf_counter()
        net.forward()
        t1 = time.perf_counter()
        if args.forward_only:
            return t1 - t0, 0.0
        for out in net.outputs:
            net.blobs[out].diff[...] = 1.0
        net.backward()
        return t1 - t0, time.perf_counter() - t1

    once()                                      # warm-up
    times = [once() for _ in range(args.iterations)]
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"forward": statistics.median(t[0] for t in times) * 1e3,
                      "backward": statistics.median(t[1] for t in times) * 1e3,
                      "rss_mb": rss_kb / 1024.0, "layers": len(net.layers)}))


def run_child(net, batch, iterations, extra=()):
    cmd = [sys.executable, __file__, "--worker", "--net", net, "--batch", str(batch),
           "--iterations", str(iterations), *extra]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine():
    import numpy as np
    blas = ""
    try:
        from threadpoolctl import threadpool_info
        info = threadpool_info()
        blas = ", ".join(f"{i['internal_api']} {i.get('version', '')} ({i['num_threads']} threads)"
                         for i in info)
    except ImportError:
        pass
    return (f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"numpy {np.__version__}{', ' + blas if blas else ''}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--net", default=None)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--nets", default=",".join(NETS))
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--forward-only", action="store_true")
    ap.add_argument("--low-memory", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results.md"))
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    lines = [f"# netrun benchmark ({time.strftime('%Y-%m-%d')})", "",
             f"Machine: {machine()}.", f"Median of {args.iterations} iterations after one warm-up; "
             "Caffe figures: `caffe time`, BVLC Caffe, same machine kind.", ""]
    if args.low_memory:
        lines += ["| net | batch | forward ms | peak RSS MB (default) | peak RSS MB (--low-memory) | ratio |",
                  "|---|---|---|---|---|---|"]
    else:
        lines += ["| net | batch | forward ms | Caffe | ratio | backward ms | Caffe | ratio | peak RSS MB |",
                  "|---|---|---|---|---|---|---|---|---|"]
    for net in args.nets.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            if not args.low_memory and (net, batch) not in CAFFE:
                continue
            if args.low_memory:
                a = run_child(net, batch, args.iterations, ["--forward-only"])
                b = run_child(net, batch, args.iterations, ["--forward-only", "--low-memory"])
                if "error" in a or "error" in b:
                    lines.append(f"| {net} | {batch} | error: {a.get('error') or b.get('error')} | | | |")
                else:
                    lines.append(f"| {net} | {batch} | {a['forward']:.1f} | {a['rss_mb']:.0f} | "
                                 f"{b['rss_mb']:.0f} | {b['rss_mb'] / a['rss_mb']:.2f} |")
            else:
                r = run_child(net, batch, args.iterations)
                cf, cb = CAFFE[(net, batch)]
                if "error" in r:
                    lines.append(f"| {net} | {batch} | error: {r['error']} | {cf} | | | {cb} | | |")
                else:
                    lines.append(f"| {net} | {batch} | {r['forward']:.1f} | {cf} | "
                                 f"{r['forward'] / cf:.2f} | {r['backward']:.1f} | {cb} | "
                                 f"{r['backward'] / cb:.2f} | {r['rss_mb']:.0f} |")
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
