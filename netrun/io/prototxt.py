"""Reading network definitions: text prototxt -> caffe_pb2.NetParameter.

Parse errors come back as ``file:line:col: message``; legacy V0/V1 files are
upgraded as Caffe upgrades them on load.
"""
import os
import re

from google.protobuf import text_format
from google.protobuf.message import DecodeError

from ..errors import NetrunError, reading
from ..proto import caffe_pb2

_ERR_POS = re.compile(r"^\s*(\d+):(\d+)\s*:\s*")


# bytes a parsed text protobuf may hold per byte of text (an empty ``layer {}`` is
# 9 bytes of text and some 500 bytes parsed)
TEXT_PARSE_FACTOR = 64


def read_text(path, limit=None):
    """A prototxt's text; its size (times what parsing it may take) is checked
    against the memory ``limit`` before it is read."""
    from .limits import check_declared
    with reading(str(path)), open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        check_declared(size * TEXT_PARSE_FACTOR, f"a {size}-byte text file", str(path), limit)
        raw = f.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise NetrunError("not a text file (invalid UTF-8; a binary .caffemodel given "
                          "where a prototxt was expected?)", f"{path}:{line}") from None


def parse_text(text, message, path="<text>"):
    """Merge prototxt ``text`` into ``message``; errors name file:line:col."""
    try:
        text_format.Merge(text, message)
    except text_format.ParseError as e:
        msg = str(e)
        line, col = e.GetLine(), e.GetColumn()
        m = _ERR_POS.match(msg)
        if m:
            msg = msg[m.end():]
            line, col = int(m.group(1)), int(m.group(2))
        where = f"{path}:{line}:{col}" if line else str(path)
        if "has no field named" in msg:
            msg += " (not a field of BVLC Caffe's schema; is this net made for a Caffe fork?)"
        raise NetrunError(msg, where) from None
    return message


def layer_lines(text):
    """1-based line of every top-level ``layer``/``layers`` block, in file order."""
    lines = []
    depth = 0
    line = 1
    i, n = 0, len(text)
    pending = None                      # line of a top-level 'layer' word awaiting '{'
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
        elif c == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c:
                if text[j] == "\\":
                    j += 1
                elif text[j] == "\n":
                    line += 1
                j += 1
            i = j + 1
            continue
        elif c == "{":
            if depth == 0 and pending is not None:
                lines.append(pending)
            pending = None
            depth += 1
        elif c == "}":
            depth -= 1
        elif c.isalpha() or c == "_":
            j = i
            while j < n and (text[j].isalnum() or text[j] == "_"):
                j += 1
            word = text[i:j]
            if depth == 0:
                pending = line if word in ("layer", "layers") else None
            i = j
            continue
        elif c != ":" and not c.isspace():
            if depth == 0:
                pending = None
        i += 1
    return lines


class NetSource:
    """A parsed network definition plus where each layer came from."""

    def __init__(self, param, path=None, lines=None, shapeless_inputs=None):
        self.param = param
        self.path = path
        self.lines = lines or []
        # legacy ``input:`` names declared without a shape (the upgrade drops them, as
        # Caffe does; Net(input_shapes=...) turns them back into inputs): name -> line
        self.shapeless_inputs = dict(shapeless_inputs or {})

    def where(self, layer_index):
        if self.path is None:
            return None
        if 0 <= layer_index < len(self.lines):
            return f"{self.path}:{self.lines[layer_index]}"
        return str(self.path)


def read_net(path, warn=None):
    """Read a prototxt (or binary NetParameter) file into a V2 NetSource."""
    path = os.fspath(path)
    text = read_text(path)
    param = parse_text(text, caffe_pb2.NetParameter(), path)
    lines = layer_lines(text)
    original = param
    param = upgrade_if_needed(param, warn, path)
    if param is not original:
        lines = upgraded_lines(original, param, text, lines)
    if len(lines) != len(param.layer):
        lines = []
    line = input_header_line(text)
    return NetSource(param, path, lines, {n: line for n in shapeless_inputs(original)})


def shapeless_inputs(param):
    """The legacy ``input:`` names of a net that declares no input_shape/input_dim."""
    if len(param.input_shape) or len(param.input_dim):
        return []
    return list(param.input)


def upgraded_lines(original, upgraded, text, lines):
    """Layer lines after the upgrade: V0 ``padding`` layers are folded away, and the
    Input layer made from the ``input:`` header points at the header's first line."""
    if len(original.layers) and len(lines) == len(original.layers):
        lines = [ln for ln, l in zip(lines, original.layers)
                 if not (l.HasField("layer") and l.layer.type == "padding")]
    if (len(original.input) and len(upgraded.layer) == len(lines) + 1
            and upgraded.layer[0].type == "Input"):
        lines = [input_header_line(text) or 1] + list(lines)
    return lines


def input_header_line(text):
    """1-based line of the first top-level ``input:`` field (None if there is none)."""
    m = re.search(r"^[ \t]*input[ \t]*:", text, re.M)
    return text.count("\n", 0, m.start()) + 1 if m else None


def upgrade_if_needed(param, warn=None, path=None):
    try:
        from . import upgrade
    except ImportError:                 # pragma: no cover - during bootstrap
        return param
    if upgrade.needs_upgrade(param):
        note = (lambda m: warn(f"{path}: {m}")) if (warn and path) else (warn or (lambda m: None))
        try:
            param = upgrade.upgrade_net(param, warn=note)
        except NetrunError as e:
            raise e.located(path) if path else e
    return param


# bytes a parsed protobuf holds per byte of its file, beyond the file's own bytes, at
# least: packed floats take as much as on the wire (the wire walk of
# netrun.io.limits.protobuf_cost then estimates the rest, before parsing)
PROTO_PARSE_FACTOR = 1


def read_binary(path, message, limit=None):
    """Parse a binary protobuf file (caffemodel, binaryproto, solverstate).

    The file's size is checked against the memory ``limit`` (default: 80% of the
    available memory, see :mod:`netrun.io.limits`) before it is read: the bytes
    and the parsed message are both held; then the cost of parsing it, estimated
    from a walk of its wire format (forged files of millions of empty messages
    take 200 times their size), before it is parsed."""
    from .limits import check_declared, file_limit, protobuf_cost
    path = os.fspath(path)
    with reading(path), open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        check_declared(size * (1 + PROTO_PARSE_FACTOR),
                       f"a {size}-byte {message.DESCRIPTOR.name} file", path, limit)
        raw = f.read()
    lim = file_limit(limit)
    cost = protobuf_cost(raw, message.DESCRIPTOR, stop_above=lim)
    check_declared(len(raw) + cost, f"parsing its {len(raw)} bytes as a {message.DESCRIPTOR.name}",
                   path, lim)
    try:
        message.ParseFromString(raw)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise NetrunError(f"not a valid binary {message.DESCRIPTOR.name} "
                          f"(truncated or not a protobuf file: {e})", path) from None
    except MemoryError:
        raise NetrunError(f"out of memory parsing its {message.DESCRIPTOR.name}", path) from None
    return message
