"""Layers that combine, project or summarize whole blobs (Eltwise, InnerProduct, Softmax,
Reduction, ArgMax, Accuracy, Embed); the ones that only route or reshape them are in
shape.py."""
import math

import numpy as np

from .. import kernels
from ..errors import LayerError, check
from ..kernels.blas import gemm, gemm_acc
from ..kernels.tiles import flat_parts
from .base import Layer, canonical_axis, no_gradient, not_in_place, register, shape_count

# InnerProduct with one item: Caffe's one-row GEMM up to this much weight memory
ROW_GEMM_MAX_BYTES = 16 << 20

ELTWISE_PROD, ELTWISE_SUM, ELTWISE_MAX = 0, 1, 2
REDUCTION_SUM, REDUCTION_ASUM, REDUCTION_SUMSQ, REDUCTION_MEAN = 1, 2, 3, 4


@register("Eltwise")
class Eltwise(Layer):
    """Element-wise over bottoms of one shape:
    SUM  y = sum_i c_i x_i            dE/dx_i = c_i dE/dy
    PROD y = prod_i x_i               dE/dx_i = dE/dy * prod_{j!=i} x_j
    MAX  y = max_i x_i                dE/dx_i = dE/dy where x_i was the first maximum
    """
    min_bottoms = 2
    exact_tops = 1

    def setup(self, bottom, top):
        p = self.param.eltwise_param
        self.op = p.operation
        check(len(p.coeff) in (0, len(bottom)),
              "Eltwise takes one coefficient per bottom blob")
        check(not (self.op == ELTWISE_PROD and len(p.coeff)),
              "Eltwise only takes coefficients for the SUM operation")
        self.coeff = list(p.coeff) if len(p.coeff) else [1.0] * len(bottom)
        self.stable_prod_grad = p.stable_prod_grad

    def reshape(self, bottom, top):
        for i, b in enumerate(bottom[1:], 1):
            if b.shape != bottom[0].shape:
                raise LayerError(f"bottom {i} has shape {b.shape}, bottom 0 has {bottom[0].shape}: "
                                 "Eltwise needs equal shapes")
        top[0].reshape_like(bottom[0])
        if self.op == ELTWISE_MAX:
            self.argmax = np.zeros(bottom[0].shape, np.int32)

    def forward(self, bottom, top):
        xs = [b.data for b in bottom]
        out = top[0].data
        if (self.op == ELTWISE_SUM and all(c == 1 for c in self.coeff)
                and not any(np.shares_memory(out, x) for x in xs[1:])):
            kernels.sum_into(out, xs)
        elif self.op == ELTWISE_SUM:
            acc = xs[0] * self.dtype.type(self.coeff[0]) if self.coeff[0] != 1 else xs[0].copy()
            for c, x in zip(self.coeff[1:], xs[1:]):
                acc += x * self.dtype.type(c) if c != 1 else x
            out[...] = acc
        elif self.op == ELTWISE_PROD:
            acc = xs[0] * xs[1]
            for x in xs[2:]:
                acc *= x
            out[...] = acc
        elif self.op == ELTWISE_MAX:
            acc = xs[0].copy()
            arg = np.zeros(acc.shape, np.int32)
            for i, x in enumerate(xs[1:], 1):
                better = x > acc          # strict: ties stay with the first bottom
                np.copyto(acc, x, where=better)
                arg[better] = i
            out[...] = acc
            self.argmax = arg
        else:
            raise LayerError(f"unknown Eltwise operation {self.op}")

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff
        for i, (b, p) in enumerate(zip(bottom, propagate_down)):
            if not p:
                continue
            if self.op == ELTWISE_SUM:
                c = self.coeff[i]
                if c == 1:
                    flat_parts(np.copyto, b.diff, dy)
                else:
                    b.diff[...] = dy * self.dtype.type(c)
            elif self.op == ELTWISE_PROD:
                if self.stable_prod_grad:
                    others = [o.data for j, o in enumerate(bottom) if j != i]
                    acc = others[0].copy()
                    for o in others[1:]:
                        acc *= o
                    b.diff[...] = acc * dy
                else:
                    b.diff[...] = top[0].data / b.data * dy
            else:
                b.diff[...] = np.where(self.argmax == i, dy, 0)


