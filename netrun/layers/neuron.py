"""Element-wise layers: one bottom, one top of the same shape, may run in place.

For an in-place layer ``top[0] is bottom[0]``: after forward the input values
are gone, so a backward that needs them must keep what it needs (or read the
output, when the output determines the gradient).
"""
import math

import numpy as np

from .. import kernels
from ..errors import LayerError, check
from ..proto import caffe_pb2
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
            kernels.relu_forward(x, top[0].data)
        else:
            top[0].data[...] = np.where(x > 0, x, x * self.dtype.type(self.slope))

    def channel_dims(self, bottom):
        shape = bottom[0].shape
        return (shape[0], shape[1], math.prod(shape[2:])) if len(shape) >= 2 else None

    def channel_forward(self, bottom, top):
        dims = self.channel_dims(bottom)
        if self.slope != 0 or dims is None:
            return None
        x, y = bottom[0].data.reshape(dims), top[0].data.reshape(dims)
        return lambda lo, hi: kernels.relu_forward(x[:, lo:hi], y[:, lo:hi])

    def channel_backward(self, top, propagate_down, bottom):
        dims = self.channel_dims(bottom)
        if self.slope != 0 or dims is None or not propagate_down[0]:
            return None
        dy, x, dx = (a.reshape(dims) for a in (top[0].diff, bottom[0].data, bottom[0].diff))
        return lambda lo, hi: kernels.relu_backward(dy[:, lo:hi], x[:, lo:hi], dx[:, lo:hi])

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy = top[0].diff
        if self.slope == 0:             # Caffe's dy * (x > 0), in place when it can be
            kernels.relu_backward(dy, bottom[0].data, bottom[0].diff)
            return
        # the mask kept by forward (in place, negative slope), else x > 0
        in_place_mask = self._mask is not None and self.in_place(bottom, top)
        pos = self._mask if in_place_mask else np.greater(bottom[0].data, 0)
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


# -- helpers for the layers below ------------------------------------------------------------

def _keep_input(layer, bottom, top):
    """For an in-place layer whose backward needs x: a copy of x taken before forward
    overwrites it (None when not in place)."""
    return bottom[0].data.copy() if top[0] is bottom[0] else None


def _input(layer, bottom, top):
    """x as it was at forward: the kept copy when in place, else the bottom's data."""
    kept = getattr(layer, "_x", None)
    if top[0] is bottom[0] and kept is not None:
        return kept
    return bottom[0].data


def _warn_in_place(layer, bottom, top, what):
    if top[0] is bottom[0]:
        layer.ctx.warn(
            f'layer "{layer.name}" ({layer.type}): in place: {what}; netrun keeps a copy of '
            "the input and computes the true gradient")


def _sigmoid(x, dtype):
    """Caffe's sigmoid: 0.5 * tanh(0.5 x) + 0.5 (no overflow)."""
    y = np.tanh(x * dtype.type(0.5))
    y *= 0.5
    y += 0.5
    return y


@register("PReLU")
class PReLU(NeuronLayer):
    """Parametric ReLU with one learnable slope a_c per channel (axis 1), or a single
    slope for all channels with ``channel_shared``.

    y = max(x, 0) + a_c * min(x, 0)
    dE/dx   = dE/dy * ((x > 0) + a_c * (x <= 0))
    dE/da_c += sum over batch and spatial positions of dE/dy * x * (x <= 0)

    The slope blob has shape (C,), or () when channel_shared; the default filler
    is constant 0.25.  The input needs at least 2 axes.  In place, the input is
    copied before forward (as Caffe does) so backward sees the true x.
    """

    def setup(self, bottom, top):
        p = self.param.prelu_param
        check(bottom[0].num_axes >= 2,
              f"PReLU needs an input with at least 2 axes, got shape {bottom[0].shape}")
        self.channel_shared = p.channel_shared
        channels = bottom[0].shape[1]
        if p.HasField("filler"):
            filler = p.filler
        else:
            filler = caffe_pb2.FillerParameter(type="constant", value=0.25)
        shape = () if self.channel_shared else (channels,)
        self.blobs = [self.new_param(shape, filler)]
        self._x = None

    def reshape(self, bottom, top):
        check(bottom[0].num_axes >= 2,
              f"PReLU needs an input with at least 2 axes, got shape {bottom[0].shape}")
        if not self.channel_shared and bottom[0].shape[1] != self.blobs[0].count:
            raise LayerError(f"PReLU has {self.blobs[0].count} slopes but the input {bottom[0].shape} "
                             f"has {bottom[0].shape[1]} channels")
        top[0].reshape_like(bottom[0])

    def _slope(self, ndim):
        a = self.blobs[0].data
        if self.channel_shared:
            return a.reshape(())
        return a.reshape((1, -1) + (1,) * (ndim - 2))

    def forward(self, bottom, top):
        x = bottom[0].data
        self._x = _keep_input(self, bottom, top)
        a = self._slope(x.ndim)
        top[0].data[...] = np.maximum(x, 0) + a * np.minimum(x, 0)

    def backward(self, top, propagate_down, bottom):
        x = _input(self, bottom, top)
        dy = top[0].diff
        neg = x <= 0
        # the slope gradient first: in place, bottom diff and top diff are one array
        if self.param_propagate_down and self.param_propagate_down[0]:
            g = np.where(neg, dy * x, 0)
            if self.channel_shared:
                self.blobs[0].diff[...] += g.sum()
            else:
                axes = (0,) + tuple(range(2, x.ndim))
                self.blobs[0].diff[...] += g.sum(axis=axes)
        if propagate_down[0]:
            a = self._slope(x.ndim)
            bottom[0].diff[...] = dy * np.where(neg, a, 1)


