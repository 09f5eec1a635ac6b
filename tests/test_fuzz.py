"""Fuzzing: mutated real prototxts and caffemodels never crash netrun.

Every outcome must be a success or a NetrunError -- never another exception,
never a hang (each example runs under a wall-clock alarm, and under a small
memory limit so that absurd shapes are refused from their figures at once).

Seeds are the bundled models, a few corpus nets, and the single-layer
conformance nets (every layer family).  Mutations work on lines (delete,
duplicate, swap, truncate, renumber, rename) and on fields: edge values
(0, -1, huge, fractions, inf/nan) for the numeric and enum fields of the
``*_param`` blocks, new fields and blocks inserted, enum values swapped, layer
types swapped (for types taking the same blob counts), layers made in-place,
input dims changed; ``--set`` edits; inputs filled with NaN, huge or integer
values, nets run in float64 or inference mode and reshaped to another batch.
Caffemodels get byte-level damage and structured edits (blob shapes, value
counts, blob counts, legacy dims, V1 layers) and are loaded into other nets.
The bounded run here (400 examples per test, the same ones every time) is part
of the test suite; a long one with new examples:

    NETRUN_FUZZ_EXAMPLES=25000 NETRUN_FUZZ_RANDOM=1 python -m pytest tests/test_fuzz.py -q

``NETRUN_FUZZ_RANDOM=1`` draws new examples on every run (the default replays
the same ones); ``NETRUN_FUZZ_TIMEOUT`` is the per-example alarm in seconds.
"""
import os
import re
import signal
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from google.protobuf.descriptor import FieldDescriptor as FD  # noqa: E402

from netrun import Net  # noqa: E402
from netrun.errors import NetrunError  # noqa: E402
from netrun.io.prototxt import parse_text  # noqa: E402
from netrun.layers import layer_class, registered_types  # noqa: E402
from netrun.proto import caffe_pb2, is_repeated  # noqa: E402

# fuzzed values overflow, divide by zero and cast NaN: numpy's warnings are expected
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
CASES = ROOT / "tests" / "data" / "conformance"
if not CASES.is_dir():
    CASES = SHARED / "conformance" / "cases"
EXAMPLES = int(os.environ.get("NETRUN_FUZZ_EXAMPLES", "400"))
RANDOM = os.environ.get("NETRUN_FUZZ_RANDOM", "") not in ("", "0")
TIMEOUT = float(os.environ.get("NETRUN_FUZZ_TIMEOUT", "20"))
LIMIT = 32 << 20          # bytes a fuzzed net may use

# small real nets: the bundled models and the corpus ones that run fast
SEEDS = sorted(ROOT.glob("models/*.prototxt"))
for rel in ["corpus/bvlc/lenet.prototxt", "corpus/bvlc_v1/lenet.prototxt",
            "corpus/bvlc_v0/lenet.prototxt", "corpus/bvlc/cifar10_quick.prototxt",
            "corpus/bvlc/mnist_autoencoder.prototxt"]:
    if (SHARED / rel).exists():
        SEEDS.append(SHARED / rel)
# every single-layer / graph-rule conformance net (all layer families; all are tiny)
CASE_SEEDS = sorted(p for p in CASES.glob("*/net.prototxt") if not p.parent.name.startswith("net_"))
SEEDS += CASE_SEEDS
TEXTS = [p.read_text() for p in SEEDS]
CASE_TEXTS = [p.read_text() for p in CASE_SEEDS] or TEXTS

fuzz_settings = settings(max_examples=EXAMPLES, deadline=None if RANDOM else 10000,
                         derandomize=not RANDOM, suppress_health_check=list(HealthCheck),
                         database=None, print_blob=True)


# -- the schema, for field-aware mutations ---------------------------------------------------------
LAYER_DESC = caffe_pb2.LayerParameter.DESCRIPTOR
PARAM_BLOCKS = {f.name: f.message_type for f in LAYER_DESC.fields
                if f.name.endswith("_param") and f.type == FD.TYPE_MESSAGE}