@register("InnerProduct")
class InnerProduct(Layer):
    """Fully connected: x reshaped to (M, K) at ``axis``; W is (N, K), or (K, N)
    with ``transpose``.

    y = x W^T + b;   dE/dW += dE/dy^T x;   dE/db += sum_m dE/dy;   dE/dx = dE/dy W
    """
    in_place_ok = False
    exact_bottoms = 1
    exact_tops = 1

    def setup(self, bottom, top):
        p = self.param.inner_product_param
        self.N = int(p.num_output)
        check(self.N > 0, "inner_product_param.num_output must be positive")
        self.bias_term = p.bias_term
        self.transpose = p.transpose
        self.axis = canonical_axis(p.axis, bottom[0].num_axes)
        self.K = int(np.prod(bottom[0].shape[self.axis:], dtype=np.int64))
        wshape = (self.K, self.N) if self.transpose else (self.N, self.K)
        self.blobs = [self.new_param(wshape, p.weight_filler)]
        if self.bias_term:
            self.blobs.append(self.new_param((self.N,), p.bias_filler))

    def reshape(self, bottom, top):
        axis = canonical_axis(self.param.inner_product_param.axis, bottom[0].num_axes)
        k = math.prod(bottom[0].shape[axis:])
        if k != self.K:
            raise LayerError(f"input size {k} (shape {bottom[0].shape} from axis {axis}) does not "
                             f"match the weights' {self.K}")
        self.M = math.prod(bottom[0].shape[:axis])
        top[0].reshape(bottom[0].shape[:axis] + (self.N,))

    def _w(self):
        w = self.blobs[0].data
        return w.T if self.transpose else w       # (N, K)

    def _row_gemm(self):
        """One item: Caffe's GEMM with one row where the weights are small enough that
        OpenBLAS packing them costs little; numpy's GEMV (other sums) for large ones
        (CaffeNet's fc6, 151 MB: a one-row GEMM there takes 20 ms more)."""
        return self.M == 1 and self.blobs[0].data.nbytes <= ROW_GEMM_MAX_BYTES

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self.M, self.K)
        y = top[0].data.reshape(self.M, self.N)
        if self._row_gemm():
            gemm(x, self._w().T, y)
        else:
            np.matmul(x, self._w().T, out=y)
        if self.bias_term:
            y += self.blobs[1].data

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff.reshape(self.M, self.N)
        x = bottom[0].data.reshape(self.M, self.K)
        if self.param_propagate_down[0]:
            wd = self.blobs[0].diff
            if self.transpose:
                accumulate_outer(wd, x, dy)
            else:
                accumulate_outer(wd, dy, x)
        if self.bias_term and self.param_propagate_down[1]:     # Caffe's GEMV: dy^T ones
            self.blobs[1].diff += dy.T @ np.ones(self.M, dy.dtype)
        if propagate_down[0]:
            dx = bottom[0].diff.reshape(self.M, self.K)
            if self._row_gemm():
                gemm(dy, self._w(), dx)
            else:
                np.matmul(dy, self._w(), out=dx)


def accumulate_outer(out, a, b):
    """out (P, Q) += a^T b for a (M, P), b (M, Q): Caffe's GEMM with beta = 1, one BLAS
    call adding into ``out`` (kernels.blas)."""
    gemm_acc(a.T, b, out)


@register("Softmax")
class Softmax(Layer):
    """y = exp(x - max) / sum exp(x - max) along ``axis``;
    dE/dx = (dE/dy - sum(dE/dy * y)) * y   (reads only y)
    """
    exact_bottoms = 1
    exact_tops = 1

    def reshape(self, bottom, top):
        self.axis = canonical_axis(self.param.softmax_param.axis, bottom[0].num_axes)
        top[0].reshape_like(bottom[0])

    def forward(self, bottom, top):
        top[0].data[...] = softmax(bottom[0].data, self.axis)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            y = top[0].data
            dy = top[0].diff
            s = np.sum(dy * y, axis=self.axis, keepdims=True)
            bottom[0].diff[...] = (dy - s) * y


def softmax(x, axis):
    e = x - np.max(x, axis=axis, keepdims=True)
    np.exp(e, out=e)
    e /= np.sum(e, axis=axis, keepdims=True)
    return e


