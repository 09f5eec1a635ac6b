"""Issue 3, "Real networks": every published net we have goes through the CLI.

* Every net of ../shared/conformance/extra_nets/ and every ../shared/corpus prototxt
  whose layers (after the legacy upgrade, in the phase used) are all BVLC types runs
  ``netrun backward ... --dump-diffs`` with exit 0, and everything in the dump is finite.
  Data layers (Data, ImageData, HDF5Data, WindowData, Python data layers) are replaced
  by inputs through --input-shape.  Batches are cut to 1 and images to small sizes
  (ARGS below: about 90 s of CPU for the file; at full size it was over 500 s); the
  conformance suite already runs GoogLeNet, ResNet-50, MobileNet, SqueezeNet and
  CaffeNet at full size against Caffe itself.
* A net with a layer type BVLC Caffe does not have (fork layers such as PriorBox,
  Upsample, ShuffleChannel; a Python layer that is not a replaced data layer) fails
  before any work with exit code 2 and one line: file:line, layer name, type, and the
  closest known types.  The corpus files of fork nets use fork-only fields too, so they
  already fail to parse (tests/test_corpus.py); here those fields are blanked out to
  reach the layer-type check.
"""
import os
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from netrun.cli import main
from netrun.errors import NetrunError
from netrun.io.prototxt import read_net
from netrun.layers import layer_class, layer_class_for
from netrun.net import FORK_TYPES, Net, filter_layers, parse_phase, unknown_type_message
from netrun.proto import caffe_pb2

SHARED = Path(__file__).resolve().parent.parent.parent / "shared"
CORPUS = Path(os.environ.get("NETRUN_CORPUS", SHARED / "corpus"))
EXTRA = SHARED / "conformance" / "extra_nets"

try:                                  # the 9 corpus files that use fields of Caffe forks
    from test_corpus import FORK_FIELDS
except pytest.skip.Exception:         # test_corpus skips itself when the corpus is absent
    FORK_FIELDS = {}

# Per-file arguments beyond the defaults (phase test, batch 1 for every declared input,
# eps 1 for global-stats BatchNorm: see global_stats_batchnorms).  "shape": input shapes
# (data layers become inputs); "set": --set edits; "stage": NetState stages.
IMG = {"data": (1, 3, 64, 64)}        # AlexNet-like nets: pool5 is 1x1 at 64x64
TINY = {"data": (1, 3, 32, 32)}       # nets that end in global pooling / 5 stride-2 stages
FCN = (1, 3, 16, 16)                  # FCNs pad conv1_1 by 100: any input size works
# ... but their fc6 is a 7x7 convolution to 4096 channels whatever the input: its 103M
# weights take seconds to fill and to dump, so it is narrowed to 64 outputs (the same
# graph, shapes and crops; fc7 keeps its 4096).
FC6 = "fc6.convolution_param.num_output=64"
INCEPTION = {"data": (1, 3, 75, 75)}  # v3/v4/Xception strides need 32k+11 sizes; global pool
# GoogLeNet/ResNet/NIN end in a fixed-size average pooling (7x7 or 6x6 on a 224 input):
# at 64x64 (NIN: 96x96) its input map is 2x2, so the kernel shrinks to 2.
GOOGLENET = {"shape": IMG, "set": ["pool5/7x7_s1.pooling_param.kernel_size=2"]}
RESNET = {"shape": IMG, "set": ["pool5.pooling_param.kernel_size=2"]}
NIN = {"shape": {"data": (1, 3, 96, 96)}, "set": ["pool4.pooling_param.kernel_size=2"]}