@register("ELU")
class ELU(NeuronLayer):
    """y = x for x > 0, alpha * (exp(x) - 1) for x <= 0   (elu_param.alpha, default 1)

    dE/dx = dE/dy * ((x > 0) + (y + alpha) * (x <= 0))   -- Caffe reads y for x <= 0.

    In place Caffe tests x > 0 on the output; that is exact for alpha >= 0 (y has x's
    sign).  With alpha < 0 netrun keeps the mask (x > 0) and warns.
    """

    def setup(self, bottom, top):
        self.alpha = float(self.param.elu_param.alpha)
        self._mask = None
        if self.alpha < 0:
            _warn_in_place(self, bottom, top, f"alpha {self.alpha:g} < 0: Caffe reads the sign "
                           "of x from the output and gets the gradient wrong")

    def forward(self, bottom, top):
        x = bottom[0].data
        if self.in_place(bottom, top) and self.alpha < 0:
            self._mask = x > 0
        alpha = self.dtype.type(self.alpha)
        top[0].data[...] = np.maximum(x, 0) + alpha * (np.exp(np.minimum(x, 0)) - 1)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        if self._mask is not None and self.in_place(bottom, top):
            pos = self._mask
        else:
            pos = bottom[0].data > 0
        y = top[0].data
        dy = top[0].diff
        bottom[0].diff[...] = dy * np.where(pos, 1, y + self.dtype.type(self.alpha))


@register("Power")
class Power(NeuronLayer):
    """y = (shift + scale * x) ^ power        (power_param; defaults 1, 1, 0)

    Caffe's special cases:
    * power * scale == 0: y is the constant 1 (power 0) or shift^power, dE/dx = 0;
    * power == 1: dE/dx = scale * dE/dy;
    * power == 2: dE/dx = dE/dy * (2 scale^2 x + 2 scale shift);
    * shift == 0: dE/dx = dE/dy * power * y / x;
    * otherwise:  dE/dx = dE/dy * power * scale * y / (shift + scale * x).
    The y/x forms give NaN/Inf where the base is 0, as in Caffe.  In place (Caffe
    would read y as x) netrun keeps a copy of x and warns.
    """

    def setup(self, bottom, top):
        p = self.param.power_param
        t = self.dtype.type
        self.power, self.scale, self.shift = t(p.power), t(p.scale), t(p.shift)
        self.diff_scale = t(self.power * self.scale)
        self._needs_x = not (self.diff_scale == 0 or self.power == 1)
        self._x = None
        if self._needs_x:
            _warn_in_place(self, bottom, top, "Caffe's backward would read the output as x")

    def forward(self, bottom, top):
        out = top[0].data
        if self.diff_scale == 0:
            value = 1 if self.power == 0 else np.power(self.shift, self.power)
            out[...] = value
            return
        x = bottom[0].data
        if self._needs_x:
            self._x = _keep_input(self, bottom, top)
        t = x * self.scale if self.scale != 1 else x.copy()
        if self.shift != 0:
            t += self.shift
        if self.power != 1:
            with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
                t = np.power(t, self.power)
        out[...] = t

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy = top[0].diff
        if self.diff_scale == 0:
            bottom[0].diff[...] = 0
            return
        if self.power == 1:
            bottom[0].diff[...] = dy * self.diff_scale
            return
        x = _input(self, bottom, top)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            if self.power == 2:
                g = x * (self.diff_scale * self.scale)
                if self.shift != 0:
                    g += self.diff_scale * self.shift
            elif self.shift == 0:
                g = top[0].data / x
                g *= self.power
            else:
                base = x * self.scale if self.scale != 1 else x.copy()
                base += self.shift
                g = top[0].data / base
                if self.diff_scale != 1:
                    g *= self.diff_scale
            bottom[0].diff[...] = dy * g


