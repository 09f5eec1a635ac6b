"""Legacy V0/V1 nets, caffemodels and solvers upgrade as Caffe's upgrade_proto does."""
import os
import re
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from netrun.errors import NetrunError
from netrun.io.upgrade import (V1_TYPE_NAMES, blob_array, blob_shape, needs_upgrade,
                               upgrade_net, upgrade_solver, solver_needs_upgrade)
from netrun.proto import caffe_pb2

SHARED = Path(os.environ.get("NETRUN_SHARED",
                             Path(__file__).resolve().parent.parent.parent / "shared"))
CORPUS = SHARED / "corpus"
EXTRA = SHARED / "conformance" / "extra_nets"
CIFAR_MODEL = CORPUS / "weights" / "cifar10_quick" / "cifar10_quick_iter_5000.caffemodel"

_LEGACY_RE = re.compile(r"^\s*layers\s*\{", re.M)


def _legacy_files():
    roots = [CORPUS, EXTRA, SHARED / "conformance" / "cases"]
    found = []
    for root in roots:
        if root.is_dir():
            for p in sorted(root.rglob("*.prototxt")):
                if _LEGACY_RE.search(p.read_text(errors="replace")):
                    found.append(p)
    return found


LEGACY = _legacy_files()
V2_TYPES = set(V1_TYPE_NAMES.values()) | {"Input"}

needs_shared = pytest.mark.skipif(not CORPUS.is_dir(), reason=f"{CORPUS} missing")


def parse(text_or_path, msg=None):
    msg = msg if msg is not None else caffe_pb2.NetParameter()
    text = Path(text_or_path).read_text() if isinstance(text_or_path, Path) else text_or_path
    text_format.Merge(text, msg)
    return msg


def upgraded(path_or_text):
    notes = []
    net = upgrade_net(parse(path_or_text), warn=notes.append)
    return net, notes


def _rel(p):
    return str(p.relative_to(SHARED))


# --------------------------------------------------------------------------------------
# every legacy file of the shared material
# --------------------------------------------------------------------------------------
@needs_shared
def test_legacy_files_found():
    names = {_rel(p) for p in LEGACY}
    for must in ["corpus/bvlc_v0/imagenet.prototxt", "corpus/bvlc_v0/lenet.prototxt",
                 "corpus/bvlc_v0/cifar10_quick_train.prototxt",
                 "corpus/bvlc_v1/lenet_train_test.prototxt",
                 "corpus/agegender/age_net_deploy.prototxt",
                 "conformance/extra_nets/net_lenet_v0.prototxt",
                 "conformance/extra_nets/net_alexnet_v1.prototxt",
                 "conformance/cases/net_lenet_v1/net.prototxt"]:
        assert must in names


@needs_shared
@pytest.mark.parametrize("path", LEGACY, ids=_rel)
def test_legacy_file_upgrades(path):
    orig = parse(path)
    before = orig.SerializeToString()
    assert needs_upgrade(orig)
    notes = []
    net = upgrade_net(orig, warn=notes.append)
    assert orig.SerializeToString() == before                   # input untouched
    assert len(net.layers) == 0 and len(net.layer) > 0
    assert not len(net.input) and not len(net.input_dim) and not len(net.input_shape)
    for lp in net.layer:
        assert lp.type in V2_TYPES, (lp.name, lp.type)
        assert lp.name
    assert not needs_upgrade(net)
    assert notes and len(notes) == len(set(notes))              # each step noted once
    assert any("V1" in n and "V2" in n for n in notes)
    # lr/decay multipliers carried over, layer by layer (padding layers aside)
    src = [l for l in orig.layers if not (l.HasField("layer") and l.layer.type == "padding")]
    dst = [l for l in net.layer if l.type != "Input"]
    assert len(src) == len(dst)
    for s, d in zip(src, dst):
        v = s.layer if s.HasField("layer") else s
        assert d.name == v.name
        assert [p.lr_mult for p in d.param[:len(v.blobs_lr)]] == pytest.approx(list(v.blobs_lr))
        assert ([p.decay_mult for p in d.param[:len(v.weight_decay)]]
                == pytest.approx(list(v.weight_decay)))
        assert len(d.param) == max(len(v.blobs_lr), len(v.weight_decay),
                                   0 if s.HasField("layer") else len(s.param))
    # a declared input shape becomes the first layer, an Input layer
    if len(orig.input) and (len(orig.input_dim) or len(orig.input_shape)):
        first = net.layer[0]
        assert first.type == "Input" and first.name == "input"
        assert list(first.top) == list(orig.input)
        if len(orig.input_dim):
            assert [list(s.dim) for s in first.input_param.shape] == [
                list(orig.input_dim[4 * i:4 * i + 4]) for i in range(len(orig.input))]
        assert sum(l.type == "Input" for l in net.layer) == 1


