"""The Caffe forks' layers, one at a time: hand-computed values from each fork's
formulas, and Caffe's gradient check where the layer has a backward.  (Whole fork nets:
tests/test_fork_nets.py; against OpenCV: tests/test_forks_opencv.py.)"""
import numpy as np
import pytest

from layer_helpers import build_layer, forward_copies
from netrun.errors import LayerError, NetrunError
from netrun.layers import layer_class
from netrun.layers.rcnn import generate_anchors
from netrun.tools.gradcheck import check_layer


def gradcheck(text, arrays, ntop=1, init=None, **kw):
    layer, bottom, top, _ = build_layer(text, arrays, ntop=ntop, init_params=init)
    result = check_layer(layer, arrays, [f"b{i}" for i in range(len(arrays))], ntop, **kw)
    assert result["status"] == "pass", result
    return result


def rand(*shape, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, shape)


# -- BN (SegNet / ENet) --------------------------------------------------------------------
BN_INF = 'name: "bn" type: "BN" bn_param { bn_mode: INFERENCE }'
BN_LEARN = 'name: "bn" type: "BN" bn_param { scale_filler { type: "constant" value: 1 } }'


def _bn_params(blobs):
    blobs[0].data[...] = np.array([0.5, 2.0, -1.0]).reshape(1, 3, 1, 1)
    blobs[1].data[...] = np.array([0.1, -0.2, 0.3]).reshape(1, 3, 1, 1)


def test_bn_inference_is_scale_and_shift():
    x = np.arange(24, dtype=float).reshape(2, 3, 2, 2)
    layer, bottom, top, _ = build_layer(BN_INF, [x], init_params=_bn_params)
    (y,) = forward_copies(layer, bottom, top)
    # y = s_c x + b_c: channel 1 of image 0 holds 4..7
    assert y[0, 1].ravel().tolist() == pytest.approx([2 * v - 0.2 for v in (4, 5, 6, 7)])
    assert y[1, 2, 0, 0] == pytest.approx(-1.0 * 20 + 0.3)


def test_bn_learn_uses_batch_statistics():
    # channel 0 holds 1, 3 (image 0) and 5, 7 (image 1): mean 4, E[x^2] - mean^2 = 5
    x = np.zeros((2, 3, 1, 2))
    x[0, 0] = [1, 3]
    x[1, 0] = [5, 7]
    layer, bottom, top, _ = build_layer(BN_LEARN, [x], ntop=3, init_params=_bn_params)
    y, mean, var = forward_copies(layer, bottom, top)
    sigma = np.sqrt(5 + 1e-9)
    assert y[:, 0].ravel() == pytest.approx(0.5 * (np.array([1, 3, 5, 7]) - 4) / sigma + 0.1)
    assert mean.ravel() == pytest.approx([4, 0, 0])
    assert var.ravel() == pytest.approx([5, 0, 0])
    assert y[:, 1] == pytest.approx(np.full((2, 1, 2), -0.2))     # var 0: (x - mu) = 0


@pytest.mark.parametrize("text", [BN_INF, BN_LEARN], ids=["inference", "learn"])
def test_bn_gradient(text):
    gradcheck(text, [rand(2, 3, 2, 3)], init=_bn_params)


# -- Upsample (SegNet / ENet) -----------------------------------------------------------------
def test_upsample_places_values_at_the_mask():
    x = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    mask = np.array([[[[0, 3], [9, 14]]]], dtype=float)
    layer, bottom, top, _ = build_layer(
        'name: "up" type: "Upsample" upsample_param { scale: 2 }', [x, mask])
    (y,) = forward_copies(layer, bottom, top)
    want = np.zeros(16)
    want[[0, 3, 9, 14]] = [1, 2, 3, 4]
    assert y.shape == (1, 1, 4, 4) and y.ravel().tolist() == want.tolist()
    top[0].diff[...] = np.arange(16.0).reshape(1, 1, 4, 4)
    layer.backward(top, [True, False], bottom)
    assert bottom[0].diff.ravel().tolist() == [0, 3, 9, 14]      # dx = dy[mask]


@pytest.mark.parametrize("param,shape", [
    ("scale: 2", (6, 8)),
    ("scale: 3", (9, 12)),
    ("scale: 2 pad_out_h: true", (5, 8)),
    ("scale_h: 2 scale_w: 3", (6, 12)),
    ("upsample_h: 5 upsample_w: 7", (5, 7)),
])
def test_upsample_output_size(param, shape):
    x = np.ones((1, 2, 3, 4))
    layer, bottom, top, _ = build_layer(
        f'name: "up" type: "Upsample" upsample_param {{ {param} }}', [x, np.zeros_like(x)])
    assert top[0].shape == (1, 2) + shape