@register("Reduction")
class Reduction(Layer):
    """Reduces all axes from ``axis`` (reduction_param.axis, default 0) to the end; the top
    keeps the axes before it (a scalar for axis 0).  With c = coeff (default 1) and
    the D reduced elements x_d of each output:

    SUM    y = c sum x_d           dE/dx_d = c dE/dy
    ASUM   y = c sum |x_d|         dE/dx_d = c dE/dy sign(x_d)
    SUMSQ  y = c sum x_d^2         dE/dx_d = 2 c dE/dy x_d
    MEAN   y = (c/D) sum x_d       dE/dx_d = (c/D) dE/dy
    """
    exact_bottoms = 1
    exact_tops = 1

    def setup(self, bottom, top):
        self.op = self.param.reduction_param.operation
        check(self.op in (REDUCTION_SUM, REDUCTION_ASUM, REDUCTION_SUMSQ, REDUCTION_MEAN),
              f"unknown Reduction operation {self.op}")
        not_in_place(self, bottom, top)

    def reshape(self, bottom, top):
        p = self.param.reduction_param
        shape = bottom[0].shape
        self.axis = canonical_axis(p.axis, len(shape))
        top[0].reshape(shape[:self.axis])
        self.num = shape_count(shape, 0, self.axis)
        self.dim = shape_count(shape, self.axis)
        t = self.dtype.type
        self.coeff = t(p.coeff)
        if self.op == REDUCTION_MEAN:
            self.coeff = t(self.coeff / t(self.dim)) if self.dim else t(np.inf)

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self.num, self.dim)
        if self.op in (REDUCTION_SUM, REDUCTION_MEAN):
            y = x.sum(axis=1)
        elif self.op == REDUCTION_ASUM:
            y = np.abs(x).sum(axis=1)
        else:
            y = np.einsum("ij,ij->i", x, x)
        if self.coeff != 1:
            y = y * self.coeff
        top[0].data.reshape(self.num)[...] = y

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        c = (top[0].diff.reshape(self.num, 1) * self.coeff)
        dx = bottom[0].diff.reshape(self.num, self.dim)
        if self.op in (REDUCTION_SUM, REDUCTION_MEAN):
            dx[...] = c
        else:
            x = bottom[0].data.reshape(self.num, self.dim)
            if self.op == REDUCTION_ASUM:
                dx[...] = np.sign(x) * c
            else:
                dx[...] = x * (2 * c)


def _top_k(v, k):
    """Indices of the k largest entries along the last axis in Caffe's order: by value,
    descending, ties to the larger index (std::partial_sort with std::greater on
    (value, index) pairs)."""
    dim = v.shape[-1]
    order = np.argsort(-v[..., ::-1], axis=-1, kind="stable")[..., :k]
    return dim - 1 - order


@register("ArgMax")
class ArgMax(Layer):
    """Indices (and with ``out_max_val`` the values) of the ``top_k`` largest entries.

    With ``axis``: along that axis; the top is the bottom's shape with that axis
    set to top_k, holding the values if out_max_val, else the indices.
    Without: over each item's flattened entries (axes 1..); the top has shape
    (N, 1, top_k) -- or (N, 2, top_k) with indices then values when out_max_val --
    padded with 1s to the bottom's number of axes.  Ties go to the larger index.
    No backward in Caffe.
    """
    exact_bottoms = 1
    exact_tops = 1
    has_backward = False

    def setup(self, bottom, top):
        p = self.param.argmax_param
        self.out_max_val = p.out_max_val
        self.top_k = int(p.top_k)
        check(self.top_k >= 1, "argmax_param.top_k must be at least 1")
        self.has_axis = p.HasField("axis")
        not_in_place(self, bottom, top)

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if self.has_axis:
            self.axis = canonical_axis(self.param.argmax_param.axis, len(shape))
            check(self.top_k <= shape[self.axis],
                  f"argmax_param.top_k {self.top_k} is larger than axis {self.axis} of the input "
                  f"{shape}")
            new = list(shape)
            new[self.axis] = self.top_k
        else:
            check(self.top_k <= shape_count(shape, 1),
                  f"argmax_param.top_k {self.top_k} is larger than the {shape_count(shape, 1)} entries "
                  f"per item of the input {shape}")
            new = [1] * max(len(shape), 3)
            new[0] = shape[0]
            new[2] = self.top_k
            if self.out_max_val:
                new[1] = 2
        top[0].reshape(new)

    def forward(self, bottom, top):
        x = bottom[0].data
        if self.has_axis:
            v = np.moveaxis(x, self.axis, -1)
            idx = _top_k(v, self.top_k)
            out = np.take_along_axis(v, idx, axis=-1) if self.out_max_val else idx
            top[0].data[...] = np.moveaxis(out, -1, self.axis)
        else:
            v = x.reshape(x.shape[0], -1)
            idx = _top_k(v, self.top_k)
            y = top[0].data.reshape(x.shape[0], -1, self.top_k)
            y[:, 0] = idx
            if self.out_max_val:
                y[:, 1] = np.take_along_axis(v, idx, axis=-1)


