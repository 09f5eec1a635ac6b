"""The SSD fork's layers (weiliu89/caffe, branch ssd): Normalize, Permute, PriorBox,
DetectionOutput.  SSD's Flatten and Concat are BVLC's own layers.

Boxes are (xmin, ymin, xmax, ymax), normalised to the image (0..1) as SSD keeps them.
"""
import numpy as np

from ..errors import LayerError, check
from ..proto import caffe_pb2
from .base import Layer, register

F32, F64 = np.float32, np.float64
_CODE = caffe_pb2.PriorBoxParameter


@register("Normalize")
class Normalize(Layer):
    """SSD's L2 normalization with a learnt scale (norm_param; one blob, the scale:
    shape (1,) with ``channel_shared`` (default), else (C,); filler scale_filler,
    default constant 1).  Per sample n (``across_spatial``, the default) or per sample
    and position (n, h, w) (``across_spatial: false``), over the values v it covers:
        r = sqrt(sum v^2 + eps)        (eps = norm_param.eps, default 1e-10)
        y = s_c x / r
        ds_c += sum dy x / r   (over all n and positions of channel c; all c if shared)
        dx = s_c dy / r - x (sum_{v} s dy x) / r^3
    Sums are accumulated in float64.
    """
    exact_bottoms = 1
    exact_tops = 1

    def setup(self, bottom, top):
        p = self.param.norm_param
        check(bottom[0].num_axes >= 2, f"Normalize needs at least 2 axes, got {bottom[0].shape}")
        self.across = bool(p.across_spatial)
        self.shared = bool(p.channel_shared)
        self.eps = float(p.eps)
        C = bottom[0].shape[1]
        if p.HasField("scale_filler"):
            filler = p.scale_filler
        else:
            filler = caffe_pb2.FillerParameter(type="constant", value=1.0)
        self.blobs = [self.new_param((1,) if self.shared else (C,), filler)]

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        check(len(shape) >= 2, f"Normalize needs at least 2 axes, got {shape}")
        check(self.shared or shape[1] == self.blobs[0].shape[0],
              f"bottom has {shape[1]} channels, the scale {self.blobs[0].shape[0]}")
        top[0].reshape(shape)

    def _axes(self, x):
        return tuple(range(1, x.ndim)) if self.across else (1,)

    def _scale(self, x):
        s = self.blobs[0].data
        return s.reshape((1, -1) + (1,) * (x.ndim - 2)) if not self.shared else s[0]

    def forward(self, bottom, top):
        x = bottom[0].data
        x = x.reshape(x.shape[:2] + (-1,))
        x64 = x.astype(F64)
        r = np.sqrt((x64 * x64).sum(axis=self._axes(x), keepdims=True) + self.eps)
        self._r = r
        self._x = x64 if top[0] is bottom[0] else None     # in place: backward needs x
        top[0].data.reshape(x.shape)[...] = (x64 / r * self._scale(x)).astype(self.dtype)

    def backward(self, top, propagate_down, bottom):
        x = bottom[0].data
        x = x.reshape(x.shape[:2] + (-1,)).astype(F64) if self._x is None else self._x
        dy = top[0].diff.reshape(x.shape).astype(F64)
        r = self._r
        xn = x / r
        if self.param_propagate_down and self.param_propagate_down[0]:
            g = dy * xn
            if self.shared:
                self.blobs[0].diff += g.sum()
            else:
                self.blobs[0].diff += g.sum(axis=(0, 2))
        if propagate_down[0]:
            sdy = dy * self._scale(x)
            dot = (sdy * xn).sum(axis=self._axes(x), keepdims=True)
            bottom[0].diff.reshape(x.shape)[...] = (sdy - xn * dot) / r


@register("Permute")
class Permute(Layer):
    """SSD's axis transpose: top axis i is bottom axis order[i] (permute_param.order,
    each axis at most once; axes not listed follow in their order).
        y = transpose(x, order);   dx = transpose(dy, inverse(order))
    """
    exact_bottoms = 1
    exact_tops = 1
    in_place_ok = False

    def setup(self, bottom, top):
        n = bottom[0].num_axes
        order = []
        for a in self.param.permute_param.order:
            check(a < n, f"permute order {a} is beyond the bottom's {n} axes")
            check(a not in order, f"permute order has axis {a} twice")
            order.append(int(a))
        order += [a for a in range(n) if a not in order]
        self.order = tuple(order)
        self.inverse = tuple(np.argsort(order))

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        check(len(shape) == len(self.order), f"bottom has {len(shape)} axes, the layer "
                                             f"was set up for {len(self.order)}")
        top[0].reshape(tuple(shape[a] for a in self.order))

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data.transpose(self.order)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff.transpose(self.inverse)


