"""Binary weights: .caffemodel (a NetParameter whose layers carry ``blobs``).

Loading matches layers by name, as Caffe's CopyTrainedLayersFrom: layers of the
file that the net lacks are ignored, each matched layer must have as many blobs
as the net's layer, and each blob the same shape -- where the file uses the
legacy 4-D dims (num, channels, height, width) the net's shape is compared
after padding it to 4-D on the left (a bias (N,) matches 1x1x1xN).
"""
import os

import numpy as np

from ..errors import NetrunError
from ..proto import caffe_pb2
from .blobproto import blob_array, blob_shape, shapes_match
from .prototxt import read_binary, upgrade_if_needed


def read_weights(path, warn=None, limit=None):
    """Parse (and upgrade, for V0/V1 files) a binary caffemodel (its size checked
    against the memory ``limit`` first, see :func:`netrun.io.prototxt.read_binary`)."""
    if isinstance(path, caffe_pb2.NetParameter):
        return upgrade_if_needed(path, warn)
    param = read_binary(path, caffe_pb2.NetParameter(), limit=limit)
    if not len(param.layer) and not len(param.layers):
        raise NetrunError("holds no layers: not a .caffemodel", os.fspath(path))
    from . import forks
    if forks.needs_resolving(param):            # a SegNet/ENet file: see io/forks.py
        with open(path, "rb") as f:
            forks.resolve(param, f.read())
    return upgrade_if_needed(param, warn, os.fspath(path))


def copy_weights(net, weights):
    where = None if isinstance(weights, caffe_pb2.NetParameter) else os.fspath(weights)
    budget = getattr(net, "budget", None)
    limit = budget.limit if budget is not None else None
    param = read_weights(weights, net._warn, limit)
    index = {name: i for i, name in enumerate(net.layer_names)}
    written = set()
    for lp in param.layer:
        li = index.get(lp.name)
        if li is None or not len(lp.blobs):
            continue
        layer = net.layers[li]
        label = f'layer "{lp.name}" ({layer.type})'
        if len(lp.blobs) != len(layer.blobs):
            raise NetrunError(f"{label}: the weights have {len(lp.blobs)} blobs, the net's layer "
                              f"has {len(layer.blobs)}", where)
        for k, (bp, blob) in enumerate(zip(lp.blobs, layer.blobs)):
            if not shapes_match(blob.shape, bp):
                raise NetrunError(f"{label}: blob {k} has shape {blob_shape(bp)} in the weights, "
                                  f"the net expects {blob.shape}", where)
            try:
                values = blob_array(bp, blob.dtype, blob.shape, limit=limit)
            except NetrunError as e:
                raise NetrunError(f"{label}: blob {k}: {e.message}", where) from None
            blob.data[...] = values
            written.add(id(blob))
    return written


def net_to_proto(net):
    """A NetParameter with every layer's definition and parameter blobs."""
    out = caffe_pb2.NetParameter(name=net.name)
    for layer in net.layers:
        lp = out.layer.add()
        lp.CopyFrom(layer.param)
        del lp.blobs[:]
        for blob in layer.blobs:
            bp = lp.blobs.add()
            bp.shape.dim.extend(blob.shape)
            if blob.dtype == np.float64:
                bp.double_data.extend(blob.data.ravel().tolist())
            else:
                bp.data.extend(blob.data.ravel().tolist())
    return out


def save_weights(net, path):
    from .atomic import atomic_write
    data = net_to_proto(net).SerializeToString()
    with atomic_write(path, "wb") as f:
        f.write(data)