ARGS = {
    "extra_nets/net_age_v1.prototxt": {"shape": IMG},
    "extra_nets/net_alexnet_v1.prototxt": {"shape": IMG},
    "extra_nets/net_fcn8s_small.prototxt": {"shape": {"data": FCN}, "set": [FC6]},
    "extra_nets/net_googlenet_v1.prototxt": GOOGLENET,
    "extra_nets/net_inception_v3.prototxt": {"shape": INCEPTION},
    "extra_nets/net_mobilenet_v2.prototxt": {"shape": TINY},
    "extra_nets/net_nin.prototxt": NIN,
    "extra_nets/net_resnet101.prototxt": RESNET,
    "extra_nets/net_squeezenet10.prototxt": {"shape": IMG},
    "extra_nets/net_vgg19_v1.prototxt": {"shape": TINY},
    "extra_nets/net_xception.prototxt": {"shape": INCEPTION},
    "extra_nets/net_yolo_tiny.prototxt": {"shape": IMG},
    "agegender/age_net_deploy.prototxt": {"shape": IMG},
    "agegender/gender_net_deploy.prototxt": {"shape": IMG},
    "bvlc/alexnet_deploy.prototxt": {"shape": IMG},
    "bvlc/alexnet_train_val.prototxt": {"shape": IMG},
    # fc6-conv is a 6x6 convolution over pool5: 227 is the smallest classic size
    "bvlc/bvlc_caffenet_full_conv.prototxt": {"shape": {"data": (1, 3, 227, 227)}},
    "bvlc/caffenet_deploy.prototxt": {"shape": IMG},
    "bvlc/caffenet_train_val.prototxt": {"shape": IMG},
    "bvlc/cifar10_full_sigmoid_train_test.prototxt": {"shape": TINY},
    "bvlc/cifar10_full_sigmoid_train_test_bn.prototxt": {"shape": TINY},
    "bvlc/cifar10_full_train_test.prototxt": {"shape": TINY},
    "bvlc/cifar10_quick_train_test.prototxt": {"shape": TINY},
    "bvlc/feature_extraction_imagenet_val.prototxt": {"shape": IMG},
    "bvlc/flickr_style_deploy.prototxt": {"shape": IMG},
    "bvlc/flickr_style_train_val.prototxt": {"shape": IMG},
    "bvlc/googlenet_deploy.prototxt": GOOGLENET,
    # the auxiliary classifiers pool 5x5 (stride 3) over a 14x14 map at 224: 4x4 at 64
    "bvlc/googlenet_train_val.prototxt": {
        "shape": IMG, "set": GOOGLENET["set"] + ["loss1/ave_pool.pooling_param.kernel_size=4",
                                                 "loss2/ave_pool.pooling_param.kernel_size=4"]},
    "bvlc/hdf5_classification_nonlinear_auto_train.prototxt": {"shape": {"data": (1, 4)}},
    "bvlc/hdf5_classification_nonlinear_train_val.prototxt": {"shape": {"data": (1, 4)}},
    "bvlc/hdf5_classification_train_val.prototxt": {"shape": {"data": (1, 4)}},
    "bvlc/lenet_train_test.prototxt": {"shape": {"data": (1, 1, 28, 28)}},
    # both TEST data layers require a stage (test-on-train or test-on-test)
    "bvlc/mnist_autoencoder.prototxt": {"stage": ["test-on-test"],
                                        "shape": {"data": (1, 1, 28, 28)}},
    "bvlc/mnist_siamese_train_test.prototxt": {"shape": {"pair_data": (1, 2, 28, 28)}},
    "bvlc/pascal_finetune_trainval_test.prototxt": {"shape": IMG},
    "bvlc/rcnn_ilsvrc13_deploy.prototxt": {"shape": IMG},
    "bvlc_v0/cifar10_quick_train.prototxt": {"shape": TINY},
    "bvlc_v0/imagenet.prototxt": {"shape": IMG},
    "bvlc_v1/alexnet_deploy.prototxt": {"shape": IMG},
    "bvlc_v1/googlenet_deploy.prototxt": GOOGLENET,
    "bvlc_v1/imagenet_train_val_pre_transform_param.prototxt": {"shape": IMG},
    "bvlc_v1/lenet_train_test.prototxt": {"shape": {"data": (1, 1, 28, 28)}},
    "bvlc_v1/mnist_autoencoder.prototxt": {"stage": ["test-on-test"],
                                           "shape": {"data": (1, 1, 28, 28)}},
    "bvlc_v1/mnist_siamese_train_test.prototxt": {"shape": {"pair_data": (1, 2, 28, 28)}},
    "densenet/DenseNet_121.prototxt": {"shape": TINY},
    # Python data layers; the losses are per pixel, so the labels are maps
    "fcn/nyud-fcn32s-color-hha_test.prototxt": {
        "shape": {"color": FCN, "hha": FCN, "label": (1, 1, 16, 16)},
        "set": ["fc6color" + FC6[3:], "fc6hha" + FC6[3:]]},
    "fcn/siftflow-fcn8s_test.prototxt": {
        "shape": {"data": FCN, "sem": (1, 1, 16, 16), "geo": (1, 1, 16, 16)}, "set": [FC6]},
    "fcn/voc-fcn-alexnet_val.prototxt": {"shape": {"data": FCN, "label": (1, 1, 16, 16)},
                                         "set": [FC6]},
    "fcn/voc-fcn32s_val.prototxt": {"shape": {"data": FCN, "label": (1, 1, 16, 16)},
                                    "set": [FC6]},
    "fcn/voc-fcn8s_deploy.prototxt": {"shape": {"data": FCN}, "set": [FC6]},
    "inception/deploy_inception-v3.prototxt": {"shape": INCEPTION},
    "inception/deploy_inception-v4.prototxt": {"shape": INCEPTION},
    "inception/deploy_resnext50-32x4d.prototxt": {"shape": TINY},
    "inception/deploy_xception.prototxt": {"shape": INCEPTION},
    "mobilenet/mobilenet_deploy.prototxt": {"shape": TINY},
    "mobilenet/mobilenet_v2_deploy.prototxt": {"shape": TINY},
    "nin/nin_imagenet_deploy.prototxt": NIN,
    # legacy "input:" without a shape: the shape given makes it an input again
    "opencv_layers/reshape_and_slice_routines.prototxt": {"shape": {"input": (1, 3, 4, 4)}},
    "openpose/pose_deploy_linevec.prototxt": {"shape": {"image": (1, 3, 16, 16)}},
    "resnet/ResNet-50-deploy.prototxt": RESNET,
    "resnet/ResNet-101-deploy.prototxt": RESNET,
    "resnet/ResNet-152-deploy.prototxt": RESNET,
    "squeezenet/SqueezeNet_v1.0_deploy.prototxt": {"shape": IMG},
    "squeezenet/SqueezeNet_v1.1_deploy.prototxt": {"shape": IMG},
    "squeezenet/SqueezeNet_v1.1_train_val.prototxt": {"shape": IMG},
    "vgg/VGG_ILSVRC_16_layers_deploy.prototxt": {"shape": TINY},
    "vgg/VGG_ILSVRC_19_layers_deploy.prototxt": {"shape": TINY},
    "weights/cifar10_quick/prediction_example.prototxt": {"shape": TINY},
    "yolo/yolo_small_deploy.prototxt": {"shape": IMG},
    "yolo/yolo_tiny_deploy.prototxt": {"shape": IMG},
}