def _hw_pair(p, both, h, w):
    """PriorBox's (h, w) from ``both`` or from ``h`` and ``w`` (not both forms); None if unset."""
    if p.HasField(h) or p.HasField(w):
        check(not p.HasField(both), f"give {both} or {h}/{w}, not both")
        check(getattr(p, h) > 0 and getattr(p, w) > 0, f"{h} and {w} must be positive")
        return getattr(p, h), getattr(p, w)
    if p.HasField(both):
        check(getattr(p, both) > 0, f"{both} must be positive")
        return getattr(p, both), getattr(p, both)
    return None


def _aspect_ratios(p):
    ars = [1.0]
    for ar in p.aspect_ratio:
        if any(abs(ar - a) < 1e-6 for a in ars):
            continue
        ars.append(float(ar))
        if p.flip:
            ars.append(1.0 / ar)
    return ars


@register("PriorBox")
class PriorBox(Layer):
    """SSD's default boxes for a feature map (bottom 0, H x W) of an image (bottom 1,
    or prior_box_param img_size / img_h, img_w).  Top: (1, 2, H W P 4): channel 0 the
    boxes, channel 1 their variances (4 values, or 1 for all; default 0.1).

    Aspect ratios: 1, then each aspect_ratio not already present (and, with flip,
    its inverse).  step = step (step_h/step_w) or image size / feature size; for each
    cell (h, w), centre c = ((w + offset) step_w, (h + offset) step_h) (float32), and
    for each min_size m (truncated to an integer, as the fork does):
        the m x m box; with max_size M (also an integer): the sqrt(m M) square box;
        for each ratio a != 1: width m sqrt(a), height m / sqrt(a);
    box = ((cx - w/2) / img_w, (cy - h/2) / img_h, (cx + w/2) / img_w, (cy + h/2) / img_h),
    clipped to [0, 1] with clip.  No backward (the boxes do not depend on the values).
    """
    exact_bottoms = 2
    exact_tops = 1
    has_backward = False

    def setup(self, bottom, top):
        p = self.param.prior_box_param
        check(len(p.min_size) > 0, "prior_box_param needs min_size")
        check(all(m > 0 for m in p.min_size), "min_size must be positive")
        self.min_sizes = [int(m) for m in p.min_size]
        self.max_sizes = [int(m) for m in p.max_size]
        if self.max_sizes:
            check(len(self.max_sizes) == len(self.min_sizes),
                  "give one max_size per min_size")
            check(all(M > m for m, M in zip(p.min_size, p.max_size)),
                  "max_size must be greater than min_size")
        check(all(a > 0 for a in p.aspect_ratio), "aspect_ratio must be positive")
        self.ars = _aspect_ratios(p)
        self.num_priors = len(self.ars) * len(self.min_sizes) + len(self.max_sizes)
        check(len(p.variance) in (0, 1, 4), "give 1 or 4 variances")
        check(all(v > 0 for v in p.variance), "variances must be positive")
        self.variance = list(p.variance) or [0.1]
        img = _hw_pair(p, "img_size", "img_h", "img_w")
        self.img = tuple(int(v) for v in img) if img else None
        step = _hw_pair(p, "step", "step_h", "step_w")
        self.step = tuple(float(v) for v in step) if step else None
        self.offset = F32(p.offset)
        self.clip = bool(p.clip)

    def reshape(self, bottom, top):
        check(bottom[0].num_axes == 4 and bottom[1].num_axes == 4,
              "PriorBox needs 4-axis bottoms (feature map, image)")
        H, W = bottom[0].shape[2:]
        check(H * W > 0, "PriorBox of an empty feature map")
        top[0].reshape((1, 2, H * W * self.num_priors * 4))

    def boxes(self, H, W, img_h, img_w):
        if self.step is None:
            step_h, step_w = F32(img_h) / F32(H), F32(img_w) / F32(W)
        else:
            step_h, step_w = F32(self.step[0]), F32(self.step[1])
        cx = ((np.arange(W, dtype=F32) + self.offset) * step_w).astype(F64)
        cy = ((np.arange(H, dtype=F32) + self.offset) * step_h).astype(F64)
        sizes = []
        for s, m in enumerate(self.min_sizes):
            sizes.append((m, m))
            if self.max_sizes:
                side = np.sqrt(m * self.max_sizes[s])
                sizes.append((side, side))
            for a in self.ars:
                if abs(a - 1.0) < 1e-6:
                    continue
                ra = np.sqrt(F32(a))
                sizes.append((float(F32(m * ra)), float(F32(m / ra))))
        bw = np.array([w for w, h in sizes], F64).astype(F32).astype(F64)
        bh = np.array([h for w, h in sizes], F64).astype(F32).astype(F64)
        out = np.empty((H, W, len(sizes), 4), F64)
        out[..., 0] = (cx[None, :, None] - bw / 2) / img_w
        out[..., 1] = (cy[:, None, None] - bh / 2) / img_h
        out[..., 2] = (cx[None, :, None] + bw / 2) / img_w
        out[..., 3] = (cy[:, None, None] + bh / 2) / img_h
        if self.clip:
            np.clip(out, 0, 1, out=out)
        return out.reshape(-1)

    def forward(self, bottom, top):
        H, W = bottom[0].shape[2:]
        img_h, img_w = self.img or bottom[1].shape[2:]
        y = top[0].data.reshape(2, -1)
        y[0] = self.boxes(H, W, img_h, img_w)
        y[1] = np.tile(np.asarray(self.variance, F32), y.shape[1] // len(self.variance))


def decode_boxes(loc, prior, var, code_type, variance_in_target):
    """SSD's DecodeBBox for arrays: loc (P, L, 4), prior (P, 4), var (P, 4); float32."""
    loc = loc.astype(F32)
    prior = prior[:, None, :]
    var = np.ones_like(prior) if variance_in_target else var[:, None, :]
    pw = prior[..., 2] - prior[..., 0]
    ph = prior[..., 3] - prior[..., 1]
    out = np.empty(loc.shape, F32)
    if code_type == _CODE.CORNER:
        out[...] = prior + var * loc
    elif code_type == _CODE.CORNER_SIZE:
        out[...] = prior + var * loc * np.stack([pw, ph, pw, ph], axis=-1)
    elif code_type == _CODE.CENTER_SIZE:
        pcx = (prior[..., 0] + prior[..., 2]) / F32(2)
        pcy = (prior[..., 1] + prior[..., 3]) / F32(2)
        cx = var[..., 0] * loc[..., 0] * pw + pcx
        cy = var[..., 1] * loc[..., 1] * ph + pcy
        w = np.exp(var[..., 2] * loc[..., 2]) * pw
        h = np.exp(var[..., 3] * loc[..., 3]) * ph
        out[..., 0] = cx - w / F32(2)
        out[..., 1] = cy - h / F32(2)
        out[..., 2] = cx + w / F32(2)
        out[..., 3] = cy + h / F32(2)
    else:
        raise LayerError(f"unknown code_type {code_type}")
    return out


def box_area(b):
    """Area of normalised boxes (..., 4); 0 for an inverted box."""
    w = b[..., 2] - b[..., 0]
    h = b[..., 3] - b[..., 1]
    return np.where((w < 0) | (h < 0), 0, w * h)


def iou_one(box, boxes, plus_one=0):
    """Jaccard overlap of one box with each row of ``boxes`` (plus_one: pixel boxes,
    width = x2 - x1 + 1)."""
    iw = np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]) + plus_one
    ih = np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]) + plus_one
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0)
    if plus_one:
        a = (box[2] - box[0] + 1) * (box[3] - box[1] + 1)
        b = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    else:
        a, b = box_area(box), box_area(boxes)
    union = a + b - inter
    return np.where(inter > 0, inter / np.where(union > 0, union, 1), 0)


