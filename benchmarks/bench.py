"""Benchmark netrun on the published nets beside BVLC Caffe on the same machine.

Each (net, batch) runs in its own process: one warm-up, then N timed
iterations; the table gives the median forward and backward times, their
ratio to Caffe, and the peak RSS of the process.  When the reference Caffe of
../shared/caffe-ref is set up (or NETRUN_CAFFE_REF points at one), `caffe time`
runs beside netrun in the same run, rows interleaved (netrun, Caffe, netrun,
...), 2 BLAS threads each, and every row's fastest round is shown; otherwise the
written-down `caffe time` figures in CAFFE are the yardstick.

    python benchmarks/bench.py                      # all rows, 5 iterations
    python benchmarks/bench.py --rounds 3           # every row 3 times, fastest round shown
    python benchmarks/bench.py --iterations 10 --nets caffenet,resnet50 --batches 1
    python benchmarks/bench.py --low-memory         # forward-only peak RSS, both modes
    python benchmarks/bench.py --torch              # add a PyTorch CPU peer (same weights)
    python benchmarks/bench.py --kernels numba,numpy --rounds 3   # both kernel engines

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

# as `import netrun` does when it comes first: idle OpenBLAS workers must not spin on
# the cores netrun's element-wise threads use (the worker imports numpy first)
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "20")

ROOT = Path(__file__).resolve().parent.parent
CASES = Path(os.environ.get("NETRUN_CONFORMANCE", ROOT.parent / "shared" / "conformance" / "cases"))

NETS = {
    "caffenet": "net_caffenet_deploy",
    "googlenet": "net_googlenet_deploy",
    "resnet50": "net_resnet50_deploy",
    "squeezenet": "net_squeezenet11_deploy",
    "mobilenet": "net_mobilenet_v1_deploy",
}
CAFFE_REF = Path(os.environ.get("NETRUN_CAFFE_REF", ROOT.parent / "shared" / "caffe-ref"))
BLAS_THREADS = "2"
# Fallback only (no caffe-ref here): `caffe time` figures written down on an AMD EPYC
# 2-core machine (ms): (net, batch) -> (forward, backward)
CAFFE = {
    ("caffenet", 1): (39.9, 57.2), ("googlenet", 1): (47.0, 57.5),
    ("resnet50", 1): (85.8, 136.0), ("squeezenet", 1): (10.7, 15.7),
    ("mobilenet", 1): (27.6, 48.8), ("caffenet", 8): (157.0, 262.8),
    ("googlenet", 8): (523.3, 638.3), ("resnet50", 8): (970.9, 1486.8),
    # measured beside netrun on 2026-12-02 (results.md), AMD EPYC Zen 4, 2 cores
    ("squeezenet", 8): (109.8, 148.0), ("mobilenet", 8): (261.4, 451.0),
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

    def once_netrun():
        t0 = time.perf_counter()
        net.forward()
        t1 = time.perf_counter()
        if args.forward_only:
            return t1 - t0, 0.0
        for out in net.outputs:
            net.blobs[out].diff[...] = 1.0
        net.backward()
        return t1 - t0, time.perf_counter() - t1

    if args.engine == "torch":                  # the same graph and weights in PyTorch
        from torch_peer import TorchPeer
        net.forward()                           # every layer learns its geometry
        peer = TorchPeer(net, threads=len(os.sched_getaffinity(0)))
        import torch
        inputs = {name: x}

        def once_torch():
            t0 = time.perf_counter()
            if args.forward_only:
                with torch.no_grad():
                    peer.forward(inputs)
                return time.perf_counter() - t0, 0.0
            outs = peer.forward(inputs)
            t1 = time.perf_counter()
            peer.backward(outs)
            return t1 - t0, time.perf_counter() - t1
        once = once_torch
    else:
        once = once_netrun

    once()                                      # warm-up
    times = [once() for _ in range(args.iterations)]
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"forward": statistics.median(t[0] for t in times) * 1e3,
                      "backward": statistics.median(t[1] for t in times) * 1e3,
                      "rss_mb": rss_kb / 1024.0, "layers": len(net.layers),
                      "input": name, "shape": list(shape)}))


MEMORY_HEAD = ["| net | batch | forward ms | peak RSS MB (default) | "
               "peak RSS MB (--low-memory) | ratio |", "|---|---|---|---|---|---|"]


def memory_row(net, batch, iterations):
    """Forward only, in the default mode and with --low-memory: a MEMORY_HEAD row."""
    a = run_child(net, batch, iterations, ["--forward-only"])
    b = run_child(net, batch, iterations, ["--forward-only", "--low-memory"])
    if "error" in a or "error" in b:
        return f"| {net} | {batch} | error: {a.get('error') or b.get('error')} | | | |"
    return (f"| {net} | {batch} | {a['forward']:.1f} | {a['rss_mb']:.0f} | "
            f"{b['rss_mb']:.0f} | {b['rss_mb'] / a['rss_mb']:.2f} |")


def run_child(net, batch, iterations, extra=(), kernels=None):
    cmd = [sys.executable, __file__, "--worker", "--net", net, "--batch", str(batch),
           "--iterations", str(iterations), *extra]
    env = dict(os.environ, OPENBLAS_NUM_THREADS=BLAS_THREADS)
    if kernels:
        env["NETRUN_KERNELS"] = kernels
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def caffe_binary():
    """The reference Caffe's `caffe` tool, or None when it is not set up."""
    exe = CAFFE_REF / "bin" / "caffe"
    return exe if exe.is_file() and os.access(exe, os.X_OK) else None