def test_upsample_mask_out_of_range():
    x = np.ones((1, 1, 1, 1))
    layer, bottom, top, _ = build_layer(
        'name: "up" type: "Upsample" upsample_param { scale: 2 }', [x, np.full_like(x, 4)])
    with pytest.raises(LayerError, match="outside the 2x2 output"):
        layer.forward(bottom, top)


def test_upsample_unpools_a_max_pooling():
    # SegNet's pairing: Pooling's mask top drives the Upsample
    x = rand(1, 2, 4, 6)
    pool, pb, pt, _ = build_layer(
        'name: "p" type: "Pooling" pooling_param { pool: MAX kernel_size: 2 stride: 2 }',
        [x], ntop=2)
    pooled, mask = forward_copies(pool, pb, pt)
    up, ub, ut, _ = build_layer('name: "up" type: "Upsample" upsample_param { scale: 2 }',
                                [pooled, mask])
    (y,) = forward_copies(up, ub, ut)
    blocks = x.reshape(1, 2, 2, 2, 3, 2).transpose(0, 1, 2, 4, 3, 5).reshape(1, 2, 2, 3, 4)
    keep = blocks == blocks.max(axis=-1, keepdims=True)
    want = np.where(keep, blocks, 0).reshape(1, 2, 2, 3, 2, 2).transpose(0, 1, 2, 4, 3, 5)
    assert y == pytest.approx(want.reshape(1, 2, 4, 6))


def test_upsample_repeated_mask_gives_the_gradient_to_the_written_value():
    x = np.array([[[[1.0, 2.0]]]])
    mask = np.array([[[[1, 1]]]], dtype=float)
    layer, bottom, top, warns = build_layer(
        'name: "up" type: "Upsample" upsample_param { upsample_h: 2 upsample_w: 2 }', [x, mask])
    (y,) = forward_copies(layer, bottom, top)
    assert y.ravel().tolist() == [0, 2, 0, 0]                 # the later value wins
    top[0].diff[...] = 1
    layer.backward(top, [True, False], bottom)
    assert bottom[0].diff.ravel().tolist() == [0, 1]
    assert any("repeated indices" in w for w in warns)


def test_upsample_gradient():
    x = rand(1, 2, 2, 3)
    mask = np.array([0, 3, 5, 12, 14, 23] * 2, dtype=float).reshape(1, 2, 2, 3)
    gradcheck('name: "up" type: "Upsample" upsample_param { scale: 2 }', [x, mask])


# -- ShuffleChannel / ConvolutionDepthwise (ShuffleNet) -----------------------------------------
def test_shuffle_channel_order():
    x = np.arange(6.0).reshape(1, 6, 1, 1)
    layer, bottom, top, _ = build_layer(
        'name: "s" type: "ShuffleChannel" shuffle_channel_param { group: 2 }', [x])
    (y,) = forward_copies(layer, bottom, top)
    assert y.ravel().tolist() == [0, 3, 1, 4, 2, 5]
    layer3, b3, t3, _ = build_layer(
        'name: "s" type: "ShuffleChannel" shuffle_channel_param { group: 3 }', [x])
    assert forward_copies(layer3, b3, t3)[0].ravel().tolist() == [0, 2, 4, 1, 3, 5]


def test_shuffle_channel_gradient():
    gradcheck('name: "s" type: "ShuffleChannel" shuffle_channel_param { group: 3 }',
              [rand(2, 6, 2, 2)])


def test_shuffle_channel_group_must_divide():
    with pytest.raises(LayerError, match="not a multiple of group 4"):
        build_layer('name: "s" type: "ShuffleChannel" shuffle_channel_param { group: 4 }',
                    [rand(1, 6, 2, 2)])


DW = ('name: "dw" type: "ConvolutionDepthwise" convolution_param {{ num_output: {n} '
      'kernel_size: 3 pad: 1 stride: {s} weight_filler {{ type: "gaussian" }} '
      'bias_filler {{ type: "gaussian" }} }}')


