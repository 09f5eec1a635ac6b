"""Layers that bring data into the net.

* ``Input`` / ``MemoryData``: tops the user fills (``net.set_input``, ``--input``).
* ``DummyData``: tops from fillers.
* ``Data`` (LMDB, or LevelDB with plyvel), ``ImageData`` (a list of image files),
  ``HDF5Data`` (a list of .h5 files): batches read in order, cycling at the end.
* ``HDF5Output``: writes its two bottoms to an .h5 file.
* ``Python`` (python.py): a user's pycaffe-style layer, loaded only with
  ``--allow-python-layers``.

Caffe's DataTransformer (``transform_param``), applied by Data and ImageData to
each item ``x`` of shape (C, H, W) (pixels as read: uint8 0-255 in BGR order, or
a Datum's float_data), in the net's dtype::

    y[c, h, w] = (x[c, h_off + h, w_off + w'] - mean[c, h_off + h, w_off + w']) * scale

with ``w' = W_out - 1 - w`` when the item is mirrored, else ``w``.  ``mean`` is
the ``mean_file`` BlobProto (same C x H x W as the uncropped item, indexed at the
uncropped position) or ``mean_value`` (one per channel, or one for all), or 0.
``crop_size`` k gives a k x k output: at a random offset (uniform in
[0, H - k] x [0, W - k]) in the TRAIN phase, centered (``(H - k) / 2``, rounded
down) in TEST.  ``mirror: true`` flips each item with probability 1/2 in *both*
phases (Caffe draws ``Rand(2)`` whatever the phase).  Random choices come from
the net's seeded generator, so they are reproducible but not Caffe's stream.

Relative paths (``source``, ``mean_file``, list entries) are looked up in the
current directory first, then next to the prototxt.  The optional packages are
imported only when a layer needs them.
"""
import importlib
import math
import os

import numpy as np

from ..errors import LayerError, NetrunError, check
from ..fillers import check_filler, fill
from .base import Layer, register


def shape_of(blob_shape):
    """Tuple of a BlobShape message's dims."""
    return tuple(int(d) for d in blob_shape.dim)


@register("Input")
class Input(Layer):
    """Tops shaped by ``input_param.shape`` (one shape for all tops, or one each).
    Values come from the user; no forward or backward work."""
    exact_bottoms = 0
    min_tops = 1
    is_input = True

    def setup(self, bottom, top):
        shapes = self.param.input_param.shape
        check(len(shapes) in (0, 1, len(top)),
              f"input_param gives {len(shapes)} shapes for {len(top)} tops "
              "(give one for all, or one per top)")
        for i, t in enumerate(top):
            if len(shapes):
                t.reshape(shape_of(shapes[0] if len(shapes) == 1 else shapes[i]))

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        pass


@register("DummyData")
class DummyData(Layer):
    """Tops filled by ``dummy_data_param.data_filler`` (one for all tops, or one
    each; default constant 0).  Constant fillers fill once; others refill at
    every forward."""
    exact_bottoms = 0
    min_tops = 1

    def setup(self, bottom, top):
        p = self.param.dummy_data_param
        n = len(top)
        legacy = len(p.num) > 0
        if legacy:
            for f in ("channels", "height", "width"):
                check(len(getattr(p, f)) in (1, n),
                      f"dummy_data_param.{f} must be given once or once per top")
            pick = lambda seq, i: seq[0] if len(seq) == 1 else seq[i]
            shapes = [(pick(p.num, i), pick(p.channels, i), pick(p.height, i), pick(p.width, i))
                      for i in range(n)]
        else:
            check(len(p.shape) in (1, n), "dummy_data_param.shape must be given once or once per top")
            shapes = [shape_of(p.shape[0] if len(p.shape) == 1 else p.shape[i]) for i in range(n)]
        check(len(p.data_filler) in (0, 1, n),
              "dummy_data_param.data_filler must be given zero, one, or once per top")
        if len(p.data_filler) == 0:
            from ..proto import caffe_pb2
            fillers = [caffe_pb2.FillerParameter(type="constant", value=0)] * n
        elif len(p.data_filler) == 1:
            fillers = [p.data_filler[0]] * n
        else:
            fillers = list(p.data_filler)
        self.fillers = fillers
        for i, (t, s, f) in enumerate(zip(top, shapes, fillers)):
            t.reshape(s)
            check_filler(f, t.shape)
            if (f.type or "constant") == "constant":
                # filled now, so charged now (the net charges only blobs without data)
                if self.ctx.budget is not None:
                    name = self.param.top[i] if i < len(self.param.top) else f"top {i}"
                    self.ctx.budget.charge(2 * t.nbytes, f'blob "{name}" {t.shape}')
                t.data[...] = fill(f, t.shape, self.ctx.rng)

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        for t, f in zip(top, self.fillers):
            if (f.type or "constant") != "constant":
                t.data[...] = fill(f, t.shape, self.ctx.rng)

    def backward(self, top, propagate_down, bottom):
        pass


