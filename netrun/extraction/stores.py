"""Where `netrun extract` writes: a Zarr store or an HDF5 file, one layout.

====================  ===========================================================
``<blob>``            one array per blob, ``(items,) + item shape``, chunked by the
                      run's chunk size (a blob name with ``/`` makes nested groups)
``keys``              the item keys (file names, LMDB keys, ...) in item order
``labels``            the list file's labels (ImageData lists only)
``_done``             per chunk: 1 once the chunk is complete (written last)
``_skipped``          per item: 1 if the item was skipped (``--skip-bad``); its
                      rows in the blob arrays are zeros
``_skip_reason``      per item: why it was skipped ("" otherwise)
attribute ``netrun``  model, weights and their sha256, blobs, item count, chunk
                      and batch size, netrun version, ``complete``, ``skipped``
====================  ===========================================================

In Zarr each chunk of every array is its own object, and a task writes exactly
the chunks of its items (``_done`` has one element per chunk), so tasks on many
machines write concurrently with no lock.  An HDF5 file has one writer: the
process that runs the loop (with ``--engine dask`` the client writes the arrays
the tasks return).
"""
import json
import os

import numpy as np

from ..errors import NetrunError

# fields that must match for --resume to continue a store
IDENTITY = ("model_sha256", "weights_sha256", "blobs", "items", "chunk_size", "batch_size",
            "keys_sha256", "input", "dtype", "preprocessing", "source_kind")
KEY_CHUNK = 65536


def is_hdf5(out):
    return str(out).lower().endswith((".h5", ".hdf5", ".hdf"))


def make_store(out):
    return H5Store(out) if is_hdf5(out) else ZarrStore(out)


class Store:
    shared = False          # True: tasks may write their own chunks from any process

    def close(self):
        """Release the open file (HDF5); a Zarr store holds none."""

    def prepare(self, meta, keys, labels, blobs, resume, overwrite):
        """Create the store (or check it for --resume); returns the done flags per chunk."""
        old = self.read_meta()
        if old is not None and not overwrite:
            if not resume:
                raise NetrunError("already exists (give --resume to complete it, or --overwrite "
                                  "to replace it)", f"{self.out} (--out)")
            if old.get("ready"):
                for field in IDENTITY:
                    if old.get(field) != meta.get(field):
                        raise NetrunError(f'was made by another run ({field} differs: '
                                          f'{_short(old.get(field))} there, '
                                          f'{_short(meta.get(field))} now); give --overwrite '
                                          "to replace it", f"{self.out} (--out)")
                return self.done_flags()
        elif old is None and self.exists():
            if not overwrite:
                raise NetrunError("exists and is not a netrun extract store (give --overwrite "
                                  "to replace it)", f"{self.out} (--out)")
        self.create(meta, keys, labels, blobs)
        return np.zeros(meta["chunks"], bool)


def _short(v):
    text = json.dumps(v)
    return text if len(text) < 60 else text[:57] + "..."


class ZarrStore(Store):
    """A Zarr (v3) group at a local path or any fsspec URL."""
    shared = True

    def __init__(self, out):
        self.out = str(out)
        self._group = None

    def __getstate__(self):
        return {"out": self.out, "_group": None}

    @staticmethod
    def _zarr():
        try:
            import zarr
        except ImportError:
            raise NetrunError('a Zarr output needs zarr: pip install "netrun[dask]" '
                              "(or write an .h5 file)") from None
        return zarr

    def group(self, mode="r+"):
        if self._group is None or mode == "w":
            zarr = self._zarr()
            try:
                self._group = zarr.open_group(store=self.out, mode=mode, **self._options())
            except Exception as e:          # zarr's errors differ by store and version
                raise NetrunError(f"cannot open the Zarr store ({type(e).__name__}: {e})",
                                  f"{self.out} (--out)") from None
        return self._group

    def _options(self):
        # fsspec's local filesystem makes no parent folders unless asked
        return {"storage_options": {"auto_mkdir": True}} if self.out.startswith("file://") else {}

    def exists(self):
        if "://" not in self.out:
            return os.path.exists(self.out)
        return self.read_meta() is not None

    def read_meta(self):
        zarr = self._zarr()
        try:
            g = zarr.open_group(store=self.out, mode="r", **self._options())
        except Exception:
            return None
        return g.attrs.asdict().get("netrun")

    def create(self, meta, keys, labels, blobs):
        g = self.group("w")
        g.attrs["netrun"] = {**meta, "ready": False}
        n, chunk = meta["items"], meta["chunk_size"]
        for name, (shape, dtype) in blobs.items():
            g.create_array(name, shape=(n,) + tuple(shape), chunks=(chunk,) + tuple(shape),
                           dtype=dtype, fill_value=0)
        k = g.create_array("keys", shape=(n,), chunks=(min(n, KEY_CHUNK),), dtype=str)
        for lo in range(0, n, KEY_CHUNK):
            k[lo:lo + KEY_CHUNK] = np.asarray(keys[lo:lo + KEY_CHUNK], dtype=object).astype(str)
        if labels is not None:
            g.create_array("labels", shape=(n,), chunks=(min(n, KEY_CHUNK),), dtype="int64")[:] = \
                np.asarray(labels, np.int64)
        g.create_array("_done", shape=(meta["chunks"],), chunks=(1,), dtype="uint8", fill_value=0)
        g.create_array("_skipped", shape=(n,), chunks=(chunk,), dtype="uint8", fill_value=0)
        g.create_array("_skip_reason", shape=(n,), chunks=(chunk,), dtype=str, fill_value="")
        g.attrs["netrun"] = {**meta, "ready": True}

    def done_flags(self):
        return np.asarray(self.group()["_done"][:]).astype(bool)

    def write_chunk(self, i, lo, arrays, skipped, n):
        """The chunk's rows of every blob, its skip records, then its completion record."""
        g = self.group()
        for name, a in arrays.items():
            g[name][lo:lo + n] = a
        flags, reasons = _skip_rows(skipped, lo, n)
        g["_skipped"][lo:lo + n] = flags
        g["_skip_reason"][lo:lo + n] = reasons
        g["_done"][i] = 1

    def skipped(self):
        g = self.group()
        flags = np.asarray(g["_skipped"][:]).astype(bool)
        idx = np.flatnonzero(flags)
        out = []
        for i in idx:
            out.append({"index": int(i), "key": str(g["keys"][int(i)]),
                        "reason": str(g["_skip_reason"][int(i)])})
        return out

    def update_meta(self, **fields):
        g = self.group()
        g.attrs["netrun"] = {**g.attrs.asdict()["netrun"], **fields}


