"""Fuzzing the readers of outside data: images, .npz archives and LMDB records.

The companion of test_fuzz.py (same settings, alarm and memory limit; the same
NETRUN_FUZZ_* variables).  Every outcome must be a success or a NetrunError --
never another exception, never a hang, and never an allocation beyond the
32 MiB limit (readers get it as their memory limit, so declared-huge files are
refused from their headers):

* images: Pillow's modes (1, L, LA, P, PA, RGB, RGBA, RGBX, CMYK, I;16, I;16B,
  I, F, YCbCr, LAB, HSV) in PNG, GIF (animated too), BMP, TIFF, JPEG and WebP
  (those a format can hold), 16-bit PNGs, then
  truncated, byte-damaged, or given a huge declared size (PNG IHDR with its
  CRC, GIF screen and frame sizes);
* .npz members: numeric arrays of every kind, object/string/structured/complex
  dtypes, headers declaring huge or negative shapes or a 4 GiB header, data
  shorter than declared, garbage, names that are not .npy, many members, and
  damage to the zip itself;
* LMDB records: Datums with edge dims (0, -1, 2^31 - 1, 100000) against the
  bytes present, float_data, encoded images (the fuzzed ones above, bombs
  included) and garbage, read by a Data layer.
"""
import io
import os
import struct
import zlib

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
PIL = pytest.importorskip("PIL")
from hypothesis import assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from PIL import Image  # noqa: E402

from hostile import npy_bytes, npy_header, npy_huge_header_length, png_bytes  # noqa: E402
from netrun import Net  # noqa: E402
from netrun.errors import NetrunError  # noqa: E402
from netrun.proto import caffe_pb2  # noqa: E402
from test_fuzz import EXAMPLES, LIMIT, alarm, fuzz_settings  # noqa: E402

# a quarter of test_fuzz's examples per test (100 by default: some 12 s for the four)
file_settings = settings(fuzz_settings, max_examples=max(1, EXAMPLES // 4))

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning",
                                        "ignore::UserWarning")   # numpy's Python-2 header note

# -- images ---------------------------------------------------------------------------------------
MODES = ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "I;16", "I;16B", "I", "F",
         "YCbCr", "LAB", "HSV"]
FORMATS = ["PNG", "GIF", "BMP", "TIFF", "JPEG", "WEBP"]


@st.composite
def image_bytes(draw):
    """A small encoded image of a drawn mode and format (animated GIFs too)."""
    mode = draw(st.sampled_from(MODES + ["PNG16"]))
    fmt = draw(st.sampled_from(FORMATS))
    w, h = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    if mode == "PNG16":                     # 16-bit gray, gray+alpha, RGB, RGBA
        return "PNG", png_bytes(w, h, depth=16, color=draw(st.sampled_from([0, 2, 4, 6])))
    rng = np.random.default_rng(draw(st.integers(0, 3)))
    frames = draw(st.integers(1, 3)) if fmt == "GIF" else 1
    ims = []
    for _ in range(frames):
        if mode in ("I", "F"):
            a = rng.normal(100, 200, (h, w)).astype(np.int32 if mode == "I" else np.float32)
            ims.append(Image.fromarray(a))                 # int32 -> I, float32 -> F
        elif mode == "I;16":
            ims.append(Image.fromarray(rng.integers(0, 65536, (h, w)).astype(np.uint16)))
        else:
            rgb = Image.fromarray(rng.integers(0, 256, (h, w, 3)).astype(np.uint8), "RGB")
            try:
                ims.append(rgb.convert(mode) if mode != "P" else rgb.quantize(7))
            except (ValueError, OSError):            # no conversion: a blank image of the mode
                ims.append(Image.new(mode, (w, h)))
    buf = io.BytesIO()
    try:
        if frames > 1:
            ims[0].save(buf, format=fmt, save_all=True, append_images=ims[1:], duration=10)
        else:
            ims[0].save(buf, format=fmt)
    except (OSError, ValueError, KeyError, TypeError):
        assume(False)                       # this format cannot hold this mode
    return fmt, buf.getvalue()


def png_resized(data, width, height):
    """A PNG whose IHDR declares another size (its CRC made right again)."""
    if data[12:16] != b"IHDR":
        return data
    body = b"IHDR" + struct.pack(">II", width, height) + data[24:29]
    return data[:8] + data[8:12] + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF) + data[33:]