@register("MemoryData")
class MemoryData(Input):
    """Tops ``data`` (batch_size, channels, height, width) and ``label``
    (batch_size,) from ``memory_data_param``.  As pycaffe's ``set_input_arrays``
    the arrays come from the user: both tops are net inputs (``net.set_input``,
    ``--input``); the layer does no work."""
    exact_tops = 2
    min_tops = None
    is_input = True

    def setup(self, bottom, top):
        p = self.param.memory_data_param
        n, c, h, w = p.batch_size, p.channels, p.height, p.width
        check(n * c * h * w > 0, "batch_size, channels, height, and width must be given and "
                                 f"positive in memory_data_param (got {n}, {c}, {h}, {w})")
        top[0].reshape((n, c, h, w))
        top[1].reshape((n,))


# -- helpers shared by the data layers ---------------------------------------------------------
def need_module(name, install, who):
    """Import an optional dependency, or say how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise LayerError(f"{who} needs {name}: pip install {install}") from None


SOURCE_HINT = ("; to run the net without it, give the layer's tops with --input-shape "
               "NAME=N,C,H,W or --input NAME=FILE.npy (they become plain inputs)")


def resolve_path(path, ctx, what, extra_dirs=(), hint=""):
    """A data path: as given (absolute, or relative to the current directory), else
    relative to the prototxt's folder (and ``extra_dirs``)."""
    check(bool(path), f"{what} is empty{hint}")
    if os.path.isabs(path) or os.path.exists(path):
        if not os.path.exists(path):
            raise LayerError(f'{what} "{path}" does not exist{hint}')
        return path
    tried = [os.path.abspath(path)]
    for d in (ctx.base_dir,) + tuple(extra_dirs):
        cand = os.path.join(d or ".", path)
        if os.path.exists(cand):
            return cand
        tried.append(os.path.abspath(cand))
    raise LayerError(f'{what} "{path}" not found (looked for ' + ", ".join(dict.fromkeys(tried)) +
                     ")" + hint)


def ctx_limit(ctx):
    """The net's memory limit (--max-memory) for the files a layer reads; None: the
    default (80% of the available memory), see :mod:`netrun.io.limits`."""
    budget = getattr(ctx, "budget", None)
    return budget.limit if budget is not None else None


def read_list(path, what, limit=None):
    from ..io.limits import read_lines
    try:
        return read_lines(path, f'{what} "{path}"', limit)
    except NetrunError as e:
        raise LayerError(str(e)) from None
    except OSError as e:
        raise LayerError(f'cannot read {what} "{path}": {e.strerror or e}') from None