@register("Exp")
class Exp(NeuronLayer):
    """y = base ^ (shift + scale * x)    (exp_param; base -1 means e; defaults -1, 1, 0)

    Computed as y = outer * exp(inner * x) with inner = ln(base) * scale and
    outer = base^shift (e^shift for base e).
    dE/dx = dE/dy * y * inner   (reads only y; in place is exact)
    """

    def setup(self, bottom, top):
        p = self.param.exp_param
        t = self.dtype.type
        base = t(p.base)
        if base != -1:
            check(base > 0, f"exp_param.base must be strictly positive (or -1 for e), got {p.base:g}")
        log_base = t(1) if base == -1 else np.log(base)
        check(np.isfinite(log_base), f"exp_param.base {p.base:g}: log(base) is not finite")
        scale, shift = t(p.scale), t(p.shift)
        self.inner = t(log_base * scale)
        if shift == 0:
            self.outer = t(1)
        else:
            self.outer = np.exp(shift) if base == -1 else np.power(base, shift)

    def forward(self, bottom, top):
        x = bottom[0].data
        with np.errstate(over="ignore"):
            y = np.exp(x if self.inner == 1 else x * self.inner)
            if self.outer != 1:
                y *= self.outer
        top[0].data[...] = y

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            g = top[0].data * top[0].diff
            if self.inner != 1:
                g *= self.inner
            bottom[0].diff[...] = g


@register("Log")
class Log(NeuronLayer):
    """y = log_base(shift + scale * x)   (log_param; base -1 means e; defaults -1, 1, 0)

    y = ln(shift + scale * x) / ln(base)
    dE/dx = dE/dy * scale / (ln(base) * (shift + scale * x))
    In place (Caffe would read y as x) netrun keeps a copy of x and warns.
    """

    def setup(self, bottom, top):
        p = self.param.log_param
        t = self.dtype.type
        base = t(p.base)
        if base != -1:
            check(base > 0, f"log_param.base must be strictly positive (or -1 for e), got {p.base:g}")
        log_base = t(1) if base == -1 else np.log(base)
        check(np.isfinite(log_base) and log_base != 0,
              f"log_param.base {p.base:g}: 1/log(base) is not finite")
        self.base_scale = t(t(1) / log_base)
        self.scale, self.shift = t(p.scale), t(p.shift)
        self.backward_num_scale = t(self.scale / log_base)
        self._x = None
        _warn_in_place(self, bottom, top, "Caffe's backward would read the output as x")

    def _arg(self, x):
        t = x * self.scale if self.scale != 1 else x.copy()
        if self.shift != 0:
            t += self.shift
        return t

    def forward(self, bottom, top):
        self._x = _keep_input(self, bottom, top)
        with np.errstate(invalid="ignore", divide="ignore"):
            y = np.log(self._arg(bottom[0].data))
        if self.base_scale != 1:
            y *= self.base_scale
        top[0].data[...] = y

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x = _input(self, bottom, top)
        with np.errstate(invalid="ignore", divide="ignore"):
            g = np.reciprocal(self._arg(x))
        if self.backward_num_scale != 1:
            g *= self.backward_num_scale
        bottom[0].diff[...] = top[0].diff * g


