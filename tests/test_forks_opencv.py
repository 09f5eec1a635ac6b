"""The fork nets OpenCV runs give OpenCV's outputs.

OpenCV (``opencv-python-headless<5``, the test extra) implements the SSD, ShuffleNet and
Faster R-CNN fork layers itself, so it is an independent reference.  Both run the same
prototxt with the same weights (recipe-v1 of ../shared/conformance/README.md, filled by
netrun and saved as a caffemodel that OpenCV reads) on the same input; the arrays must
agree at the conformance README's net tolerance, the detections as sets of rows.
"""
import os
import re
from pathlib import Path

import numpy as np
import pytest

from conformance import fill_recipe
from netrun import Net

cv2 = pytest.importorskip("cv2", reason="OpenCV (opencv-python-headless<5, the test extra) "
                                        "is the reference for these fork nets")
CORPUS = Path(os.environ.get("NETRUN_CORPUS",
                             Path(__file__).resolve().parent.parent.parent / "shared" / "corpus"))
if not CORPUS.is_dir():
    pytest.skip(f"corpus folder {CORPUS} does not exist", allow_module_level=True)

RTOL = 1e-3                                    # the README's net_ tolerance


def assert_close(ours, ref, what):
    ours = np.asarray(ours, np.float64).reshape(ref.shape)
    atol = 1e-4 * max(1.0, float(np.abs(ref).max()))
    err = np.abs(ours - ref) - (atol + RTOL * np.abs(ref))
    assert err.max() <= 0, (f"{what}: worst |ours - opencv| exceeds the tolerance by "
                            f"{err.max():.3g} at {np.unravel_index(err.argmax(), ref.shape)}")


def assert_same_rows(ours, ref, what):
    """Detections (rows image, label, score, box) as sets: every row of one matches a
    distinct row of the other within the tolerance."""
    ours = ours.reshape(-1, 7).astype(np.float64)
    ref = ref.reshape(-1, 7).astype(np.float64)
    assert len(ours) == len(ref), f"{what}: {len(ours)} detections, OpenCV {len(ref)}"
    atol = 1e-4 * max(1.0, float(np.abs(ref).max()))
    free = list(range(len(ref)))
    for row in ours[np.lexsort(ours.T[::-1])]:
        hit = [j for j in free if np.all(np.abs(ref[j] - row) <= atol + RTOL * np.abs(ref[j]))]
        assert hit, f"{what}: netrun's detection {row.tolist()} is not among OpenCV's"
        free.remove(hit[0])


def run_both(path, outputs, tmp_path, size=None):
    net = Net(str(path), phase="test", warn=lambda m: None)
    name = net.inputs[0]
    if size is not None:
        net.blobs[name].reshape(size)
        net.reshape()
    fill_recipe(net)
    weights = tmp_path / "recipe.caffemodel"
    net.save(str(weights))
    x = np.random.RandomState(1701).uniform(-1, 1, net.blobs[name].shape).astype(np.float32)
    net.blobs[name].data[...] = x
    net.forward()
    ref = cv2.dnn.readNetFromCaffe(str(path), str(weights))
    ref.setInput(x)
    got = ref.forward(outputs)
    return net, dict(zip(outputs, got))


SSD_OUT = ["mbox_loc", "mbox_conf_flatten", "mbox_priorbox", "detection_out"]


def detection_net(net, layer_name, path):
    """A prototxt with only ``net``'s DetectionOutput layer, its bottoms as inputs."""
    from google.protobuf import text_format
    from netrun.proto import caffe_pb2
    li = net.layer_names.index(layer_name)
    out = caffe_pb2.NetParameter(name="det")
    for name in net.bottom_ids[li]:
        lp = out.layer.add(name=name, type="Input")
        lp.top.append(name)
        lp.input_param.shape.add().dim.extend(net.blobs[name].shape)
    lp = out.layer.add()
    lp.CopyFrom(net.layers[li].param)
    lp.ClearField("include")
    path.write_text(text_format.MessageToString(out))
    return list(net.bottom_ids[li])


@pytest.mark.parametrize("rel,threshold", [
    # with random weights no class reaches MobileNet-SSD's 0.25 (the 21 softmax scores are
    # near 1/21): 0.05 keeps detections to compare (keep_top_k keeps 100 of them)
    ("ssd/MobileNetSSD_deploy.prototxt", 0.05),
    # 2 classes: the face scores spread over (0, 1]; the prototxt's own threshold
    ("ssd/res10_300x300_ssd_face_deploy.prototxt", None),
])
def test_ssd_matches_opencv(rel, threshold, tmp_path):
    """The whole net's boxes, scores and priors at the net tolerance; then the detections:
    OpenCV's DetectionOutput given netrun's very inputs (so that scores equal or nearly
    equal at a top_k cut, which the face net has by the hundred, cannot be ordered
    differently by float rounding) must give netrun's rows."""
    path = CORPUS / rel
    if threshold is not None:
        text = re.sub(r"confidence_threshold:\s*[0-9.]+", f"confidence_threshold: {threshold}",
                      path.read_text())
        path = tmp_path / path.name
        path.write_text(text)
    net, ref = run_both(path, SSD_OUT[:3], tmp_path)
    for name in SSD_OUT[:3]:
        assert_close(net.blobs[name].data, ref[name], name)
    det_path = tmp_path / "det.prototxt"
    inputs = detection_net(net, "detection_out", det_path)
    det = cv2.dnn.readNetFromCaffe(str(det_path))
    for name in inputs:
        det.setInput(net.blobs[name].data, name)
    theirs = det.forward("detection_out").reshape(-1, 7)
    theirs = theirs[theirs[:, 2] > 0]          # OpenCV pads its output with zero rows
    ours = net.blobs["detection_out"].data.reshape(-1, 7)
    assert len(ours) >= 50 and ours[0, 1] >= 1  # real detections, not the empty marker
    assert_same_rows(ours, theirs, "detection_out")