@needs_shared
def test_v1_types_map_to_v2_strings():
    net, _ = upgraded(CORPUS / "bvlc_v1" / "imagenet_train_val_pre_transform_param.prototxt")
    types = {l.type for l in net.layer}
    assert {"Data", "Convolution", "ReLU", "Pooling", "LRN", "InnerProduct", "Dropout",
            "SoftmaxWithLoss", "Accuracy"} <= types
    net, _ = upgraded(CORPUS / "bvlc_v1" / "mnist_siamese_train_test.prototxt")
    assert {"Slice", "ContrastiveLoss"} <= {l.type for l in net.layer}
    net, _ = upgraded(CORPUS / "bvlc_v1" / "mnist_autoencoder.prototxt")
    assert {"Sigmoid", "SigmoidCrossEntropyLoss", "EuclideanLoss", "Flatten"} <= {
        l.type for l in net.layer}


# --------------------------------------------------------------------------------------
# V0
# --------------------------------------------------------------------------------------
@needs_shared
def test_v0_padding_layers_fold_into_next_layer():
    orig = parse(CORPUS / "bvlc_v0" / "imagenet.prototxt")
    n_pad = sum(l.layer.type == "padding" for l in orig.layers)
    assert n_pad == 4
    net, notes = upgraded(CORPUS / "bvlc_v0" / "imagenet.prototxt")
    assert any("V0" in n for n in notes)
    by = {l.name: l for l in net.layer}
    assert not any(name.startswith("pad") for name in by)
    assert len(net.layer) == len(orig.layers) - n_pad + 1        # + the Input layer
    # conv2 read pad2 (pad 2, fed by norm1); conv3..5 read pad3..5 (pad 1)
    assert list(by["conv2"].convolution_param.pad) == [2]
    assert list(by["conv2"].bottom) == ["norm1"]
    assert list(by["conv3"].bottom) == ["norm2"]
    assert list(by["conv4"].bottom) == ["conv3"]
    assert list(by["conv5"].bottom) == ["conv4"]
    for name in ("conv3", "conv4", "conv5"):
        assert list(by[name].convolution_param.pad) == [1]
    assert not len(by["conv1"].convolution_param.pad)
    c2 = by["conv2"].convolution_param
    assert c2.num_output == 256 and c2.group == 2 and list(c2.kernel_size) == [5]
    assert c2.weight_filler.type == "gaussian" and c2.bias_filler.value == 1
    p1 = by["pool1"].pooling_param
    assert p1.pool == caffe_pb2.PoolingParameter.MAX and p1.kernel_size == 3 and p1.stride == 2
    lrn = by["norm1"].lrn_param
    assert lrn.local_size == 5 and lrn.alpha == pytest.approx(1e-4) and lrn.beta == 0.75
    assert by["drop6"].dropout_param.dropout_ratio == 0.5
    assert by["fc8"].inner_product_param.num_output == 1000
    assert [(p.lr_mult, p.decay_mult) for p in by["conv1"].param] == [(1, 1), (2, 0)]
    assert list(by["input"].input_param.shape[0].dim) == [10, 3, 227, 227]


