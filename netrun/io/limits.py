"""Sizes declared by outside files, checked before anything is allocated or decoded.

A file can declare far more data than it holds: a 388 KB PNG that decodes to
20000 x 20000 pixels, an ``.npy`` header saying 100000 x 100000 x 10 float32,
an HDF5 dataset with a chunk filter, a caffemodel blob shape that does not
match its values.  Every reader of outside data asks :func:`check_declared`
with the bytes the file would make it allocate, against the same limit as the
net (``--max-memory``, default 80% of the available memory), and fails with
one line naming the file (and member or key) -- never a MemoryError, never a
traceback.

* :func:`check_declared` -- declared bytes against the limit.
* :func:`check_present` -- declared bytes against the bytes the file holds.
* :func:`read_npy_header` / :func:`check_npy_file` / :func:`check_npz_file` --
  ``.npy``/``.npz`` headers (shape x dtype) read before the arrays;
  :func:`zip_entry_count` reads a zip's entry count before ``zipfile`` builds
  its directory.
* :func:`image_pixel_limit` / :func:`check_image_size` -- the largest image (in
  pixels) an input may decode, checked from the header.
* :func:`protobuf_cost` -- the memory a binary protobuf's parse takes, from a
  walk of its wire format (read_binary checks it before parsing).
* :func:`read_lines` -- a text file's lines, its size checked first.

docs/hostile_files.md lists what each reader checks.
"""
import math
import os
import struct
import zlib

import numpy as np

from ..errors import NetrunError, reading
from ..memory import default_limit, human

# used when the available memory cannot be read (no /proc/meminfo, no sysconf)
FALLBACK_LIMIT = 4 << 30

# numpy refuses .npy headers longer than this by default (np.load's max_header_size)
NPY_MAX_HEADER = 10000

# bytes charged per zip entry for zipfile's directory (a ZipInfo and its name)
ZIP_ENTRY_COST = 1024

# bytes per pixel while an image is decoded: Pillow's own copy (up to 4 bytes),
# the RGB conversion (4), the numpy arrays (3 + 3) and the gray arithmetic (int32)
IMAGE_PIXEL_COST = 24

