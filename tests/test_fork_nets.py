"""The fork nets of ../shared/corpus that OpenCV does not run (SegNet, ENet, Faster R-CNN):
forward and backward with recipe-v1 weights give finite values and real gradients;
every fork net of the corpus reads, and `netrun summary` and `netrun draw` show it.
Inputs are made small where the net allows (the shapes each net needs are noted)."""
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conformance import fill_recipe
from netrun import Net
from netrun.cli import main
from netrun.io.prototxt import read_net

CORPUS = Path(os.environ.get("NETRUN_CORPUS",
                             Path(__file__).resolve().parent.parent.parent / "shared" / "corpus"))
if not CORPUS.is_dir():
    pytest.skip(f"corpus folder {CORPUS} does not exist", allow_module_level=True)

FORK_NETS = ["enet/enet_deploy.prototxt", "enet/enet_deploy_final.prototxt",
             "faster_rcnn/ZF_faster_rcnn_end2end_test.prototxt",
             "segnet/segnet_inference.prototxt", "segnet/segnet_model_driving_webdemo.prototxt",
             "shufflenet/shufflenet_1x_g3_deploy.prototxt",
             "shufflenet/shufflenet_v2_1x_deploy.prototxt",
             "ssd/MobileNetSSD_deploy.prototxt", "ssd/res10_300x300_ssd_face_deploy.prototxt"]


def quiet(_m):
    pass


def run_forward_backward(param, inputs, drop=()):
    """Forward with recipe-v1 weights, then backward from diffs of ones on every output
    (force_backward); returns the net after checking every array is finite."""
    for name in drop:                           # layers without a backward at the very end
        idx = [i for i, lp in enumerate(param.layer) if lp.name == name]
        del param.layer[idx[0]]
    for lp in param.layer:                      # the inputs' shapes, before building
        if lp.type == "Input":
            for j, top in enumerate(lp.top):
                if top in inputs:
                    shape = lp.input_param.shape[j if len(lp.input_param.shape) > 1 else 0]
                    del shape.dim[:]
                    shape.dim.extend(inputs[top].shape)
    net = Net(param, phase="test", warn=quiet)
    fill_recipe(net)
    for name, value in inputs.items():
        net.blobs[name].data[...] = value
    net.forward()
    net.set_force_backward(True)
    net.backward(**{n: np.ones(net.blobs[n].shape, np.float32) for n in net.outputs})
    for name, blob in net.blobs.items():
        assert np.isfinite(blob.data).all(), f"data of {name} is not finite"
        assert np.isfinite(blob.diff).all(), f"diff of {name} is not finite"
    for lname, blobs in net.params.items():
        for k, b in enumerate(blobs):
            assert np.isfinite(b.diff).all(), f"parameter diff {lname}/{k} is not finite"
    return net


def image(*shape, seed=0):
    return np.random.RandomState(seed).uniform(-1, 1, shape).astype(np.float32)


def test_segnet_forward_backward():
    # 40 x 56: pools 20x28, 10x14, 5x7, 3x4 (ceil), 2x2; upsample5/4 have fixed output
    # sizes for 360 x 480 (23x30, 45x60): here they must be pool4's and pool3's inputs
    param = read_net(CORPUS / "segnet/segnet_model_driving_webdemo.prototxt", quiet).param
    for lp in param.layer:
        if lp.name == "upsample5":
            lp.upsample_param.upsample_h, lp.upsample_param.upsample_w = 3, 4
        if lp.name == "upsample4":
            lp.upsample_param.upsample_h, lp.upsample_param.upsample_w = 5, 7
    net = run_forward_backward(param, {"data": image(1, 3, 40, 56)}, drop=["argmax"])
    assert net.blobs["conv1_1_D"].shape == (1, 12, 40, 56)
    assert np.any(net.blobs["data"].diff) and np.any(net.params["conv1_1"][0].diff)
    # the decoder's unpooled maps are zero except at each pooling window's maximum
    up = net.blobs["pool5_D"].data
    assert (up != 0).sum() <= net.blobs["pool5"].count and np.any(up)
    bn = net.layers[net.layer_names.index("conv1_1_bn")]
    assert bn.type == "BN" and np.any(net.params["conv1_1_bn"][0].diff)


def test_segnet_inference_reads_its_dense_image_data(tmp_path):
    # segnet_inference.prototxt reads an image and its label map with DenseImageData;
    # here a 32 x 32 pair (its Upsample layers' fixed 360 x 480 sizes cleared: scale 2)
    Image = pytest.importorskip("PIL.Image", reason="Pillow (the images extra) reads the images")
    rng = np.random.RandomState(0)
    Image.fromarray(rng.randint(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "i.png")
    Image.fromarray(rng.randint(0, 11, (32, 32), dtype=np.uint8)).save(tmp_path / "l.png")
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'i.png'} {tmp_path / 'l.png'}\n")
    param = read_net(CORPUS / "segnet/segnet_inference.prototxt", quiet).param
    assert param.layer[0].type == "DenseImageData"
    param.layer[0].dense_image_data_param.source = str(tmp_path / "list.txt")
    for lp in param.layer:
        if lp.type == "Upsample":
            lp.upsample_param.ClearField("upsample_h")
            lp.upsample_param.ClearField("upsample_w")
    net = Net(param, warn=quiet)
    fill_recipe(net)
    net.forward()
    assert net.blobs["data"].shape == (1, 3, 32, 32) and net.blobs["label"].shape == (1, 1, 32, 32)
    assert net.blobs["label"].data.max() <= 10
    assert net.blobs["prob"].shape == (1, 11, 32, 32)
    assert all(np.isfinite(b.data).all() for b in net.blobs.values())