def batch_prototxt(net, batch, folder):
    """The row's net (final Softmax dropped) with its batch set, as a prototxt file."""
    from google.protobuf import text_format
    sys.path.insert(0, str(ROOT))
    from netrun.io.prototxt import read_net
    param = strip_softmax(read_net(CASES / NETS[net] / "net.prototxt", warn=lambda m: None).param)
    param.force_backward = True
    shapes = ([l.input_param.shape[0] for l in param.layer if l.type == "Input"]
              or list(param.input_shape))
    for shape in shapes:
        shape.dim[0] = batch
    if len(param.input_dim):
        param.input_dim[0] = batch
    path = Path(folder) / f"{net}_b{batch}.prototxt"
    path.write_text(text_format.MessageToString(param))
    return path


def run_caffe(exe, prototxt, iterations):
    """`caffe time` (2 BLAS threads): {"forward": ms, "backward": ms} (its averages)."""
    import re
    env = dict(os.environ, OPENBLAS_NUM_THREADS=BLAS_THREADS, GLOG_logtostderr="1")
    out = subprocess.run([str(exe), "time", "-model", str(prototxt), "-iterations",
                          str(iterations)], capture_output=True, text=True, env=env)
    text = out.stdout + out.stderr
    f = re.search(r"Average Forward pass: ([0-9.]+) ms", text)
    b = re.search(r"Average Backward pass: ([0-9.]+) ms", text)
    if out.returncode != 0 or not (f and b):
        return {"error": (text.strip().splitlines() or ["caffe failed"])[-1]}
    return {"forward": float(f.group(1)), "backward": float(b.group(1))}


def caffe_layer_times(exe, prototxt, iterations):
    """{layer name: (forward ms, backward ms)} from `caffe time`'s per-layer lines."""
    import re
    env = dict(os.environ, OPENBLAS_NUM_THREADS=BLAS_THREADS, GLOG_logtostderr="1")
    out = subprocess.run([str(exe), "time", "-model", str(prototxt), "-iterations",
                          str(iterations)], capture_output=True, text=True, env=env)
    times = {}
    for name, kind, ms in re.findall(r"\]\s+(\S+)\s+(forward|backward): ([0-9.]+) ms",
                                     out.stdout + out.stderr):
        f, b = times.get(name, (0.0, 0.0))
        times[name] = (float(ms), b) if kind == "forward" else (f, float(ms))
    return times