@needs_shared
def test_v0_data_layer_and_pad_field():
    net, _ = upgraded(CORPUS / "bvlc_v0" / "cifar10_quick_train.prototxt")
    by = {l.name: l for l in net.layer}
    data = by["cifar"]
    assert data.type == "Data"
    assert data.data_param.source == "cifar10-leveldb/cifar-train-leveldb"
    assert data.data_param.batch_size == 100
    assert data.transform_param.mean_file == "mean.binaryproto"
    assert list(by["conv1"].convolution_param.pad) == [2]
    assert by["loss"].type == "SoftmaxWithLoss"
    assert by["pool2"].pooling_param.pool == caffe_pb2.PoolingParameter.AVE


@needs_shared
def test_v0_lenet_matches_v2_lenet():
    a, _ = upgraded(CORPUS / "bvlc_v0" / "lenet.prototxt")
    b, _ = upgraded(CORPUS / "bvlc" / "lenet.prototxt")
    _same_layers(a, b, ignore={"param"})


# --------------------------------------------------------------------------------------
# V1 versus the V2 file Caffe ships for the same net
# --------------------------------------------------------------------------------------
V1_V2_PAIRS = [("alexnet_deploy", "alexnet_deploy"), ("cifar10_quick", "cifar10_quick"),
               ("googlenet_deploy", "googlenet_deploy"), ("lenet", "lenet"),
               ("lenet_train_test", "lenet_train_test"),
               ("mnist_autoencoder", "mnist_autoencoder"),
               ("mnist_siamese_train_test", "mnist_siamese_train_test"),
               ("imagenet_train_val_pre_transform_param", "caffenet_train_val")]

_COMPARED = ("type", "bottom", "top", "param", "include", "exclude", "loss_weight",
             "convolution_param", "pooling_param", "inner_product_param", "lrn_param",
             "dropout_param", "concat_param", "slice_param", "contrastive_loss_param",
             "softmax_param", "relu_param", "transform_param", "data_param")
# file locations differ between the two Caffe versions
_PATHS = {"transform_param": ("mean_file",), "data_param": ("source", "backend")}


def _strip(layer, field):
    msg = getattr(layer, field)
    if field in _PATHS:
        copy = type(msg)()
        copy.CopyFrom(msg)
        for f in _PATHS[field]:
            copy.ClearField(f)
        return copy
    return msg


def _same_layers(a, b, ignore=()):
    la = [l for l in a.layer if l.type != "Input"]
    lb = [l for l in b.layer if l.type != "Input"]
    assert [l.name for l in la] == [l.name for l in lb]
    for x, y in zip(la, lb):
        for f in _COMPARED:
            if f not in ignore:
                assert _strip(x, f) == _strip(y, f), (x.name, f)
    ia = [list(l.input_param.shape) for l in a.layer if l.type == "Input"]
    ib = [list(l.input_param.shape) for l in b.layer if l.type == "Input"]
    assert ia == ib


@needs_shared
@pytest.mark.parametrize("v1,v2", V1_V2_PAIRS, ids=[p[0] for p in V1_V2_PAIRS])
def test_v1_matches_shipped_v2(v1, v2):
    a, _ = upgraded(CORPUS / "bvlc_v1" / f"{v1}.prototxt")
    b, _ = upgraded(CORPUS / "bvlc" / f"{v2}.prototxt")
    _same_layers(a, b)


@needs_shared
def test_data_transformation_fields_move():
    path = CORPUS / "bvlc_v1" / "imagenet_train_val_pre_transform_param.prototxt"
    orig = parse(path)
    assert orig.layers[0].data_param.crop_size == 227
    net, notes = upgraded(path)
    assert any("transform_param" in n for n in notes)
    train, test = net.layer[0], net.layer[1]
    for lp, mirror, batch in ((train, True, 256), (test, False, 50)):
        assert lp.type == "Data"
        for f in ("scale", "mean_file", "crop_size", "mirror"):
            assert not lp.data_param.HasField(f)
        assert lp.transform_param.crop_size == 227
        assert lp.transform_param.mirror is mirror
        assert lp.transform_param.mean_file.endswith("imagenet_mean.binaryproto")
        assert lp.data_param.batch_size == batch
    assert train.include[0].phase == caffe_pb2.TRAIN and test.include[0].phase == caffe_pb2.TEST


