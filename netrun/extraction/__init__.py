"""`netrun extract`: a Caffe model over a whole dataset, into a Zarr store or an HDF5 file.

The client lists the source's item keys, builds the net once to learn each
blob's per-item shape, creates (or, with ``resume``, checks) the store, and
hands the chunks not yet complete to an engine (``engines.py``); each chunk is
computed and written by one task (``engines.run_chunk``).  The store's
``netrun`` attribute says ``complete: true`` once every chunk is.

This package needs zarr (and dask.distributed for ``engine="dask"``) only when
used; ``import netrun`` does not load it.  It is named ``extraction`` so that
``netrun.extract`` stays the function.
"""
import hashlib
import os
import sys
import time

import numpy as np

from ..errors import NetrunError

ENGINES = ("local", "dask")


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _keys_sha256(keys):
    h = hashlib.sha256()
    for k in keys:
        h.update(k.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()


def _warn(message):
    import warnings
    from ..net import NetrunWarning
    warnings.warn(message, NetrunWarning, stacklevel=4)   # the caller of netrun.extract


def extract(model, data, out, weights=None, blobs=None, batch_size=64, chunk_size=None,
            engine="local", scheduler="local:2", resume=False, overwrite=False, skip_bad=False,
            raw_scale=None, mean=None, mean_file=None, scale=None, input_name=None,
            input_shape=None, h5_dataset=None, root_folder=None, phase="test", level=0,
            stages=(), edits=(), dtype="float32", seed=0, allow_python_layers=False,
            max_memory="default", progress=None, report=None, retries=3, warn=None,
            _fault=None):
    """Run ``model`` over every item of ``data`` and store the ``blobs`` in ``out``.

    ``data``: a directory or glob of images, a Caffe ImageData list (``path
    label``) or HDF5Data list (``.h5`` paths), an LMDB of Datums, an ``.h5`` or a
    ``.npy`` (see :mod:`netrun.extraction.sources`).  ``out``: a Zarr store (a
    path or fsspec URL) or an ``.h5`` file.  ``blobs``: names (list or
    ``"fc7,prob"``; default: the net outputs).  Images and 8-bit Datums are
    resized to the input's H x W and preprocessed as ``netrun forward`` does
    (``raw_scale``, ``mean``, ``mean_file``, ``scale``).

    ``engine="dask"`` runs one task per chunk of ``chunk_size`` items (default:
    ``batch_size``) on ``scheduler``: ``"local:N"`` (a LocalCluster of N
    processes), ``"tcp://host:8786"``, or a ``distributed.Client``.  ``resume``
    skips the chunks already complete in ``out``; ``skip_bad`` records unreadable
    or ill-shaped items in the store (their rows stay zero) instead of stopping.
    ``progress``: show a progress bar on stderr (default: when it is a terminal).
    ``report``: a dict to fill with the run's summary; ``warn(message)``: where
    warnings go (default: :class:`netrun.NetrunWarning`).  Returns ``out``.
    """
    from .engines import Progress, run_dask, run_local
    from .sources import open_source
    from .stores import is_hdf5, make_store
    t0 = time.perf_counter()
    if engine not in ENGINES:
        raise NetrunError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    if batch_size < 1:
        raise NetrunError(f"--batch-size must be positive (got {batch_size})")
    chunk_size = chunk_size or batch_size
    if chunk_size < 1 or chunk_size % batch_size:
        raise NetrunError(f"--chunk-size {chunk_size} must be a positive multiple of "
                          f"--batch-size {batch_size}")
    if weights is not None and not os.path.isfile(weights):
        raise NetrunError("no such file", f"{weights} (--weights)")
    if isinstance(blobs, str):
        blobs = [b.strip() for b in blobs.split(",") if b.strip()]
    source = open_source(data, h5_dataset=h5_dataset, root_folder=root_folder)
    keys = source.list()
    labels, source.labels = source.labels, None         # the tasks need neither
    n = len(keys)

    # build the net once here: it checks the model, the blobs and the input
    from ..net import Net
    probe = Net(model, phase=phase, weights=weights, level=level, stages=stages, dtype=dtype,
                seed=seed, edits=edits, input_shapes=input_shape or None,
                allow_python_layers=allow_python_layers, max_memory=max_memory,
                fill_params=False)
    if len(probe.inputs) != 1:
        raise NetrunError(f"the net has {len(probe.inputs)} inputs "
                          f"({', '.join(probe.inputs) or 'none'}); extract feeds the items to "
                          "one: use a deploy net with a single input")
    if input_name is not None and input_name not in probe.inputs:
        raise NetrunError(f'--input-name "{input_name}" names no input of the net '
                          f"(inputs: {', '.join(probe.inputs)})")
    input_name = probe.inputs[0]
    item_shape = tuple(probe.blobs[input_name].shape[1:])
    if source.kind == "pixels" and (len(item_shape) != 3 or item_shape[0] not in (1, 3)):
        raise NetrunError(f'input "{input_name}" has shape {probe.blobs[input_name].shape}: '
                          "images need a (N, 1 or 3, H, W) input (give --input-shape)")
    shapes = dict(input_shape or {})
    shapes[input_name] = (batch_size,) + item_shape
    net = Net(model, phase=phase, weights=None, level=level, stages=stages, dtype=dtype,
              seed=seed, edits=edits, input_shapes=shapes, allow_python_layers=allow_python_layers,
              max_memory=max_memory, fill_params=False)
    blobs = list(blobs or net.outputs)
    if not blobs:
        raise NetrunError("the net has no outputs: name the blobs to store with --blobs")
    blob_shapes = {}
    for b in blobs:
        if b not in net.blobs:
            names = ", ".join(k for k in net.blobs if not k.startswith("("))
            raise NetrunError(f'--blobs: no blob named "{b}" (blobs: {names})')
        shape = net.blobs[b].shape
        if not shape or shape[0] != batch_size:
            raise NetrunError(f'--blobs: blob "{b}" has shape {shape}, not one row per item '
                              f"(batch size {batch_size})")
        blob_shapes[b] = (tuple(shape[1:]), net.dtype.str)
    del net, probe

    preprocessing = {"raw_scale": raw_scale, "mean": mean, "mean_file": mean_file, "scale": scale}
    if source.kind == "arrays" and any(v is not None for v in preprocessing.values()):
        given = ", ".join("--" + k.replace("_", "-") for k, v in preprocessing.items()
                          if v is not None)
        (warn or _warn)(f"{given}: ignored for {data}: arrays are fed as they are "
                        "(preprocessing applies to images and 8-bit Datums)")
    if mean and mean_file:
        raise NetrunError("give --mean or --mean-file, not both")
    from .. import __version__
    chunks = -(-n // chunk_size)
    meta = {
        "netrun_version": __version__, "model": os.path.abspath(str(model)),
        "model_sha256": _sha256(model),
        "weights": os.path.abspath(weights) if weights else None,
        "weights_sha256": _sha256(weights) if weights else None,
        "blobs": {b: list(s) for b, (s, _) in blob_shapes.items()}, "items": n,
        "chunk_size": chunk_size, "batch_size": batch_size, "chunks": chunks,
        "input": input_name, "dtype": np.dtype(dtype).name, "preprocessing": preprocessing,
        "source": str(data), "source_kind": type(source).__name__,
        "keys_sha256": _keys_sha256(keys), "complete": False, "skipped": [],
    }
    store = make_store(out)
    done = store.prepare(meta, keys, labels, blob_shapes, resume, overwrite)
    pending = [i for i in range(chunks) if not done[i]]
    spec = {
        "net": {"model": os.path.abspath(str(model)),
                "weights": os.path.abspath(weights) if weights else None, "phase": phase,
                "level": level, "stages": tuple(stages), "dtype": dtype, "seed": seed,
                "edits": tuple(edits), "input_shapes": shapes,
                "allow_python_layers": allow_python_layers, "max_memory": max_memory},
        "input": input_name, "item_shape": item_shape, "batch_size": batch_size,
        "chunk_size": chunk_size, "items": n, "source": source,
        "data": str(data), "preprocessing": preprocessing, "skip_bad": skip_bad,
        "blobs": blob_shapes, "store": store,
        "write_in_task": store.shared or engine == "local", "fault": _fault,
    }
    spec["net_key"] = (meta["model_sha256"], meta["weights_sha256"], repr(spec["net"]),
                       repr(preprocessing))
    if progress is None:
        progress = sys.stderr.isatty()
    bar = Progress(n, n - sum(min(chunk_size, n - i * chunk_size) for i in pending), progress)
    skipped_now = []

    def on_done(status):
        skipped_now.extend(status["skipped"])
        bar.update(status["items"])

    t_run = time.perf_counter()
    try:
        try:
            if engine == "local":
                run_local(spec, store, pending, keys, on_done)
            else:
                run_dask(spec, store, pending, keys, on_done, scheduler, retries=retries)
        finally:
            bar.close()
        seconds = time.perf_counter() - t_run
        if not store.done_flags().all():        # every task reported done
            raise RuntimeError(f"{out}: some chunks are not recorded complete")
        skipped = store.skipped()
        store.update_meta(complete=True, skipped=skipped)
    finally:
        store.close()
    computed = sum(min(chunk_size, n - i * chunk_size) for i in pending)
    if report is not None:
        report.update({
            "out": str(out), "format": "hdf5" if is_hdf5(out) else "zarr", "engine": engine,
            "scheduler": str(scheduler) if engine == "dask" else None, "items": n,
            "chunks": chunks, "chunks_computed": len(pending),
            "chunks_resumed": chunks - len(pending), "items_computed": computed,
            "skipped": skipped, "blobs": meta["blobs"], "seconds": seconds,
            "items_per_second": computed / seconds if seconds > 0 else None,
            "total_seconds": time.perf_counter() - t0, "complete": True})
    return str(out)