def _files(folder, prefix, pattern):
    if not folder.is_dir():
        return [pytest.param(None, None, id=f"{prefix}-absent",
                             marks=pytest.mark.skip(reason=f"folder {folder} does not exist"))]
    out = []
    for p in sorted(folder.glob(pattern)):
        rel = str(p.relative_to(folder))
        if prefix == "corpus" and ("solver" in p.name or rel in FORK_FIELDS):
            continue                  # solvers; fork fields: tests/test_corpus.py
        key = f"extra_nets/{rel}" if prefix == "extra_nets" else rel
        out.append(pytest.param(key, p, id=key))
    return out


FILES = _files(EXTRA, "extra_nets", "*.prototxt") + _files(CORPUS, "corpus", "**/*.prototxt")
FORK_FILES = sorted(FORK_FIELDS) if CORPUS.is_dir() else []


def quiet(_message):
    pass


def kept_layers(param, phase, stages):
    state = caffe_pb2.NetState()
    state.CopyFrom(param.state)
    state.phase = parse_phase(phase)
    state.stage.extend(s for s in stages if s not in state.stage)
    return filter_layers(param, state)


def default_shapes(param, kept, given):
    """Batch 1 for every declared input the table does not size."""
    shapes = dict(given)
    for i in kept:
        lp = param.layer[i]
        if lp.type != "Input":
            continue
        declared = list(lp.input_param.shape)
        for j, top in enumerate(lp.top):
            dims = list((declared[j] if j < len(declared) else declared[0]).dim) if declared else []
            if top not in shapes and dims and dims[0] > 1:
                shapes[top] = (1, *dims[1:])
    return shapes


def global_stats_batchnorms(param, kept, phase):
    """BatchNorm layers that normalize by their stored statistics.

    Untrained, those are zero (mean 0, variance 0), so each such layer multiplies by
    1/sqrt(eps) (316 for eps 1e-5): a few dozen of them overflow float32, in Caffe as
    here.  eps 1 makes them the identity, so the outputs stay finite.
    """
    out = []
    for i in kept:
        lp = param.layer[i]
        if lp.type != "BatchNorm":
            continue
        bp = lp.batch_norm_param
        use_global = bp.use_global_stats if bp.HasField("use_global_stats") else phase == "test"
        if use_global:
            out.append(lp.name)
    return sorted(set(out))