@pytest.mark.parametrize("n,s", [(4, 1), (8, 2)])
def test_depthwise_is_convolution_with_group_channels(n, s):
    x = rand(2, 4, 5, 5)
    dw, db, dt, _ = build_layer(DW.format(n=n, s=s), [x])
    conv_text = DW.format(n=n, s=s).replace('"ConvolutionDepthwise"', '"Convolution"')
    conv_text = conv_text.replace("kernel_size", "group: 4 kernel_size")
    conv, cb, ct, _ = build_layer(conv_text, [x])
    assert dw.blobs[0].shape == (n, 1, 3, 3)
    for mine, theirs in zip(conv.blobs, dw.blobs):
        mine.data[...] = theirs.data
    assert forward_copies(dw, db, dt)[0] == pytest.approx(forward_copies(conv, cb, ct)[0])


def test_depthwise_gradient():
    gradcheck(DW.format(n=4, s=2), [rand(1, 4, 5, 5)])


# -- Normalize / Permute (SSD) ------------------------------------------------------------------
def test_normalize_across_channels():
    x = np.array([3.0, 0.0, 4.0, 1.0]).reshape(1, 2, 1, 2)     # positions (3, 4) and (0, 1)
    layer, bottom, top, _ = build_layer(
        'name: "n" type: "Normalize" norm_param { across_spatial: false channel_shared: false '
        'scale_filler { type: "constant" value: 20 } }', [x])
    (y,) = forward_copies(layer, bottom, top)
    assert layer.blobs[0].shape == (2,)
    assert y.ravel() == pytest.approx([20 * 3 / 5, 0, 20 * 4 / 5, 20 * 1.0], rel=1e-9)


def test_normalize_across_spatial_shared_scale():
    x = np.array([1.0, 2.0, 2.0, 4.0]).reshape(1, 1, 2, 2)    # norm 5
    layer, bottom, top, _ = build_layer('name: "n" type: "Normalize"', [x])
    (y,) = forward_copies(layer, bottom, top)
    assert layer.blobs[0].shape == (1,) and layer.blobs[0].data[0] == 1
    assert y.ravel() == pytest.approx([0.2, 0.4, 0.4, 0.8], rel=1e-9)


@pytest.mark.parametrize("param", [
    "across_spatial: false channel_shared: false",
    "across_spatial: true channel_shared: true",
    "across_spatial: true channel_shared: false",
])
def test_normalize_gradient(param):
    def init(blobs):
        blobs[0].data[...] = np.linspace(0.5, 2.0, blobs[0].count)
    gradcheck(f'name: "n" type: "Normalize" norm_param {{ {param} }}', [rand(2, 3, 2, 2)],
              init=init)


def test_permute():
    x = rand(2, 3, 4, 5)
    layer, bottom, top, _ = build_layer(
        'name: "p" type: "Permute" permute_param { order: 0 order: 2 order: 3 order: 1 }', [x])
    (y,) = forward_copies(layer, bottom, top)
    assert y.shape == (2, 4, 5, 3) and np.array_equal(y, x.transpose(0, 2, 3, 1))
    layer2, b2, t2, _ = build_layer(
        'name: "p" type: "Permute" permute_param { order: 3 }', [x])     # the rest follow
    assert forward_copies(layer2, b2, t2)[0].shape == (5, 2, 3, 4)
    gradcheck('name: "p" type: "Permute" permute_param { order: 0 order: 2 order: 3 order: 1 }',
              [rand(1, 2, 3, 2)])


# -- PriorBox / DetectionOutput (SSD) -----------------------------------------------------------
def test_prior_box_values():
    # one 1x2 feature map cell row on a 20 x 40 image: step 20, centres (10, 10), (30, 10)
    feat, img = np.zeros((1, 1, 1, 2)), np.zeros((1, 3, 20, 40))
    layer, bottom, top, _ = build_layer(
        'name: "pb" type: "PriorBox" prior_box_param { min_size: 4 max_size: 9 '
        'aspect_ratio: 4 flip: true variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 }',
        [feat, img])
    (y,) = forward_copies(layer, bottom, top)
    assert y.shape == (1, 2, 2 * 4 * 4)             # 2 cells x 4 priors (1, sqrt(4 9), 4, 1/4)
    boxes = y[0, 0].reshape(2, 4, 4)
    w = [4, 6, 8, 2]                                   # widths: 4, sqrt(36), 4 sqrt(4), 4 / 2
    h = [4, 6, 2, 8]
    for cell, cx in enumerate((10, 30)):
        for k in range(4):
            want = [(cx - w[k] / 2) / 40, (10 - h[k] / 2) / 20,
                    (cx + w[k] / 2) / 40, (10 + h[k] / 2) / 20]
            assert boxes[cell, k] == pytest.approx(want, abs=1e-7)
    assert y[0, 1].reshape(-1, 4).tolist() == [[0.1, 0.1, 0.2, 0.2]] * 8 or \
        y[0, 1].reshape(-1, 4) == pytest.approx(np.tile([0.1, 0.1, 0.2, 0.2], (8, 1)))


