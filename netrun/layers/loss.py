"""Loss layers: top 0 is a scalar (shape ``()``) that carries loss weight 1
unless ``loss_weight`` says otherwise.  In backward, ``top[0].diff`` holds that
weight, so every gradient is scaled by it.
"""
import numpy as np

from ..errors import LayerError, NetrunError, check
from .base import Layer, canonical_axis, register
from .common import softmax

FLT_MIN = np.float32(np.finfo(np.float32).tiny)
FULL, VALID, BATCH_SIZE, NONE = 0, 1, 2, 3


class LossLayer(Layer):
    """Base: two bottoms (prediction, target), a scalar loss top."""
    in_place_ok = False
    exact_bottoms = 2
    exact_tops = 1
    is_loss = True
    auto_top_blobs = True         # a loss with no top named still gets one (Caffe's AutoTopBlobs)

    def allow_force_backward(self, bottom_index):
        return bottom_index != 1          # never force a gradient into the labels

    def reshape(self, bottom, top):
        if bottom[0].shape[:1] != bottom[1].shape[:1]:
            raise LayerError(f"bottoms have different first dimensions: {bottom[0].shape} and "
                             f"{bottom[1].shape}")
        top[0].reshape(())

    def normalization(self):
        """The LossParameter normalization mode, with legacy ``normalize`` honoured."""
        lp = self.param.loss_param
        if not lp.HasField("normalization") and lp.HasField("normalize"):
            return VALID if lp.normalize else BATCH_SIZE
        return lp.normalization

    def label_axis(self, bottom, axis, what):
        """Set axis/outer/inner for class scores along ``axis`` and check that bottom[1]
        holds one label per other position."""
        self.axis = canonical_axis(axis, bottom[0].num_axes)
        shape = bottom[0].shape
        self.outer = int(np.prod(shape[:self.axis], dtype=np.int64))
        self.inner = int(np.prod(shape[self.axis + 1:], dtype=np.int64))
        if bottom[1].count != self.outer * self.inner:
            raise LayerError(
                f"label count {bottom[1].count} (shape {bottom[1].shape}) must equal the "
                f"prediction count {self.outer * self.inner} without its {what} axis "
                f"(shape {shape}, axis {self.axis})")

    @staticmethod
    def normalizer(mode, outer, inner, valid):
        """Caffe's divisor for the summed loss (never below 1)."""
        n = {FULL: outer * inner, VALID: valid if valid >= 0 else outer * inner,
             BATCH_SIZE: outer, NONE: 1}[mode]
        return max(1.0, float(n))


@register("EuclideanLoss")
class EuclideanLoss(LossLayer):
    """E = 1/(2N) * sum (a - b)^2, N = a.shape[0];   dE/da = (a - b)/N = -dE/db"""

    def allow_force_backward(self, bottom_index):
        return True

    def reshape(self, bottom, top):
        a, b = bottom[0], bottom[1]
        if a.count != b.count or a.shape[:1] != b.shape[:1]:
            raise LayerError(f"bottoms must have the same number of elements per item: "
                             f"{a.shape} and {b.shape}")
        top[0].reshape(())

    def forward(self, bottom, top):
        self.delta = bottom[0].data - bottom[1].data.reshape(bottom[0].shape)
        d = self.delta.ravel()
        top[0].data[...] = np.dot(d, d) / bottom[0].shape[0] / 2

    def backward(self, top, propagate_down, bottom):
        scale = top[0].diff.reshape(-1)[0] / bottom[0].shape[0]
        for i, sign in ((0, 1), (1, -1)):
            if propagate_down[i]:
                bottom[i].diff[...] = (self.delta * self.dtype.type(sign * scale)).reshape(
                    bottom[i].shape)