def test_data_transformation_image_and_window_data():
    net, _ = upgraded("""
    layers { name: "a" type: IMAGE_DATA top: "x" top: "y"
             image_data_param { source: "l.txt" scale: 0.5 mirror: true new_height: 8 } }
    layers { name: "b" type: WINDOW_DATA top: "z" top: "w"
             window_data_param { source: "w.txt" crop_size: 7 mean_file: "m" } }
    """)
    a, b = net.layer
    assert a.type == "ImageData" and b.type == "WindowData"
    assert a.transform_param.scale == 0.5 and a.transform_param.mirror
    assert not a.image_data_param.HasField("scale") and a.image_data_param.new_height == 8
    assert b.transform_param.crop_size == 7 and b.transform_param.mean_file == "m"
    assert not b.window_data_param.HasField("crop_size")


# --------------------------------------------------------------------------------------
# V1 layer fields
# --------------------------------------------------------------------------------------
def test_v1_param_specs_and_copied_fields():
    net, _ = upgraded("""
    name: "n"
    force_backward: true
    layers { name: "ip" type: INNER_PRODUCT bottom: "x" top: "y"
             param: "w" param: "b" blob_share_mode: PERMISSIVE
             blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0 loss_weight: 0.5
             include { phase: TRAIN stage: "s" } exclude { min_level: 2 }
             inner_product_param { num_output: 3 axis: 2 }
             blobs { num: 1 channels: 1 height: 3 width: 2 data: [1, 2, 3, 4, 5, 6] } }
    layers { name: "t" type: THRESHOLD bottom: "y" top: "z" threshold_param { threshold: 0.3 } }
    layers { name: "e" type: ELTWISE bottom: "y" bottom: "z" top: "s"
             eltwise_param { operation: MAX } }
    layers { name: "l" type: SOFTMAX_LOSS bottom: "s" bottom: "x" top: "loss"
             loss_param { ignore_label: 4 } }
    """)
    assert net.name == "n" and net.force_backward
    ip, th, el, loss = net.layer
    assert ip.type == "InnerProduct"
    assert [(p.name, p.lr_mult, p.decay_mult) for p in ip.param] == [("w", 1, 1), ("b", 2, 0)]
    assert ip.param[0].share_mode == caffe_pb2.ParamSpec.PERMISSIVE
    assert not ip.param[1].HasField("share_mode")
    assert list(ip.loss_weight) == [0.5]
    assert ip.include[0].phase == caffe_pb2.TRAIN and list(ip.include[0].stage) == ["s"]
    assert ip.exclude[0].min_level == 2
    assert ip.inner_product_param.num_output == 3 and ip.inner_product_param.axis == 2
    assert blob_shape(ip.blobs[0]) == (1, 1, 3, 2)
    assert th.type == "Threshold" and th.threshold_param.threshold == pytest.approx(0.3)
    assert el.type == "Eltwise" and el.eltwise_param.operation == caffe_pb2.EltwiseParameter.MAX
    assert loss.type == "SoftmaxWithLoss" and loss.loss_param.ignore_label == 4


def test_v1_only_blobs_lr_makes_partial_specs():
    net, _ = upgraded('layers { name: "c" type: CONVOLUTION bottom: "x" top: "y" blobs_lr: 0 }')
    (c,) = net.layer
    assert len(c.param) == 1 and c.param[0].lr_mult == 0 and not c.param[0].HasField("decay_mult")


def test_layer_and_layers_together_is_an_error():
    with pytest.raises(NetrunError, match="both"):
        upgrade_net(parse('layer { name: "a" type: "ReLU" } layers { name: "b" type: RELU }'))