# an image may have at least this many pixels (Pillow's own MAX_IMAGE_PIXELS default),
# or IMAGE_INPUT_FACTOR times the pixels of the input it is resized to, if more
PILLOW_DEFAULT_PIXELS = int(1024 * 1024 * 1024 // 4 // 3)
IMAGE_INPUT_FACTOR = 64


def file_limit(limit=None):
    """The byte limit for one file's data: ``limit`` if given (a net's --max-memory),
    else 80% of the available memory (as a net's default)."""
    if limit is not None:
        return int(limit)
    return default_limit() or FALLBACK_LIMIT


def check_declared(nbytes, what, where, limit=None):
    """Refuse ``nbytes`` of data declared by a file before allocating it.

    ``what`` says what declares it (``"an array of (100000, 100000, 10) float32"``),
    ``where`` names the file (and member/key): the error reads
    ``where: what would take N GiB, more than the memory limit of M GiB (--max-memory...)``.
    Returns ``nbytes``.
    """
    lim = file_limit(limit)
    if nbytes > lim:
        raise NetrunError(f"{what} would take {human(nbytes)}, more than the memory limit of "
                          f"{human(lim)} (--max-memory; default 80% of the available memory)",
                          where)
    return nbytes


def check_present(declared, present, what, where):
    """Refuse data that declares more bytes than the file holds (truncated or forged)."""
    if declared > present:
        raise NetrunError(f"{what} declares {human(declared)} of data but the file holds "
                          f"{human(max(present, 0))} (truncated or damaged)", where)


def shape_bytes(shape, itemsize):
    """Bytes of an array of ``shape`` (dims checked >= 0) and ``itemsize``."""
    return math.prod(int(d) for d in shape) * int(itemsize)


def describe(shape, dtype):
    return f"an array of {tuple(int(d) for d in shape)} {np.dtype(dtype).name}"


# text read whole and split into lines: the text, its str and a str object a line
TEXT_LINES_FACTOR = 8


def read_lines(path, where, limit=None):
    """A text file's lines (list files, labels), its size checked before it is read."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        check_declared(size * TEXT_LINES_FACTOR, f"a {size}-byte text file", where, limit)
        raw = f.read()
    return raw.decode("utf-8", errors="replace").splitlines()


# -- .npy / .npz --------------------------------------------------------------------------------
def read_npy_header(fp, where):
    """Read an .npy header from the file object ``fp`` without reading the data.

    Returns ``(shape, dtype, header_bytes)``; refuses headers longer than numpy's
    own limit before reading them (a v2/v3 header length is 4 bytes, so a forged
    one could ask for 4 GiB), negative dims, and object (pickled) dtypes.
    """
    fmt = np.lib.format
    magic = fp.read(8)
    if len(magic) < 8 or magic[:6] != b"\x93NUMPY":
        raise NetrunError("not a .npy array (no NUMPY magic)", where)
    major = magic[6]
    if major == 1:
        raw_len = fp.read(2)
        length = struct.unpack("<H", raw_len)[0] if len(raw_len) == 2 else None
    elif major in (2, 3):
        raw_len = fp.read(4)
        length = struct.unpack("<I", raw_len)[0] if len(raw_len) == 4 else None
    else:
        raise NetrunError(f"unknown .npy format version {major}.{magic[7]}", where)
    if length is None:
        raise NetrunError("truncated .npy header", where)
    if length > NPY_MAX_HEADER:
        raise NetrunError(f"its .npy header declares {length} bytes (numpy reads at most "
                          f"{NPY_MAX_HEADER}): not a plain numeric array", where)
    header = fp.read(length)
    if len(header) < length:
        raise NetrunError("truncated .npy header", where)
    import io
    reader = fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0
    try:
        shape, _, dtype = reader(io.BytesIO(raw_len + header), max_header_size=NPY_MAX_HEADER)
    except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError, UnicodeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise NetrunError(f"unreadable .npy header ({first})", where) from None
    if any(int(d) < 0 for d in shape):
        raise NetrunError(f"its .npy header declares a negative dimension {tuple(shape)}", where)
    if dtype.hasobject:
        raise NetrunError("holds Python objects (dtype object, read by unpickling): netrun "
                          "reads numeric arrays only", where)
    if dtype.kind not in "biuf":
        raise NetrunError(f"array of dtype {dtype} is not numeric", where)
    return tuple(int(d) for d in shape), dtype, 8 + len(raw_len) + length


def check_npy_file(path, where, limit=None):
    """Check an .npy file's header before np.load reads it: numeric dtype, the data
    present in the file, and the array's bytes within the limit."""
    with reading(where), open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        shape, dtype, offset = read_npy_header(f, where)
    nbytes = shape_bytes(shape, dtype.itemsize)
    check_declared(nbytes, describe(shape, dtype), where, limit)
    check_present(nbytes, size - offset, describe(shape, dtype), where)
    return shape, dtype


def zip_entry_count(f):
    """(entries, central directory bytes) from a zip's end record (zip64 too), read
    before zipfile builds one object per entry; None when there is no end record."""
    size = os.fstat(f.fileno()).st_size
    tail = min(size, 22 + 65535)
    f.seek(size - tail)
    data = f.read(tail)
    i = data.rfind(b"PK\x05\x06")
    if i < 0 or i + 22 > len(data):
        return None
    entries, cd_size = struct.unpack("<HI", data[i + 10:i + 16])
    if entries == 0xFFFF or cd_size == 0xFFFFFFFF:          # zip64: read its end record
        loc = i - 20
        if loc >= 0 and data[loc:loc + 4] == b"PK\x06\x07":
            (rec,) = struct.unpack("<Q", data[loc + 8:loc + 16])
            if rec + 56 <= size:
                f.seek(rec)
                z64 = f.read(56)
                if z64[:4] == b"PK\x06\x06":
                    entries, cd_size = struct.unpack("<QQ", z64[32:48])
    return int(entries), int(cd_size)


def check_npz_file(path, what=None, limit=None):
    """Check an .npz archive before np.load reads it: the zip's entry count (read
    from its end record), then every member's .npy header (numeric dtype, data
    present, no header beyond numpy's limit), and the sum of the arrays' bytes
    within the limit.  Errors name ``path (what)``, or ``path[key] (what)`` for a
    member.  Returns {key: (shape, dtype)}."""
    import zipfile
    path = os.fspath(path)
    tail = f" ({what})" if what else ""
    where = path + tail
    lim = file_limit(limit)
    with reading(where):
        f = open(path, "rb")
    with f:
        counted = zip_entry_count(f)
        if counted is not None:
            entries, cd_size = counted
            check_declared(entries * ZIP_ENTRY_COST + cd_size,
                           f"its zip directory of {entries} members", where, lim)
        f.seek(0)
        try:
            z = zipfile.ZipFile(f)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError,
                struct.error, NotImplementedError, UnicodeError) as e:
            raise NetrunError(f"not a readable .npz archive ({e})", where) from None
        with z:
            out = {}
            total = 0
            for info in z.infolist():
                name = info.filename
                if info.is_dir():
                    continue
                key = name[:-4] if name.endswith(".npy") else name
                mwhere = f"{path}[{key}]{tail}"
                if not name.endswith(".npy"):
                    raise NetrunError(f'member "{name}" is not a .npy array', where)
                try:
                    with z.open(info) as m:
                        shape, dtype, offset = read_npy_header(m, mwhere)
                except NetrunError:
                    raise
                except (zipfile.BadZipFile, NotImplementedError, ValueError, OSError, EOFError,
                        struct.error, RuntimeError, zlib.error) as e:
                    raise NetrunError(f"cannot read this member ({e})", mwhere) from None
                nbytes = shape_bytes(shape, dtype.itemsize)
                check_declared(nbytes, describe(shape, dtype), mwhere, lim)
                check_present(nbytes, info.file_size - offset, describe(shape, dtype), mwhere)
                total += nbytes
                out[key] = (shape, dtype)
            check_declared(total, f"its {len(out)} arrays", where, lim)
    return out


