"""A solver's update of the learnable parameters (Caffe's ApplyUpdate), and the
learning-rate policies.  The math, per parameter, is in netrun/solver.py's
docstring; the solver types supply ``compute_update_value``.
"""
import math

import numpy as np

from .errors import NetrunError

LR_POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")


def fmt(x):
    """A number as C++ ``ostream <<`` prints a float (6 significant digits)."""
    return f"{float(x):.6g}"


# -- learning rate ------------------------------------------------------------------------------
def learning_rate(param, it, current_step=0):
    """Caffe's GetLearningRate at iteration ``it``; returns ``(rate, current_step)``."""
    try:
        return _learning_rate(param, it, current_step)
    except OverflowError:
        return math.inf, current_step


def _learning_rate(param, it, current_step):
    policy = param.lr_policy
    base = param.base_lr
    if policy == "fixed":
        rate = base
    elif policy == "step":
        if param.stepsize <= 0:
            raise NetrunError('lr_policy "step" needs stepsize > 0')
        current_step = it // param.stepsize
        rate = base * math.pow(param.gamma, current_step)
    elif policy == "exp":
        rate = base * math.pow(param.gamma, it)
    elif policy == "inv":
        rate = base * math.pow(1.0 + param.gamma * it, -param.power)
    elif policy == "multistep":
        if current_step < len(param.stepvalue) and it >= param.stepvalue[current_step]:
            current_step += 1
        rate = base * math.pow(param.gamma, current_step)
    elif policy == "poly":
        if param.max_iter <= 0:
            raise NetrunError('lr_policy "poly" needs max_iter > 0')
        x = 1.0 - it / param.max_iter
        if x < 0 and param.power != int(param.power):
            raise NetrunError(f'lr_policy "poly" with power {param.power:g} is undefined past '
                              f"max_iter ({it} > {param.max_iter})")
        rate = base * math.pow(x, param.power)
    elif policy == "sigmoid":
        if param.stepsize <= 0:
            raise NetrunError('lr_policy "sigmoid" needs stepsize > 0')
        rate = base / (1.0 + math.exp(-param.gamma * (it - param.stepsize)))
    else:
        raise NetrunError(f'unknown lr_policy "{policy}" (known: {", ".join(LR_POLICIES)})')
    return rate, current_step


class Updates:
    """ApplyUpdate: clip, then per parameter normalize, regularize and the solver
    type's update value, then ``w -= g`` (a mixin of netrun.solver.Solver)."""

    def apply_update(self, display=False):
        step = self.current_step
        rate, self.current_step = learning_rate(self.param, self.iter, self.current_step)
        if self.param.lr_policy == "multistep" and self.current_step != step:
            self.log(f"MultiStep Status: Iteration {self.iter}, step = {self.current_step}")
        self.rate = rate
        if display:
            self.log(f"Iteration {self.iter}, lr = {fmt(rate)}")
        self.clip_gradients()
        for i in range(len(self.learnable)):
            self.normalize(i)
            self.regularize(i)
            self.compute_update_value(i, rate)
        for blob in self.learnable:
            blob.data[...] -= blob.diff

    def clip_gradients(self):
        clip = self.param.clip_gradients
        if clip < 0:
            return
        sumsq = sum(float(np.dot(b.diff.ravel(), b.diff.ravel())) for b in self.learnable)
        norm = math.sqrt(sumsq)
        if norm > clip:
            scale = self.dtype.type(clip / norm)
            self.log(f"Gradient clipping: scaling down gradients (L2 norm {fmt(norm)} > "
                     f"{fmt(clip)}) by scale factor {fmt(scale)}")
            for b in self.learnable:
                b.diff[...] *= scale

    def normalize(self, i):
        if self.param.iter_size > 1:
            self.learnable[i].diff[...] *= self.dtype.type(1.0 / self.param.iter_size)

    def regularize(self, i):
        decay = self.dtype.type(self.param.weight_decay * self.decay_mults[i])
        if not decay:
            return
        b = self.learnable[i]
        if self.param.regularization_type == "L2":
            b.diff[...] += decay * b.data
        else:
            b.diff[...] += decay * np.sign(b.data)

    def local_rate(self, i, rate):
        return self.dtype.type(self.dtype.type(rate) * self.dtype.type(self.lr_mults[i]))

    def compute_update_value(self, i, rate):
        raise NotImplementedError

    def _f(self, x):
        return self.dtype.type(x)
