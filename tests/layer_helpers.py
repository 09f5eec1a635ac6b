"""What the layer unit tests share: build one layer outside a net, run it, and take
central differences of a scalar loss."""
import numpy as np
from google.protobuf import text_format

from netrun.blob import Blob
from netrun.layers import Context, layer_class
from netrun.proto import caffe_pb2


def build_layer(text, arrays, ntop=1, phase=caffe_pb2.TEST, dtype=np.float64, seed=0,
                in_place=False, init_params=None, check_counts=False):
    """The layer of prototxt ``text`` set up on bottoms holding ``arrays``: (layer,
    bottom, top, warnings).  ``init_params(blobs)`` fills the parameters after setup;
    ``in_place``: the top is bottom 0."""
    lp = text_format.Parse(text, caffe_pb2.LayerParameter())
    warns = []
    ctx = Context(phase, dtype=dtype, rng=np.random.default_rng(seed), warn=warns.append)
    layer = layer_class(lp.type)(lp, ctx)
    bottom = []
    for a in arrays:
        b = Blob(np.shape(a), dtype)
        b.data[...] = a
        bottom.append(b)
    top = [bottom[0]] if in_place else [Blob((), dtype) for _ in range(ntop)]
    if check_counts:
        layer.check_blob_counts(bottom, top)
    layer.setup(bottom, top)
    layer.param_propagate_down = [True] * len(layer.blobs)
    if init_params is not None:
        init_params(layer.blobs)
    layer.reshape(bottom, top)
    return layer, bottom, top, warns


def forward_copies(layer, bottom, top):
    """Reshape and forward; copies of the tops' data."""
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    return [t.data.copy() for t in top]


def central_differences(arr, loss, eps=1e-6):
    """d loss / d arr by central differences, one element of ``arr`` (changed in place
    and restored) at a time."""
    num = np.zeros(arr.shape)
    flat = arr.reshape(-1)
    for j in range(flat.size):
        old = flat[j]
        flat[j] = old + eps
        plus = loss()
        flat[j] = old - eps
        minus = loss()
        flat[j] = old
        num.reshape(-1)[j] = (plus - minus) / (2 * eps)
    return num