def test_prior_box_clip_step_offset():
    feat, img = np.zeros((1, 1, 2, 2)), np.zeros((1, 3, 10, 10))
    layer, bottom, top, _ = build_layer(
        'name: "pb" type: "PriorBox" prior_box_param { min_size: 8 clip: true step: 4 '
        'offset: 0 }', [feat, img])
    (y,) = forward_copies(layer, bottom, top)
    boxes = y[0, 0].reshape(4, 4)
    # centres (0, 0), (4, 0), (0, 4), (4, 4); half size 4; clipped to [0, 1]
    assert boxes[0] == pytest.approx([0, 0, 0.4, 0.4])
    assert boxes[3] == pytest.approx([0, 0, 0.8, 0.8])
    assert y[0, 1] == pytest.approx(np.full(16, 0.1))


DET = ('name: "det" type: "DetectionOutput" detection_output_param {{ num_classes: 3 '
       'background_label_id: 0 code_type: {code} keep_top_k: {keep} confidence_threshold: 0.1 '
       'nms_param {{ nms_threshold: 0.5 }} }}')


def _priors(boxes, var=(0.1, 0.1, 0.2, 0.2)):
    boxes = np.asarray(boxes, float)
    return np.stack([boxes.ravel(), np.tile(var, len(boxes))])[None]


def test_detection_output_nms_and_keep_top_k():
    prior = _priors([[0.1, 0.1, 0.3, 0.3], [0.11, 0.1, 0.31, 0.3], [0.6, 0.6, 0.9, 0.9]])
    loc = np.zeros((1, 12))                       # zero offsets: the boxes are the priors
    conf = np.array([[0.1, 0.8, 0.1],             # prior 0: class 1
                     [0.2, 0.7, 0.1],             # prior 1: class 1, overlaps prior 0 (IoU 0.9)
                     [0.3, 0.3, 0.4]]).reshape(1, 9)
    layer, bottom, top, _ = build_layer(DET.format(code="CORNER", keep=-1), [loc, conf, prior])
    (y,) = forward_copies(layer, bottom, top)
    rows = y.reshape(-1, 7)
    # class 1: prior 0 (0.8) kept, prior 1 suppressed; prior 2 (0.3) kept; class 2: all
    # three > 0.1: prior 2 (0.4), prior 0 (0.1 is not > 0.1), prior 1 (0.1 no)
    want = [[0, 1, 0.8, 0.1, 0.1, 0.3, 0.3], [0, 1, 0.3, 0.6, 0.6, 0.9, 0.9],
            [0, 2, 0.4, 0.6, 0.6, 0.9, 0.9]]
    assert rows == pytest.approx(np.array(want), abs=1e-6)
    layer, bottom, top, _ = build_layer(DET.format(code="CORNER", keep=2), [loc, conf, prior])
    rows = forward_copies(layer, bottom, top)[0].reshape(-1, 7)
    assert rows == pytest.approx(np.array([want[0], want[2]]), abs=1e-6)


def test_detection_output_center_size_decoding_and_empty():
    prior = _priors([[0.2, 0.2, 0.6, 0.4]])
    loc = np.array([[1.0, -1.0, 0.5, 0.0]])
    conf = np.array([[0.0, 0.9, 0.1]])
    layer, bottom, top, _ = build_layer(DET.format(code="CENTER_SIZE", keep=-1), [loc, conf, prior])
    rows = forward_copies(layer, bottom, top)[0].reshape(-1, 7)
    # centre (0.4, 0.3) + (0.1 * 1 * 0.4, 0.1 * -1 * 0.2); size (0.4 e^0.1, 0.2)
    cx, cy, w, h = 0.44, 0.28, 0.4 * np.exp(0.1), 0.2
    assert rows[0] == pytest.approx([0, 1, 0.9, cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2],
                                    abs=1e-6)
    assert len(rows) == 1                        # class 2's 0.1 is not above the threshold
    conf[:] = [[1.0, 0.0, 0.0]]
    layer, bottom, top, _ = build_layer(DET.format(code="CENTER_SIZE", keep=-1), [loc, conf, prior])
    rows = forward_copies(layer, bottom, top)[0].reshape(-1, 7)
    assert rows.tolist() == [[0, -1, -1, -1, -1, -1, -1]]     # the fork's "no detection" row


