"""Parameter fillers (Caffe's FillerParameter), drawn from a numpy Generator.

Random fillers follow Caffe's distributions, not its random stream: a net filled
here gets values of the same law, not the same numbers.  ``constant`` and
``bilinear`` are exact.

    constant          value
    uniform           U(min, max)
    gaussian          N(mean, std); with sparse = s >= 0 each weight is kept
                      with probability s / shape[0]
    positive_unitball U(0, 1), then each of the shape[0] rows scaled to sum 1
    xavier            U(-a, a),  a = sqrt(3 / n)
    msra              N(0, sqrt(2 / n))
                      n = fan_in = count / shape[0], fan_out = count / shape[1],
                      or their mean (variance_norm FAN_IN | FAN_OUT | AVERAGE)
    bilinear          (1 - |x/f - c|)(1 - |y/f - c|),  f = ceil(K/2),
                      c = (2f - 1 - f mod 2) / 2f   (upsampling deconvolution)
"""
import math

import numpy as np

from .errors import NetrunError

FAN_IN, FAN_OUT, AVERAGE = 0, 1, 2


def _fan(fp, shape):
    count = int(np.prod(shape, dtype=np.int64))
    if count == 0:
        return 1.0
    fan_in = count / (shape[0] if shape else 1)          # a 0-axis blob: one "row"
    fan_out = count / shape[1] if len(shape) > 1 else count
    if fp.variance_norm == FAN_OUT:
        return fan_out
    if fp.variance_norm == AVERAGE:
        return (fan_in + fan_out) / 2.0
    return fan_in


KNOWN = ("constant", "uniform", "gaussian", "positive_unitball", "xavier", "msra", "bilinear")


def check_filler(fp, shape):
    """Refuse parameters the filler cannot draw from (checked when the parameter is made,
    so the error names the layer)."""
    from .errors import LayerError
    kind = fp.type or "constant"
    if kind not in KNOWN:
        raise LayerError(f"unknown filler type {kind!r} (known: {', '.join(KNOWN)})")
    if kind == "uniform" and not (math.isfinite(fp.max - fp.min) and fp.min <= fp.max):
        raise LayerError(f"uniform filler needs finite min <= max, got min {fp.min:g}, "
                         f"max {fp.max:g}")
    if kind == "gaussian" and not fp.std >= 0:
        raise LayerError(f"gaussian filler needs std >= 0, got {fp.std:g}")
    if kind == "bilinear" and (len(shape) < 2 or shape[-1] != shape[-2]):
        raise LayerError(f"bilinear filler needs square kernels, got shape {tuple(shape)}")


def fill(fp, shape, rng):
    """Values (float64) of the given shape for FillerParameter ``fp``."""
    shape = tuple(shape)
    kind = fp.type or "constant"
    if kind == "constant":
        return np.full(shape, fp.value)
    if kind == "uniform":
        return rng.uniform(fp.min, fp.max, shape)
    if kind == "gaussian":
        out = rng.normal(fp.mean, fp.std, shape)
        if fp.sparse >= 0 and len(shape) >= 1 and shape[0] > 0:
            keep = rng.random(shape) < fp.sparse / shape[0]
            out *= keep
        return out
    if kind == "positive_unitball":
        out = rng.random(shape)
        if out.size:
            flat = out.reshape(shape[0] if shape else 1, -1)
            flat /= flat.sum(axis=1, keepdims=True)
        return out
    if kind == "xavier":
        a = math.sqrt(3.0 / _fan(fp, shape))
        return rng.uniform(-a, a, shape)
    if kind == "msra":
        return rng.normal(0.0, math.sqrt(2.0 / _fan(fp, shape)), shape)
    if kind == "bilinear":
        if len(shape) < 2 or shape[-1] != shape[-2]:
            raise NetrunError(f"bilinear filler needs square kernels, got shape {shape}")
        k = shape[-1]
        f = math.ceil(k / 2.0)
        c = (2 * f - 1 - f % 2) / (2.0 * f)
        ramp = 1 - np.abs(np.arange(k) / f - c)
        return np.broadcast_to(np.outer(ramp, ramp), shape).copy()
    raise NetrunError(f"unknown filler type {kind!r} (known: constant, uniform, gaussian, "
                      "positive_unitball, xavier, msra, bilinear)")
