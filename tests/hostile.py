"""Builders of hostile files for the tests: small files that declare huge contents.

Everything here writes a few hundred KB at most, in milliseconds (the zlib
stream of a bomb PNG repeats one compressed block instead of compressing
hundreds of MB of zeros).
"""
import io
import struct
import zipfile
import zlib

import numpy as np


def _chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def zeros_zlib(nbytes, block=1 << 22):
    """A zlib stream of ``nbytes`` zero bytes, made in milliseconds: one block of
    zeros is deflated once after a full flush (which resets the history, so every
    such block compresses to the same bytes) and repeated; the Adler-32 of zeros is
    A = 1, B = nbytes mod 65521."""
    block = max(1, min(block, nbytes))
    count, rest = divmod(nbytes, block)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    same = comp.compress(bytes(block)) + comp.flush(zlib.Z_FULL_FLUSH)
    if rest == 0:
        count, rest = count - 1, block
    last = zlib.compressobj(9, zlib.DEFLATED, -15)
    tail = last.compress(bytes(rest)) + last.flush()
    adler = ((nbytes % 65521) << 16) | 1
    return b"\x78\xda" + same * count + tail + struct.pack(">I", adler)


def png_bytes(width, height, depth=8, color=0, rows=None):
    """A valid PNG of ``width`` x ``height`` zero pixels (gray ``color`` 0, RGB 2,
    gray+alpha 4, RGBA 6); ``rows``: write only that many scanlines (truncated).
    The issue's 20000 x 20000 8-bit gray one is 388 KB, made in some 20 ms."""
    bands = {0: 1, 2: 3, 4: 2, 6: 4}[color]
    row_bytes = 1 + (width * bands * depth + 7) // 8          # filter byte + pixels
    n = height if rows is None else rows
    parts = [zeros_zlib(row_bytes * n, block=row_bytes * max(1, (1 << 22) // row_bytes))]
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