@register("Accuracy")
class Accuracy(Layer):
    """Top-k classification accuracy (accuracy_param: top_k 1, axis 1, ignore_label).

    bottom 0: scores with the classes along ``axis``; bottom 1: labels, one per
    outer x inner position.  A prediction is right when fewer than top_k classes rank
    before the true one (higher score, or equal score and larger index -- Caffe's
    partial_sort order).  top 0 = right / counted (labels equal to ignore_label are
    not counted; 0/0 gives NaN as in Caffe); the optional top 1 holds the accuracy per
    class (0 for a class that never occurs).  No backward in Caffe.
    """
    exact_bottoms = 2
    min_tops = 1
    max_tops = 2
    has_backward = False

    def setup(self, bottom, top):
        p = self.param.accuracy_param
        self.top_k = int(p.top_k)
        self.ignore = int(p.ignore_label) if p.HasField("ignore_label") else None
        not_in_place(self, bottom, top)

    def reshape(self, bottom, top):
        x, lab = bottom[0], bottom[1]
        check(lab.count > 0 and self.top_k <= x.count // lab.count,
              f"accuracy_param.top_k {self.top_k} is larger than the number of classes "
              f"(scores {x.shape}, labels {lab.shape})")
        self.axis = canonical_axis(self.param.accuracy_param.axis, x.num_axes)
        self.outer = shape_count(x.shape, 0, self.axis)
        self.inner = shape_count(x.shape, self.axis + 1)
        if self.outer * self.inner != lab.count:
            raise LayerError(f"labels {lab.shape} do not match the scores {x.shape}: with axis "
                             f"{self.axis} there must be {self.outer * self.inner} labels")
        top[0].reshape(())
        if len(top) > 1:
            top[1].reshape((x.shape[self.axis],))

    def forward(self, bottom, top):
        C = bottom[0].shape[self.axis]
        x = bottom[0].data.reshape(self.outer, C, self.inner)
        lab = bottom[1].data.reshape(self.outer, self.inner).astype(np.int64)
        valid = lab != self.ignore if self.ignore is not None else np.ones(lab.shape, bool)
        bad = valid & ((lab < 0) | (lab >= C))
        if bad.any():
            raise LayerError(f"label {int(lab[bad][0])} out of range for {C} classes")
        safe = np.where(valid, lab, 0)
        v = np.take_along_axis(x, safe[:, None, :], axis=1)
        k = np.arange(C).reshape(1, C, 1)
        ahead = (x > v) | ((x == v) & (k > safe[:, None, :]))
        right = (ahead.sum(axis=1) < self.top_k) & valid
        t = self.dtype.type
        n = int(valid.sum())
        with np.errstate(invalid="ignore", divide="ignore"):
            top[0].data[...] = t(right.sum()) / t(n)
        if len(top) > 1:
            nums = np.bincount(safe[valid], minlength=C)
            hits = np.bincount(safe[right], minlength=C)
            per = np.zeros(C, self.dtype)
            seen = nums > 0
            per[seen] = hits[seen].astype(self.dtype) / nums[seen].astype(self.dtype)
            top[1].data[...] = per


@register("Embed")
class Embed(Layer):
    """Looks up rows of a (input_dim, num_output) table W by integer index
    (embed_param; bias_term default true, bias b of shape (num_output,)).

    y[..., :] = W[int(x[...]), :] + b   (top shape = bottom shape + (num_output,))
    dE/dW[k] += sum of dE/dy over the positions with index k;  dE/db += sum of dE/dy
    No gradient to the indices.
    """
    exact_bottoms = 1
    exact_tops = 1

    def setup(self, bottom, top):
        p = self.param.embed_param
        self.N = int(p.num_output)
        check(self.N > 0, "embed_param.num_output must be positive")
        self.K = int(p.input_dim)
        check(self.K > 0, "embed_param.input_dim must be positive")
        self.bias_term = p.bias_term
        self.blobs = [self.new_param((self.K, self.N), p.weight_filler)]
        if self.bias_term:
            self.blobs.append(self.new_param((self.N,), p.bias_filler))
        not_in_place(self, bottom, top)
        self._warned = False

    def allow_force_backward(self, bottom_index):
        return False

    def reshape(self, bottom, top):
        top[0].reshape(bottom[0].shape + (self.N,))

    def _indices(self, x):
        idx = x.reshape(-1).astype(np.int64)        # static_cast<int>: truncation
        if idx.size and (idx.min() < 0 or idx.max() >= self.K):
            bad = idx[(idx < 0) | (idx >= self.K)][0]
            raise LayerError(f"index {int(bad)} out of range for input_dim {self.K}")
        return idx

    def forward(self, bottom, top):
        idx = self._indices(bottom[0].data)
        y = top[0].data.reshape(-1, self.N)
        np.take(self.blobs[0].data, idx, axis=0, out=y)
        if self.bias_term:
            y += self.blobs[1].data

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff.reshape(-1, self.N)
        if self.param_propagate_down[0]:
            idx = self._indices(bottom[0].data)
            np.add.at(self.blobs[0].diff, idx, dy)
        if self.bias_term and self.param_propagate_down[1]:     # Caffe's GEMV: dy^T ones
            self.blobs[1].diff += dy.T @ np.ones(dy.shape[0], dy.dtype)
        if propagate_down[0]:
            no_gradient(self, bottom[0], "the indices")