TYPES = registered_types()
# the *_param block(s) a layer type reads, where the name does not say it
TYPE_PARAMS = {"Deconvolution": ["convolution_param"], "Im2col": ["convolution_param"],
               "LSTM": ["recurrent_param"], "RNN": ["recurrent_param"],
               "SoftmaxWithLoss": ["softmax_param", "loss_param"],
               "SigmoidCrossEntropyLoss": ["loss_param"], "EuclideanLoss": ["loss_param"],
               "MultinomialLogisticLoss": ["loss_param"], "HingeLoss": ["hinge_loss_param", "loss_param"],
               "InfogainLoss": ["infogain_loss_param", "loss_param"],
               "ContrastiveLoss": ["contrastive_loss_param", "loss_param"],
               "Accuracy": ["accuracy_param"], "Data": ["data_param", "transform_param"]}
_SQUASH = {name[:-len("_param")].replace("_", ""): name for name in PARAM_BLOCKS}


def params_of(type_name):
    if type_name in TYPE_PARAMS:
        return TYPE_PARAMS[type_name]
    key = type_name.lower()
    return [_SQUASH[key]] if key in _SQUASH else []


def _fields_by_name():
    """field name -> field descriptors of that name anywhere in the layer/net schema."""
    out = {}
    seen = set()

    def walk(desc):
        if desc.full_name in seen:
            return
        seen.add(desc.full_name)
        for f in desc.fields:
            out.setdefault(f.name, []).append(f)
            if f.type == FD.TYPE_MESSAGE:
                walk(f.message_type)
    walk(caffe_pb2.NetParameter.DESCRIPTOR)
    return out


FIELDS = _fields_by_name()
ENUM_NAMES = sorted({v.name for fs in FIELDS.values() for f in fs if f.type == FD.TYPE_ENUM
                     for v in f.enum_type.values})
INT_EDGES = ["0", "1", "-1", "2", "3", "5", "7", "-2", "100", "1000", "65536", "2147483647",
             "-2147483648", "4294967295", "1000000000"]
FLOAT_EDGES = ["0", "1", "-1", "0.5", "-0.5", "2.5", "1e-30", "1e-8", "1e30", "-1e30", "3e38",
               "inf", "-inf", "nan", "7"]
NAMES = ['"data"', '"x"', '"y"', '"loss"', '""', '"label"', '"ip1"', '"conv1"', '"L"', '"t"',
         '"ReLU"', '"Pooling"', '"Concat"', '"cont"']
FILLERS = ['"constant"', '"gaussian"', '"uniform"', '"xavier"', '"msra"', '"positive_unitball"',
           '"bilinear"', '"bogus"']
_INT_TYPES = {FD.TYPE_INT32, FD.TYPE_INT64, FD.TYPE_UINT32, FD.TYPE_UINT64, FD.TYPE_SINT32,
              FD.TYPE_SINT64, FD.TYPE_FIXED32, FD.TYPE_FIXED64, FD.TYPE_SFIXED32, FD.TYPE_SFIXED64}


def value_for(draw, field):
    """An edge-value literal (prototxt syntax) for a scalar field."""
    t = field.type if field is not None else None
    if t in _INT_TYPES:
        return draw(st.sampled_from(INT_EDGES))
    if t in (FD.TYPE_FLOAT, FD.TYPE_DOUBLE):
        return draw(st.sampled_from(FLOAT_EDGES + INT_EDGES[:6]))
    if t == FD.TYPE_BOOL:
        return draw(st.sampled_from(["true", "false"]))
    if t == FD.TYPE_ENUM:
        names = [v.name for v in field.enum_type.values]
        return draw(st.sampled_from(names + [str(len(names)), "-1"]))
    if t == FD.TYPE_STRING:
        return draw(st.sampled_from(FILLERS if field.name == "type" else NAMES))
    return draw(st.sampled_from(INT_EDGES + FLOAT_EDGES + ENUM_NAMES[:5]))


def field_text(draw, message, depth=0):
    """``name: value`` (or ``name { ... }``) for a random field of ``message``."""
    fields = [f for f in message.fields]
    f = draw(st.sampled_from(fields))
    if f.type == FD.TYPE_MESSAGE:
        if depth >= 2 or not f.message_type.fields:
            return f"{f.name} {{ }}"
        inner = " ".join(field_text(draw, f.message_type, depth + 1)
                         for _ in range(draw(st.integers(1, 3))))
        return f"{f.name} {{ {inner} }}"
    return f"{f.name}: {value_for(draw, f)}"