# -- images -------------------------------------------------------------------------------------
def image_pixel_limit(limit=None, input_hw=None):
    """The most pixels an image may have: no more than Pillow's decompression-bomb
    limit (89.5 Mpx, or Image.MAX_IMAGE_PIXELS when the user set it) or
    IMAGE_INPUT_FACTOR times the input it is resized to, whichever is larger, and its
    decoding (IMAGE_PIXEL_COST bytes a pixel) within the memory limit."""
    return _pixel_limit(limit, input_hw)[0]


def _pixel_limit(limit, input_hw):
    lim = file_limit(limit)
    by_memory = lim // IMAGE_PIXEL_COST
    try:
        from PIL import Image
        base = Image.MAX_IMAGE_PIXELS
    except ImportError:                     # pragma: no cover - Pillow is imported before
        base = PILLOW_DEFAULT_PIXELS
    memory_reason = (f"decoding takes {IMAGE_PIXEL_COST} bytes a pixel, within the memory "
                     f"limit of {human(lim)} (--max-memory)")
    if base is None:                        # the user turned Pillow's check off
        return by_memory, memory_reason
    reason = "Pillow's decompression-bomb limit"
    if input_hw and IMAGE_INPUT_FACTOR * int(input_hw[0]) * int(input_hw[1]) > base:
        base = IMAGE_INPUT_FACTOR * int(input_hw[0]) * int(input_hw[1])
        reason = f"{IMAGE_INPUT_FACTOR} times the {input_hw[0]}x{input_hw[1]} input"
    if by_memory < base:
        return by_memory, memory_reason
    return int(base), reason


def check_image_size(width, height, where, limit=None, input_hw=None):
    """Refuse an image whose header declares more pixels than :func:`image_pixel_limit`."""
    most, reason = _pixel_limit(limit, input_hw)
    if width * height > most:
        raise NetrunError(f"declares {width}x{height} pixels ({width * height / 1e6:.1f} Mpx), "
                          f"more than netrun decodes ({most / 1e6:.1f} Mpx: {reason}); "
                          "shrink it first", where)