def first_foreign_layer(param, kept, shapes):
    """The first layer of a type netrun lacks (neither BVLC's nor a fork layer netrun has),
    or a Python layer that is neither built in nor a data layer replaced by --input-shape
    (it would need --allow-python-layers and its module)."""
    for i in kept:
        lp = param.layer[i]
        cls = layer_class_for(lp)
        if cls is None:
            return i
        if cls is layer_class("Python") and (len(lp.bottom)
                                             or not any(t in shapes for t in lp.top)):
            return i
    return None


def cli_args(path, spec, shapes, phase, bn):
    args = [path, "--phase", phase]
    for s in spec.get("stage", ()):
        args += ["--stage", s]
    for name, dims in shapes.items():
        args += ["--input-shape", f"{name}={','.join(str(d) for d in dims)}"]
    for edit in spec.get("set", ()):
        args += ["--set", edit]
    for name in bn:
        args += ["--set", f"{name}.batch_norm_param.eps=1"]
    return [str(a) for a in args]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def error_lines(res):
    """The lines of stderr that are not warnings."""
    return [ln for ln in res.stderr.splitlines() if not ln.startswith("netrun: warning:")]


def assert_fails_at(res, path, src, index):
    """Exit 2 before any work, one error line naming file:line, layer and type."""
    lp = src.param.layer[index]
    assert res.exit_code == 2, res.output
    assert res.stdout == "", res.stdout             # nothing ran: no layer table printed
    lines = error_lines(res)
    assert len(lines) == 1, res.stderr
    line = lines[0]
    assert line.startswith(f'netrun: error: {path}:{src.lines[index]}: layer "{lp.name}" ({lp.type}): '), line
    assert "Traceback" not in res.output
    if lp.type == "Python":
        assert "--allow-python-layers" in line, line
    else:
        assert unknown_type_message(lp.type) in line, line
    return line


@pytest.mark.parametrize("key,path", FILES)
def test_net_runs_forward_and_backward(key, path, tmp_path):
    spec = ARGS.get(key, {})
    phase = spec.get("phase", "test")
    src = read_net(path, warn=quiet)
    kept = kept_layers(src.param, phase, spec.get("stage", ()))
    shapes = default_shapes(src.param, kept, spec.get("shape", {}))
    bn = global_stats_batchnorms(src.param, kept, phase)
    args = cli_args(path, spec, shapes, phase, bn)
    foreign = first_foreign_layer(src.param, kept, shapes)
    if foreign is not None:                        # not a BVLC-only net: one clear line
        assert_fails_at(invoke("backward", *args), path, src, foreign)
        return
    out = tmp_path / "dump.npz"
    res = invoke("backward", *args, "-q", "--dump-diffs", out)
    assert res.exit_code == 0, f"netrun backward {' '.join(args)}\n{res.output}"
    with np.load(out) as dump:
        names = dump.files
        bad = [k for k in names if not np.isfinite(dump[k]).all()]
        assert not bad, f"non-finite values in {bad[:5]}"
        diffs = [k for k in names if k.startswith(("diff/", "param_diff/"))]
        assert diffs and any(np.any(dump[k]) for k in diffs), "backward left every diff at zero"


def test_table_names_only_existing_files():
    if not (EXTRA.is_dir() and CORPUS.is_dir()):
        pytest.skip("the shared folders are not on this machine")
    keys = {p.values[0] for p in FILES}
    assert set(ARGS) <= keys, sorted(set(ARGS) - keys)


# -- fork layer types ---------------------------------------------------------------------------
def _fork_files_netrun_cannot_run():
    """The corpus fork nets with a layer netrun lacks (the others run:
    tests/test_fork_nets.py, tests/test_forks_opencv.py)."""
    out = []
    for rel in FORK_FILES:
        src = read_net(CORPUS / rel, warn=quiet)
        if first_foreign_layer(src.param, kept_layers(src.param, "test", ()), {}) is not None:
            out.append(rel)
    return out


def test_fork_nets_netrun_cannot_run():
    # every corpus fork net has only layers netrun runs (tests/test_fork_nets.py)
    assert _fork_files_netrun_cannot_run() == []