# -- ROIPooling / SmoothL1Loss / proposals (Faster R-CNN) -----------------------------------------
ROI = ('name: "roi" type: "ROIPooling" roi_pooling_param { pooled_h: 2 pooled_w: 2 '
       'spatial_scale: 0.5 }')


def test_roi_pooling_values():
    x = np.arange(36.0).reshape(1, 1, 6, 6)
    rois = np.array([[0, 0, 0, 7, 7],            # scaled: (0, 0)-(3.5 -> 4, 4): 5x5 cells
                     [0, 2, 2, 2, 2]])           # one cell (1, 1)
    layer, bottom, top, _ = build_layer(ROI, [x, rois])
    (y,) = forward_copies(layer, bottom, top)
    # roi 0: bins of 2.5 cells: rows [0, 3) and [2, 5), same columns
    assert y[0, 0].tolist() == [[14, 16], [26, 28]]
    assert y[1, 0].tolist() == [[7, 7], [7, 7]]
    top[0].diff[...] = 1
    layer.backward(top, [True, False], bottom)
    dx = bottom[0].diff.ravel()
    assert dx[7] == 4 and dx[14] == 1 and dx[28] == 1 and dx.sum() == 8


def test_roi_pooling_gradient():
    x = rand(2, 2, 5, 5)
    rois = np.array([[0, 0, 0, 6, 4], [1, 2, 2, 9, 9]], float)
    gradcheck(ROI, [x, rois], stepsize=1e-4, threshold=1e-2)


def test_smooth_l1_loss_values():
    p = np.array([[0.0, 0.5, 3.0]])
    t = np.zeros((1, 3))
    layer, bottom, top, _ = build_layer(
        'name: "l" type: "SmoothL1Loss" smooth_l1_loss_param { sigma: 2 }', [p, t])
    (loss,) = forward_copies(layer, bottom, top)
    # sigma^2 = 4: |0.5| >= 1/4 -> 0.5 - 0.125; 3 -> 3 - 0.125
    assert float(loss) == pytest.approx(0.375 + 2.875)
    w_in, w_out = np.array([[1.0, 0.1, 1.0]]), np.array([[1.0, 1.0, 2.0]])
    layer, bottom, top, _ = build_layer('name: "l" type: "SmoothL1Loss"', [p, t, w_in, w_out])
    (loss,) = forward_copies(layer, bottom, top)
    assert float(loss) == pytest.approx(0.5 * 0.05 ** 2 + 2 * 2.5)


def test_smooth_l1_loss_gradient():
    p, t = rand(2, 3, 2, 2), rand(2, 3, 2, 2, seed=1)
    w_in = np.abs(rand(2, 3, 2, 2, seed=2))
    w_out = np.abs(rand(2, 3, 2, 2, seed=3))
    layer, bottom, top, _ = build_layer('name: "l" type: "SmoothL1Loss"', [p, t, w_in, w_out])
    result = check_layer(layer, [p, t, w_in, w_out], ["p", "t", "wi", "wo"], 1,
                         stepsize=1e-4, threshold=1e-3)
    assert result["status"] == "pass", result


def test_anchors_are_py_faster_rcnn_s():
    # the MATLAB table quoted in py-faster-rcnn's lib/rpn/generate_anchors.py, which is
    # 1-based: the Python code's anchors are each of its values minus 1
    matlab = [[-83, -39, 100, 56], [-175, -87, 192, 104], [-359, -183, 376, 200],
              [-55, -55, 72, 72], [-119, -119, 136, 136], [-247, -247, 264, 264],
              [-35, -79, 52, 96], [-79, -167, 96, 184], [-167, -343, 184, 360]]
    assert generate_anchors().tolist() == (np.array(matlab) - 1).tolist()


PROPOSAL = ('name: "proposal" type: "Python" bottom: "s" bottom: "d" bottom: "i" top: "rois" '
            'python_param { module: "rpn.proposal_layer" layer: "ProposalLayer" '
            "param_str: \"'feat_stride': 16\" }")