class DataTransformer:
    """Caffe's transform_param: mean, scale, crop, mirror (formula in the module doc)."""

    def __init__(self, tp, phase, ctx, dtype):
        self.tp = tp
        self.phase = phase
        self.rng = ctx.rng
        self.dtype = np.dtype(dtype)
        self.scale = self.dtype.type(tp.scale)
        self.crop = int(tp.crop_size)
        self.mirror = bool(tp.mirror)
        check(not (tp.HasField("mean_file") and len(tp.mean_value)),
              "transform_param: give mean_file or mean_value, not both")
        check(not (tp.force_color and tp.force_gray),
              "transform_param: force_color and force_gray cannot both be set")
        self.mean = None
        if tp.HasField("mean_file"):
            from ..io.images import read_mean_file
            path = resolve_path(tp.mean_file, ctx, "transform_param.mean_file")
            try:
                self.mean = read_mean_file(path, "transform_param.mean_file",
                                           ctx_limit(ctx)).astype(self.dtype)
            except NetrunError as e:
                raise LayerError(str(e)) from None
        self.mean_values = np.asarray(tp.mean_value, self.dtype)

    @property
    def decode_color(self):
        """How encoded images decode: True (color), False (gray), None (as stored)."""
        if self.tp.force_color:
            return True
        if self.tp.force_gray:
            return False
        return None

    def output_shape(self, c, h, w):
        k = self.crop
        if k:
            check(h >= k and w >= k, f"crop_size {k} is larger than the {h}x{w} item")
            return (c, k, k)
        return (c, h, w)

    def __call__(self, raw):
        """(N, C, H, W) uint8/float items -> transformed (N, C, H', W') in the dtype."""
        n, c, h, w = raw.shape
        x = raw.astype(self.dtype)
        if self.mean is not None:
            check(self.mean.shape == (c, h, w),
                  f"mean_file is {self.mean.shape} (C, H, W) but the items are {(c, h, w)}")
            x -= self.mean
        elif self.mean_values.size:
            check(self.mean_values.size in (1, c),
                  f"give 1 mean_value or one per channel ({c}), not {self.mean_values.size}")
            x -= self.mean_values.reshape(-1, 1, 1)
        x *= self.scale
        k = self.crop
        if k:
            check(h >= k and w >= k, f"crop_size {k} is larger than the {h}x{w} item")
        mirror = (self.rng.integers(0, 2, size=n).astype(bool) if self.mirror
                  else np.zeros(n, bool))
        if not k and not mirror.any():
            return x
        oh, ow = (k, k) if k else (h, w)
        if k and self.phase == 0:                          # TRAIN: random crop
            h_off = self.rng.integers(0, h - k + 1, size=n)
            w_off = self.rng.integers(0, w - k + 1, size=n)
        else:
            h_off = np.full(n, (h - oh) // 2)
            w_off = np.full(n, (w - ow) // 2)
        rows = h_off[:, None] + np.arange(oh)              # (N, oh)
        cols = w_off[:, None] + np.arange(ow)              # (N, ow)
        cols = np.where(mirror[:, None], cols[:, ::-1], cols)
        return x[np.arange(n)[:, None, None, None], np.arange(c)[None, :, None, None],
                 rows[:, None, :, None], cols[:, None, None, :]]


def chw(img):
    """(H, W, C) image -> (C, H, W)."""
    return np.ascontiguousarray(img.transpose(2, 0, 1))


def decode_datum(raw, color, limit=None, where="a record"):
    """A serialized caffe Datum -> ((C, H, W) array, label).

    Before anything is built: the record's bytes against the memory ``limit``,
    the declared channels x height x width (each > 0) against the values present,
    and an encoded image's header against the pixel limit (netrun.io.limits)."""
    from ..io.limits import check_declared
    from ..proto import caffe_pb2
    try:
        check_declared(len(raw), f"a record of {len(raw)} bytes", None, limit)
    except NetrunError as e:
        raise LayerError(f"{where}: {e.message}") from None
    d = caffe_pb2.Datum()
    try:
        d.ParseFromString(raw)
    except Exception as e:
        raise LayerError(f"{where} is not a caffe Datum ({e})") from None
    if d.encoded:
        from ..io.images import read_image
        try:
            return chw(read_image(bytes(d.data), color=color, what="encoded Datum",
                                  limit=limit)), d.label
        except NetrunError as e:
            raise LayerError(f"{where}: {e}") from None
    shape = (d.channels, d.height, d.width)
    check(all(s > 0 for s in shape),
          f"{where}: a Datum declares channels x height x width {shape}: each must be positive")
    count = math.prod(shape)
    present = len(d.data) if len(d.data) else len(d.float_data)
    check(present == count, f"{where}: a Datum declares channels x height x width {shape} = "
                            f"{count} values but holds {present}")
    if len(d.data):
        arr = np.frombuffer(d.data, np.uint8)
    else:
        arr = np.asarray(d.float_data, np.float32)
    return arr.reshape(shape), d.label


def stack_items(items, what):
    first = items[0].shape
    for i, a in enumerate(items):
        check(a.shape == first, f"{what} {i} of the batch is {a.shape} (C, H, W), the first is "
                                f"{first}: items of a batch must share one shape")
    return np.stack(items)


def start_list(layer, lines, source, shuffle, rand_skip):
    """Caffe's walk over an image list, set on ``layer``: ``lines``, their ``order``
    (shuffled at setup when ``shuffle``; the layer shuffles again after every pass) and
    the position ``pos`` after a random skip of fewer than ``rand_skip`` lines."""
    check(lines, f'image list "{source}" names no images')
    layer.lines = lines
    layer.order = np.arange(len(lines))
    layer.shuffle = bool(shuffle)
    if shuffle:
        layer.ctx.rng.shuffle(layer.order)
    layer.pos = 0
    if rand_skip:
        skip = int(layer.ctx.rng.integers(0, rand_skip))
        check(len(lines) > skip, f"rand_skip {skip} is not less than the {len(lines)} images")
        layer.pos = skip


def check_batch(n, where):
    check(n > 0, f"{where}.batch_size must be positive (got {n})")
    return int(n)


# -- Data (LMDB / LevelDB) -------------------------------------------------------------------------
_LMDB_ENVS = {}     # one environment per database and process (py-lmdb refuses a second)


class _LMDBCursor:
    """Records in key order, starting over after the last.  Each record's size is
    checked against the memory ``limit`` before its bytes are copied out of the map."""

    def __init__(self, path, limit=None):
        lmdb = need_module("lmdb", "netrun[lmdb]", "Data with backend LMDB")
        key = os.path.realpath(path)
        self.path = path
        self.limit = limit
        try:
            if key not in _LMDB_ENVS:
                _LMDB_ENVS[key] = lmdb.open(path, readonly=True, lock=False, readahead=False,
                                            subdir=os.path.isdir(path), max_readers=126)
            self.env = _LMDB_ENVS[key]
            self.txn = self.env.begin(buffers=True)
            self.cursor = self.txn.cursor()
        except lmdb.Error as e:
            raise LayerError(f'cannot open LMDB "{path}": {e}') from None
        check(self.cursor.first(), f'LMDB "{path}" holds no records')

    def _value(self):
        """(where, bytes) of the current record, its size checked before the copy."""
        from ..io.limits import check_declared
        where = f'LMDB "{self.path}" record "{bytes(self.cursor.key()).decode("utf-8", "replace")}"'
        value = self.cursor.value()
        try:
            check_declared(len(value), f"a record of {len(value)} bytes", None, self.limit)
        except NetrunError as e:
            raise LayerError(f"{where}: {e.message}") from None
        return where, bytes(value)

    def peek(self):
        return self._value()

    def next(self):
        value = self._value()
        if not self.cursor.next():
            self.cursor.first()
        return value


class _LevelDBCursor:
    def __init__(self, path, limit=None):
        from ..io.limits import check_declared
        plyvel = need_module("plyvel", "plyvel", "Data with backend LEVELDB")
        try:
            self.db = plyvel.DB(path, create_if_missing=False)
        except Exception as e:
            raise LayerError(f'cannot open LevelDB "{path}": {e}') from None
        self.values = []
        total = 0
        for k, v in self.db.iterator():         # all records are held: their sum is checked
            total += len(v)
            try:
                check_declared(total, f"{len(self.values) + 1} records", None, limit)
            except NetrunError as e:
                raise LayerError(f'LevelDB "{path}": {e.message}') from None
            self.values.append((f'LevelDB "{path}" record "{k.decode("utf-8", "replace")}"', v))
        check(self.values, f'LevelDB "{path}" holds no records')
        self.pos = 0

    def peek(self):
        return self.values[self.pos]

    def next(self):
        v = self.values[self.pos]
        self.pos = (self.pos + 1) % len(self.values)
        return v


@register("Data")
class Data(Layer):
    """Batches of caffe ``Datum`` records from ``data_param.source`` (``backend``:
    LMDB, or LEVELDB -- Caffe's default -- with the plyvel package), in key order,
    starting over after the last record.  Tops: data (batch_size, C, H', W') after
    ``transform_param`` (module doc); optional label (batch_size,).  The batch shape
    follows its first record.  Encoded records (JPEG/PNG bytes) are decoded like
    OpenCV (BGR; ``force_color``/``force_gray``).  ``rand_skip`` is ignored, as in
    Caffe 1.0."""
    exact_bottoms = 0
    min_tops = 1
    max_tops = 2

    def setup(self, bottom, top):
        from ..proto import caffe_pb2
        p = self.param.data_param
        self.batch_size = check_batch(p.batch_size, "data_param")
        path = resolve_path(p.source, self.ctx, "data_param.source", hint=SOURCE_HINT)
        self.transformer = DataTransformer(self.param.transform_param, self.phase, self.ctx,
                                           self.dtype)
        if p.backend == caffe_pb2.DataParameter.LMDB:
            self.db = _LMDBCursor(path, ctx_limit(self.ctx))
        else:
            if os.path.exists(os.path.join(path, "data.mdb")):
                raise LayerError(f'"{path}" is an LMDB database but data_param.backend is LEVELDB '
                                 "(Caffe's default): add backend: LMDB")
            self.db = _LevelDBCursor(path, ctx_limit(self.ctx))
        where, raw = self.db.peek()
        item, _ = decode_datum(raw, self.transformer.decode_color, ctx_limit(self.ctx), where)
        top[0].reshape((self.batch_size,) + self.transformer.output_shape(*item.shape))
        if len(top) > 1:
            top[1].reshape((self.batch_size,))

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        items, labels = [], []
        for _ in range(self.batch_size):
            where, raw = self.db.next()
            a, lab = decode_datum(raw, self.transformer.decode_color, ctx_limit(self.ctx), where)
            items.append(a)
            labels.append(lab)
        x = self.transformer(stack_items(items, "record"))
        top[0].reshape(x.shape)
        top[0].data[...] = x
        if len(top) > 1:
            top[1].reshape((len(labels),))
            top[1].data[...] = np.asarray(labels, self.dtype)

    def backward(self, top, propagate_down, bottom):
        pass


# -- ImageData ------------------------------------------------------------------------------------
@register("ImageData")
class ImageData(Layer):
    """Batches of images listed in ``image_data_param.source``, one ``path label``
    a line (split at the last blank, so paths may hold spaces; ``root_folder`` is
    prefixed to each path as a plain string, as Caffe does).  Images
    are read like OpenCV: BGR (``is_color``, default) or gray, resized to
    ``new_height`` x ``new_width`` (both or neither) with INTER_LINEAR, then
    ``transform_param`` applies.  ``shuffle`` permutes the list at setup and at
    every pass; ``rand_skip`` skips a random number (< rand_skip) of lines at
    setup.  Tops: data (batch_size, C, H', W'), label (batch_size,); the batch
    shape follows its first image."""
    exact_bottoms = 0
    exact_tops = 2

    def setup(self, bottom, top):
        p = self.param.image_data_param
        self.batch_size = check_batch(p.batch_size, "image_data_param")
        check((p.new_height == 0) == (p.new_width == 0),
              "image_data_param: give new_height and new_width together")
        self.new_hw = (p.new_height, p.new_width) if p.new_height else None
        self.color = bool(p.is_color)
        self.transformer = DataTransformer(self.param.transform_param, self.phase, self.ctx,
                                           self.dtype)
        source = resolve_path(p.source, self.ctx, "image_data_param.source", hint=SOURCE_HINT)
        self.list_dir = os.path.dirname(source)
        lines = []
        for num, line in enumerate(read_list(source, "image list", ctx_limit(self.ctx)), 1):
            line = line.strip()
            if not line:
                continue
            parts = line.rsplit(None, 1)
            try:
                if len(parts) != 2:
                    raise ValueError
                path, label = parts[0], int(parts[1])
            except ValueError:
                raise LayerError(f'{source}:{num}: expected "path label", got "{line}"') from None
            lines.append((p.root_folder + path.strip(), label))
        start_list(self, lines, source, p.shuffle, p.rand_skip)
        first = self._read(self.order[self.pos])
        top[0].reshape((self.batch_size,) + self.transformer.output_shape(*first.shape))
        top[1].reshape((self.batch_size,))

    def _read(self, i):
        from ..io.images import read_image, resize_linear
        path, _ = self.lines[i]
        try:
            full = resolve_path(path, self.ctx, "image", (self.list_dir,))
            img = read_image(full, color=self.color, limit=ctx_limit(self.ctx),
                             input_hw=self.new_hw)
        except NetrunError as e:
            raise LayerError(f"could not load image: {e}") from None
        if self.new_hw:
            img = resize_linear(img, *self.new_hw)
        return chw(img)

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        items, labels = [], []
        for _ in range(self.batch_size):
            i = self.order[self.pos]
            items.append(self._read(i))
            labels.append(self.lines[i][1])
            self.pos += 1
            if self.pos >= len(self.lines):
                self.pos = 0
                if self.shuffle:
                    self.ctx.rng.shuffle(self.order)
        x = self.transformer(stack_items(items, "image"))
        top[0].reshape(x.shape)
        top[0].data[...] = x
        top[1].reshape((len(labels),))
        top[1].data[...] = np.asarray(labels, self.dtype)

    def backward(self, top, propagate_down, bottom):
        pass


# -- HDF5 -------------------------------------------------------------------------------------------
def need_h5py(layer_type="HDF5Data"):
    try:
        import h5py
    except ImportError:
        raise NetrunError(f"{layer_type} needs h5py: pip install netrun[hdf5]") from None
    return h5py


@register("HDF5Data")
class HDF5Data(Layer):
    """Rows of the datasets named by the tops, from the .h5 files listed (one a
    line) in ``hdf5_data_param.source``.  Top j has shape (batch_size,) +
    dataset.shape[1:]; all datasets of a file share their row count.  Rows are
    taken in order (``shuffle``: files in a random order, rows permuted at each
    file load), moving to the next file at the end of one and starting over
    after the last.  Values are converted to the net's dtype; no transform."""
    exact_bottoms = 0
    min_tops = 1

    def setup(self, bottom, top):
        p = self.param.hdf5_data_param
        self.batch_size = check_batch(p.batch_size, "hdf5_data_param")
        source = resolve_path(p.source, self.ctx, "hdf5_data_param.source", hint=SOURCE_HINT)
        list_dir = os.path.dirname(source)
        listed = read_list(source, "HDF5 file list", ctx_limit(self.ctx))
        files = [ln.strip() for ln in listed if ln.strip()]
        check(files, f'HDF5 file list "{source}" names no files')
        self.files = [resolve_path(f, self.ctx, "HDF5 file", (list_dir,)) for f in files]
        self.names = list(self.param.top)
        self.shuffle = bool(p.shuffle)
        self.file_order = np.arange(len(self.files))
        if self.shuffle:
            self.ctx.rng.shuffle(self.file_order)
        self.current = 0
        self._load(self.files[self.file_order[0]])
        self.row_shapes = [a.shape[1:] for a in self.arrays]
        for t, a in zip(top, self.arrays):
            t.reshape((self.batch_size,) + a.shape[1:])

    def _load(self, path):
        from ..io.limits import check_declared
        h5py = need_h5py()
        limit = ctx_limit(self.ctx)
        arrays, declared = [], []
        try:
            with h5py.File(path, "r") as f:
                for name in self.names:
                    if name not in f or not isinstance(f[name], h5py.Dataset):
                        have = ", ".join(k for k in f.keys()) or "none"
                        raise LayerError(f'"{path}" has no dataset "{name}" (datasets: {have})')
                    ds = f[name]
                    check(ds.ndim >= 1, f'dataset "{name}" of "{path}" is a scalar; it needs rows')
                    declared.append((name, ds))
                # shape x dtype of every dataset before any slab is read: the file's
                # values and their conversion to the net's dtype are held together
                total = 0
                for name, ds in declared:
                    where = f'HDF5 file "{path}" dataset "{name}"'
                    kind = ds.dtype.kind
                    check(kind in "biuf", f'{where} has dtype {ds.dtype}: not numeric')
                    n = math.prod(int(d) for d in ds.shape)
                    nbytes = n * (ds.dtype.itemsize + self.dtype.itemsize)
                    total += nbytes
                    try:
                        check_declared(nbytes, f"{tuple(ds.shape)} {ds.dtype} values", None, limit)
                        check_declared(total, f"its datasets {self.names}", None, limit)
                    except NetrunError as e:
                        raise LayerError(f"{where}: {e.message}") from None
                for name, ds in declared:
                    arrays.append(np.asarray(ds[()], self.dtype))
        except MemoryError:
            raise LayerError(f'out of memory reading HDF5 file "{path}"') from None
        except (OSError, ValueError, TypeError, KeyError, RuntimeError) as e:
            raise LayerError(f'cannot read HDF5 file "{path}": {e}') from None
        rows = arrays[0].shape[0]
        for name, a in zip(self.names, arrays):
            check(a.shape[0] == rows, f'datasets of "{path}" differ in rows: "{self.names[0]}" has '
                                      f'{rows}, "{name}" has {a.shape[0]}')
            if hasattr(self, "row_shapes"):
                j = self.names.index(name)
                check(a.shape[1:] == self.row_shapes[j],
                      f'dataset "{name}" of "{path}" has rows {a.shape[1:]}, the first file '
                      f"{self.row_shapes[j]}")
        check(rows > 0, f'"{path}" has no rows')
        self.arrays = arrays
        self.rows = rows
        self.perm = np.arange(rows)
        if self.shuffle:
            self.ctx.rng.shuffle(self.perm)
        self.row = 0

    def reshape(self, bottom, top):
        pass

    def _advance_file(self):
        if len(self.files) > 1:
            self.current += 1
            if self.current == len(self.files):
                self.current = 0
                if self.shuffle:
                    self.ctx.rng.shuffle(self.file_order)
            self._load(self.files[self.file_order[self.current]])
        else:
            self.row = 0
            if self.shuffle:
                self.ctx.rng.shuffle(self.perm)

    def forward(self, bottom, top):
        outs = [np.empty((self.batch_size,) + s, self.dtype) for s in self.row_shapes]
        i = 0
        while i < self.batch_size:                  # one slice per file chunk
            take = min(self.batch_size - i, self.rows - self.row)
            idx = self.perm[self.row:self.row + take]
            for o, a in zip(outs, self.arrays):
                o[i:i + take] = a[idx]
            i += take
            self.row += take
            if self.row == self.rows:
                self._advance_file()
        for t, o in zip(top, outs):
            t.reshape(o.shape)
            t.data[...] = o

    def backward(self, top, propagate_down, bottom):
        pass


@register("HDF5Output")
class HDF5Output(Layer):
    """Writes bottom 0 as dataset "data" and bottom 1 as "label" to
    ``hdf5_output_param.file_name`` at each forward (the file holds the latest
    batch).  Up to 4-D blobs are saved with Caffe's legacy 4-D shape
    (num, channels, height, width), e.g. labels (N,) as (N, 1, 1, 1).  No backward."""
    exact_bottoms = 2
    exact_tops = 0

    def setup(self, bottom, top):
        self.file_name = self.param.hdf5_output_param.file_name
        check(bool(self.file_name), "hdf5_output_param.file_name is empty")

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        h5py = need_h5py("HDF5Output")

        def legacy(a):
            return a.reshape(a.shape + (1,) * (4 - a.ndim)) if a.ndim <= 4 else a
        try:
            with h5py.File(self.file_name, "w") as f:
                f.create_dataset("data", data=legacy(np.asarray(bottom[0].data)))
                f.create_dataset("label", data=legacy(np.asarray(bottom[1].data)))
        except OSError as e:
            raise LayerError(f'cannot write HDF5 file "{self.file_name}": {e}') from None

    def backward(self, top, propagate_down, bottom):
        pass


@register("WindowData")
class WindowData(Layer):
    """R-CNN's window sampler: not supported."""
    exact_bottoms = 0
    exact_tops = 2

    def setup(self, bottom, top):
        raise LayerError("WindowData is not supported (to run the rest of the net, give its "
                         "tops with --input-shape/--input: they become plain inputs)")