def per_layer(net, batch, r, iterations, top=8, exe=None):
    """`netrun time --json` on the row's net (final Softmax dropped), and `caffe time`'s
    per-layer figures beside it when the reference Caffe is here: the layer types'
    totals and the slowest layers, forward and backward, as markdown lines."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        path = batch_prototxt(net, batch, tmp)
        cmd = [sys.executable, "-m", "netrun", "time", str(path), "-n", str(iterations),
               "--force-backward", "--no-check-finite", "--json"]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=str(ROOT),
                             env=dict(os.environ, OPENBLAS_NUM_THREADS=BLAS_THREADS))
        caffe = caffe_layer_times(exe, path, iterations) if exe else {}
    if out.returncode != 0:
        return [f"`netrun time` failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}"]
    data = json.loads(out.stdout)
    layers = data["layers"]
    types = {}
    for l in layers:
        f, b, cf, cb = types.get(l["type"], (0.0, 0.0, 0.0, 0.0))
        c = caffe.get(l["name"], (0.0, 0.0))
        types[l["type"]] = (f + l["forward_ms"], b + (l["backward_ms"] or 0.0),
                            cf + c[0], cb + c[1])
    lines = [f"**{net}, batch {batch}** (`netrun time -n {iterations}`: average forward "
             f"{data['average_forward_ms']:.1f} ms, backward "
             f"{data['average_backward_ms']:.1f} ms"
             + ("; Caffe's per-layer averages from `caffe time` right after" if caffe else "")
             + ")", "",
             "A BatchNorm -> Scale -> ReLU chain runs as one step, timed on its first layer "
             "(forward: BatchNorm, backward: ReLU); Caffe times each layer.", "",
             "| layer type | forward ms | Caffe | backward ms | Caffe |", "|---|---|---|---|---|"]
    for t, (f, b, cf, cb) in sorted(types.items(), key=lambda kv: -sum(kv[1][:2]))[:top]:
        lines.append(f"| {t} | {f:.1f} | {cf:.1f} | {b:.1f} | {cb:.1f} |")
    lines += ["", "| slowest layers | type | forward ms | Caffe | backward ms | Caffe |",
              "|---|---|---|---|---|---|"]
    for l in sorted(layers, key=lambda l: -(l["forward_ms"] + (l["backward_ms"] or 0)))[:top]:
        c = caffe.get(l["name"], (0.0, 0.0))
        lines.append(f"| {l['name']} | {l['type']} | {l['forward_ms']:.2f} | {c[0]:.2f} | "
                     f"{l['backward_ms'] or 0:.2f} | {c[1]:.2f} |")
    return lines + [""]


def machine():
    import numpy as np
    blas = ""
    try:
        from threadpoolctl import threadpool_info
        info = threadpool_info()
        blas = ", ".join(f"{i['internal_api']} {i.get('version', '')} {i.get('architecture', '')} "
                         f"kernel ({i['num_threads']} threads)" for i in info)
    except ImportError:
        pass
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
    except OSError:
        pass
    env = ", ".join(f"{k}={os.environ[k]}" for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                                                      "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                                      "OPENBLAS_THREAD_TIMEOUT", "NETRUN_THREADS")
                    if k in os.environ) or "no OPENBLAS_*/OMP_* variables set"
    return (f"{platform.machine()} {cpu}, {len(os.sched_getaffinity(0))} cores, Python "
            f"{platform.python_version()}, numpy {np.__version__}"
            f"{', ' + blas if blas else ''}; {env}")


def gemm_gflops(n=1500, reps=5):
    """numpy float32 GEMM throughput right now: how fast this (shared) machine runs."""
    import numpy as np
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    a @ a
    t = time.perf_counter()
    for _ in range(reps):
        a @ a
    return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e9


def load():
    try:
        return "load average %.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        return "load average unknown"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--net", default=None)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--nets", default=",".join(NETS))
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=1,
                    help="measure every row this many times, round-robin, and report the "
                         "round with the fastest forward + backward (a shared machine's "
                         "speed drifts); 1: one measurement per row")
    ap.add_argument("--forward-only", action="store_true")
    ap.add_argument("--low-memory", action="store_true")
    ap.add_argument("--torch", action="store_true", help="also time a PyTorch CPU peer")
    ap.add_argument("--per-layer", action="store_true",
                    help="for rows slower than Caffe, add `netrun time` per-layer figures "
                         "(and `caffe time`'s beside them)")
    ap.add_argument("--memory-rows", default="resnet50:8",
                    help="after the timing table, forward-only peak RSS in both modes for "
                         "these net:batch pairs (comma-separated; empty: none)")
    ap.add_argument("--engine", default="netrun", help=argparse.SUPPRESS)
    ap.add_argument("--kernels", default="",
                    help="netrun kernel engines to time, comma-separated (numba, numpy): a "
                         "column pair each; default: the default engine")
    ap.add_argument("--written-caffe", action="store_true",
                    help="compare with the written-down Caffe figures even when the "
                         "reference Caffe is set up")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results.md"))
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    exe = None if args.written_caffe else caffe_binary()
    engines = [e for e in args.kernels.split(",") if e] or [None]
    rows = [(net, int(b)) for net in args.nets.split(",") for b in args.batches.split(",")
            if args.low_memory or exe or (net, int(b)) in CAFFE]
    caffe_how = (f"`caffe time` of the reference BVLC Caffe ({CAFFE_REF}) run in the same "
                 "process tree, interleaved with netrun row by row, "
                 f"OPENBLAS_NUM_THREADS={BLAS_THREADS} for both" if exe else
                 "Caffe figures: written-down `caffe time` averages, BVLC Caffe, same machine "
                 "kind (no reference Caffe found to run beside netrun)")
    lines = [f"# netrun benchmark ({time.strftime('%Y-%m-%d %H:%M')})", "",
             f"Machine: {machine()}.", "",
             f"netrun: median of {args.iterations} iterations after one warm-up, each (net, "
             "batch) in its own process.  " + caffe_how + " (Caffe prints averages of "
             f"{args.iterations} iterations)"
             + (f"; {args.rounds} rounds over all rows, the fastest round of each column "
                "shown" if args.rounds > 1 else "")
             + "; GEMM GF/s: numpy's float32 1500^3 GEMM just before that row (the "
             f"machine's state).  At the start: {load()}, GEMM {gemm_gflops():.0f} GFLOP/s.", ""]
    if args.low_memory:
        lines += MEMORY_HEAD
    else:
        names = [e or "netrun" for e in engines]
        head = "| net | batch | Caffe fwd ms |"
        for n in names:
            head += f" {n} fwd ms | ratio |"
        head += " Caffe bwd ms |"
        for n in names:
            head += f" {n} bwd ms | ratio |"
        for n in names:
            head += f" {n} peak RSS MB |" if len(names) > 1 else " peak RSS MB |"
        head += " GEMM GF/s |"
        if args.torch:
            head += " PyTorch fwd | PyTorch bwd |"
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
    slow = []
    if args.low_memory:
        for net, batch in rows:
            lines.append(memory_row(net, batch, args.iterations))
            print(lines[-1], flush=True)
    else:
        import tempfile
        tmp = tempfile.mkdtemp(prefix="netrun-bench-")
        protos = {row: batch_prototxt(row[0], row[1], tmp) for row in rows} if exe else {}
        # rounds: every row once per round, so a slow spell of the machine hits one
        # round of every row rather than every round of one row; Caffe right after
        # netrun on each row, so both see the same moment
        results = {(row, e): [] for row in rows for e in engines + ["caffe"]}
        gemm = {row: [] for row in rows}
        log = []
        for rnd in range(args.rounds):
            for row in rows:
                net, batch = row
                gemm[row].append(gemm_gflops(reps=3))
                for e in engines:
                    results[(row, e)].append(run_child(net, batch, args.iterations, kernels=e))
                if exe:
                    results[(row, "caffe")].append(run_caffe(exe, protos[row], args.iterations))
                else:
                    cf, cb = CAFFE[row]
                    results[(row, "caffe")].append({"forward": cf, "backward": cb})
                log.append(f"round {rnd + 1}: {net} {batch}: " + "; ".join(
                    f"{e or 'netrun'} " + (r["error"] if "error" in r else
                                           f"{r['forward']:.1f} / {r['backward']:.1f} ms")
                    for e in engines + ["caffe"] for r in results[(row, e)][-1:])
                    + f" (GEMM {gemm[row][-1]:.0f} GF/s)")
                print(log[-1], flush=True)

        def best(runs, key):
            ok = [r[key] for r in runs if "error" not in r]
            return min(ok) if ok else None

        for row in rows:
            net, batch = row
            err = [r["error"] for e in engines + ["caffe"] for r in results[(row, e)]
                   if "error" in r]
            if err:
                line = f"| {net} | {batch} | error: {err[0]} |"
                lines.append(line)
                print(line, flush=True)
                continue
            line = f"| {net} | {batch} |"
            for key in ("forward", "backward"):
                c = best(results[(row, "caffe")], key)
                line += f" {c:.1f} |"
                for e in engines:
                    v = best(results[(row, e)], key)
                    line += f" {v:.1f} | {v / c:.2f} |"
                    if v > c and e == engines[0] and (net, batch) not in [x[:2] for x in slow]:
                        slow.append((net, batch, results[(row, e)][0]))
            for e in engines:
                line += f" {max(r['rss_mb'] for r in results[(row, e)]):.0f} |"
            line += f" {max(gemm[row]):.0f} |"
            if args.torch:
                t = run_child(net, batch, args.iterations, ["--engine", "torch"])
                line += (f" error: {t['error']} | |" if "error" in t else
                         f" {t['forward']:.1f} | {t['backward']:.1f} |")
            lines.append(line)
            print(line, flush=True)
    lines += ["", f"At the end of the table: {load()}, GEMM {gemm_gflops():.0f} GFLOP/s."]
    if not args.low_memory:
        lines += ["", "## Every round (forward / backward ms; each row's runs back to back)",
                  "", "```"] + log + ["```"]
    if not args.low_memory and args.memory_rows:
        lines += ["", "## Forward-only peak RSS: default vs --low-memory", ""] + MEMORY_HEAD
        for item in args.memory_rows.split(","):
            net, batch = item.split(":")
            lines.append(memory_row(net, int(batch), args.iterations))
            print(lines[-1], flush=True)
    if args.per_layer and slow:
        lines += ["", "## Per-layer figures of the rows above Caffe", ""]
        for net, batch, r in slow:
            lines += per_layer(net, batch, r, args.iterations, exe=exe)
            print("\n".join(lines[-4:]), flush=True)
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