def test_enet_forward_backward():
    # ENet halves the input 3 times and unpools back: 32 x 64 instead of 512 x 1024
    param = read_net(CORPUS / "enet/enet_deploy_final.prototxt", quiet).param
    net = run_forward_backward(param, {"data": image(1, 3, 32, 64)})
    out = net.outputs[0]
    assert net.blobs[out].shape == (1, 19, 32, 64)
    assert np.any(net.blobs["data"].diff)
    types = {layer.type for layer in net.layers}
    assert {"BN", "Upsample", "PReLU", "Deconvolution"} <= types


def test_enet_deploy_with_its_python_dropout_layers():
    # enet_deploy.prototxt (before BN merging): BN in LEARN mode and ENet's own Python
    # spatial-dropout layers, run by netrun's built-in (no --allow-python-layers)
    param = read_net(CORPUS / "enet/enet_deploy.prototxt", quiet).param
    assert sum(lp.type == "Python" for lp in param.layer) == 27
    net = run_forward_backward(param, {"data": image(1, 3, 32, 64)})
    assert net.blobs[net.outputs[0]].shape == (1, 19, 32, 64)
    assert np.any(net.blobs["data"].diff)
    res = CliRunner().invoke(main, ["forward", str(CORPUS / "enet/enet_deploy.prototxt"),
                                    "--input-shape", "data=1,3,32,64", "-q"])
    assert res.exit_code == 0, res.output
    assert res.stderr.count("built-in spatial dropout") == 1


def test_faster_rcnn_forward_backward():
    # the test prototxt: inputs data and im_info = (height, width, scale); its Python
    # proposal layer runs netrun's built-in (no --allow-python-layers)
    param = read_net(CORPUS / "faster_rcnn/ZF_faster_rcnn_end2end_test.prototxt", quiet).param
    h, w = 96, 128
    net = run_forward_backward(param, {"data": image(1, 3, h, w),
                                       "im_info": np.array([[h, w, 1.0]], np.float32)})
    rois = net.blobs["rois"].data
    assert rois.shape[1] == 5 and 1 <= len(rois) <= 300
    assert (rois[:, 0] == 0).all() and (rois[:, 1:] >= 0).all()
    assert (rois[:, 3] <= w - 1).all() and (rois[:, 4] <= h - 1).all()
    assert net.blobs["cls_prob"].shape == (len(rois), 21)
    assert net.blobs["cls_prob"].data.sum(axis=1) == pytest.approx(np.ones(len(rois)), rel=1e-5)
    assert net.blobs["bbox_pred"].shape == (len(rois), 84)
    assert np.any(net.blobs["conv5"].diff) and np.any(net.params["conv1"][0].diff)
    # no gradient through the proposals (as the Python layer): the RPN head gets none
    assert not np.any(net.params["rpn_cls_score"][0].diff)


def test_faster_rcnn_cli_warns_about_the_built_in(tmp_path):
    res = CliRunner().invoke(main, [
        "forward", str(CORPUS / "faster_rcnn/ZF_faster_rcnn_end2end_test.prototxt"),
        "--input-shape", "data=1,3,64,80", "-q"])
    assert res.exit_code == 0, res.output
    assert "built-in proposal layer" in res.stderr


@pytest.mark.parametrize("rel", FORK_NETS)
def test_fork_nets_read(rel):
    src = read_net(CORPUS / rel, quiet)
    assert len(src.param.layer) > 10


# segnet_inference's data layer reads files: its tops become inputs (--input-shape)
SEGNET_INPUTS = ["--input-shape", "data=1,3,360,480", "--input-shape", "label=1,1,360,480"]


@pytest.mark.parametrize("rel,extra", [
    (r, SEGNET_INPUTS if r == "segnet/segnet_inference.prototxt" else []) for r in FORK_NETS])
def test_summary_and_draw(rel, extra, tmp_path):
    runner = CliRunner()
    path = str(CORPUS / rel)
    res = runner.invoke(main, ["summary", path, *extra])
    assert res.exit_code == 0, res.output
    src = read_net(path, quiet)
    fork_types = {lp.type for lp in src.param.layer} & {
        "BN", "Upsample", "ShuffleChannel", "ConvolutionDepthwise", "Normalize", "Permute",
        "PriorBox", "DetectionOutput", "ROIPooling"}
    assert fork_types
    for t in fork_types:
        assert t in res.stdout
    dot = tmp_path / "net.dot"
    res = runner.invoke(main, ["draw", path, str(dot), "-q", *extra])
    assert res.exit_code == 0, res.output
    text = dot.read_text()
    assert text.startswith("digraph") and all(t in text for t in fork_types)