def test_proposal_layer_is_built_in():
    from netrun.layers import Context, layer_class_for
    from google.protobuf import text_format
    from netrun.proto import caffe_pb2
    lp = text_format.Parse(PROPOSAL, caffe_pb2.LayerParameter())
    cls = layer_class_for(lp)
    assert cls is not layer_class("Python") and cls.__name__ == "Proposal"
    A, H, W = 9, 3, 4
    scores = np.zeros((1, 2 * A, H, W))
    scores[0, A + 3, 1, 2] = 0.9                  # anchor 3 (the 128 square) at cell (1, 2)
    scores[0, A + 3, 1, 1] = 0.8                  # its neighbour: clipped to the same box
    scores[0, A + 0, 0, 0] = 0.5                  # anchor 0 (-84, -40, 99, 55) at (0, 0)
    deltas = np.zeros((1, 4 * A, H, W))
    info = np.array([[48.0, 64.0, 1.0]])
    warns = []
    layer = cls(lp, Context(caffe_pb2.TEST, dtype=np.float64, warn=warns.append))
    from netrun.blob import Blob
    bottom = []
    for a in (scores, deltas, info):
        b = Blob(a.shape, np.float64)
        b.data[...] = a
        bottom.append(b)
    top = [Blob((), np.float64)]
    layer.setup(bottom, top)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    rois = top[0].data
    assert any("built-in proposal layer" in w for w in warns)
    # best: anchor 3 (-56, -56, 71, 71) shifted by (32, 16), clipped to the 64 x 48 image
    assert rois[0].tolist() == [0, 0, 0, 63, 47]
    assert (rois[:, 0] == 0).all() and rois.shape[1] == 5
    # the 0.8 box is clipped to the same rectangle: suppressed
    assert not any(r[1:].tolist() == [0, 0, 63, 47] for r in rois[1:])


def test_unknown_fork_type_names_its_fork(tmp_path):
    from netrun import Net
    net = tmp_path / "f.prototxt"
    net.write_text('layer { name: "d" type: "Input" top: "d" input_param { shape { dim: 1 } } }\n'
                   'layer { name: "m" type: "MultiBoxLoss" bottom: "d" top: "l" }\n')
    with pytest.raises(NetrunError, match=r'"MultiBoxLoss" .*SSD \(weiliu89/caffe'):
        Net(str(net))


# -- the schema: the forks' field numbers, and the numbers BVLC keeps ----------------------------
@pytest.mark.parametrize("name,number", [
    ("bn_param", 45), ("dense_image_data_param", 46), ("shuffle_channel_param", 164),
    ("multibox_loss_param", 201), ("permute_param", 202), ("prior_box_param", 203),
    ("detection_output_param", 204), ("norm_param", 206), ("roi_pooling_param", 8266711),
    ("smooth_l1_loss_param", 8266712),
    # SegNet's 137 and ENet's 147 are BVLC's embed_param and swish_param: BVLC wins
    ("upsample_param", 5137), ("embed_param", 137), ("swish_param", 147), ("tile_param", 138),
])
def test_fork_field_numbers(name, number):
    from netrun.proto import caffe_pb2
    assert caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name[name].number == number


def _field_bytes(number, payload):
    def varint(n):
        out = b""
        while True:
            byte, n = n & 0x7F, n >> 7
            if not n:
                return out + bytes([byte])
            out += bytes([byte | 0x80])
    return varint(number << 3 | 2) + varint(len(payload)) + payload


@pytest.mark.parametrize("number", [137, 147], ids=["segnet", "enet"])
def test_fork_caffemodel_upsample_param_is_read_back(number, tmp_path):
    """A SegNet (137) or ENet (147) caffemodel: the Upsample layer's parameters come back
    exactly, although BVLC's embed_param (137, whose field 3 is a bool where SegNet keeps
    scale_w) or swish_param (147) own those numbers; other layers keep BVLC's meaning."""
    from netrun.io.caffemodel import read_weights
    from netrun.proto import caffe_pb2
    up = caffe_pb2.UpsampleParameter(scale_h=2, scale_w=3, pad_out_h=True, upsample_w=30)
    emb = caffe_pb2.EmbedParameter(num_output=5, input_dim=7, bias_term=False)
    raw = b""
    for name, typ, num, payload in [("up", "Upsample", number, up.SerializeToString()),
                                    ("emb", "Embed", 137, emb.SerializeToString())]:
        layer = caffe_pb2.LayerParameter(name=name, type=typ).SerializeToString()
        raw += _field_bytes(100, layer + _field_bytes(num, payload))
    path = tmp_path / "fork.caffemodel"
    path.write_bytes(raw)
    plain = caffe_pb2.NetParameter.FromString(raw)
    if number == 137:                        # read as BVLC's, scale_w is lost
        assert plain.layer[0].embed_param.bias_term is True
    param = read_weights(str(path))
    assert param.layer[0].upsample_param == up
    assert not param.layer[0].HasField("embed_param") and not param.layer[0].HasField("swish_param")
    assert param.layer[1].embed_param == emb