HUGE_DIMS = [0, 1, 7, 9000, 20000, 65535, 1 << 20, (1 << 31) - 1]


@st.composite
def hostile_image(draw):
    fmt, data = draw(image_bytes())
    how = draw(st.sampled_from(["as is", "truncate", "damage", "huge", "bomb"]))
    if how == "truncate":
        data = data[:draw(st.integers(0, len(data)))]
    elif how == "damage":
        b = bytearray(data)
        for _ in range(draw(st.integers(1, 6))):
            if b:
                b[draw(st.integers(0, len(b) - 1))] = draw(st.integers(0, 255))
        data = bytes(b)
    elif how == "huge":
        w, h = draw(st.sampled_from(HUGE_DIMS)), draw(st.sampled_from(HUGE_DIMS))
        if fmt == "PNG":
            data = png_resized(data, w, h)
        elif fmt == "GIF" and len(data) > 10:
            w, h = min(w, 65535), min(h, 65535)
            data = data[:6] + struct.pack("<HH", w, h) + data[10:]
            i = data.find(b"\x2c", 13)               # the first frame's descriptor
            if i > 0 and draw(st.booleans()):
                data = data[:i + 5] + struct.pack("<HH", w, h) + data[i + 9:]
    elif how == "bomb":
        w, h = draw(st.sampled_from([(3000, 3000), (20000, 5000), (20000, 20000)]))
        # complete when small (decoded within the limit), else the first rows only
        data = png_bytes(w, h, depth=1, rows=None if w == 3000 else 10)
    return data


@file_settings
@given(data=hostile_image(), color=st.sampled_from([True, False, None]),
       as_file=st.booleans())
def test_fuzzed_images(tmp_path_factory, data, color, as_file):
    from netrun.io.images import read_image, resize_linear
    source = data
    if as_file:
        source = str(tmp_path_factory.mktemp("img") / "x.img")
        with open(source, "wb") as f:
            f.write(data)
    with alarm():
        try:
            img = read_image(source, color=color, limit=LIMIT, input_hw=(8, 8))
        except NetrunError:
            return
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] in (1, 3)
        assert img.nbytes <= LIMIT
        assert resize_linear(img, 8, 8).shape == (8, 8, img.shape[2])


# -- .npz archives --------------------------------------------------------------------------------
DTYPES = ["<f4", "<f8", "<f2", ">f4", "|u1", "<i4", "<i8", "|b1", "<u2"]
BAD_DTYPES = ["|O", "<U3", "|S4", "<c8", [("a", "<f4"), ("b", "<i4")], "<M8[s]"]


@st.composite
def npy_member(draw):
    kind = draw(st.sampled_from(["array", "array", "bad dtype", "huge", "negative", "long header",
                                 "short", "garbage", "fortran", "v2"]))
    shape = tuple(draw(st.lists(st.integers(0, 5), max_size=4)))
    if kind == "array":
        return npy_bytes(np.ones(shape, np.dtype(draw(st.sampled_from(DTYPES)))))
    if kind == "bad dtype":
        dt = draw(st.sampled_from(BAD_DTYPES))
        if dt == "|O":
            return npy_bytes(np.array([{"a": 1}, None], object))
        return npy_header(shape, dt) + bytes(draw(st.integers(0, 64)))
    if kind == "huge":
        dims = tuple(draw(st.lists(st.sampled_from([1, 1000, 100000, 1 << 31, 1 << 62]),
                                   min_size=1, max_size=4)))
        return npy_header(dims) + bytes(draw(st.integers(0, 1000)))
    if kind == "negative":
        return npy_header((2, -3)) + bytes(24)
    if kind == "long header":
        return npy_huge_header_length(draw(st.sampled_from([10001, 1 << 20, 0xFFFFFFFF])))
    if kind == "short":
        full = npy_bytes(np.ones((3, 4), np.float32))
        return full[:draw(st.integers(0, len(full) - 1))]
    if kind == "garbage":
        return draw(st.binary(max_size=64))
    if kind == "fortran":
        return npy_header((3, 2), "<f4", fortran=True) + bytes(24)
    return npy_header(shape, "<f4", version=(2, 0)) + bytes(4 * int(np.prod(shape)))


