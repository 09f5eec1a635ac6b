"""``--set PATH=VALUE``: edit a loaded net before it is built.

PATH is a layer name followed by a field path (``relu1.relu_param.negative_slope``)
or ``net.`` followed by a NetParameter field (``net.force_backward``).  A
repeated field takes an index (``convolution_param.kernel_size[0]=3``) or, without
one, a comma-separated list that replaces it.  Every layer with that name is
edited (train and test variants alike).
"""
import difflib
import re

from google.protobuf.descriptor import FieldDescriptor as FD

from .errors import NetrunError
from .proto import is_repeated

_INDEX = re.compile(r"^(\w+)(?:\[(\d+)\])?$")
_INT_RANGE = {}
for _t in (FD.TYPE_INT32, FD.TYPE_SINT32, FD.TYPE_SFIXED32):
    _INT_RANGE[_t] = (-(1 << 31), (1 << 31) - 1)
for _t in (FD.TYPE_INT64, FD.TYPE_SINT64, FD.TYPE_SFIXED64):
    _INT_RANGE[_t] = (-(1 << 63), (1 << 63) - 1)
for _t in (FD.TYPE_UINT32, FD.TYPE_FIXED32):
    _INT_RANGE[_t] = (0, (1 << 32) - 1)
for _t in (FD.TYPE_UINT64, FD.TYPE_FIXED64):
    _INT_RANGE[_t] = (0, (1 << 64) - 1)
_INTS = {FD.TYPE_INT32, FD.TYPE_INT64, FD.TYPE_UINT32, FD.TYPE_UINT64, FD.TYPE_SINT32,
         FD.TYPE_SINT64, FD.TYPE_FIXED32, FD.TYPE_FIXED64, FD.TYPE_SFIXED32, FD.TYPE_SFIXED64}


def parse_edit(text):
    if "=" not in text:
        raise NetrunError(f"--set {text!r}: expected PATH=VALUE, e.g. relu1.relu_param.negative_slope=0.1")
    path, value = text.split("=", 1)
    return path.strip(), value.strip()


def _convert(field, value, where):
    t = field.type
    try:
        if t == FD.TYPE_BOOL:
            low = value.lower()
            if low in ("true", "1", "yes", "on"):
                return True
            if low in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if t in _INTS:
            v = int(value, 0)
            lo, hi = _INT_RANGE[t]
            if not lo <= v <= hi:
                raise NetrunError(f"{where}: {value} is out of range for {field.name} "
                                  f"({lo} to {hi})")
            return v
        if t in (FD.TYPE_FLOAT, FD.TYPE_DOUBLE):
            return float(value)
        if t == FD.TYPE_STRING:
            return value
        if t == FD.TYPE_ENUM:
            ev = field.enum_type.values_by_name.get(value.upper()) or field.enum_type.values_by_name.get(value)
            if ev is None:
                names = ", ".join(v.name for v in field.enum_type.values)
                raise NetrunError(f"{where}: {value!r} is not one of {names}")
            return ev.number
    except ValueError:
        kind = {FD.TYPE_BOOL: "true or false", FD.TYPE_FLOAT: "a number",
                FD.TYPE_DOUBLE: "a number"}.get(t, "an integer" if t in _INTS else "a value")
        raise NetrunError(f"{where}: {value!r} is not {kind}") from None
    raise NetrunError(f"{where}: names a message, not a value field; name one of its fields")


def _set_path(msg, parts, value, where):
    for n, part in enumerate(parts):
        m = _INDEX.match(part)
        fields = msg.DESCRIPTOR.fields_by_name
        if not m or m.group(1) not in fields:
            close = difflib.get_close_matches(part, list(fields), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise NetrunError(f"{where}: {msg.DESCRIPTOR.name} has no field {part!r}{hint}")
        field = fields[m.group(1)]
        index = m.group(2)
        last = n == len(parts) - 1
        repeated = is_repeated(field)
        if field.type == FD.TYPE_MESSAGE:
            if last:
                raise NetrunError(f"{where}: {field.name} is a message; name one of its fields")
            if repeated:
                container = getattr(msg, field.name)
                i = int(index or 0)
                if i > len(container):
                    raise NetrunError(f"{where}: index {i} is past the end of {field.name} "
                                      f"({len(container)} entries; index {len(container)} adds one)")
                if i == len(container):
                    container.add()
                msg = container[i]
            else:
                msg = getattr(msg, field.name)
            continue
        if not last:
            raise NetrunError(f"{where}: {field.name} is a value, it has no field {parts[n + 1]!r}")
        if repeated:
            container = getattr(msg, field.name)
            if index is None:
                vals = [_convert(field, v.strip(), where) for v in value.split(",") if v.strip()]
                del container[:]
                container.extend(vals)
            else:
                i = int(index)
                v = _convert(field, value, where)
                if i < len(container):
                    container[i] = v
                elif i == len(container):
                    container.append(v)
                else:
                    raise NetrunError(f"{where}: index {i} is past the end of {field.name} "
                                      f"({len(container)} values)")
        else:
            setattr(msg, field.name, _convert(field, value, where))


def apply_edits(param, edits, source=None):
    """Apply ``--set`` edits (strings ``PATH=VALUE`` or (path, value) pairs) in place."""
    names = [lp.name for lp in param.layer]
    for edit in edits:
        path, value = parse_edit(edit) if isinstance(edit, str) else edit
        where = f"--set {path}={value}"
        if path.startswith("net."):
            _set_path(param, path[4:].split("."), value, where)
            continue
        # longest layer name that prefixes the path (layer names may contain dots)
        best = None
        for name in set(names):
            if path.startswith(name + ".") and (best is None or len(name) > len(best)):
                best = name
        if best is None:
            head = path.split(".")[0]
            close = difflib.get_close_matches(head, names, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise NetrunError(f'{where}: no layer named "{head}"{hint} '
                              "(use net.FIELD for net-level fields)")
        parts = path[len(best) + 1:].split(".")
        for lp in param.layer:
            if lp.name == best:
                _set_path(lp, parts, value, where)