def test_netrun_layers_lists_the_forks():
    from click.testing import CliRunner
    from netrun.cli import main
    res = CliRunner().invoke(main, ["layers"])
    assert res.exit_code == 0
    lines = {ln.split()[0]: ln for ln in res.stdout.splitlines()}
    for t, fork in [("BN", "SegNet/ENet"), ("Upsample", "SegNet/ENet"),
                    ("ShuffleChannel", "ShuffleNet"), ("ConvolutionDepthwise", "ShuffleNet"),
                    ("Normalize", "SSD"), ("Permute", "SSD"), ("PriorBox", "SSD"),
                    ("DetectionOutput", "SSD"), ("ROIPooling", "Faster R-CNN"),
                    ("SmoothL1Loss", "Faster R-CNN")]:
        assert f"fork: {fork}" in lines[t], lines[t]
    assert "rpn.proposal_layer.ProposalLayer" in lines["Python"]
    assert lines["Convolution"] == "Convolution"            # BVLC types: just the name
    res = CliRunner().invoke(main, ["layers", "--json"])
    assert "PriorBox" in res.stdout


SPATIAL = ('name: "drop" type: "Python" python_param {{ module: "spatial_dropout" '
           'layer: "SpatialDropoutLayer" param_str: "{{\'phase\': \'{phase}\', \'p\': \'0.25\'}}" }}')


def test_enet_spatial_dropout_is_built_in():
    from google.protobuf import text_format
    from netrun.blob import Blob
    from netrun.layers import Context, layer_class_for
    from netrun.proto import caffe_pb2
    x = rand(3, 8, 2, 2) + 2

    def run(phase, seed=0):
        lp = text_format.Parse(SPATIAL.format(phase=phase), caffe_pb2.LayerParameter())
        layer = layer_class_for(lp)(lp, Context(caffe_pb2.TEST, np.float64,
                                                np.random.default_rng(seed)))
        b, t = Blob(x.shape, np.float64), Blob((), np.float64)
        b.data[...] = x
        layer.setup([b], [t])
        layer.reshape([b], [t])
        layer.forward([b], [t])
        return layer, t.data.copy()
    _, y = run("TEST")
    assert y == pytest.approx(x / 0.75)                # the module scales in TEST too
    _, y = run("TRAIN")
    kept = (y != 0).all(axis=(2, 3))
    dropped = (y == 0).all(axis=(2, 3))
    assert (kept | dropped).all() and dropped.any() and kept.any()     # whole channels
    assert y[kept] == pytest.approx((x / 0.75)[kept])
    layer, _ = run("TRAIN")
    result = check_layer(layer, [x], ["x"], 1)
    assert result["status"] == "pass", result


def test_detection_output_corner_size_decoding():
    prior = _priors([[0.2, 0.2, 0.6, 0.4]])
    loc = np.array([[1.0, -1.0, 0.5, 0.0]])
    conf = np.array([[0.0, 0.9, 0.1]])
    layer, bottom, top, _ = build_layer(DET.format(code="CORNER_SIZE", keep=-1),
                                        [loc, conf, prior])
    rows = forward_copies(layer, bottom, top)[0].reshape(-1, 7)
    # prior + v loc (w, h, w, h), w = 0.4, h = 0.2
    assert rows[0] == pytest.approx([0, 1, 0.9, 0.24, 0.18, 0.64, 0.4], abs=1e-6)


