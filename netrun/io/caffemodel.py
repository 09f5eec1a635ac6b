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
from .prototxt import read_binary, upgrade_if_needed


def blob_shape(bp):
    """Shape of a BlobProto: ``shape.dim``, else the legacy 4-D dims."""
    if bp.HasField("shape"):
        return tuple(int(d) for d in bp.shape.dim)
    if any(bp.HasField(f) for f in ("num", "channels", "height", "width")):
        return (bp.num, bp.channels, bp.height, bp.width)
    n = len(bp.double_data) or len(bp.data)
    return (n,) if n else ()


def is_legacy(bp):
    return not bp.HasField("shape") and any(
        bp.HasField(f) for f in ("num", "channels", "height", "width"))


def blob_array(bp, dtype=np.float32, shape=None):
    """The values of a BlobProto as an array (``double_data`` preferred when present)."""
    vals = bp.double_data if len(bp.double_data) else bp.data
    arr = np.asarray(vals, dtype=dtype)
    shape = blob_shape(bp) if shape is None else shape
    if arr.size != int(np.prod(shape, dtype=np.int64)):
        raise NetrunError(f"blob holds {arr.size} values but its shape {shape} needs "
                          f"{int(np.prod(shape, dtype=np.int64))}")
    return arr.reshape(shape)


def shapes_match(shape, bp):
    if is_legacy(bp):
        if len(shape) > 4:
            return False
        padded = (1,) * (4 - len(shape)) + tuple(shape)
        return padded == blob_shape(bp)
    return tuple(shape) == blob_shape(bp)


def read_weights(path, warn=None):
    """Parse (and upgrade, for V0/V1 files) a binary caffemodel."""
    if isinstance(path, caffe_pb2.NetParameter):
        return upgrade_if_needed(path, warn)
    param = read_binary(path, caffe_pb2.NetParameter())
    if not len(param.layer) and not len(param.layers):
        raise NetrunError("holds no layers: not a .caffemodel", os.fspath(path))
    return upgrade_if_needed(param, warn, os.fspath(path))


def copy_weights(net, weights):
    where = None if isinstance(weights, caffe_pb2.NetParameter) else os.fspath(weights)
    param = read_weights(weights, net._warn)
    index = {name: i for i, name in enumerate(net.layer_names)}
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
            blob.data[...] = blob_array(bp, blob.dtype, blob.shape)


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
