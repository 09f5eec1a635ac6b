"""Element-wise layers: one bottom, one top of the same shape, may run in place.

For an in-place layer ``top[0] is bottom[0]``: after forward the input values
are gone, so a backward that needs them must keep what it needs (or read the
output, when the output determines the gradient).
"""
import numpy as np

from .base import Layer, register


class NeuronLayer(Layer):
    exact_bottoms = 1
    exact_tops = 1

    def reshape(self, bottom, top):
        top[0].reshape_like(bottom[0])

    @staticmethod
    def in_place(bottom, top):
        return top[0] is bottom[0]


@register("ReLU")
class ReLU(NeuronLayer):
    """y = max(x, 0) + s * min(x, 0)  (s = relu_param.negative_slope; s != 0: LeakyReLU)

    dE/dx = dE/dy * ((x > 0) + s * (x <= 0)): the derivative at x == 0 is s
    (0 for plain ReLU), as in Caffe.

    In place, Caffe reads x back from y.  The sign of y is the sign of x when
    s >= 0, so that is exact; with s < 0 it is not, and Caffe's gradient is
    wrong for negative inputs.  netrun keeps the mask (x > 0) from the forward
    pass in that case, gives the true gradient, and warns at setup.
    """

    def setup(self, bottom, top):
        self.slope = float(self.param.relu_param.negative_slope)
        self._mask = None
        if self.in_place(bottom, top) and self.slope < 0:
            self.ctx.warn(
                f'layer "{self.name}" (ReLU): in place with negative_slope {self.slope:g}: '
                "netrun computes the true gradient; Caffe reads the sign from the output "
                "and gets the negative inputs' gradient wrong")

    def forward(self, bottom, top):
        x = bottom[0].data
        if self.in_place(bottom, top) and self.slope < 0:
            self._mask = x > 0
        if self.slope == 0:
            np.maximum(x, 0, out=top[0].data)
        else:
            top[0].data[...] = np.where(x > 0, x, x * self.dtype.type(self.slope))

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy = top[0].diff
        if self._mask is not None and self.in_place(bottom, top):
            pos = self._mask
        else:
            pos = bottom[0].data > 0
        if self.slope == 0:
            bottom[0].diff[...] = np.where(pos, dy, 0)
        else:
            bottom[0].diff[...] = dy * np.where(pos, 1, self.dtype.type(self.slope))


@register("Sigmoid")
class Sigmoid(NeuronLayer):
    """y = 1 / (1 + exp(-x));  dE/dx = dE/dy * y * (1 - y)  (reads only y)"""

    def forward(self, bottom, top):
        x = bottom[0].data
        # 0.5 * tanh(x / 2) + 0.5 is the logistic function without overflow in exp
        y = np.tanh(x * self.dtype.type(0.5))
        y *= 0.5
        y += 0.5
        top[0].data[...] = y

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            y = top[0].data
            bottom[0].diff[...] = top[0].diff * y * (1 - y)


@register("TanH")
class TanH(NeuronLayer):
    """y = tanh(x);  dE/dx = dE/dy * (1 - y^2)  (reads only y)"""

    def forward(self, bottom, top):
        np.tanh(bottom[0].data, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            y = top[0].data
            bottom[0].diff[...] = top[0].diff * (1 - y * y)
