"""Running the chunks: one task function, two engines.

``run_chunk(spec, i, keys)`` is the whole job for chunk ``i`` (items
``i * chunk_size`` up to the next chunk): read its items from the source,
preprocess them, run the net batch by batch (the last batch padded to the
batch size, so every item is computed in a batch of exactly ``--batch-size``:
GEMMs of another height may round differently), and -- when the store allows
it -- write the rows and then the chunk's completion record.  It returns a
small status dict.  Each process builds the Net once (``_NETS``) and reuses it.

* ``local``: the chunks run one after the other in this process (the net's own
  threads use the cores).
* ``dask``: one task per chunk on a distributed cluster (``tcp://HOST:PORT``) or
  an embedded ``LocalCluster`` (``local:N``: N worker processes of 1 thread).
  At most ``2 x threads`` tasks are in flight, so memory stays bounded whatever
  the dataset size.  Dask re-runs the task of a worker that died; a chunk is
  only ever recorded complete after all its rows are written, and its rows are
  a pure function of its items, so a re-run writes the same bytes.
"""
import os
import sys
import time
import uuid

import numpy as np

from ..errors import NetrunError

_NETS = {}          # per process: net key -> (Net, mean array or None)


def get_net(spec):
    key = spec["net_key"]
    hit = _NETS.get(key)
    if hit is None:
        from ..net import Net
        n = spec["net"]
        net = Net(n["model"], phase=n["phase"], weights=n["weights"], level=n["level"],
                  stages=n["stages"], dtype=n["dtype"], seed=n["seed"], edits=n["edits"],
                  input_shapes=n["input_shapes"], warn=lambda m: None,
                  allow_python_layers=n["allow_python_layers"], inference=True,
                  max_memory=n["max_memory"])
        mean = None
        pre = spec["preprocessing"]
        if pre.get("mean_file") and not pre.get("mean"):
            from ..io.images import read_mean_file
            mean = read_mean_file(pre["mean_file"], "--mean-file")
        _NETS.clear()                    # one net per process: a new run replaces the old
        hit = _NETS[key] = (net, mean)
    return hit


def chunk_bounds(spec, i):
    lo = i * spec["chunk_size"]
    return lo, min(lo + spec["chunk_size"], spec["items"])


def compute_chunk(spec, i, keys):
    """(arrays of the chunk's rows per blob, skipped [(index, key, reason)]) or raise."""
    from ..io.images import preprocess
    net, mean = get_net(spec)
    lo, hi = chunk_bounds(spec, i)
    b = spec["batch_size"]
    name = spec["input"]
    item_shape = tuple(spec["item_shape"])
    out = {blob: np.zeros((hi - lo,) + tuple(shape), dtype)
           for blob, (shape, dtype) in spec["blobs"].items()}
    skipped = []
    source = spec["source"]
    for start in range(0, hi - lo, b):
        part = keys[start:start + b]
        x = np.zeros((b,) + item_shape, net.dtype)
        bad = []
        pixels, pixel_rows = [], []
        for j, (key, item) in enumerate(source.read(part, item_shape)):
            index = lo + start + j
            if isinstance(item, NetrunError):
                reason = item.message
                if not spec["skip_bad"]:
                    raise NetrunError(reason, f"{key} (item {index} of {spec['data']})")
                skipped.append((index, key, reason))
                bad.append(j)
            elif item.dtype == np.uint8 and source.kind == "pixels":
                pixels.append(item)
                pixel_rows.append(j)
            else:
                x[j] = item
        if pixels:
            x[pixel_rows] = preprocess(np.stack(pixels), net.dtype, spec["preprocessing"], mean)
        res = net.forward(blobs=list(out), **{name: x})
        used = len(part)
        for blob, arr in out.items():
            arr[start:start + used] = res[blob][:used]
            if bad:
                arr[[start + j for j in bad]] = 0
    return out, skipped


def run_chunk(spec, i, keys):
    """Compute chunk ``i`` (its item ``keys``) and, with a shared store, write it; a
    small status dict.

    A NetrunError (a bad item) comes back as ``status["error"]`` rather than as an
    exception, so Dask does not retry it."""
    t0 = time.perf_counter()
    try:
        arrays, skipped = compute_chunk(spec, i, keys)
    except NetrunError as e:
        return {"chunk": i, "error": str(e)}
    lo, hi = chunk_bounds(spec, i)
    status = {"chunk": i, "items": hi - lo, "skipped": skipped, "error": None,
              "seconds": time.perf_counter() - t0, "pid": os.getpid()}
    if spec["write_in_task"]:
        store = spec["store"]
        fault = spec.get("fault")
        if fault and fault["chunk"] == i and not os.path.exists(fault["marker"]):
            # test hook: die between the rows and the completion record, once
            for name, a in arrays.items():
                store.group()[name][lo:hi] = a
            open(fault["marker"], "w").close()
            os._exit(fault.get("code", 3))
        store.write_chunk(i, lo, arrays, skipped, hi - lo)
    else:
        status["arrays"] = arrays
    return status