def test_v2_nets_need_no_upgrade():
    net = parse('layer { name: "a" type: "Input" top: "x" input_param { shape { dim: 1 } } }')
    assert not needs_upgrade(net)
    notes = []
    assert upgrade_net(net, warn=notes.append) == net and notes == []


@needs_shared
@pytest.mark.parametrize("name", ["lenet.prototxt", "googlenet_train_val.prototxt",
                                  "caffenet_train_val.prototxt"])
def test_shipped_v2_files_need_no_upgrade(name):
    assert not needs_upgrade(parse(CORPUS / "bvlc" / name))


@needs_shared
def test_shipped_batchnorm_net_gets_decay_zeroed_silently():
    # BVLC's own BN example freezes with lr_mult: 0 only; Caffe still adds decay_mult: 0
    net = parse(CORPUS / "bvlc" / "cifar10_full_sigmoid_train_test_bn.prototxt")
    assert needs_upgrade(net)
    notes = []
    out = upgrade_net(net, warn=notes.append)
    assert notes == []
    bns = [l for l in out.layer if l.type == "BatchNorm"]
    assert bns and all(p.HasField("decay_mult") and p.decay_mult == 0 and p.lr_mult == 0
                       for l in bns for p in l.param)
    assert not needs_upgrade(out)


# --------------------------------------------------------------------------------------
# V0 problems
# --------------------------------------------------------------------------------------
def test_v0_padding_into_non_conv_is_an_error():
    text = """input: "data" input_dim: 1 input_dim: 1 input_dim: 4 input_dim: 4
    layers { layer { name: "p" type: "padding" pad: 1 } bottom: "data" top: "p" }
    layers { layer { name: "r" type: "relu" } bottom: "p" top: "r" }"""
    with pytest.raises(NetrunError, match="padding"):
        upgrade_net(parse(text))


def test_v0_pool_absorbs_padding():
    text = """input: "data" input_dim: 1 input_dim: 1 input_dim: 4 input_dim: 4
    layers { layer { name: "p" type: "padding" pad: 1 } bottom: "data" top: "p" }
    layers { layer { name: "q" type: "pool" pool: AVE kernelsize: 3 stride: 1 }
             bottom: "p" top: "q" }"""
    net, _ = upgraded(text)
    assert [l.name for l in net.layer] == ["input", "q"]
    q = net.layer[1]
    assert list(q.bottom) == ["data"]
    assert q.pooling_param.pad == 1 and q.pooling_param.pool == caffe_pb2.PoolingParameter.AVE


def test_v0_unknown_type_and_bottom_are_errors():
    with pytest.raises(NetrunError, match="unknown V0 layer type"):
        upgrade_net(parse('layers { layer { name: "x" type: "fancy" } top: "x" }'))
    with pytest.raises(NetrunError, match='"nowhere"'):
        upgrade_net(parse('layers { layer { name: "x" type: "relu" } bottom: "nowhere" }'))


def test_v0_field_on_wrong_type_is_reported_and_dropped():
    notes = []
    net = upgrade_net(parse("""
    layers { layer { name: "d" type: "data" source: "s" batchsize: 2 num_output: 3 scale: 0.5
                     cropsize: 4 mirror: true } top: "x" }
    layers { layer { name: "c" type: "concat" concat_dim: 1 } bottom: "x" bottom: "x"
             top: "y" }
    layers { layer { name: "w" type: "window_data" det_fg_threshold: 0.6 det_crop_mode: "square"
                     det_context_pad: 16 } top: "z" }
    """), warn=notes.append)
    d, c, w = net.layer
    assert any("num_output" in n and '"d"' in n for n in notes)
    assert not d.HasField("convolution_param") and not d.HasField("inner_product_param")
    assert d.data_param.source == "s" and d.data_param.batch_size == 2
    tp = d.transform_param
    assert tp.scale == 0.5 and tp.crop_size == 4 and tp.mirror
    assert c.type == "Concat" and c.concat_param.concat_dim == 1
    wp = w.window_data_param
    assert w.type == "WindowData" and wp.fg_threshold == pytest.approx(0.6)
    assert wp.crop_mode == "square" and wp.context_pad == 16