@pytest.mark.parametrize("rel", ["shufflenet/shufflenet_1x_g3_deploy.prototxt",
                                 "shufflenet/shufflenet_v2_1x_deploy.prototxt"])
def test_shufflenet_matches_opencv(rel, tmp_path):
    # global pooling is a fixed 7x7 kernel: the 224 x 224 input the prototxt declares
    net, ref = run_both(CORPUS / rel, ["fc1000"], tmp_path)
    assert_close(net.blobs["fc1000"].data, ref["fc1000"], "fc1000")
    assert np.abs(ref["fc1000"]).max() > 0.1


ROI_NET = """name: "roi"
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 2 dim: 3 dim: 9 dim: 13 }} }} }}
layer {{ name: "rois" type: "Input" top: "rois" input_param {{ shape {{ dim: {r} dim: 5 }} }} }}
layer {{ name: "pool" type: "ROIPooling" bottom: "data" bottom: "rois" top: "pool"
        roi_pooling_param {{ pooled_h: 3 pooled_w: 2 spatial_scale: 0.25 }} }}
"""


def test_roi_pooling_matches_opencv(tmp_path):
    rng = np.random.RandomState(3)
    x = rng.uniform(-1, 1, (2, 3, 9, 13)).astype(np.float32)
    rois = np.array([[0, 0, 0, 51, 35], [1, 4, 6, 30, 20], [0, 10.5, 2, 11, 3],
                     [1, 40, 30, 70, 50], [0, 6, 6, 6, 6], [1, 1.9, 2.1, 17.3, 33.6]],
                    np.float32)
    path = tmp_path / "roi.prototxt"
    path.write_text(ROI_NET.format(r=len(rois)))
    net = Net(str(path), warn=lambda m: None)
    net.blobs["data"].data[...] = x
    net.blobs["rois"].data[...] = rois
    net.forward()
    ref = cv2.dnn.readNetFromCaffe(str(path))
    ref.setInput(x, "data")
    ref.setInput(rois, "rois")
    theirs = ref.forward("pool")
    assert_close(net.blobs["pool"].data, theirs, "pool")


DET_NET = """name: "det"
layer {{ name: "loc" type: "Input" top: "loc" input_param {{ shape {{ dim: 2 dim: {nloc} }} }} }}
layer {{ name: "conf" type: "Input" top: "conf" input_param {{ shape {{ dim: 2 dim: {nconf} }} }} }}
layer {{ name: "prior" type: "Input" top: "prior" input_param {{ shape {{ dim: 1 dim: 2 dim: {nprior} }} }} }}
layer {{ name: "det" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "prior"
        top: "det" detection_output_param {{ num_classes: 4 share_location: {share}
        background_label_id: {bg} code_type: {code} keep_top_k: 30 confidence_threshold: 0.2
        nms_param {{ nms_threshold: 0.45 top_k: 40 }} }} }}
"""


@pytest.mark.parametrize("code,share,bg", [("CENTER_SIZE", "true", 0), ("CORNER", "true", 0),
                                           ("CORNER", "false", 2)])  # (no CORNER_SIZE in OpenCV)
def test_detection_output_matches_opencv(code, share, bg, tmp_path):
    """DetectionOutput alone, both given the same (float32) loc, conf and priors: 2 images,
    60 priors on a 5 x 6 grid with overlapping boxes, 4 classes."""
    rng = np.random.RandomState(7)
    P, C = 60, 4
    L = 1 if share == "true" else C
    cx, cy = np.meshgrid(np.arange(6) / 6 + 0.08, np.arange(5) / 5 + 0.1)
    cx, cy = np.repeat(cx.ravel(), 2), np.repeat(cy.ravel(), 2)
    w = np.tile([0.3, 0.15], 30)
    boxes = np.stack([cx - w / 2, cy - w / 2, cx + w / 2, cy + w / 2], axis=1)
    prior = np.stack([boxes.ravel(), np.tile([0.1, 0.1, 0.2, 0.2], P)])[None].astype(np.float32)
    loc = rng.uniform(-1, 1, (2, P * L * 4)).astype(np.float32)
    conf = rng.dirichlet(np.ones(C), size=(2, P)).reshape(2, -1).astype(np.float32)
    path = tmp_path / "det.prototxt"
    path.write_text(DET_NET.format(nloc=P * L * 4, nconf=P * C, nprior=P * 4, share=share,
                                   bg=bg, code=code))
    net = Net(str(path), warn=lambda m: None)
    for name, value in (("loc", loc), ("conf", conf), ("prior", prior)):
        net.blobs[name].data[...] = value
    net.forward()
    ref = cv2.dnn.readNetFromCaffe(str(path))
    for name, value in (("loc", loc), ("conf", conf), ("prior", prior)):
        ref.setInput(value, name)
    theirs = ref.forward("det").reshape(-1, 7)
    theirs = theirs[theirs[:, 2] > 0]
    ours = net.blobs["det"].data.reshape(-1, 7)
    assert len(ours) > 20 and set(ours[:, 0]) == {0, 1}
    assert bg not in set(ours[:, 1])
    assert_same_rows(ours, theirs, "det")
