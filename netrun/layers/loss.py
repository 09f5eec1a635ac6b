"""Loss layers: top 0 is a scalar (shape ``()``) that carries loss weight 1
unless ``loss_weight`` says otherwise.  In backward, ``top[0].diff`` holds that
weight, so every gradient is scaled by it.
"""
import numpy as np

from ..errors import LayerError, check
from .base import Layer, canonical_axis, register
from .common import softmax

FLT_MIN = np.float32(np.finfo(np.float32).tiny)
FULL, VALID, BATCH_SIZE, NONE = 0, 1, 2, 3


class LossLayer(Layer):
    """Base: two bottoms (prediction, target), a scalar loss top."""
    exact_bottoms = 2
    exact_tops = 1
    is_loss = True

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
    """
    max_tops = 2
    min_tops = 1
    exact_tops = None

    def setup(self, bottom, top):
        lp = self.param.loss_param
        self.ignore = int(lp.ignore_label) if lp.HasField("ignore_label") else None
        self.mode = self.normalization()

    def reshape(self, bottom, top):
        self.axis = canonical_axis(self.param.softmax_param.axis, bottom[0].num_axes)
        shape = bottom[0].shape
        self.outer = int(np.prod(shape[:self.axis], dtype=np.int64))
        self.inner = int(np.prod(shape[self.axis + 1:], dtype=np.int64))
        if bottom[1].count != self.outer * self.inner:
            raise LayerError(
                f"label count {bottom[1].count} (shape {bottom[1].shape}) must equal the "
                f"prediction count {self.outer * self.inner} without its softmax axis "
                f"(shape {shape}, axis {self.axis})")
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
        norm = self.normalizer(self.mode, self.outer, self.inner,
                               self.valid_count if self.ignore is not None else -1)
        g *= self.dtype.type(top[0].diff.reshape(-1)[0] / norm)
        bottom[0].diff[...] = g.reshape(bottom[0].shape)