@register("AbsVal")
class AbsVal(NeuronLayer):
    """y = |x|;  dE/dx = dE/dy * sign(x)  (sign(0) = 0).  Caffe forbids running in place."""

    def setup(self, bottom, top):
        check(not self.in_place(bottom, top), "AbsVal does not allow in-place computation")

    def forward(self, bottom, top):
        np.abs(bottom[0].data, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = np.sign(bottom[0].data) * top[0].diff


BNLL_THRESHOLD = 50.0


@register("BNLL")
class BNLL(NeuronLayer):
    """Binomial normal log likelihood (softplus):
    y = x + log(1 + exp(-x)) for x > 0, log(1 + exp(x)) otherwise  (= max(x,0) + log1p(exp(-|x|)))
    dE/dx = dE/dy * e / (e + 1),  e = exp(min(x, 50))   (Caffe's threshold 50)
    In place (Caffe would read y as x) netrun keeps a copy of x and warns.
    """

    def setup(self, bottom, top):
        self._x = None
        _warn_in_place(self, bottom, top, "Caffe's backward would read the output as x")

    def forward(self, bottom, top):
        x = bottom[0].data
        self._x = _keep_input(self, bottom, top)
        top[0].data[...] = np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x = _input(self, bottom, top)
        e = np.exp(np.minimum(x, self.dtype.type(BNLL_THRESHOLD)))
        bottom[0].diff[...] = top[0].diff * e / (e + 1)


@register("Threshold")
class Threshold(NeuronLayer):
    """y = 1 if x > threshold else 0  (threshold_param.threshold, default 0).  No backward
    in Caffe."""
    has_backward = False

    def setup(self, bottom, top):
        self.threshold = self.dtype.type(self.param.threshold_param.threshold)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data > self.threshold


@register("Clip")
class Clip(NeuronLayer):
    """y = max(min, min(x, max))   (clip_param.min, clip_param.max, both required)

    dE/dx = dE/dy where min <= x <= max (both ends inclusive), else 0.
    In place (Caffe would test the clipped output and pass every gradient) netrun
    keeps the mask from forward and warns.
    """

    def setup(self, bottom, top):
        p = self.param.clip_param
        check(p.HasField("min") and p.HasField("max"), "Clip needs clip_param { min max }")
        self.lo, self.hi = self.dtype.type(p.min), self.dtype.type(p.max)
        self._mask = None
        _warn_in_place(self, bottom, top, "Caffe's backward would test the clipped output")

    def forward(self, bottom, top):
        x = bottom[0].data
        if self.in_place(bottom, top):
            self._mask = (x >= self.lo) & (x <= self.hi)
        top[0].data[...] = np.maximum(self.lo, np.minimum(x, self.hi))

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        if self.in_place(bottom, top) and self._mask is not None:
            inside = self._mask
        else:
            x = bottom[0].data
            inside = (x >= self.lo) & (x <= self.hi)
        bottom[0].diff[...] = np.where(inside, top[0].diff, 0)


@register("Swish")
class Swish(NeuronLayer):
    """y = x * s,  s = sigmoid(beta * x)   (swish_param.beta, default 1)

    dE/dx = dE/dy * (beta * y + s * (1 - beta * y))   (reads y and the kept s; in
    place is exact)
    """

    def setup(self, bottom, top):
        self.beta = self.dtype.type(self.param.swish_param.beta)
        self._s = None

    def forward(self, bottom, top):
        x = bottom[0].data
        self._s = _sigmoid(x * self.beta, self.dtype)
        top[0].data[...] = x * self._s

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        by = top[0].data * self.beta
        bottom[0].diff[...] = top[0].diff * (by + self._s * (1 - by))


@register("Dropout")
class Dropout(NeuronLayer):
    """Dropout with ratio r (dropout_param.dropout_ratio, default 0.5), keep p = 1 - r.

    TRAIN: mask m ~ Bernoulli(p) per element (drawn from the net's rng),
           y = x * m / p;      dE/dx = dE/dy * m / p
    TEST:  y = x;              dE/dx = dE/dy
    With ``scale_train: false`` (a field of some Caffe forks; read when the schema
    has it) TRAIN does not scale (y = x * m) and TEST multiplies by p instead.
    With ``sample_weights_test: true`` (SegNet/ENet forks, Bayesian SegNet) TEST runs
    as TRAIN: a fresh mask at every forward.
    """

    def setup(self, bottom, top):
        p = self.param.dropout_param
        self.ratio = float(p.dropout_ratio)
        check(0 <= self.ratio <= 1, f"dropout_ratio must be in [0, 1], got {self.ratio:g}")
        check(not (self.phase == caffe_pb2.TRAIN and self.ratio == 1),
              "dropout_ratio 1 drops everything (Caffe divides by 0)")
        self.scale_train = True
        if "scale_train" in p.DESCRIPTOR.fields_by_name:
            self.scale_train = bool(getattr(p, "scale_train"))
        # SegNet/ENet's sample_weights_test: TEST drops out as TRAIN does (Monte Carlo)
        self.train = self.phase == caffe_pb2.TRAIN or bool(getattr(p, "sample_weights_test",
                                                                   False))
        t = self.dtype.type
        self.keep = 1.0 - self.ratio
        self.scale = t(1.0) / (t(1.0) - t(self.ratio)) if self.ratio < 1 else t(np.inf)
        self._mask = None

    def forward(self, bottom, top):
        x = bottom[0].data
        if self.train:
            self._mask = self.ctx.rng.random(x.shape) < self.keep
            if self.scale_train:
                top[0].data[...] = np.where(self._mask, x * self.scale, 0)
            else:
                top[0].data[...] = np.where(self._mask, x, 0)
        elif self.scale_train:
            if not self.in_place(bottom, top):
                top[0].data[...] = x
        else:
            top[0].data[...] = x * (self.dtype.type(1) / self.scale)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy = top[0].diff
        if self.train:
            if self.scale_train:
                bottom[0].diff[...] = np.where(self._mask, dy * self.scale, 0)
            else:
                bottom[0].diff[...] = np.where(self._mask, dy, 0)
        elif self.scale_train:
            if not self.in_place(bottom, top):
                bottom[0].diff[...] = dy
        else:
            bottom[0].diff[...] = dy * (self.dtype.type(1) / self.scale)