def test_dense_image_data(tmp_path):
    Image = pytest.importorskip("PIL.Image", reason="Pillow (the images extra) reads the images")
    rgb = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    lab = (np.arange(24, dtype=np.uint8) % 5).reshape(4, 6)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    Image.fromarray(lab).save(tmp_path / "a_l.png")
    (tmp_path / "list.txt").write_text("a.png a_l.png\n")
    text = ('name: "d" type: "DenseImageData" top: "data" top: "label" '
            'transform_param { scale: 0.5 } dense_image_data_param { '
            f'source: "{tmp_path}/list.txt" root_folder: "{tmp_path}/" batch_size: 2 EXTRA }}')

    layer, bottom, top, _ = build_layer(text.replace("EXTRA", ""), [], ntop=2)
    data, label = forward_copies(layer, bottom, top)
    assert data.shape == (2, 3, 4, 6) and label.shape == (2, 1, 4, 6)
    assert data[1] == pytest.approx(0.5 * rgb[..., ::-1].transpose(2, 0, 1))   # BGR, scaled
    assert label[0, 0].tolist() == lab.tolist()                                  # as stored
    layer, bottom, top, _ = build_layer(
        text.replace("EXTRA", "new_height: 2 new_width: 3 crop_height: 2 crop_width: 2"), [], ntop=2)
    data, label = forward_copies(layer, bottom, top)
    assert data.shape == (2, 3, 2, 2) and label.shape == (2, 1, 2, 2)
    near = lab[::2, ::2]                               # INTER_NEAREST 4x6 -> 2x3
    assert any(label[0, 0].tolist() == near[:, x:x + 2].tolist() for x in (0, 1))
    with pytest.raises(LayerError, match="would transform the image"):
        build_layer(text.replace("EXTRA", "").replace("scale: 0.5", "mirror: true"), [], ntop=2)


def test_segnet_class_weighting():
    # SegNet/ENet's loss_param: -sum w[l] log p_l / (number of positions)
    x = rand(1, 3, 2, 2)
    lab = np.array([0, 2, 2, 1], float).reshape(1, 1, 2, 2)
    w = [0.5, 2.0, 4.0]
    text = ('name: "l" type: "SoftmaxWithLoss" loss_param { weight_by_label_freqs: true '
            'class_weighting: 0.5 class_weighting: 2 class_weighting: 4 }')
    layer, bottom, top, _ = build_layer(text, [x, lab])
    (loss,) = forward_copies(layer, bottom, top)
    p = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
    terms = [-w[int(l)] * np.log(p[0, int(l)].ravel()[k]) for k, l in enumerate(lab.ravel())]
    assert float(loss) == pytest.approx(sum(terms) / 4)
    result = check_layer(layer, [x, lab], ["x", "label"], 1)
    assert result["status"] == "pass", result
    with pytest.raises(LayerError, match="2 class_weighting values for 3 classes"):
        build_layer(text.replace(" class_weighting: 4", ""), [x, lab])


def test_bayesian_segnet_dropout_samples_in_test():
    x = np.ones((1, 1000))
    text = 'name: "d" type: "Dropout" dropout_param { dropout_ratio: 0.5 %s }'
    layer, bottom, top, _ = build_layer(text % "sample_weights_test: true", [x])
    (y,) = forward_copies(layer, bottom, top)
    assert set(np.unique(y)) == {0.0, 2.0} and 400 < (y == 0).sum() < 600
    layer, bottom, top, _ = build_layer(text % "", [x])
    assert forward_copies(layer, bottom, top)[0].tolist() == x.tolist()     # BVLC: identity


@pytest.mark.parametrize("message,name,number", [
    ("LossParameter", "class_weighting", 4), ("LossParameter", "weight_by_label_freqs", 5003),
    ("LossParameter", "normalization", 3),          # BVLC's; SegNet/ENet had their bool here
    ("DropoutParameter", "scale_train", 2),         # Faster R-CNN's ...
    ("DropoutParameter", "sample_weights_test", 5002),   # ... SegNet/ENet's 2 moves
])
def test_fork_fields_in_bvlc_messages(message, name, number):
    from netrun.proto import caffe_pb2
    assert getattr(caffe_pb2, message).DESCRIPTOR.fields_by_name[name].number == number


@pytest.mark.parametrize("text", [BN_INF, BN_LEARN,
                                  'name: "n" type: "Normalize" norm_param { channel_shared: false }'])
def test_in_place_gives_the_same_gradients(text):
    x = rand(2, 3, 2, 2)
    dy = rand(2, 3, 2, 2, seed=5)
    grads = []
    for in_place in (False, True):
        layer, bottom, top, _ = build_layer(text, [x], in_place=in_place,
                                            init_params=_bn_params if "BN" in text else None)
        layer.forward(bottom, top)
        y = top[0].data.copy()
        top[0].diff[...] = dy
        layer.backward(top, [True], bottom)
        grads.append((y, bottom[0].diff.copy(), [b.diff.copy() for b in layer.blobs]))
    (y0, d0, p0), (y1, d1, p1) = grads
    assert y1 == pytest.approx(y0) and d1 == pytest.approx(d0)
    for a, b in zip(p0, p1):
        assert b == pytest.approx(a)
