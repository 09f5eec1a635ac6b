"""The Faster R-CNN fork's layers (rbgirshick/caffe-fast-rcnn, py-faster-rcnn):
ROIPooling, SmoothL1Loss, and the region proposal layer that py-faster-rcnn writes in
Python (``rpn.proposal_layer.ProposalLayer``), built in so that its nets run without
the user's module.
"""
import ast

import numpy as np

from ..errors import LayerError, check
from ..proto import caffe_pb2
from .base import Layer, register, register_python
from .detection import nms

F32, F64 = np.float32, np.float64


def _c_round(x):
    """C's round(): halves away from zero."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


@register("ROIPooling")
class ROIPooling(Layer):
    """Max pooling of regions of interest (roi_pooling_param pooled_h, pooled_w,
    spatial_scale s).  Bottom 0: features (N, C, H, W); bottom 1: R rois (n, x1, y1, x2,
    y2) in image coordinates.  Top: (R, C, pooled_h, pooled_w).  Per roi (float32):
        (x1', y1', x2', y2') = round(s (x1, y1, x2, y2))   (C round: halves away from 0)
        h = max(y2' - y1' + 1, 1),  bin_h = h / pooled_h  (w likewise)
        rows of output i: [floor(i bin_h) + y1', ceil((i + 1) bin_h) + y1'), clipped
        to [0, H] (columns likewise)
        y = max over the window (first maximum in row-major order); 0 for an empty window
        dx[n, c, argmax] += dy   (summed over the rois)
    """
    exact_bottoms = 2
    exact_tops = 1
    in_place_ok = False

    def setup(self, bottom, top):
        p = self.param.roi_pooling_param
        self.ph, self.pw = int(p.pooled_h), int(p.pooled_w)
        check(self.ph > 0 and self.pw > 0, "roi_pooling_param pooled_h and pooled_w must be > 0")
        self.scale = F32(p.spatial_scale)

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0

    def reshape(self, bottom, top):
        check(bottom[0].num_axes == 4, f"ROIPooling features must be 4-axis, got {bottom[0].shape}")
        check(bottom[1].count == bottom[1].shape[0] * 5 if bottom[1].num_axes else False,
              f"the rois bottom must be (R, 5), got {bottom[1].shape}")
        top[0].reshape((bottom[1].shape[0], bottom[0].shape[1], self.ph, self.pw))

    def windows(self, roi, H, W):
        """[(rows, cols)] slices per output cell of one roi, in row-major order."""
        x1, y1, x2, y2 = (int(v) for v in _c_round(roi[1:5].astype(F32) * self.scale))
        rh, rw = max(y2 - y1 + 1, 1), max(x2 - x1 + 1, 1)
        bh, bw = F32(rh) / F32(self.ph), F32(rw) / F32(self.pw)

        def edges(n, b, start, limit):
            out = []
            for i in range(n):
                lo = int(np.floor(F32(i) * b)) + start
                hi = int(np.ceil(F32(i + 1) * b)) + start
                out.append((min(max(lo, 0), limit), min(max(hi, 0), limit)))
            return out
        return edges(self.ph, bh, y1, H), edges(self.pw, bw, x1, W)

    def forward(self, bottom, top):
        x = bottom[0].data
        N, C, H, W = x.shape
        rois = bottom[1].data.reshape(-1, 5)
        y = top[0].data
        self._argmax = np.full(y.shape, -1, np.int64)
        self._batch = np.zeros(len(rois), np.int64)
        if not np.isfinite(rois).all():
            raise LayerError("the rois bottom holds non-finite values")
        for r, roi in enumerate(rois):
            n = int(roi[0])
            if not 0 <= n < N:
                raise LayerError(f"roi {r} has batch index {roi[0]:g}, the features have {N} images")
            self._batch[r] = n
            rows, cols = self.windows(roi, H, W)
            for i, (h0, h1) in enumerate(rows):
                for j, (w0, w1) in enumerate(cols):
                    if h1 <= h0 or w1 <= w0:
                        y[r, :, i, j] = 0
                        continue
                    win = x[n, :, h0:h1, w0:w1].reshape(C, -1)
                    k = np.argmax(win, axis=1)
                    y[r, :, i, j] = win[np.arange(C), k]
                    ww = w1 - w0
                    self._argmax[r, :, i, j] = (h0 + k // ww) * W + w0 + k % ww

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        N, C, H, W = bottom[0].shape
        dx = np.zeros((N, C, H * W), F64)
        dy = top[0].diff
        for r in range(dy.shape[0]):
            idx = self._argmax[r].reshape(C, -1)
            d = dy[r].reshape(C, -1)
            ok = idx >= 0
            cc = np.broadcast_to(np.arange(C)[:, None], idx.shape)
            np.add.at(dx[self._batch[r]], (cc[ok], idx[ok]), d[ok])
        bottom[0].diff[...] = dx.reshape(bottom[0].shape)


@register("SmoothL1Loss")
class SmoothL1Loss(Layer):
    """Faster R-CNN's smooth L1 loss (smooth_l1_loss_param.sigma, default 1; s2 = sigma^2).
    Bottoms: prediction p, target t, optionally inside weights w_in and outside weights
    w_out (all four or two).  With d = w_in (p - t) and N = p's first axis:
        f(d) = 0.5 s2 d^2  if |d| < 1 / s2,  else |d| - 0.5 / s2
        loss = sum(w_out f(d)) / N
        dp = -dt = lw w_in w_out f'(d) / N,   f'(d) = s2 d if |d| < 1 / s2 else sign(d)
    (lw: the top's loss weight).  The weights get no gradient.
    """
    is_loss = True
    exact_tops = 1
    min_bottoms = 2
    max_bottoms = 4
    in_place_ok = False

    def setup(self, bottom, top):
        check(len(bottom) in (2, 4), "SmoothL1Loss takes 2 bottoms, or 4 with the inside "
                                     "and outside weights")
        s = float(F32(self.param.smooth_l1_loss_param.sigma))
        self.s2 = s * s

    def allow_force_backward(self, bottom_index):
        return bottom_index < 2

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        for i, b in enumerate(bottom[1:], 1):
            check(b.count == bottom[0].count and b.shape[1:] == shape[1:],
                  f"bottom {i} has shape {b.shape}, bottom 0 {shape}: they must match")
        top[0].reshape(())

    def forward(self, bottom, top):
        d = bottom[0].data.astype(F64) - bottom[1].data
        if len(bottom) == 4:
            d = d * bottom[2].data
        a = np.abs(d)
        f = np.where(a < 1 / self.s2, 0.5 * d * d * self.s2, a - 0.5 / self.s2)
        if len(bottom) == 4:
            f = f * bottom[3].data
        self._d = d
        top[0].data[...] = f.sum() / bottom[0].shape[0]

    def backward(self, top, propagate_down, bottom):
        d = self._d
        g = np.where(np.abs(d) < 1 / self.s2, self.s2 * d, np.sign(d))
        g = g * (float(top[0].diff.reshape(-1)[0]) / bottom[0].shape[0])
        if len(bottom) == 4:
            g = g * bottom[2].data * bottom[3].data
        for i in (0, 1):
            if propagate_down[i]:
                bottom[i].diff[...] = g if i == 0 else -g


def generate_anchors(base_size=16, ratios=(0.5, 1, 2), scales=(8, 16, 32)):
    """py-faster-rcnn's anchors (x1, y1, x2, y2) around the base cell [0, base - 1]^2:
    per ratio r, w = round(sqrt(base^2 / r)), h = round(w r) (numpy round: halves to
    even), then per scale s the (w s) x (h s) box with the same centre."""
    ctr = 0.5 * (base_size - 1)
    out = []
    for r in ratios:
        w = np.round(np.sqrt(base_size * base_size / r))
        h = np.round(w * r)
        for s in scales:
            ws, hs = w * s, h * s
            out.append([ctr - 0.5 * (ws - 1), ctr - 0.5 * (hs - 1),
                        ctr + 0.5 * (ws - 1), ctr + 0.5 * (hs - 1)])
    return np.array(out, F64)


# py-faster-rcnn's fast_rcnn.config defaults: (pre-NMS top N, post-NMS top N, NMS
# threshold, min box size) for TRAIN and TEST
_RPN_CFG = {caffe_pb2.TRAIN: (12000, 2000, 0.7, 16), caffe_pb2.TEST: (6000, 300, 0.7, 16)}


@register_python("rpn.proposal_layer", "ProposalLayer")
class Proposal(Layer):
    """py-faster-rcnn's region proposals (Python layer ``rpn.proposal_layer.ProposalLayer``,
    param_str ``'feat_stride': S``), built in: bottoms rpn_cls_prob_reshape (1, 2A, H, W),
    rpn_bbox_pred (1, 4A, H, W), im_info (1, 3) = (image height, width, scale).

    A = 9 anchors (``generate_anchors``), shifted by (w S, h S) for every cell; rows in
    (h, w, anchor) order with the foreground score (channels A..2A-1) and the deltas
    (dx, dy, dw, dh) of the cell.  In float64, per anchor of width w = x2 - x1 + 1
    and centre c = x1 + w / 2 (y likewise):
        c' = dx w + c,  w' = exp(dw) w,  box = (c' - w'/2, ..., c' + w'/2)
    clipped to [0, width - 1] x [0, height - 1]; boxes with a side (x2 - x1 + 1) below
    16 * scale are dropped; the rest sorted by score (best first), the first 6000
    kept (TRAIN: 12000), NMS at IoU 0.7 (pixel boxes, + 1 sizes), the first 300 kept
    (TRAIN: 2000).  Top 0: rois (R, 5) = (0, x1, y1, x2, y2); top 1 (optional): the
    scores (R, 1).  No backward (as the Python layer).  Batch size 1 only.
    """
    type = "Python"          # what the prototxt says; python_param names the built-in
    exact_bottoms = 3
    min_tops = 1
    max_tops = 2
    has_backward = False

    def __init__(self, param, ctx):
        super().__init__(param, ctx)
        ctx.warn_once("rpn.proposal_layer",
                      f'Python layer "{param.name}" (rpn.proposal_layer.ProposalLayer) runs '
                      "netrun's built-in proposal layer (py-faster-rcnn's algorithm and "
                      "default config), not the module's code")

    def setup(self, bottom, top):
        text = self.param.python_param.param_str.strip()
        # py-faster-rcnn reads it as YAML: "'feat_stride': 16" (a dict without braces)
        try:
            cfg = ast.literal_eval("{" + text + "}") if text and not text.startswith("{") \
                else ast.literal_eval(text or "{}")
        except (ValueError, SyntaxError):
            cfg = {}
            try:
                for part in text.replace("{", "").replace("}", "").split(","):
                    if ":" in part:
                        k, v = part.split(":", 1)
                        cfg[k.strip().strip("'\"")] = ast.literal_eval(v.strip())
            except (ValueError, SyntaxError):
                cfg = None
        check(isinstance(cfg, dict) and "feat_stride" in cfg,
              f"param_str {text!r} must give 'feat_stride' (e.g. \"'feat_stride': 16\")")
        try:
            self.stride = int(cfg["feat_stride"])
            scales = tuple(float(s) for s in cfg.get("scales", (8, 16, 32)))
        except (TypeError, ValueError):
            raise LayerError(f"param_str {text!r}: feat_stride must be a number and scales "
                             "a list of numbers") from None
        check(self.stride > 0 and scales and min(scales) > 0,
              "feat_stride and the scales must be positive")
        self.anchors = generate_anchors(scales=scales)
        self.A = len(self.anchors)
        self.cfg = _RPN_CFG[caffe_pb2.TRAIN if self.phase == caffe_pb2.TRAIN else caffe_pb2.TEST]

    def allow_force_backward(self, bottom_index):
        return False

    def reshape(self, bottom, top):
        s, d, info = bottom
        check(s.num_axes == 4 and s.shape[0] == 1, f"scores {s.shape}: only batch size 1 "
                                                     "is supported (as py-faster-rcnn)")
        check(s.shape[1] == 2 * self.A, f"scores need {2 * self.A} channels, got {s.shape[1]}")
        check(d.shape == (1, 4 * self.A) + s.shape[2:],
              f"bbox deltas {d.shape} must be (1, {4 * self.A}, {s.shape[2]}, {s.shape[3]})")
        check(info.count >= 3, f"im_info {info.shape} must hold (height, width, scale)")
        if top[0].shape[1:] != (5,):
            top[0].reshape((1, 5))
        if len(top) > 1 and top[1].shape[1:] != (1,):
            top[1].reshape((1, 1))

    def proposals(self, scores, deltas, info):
        """(boxes (R, 4), scores (R,)) for one image, float64."""
        A = self.A
        H, W = scores.shape[-2:]
        sx, sy = np.meshgrid(np.arange(W) * self.stride, np.arange(H) * self.stride)
        shifts = np.stack([sx.ravel(), sy.ravel(), sx.ravel(), sy.ravel()], axis=1)
        anchors = (self.anchors[None] + shifts[:, None]).reshape(-1, 4)
        deltas = deltas.reshape(4 * A, H, W).transpose(1, 2, 0).reshape(-1, 4).astype(F64)
        sc = scores.reshape(2 * A, H, W)[A:].transpose(1, 2, 0).reshape(-1).astype(F64)
        w = anchors[:, 2] - anchors[:, 0] + 1.0
        h = anchors[:, 3] - anchors[:, 1] + 1.0
        cx = anchors[:, 0] + 0.5 * w
        cy = anchors[:, 1] + 0.5 * h
        pcx = deltas[:, 0] * w + cx
        pcy = deltas[:, 1] * h + cy
        pw = np.exp(deltas[:, 2]) * w
        ph = np.exp(deltas[:, 3]) * h
        boxes = np.stack([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph], 1)
        im_h, im_w, im_scale = (float(v) for v in info[:3])
        boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, im_w - 1)
        boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, im_h - 1)
        pre, post, thresh, min_size = self.cfg
        m = min_size * im_scale
        keep = np.flatnonzero((boxes[:, 2] - boxes[:, 0] + 1 >= m)
                              & (boxes[:, 3] - boxes[:, 1] + 1 >= m))
        boxes, sc = boxes[keep], sc[keep]
        order = np.argsort(-sc, kind="stable")[:pre]
        boxes, sc = boxes[order], sc[order]
        keep = nms(boxes, np.arange(len(boxes)), thresh, plus_one=1, limit=post)
        return boxes[keep], sc[keep]

    def forward(self, bottom, top):
        boxes, sc = self.proposals(bottom[0].data, bottom[1].data,
                                   bottom[2].data.reshape(-1))
        top[0].reshape((len(boxes), 5))
        top[0].data[:, 0] = 0
        top[0].data[:, 1:] = boxes
        if len(top) > 1:
            top[1].reshape((len(boxes), 1))
            top[1].data[:, 0] = sc