@register("SoftmaxWithLoss")
class SoftmaxWithLoss(LossLayer):
    """p = softmax(x) along ``softmax_param.axis``; label l at every other position.

    E = -sum_{positions, l != ignore_label} log(max(p_l, FLT_MIN)) / normalizer
    dE/dx = (p - onehot(l)) * loss_weight / normalizer, 0 at ignored positions.
    Normalizer (loss_param.normalization): FULL = all positions, VALID = the
    non-ignored ones (default), BATCH_SIZE = outer count, NONE = 1; at least 1.
    An optional second top receives p.
    SegNet/ENet forks: with loss_param.weight_by_label_freqs each position's term and
    gradient are multiplied by class_weighting[l] (one value per class); the normalizer
    is unchanged (the count of positions, not of weights), as in the forks.
    """
    max_tops = 2
    min_tops = 1
    exact_tops = None

    def setup(self, bottom, top):
        lp = self.param.loss_param
        self.ignore = int(lp.ignore_label) if lp.HasField("ignore_label") else None
        self.mode = self.normalization()
        # SegNet/ENet forks: each position's term (and gradient) times class_weighting[l]
        self.class_weights = None
        if getattr(lp, "weight_by_label_freqs", False):
            self.class_weights = np.asarray(lp.class_weighting, self.dtype)

    def reshape(self, bottom, top):
        self.label_axis(bottom, self.param.softmax_param.axis, "softmax")
        if self.class_weights is not None:
            c = bottom[0].shape[self.axis]
            check(self.class_weights.size == c, f"loss_param has {self.class_weights.size} "
                                                f"class_weighting values for {c} classes")
        top[0].reshape(())
        if len(top) > 1:
            top[1].reshape_like(bottom[0])

    def _labels(self, bottom):
        c = bottom[0].shape[self.axis]
        lab = bottom[1].data.reshape(self.outer, self.inner).astype(np.int64)
        valid = np.ones(lab.shape, bool) if self.ignore is None else lab != self.ignore
        bad = valid & ((lab < 0) | (lab >= c))
        if bad.any():
            raise LayerError(f"label {int(lab[bad][0])} out of range [0, {c})")
        return lab, valid

    def forward(self, bottom, top):
        shape = bottom[0].shape
        c = shape[self.axis]
        self.prob = softmax(bottom[0].data, self.axis)
        p = self.prob.reshape(self.outer, c, self.inner)
        lab, valid = self._labels(bottom)
        safe = np.where(valid, lab, 0)
        pl = np.take_along_axis(p, safe[:, None, :], axis=1)[:, 0, :]
        logs = -np.log(np.maximum(pl, FLT_MIN))
        if self.class_weights is not None:
            logs = logs * self.class_weights[safe]
        self.valid_count = int(valid.sum())
        loss = np.sum(logs[valid], dtype=self.dtype)
        norm = self.normalizer(self.mode, self.outer, self.inner,
                               self.valid_count if self.ignore is not None else -1)
        top[0].data[...] = loss / self.dtype.type(norm)
        if len(top) > 1:
            top[1].data[...] = self.prob

    def backward(self, top, propagate_down, bottom):
        if propagate_down[1]:
            raise LayerError("SoftmaxWithLoss cannot backpropagate to the label input")
        if not propagate_down[0]:
            return
        c = bottom[0].shape[self.axis]
        lab, valid = self._labels(bottom)
        g = self.prob.copy().reshape(self.outer, c, self.inner)
        safe = np.where(valid, lab, 0)
        o_idx, i_idx = np.nonzero(valid)
        g[o_idx, safe[o_idx, i_idx], i_idx] -= 1
        g *= valid[:, None, :]
        if self.class_weights is not None:
            g *= self.class_weights[safe][:, None, :]
        norm = self.normalizer(self.mode, self.outer, self.inner,
                               self.valid_count if self.ignore is not None else -1)
        g *= self.dtype.type(top[0].diff.reshape(-1)[0] / norm)
        bottom[0].diff[...] = g.reshape(bottom[0].shape)


def _legacy_dim(blob, i):
    """Caffe's LegacyShape(i): 1 past the last axis (blobs of at most 4 axes)."""
    if blob.num_axes > 4:
        raise LayerError(f"blob of shape {blob.shape} has more than 4 axes; this layer needs "
                         "a legacy (num, channels, height, width) blob")
    return blob.shape[i] if i < blob.num_axes else 1