# -- engines ---------------------------------------------------------------------------------
def run_local(spec, store, pending, keys, on_done):
    for i in pending:
        lo, hi = chunk_bounds(spec, i)
        status = run_chunk(spec, i, keys[lo:hi])
        if status["error"]:
            raise NetrunError(status["error"])
        _finish(store, spec, status)
        on_done(status)


def _finish(store, spec, status):
    """The client's part of a chunk: write it when the task could not."""
    arrays = status.pop("arrays", None)
    if arrays is not None:
        lo, hi = chunk_bounds(spec, status["chunk"])
        store.write_chunk(status["chunk"], lo, arrays, status["skipped"], hi - lo)


def _cluster(scheduler):
    try:
        import distributed
    except ImportError:
        raise NetrunError('--engine dask needs dask.distributed: pip install "netrun[dask]"') \
            from None
    if hasattr(scheduler, "submit"):                 # a Client given to the Python API
        return scheduler, None
    text = str(scheduler or "local:2")
    if text.startswith("local:") or text == "local":
        try:
            n = int(text.partition(":")[2] or (os.cpu_count() or 1))
        except ValueError:
            raise NetrunError(f"--scheduler {text}: expected local:N (N worker processes) or "
                              "tcp://HOST:PORT") from None
        if n < 1:
            raise NetrunError(f"--scheduler {text}: N must be at least 1")
        import dask
        import logging
        # one thread per worker process: BLAS and netrun's tiles too
        with dask.config.set({"distributed.nanny.pre-spawn-environ.NETRUN_THREADS": "1",
                              "distributed.nanny.pre-spawn-environ.OPENBLAS_NUM_THREADS": "1",
                              "distributed.nanny.pre-spawn-environ.OMP_NUM_THREADS": "1"}):
            cluster = distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                               dashboard_address=":0",
                                               silence_logs=logging.ERROR)
        return distributed.Client(cluster), cluster
    try:
        return distributed.Client(text, timeout="20s"), None
    except (OSError, TimeoutError) as e:
        raise NetrunError(f"cannot reach the Dask scheduler ({e})", f"--scheduler {text}") \
            from None


def run_dask(spec, store, pending, keys, on_done, scheduler, retries=3):
    import distributed
    client, cluster = _cluster(scheduler)
    own = cluster is not None or not hasattr(scheduler, "submit")
    try:
        threads = sum(client.nthreads().values()) or 1
        spec_future = client.scatter(spec, broadcast=True, hash=False)
        token = uuid.uuid4().hex[:12]
        todo = iter(pending)
        ac = distributed.as_completed()

        def submit():
            i = next(todo, None)
            if i is not None:
                lo, hi = chunk_bounds(spec, i)
                ac.add(client.submit(run_chunk, spec_future, i, keys[lo:hi],
                                     key=f"netrun-extract-{token}-{i}", retries=retries))
        for _ in range(2 * threads):
            submit()
        for fut in ac:
            try:
                status = fut.result()
            except distributed.client.FutureCancelledError:
                continue
            except Exception as e:   # a task that failed every retry (KilledWorker, ...)
                raise NetrunError(f"a task failed on the cluster: {type(e).__name__}: {e}") \
                    from None
            fut.release()
            if status["error"]:
                raise NetrunError(status["error"])
            _finish(store, spec, status)
            on_done(status)
            submit()
    finally:
        if own:
            client.close()
            if cluster is not None:
                cluster.close()


class Progress:
    """items/s and ETA on stderr, redrawn in place; only when stderr is a terminal."""

    def __init__(self, total, already, enabled):
        self.total, self.done = total, already
        self.start_done = already
        self.t0 = time.perf_counter()
        self.enabled = enabled
        self.last = 0.0

    def update(self, n):
        self.done += n
        now = time.perf_counter()
        if not self.enabled or (now - self.last < 0.2 and self.done < self.total):
            return
        self.last = now
        rate = (self.done - self.start_done) / max(now - self.t0, 1e-9)
        left = (self.total - self.done) / rate if rate > 0 else 0
        eta = f"{int(left // 60)}:{int(left % 60):02d}"
        sys.stderr.write(f"\rnetrun extract: {self.done}/{self.total} items  {rate:,.1f} items/s  "
                         f"ETA {eta}  ")
        sys.stderr.flush()

    def close(self):
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()
