"""The generated ``netrun/proto/caffe_pb2.py`` must match ``proto/caffe.proto``.

If the sync test fails, the .proto was edited without regenerating the module
(or the other way round): run ``python proto/generate.py``.
"""
import os
import struct

import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FieldDescriptor as FD

from netrun.proto import caffe_pb2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROTO_DIR = os.path.join(ROOT, "proto")


def _default_json_name(name):
    """protoc's default JSON name: drop each '_' and upper-case the next letter."""
    out, upper = [], False
    for ch in name:
        if ch == "_":
            upper = True
        else:
            out.append(ch.upper() if upper else ch)
            upper = False
    return "".join(out)


def _strip_default_json_names(messages):
    # protoc fills json_name into --descriptor_set_out, but the descriptor
    # embedded in generated Python code omits it when it is just the default.
    for msg in messages:
        for field in list(msg.field) + list(msg.extension):
            if field.json_name == _default_json_name(field.name):
                field.ClearField("json_name")
        _strip_default_json_names(msg.nested_type)


def _canonical_float_defaults(messages):
    # CopyToProto re-prints float defaults from the stored value ("1e-08" comes
    # back as "9.99999994e-09"); compare them as numbers instead.
    for msg in messages:
        for field in msg.field:
            if field.HasField("default_value") and field.type in (
                    descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT,
                    descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE):
                value = float(field.default_value)
                if field.type == descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT:
                    value = struct.unpack("<f", struct.pack("<f", value))[0]
                field.default_value = repr(value)
        _canonical_float_defaults(msg.nested_type)


def _compiled_descriptor(tmp_path):
    try:
        from grpc_tools import protoc
    except ImportError:
        pytest.skip("grpc_tools (package grpcio-tools) is not installed: "
                    "cannot compile proto/caffe.proto to compare")
    out = tmp_path / "caffe.desc"
    rc = protoc.main(["protoc", f"-I{PROTO_DIR}", f"--descriptor_set_out={out}",
                      "caffe.proto"])
    assert rc == 0, "protoc failed to compile proto/caffe.proto"
    fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    assert len(fds.file) == 1
    compiled = fds.file[0]
    compiled.ClearField("source_code_info")
    _strip_default_json_names(compiled.message_type)
    return compiled


def test_generated_module_matches_proto(tmp_path):
    compiled = _compiled_descriptor(tmp_path)
    generated = descriptor_pb2.FileDescriptorProto()
    caffe_pb2.DESCRIPTOR.CopyToProto(generated)
    generated.ClearField("source_code_info")
    _canonical_float_defaults(generated.message_type)
    _canonical_float_defaults(compiled.message_type)
    assert generated.name == compiled.name == "caffe.proto"
    assert generated.package == compiled.package == "caffe"
    if generated != compiled:
        # Name the differing messages to make the failure readable.
        gen = {m.name: m for m in generated.message_type}
        com = {m.name: m for m in compiled.message_type}
        differing = sorted(n for n in set(gen) | set(com) if gen.get(n) != com.get(n))
        pytest.fail("netrun/proto/caffe_pb2.py is stale relative to proto/caffe.proto "
                    f"(differing messages: {differing or 'file-level fields'}); "
                    "run `python proto/generate.py`")


def _field(message, name):
    return getattr(caffe_pb2, message).DESCRIPTOR.fields_by_name[name]


@pytest.mark.parametrize("message, name, number", [
    ("LayerParameter", "convolution_param", 106),
    ("LayerParameter", "relu_param", 123),
    ("LayerParameter", "pooling_param", 121),
    ("LayerParameter", "inner_product_param", 117),
    ("LayerParameter", "batch_norm_param", 139),
    ("LayerParameter", "scale_param", 142),
    ("LayerParameter", "input_param", 143),
    ("LayerParameter", "swish_param", 147),
    ("LayerParameter", "clip_param", 148),
    ("LayerParameter", "transform_param", 100),
    ("LayerParameter", "blobs", 7),
    ("LayerParameter", "phase", 10),
    ("NetParameter", "layer", 100),
    ("NetParameter", "layers", 2),
    ("NetParameter", "input_shape", 8),
    ("V1LayerParameter", "blobs", 6),
    ("V1LayerParameter", "type", 5),
    ("V1LayerParameter", "layer", 1),
    ("V1LayerParameter", "param", 1001),
    ("BlobProto", "data", 5),
    ("BlobProto", "shape", 7),
    ("BlobProto", "num", 1),
    ("BlobShape", "dim", 1),
    ("ReLUParameter", "negative_slope", 1),
    ("PoolingParameter", "round_mode", 13),
    ("SolverParameter", "layer_wise_reduce", 41),
    ("SolverParameter", "weights", 42),
])
def test_known_caffe_field_numbers(message, name, number):
    assert _field(message, name).number == number


def test_wire_details():
    data = _field("BlobProto", "data")
    assert data.type == FD.TYPE_FLOAT and data.GetOptions().packed
    dim = _field("BlobShape", "dim")
    assert dim.type == FD.TYPE_INT64 and dim.GetOptions().packed
    assert _field("BlobProto", "num").type == FD.TYPE_INT32
    assert _field("NetParameter", "layers").message_type.name == "V1LayerParameter"
    assert _field("ClipParameter", "min").is_required
    assert caffe_pb2.V1LayerParameter.CONVOLUTION == 4
    assert caffe_pb2.V1LayerParameter.DECONVOLUTION == 39
    assert caffe_pb2.TRAIN == 0 and caffe_pb2.TEST == 1


@pytest.mark.parametrize("message, name, default", [
    ("ConvolutionParameter", "bias_term", True),
    ("ConvolutionParameter", "group", 1),
    ("ConvolutionParameter", "axis", 1),
    ("PoolingParameter", "pool", caffe_pb2.PoolingParameter.MAX),
    ("PoolingParameter", "stride", 1),
    ("PoolingParameter", "round_mode", caffe_pb2.PoolingParameter.CEIL),
    ("LRNParameter", "local_size", 5),
    ("LRNParameter", "alpha", 1.0),
    ("LRNParameter", "beta", 0.75),
    ("LRNParameter", "k", 1.0),
    ("BatchNormParameter", "moving_average_fraction", pytest.approx(0.999)),
    ("BatchNormParameter", "eps", pytest.approx(1e-5)),
    ("SoftmaxParameter", "axis", 1),
    ("InnerProductParameter", "axis", 1),
    ("InnerProductParameter", "bias_term", True),
    ("LossParameter", "normalization", caffe_pb2.LossParameter.VALID),
    ("FillerParameter", "type", "constant"),
    ("FillerParameter", "std", 1.0),
    ("FillerParameter", "max", 1.0),
    ("FillerParameter", "sparse", -1),
    ("FillerParameter", "variance_norm", caffe_pb2.FillerParameter.FAN_IN),
    ("ParamSpec", "lr_mult", 1.0),
    ("ParamSpec", "decay_mult", 1.0),
    ("DropoutParameter", "dropout_ratio", 0.5),
    ("NetState", "phase", caffe_pb2.TEST),
    ("EltwiseParameter", "operation", caffe_pb2.EltwiseParameter.SUM),
    ("MVNParameter", "eps", pytest.approx(1e-9)),
    ("SolverParameter", "type", "SGD"),
    ("SolverParameter", "random_seed", -1),
])
def test_known_caffe_defaults(message, name, default):
    assert getattr(getattr(caffe_pb2, message)(), name) == default
