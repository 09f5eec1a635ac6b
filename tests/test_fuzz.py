"""Fuzzing: mutated real prototxts and caffemodels never crash netrun.

Every outcome must be a success or a NetrunError -- never another exception,
never a hang.  The bounded run here is part of the test suite; a longer one:

    NETRUN_FUZZ_EXAMPLES=20000 python -m pytest tests/test_fuzz.py -q
"""
import os
import re
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from netrun import Net  # noqa: E402
from netrun.errors import NetrunError  # noqa: E402
from netrun.io.prototxt import parse_text  # noqa: E402
from netrun.proto import caffe_pb2  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
EXAMPLES = int(os.environ.get("NETRUN_FUZZ_EXAMPLES", "150"))
LIMIT = 64 << 20          # bytes a fuzzed net may use

# small real nets: the bundled models and the corpus/conformance ones that run fast
SEEDS = sorted(ROOT.glob("models/*.prototxt"))
for rel in ["corpus/bvlc/lenet.prototxt", "corpus/bvlc_v1/lenet.prototxt",
            "corpus/bvlc_v0/lenet.prototxt", "corpus/bvlc/cifar10_quick.prototxt",
            "corpus/bvlc/mnist_autoencoder.prototxt",
            "conformance/cases/graph_split_fanout/net.prototxt",
            "conformance/cases/softmax_loss_spatial_ignore/net.prototxt",
            "conformance/cases/graph_shared_params/net.prototxt",
            "conformance/cases/eltwise_max/net.prototxt"]:
    if (SHARED / rel).exists():
        SEEDS.append(SHARED / rel)
TEXTS = [p.read_text() for p in SEEDS]

fuzz_settings = settings(max_examples=EXAMPLES, deadline=5000, derandomize=True,
                         suppress_health_check=list(HealthCheck), database=None)


def run_text(text, tmp):
    """Build and run a (mutated) prototxt: success or NetrunError only."""
    path = tmp / "fuzz.prototxt"
    path.write_text(text)
    try:
        net = Net(str(path), phase="train", warn=lambda m: None, max_memory=LIMIT)
        for name in net.inputs:
            net.blobs[name].data[...] = 0.5
        net.forward()
        net.backward()
    except NetrunError:
        pass


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
                new = draw(st.sampled_from(['"data"', '"x"', '"loss"', '""', '"label"', '"ip1"',
                                            '"conv1"', '"ReLU"', '"Pooling"', '"Concat"']))
                lines[i] = lines[i][:m.start()] + new + lines[i][m.end():]
        else:
            cut = draw(st.integers(0, len(lines[i])))
            lines = lines[:i] + [lines[i][:cut]]
    return "\n".join(lines) + "\n"


@fuzz_settings
@given(text=mutated_prototxt())
def test_mutated_prototxts(tmp_path_factory, text):
    run_text(text, tmp_path_factory.mktemp("fz"))


WEIGHT_NET = ROOT / "models" / "mlp_loss.prototxt"


def _weights_bytes():
    net = Net(str(WEIGHT_NET), warn=lambda m: None)
    from netrun.io.caffemodel import net_to_proto
    return net_to_proto(net).SerializeToString()


WEIGHTS = _weights_bytes()
CORPUS_WEIGHTS = [p.read_bytes()[:200000] for p in
                  sorted((SHARED / "conformance" / "cases").glob("*/weights.caffemodel"))[:3]]


@st.composite
def mutated_caffemodel(draw):
    data = bytearray(draw(st.sampled_from([WEIGHTS] + CORPUS_WEIGHTS)))
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
    return bytes(data)


@fuzz_settings
@given(blob=mutated_caffemodel())
def test_mutated_caffemodels(tmp_path_factory, blob):
    path = tmp_path_factory.mktemp("fw") / "w.caffemodel"
    path.write_bytes(blob)
    net = Net(str(WEIGHT_NET), warn=lambda m: None)
    try:
        net.copy_from(str(path))
        net.forward()
    except NetrunError:
        pass


def test_fuzz_seeds_present():
    assert len(SEEDS) >= 3
    for text in TEXTS:
        parse_text(text, caffe_pb2.NetParameter())
