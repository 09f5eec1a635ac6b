"""Where `netrun extract` reads its items from.

A source is listed once, on the client, into its item **keys** (strings, in
dataset order) and optional integer labels; a task then reads only the items of
its own chunk, by key (``read``).  Sources are small picklable objects (paths,
no open handles), so they travel to Dask workers; handles are opened lazily,
once per process.

=================  =====================================  ==========================
``--data``         items                                  key
=================  =====================================  ==========================
directory          every image file below it (sorted)     path relative to the directory
glob (``*?[``)     every matching image file (sorted)     the matched path
``list.txt``       Caffe ImageData list: ``path label``   the path as listed
                   (or one ``.h5`` path a line: HDF5Data)  ``file.h5:row``
directory with     Caffe ``Datum`` records                 the LMDB key (latin-1 decoded)
``data.mdb``       (``convert_imageset``'s output)
``file.h5``        the rows of one dataset                 ``file.h5:row``
``file.npy``       the rows (memory-mapped)               the row index
=================  =====================================  ==========================

Images and 8-bit Datums are *pixels*: they are resized to the input's H x W and
go through forward's preprocessing (``--raw-scale``, ``--mean``, ``--scale``).
HDF5 rows, ``.npy`` rows and float Datums are *arrays*, fed as they are; their
shape must be the input's item shape.

``read(keys, shape)`` yields ``(key, array)`` or ``(key, NetrunError)`` per item,
so one bad item can be skipped without losing its chunk.
"""
import glob
import os

import numpy as np

from ..errors import NetrunError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
H5_EXTS = (".h5", ".hdf5", ".hdf")
_HANDLES = {}          # per-process open LMDB environments / memory maps, by path


def open_source(data, h5_dataset=None, root_folder=None):
    """The source for a ``--data`` argument (see the module doc)."""
    data = str(data)
    low = data.lower()
    if any(ch in data for ch in "*?["):
        return ImageFiles(data, glob_mode=True)
    if not os.path.exists(data):
        raise NetrunError("no such file or directory", f"{data} (--data)")
    if os.path.isdir(data):
        if os.path.exists(os.path.join(data, "data.mdb")):
            return LMDBDatums(data)
        return ImageFiles(data)
    if low.endswith(".npy"):
        return NpyRows(data)
    if low.endswith(H5_EXTS):
        return HDF5Rows([os.path.abspath(data)], h5_dataset, data)
    if low.endswith(IMAGE_EXTS):
        return ImageFiles(data, glob_mode=True)
    lines = _read_lines(data)
    first = next((ln.strip() for ln in lines if ln.strip()), "")
    if first.lower().endswith(H5_EXTS):
        base = os.path.dirname(os.path.abspath(data))
        files = [_resolve(ln.strip(), base) for ln in lines if ln.strip()]
        return HDF5Rows(files, h5_dataset, data)
    return ImageList(data, lines, root_folder)