@pytest.mark.parametrize("fork_type", sorted(t for t in FORK_TYPES if layer_class(t) is None))
def test_fork_type_message(fork_type, tmp_path):
    net = tmp_path / "fork.prototxt"
    net.write_text('name: "fork"\n'
                   'layer { name: "data" type: "Input" top: "data"\n'
                   '        input_param { shape { dim: 1 dim: 4 dim: 8 dim: 8 } } }\n'
                   f'layer {{ name: "odd" type: "{fork_type}" bottom: "data" top: "out" }}\n')
    res = invoke("forward", net)
    assert res.exit_code == 2 and res.stdout == ""
    (line,) = error_lines(res)
    assert line.startswith(f'netrun: error: {net}:4: layer "odd" ({fork_type}): '
                           f'unknown layer type "{fork_type}" (not a BVLC Caffe layer: ')
    close = FORK_TYPES[fork_type][1]
    if close:
        assert f"; closest known types: {', '.join(close)};" in line
    else:                                   # no spelling-based guesses for these names
        assert "closest known types" not in line


def test_unknown_type_suggestions():
    for fork, bvlc in [("Interp", "Deconvolution"), ("ReLU6", "Clip")]:
        assert f"closest known types: {bvlc}" in unknown_type_message(fork)
    assert "closest known types: Flatten" in unknown_type_message("Flattenn")
    assert "closest known types: ReLU" in unknown_type_message("relu")
    assert "closest known types" not in unknown_type_message("Region")
    # a fork layer netrun lacks names its fork
    assert "SSD (weiliu89/caffe" in unknown_type_message("MultiBoxLoss")
    assert "R-FCN" in unknown_type_message("PSROIPooling")


# -- fixes found running the corpus ----------------------------------------------------------------
def test_input_header_keeps_layer_lines(tmp_path):
    # the Input layer made from the input: header used to throw every line number away
    net = tmp_path / "v1.prototxt"
    net.write_text('name: "v1"\ninput: "data"\ninput_dim: 1\ninput_dim: 2\ninput_dim: 3\n'
                   'input_dim: 3\nlayer {\n  name: "up"\n  type: "ReLU"\n  bottom: "data"\n'
                   '  top: "data"\n}\nlayer {\n  name: "bad"\n  type: "Upsample"\n'
                   '  bottom: "data"\n  top: "y"\n}\n')
    src = read_net(net, warn=quiet)
    assert [l.name for l in src.param.layer] == ["input", "up", "bad"]
    assert src.lines == [2, 7, 13]
    res = invoke("forward", net)
    assert res.exit_code == 2
    assert error_lines(res)[0].startswith(f'netrun: error: {net}:13: layer "bad" (Upsample): ')


def test_v0_padding_layers_keep_layer_lines(tmp_path):
    net = tmp_path / "v0.prototxt"
    net.write_text('name: "v0"\ninput: "data"\ninput_dim: 1\ninput_dim: 1\ninput_dim: 5\n'
                   'input_dim: 5\n'
                   'layers {\n layer { name: "pad1" type: "padding" pad: 1 }\n'
                   ' bottom: "data" top: "pad1"\n}\n'
                   'layers {\n layer { name: "conv1" type: "conv" num_output: 2 kernelsize: 3 }\n'
                   ' bottom: "pad1" top: "conv1"\n}\n')
    src = read_net(net, warn=quiet)
    assert [l.name for l in src.param.layer] == ["input", "conv1"]
    assert src.lines == [2, 11]
    net = Net(str(net), warn=quiet)
    assert net.blobs["conv1"].shape == (1, 2, 5, 5)


def test_shapeless_legacy_input_becomes_an_input_when_given_a_shape(tmp_path):
    path = tmp_path / "shapeless.prototxt"
    path.write_text('name: "s"\ninput: "x"\n'
                    'layer {\n  name: "sig"\n  type: "Sigmoid"\n  bottom: "x"\n  top: "y"\n}\n')
    notes = []
    with pytest.raises(NetrunError, match=rf'{re.escape(str(path))}:3: Unknown bottom blob "x"'):
        Net(str(path), warn=notes.append)            # as Caffe: the shapeless input is dropped
    assert any('"x"' in n and "--input-shape" in n for n in notes)
    net = Net(str(path), input_shapes={"x": (2, 3)}, warn=quiet)
    assert net.inputs == ["x"] and net.blobs["y"].shape == (2, 3)
    assert net.where("sig") == f'{path}:3: layer "sig" (Sigmoid)'
    param = caffe_pb2.NetParameter()
    param.input.append("x")
    param.layer.add(name="sig", type="Sigmoid", bottom=["x"], top=["y"])
    net = Net(param, input_shapes={"x": (4,)}, warn=quiet)
    np.testing.assert_allclose(net.forward(x=np.zeros(4))["y"], 0.5)