def _check_label_blob(blob):
    """Caffe's CHECK that a label blob is (N, 1, 1, 1)."""
    if any(_legacy_dim(blob, i) != 1 for i in (1, 2, 3)):
        raise LayerError(f"labels must be one value per item, shape (N,) or (N, 1, 1, 1); got "
                         f"{blob.shape}")


def _class_labels(blob, num, dim):
    """The first ``num`` label values as class indices in [0, dim) (Caffe reads them by
    static_cast<int>, i.e. truncation)."""
    lab = np.trunc(blob.data.reshape(-1)[:num]).astype(np.int64)
    if lab.size < num:
        raise LayerError(f"{blob.count} labels for {num} items")
    bad = (lab < 0) | (lab >= dim)
    if bad.any():
        raise LayerError(f"label {int(lab[bad][0])} out of range [0, {dim})")
    return lab


@register("SigmoidCrossEntropyLoss")
class SigmoidCrossEntropyLoss(LossLayer):
    """Cross-entropy of targets t in [0, 1] with p = sigmoid(x), from x directly:

    E = -sum_{i valid} [ x_i (t_i - [x_i >= 0]) - log(1 + exp(x_i - 2 x_i [x_i >= 0])) ] / norm
    dE/dx_i = (sigmoid(x_i) - t_i) * loss_weight / norm,  0 where t_i == ignore_label
    (a position is ignored when int(t_i) == loss_param.ignore_label).
    Normalizer: loss_param.normalization if set, else legacy ``normalize``
    (true: VALID, false: BATCH_SIZE), else BATCH_SIZE -- this layer's own default,
    not LossParameter's VALID.  FULL = count, VALID = non-ignored count,
    BATCH_SIZE = shape[0], NONE = 1; never below 1.
    """

    def setup(self, bottom, top):
        lp = self.param.loss_param
        self.ignore = int(lp.ignore_label) if lp.HasField("ignore_label") else None
        if lp.HasField("normalization"):
            self.mode = lp.normalization
        elif lp.HasField("normalize"):
            self.mode = VALID if lp.normalize else BATCH_SIZE
        else:
            self.mode = BATCH_SIZE

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        if bottom[0].count != bottom[1].count:
            raise LayerError(f"inputs must have the same count: {bottom[0].shape} and "
                             f"{bottom[1].shape}")
        self.outer = bottom[0].shape[0] if bottom[0].num_axes else 1
        self.inner = bottom[0].count // max(self.outer, 1)

    def forward(self, bottom, top):
        x = bottom[0].data
        t = bottom[1].data.reshape(x.shape)
        pos = (x >= 0).astype(x.dtype)
        per = x * (t - pos) - np.log1p(np.exp(x - 2 * x * pos))
        if self.ignore is not None:
            self.valid = np.trunc(t) != self.ignore
            per = per[self.valid]
            valid_count = int(self.valid.sum())
        else:
            self.valid = None
            valid_count = x.size
        self.norm = self.normalizer(self.mode, self.outer, self.inner, valid_count)
        top[0].data[...] = -np.sum(per, dtype=self.dtype) / self.dtype.type(self.norm)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[1]:
            raise LayerError("SigmoidCrossEntropyLoss cannot backpropagate to the label input")
        if not propagate_down[0]:
            return
        x = bottom[0].data
        p = 0.5 * np.tanh(0.5 * x) + 0.5
        g = p - bottom[1].data.reshape(x.shape)
        if self.valid is not None:
            g *= self.valid
        g *= self.dtype.type(top[0].diff.reshape(-1)[0] / self.norm)
        bottom[0].diff[...] = g