# -- running one example ---------------------------------------------------------------------------
class Hang(Exception):
    """An example ran longer than NETRUN_FUZZ_TIMEOUT seconds (not a NetrunError: a failure)."""


@contextmanager
def alarm(seconds=TIMEOUT):
    if not hasattr(signal, "SIGALRM"):         # no alarms on this platform
        yield
        return

    def ring(signum, frame):
        raise Hang(f"example still running after {seconds} s")
    old = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


INPUT_FILLS = [0.5, 0.0, 1.0, 2.0, -1.0, 3.7, 1e6, float("nan"), "normal", "ints"]


def fill_inputs(net, how, rng):
    for name in net.inputs:
        blob = net.blobs[name]
        if how == "normal":
            blob.data[...] = rng.standard_normal(blob.shape)
        elif how == "ints":
            blob.data[...] = rng.integers(-1, 6, blob.shape)
        else:
            blob.data[...] = how


def run_text(text, tmp, phase="train", fill=0.5, edits=(), reshape_to=None, dtype=np.float32,
             inference=False):
    """Build and run a (mutated) prototxt: success or NetrunError only."""
    path = tmp / "fuzz.prototxt"
    path.write_text(text)
    rng = np.random.default_rng(0)
    with alarm():
        try:
            net = Net(str(path), phase=phase, warn=lambda m: None, max_memory=LIMIT, edits=edits,
                      dtype=dtype, inference=inference)
            fill_inputs(net, fill, rng)
            net.forward()
            if inference:
                net.forward()                  # blobs were freed: a second pass reallocates
                return
            net.backward()
            if reshape_to is not None and net.inputs:
                # a second pass with a different batch size: every layer reshapes again
                for name in net.inputs:
                    blob = net.blobs[name]
                    if blob.num_axes:
                        shape = (reshape_to,) + blob.shape[1:]
                        if len(shape) == 4 and reshape_to == 3:      # other H, W as well
                            shape = shape[:2] + (shape[2] + 1, max(1, shape[3] - 1))
                        blob.reshape(shape)
                budget_check(net)
                fill_inputs(net, fill, rng)
                net.forward()
                net.backward()
        except NetrunError:
            pass


def budget_check(net):
    """Inputs reshaped by hand are not charged by the net: keep them within the limit."""
    total = sum(b.nbytes for b in net.blobs.values())
    if total > LIMIT:
        raise NetrunError("reshaped inputs too big for the fuzz limit")


# -- line mutations (any seed) ---------------------------------------------------------------------
@st.composite
def mutated_prototxt(draw):
    lines = draw(st.sampled_from(TEXTS)).splitlines()
    for _ in range(draw(st.integers(1, 4))):
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["delete", "duplicate", "swap", "number", "name", "truncate"]))
        if op == "delete":
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "number":
            nums = list(re.finditer(r"-?\d+(\.\d+)?(e-?\d+)?", lines[i]))
            if nums:
                m = draw(st.sampled_from(nums))
                new = str(draw(st.sampled_from([0, 1, -1, 2, 3, 7, 64, 1000, 10 ** 9, 0.5, -0.5])))
                lines[i] = lines[i][:m.start()] + new + lines[i][m.end():]
        elif op == "name":
            names = list(re.finditer(r'"([^"]*)"', lines[i]))
            if names:
                m = draw(st.sampled_from(names))
                new = draw(st.sampled_from(NAMES))
                lines[i] = lines[i][:m.start()] + new + lines[i][m.end():]
        else:
            cut = draw(st.integers(0, len(lines[i])))
            lines = lines[:i] + [lines[i][:cut]]
    return "\n".join(lines) + "\n"


@fuzz_settings
@given(text=mutated_prototxt(), phase=st.sampled_from(["train", "test"]))
def test_mutated_prototxts(tmp_path_factory, text, phase):
    run_text(text, tmp_path_factory.mktemp("fz"), phase=phase)


# -- field mutations (conformance single-layer nets) --------------------------------------------------
_VALUE = re.compile(r"\b(\w+)\s*:\s*(\"[^\"]*\"|-?[\w.+-]+)")
_BLOCK = re.compile(r"\b(\w+_param)\s*\{")
_TYPE = re.compile(r'\btype\s*:\s*"(\w+)"')


def _splice(text, start, end, new):
    return text[:start] + new + text[end:]


