"""Builders of hostile files for the tests: small files that declare huge contents.

Everything here writes a few hundred KB at most, in well under a second (the
8-bit 20000 x 20000 PNG of the issue takes about 1.5 s: its 400 MB of zero
scanlines go through zlib).
"""
import io
import struct
import zipfile
import zlib

import numpy as np


def _chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def png_bytes(width, height, depth=8, color=0, rows=None):
    """A valid PNG of ``width`` x ``height`` zero pixels (gray ``color`` 0, RGB 2),
    its scanlines compressed with zlib as they are made (memory stays small).
    ``rows``: write only that many scanlines (a truncated image)."""
    bands = {0: 1, 2: 3, 4: 2, 6: 4}[color]
    row = b"\0" + bytes((width * bands * depth + 7) // 8)
    comp = zlib.compressobj(9)
    parts = []
    block = row * 64
    n = height if rows is None else rows
    for i in range(0, n, 64):
        parts.append(comp.compress(block if n - i >= 64 else row * (n - i)))
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"".join(parts))
            + _chunk(b"IEND", b""))


def png_header_only(width, height, depth=8, color=2):
    """A PNG whose header declares ``width`` x ``height`` and holds no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IEND", b"")


def npy_header(shape, descr="<f4", version=(1, 0), fortran=False):
    """The bytes of an .npy header (magic, length, dict) declaring ``shape``."""
    b = io.BytesIO()
    d = {"descr": descr, "fortran_order": fortran, "shape": tuple(shape)}
    if version == (1, 0):
        np.lib.format.write_array_header_1_0(b, d)
    else:
        np.lib.format.write_array_header_2_0(b, d)
    return b.getvalue()


def npy_huge_header_length(length=0xFFFFFFF0):
    """A v2 .npy whose 4-byte header length declares ``length`` bytes."""
    return b"\x93NUMPY\x02\x00" + struct.pack("<I", length) + b"{"


def write_npz(path, members, compress=False):
    """An .npz of ``{name: raw .npy bytes}`` (members written as given)."""
    mode = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", mode) as z:
        for name, raw in members.items():
            z.writestr(name if name.endswith(".npy") else name + ".npy", raw)
    return path


def npy_bytes(arr):
    b = io.BytesIO()
    np.save(b, arr, allow_pickle=True)
    return b.getvalue()


def sparse_file(path, size=1 << 40):
    """A file of ``size`` bytes (default 1 TiB) that takes no disk space; None if the
    file system refuses it."""
    try:
        with open(path, "wb") as f:
            f.truncate(size)
    except (OSError, OverflowError):
        return None
    return path