@register("HingeLoss")
class HingeLoss(LossLayer):
    """One-vs-all hinge loss; x is (N, D...) scores, label l_n a class index.

    m_nk = max(0, 1 + s_nk x_nk),  s_nk = -1 if k == l_n else +1
    L1: E = sum |m| / N          dE/dx_nk = s_nk sign(m_nk) * loss_weight / N
    L2: E = sum m^2 / N          dE/dx_nk = 2 s_nk m_nk * loss_weight / N
    As in Caffe, forward leaves m in bottom[0].diff (Caffe uses that diff as scratch
    space; a forward-only run shows it there), backward turns it into the gradient.
    """

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        self.num = bottom[0].shape[0]
        self.dim = bottom[0].count // max(self.num, 1)
        self.norm_type = self.param.hinge_loss_param.norm    # L1 = 1, L2 = 2

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self.num, self.dim)
        lab = _class_labels(bottom[1], self.num, self.dim)
        rows = np.arange(self.num)
        m = x.copy()
        m[rows, lab] *= -1
        m += 1
        np.maximum(m, 0, out=m)
        self.margin = m
        bottom[0].diff[...] = m.reshape(bottom[0].shape)
        if self.norm_type == 2:
            loss = np.dot(m.ravel(), m.ravel())
        elif self.norm_type == 1:
            loss = np.sum(np.abs(m), dtype=self.dtype)
        else:
            raise LayerError(f"unknown hinge_loss_param.norm {self.norm_type}")
        top[0].data[...] = loss / self.dtype.type(self.num)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[1]:
            raise LayerError("HingeLoss cannot backpropagate to the label input")
        if not propagate_down[0]:
            return
        lab = _class_labels(bottom[1], self.num, self.dim)
        g = self.margin.copy()
        g[np.arange(self.num), lab] *= -1
        w = top[0].diff.reshape(-1)[0]
        if self.norm_type == 1:
            g = np.sign(g) * self.dtype.type(w / self.num)
        else:
            g *= self.dtype.type(w * 2 / self.num)
        bottom[0].diff[...] = g.reshape(bottom[0].shape)


KLOG_THRESHOLD = 1e-20


@register("MultinomialLogisticLoss")
class MultinomialLogisticLoss(LossLayer):
    """Bottom 0 holds probabilities p (N, D...), bottom 1 a class index per item.

    E = -sum_n log(max(p_{n,l_n}, 1e-20)) / N
    dE/dp_{n,l_n} = -loss_weight / (N max(p_{n,l_n}, 1e-20)), 0 elsewhere.
    """

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        _check_label_blob(bottom[1])
        self.num = bottom[0].shape[0]
        self.dim = bottom[0].count // max(self.num, 1)

    def _picked(self, bottom):
        p = bottom[0].data.reshape(self.num, self.dim)
        lab = _class_labels(bottom[1], self.num, self.dim)
        return lab, np.maximum(p[np.arange(self.num), lab], self.dtype.type(KLOG_THRESHOLD))

    def forward(self, bottom, top):
        _, pl = self._picked(bottom)
        top[0].data[...] = -np.sum(np.log(pl), dtype=self.dtype) / self.dtype.type(self.num)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[1]:
            raise LayerError("MultinomialLogisticLoss cannot backpropagate to the label input")
        if not propagate_down[0]:
            return
        lab, pl = self._picked(bottom)
        scale = self.dtype.type(-top[0].diff.reshape(-1)[0] / self.num)
        g = np.zeros((self.num, self.dim), self.dtype)
        g[np.arange(self.num), lab] = scale / pl
        bottom[0].diff[...] = g.reshape(bottom[0].shape)