# -- binary protobuf files ----------------------------------------------------------------------
# upb's cost of a parsed message: a header and a slot per field (an empty LayerParameter
# takes some 530 bytes, an empty BlobProto 85); repeated fields grow by doubling in an arena
MESSAGE_BASE_COST = 64
MESSAGE_FIELD_COST = 8
REPEATED_ELEMENT_COST = 16          # an unpacked scalar, or a packed varint's byte
STRING_COST = 32                    # a string or bytes element, beyond its bytes
SCAN_STEPS = 500_000                # fields walked (about 1 s; a real caffemodel has a few
                                    # thousand) before the bound below
FALLBACK_FACTOR = 200               # the worst case per byte: 3-byte empty LayerParameters

_KINDS = {}                         # descriptor -> (message cost, {number: (kind, sub, repeated)})


def _kinds(desc):
    got = _KINDS.get(desc)
    if got is None:
        from google.protobuf.descriptor import FieldDescriptor as FD
        from ..proto import is_repeated
        fixed = {FD.TYPE_FLOAT, FD.TYPE_DOUBLE, FD.TYPE_FIXED32, FD.TYPE_FIXED64,
                 FD.TYPE_SFIXED32, FD.TYPE_SFIXED64}
        fields = {}
        for fd in desc.fields:
            if fd.type == FD.TYPE_MESSAGE:
                kind = "message"
            elif fd.type in (FD.TYPE_STRING, FD.TYPE_BYTES) or fd.type in fixed:
                kind = "bytes"
            else:
                kind = "varint"
            fields[fd.number] = (kind, fd.message_type if kind == "message" else None,
                                 is_repeated(fd))
        got = _KINDS[desc] = (MESSAGE_BASE_COST + MESSAGE_FIELD_COST * len(desc.fields), fields)
    return got


def _varint(raw, pos, end):
    """(value, position after it) of the protobuf varint at ``pos``; (None, pos) when it
    runs past ``end`` or beyond 64 bits."""
    value = shift = 0
    while pos < end and shift <= 63:
        b = raw[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7
    return None, pos


def protobuf_cost(raw, descriptor, stop_above=None):
    """An upper estimate of the bytes that parsing ``raw`` as ``descriptor`` takes,
    from a walk of its wire format (tags and lengths only: packed data is skipped
    whole).  Real caffemodels cost about their size (packed floats); forged ones of
    millions of empty messages, strings or one-byte varints cost 10-200 times it.
    Malformed data ends the walk (the parser reports it).  Past SCAN_STEPS fields
    the estimate is FALLBACK_FACTOR times the size; past ``stop_above`` the walk stops."""
    n = len(raw)
    cost = 0
    steps = 0
    stack = [(0, n, descriptor)]
    while stack:
        pos, end, desc = stack.pop()
        base, fields = _kinds(desc)
        cost += base
        while pos < end:
            steps += 1
            if steps > SCAN_STEPS:
                return max(cost, FALLBACK_FACTOR * n)
            if stop_above is not None and cost > stop_above:
                return cost
            tag, pos = _varint(raw, pos, end)           # (one byte for caffe.proto)
            if tag is None:
                return cost
            wire = tag & 7
            kind, sub, repeated = fields.get(tag >> 3, (None, None, False))
            if wire == 2:
                length, pos = _varint(raw, pos, end)
                if length is None or pos + length > end:
                    return cost
                if kind == "message":
                    if length:
                        stack.append((pos, pos + length, sub))
                    else:
                        cost += _kinds(sub)[0]
                elif kind == "varint":                  # packed varints: a byte each at least
                    cost += REPEATED_ELEMENT_COST * length
                else:                                   # strings, packed floats, unknown
                    cost += length + STRING_COST
                pos += length
                continue
            if wire == 0:
                while pos < end and raw[pos] >= 0x80:
                    pos += 1
                pos += 1
            elif wire == 1 or wire == 5:
                pos += 8 if wire == 1 else 4
            else:                                       # groups: none in caffe.proto
                return cost
            if repeated:
                cost += REPEATED_ELEMENT_COST
    return cost