def _input_spans(text):
    """Character spans of the lines that declare Input layers (mutated less often)."""
    spans, pos = [], 0
    for line in text.splitlines(True):
        if 'type: "Input"' in line:
            spans.append((pos, pos + len(line)))
        pos += len(line)
    return spans


def _compatible_types(text, start):
    """Layer types that accept the bottom/top counts of the layer around ``start``."""
    line_start = text.rfind("\n", 0, start) + 1
    line_end = text.find("\n", start)
    line = text[line_start:line_end if line_end >= 0 else len(text)]
    nb, nt = line.count("bottom:"), line.count("top:")
    out = []
    for t in TYPES:
        cls = layer_class(t)

        def fits(n, exact, lo, hi):
            return ((exact is None or exact < 0 or n == exact) and (lo is None or n >= lo)
                    and (hi is None or n <= hi))
        if fits(nb, cls.exact_bottoms, cls.min_bottoms, cls.max_bottoms) and (
                cls.auto_top_blobs or fits(nt, cls.exact_tops, cls.min_tops, cls.max_tops)):
            out.append(t)
    return out or TYPES


@st.composite
def field_mutation(draw, text):
    op = draw(st.sampled_from(["value", "value", "value", "insert", "insert", "insert", "block",
                               "block", "type", "enum", "inplace", "dims"]))
    # the Input layers' shapes are mutated only now and then: most of the time the
    # mutation goes to the layers under test
    inputs = [] if draw(st.integers(0, 7)) == 0 else _input_spans(text)

    def free(m):
        return not any(a <= m.start() < b for a, b in inputs)
    if op == "value":                        # an existing field gets an edge value
        ms = [m for m in _VALUE.finditer(text) if m.group(1) not in ("name", "top", "bottom", "type")
              and free(m)]
        if ms:
            m = draw(st.sampled_from(ms))
            fs = FIELDS.get(m.group(1)) or [None]
            new = value_for(draw, draw(st.sampled_from(fs)))
            return _splice(text, m.start(2), m.end(2), new)
    elif op == "insert":                     # a new field inside an existing *_param block
        ms = [m for m in _BLOCK.finditer(text) if m.group(1) in PARAM_BLOCKS and free(m)]
        if ms:
            m = draw(st.sampled_from(ms))
            new = " " + field_text(draw, PARAM_BLOCKS[m.group(1)]) + " "
            return _splice(text, m.end(), m.end(), new)
    elif op == "block":                      # a *_param block the layer type reads (or any)
        ms = [m for m in _TYPE.finditer(text) if m.group(1) in TYPES and free(m)]
        if ms:
            m = draw(st.sampled_from(ms))
            names = params_of(m.group(1)) or sorted(PARAM_BLOCKS)
            if draw(st.integers(0, 4)) == 0:
                names = sorted(PARAM_BLOCKS)
            block = draw(st.sampled_from(names))
            inner = " ".join(field_text(draw, PARAM_BLOCKS[block]) for _ in range(draw(st.integers(1, 3))))
            return _splice(text, m.end(), m.end(), f" {block} {{ {inner} }}")
    elif op == "type":                       # a layer becomes another type (same blob counts)
        ms = [m for m in _TYPE.finditer(text) if m.group(1) != "Input" and m.group(1) in TYPES]
        if ms:
            m = draw(st.sampled_from(ms))
            return _splice(text, m.start(1), m.end(1),
                           draw(st.sampled_from(_compatible_types(text, m.start()))))
    elif op == "dims":                       # an input gets other (valid, small) dims
        ms = list(re.finditer(r"\bdim\s*:\s*(\d+)", text))
        if ms:
            for m in reversed(draw(st.lists(st.sampled_from(ms), min_size=1, max_size=3,
                                            unique_by=lambda m: m.start()))):
                text = _splice(text, m.start(1), m.end(1), str(draw(st.integers(1, 9))))
            return text
    elif op == "inplace":                    # a layer writes its top over its bottom
        ms = list(re.finditer(r'bottom\s*:\s*"([^"]*)"[^\n]*?top\s*:\s*"([^"]*)"', text))
        if ms:
            m = draw(st.sampled_from(ms))
            return _splice(text, m.start(2), m.end(2), m.group(1))
    else:                                    # an enum value becomes another (of any enum)
        ms = [m for m in _VALUE.finditer(text) if re.fullmatch(r"[A-Z][A-Z_0-9]*", m.group(2))
              and free(m)]
        if ms:
            m = draw(st.sampled_from(ms))
            return _splice(text, m.start(2), m.end(2), draw(st.sampled_from(ENUM_NAMES)))
    return text