@register("InfogainLoss")
class InfogainLoss(LossLayer):
    """Softmax then infogain-weighted log loss (Caffe's current InfogainLoss).

    p = softmax(x) along infogain_loss_param.axis (K = x.shape[axis] labels), label l
    at every other position, H a K x K matrix (bottom 2, or the BlobProto file
    infogain_loss_param.source):
    E = -sum_{positions, l != ignore_label} sum_k H[l, k] log(max(p_k, 1e-20)) / norm
    dE/dx_k = (p_k * sum_j H[l, j] - H[l, k]) * loss_weight / norm  (0 where ignored)
    norm from loss_param.normalization (default VALID = non-ignored positions);
    the legacy ``normalize`` field is refused, as Caffe does.  Optional top 1 = p.
    """
    exact_bottoms = None
    min_bottoms, max_bottoms = 2, 3
    exact_tops = None
    min_tops, max_tops = 1, 2

    def allow_force_backward(self, bottom_index):
        # Caffe would force a gradient into H and then abort; we never force it
        return bottom_index == 0

    def setup(self, bottom, top):
        lp = self.param.loss_param
        self.ignore = int(lp.ignore_label) if lp.HasField("ignore_label") else None
        check(not lp.HasField("normalize"),
              'loss_param.normalize is deprecated for InfogainLoss; use "normalization"')
        self.mode = lp.normalization
        self.infogain = None
        if len(bottom) < 3:
            ip = self.param.infogain_loss_param
            check(ip.HasField("source"), "Infogain matrix source must be specified "
                  "(infogain_loss_param.source, or H as a third bottom)")
            self.infogain = self._read_matrix(ip.source)

    def _read_matrix(self, source):
        import os
        from ..io.blobproto import blob_array
        from ..io.prototxt import read_binary
        from ..proto import caffe_pb2
        path = source
        if not os.path.isabs(path) and not os.path.exists(path):
            cand = os.path.join(self.ctx.base_dir or ".", path)
            if os.path.exists(cand):
                path = cand
        limit = self.ctx.budget.limit if self.ctx.budget is not None else None
        bp = read_binary(path, caffe_pb2.BlobProto(), limit=limit)
        try:
            return blob_array(bp, self.dtype, limit=limit)
        except NetrunError as e:
            raise LayerError(f"{path}: {e.message}") from None

    def reshape(self, bottom, top):
        LossLayer.reshape(self, bottom, top)
        self.label_axis(bottom, self.param.infogain_loss_param.axis, "infogain")
        shape = bottom[0].shape
        self.K = shape[self.axis]
        h_count = bottom[2].count if len(bottom) > 2 else self.infogain.size
        if h_count != self.K * self.K:
            hs = bottom[2].shape if len(bottom) > 2 else self.infogain.shape
            raise LayerError(f"infogain matrix H has shape {hs}; it must hold {self.K}x{self.K} "
                             f"values for {self.K} labels")
        top[0].reshape(())
        if len(top) > 1:
            top[1].reshape_like(bottom[0])

    def _h(self, bottom):
        h = bottom[2].data if len(bottom) > 2 else self.infogain
        return h.reshape(self.K, self.K).astype(self.dtype, copy=False)

    def _labels(self, bottom):
        lab = np.trunc(bottom[1].data.reshape(self.outer, self.inner)).astype(np.int64)
        valid = np.ones(lab.shape, bool) if self.ignore is None else lab != self.ignore
        bad = valid & ((lab < 0) | (lab >= self.K))
        if bad.any():
            raise LayerError(f"label {int(lab[bad][0])} out of range [0, {self.K})")
        return np.where(valid, lab, 0), valid

    def forward(self, bottom, top):
        self.prob = softmax(bottom[0].data, self.axis)
        p = self.prob.reshape(self.outer, self.K, self.inner)
        lab, valid = self._labels(bottom)
        H = self._h(bottom)
        logp = np.log(np.maximum(p, self.dtype.type(KLOG_THRESHOLD)))
        rows = H[lab]                                       # (outer, inner, K)
        per = np.einsum("oik,oki->oi", rows, logp)
        self.valid_count = int(valid.sum())
        loss = -np.sum(per[valid], dtype=self.dtype)
        self.norm = self.normalizer(self.mode, self.outer, self.inner, self.valid_count)
        top[0].data[...] = loss / self.dtype.type(self.norm)
        if len(top) > 1:
            top[1].data[...] = self.prob

    def backward(self, top, propagate_down, bottom):
        if propagate_down[1]:
            raise LayerError("InfogainLoss cannot backpropagate to the label input")
        if len(propagate_down) > 2 and propagate_down[2]:
            raise LayerError("InfogainLoss cannot backpropagate to the infogain matrix input")
        if not propagate_down[0]:
            return
        p = self.prob.reshape(self.outer, self.K, self.inner)
        lab, valid = self._labels(bottom)
        H = self._h(bottom)
        rowsum = H.sum(axis=1)
        g = p * rowsum[lab][:, None, :] - np.moveaxis(H[lab], 2, 1)
        g *= valid[:, None, :]
        g *= self.dtype.type(top[0].diff.reshape(-1)[0] / self.norm)
        bottom[0].diff[...] = g.reshape(bottom[0].shape)