@st.composite
def hostile_npz(draw):
    import zipfile
    members = draw(st.dictionaries(st.sampled_from(["data", "label", "x", "a/b", "data.txt"]),
                                   npy_member(), min_size=1, max_size=4))
    many = draw(st.sampled_from([0, 0, 0, 300, 3000]))
    compress = draw(st.booleans())
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as z:
        for name, raw in members.items():
            z.writestr(name if name.endswith((".npy", ".txt")) else name + ".npy", raw)
        one = npy_bytes(np.zeros(1, np.float32))
        for i in range(many):
            z.writestr(f"m{i}.npy", one)
    data = buf.getvalue()
    damage = draw(st.sampled_from(["none", "none", "truncate", "bytes"]))
    if damage == "truncate":
        data = data[:draw(st.integers(0, len(data)))]
    elif damage == "bytes":
        b = bytearray(data)
        for _ in range(draw(st.integers(1, 4))):
            b[draw(st.integers(0, len(b) - 1))] = draw(st.integers(0, 255))
        data = bytes(b)
    return data, many


@file_settings
@given(case=hostile_npz())
def test_fuzzed_npz(tmp_path_factory, case):
    from netrun.commands.common import load_npy, load_npz
    data, many = case
    path = tmp_path_factory.mktemp("npz") / "x.npz"
    path.write_bytes(data)
    limit = LIMIT if many < 3000 else 1 << 20        # 3000 members: refused from the count
    with alarm():
        try:
            arrays = load_npz(str(path), "--inputs", limit)
        except NetrunError:
            pass
        else:
            for a in arrays.values():
                assert a.dtype.kind in "biuf" and a.nbytes <= LIMIT
        try:
            load_npy(str(path), "--input x", limit)   # an archive given as an .npy
        except NetrunError:
            pass


@file_settings
@given(raw=npy_member())
def test_fuzzed_npy(tmp_path_factory, raw):
    from netrun.commands.common import load_npy
    path = tmp_path_factory.mktemp("npy") / "x.npy"
    path.write_bytes(raw)
    with alarm():
        try:
            a = load_npy(str(path), "--input x", LIMIT)
        except NetrunError:
            return
        assert a.dtype.kind in "biuf" and a.nbytes <= LIMIT


# -- LMDB records ---------------------------------------------------------------------------------
DIMS = [-1, 0, 1, 2, 3, 100000, (1 << 31) - 1]


@st.composite
def lmdb_record(draw):
    kind = draw(st.sampled_from(["raw", "raw", "float", "encoded", "garbage"]))
    if kind == "garbage":
        return draw(st.binary(max_size=64))
    d = caffe_pb2.Datum(label=draw(st.integers(-5, 5)))
    if kind == "encoded":
        d.encoded = True
        d.data = draw(hostile_image())
        return d.SerializeToString()
    if draw(st.booleans()):
        d.channels, d.height, d.width = (draw(st.sampled_from(DIMS)) for _ in range(3))
    else:
        d.channels, d.height, d.width = (draw(st.integers(1, 3)) for _ in range(3))
    n = draw(st.sampled_from([0, 1, 12, abs(d.channels * d.height * d.width) % 4096]))
    if kind == "float":
        d.float_data.extend([0.5] * n)
    else:
        d.data = bytes(n)
    return d.SerializeToString()


@file_settings
@given(records=st.lists(lmdb_record(), min_size=1, max_size=3), batch=st.integers(1, 3),
       crop=st.sampled_from([0, 1, 2]))
def test_fuzzed_lmdb_records(tmp_path_factory, records, batch, crop):
    lmdb = pytest.importorskip("lmdb")
    from netrun.layers import data as data_mod
    tmp = tmp_path_factory.mktemp("db")
    db = tmp / "db"
    env = lmdb.open(str(db), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i, rec in enumerate(records):
            txn.put(f"{i:08d}".encode(), rec)
    env.close()
    net = tmp / "net.prototxt"
    net.write_text(f'layer {{ name: "d" type: "Data" top: "data" top: "label" data_param {{ '
                   f'source: "{db}" batch_size: {batch} backend: LMDB }} '
                   f'transform_param {{ crop_size: {crop} }} }}\n')
    try:
        with alarm():
            try:
                n = Net(str(net), phase="train", warn=lambda m: None, max_memory=LIMIT)
                n.forward()
                n.forward()
            except NetrunError:
                pass
    finally:
        opened = data_mod._LMDB_ENVS.pop(os.path.realpath(db), None)
        if opened is not None:
            opened.close()
