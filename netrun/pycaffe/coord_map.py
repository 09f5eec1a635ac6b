"""pycaffe's ``caffe.coord_map``: how coordinates move through the spatial layers of a
:mod:`net_spec` net, and ``crop`` to align one top with another (FCN's Crop layers).

A map is ``(axis, a, b)``: a coordinate ``x`` of a layer's bottom lands at
``a * x + b`` in its top (``axis`` is the first spatial axis it applies to, None for
layers that do not move coordinates).  Per layer, with kernel extent
``k = (kernel_size - 1) * dilation + 1``:

    Convolution, Pooling, Im2col   a = 1 / stride,  b = (pad - (k - 1) / 2) / stride
    Deconvolution                  a = stride,      b = (k - 1) / 2 - pad
    Crop (axis, offset)            axis - 1,  a = 1,  b = -offset
    element-wise layers            (None, 1, 0)

Maps compose as ``(a1 a2, a1 b2 + b1)`` and invert as ``(1/a, -b/a)``.
"""
import numpy as np

from .net_spec import layers as L

PASS_THROUGH_LAYERS = ["AbsVal", "BatchNorm", "Bias", "BNLL", "Dropout", "Eltwise", "ELU",
                       "Log", "LRN", "Exp", "MVN", "Power", "ReLU", "PReLU", "Scale", "Sigmoid",
                       "Split", "TanH", "Threshold"]


class UndefinedMapException(Exception):
    """The layer has no coordinate mapping (InnerProduct, ...)."""


class AxisMismatchException(Exception):
    """Two maps apply to different axes."""


def conv_params(fn):
    """(axis, stride, kernel extent, pad) of a Convolution/Deconvolution/Pooling/Im2col."""
    p = fn.params.get("convolution_param", fn.params)
    legacy = {"pad_h", "pad_w", "kernel_h", "kernel_w", "stride_h", "stride_w"} & set(fn.params)
    assert not legacy, "cropping does not support legacy _h/_w params"
    ks = np.array(p["kernel_size"], ndmin=1)
    dilation = np.array(p.get("dilation", 1), ndmin=1)
    return (p.get("axis", 1), np.array(p.get("stride", 1), ndmin=1),
            (ks - 1) * dilation + 1, np.array(p.get("pad", 0), ndmin=1))


def crop_params(fn):
    """(axis, offset) of a Crop layer (axis 2 by default)."""
    p = fn.params.get("crop_param", fn.params)
    return p.get("axis", 2), np.array(p.get("offset", 0), ndmin=1)


def coord_map(fn):
    """The (axis, a, b) map of one layer (module doc); UndefinedMapException if none."""
    t = fn.type_name
    if t in ("Convolution", "Pooling", "Im2col"):
        axis, stride, ks, pad = conv_params(fn)
        return axis, 1 / stride, (pad - (ks - 1) / 2) / stride
    if t == "Deconvolution":
        axis, stride, ks, pad = conv_params(fn)
        return axis, stride, (ks - 1) / 2 - pad
    if t in PASS_THROUGH_LAYERS:
        return None, 1, 0
    if t == "Crop":
        axis, offset = crop_params(fn)
        return axis - 1, 1, -offset
    raise UndefinedMapException(t)


def compose(base_map, next_map):
    """Apply ``next_map`` in the coordinates of ``base_map``."""
    ax1, a1, b1 = base_map
    ax2, a2, b2 = next_map
    if ax1 is not None and ax2 is not None and ax1 != ax2:
        raise AxisMismatchException
    return (ax2 if ax1 is None else ax1), a1 * a2, a1 * b2 + b1


def inverse(coord_map):
    ax, a, b = coord_map
    return ax, 1 / a, -b / a


def _mapped_bottoms(top):
    """A layer's bottoms that share its coordinates (only the first one for Crop)."""
    bottoms = top.fn.inputs
    return bottoms[:1] if top.fn.type_name == "Crop" else bottoms


def _ancestors(start):
    """{top: map from that top to ``start``} over every top ``start`` is computed from."""
    maps = {start: (None, 1, 0)}
    todo = [start]
    while todo:
        top = todo.pop()
        try:
            step = coord_map(top.fn)
        except UndefinedMapException:
            continue
        for bottom in _mapped_bottoms(top):
            maps[bottom] = compose(maps[top], step)
            todo.append(bottom)
    return maps


def coord_map_from_to(top_from, top_to):
    """The map taking coordinates of ``top_from`` to those of ``top_to``, through a
    common ancestor; RuntimeError when they share none through spatial layers."""
    from_maps = _ancestors(top_from)
    to_maps = {top_to: (None, 1, 0)}
    todo = [top_to]
    while todo:
        top = todo.pop()
        if top in from_maps:
            return compose(to_maps[top], inverse(from_maps[top]))
        try:
            step = coord_map(top.fn)
        except UndefinedMapException:
            continue
        for bottom in _mapped_bottoms(top):
            to_maps[bottom] = compose(to_maps[top], step)
            todo.append(bottom)
    raise RuntimeError("Could not compute map between tops; are they connected by "
                       "spatial layers?")


def crop(top_from, top_to):
    """A Crop layer cutting ``top_from`` to ``top_to``'s extent (same scale, a
    non-negative whole offset, else AssertionError)."""
    ax, a, b = coord_map_from_to(top_from, top_to)
    assert (np.asarray(a) == 1).all(), f"scale mismatch on crop (a = {a})"
    assert (np.asarray(b) <= 0).all(), f"cannot crop negative offset (b = {b})"
    assert (np.round(b) == b).all(), f"cannot crop noninteger offset (b = {b})"
    offset = [int(v) for v in np.ravel(-np.round(b))]
    return L.Crop(top_from, top_to, crop_param=dict(axis=ax + 1, offset=offset))