@st.composite
def mutated_fields(draw):
    text = draw(st.sampled_from(CASE_TEXTS if draw(st.integers(0, 5)) else TEXTS))
    for _ in range(draw(st.integers(1, 5))):
        text = draw(field_mutation(text))
    return text


@fuzz_settings
@given(text=mutated_fields(), phase=st.sampled_from(["train", "test"]),
       fill=st.sampled_from(INPUT_FILLS), reshape_to=st.sampled_from([None, None, 1, 3]),
       dtype=st.sampled_from([np.float32, np.float32, np.float64]),
       inference=st.sampled_from([False, False, False, True]))
def test_mutated_fields(tmp_path_factory, text, phase, fill, reshape_to, dtype, inference):
    run_text(text, tmp_path_factory.mktemp("ff"), phase=phase, fill=fill, reshape_to=reshape_to,
             dtype=dtype, inference=inference)


# -- --set edits ----------------------------------------------------------------------------------------
@st.composite
def set_edits(draw):
    text = draw(st.sampled_from(CASE_TEXTS))
    layers = re.findall(r'layer\s*\{\s*name\s*:\s*"([^"]*)"\s*type\s*:\s*"(\w+)"', text)
    edits = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["param", "param", "param", "layer", "net", "bogus"]))
        if kind == "bogus" or not layers:
            path = draw(st.sampled_from(["nolayer.relu_param.negative_slope", "L.nope",
                                         "L.convolution_param", "net.layer[9999].name",
                                         "L.param[5].lr_mult", "net.input_dim[3]", "L..x", "L"]))
            value = draw(st.sampled_from(INT_EDGES + FLOAT_EDGES + ["x", "", "1,2,3"]))
        elif kind == "net":
            path, value = draw(st.sampled_from([("net.force_backward", "true"),
                                                ("net.force_backward", "maybe"),
                                                ("net.state.level", "-1"),
                                                ("net.state.phase", "TRAIN"),
                                                ("net.state.stage", "a,b")]))
        else:
            name, typ = draw(st.sampled_from(layers))
            if kind == "layer":
                field = draw(st.sampled_from([f for f in LAYER_DESC.fields if f.type != FD.TYPE_MESSAGE]))
                path = f"{name}.{field.name}"
            else:
                block = draw(st.sampled_from(params_of(typ) or sorted(PARAM_BLOCKS)))
                msg = PARAM_BLOCKS[block]
                field = draw(st.sampled_from(list(msg.fields)))
                path = f"{name}.{block}.{field.name}"
                if field.type == FD.TYPE_MESSAGE and field.message_type.fields:
                    sub = draw(st.sampled_from(list(field.message_type.fields)))
                    path += f".{sub.name}"
                    field = sub
            value = value_for(draw, field).strip('"')
            if is_repeated(field) and draw(st.booleans()):
                value = ",".join(value_for(draw, field).strip('"') for _ in range(draw(st.integers(1, 4))))
                if draw(st.booleans()):
                    path += f"[{draw(st.sampled_from([0, 1, 2, 9]))}]"
        edits.append(f"{path}={value}")
    return text, edits


@fuzz_settings
@given(case=set_edits(), fill=st.sampled_from(INPUT_FILLS))
def test_set_edits(tmp_path_factory, case, fill):
    text, edits = case
    run_text(text, tmp_path_factory.mktemp("fs"), phase="train", fill=fill, edits=edits)


# -- caffemodels ------------------------------------------------------------------------------------
WEIGHT_NET = ROOT / "models" / "mlp_loss.prototxt"


def _weights_bytes():
    net = Net(str(WEIGHT_NET), warn=lambda m: None)
    from netrun.io.caffemodel import net_to_proto
    return net_to_proto(net).SerializeToString()


# (net, weights) pairs: our own mlp and conformance cases with their Caffe-written weights
WEIGHT_PAIRS = [(WEIGHT_NET, _weights_bytes())]
for _case in ["conv", "innerproduct", "batchnorm_train", "lstm", "prelu", "prelu_shared",
              "scale", "embed", "deconv_group", "rnn", "innerproduct_transpose", "bias",
              "graph_shared_params"]:
    _w = CASES / _case / "weights.caffemodel"
    if _w.exists():
        WEIGHT_PAIRS.append((CASES / _case / "net.prototxt", _w.read_bytes()))