def _skip_rows(skipped, lo, n):
    flags = np.zeros(n, np.uint8)
    reasons = np.full(n, "", dtype=object)
    for index, _key, reason in skipped:
        flags[index - lo] = 1
        reasons[index - lo] = reason
    return flags, reasons.astype(str)


class H5Store(Store):
    """An HDF5 file (h5py); written by one process."""

    def __init__(self, out):
        self.out = str(out)
        self._f = None

    def __getstate__(self):
        return {"out": self.out, "_f": None}

    def _h5py(self):
        try:
            import h5py
        except ImportError:
            raise NetrunError("an HDF5 output needs h5py: pip install netrun[hdf5]") from None
        return h5py

    def file(self, mode="r+"):
        if self._f is None or mode == "w":
            if self._f is not None:
                self._f.close()
            try:
                self._f = self._h5py().File(self.out, mode)
            except OSError as e:
                raise NetrunError(f"cannot open the HDF5 file ({e})", f"{self.out} (--out)") \
                    from None
        return self._f

    def close(self):
        if self._f is not None:
            self._f.close()
            self._f = None

    def exists(self):
        return os.path.exists(self.out)

    def read_meta(self):
        if not os.path.exists(self.out):
            return None
        try:
            with self._h5py().File(self.out, "r") as f:
                text = f.attrs.get("netrun")
        except OSError:
            return None
        return json.loads(text) if text is not None else None

    def create(self, meta, keys, labels, blobs):
        h5py = self._h5py()
        f = self.file("w")
        f.attrs["netrun"] = json.dumps({**meta, "ready": False})
        n, chunk = meta["items"], meta["chunk_size"]
        for name, (shape, dtype) in blobs.items():
            f.create_dataset(name, shape=(n,) + tuple(shape), chunks=(chunk,) + tuple(shape),
                             dtype=dtype, fillvalue=0)
        f.create_dataset("keys", data=np.asarray(keys, dtype=object), dtype=h5py.string_dtype())
        if labels is not None:
            f.create_dataset("labels", data=np.asarray(labels, np.int64))
        f.create_dataset("_done", shape=(meta["chunks"],), dtype="uint8", fillvalue=0)
        f.create_dataset("_skipped", shape=(n,), dtype="uint8", fillvalue=0)
        f.create_dataset("_skip_reason", shape=(n,), dtype=h5py.string_dtype())
        f.attrs["netrun"] = json.dumps({**meta, "ready": True})
        f.flush()

    def done_flags(self):
        return np.asarray(self.file()["_done"][:]).astype(bool)

    def write_chunk(self, i, lo, arrays, skipped, n):
        f = self.file()
        for name, a in arrays.items():
            f[name][lo:lo + n] = a
        flags, reasons = _skip_rows(skipped, lo, n)
        f["_skipped"][lo:lo + n] = flags
        f["_skip_reason"][lo:lo + n] = reasons.astype(object)
        f.flush()
        f["_done"][i] = 1
        f.flush()

    def skipped(self):
        f = self.file()
        idx = np.flatnonzero(np.asarray(f["_skipped"][:]))
        return [{"index": int(i), "key": f["keys"].asstr()[int(i)],
                 "reason": f["_skip_reason"].asstr()[int(i)]} for i in idx]

    def update_meta(self, **fields):
        f = self.file()
        f.attrs["netrun"] = json.dumps({**json.loads(f.attrs["netrun"]), **fields})
        f.flush()
