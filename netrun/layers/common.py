"""Layers that move, combine or project whole blobs."""
import numpy as np

from ..errors import LayerError, check
from .base import Layer, canonical_axis, register

ELTWISE_PROD, ELTWISE_SUM, ELTWISE_MAX = 0, 1, 2


@register("Split")
class Split(Layer):
    """Every top shares the bottom's data;  dE/dx = sum_i dE/dy_i.

    Caffe inserts one for every blob that feeds more than one bottom.
    """
    exact_bottoms = 1
    min_tops = 1

    def reshape(self, bottom, top):
        for t in top:
            check(t is not bottom[0], "Split cannot run in place")
            t.reshape_like(bottom[0])
            t.share_data(bottom[0])

    def forward(self, bottom, top):
        for t in top:
            t.share_data(bottom[0])

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        out = bottom[0].diff
        if len(top) == 1:
            out[...] = top[0].diff
            return
        np.add(top[0].diff, top[1].diff, out=out)
        for t in top[2:]:
            out += t.diff


@register("Silence")
class Silence(Layer):
    """No tops: swallows its bottoms so they are not net outputs; gradient 0."""
    min_bottoms = 1
    exact_tops = 0

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        for b, p in zip(bottom, propagate_down):
            if p:
                b.diff[...] = 0


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
        if self.op == ELTWISE_SUM:
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
                b.diff[...] = dy if c == 1 else dy * self.dtype.type(c)
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
        k = int(np.prod(bottom[0].shape[axis:], dtype=np.int64))
        if k != self.K:
            raise LayerError(f"input size {k} (shape {bottom[0].shape} from axis {axis}) does not "
                             f"match the weights' {self.K}")
        self.M = int(np.prod(bottom[0].shape[:axis], dtype=np.int64))
        top[0].reshape(bottom[0].shape[:axis] + (self.N,))

    def _w(self):
        w = self.blobs[0].data
        return w.T if self.transpose else w       # (N, K)

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self.M, self.K)
        y = top[0].data.reshape(self.M, self.N)
        np.matmul(x, self._w().T, out=y)
        if self.bias_term:
            y += self.blobs[1].data

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff.reshape(self.M, self.N)
        x = bottom[0].data.reshape(self.M, self.K)
        if self.param_propagate_down[0]:
            wd = self.blobs[0].diff
            if self.transpose:
                wd += x.T @ dy
            else:
                wd += dy.T @ x
        if self.bias_term and self.param_propagate_down[1]:
            self.blobs[1].diff += dy.sum(axis=0)
        if propagate_down[0]:
            np.matmul(dy, self._w(), out=bottom[0].diff.reshape(self.M, self.K))


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