# --------------------------------------------------------------------------------------
# input fields
# --------------------------------------------------------------------------------------
def test_input_dims_become_one_input_layer_first():
    net, notes = upgraded("""
    input: "a" input_dim: 2 input_dim: 3 input_dim: 4 input_dim: 5
    input: "b" input_dim: 2 input_dim: 1 input_dim: 1 input_dim: 1
    layer { name: "r" type: "ReLU" bottom: "a" top: "a" }""")
    assert [l.name for l in net.layer] == ["input", "r"]
    inp = net.layer[0]
    assert inp.type == "Input" and list(inp.top) == ["a", "b"]
    assert [list(s.dim) for s in inp.input_param.shape] == [[2, 3, 4, 5], [2, 1, 1, 1]]
    assert len(notes) == 1 and "Input" in notes[0]


def test_input_shape_wins_and_input_alone_is_dropped():
    net, _ = upgraded('input: "a" input_shape { dim: 7 dim: 2 }')
    assert [list(s.dim) for s in net.layer[0].input_param.shape] == [[7, 2]]
    net, notes = upgraded('input: "a" layer { name: "r" type: "ReLU" bottom: "a" top: "a" }')
    assert [l.name for l in net.layer] == ["r"] and not len(net.input)
    assert notes


def test_input_dim_count_mismatch_is_an_error():
    with pytest.raises(NetrunError, match="input_dim"):
        upgrade_net(parse('input: "a" input: "b" input_dim: 1 input_dim: 2 input_dim: 3 '
                          'input_dim: 4 input_dim: 5'))


# --------------------------------------------------------------------------------------
# BatchNorm
# --------------------------------------------------------------------------------------
def test_batchnorm_three_param_specs_get_zero_multipliers():
    net = parse("""
    layer { name: "bn0" type: "BatchNorm" bottom: "x" top: "y"
            param { lr_mult: 1 decay_mult: 1 name: "m" } param { lr_mult: 1 name: "s" }
            param { lr_mult: 1 decay_mult: 1 name: "b" } }
    layer { name: "bn1" type: "BatchNorm" bottom: "y" top: "z" }
    layer { name: "bn2" type: "BatchNorm" bottom: "z" top: "w" param { lr_mult: 1 } }
    layer { name: "sc" type: "Scale" bottom: "w" top: "v"
            param { lr_mult: 1 } param { lr_mult: 1 } param { lr_mult: 1 } }""")
    assert needs_upgrade(net)
    notes = []
    out = upgrade_net(net, warn=notes.append)
    bn0, bn1, bn2, sc = out.layer
    assert [(p.name, p.lr_mult, p.decay_mult) for p in bn0.param] == [
        ("m", 0, 0), ("s", 0, 0), ("b", 0, 0)]
    assert not len(bn1.param)
    assert [p.lr_mult for p in bn2.param] == [1]
    assert [p.lr_mult for p in sc.param] == [1, 1, 1]
    assert len(notes) == 1 and "BatchNorm" in notes[0] and '"bn0"' in notes[0]
    assert not needs_upgrade(out)