@register("ContrastiveLoss")
class ContrastiveLoss(LossLayer):
    """Siamese loss on pairs (a_n, b_n) of shape (N, C[, 1, 1]) with similarity y_n
    (int(y_n) != 0: similar).  d_n^2 = ||a_n - b_n||^2, m = margin:

    E = sum_n [ y_n d_n^2 + (1 - y_n) max(m - d_n, 0)^2 ] / (2N)
        legacy_version: (1 - y_n) max(m - d_n^2, 0) instead
    dE/da_n = -dE/db_n = w/N * (a_n - b_n)                                      similar
                      = -w/N * (m - d_n)/(d_n + 1e-4) * (a_n - b_n) if m - d_n > 0  dissimilar
                        (legacy: -w/N * (a_n - b_n) if m - d_n^2 > 0), else 0
    (Caffe's 1e-4 in the dissimilar gradient is kept: it is not the exact derivative.)
    """
    exact_bottoms = 3

    def allow_force_backward(self, bottom_index):
        return bottom_index != 2

    def setup(self, bottom, top):
        a, b, y = bottom
        if _legacy_dim(a, 1) != _legacy_dim(b, 1):
            raise LayerError(f"a and b must have the same channels: {a.shape} and {b.shape}")
        for blob, what in ((a, "a"), (b, "b")):
            if _legacy_dim(blob, 2) != 1 or _legacy_dim(blob, 3) != 1:
                raise LayerError(f"{what} must be (N, C) or (N, C, 1, 1), got {blob.shape}")
        _check_label_blob(y)
        p = self.param.contrastive_loss_param
        self.margin = self.dtype.type(p.margin)
        self.legacy = p.legacy_version

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        a, b, y = bottom
        self.num = a.shape[0]
        self.ch = _legacy_dim(a, 1)
        if a.count != self.num * self.ch or b.count != a.count or y.count < self.num:
            raise LayerError(f"bottoms do not fit: a {a.shape}, b {b.shape}, similarity {y.shape}")

    def forward(self, bottom, top):
        a = bottom[0].data.reshape(self.num, self.ch)
        b = bottom[1].data.reshape(self.num, self.ch)
        self.delta = a - b
        self.dist_sq = np.einsum("nc,nc->n", self.delta, self.delta)
        self.similar = np.trunc(bottom[2].data.reshape(-1)[:self.num]) != 0
        zero = self.dtype.type(0)
        if self.legacy:
            dis = np.maximum(self.margin - self.dist_sq, zero)
        else:
            dis = np.maximum(self.margin - np.sqrt(self.dist_sq), zero) ** 2
        per = np.where(self.similar, self.dist_sq, dis)
        loss = np.sum(per, dtype=self.dtype) / self.dtype.type(self.num) / self.dtype.type(2)
        top[0].data[...] = loss

    def backward(self, top, propagate_down, bottom):
        w = top[0].diff.reshape(-1)[0]
        if self.legacy:
            mdist = self.margin - self.dist_sq
            beta_unit = np.full(self.num, -1, self.dtype)
        else:
            dist = np.sqrt(self.dist_sq)
            mdist = self.margin - dist
            beta_unit = -mdist / (dist + self.dtype.type(1e-4))
        coef_unit = np.where(self.similar, self.dtype.type(1),
                             np.where(mdist > 0, beta_unit, self.dtype.type(0)))
        for i, sign in ((0, 1), (1, -1)):
            if propagate_down[i]:
                alpha = self.dtype.type(sign * w / self.num)
                g = (coef_unit * alpha)[:, None] * self.delta
                bottom[i].diff[...] = g.reshape(bottom[i].shape)
        if propagate_down[2]:
            bottom[2].diff[...] = 0      # Caffe computes no gradient for the similarity