def nms(boxes, order, threshold, eta=1.0, plus_one=0, limit=None):
    """Greedy non-maximum suppression over ``order`` (indices, best first): keep a box
    when its overlap with every kept one is <= the threshold (SSD's ApplyNMSFast; with
    eta < 1 the threshold shrinks by eta after each kept box while it is > 0.5).
    ``limit``: stop after that many kept boxes (the first ``limit`` of the full result)."""
    keep = []
    thr = threshold
    for i in order:
        if limit is not None and len(keep) >= limit:
            break
        if keep:
            ov = iou_one(boxes[i], boxes[np.asarray(keep)], plus_one)
            if (ov > thr).any():
                continue
        keep.append(int(i))
        if eta < 1 and thr > 0.5:
            thr *= eta
    return keep


@register("DetectionOutput")
class DetectionOutput(Layer):
    """SSD's detections: bottoms loc (N, P L 4), conf (N, P C), priors (1, 2, P 4)
    (L = 1 with share_location, else C).  For each image:

    1. decode every prior's box with code_type (float32; v the prior's variances,
       or 1 with variance_encoded_in_target):
         CORNER       b = prior + v loc
         CORNER_SIZE  b = prior + v loc (pw, ph, pw, ph)
         CENTER_SIZE  c = v01 loc01 (pw, ph) + prior centre,  (w, h) = exp(v23 loc23) (pw, ph),
                      b = (c - (w, h) / 2, c + (w, h) / 2)
    2. per class c != background_label_id: the priors whose score > confidence_threshold,
       best first (ties: lower prior index first), at most nms_param.top_k, then greedy
       NMS with nms_param.nms_threshold (IoU of normalised boxes; eta as SSD);
    3. if keep_top_k >= 0 and more are kept, the keep_top_k best over all classes.

    Top (1, 1, D, 7): rows (image, label, score, xmin, ymin, xmax, ymax), per image by
    label, then by score.  With no detection at all: one row per image
    (image, -1, -1, -1, -1, -1, -1), as the fork.  Forward only.  save_output_param and
    visualize (file output) are ignored with a warning.
    """
    exact_bottoms = 3
    exact_tops = 1
    has_backward = False

    def setup(self, bottom, top):
        p = self.param.detection_output_param
        check(p.HasField("num_classes"), "detection_output_param needs num_classes")
        self.num_classes = int(p.num_classes)
        check(self.num_classes > 0, "num_classes must be positive")
        self.share = bool(p.share_location)
        self.num_loc_classes = 1 if self.share else self.num_classes
        self.background = int(p.background_label_id)
        self.code_type = p.code_type
        self.var_in_target = bool(p.variance_encoded_in_target)
        self.keep_top_k = int(p.keep_top_k)
        self.conf_threshold = float(F32(p.confidence_threshold)) \
            if p.HasField("confidence_threshold") else -np.inf
        self.nms_threshold = float(F32(p.nms_param.nms_threshold))
        check(self.nms_threshold >= 0, "nms_threshold must be non-negative")
        self.eta = float(F32(p.nms_param.eta))
        check(0 < self.eta <= 1, "nms_param.eta must be in (0, 1]")
        self.top_k = int(p.nms_param.top_k) if p.nms_param.HasField("top_k") else -1
        if p.HasField("save_output_param") or p.visualize:
            self.ctx.warn(f'DetectionOutput "{self.name}": save_output_param/visualize '
                          "(writing result files) is ignored")

    def reshape(self, bottom, top):
        loc, conf, prior = bottom
        self.num_priors = prior.shape[-1] // 4 if prior.num_axes else 0
        check(prior.num_axes == 3 and prior.shape[1] == 2,
              f"the prior bottom must be (1, 2, P * 4), got {prior.shape}")
        P = self.num_priors
        check(loc.count == loc.shape[0] * P * self.num_loc_classes * 4,
              f"loc bottom {loc.shape} does not hold {P} priors x "
              f"{self.num_loc_classes} x 4 values per image")
        check(conf.count == conf.shape[0] * P * self.num_classes,
              f"conf bottom {conf.shape} does not hold {P} priors x {self.num_classes} "
              "classes per image")
        check(loc.shape[0] == conf.shape[0], "loc and conf must have the same number of images")
        top[0].reshape((1, 1, max(loc.shape[0], 1), 7))

    def detect(self, loc, conf, prior, var):
        """[(label, score, box)] for one image."""
        boxes = decode_boxes(loc, prior, var, self.code_type, self.var_in_target)
        found = []
        for c in range(self.num_classes):
            if c == self.background:
                continue
            scores = conf[:, c]
            b = boxes[:, 0 if self.share else c]
            cand = np.flatnonzero(scores > self.conf_threshold)
            cand = cand[np.argsort(-scores[cand], kind="stable")]
            if self.top_k > -1:
                cand = cand[:self.top_k]
            for i in nms(b, cand, self.nms_threshold, self.eta):
                found.append((c, float(scores[i]), i, b[i]))
        if self.keep_top_k > -1 and len(found) > self.keep_top_k:
            order = sorted(range(len(found)), key=lambda k: -found[k][1])[:self.keep_top_k]
            found = [found[k] for k in sorted(order, key=lambda k: (found[k][0], -found[k][1]))]
        return found

    def forward(self, bottom, top):
        loc, conf, prior = bottom
        N, P = loc.shape[0], self.num_priors
        pr = prior.data.reshape(2, P, 4).astype(F32)
        locs = loc.data.reshape(N, P, self.num_loc_classes, 4)
        confs = conf.data.reshape(N, P, self.num_classes)
        rows = []
        for n in range(N):
            for label, score, _, box in self.detect(locs[n], confs[n], pr[0], pr[1]):
                rows.append([n, label, score] + [float(v) for v in box])
        if not rows:
            rows = [[n] + [-1] * 6 for n in range(N)]
        top[0].reshape((1, 1, len(rows), 7))
        top[0].data[...] = np.asarray(rows, F64).reshape(top[0].shape)