# --------------------------------------------------------------------------------------
# binary caffemodel (V1) and blobs
# --------------------------------------------------------------------------------------
@pytest.mark.skipif(not CIFAR_MODEL.is_file(), reason="cifar10_quick caffemodel missing")
def test_v1_caffemodel_upgrades_with_blobs():
    raw = caffe_pb2.NetParameter()
    raw.ParseFromString(CIFAR_MODEL.read_bytes())
    assert len(raw.layers) and not len(raw.layer)
    assert needs_upgrade(raw)
    net = upgrade_net(raw)
    by = {l.name: l for l in net.layer}
    expect = {"conv1": [(32, 3, 5, 5), (1, 1, 1, 32)],
              "conv2": [(32, 32, 5, 5), (1, 1, 1, 32)],
              "conv3": [(64, 32, 5, 5), (1, 1, 1, 64)],
              "ip1": [(1, 1, 64, 1024), (1, 1, 1, 64)],
              "ip2": [(1, 1, 10, 64), (1, 1, 1, 10)]}
    for name, shapes in expect.items():
        lp = by[name]
        assert [blob_shape(b) for b in lp.blobs] == shapes
        arrays = [blob_array(b) for b in lp.blobs]
        assert [a.shape for a in arrays] == shapes
        assert all(a.dtype == np.float32 and np.isfinite(a).all() for a in arrays)
        assert np.abs(arrays[0]).max() > 0
        # bytes untouched by the upgrade
        src = next(l for l in raw.layers if l.name == name)
        assert [b.SerializeToString() for b in lp.blobs] == [
            b.SerializeToString() for b in src.blobs]
    assert by["conv1"].type == "Convolution" and by["ip2"].type == "InnerProduct"
    assert blob_array(by["conv1"].blobs[0], np.float64).dtype == np.float64


def test_blob_helpers():
    bp = caffe_pb2.BlobProto()
    bp.shape.dim.extend([2, 3])
    bp.double_data.extend(range(6))
    bp.data.extend([9.0] * 6)                       # double_data wins when present
    a = blob_array(bp, np.float64)
    assert blob_shape(bp) == (2, 3) and a.shape == (2, 3) and a[1, 2] == 5
    legacy = caffe_pb2.BlobProto(num=1, channels=2, height=1, width=2, data=[1, 2, 3, 4])
    assert blob_shape(legacy) == (1, 2, 1, 2)
    assert blob_array(legacy).reshape(-1).tolist() == [1, 2, 3, 4]
    # neither shape nor legacy dims: a 0-axis blob (Caffe's scalar), so 3 values do not fit
    assert blob_shape(caffe_pb2.BlobProto(data=[7])) == ()
    with pytest.raises(NetrunError, match="3 values"):
        blob_array(caffe_pb2.BlobProto(data=[1, 2, 3]))
    bad = caffe_pb2.BlobProto(num=2, channels=2, height=1, width=1, data=[1, 2, 3])
    with pytest.raises(NetrunError, match="3 values"):
        blob_array(bad)


def test_v0_blobs_survive():
    net, _ = upgraded("""input: "x" input_dim: 1 input_dim: 1 input_dim: 1 input_dim: 2
    layers { layer { name: "ip" type: "innerproduct" num_output: 1 blobs_lr: 1
             blobs { num: 1 channels: 1 height: 1 width: 2 data: [0.5, 0.25] } }
             bottom: "x" top: "y" }""")
    ip = net.layer[1]
    assert ip.inner_product_param.num_output == 1
    assert blob_array(ip.blobs[0]).reshape(-1).tolist() == [0.5, 0.25]


# --------------------------------------------------------------------------------------
# solver
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("enum,name", [("SGD", "SGD"), ("NESTEROV", "Nesterov"),
                                       ("ADAGRAD", "AdaGrad"), ("RMSPROP", "RMSProp"),
                                       ("ADADELTA", "AdaDelta"), ("ADAM", "Adam")])
def test_solver_type_upgrade(enum, name):
    s = text_format.Merge(f"base_lr: 0.1 solver_type: {enum}", caffe_pb2.SolverParameter())
    assert solver_needs_upgrade(s)
    notes = []
    out = upgrade_solver(s, warn=notes.append)
    assert out.type == name and not out.HasField("solver_type") and out.base_lr == pytest.approx(0.1)
    assert s.HasField("solver_type")                # input untouched
    assert len(notes) == 1


def test_solver_without_legacy_type_unchanged_and_both_is_error():
    s = text_format.Merge('type: "Adam"', caffe_pb2.SolverParameter())
    notes = []
    assert upgrade_solver(s, warn=notes.append) == s and not notes
    both = text_format.Merge('type: "Adam" solver_type: SGD', caffe_pb2.SolverParameter())
    with pytest.raises(NetrunError, match="solver_type"):
        upgrade_solver(both)