def _structured_edit(draw, data):
    """Decode the NetParameter, damage one blob or layer, encode again."""
    param = caffe_pb2.NetParameter()
    param.ParseFromString(data)
    layers = [lp for lp in param.layer if len(lp.blobs)]
    if not layers:
        return data
    lp = draw(st.sampled_from(layers))
    bp = lp.blobs[draw(st.integers(0, len(lp.blobs) - 1))]
    op = draw(st.sampled_from(["dim", "add_dim", "drop_dim", "no_shape", "legacy", "data",
                               "double", "drop_blob", "add_blob", "rename", "v1"]))
    if op == "dim" and len(bp.shape.dim):
        i = draw(st.integers(0, len(bp.shape.dim) - 1))
        bp.shape.dim[i] = draw(st.sampled_from([0, 1, 2, 3, 7, 1 << 20, 1 << 40, -1]))
    elif op == "add_dim":
        bp.shape.dim.append(draw(st.sampled_from([1, 2, 0])))
    elif op == "drop_dim" and len(bp.shape.dim):
        del bp.shape.dim[-1]
    elif op == "no_shape":
        bp.ClearField("shape")
    elif op == "legacy":
        bp.ClearField("shape")
        bp.num, bp.channels = draw(st.sampled_from([(1, 1), (0, 1), (2, 3), (-1, 1)]))
        bp.height, bp.width = 1, draw(st.sampled_from([len(bp.data), 1, 5]))
    elif op == "data":
        n = len(bp.data)
        del bp.data[draw(st.integers(0, n)):]
        bp.data.extend([float("nan")] * draw(st.integers(0, 2)))
    elif op == "double":
        vals = list(bp.data)
        bp.ClearField("data")
        bp.double_data.extend(vals[:draw(st.integers(0, len(vals)))])
    elif op == "drop_blob":
        del lp.blobs[-1]
    elif op == "add_blob":
        lp.blobs.add().CopyFrom(bp)
    elif op == "rename":
        lp.name = draw(st.sampled_from([l.name for l in param.layer] + ["nope", ""]))
    else:                                           # legacy V1 layers: upgraded on load
        v1 = param.layers.add()
        v1.name = lp.name
        v1.type = draw(st.sampled_from([4, 14, 39, 5, 0]))   # CONVOLUTION, INNER_PRODUCT, ...
        v1.blobs.extend(lp.blobs)
        if draw(st.booleans()):
            param.ClearField("layer")
    return param.SerializeToString()


@st.composite
def mutated_caffemodel(draw):
    net_path, data = draw(st.sampled_from(WEIGHT_PAIRS))
    if draw(st.integers(0, 4)) == 0:                # another net's weights
        net_path = draw(st.sampled_from(WEIGHT_PAIRS))[0]
    if draw(st.booleans()):
        return net_path, _structured_edit(draw, data)
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["truncate", "flip", "length", "insert"]))
        i = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "truncate":
            data = data[:i]
        elif op == "flip" and data:
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "length" and data:
            data[i] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF]))
        else:
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
    return net_path, bytes(data)


@fuzz_settings
@given(pair=mutated_caffemodel())
def test_mutated_caffemodels(tmp_path_factory, pair):
    net_path, blob = pair
    path = tmp_path_factory.mktemp("fw") / "w.caffemodel"
    path.write_bytes(blob)
    with alarm():
        net = Net(str(net_path), phase="train", warn=lambda m: None, max_memory=LIMIT)
        try:
            net.copy_from(str(path))
            net.forward()
            net.backward()
        except NetrunError:
            pass


def test_fuzz_seeds_present():
    assert len(SEEDS) >= 3
    assert len(CASE_SEEDS) >= 30, CASES
    for text in TEXTS:
        parse_text(text, caffe_pb2.NetParameter())


@pytest.mark.skipif(not hasattr(signal, "SIGALRM"), reason="no SIGALRM")
def test_alarm_stops_a_hang():
    import time
    with pytest.raises(Hang):
        with alarm(0.2):
            time.sleep(5)