def _read_lines(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().splitlines()
    except OSError as e:
        raise NetrunError(f"cannot read: {e.strerror or e}", f"{path} (--data)") from None


def _resolve(path, base):
    """A listed path: as given if it exists (or is absolute), else relative to ``base``."""
    if os.path.isabs(path) or os.path.exists(path):
        return os.path.abspath(path)
    return os.path.join(base, path)


class Source:
    kind = "pixels"            # or "arrays"
    labels = None

    def describe(self):
        return f"{type(self).__name__}({self.where})"


class ImageFiles(Source):
    """Image files below a directory, or matching a glob pattern."""

    def __init__(self, where, glob_mode=False):
        self.where = where
        self.glob_mode = glob_mode
        self.root = "" if glob_mode else os.path.abspath(where)

    def list(self):
        if self.glob_mode:
            paths = [p for p in glob.glob(self.where, recursive=True)
                     if p.lower().endswith(IMAGE_EXTS) and os.path.isfile(p)]
            keys = sorted(paths)
        else:
            keys = []
            for d, subdirs, files in os.walk(self.root):
                subdirs.sort()
                rel = os.path.relpath(d, self.root)
                keys.extend(os.path.normpath(os.path.join(rel, f)) for f in sorted(files)
                            if f.lower().endswith(IMAGE_EXTS))
            keys.sort()
        if not keys:
            raise NetrunError("holds no image files (" + ", ".join(IMAGE_EXTS) + ")",
                              f"{self.where} (--data)")
        return keys

    def path(self, key):
        return os.path.join(self.root, key) if self.root else key

    def read(self, keys, shape):
        c, h, w = shape
        for key in keys:
            yield key, _image(self.path(key), c, h, w)


def _image(source, c, h, w, what=None):
    """An image file or encoded bytes -> (C, H, W) uint8 at the input's size, or the error."""
    from ..io.images import read_image, resize_linear
    try:
        img = read_image(source, color=(c == 3), what=what, input_hw=(h, w))   # bomb checks
        return resize_linear(img, h, w).transpose(2, 0, 1)
    except NetrunError as e:
        return NetrunError(e.message)


class ImageList(Source):
    """Caffe's ImageData source: one ``path label`` a line (the path may hold spaces)."""

    def __init__(self, where, lines, root_folder=None):
        self.where = where
        self._parsed = _parse_list(where, lines)        # dropped by list(): tasks need none
        first = self._parsed[0][0]
        if root_folder is not None:
            self.root = os.path.abspath(root_folder)
        elif os.path.isabs(first) or os.path.exists(first):
            self.root = os.path.abspath(".")
        else:                                 # Caffe's root_folder: here, the list's folder
            self.root = os.path.dirname(os.path.abspath(where))

    def list(self):
        keys, self.labels = self._parsed
        self._parsed = None
        return keys

    def read(self, keys, shape):
        c, h, w = shape
        for key in keys:
            yield key, _image(os.path.join(self.root, key), c, h, w, what=key)

    def describe(self):
        return f"ImageList({self.where}, root {self.root})"


def _parse_list(where, lines):
    keys, labels = [], []
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        path, _, label = line.rpartition(" ")
        if not path:                      # no label on the line
            path, label = label, "0"
        try:
            labels.append(int(label))
        except ValueError:
            raise NetrunError(f"expected 'path label', got {line!r}", f"{where}:{n}") from None
        keys.append(path)
    if not keys:
        raise NetrunError("lists no images", f"{where} (--data)")
    return keys, labels


class LMDBDatums(Source):
    """An LMDB of serialized Caffe ``Datum``s, as ``convert_imageset`` writes them."""

    def __init__(self, where):
        self.where = os.path.abspath(where)

    def _env(self):
        env = _HANDLES.get(("lmdb", self.where))
        if env is None:
            try:
                import lmdb
            except ImportError:
                raise NetrunError("an LMDB source needs lmdb: pip install netrun[lmdb]") from None
            try:
                env = lmdb.open(self.where, readonly=True, lock=False, readahead=False,
                                max_readers=512, subdir=True)
            except lmdb.Error as e:
                raise NetrunError(f"cannot open LMDB ({e})", f"{self.where} (--data)") from None
            _HANDLES[("lmdb", self.where)] = env
        return env

    def list(self):
        with self._env().begin() as txn:
            keys = [bytes(k).decode("latin-1") for k in txn.cursor().iternext(values=False)]
        if not keys:
            raise NetrunError("the LMDB holds no records", f"{self.where} (--data)")
        return keys

    def read(self, keys, shape):
        from ..proto import caffe_pb2
        c, h, w = shape
        with self._env().begin() as txn:
            for key in keys:
                raw = txn.get(key.encode("latin-1"))
                if raw is None:
                    yield key, NetrunError("no such LMDB key")
                    continue
                d = caffe_pb2.Datum()
                try:
                    d.ParseFromString(raw)
                except Exception as e:
                    yield key, NetrunError(f"not a caffe Datum ({e})")
                    continue
                yield key, _datum(d, c, h, w)


def _datum(d, c, h, w):
    """A Datum -> (C, H, W) uint8 pixels (resized) or float32 array, or the error."""
    from ..io.images import resize_linear
    if d.encoded:
        return _image(bytes(d.data), c, h, w, what="encoded Datum")
    shape = (d.channels, d.height, d.width)
    if len(d.data):
        arr = np.frombuffer(d.data, np.uint8)
    else:
        arr = np.asarray(d.float_data, np.float32)
    if d.channels <= 0 or arr.size != int(np.prod(shape)):
        return NetrunError(f"the Datum holds {arr.size} values for its shape {shape}")
    arr = arr.reshape(shape)
    if d.channels != c:
        return NetrunError(f"the Datum has {d.channels} channels, the input {c}")
    if arr.dtype == np.uint8:
        return resize_linear(arr.transpose(1, 2, 0), h, w).transpose(2, 0, 1)
    if shape != (c, h, w):
        return NetrunError(f"the float Datum is {shape} (C, H, W), the input takes {(c, h, w)}")
    return arr                  # float32: used as it is, not preprocessed


class NpyRows(Source):
    """The rows of a ``.npy`` array, read through a memory map."""
    kind = "arrays"

    def __init__(self, where):
        self.where = os.path.abspath(where)

    def _array(self):
        arr = _HANDLES.get(("npy", self.where))
        if arr is None:
            try:
                arr = np.load(self.where, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError) as e:
                raise NetrunError(f"not a readable .npy array ({e})", f"{self.where} (--data)") \
                    from None
            if arr.ndim < 1 or arr.dtype.kind not in "biuf":
                raise NetrunError(f"needs a numeric array of rows, not {arr.dtype} {arr.shape}",
                                  f"{self.where} (--data)")
            _HANDLES[("npy", self.where)] = arr
        return arr

    def list(self):
        return [str(i) for i in range(len(self._array()))]

    def read(self, keys, shape):
        arr = self._array()
        rows = [int(k) for k in keys]
        if rows == list(range(rows[0], rows[-1] + 1)):       # a chunk: one contiguous read
            block = np.asarray(arr[rows[0]:rows[-1] + 1])
        else:
            block = np.asarray(arr[rows])
        for key, row in zip(keys, block):
            yield key, _check_row(row, shape)


def _check_row(row, shape):
    if row.shape != tuple(shape):
        return NetrunError(f"has shape {row.shape}, the input takes {tuple(shape)}")
    return row


class HDF5Rows(Source):
    """The rows of one dataset in HDF5 files (Caffe's HDF5Data: a list of files)."""
    kind = "arrays"

    def __init__(self, files, dataset, where):
        self.files, self.dataset, self.where = files, dataset or "data", where

    def _h5py(self):
        try:
            import h5py
        except ImportError:
            raise NetrunError("an HDF5 source needs h5py: pip install netrun[hdf5]") from None
        return h5py

    def _open(self, path):
        h5py = self._h5py()
        try:
            f = h5py.File(path, "r")
        except OSError as e:
            raise NetrunError(f"cannot read HDF5 file ({e})", f"{path} (--data)") from None
        if self.dataset not in f or not isinstance(f[self.dataset], h5py.Dataset):
            have = ", ".join(f.keys()) or "none"
            f.close()
            raise NetrunError(f'has no dataset "{self.dataset}" (datasets: {have}; choose one '
                              "with --h5-dataset)", f"{path} (--data)")
        return f

    def list(self):
        keys = []
        for path in self.files:
            with self._open(path) as f:
                keys.extend(f"{path}:{i}" for i in range(f[self.dataset].shape[0]))
        if not keys:
            raise NetrunError("holds no rows", f"{self.where} (--data)")
        return keys

    def read(self, keys, shape):
        groups = {}
        for key in keys:
            path, _, row = key.rpartition(":")
            groups.setdefault(path, []).append(int(row))
        rows = {}
        for path, idx in groups.items():
            with self._open(path) as f:
                ds = f[self.dataset]
                lo, hi = min(idx), max(idx) + 1
                block = ds[lo:hi]
                for i in idx:
                    rows[f"{path}:{i}"] = np.asarray(block[i - lo])
        for key in keys:
            yield key, _check_row(rows[key], shape)
