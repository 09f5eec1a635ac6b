"""pycaffe's ``caffe.io``: BlobProto/Datum <-> arrays, image loading and the Transformer.

Images are float arrays ``(H, W, K)`` in ``[0, 1]``, RGB, as pycaffe reads them
(decoded with Pillow through :mod:`netrun.io.images`).  ``resize_image`` is
bilinear with half-pixel centres and edge pixels repeated, without the
anti-aliasing or the constant-border darkening recent scikit-image adds to
pycaffe's resize (docs/pycaffe.md).
"""
import numpy as np

from ..errors import NetrunError
from ..proto import caffe_pb2

# skimage's rgb2gray weights (what pycaffe's load_image(color=False) gives)
GRAY_WEIGHTS = np.array([0.2125, 0.7154, 0.0721], np.float64)
LEGACY_DIMS = ("num", "channels", "height", "width")


# -- proto / datum / ndarray ---------------------------------------------------------------------
def blobproto_to_array(blob, return_diff=False):
    """The values (or the diff) of a BlobProto as a float64 array of its shape: the legacy
    num/channels/height/width when any is set, else ``shape.dim`` (no shape: a scalar,
    so more than one value raises ValueError)."""
    if return_diff:
        values = blob.double_diff if len(blob.double_diff) else blob.diff
    else:
        values = blob.double_data if len(blob.double_data) else blob.data
    data = np.array(values, dtype=np.float64)
    if any(blob.HasField(f) for f in LEGACY_DIMS):
        return data.reshape([getattr(blob, f) for f in LEGACY_DIMS])
    return data.reshape([int(d) for d in blob.shape.dim])


def array_to_blobproto(arr, diff=None):
    """A BlobProto with ``arr``'s shape and values (and ``diff``'s, when given)."""
    arr = np.asarray(arr)
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend(int(d) for d in arr.shape)
    blob.data.extend(arr.astype(np.float64).ravel().tolist())
    if diff is not None:
        blob.diff.extend(np.asarray(diff, np.float64).ravel().tolist())
    return blob


def arraylist_to_blobprotovector_str(arraylist):
    """Arrays -> a serialized BlobProtoVector."""
    vec = caffe_pb2.BlobProtoVector()
    vec.blobs.extend(array_to_blobproto(a) for a in arraylist)
    return vec.SerializeToString()


def blobprotovector_str_to_arraylist(data):
    """A serialized BlobProtoVector -> list of arrays."""
    vec = caffe_pb2.BlobProtoVector()
    vec.ParseFromString(data)
    return [blobproto_to_array(b) for b in vec.blobs]


def array_to_datum(arr, label=None):
    """A (C, H, W) array as a Datum: uint8 arrays as bytes in ``data``, others as
    ``float_data``; ``label`` only when given."""
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise ValueError("Incorrect array shape.")
    datum = caffe_pb2.Datum()
    datum.channels, datum.height, datum.width = (int(d) for d in arr.shape)
    if arr.dtype == np.uint8:
        datum.data = arr.tobytes()
    else:
        datum.float_data.extend(arr.astype(np.float64).ravel().tolist())
    if label is not None:
        datum.label = int(label)
    return datum


def datum_to_array(datum):
    """A Datum's values as a (C, H, W) array (uint8 from ``data``, else float64); the
    label is ``datum.label``."""
    shape = (datum.channels, datum.height, datum.width)
    if len(datum.data):
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(shape).copy()
    return np.array(datum.float_data, dtype=np.float64).reshape(shape)


# -- images -----------------------------------------------------------------------------------
def load_image(filename, color=True):
    """An image file as float32 in [0, 1]: (H, W, 3) RGB when ``color`` (gray is
    repeated, alpha dropped), else (H, W, 1) intensity (color images converted with
    0.2125 R + 0.7154 G + 0.0721 B)."""
    from ..io.images import read_image
    stored = read_image(filename, color=None)          # uint8, BGR or one gray channel
    if stored.shape[2] == 1:
        img = stored.astype(np.float32) / np.float32(255)
        return np.repeat(img, 3, axis=2) if color else img
    rgb = stored[..., ::-1].astype(np.float32) / np.float32(255)
    if color:
        return np.ascontiguousarray(rgb)
    gray = rgb.astype(np.float64) @ GRAY_WEIGHTS
    return gray.astype(np.float32)[..., None]


def _axis_taps(n_in, n_out):
    """Bilinear taps along one axis: output ``d`` samples ``(d + 0.5) * n_in / n_out - 0.5``,
    clamped to the edge pixels."""
    pos = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    pos = np.clip(pos, 0, n_in - 1)
    i0 = np.floor(pos).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    t = pos - i0
    return i0, i1, t


def resize_image(im, new_dims, interp_order=1):
    """Resize (H, W, K) to (new_dims[0], new_dims[1], K) as float32: ``interp_order``
    1 bilinear (half-pixel centres, edges repeated), 0 nearest."""
    im = np.asarray(im)
    if im.ndim != 3:
        raise ValueError(f"resize_image takes an (H, W, K) array, got shape {im.shape}")
    h, w = (int(d) for d in new_dims[:2])
    if h <= 0 or w <= 0:
        raise ValueError(f"cannot resize to {h} x {w}")
    src = im.astype(np.float64)
    if interp_order == 0:
        ys = np.minimum(((np.arange(h) + 0.5) * im.shape[0] / h).astype(np.int64), im.shape[0] - 1)
        xs = np.minimum(((np.arange(w) + 0.5) * im.shape[1] / w).astype(np.int64), im.shape[1] - 1)
        return src[ys][:, xs].astype(np.float32)
    if interp_order != 1:
        raise NetrunError(f"resize_image: interp_order {interp_order} is not supported "
                          "(0 nearest or 1 bilinear)")
    y0, y1, ty = _axis_taps(im.shape[0], h)
    x0, x1, tx = _axis_taps(im.shape[1], w)
    rows = src[y0] * (1 - ty)[:, None, None] + src[y1] * ty[:, None, None]
    out = rows[:, x0] * (1 - tx)[None, :, None] + rows[:, x1] * tx[None, :, None]
    return out.astype(np.float32)


def oversample(images, crop_dims):
    """The four corner crops and the center crop of each image, then the same five
    mirrored: (10 N, h, w, K) float32."""
    images = [np.asarray(im) for im in images]
    shape = np.array(images[0].shape)
    ch, cw = (int(d) for d in crop_dims[:2])
    boxes = [(y, x) for y in (0, shape[0] - ch) for x in (0, shape[1] - cw)]
    # center crop as pycaffe: (center - crop/2) truncated to int
    boxes.append((int(shape[0] / 2.0 - ch / 2.0), int(shape[1] / 2.0 - cw / 2.0)))
    out = np.empty((10 * len(images), ch, cw, shape[-1]), np.float32)
    k = 0
    for im in images:
        for y, x in boxes:
            out[k] = im[y:y + ch, x:x + cw, :]
            k += 1
        out[k:k + 5] = out[k - 5:k, :, ::-1, :]
        k += 5
    return out


# -- Transformer ---------------------------------------------------------------------------------
class Transformer:
    """Prepare images for a net's inputs, as pycaffe's ``caffe.io.Transformer``.

    ``Transformer({name: blob_shape})``.  ``preprocess(name, image)``, in order:
    float32; resize to the blob's H x W; transpose; channel swap; ``* raw_scale``;
    ``- mean``; ``* input_scale``.  ``deprocess`` undoes it (except the resize).
    """

    def __init__(self, inputs):
        self.inputs = {k: tuple(v) for k, v in dict(inputs).items()}
        self.transpose = {}
        self.channel_swap = {}
        self.raw_scale = {}
        self.mean = {}
        self.input_scale = {}

    def _check(self, name):
        if name not in self.inputs:
            raise Exception(f"{name} is not one of the net inputs: {self.inputs}")

    def preprocess(self, in_, data):
        self._check(in_)
        x = np.asarray(data).astype(np.float32, copy=False)
        dims = tuple(self.inputs[in_][2:])
        if x.shape[:2] != dims:
            x = resize_image(x, dims)
        if in_ in self.transpose:
            x = x.transpose(self.transpose[in_])
        if in_ in self.channel_swap:
            x = x[list(self.channel_swap[in_]), :, :]
        x = np.array(x, np.float32)            # a copy: the steps below work in place
        if self.raw_scale.get(in_) is not None:
            x *= self.raw_scale[in_]
        if self.mean.get(in_) is not None:
            x -= self.mean[in_]
        if self.input_scale.get(in_) is not None:
            x *= self.input_scale[in_]
        return x

    def deprocess(self, in_, data):
        self._check(in_)
        x = np.array(data, copy=True)
        while x.ndim > len(self.inputs[in_]) - 1 and x.shape[0] == 1:
            x = x[0]             # the batch axis only (pycaffe squeezes a 1-channel axis too)
        if self.input_scale.get(in_) is not None:
            x /= self.input_scale[in_]
        if self.mean.get(in_) is not None:
            x += self.mean[in_]
        if self.raw_scale.get(in_) is not None:
            x /= self.raw_scale[in_]
        if in_ in self.channel_swap:
            x = x[np.argsort(self.channel_swap[in_]), :, :]
        if in_ in self.transpose:
            x = x.transpose(np.argsort(self.transpose[in_]))
        return x

    def set_transpose(self, in_, order):
        """Order of the dimensions, e.g. (2, 0, 1) for H x W x K images -> K x H x W."""
        self._check(in_)
        if len(order) != len(self.inputs[in_]) - 1:
            raise Exception("Transpose order needs to have the same number of dimensions "
                            "as the input.")
        self.transpose[in_] = tuple(order)

    def set_channel_swap(self, in_, order):
        """Channel order after the transpose, e.g. (2, 1, 0) for RGB -> BGR."""
        self._check(in_)
        if len(order) != self.inputs[in_][1]:
            raise Exception("Channel swap needs to have the same number of dimensions as "
                            "the input channels.")
        self.channel_swap[in_] = tuple(order)

    def set_raw_scale(self, in_, scale):
        """Multiply the raw [0, 1] image (e.g. by 255) before the mean is subtracted."""
        self._check(in_)
        self.raw_scale[in_] = scale

    def set_mean(self, in_, mean):
        """Mean to subtract: one value per channel (K,), or per pixel (K, H, W) / (H, W)
        (resized to the input's H x W when it differs)."""
        self._check(in_)
        mean = np.asarray(mean)
        if mean.ndim == 1:
            if mean.shape[0] != self.inputs[in_][1]:
                raise ValueError("Mean channels incompatible with input.")
            mean = mean[:, None, None]
        else:
            ms = mean.shape if mean.ndim != 2 else (1,) + mean.shape
            if len(ms) != 3:
                raise ValueError("Mean shape invalid")
            mean = mean.reshape(ms)
            want = tuple(self.inputs[in_][1:])
            if ms != want:
                mean = resize_image(mean.transpose(1, 2, 0), want[1:]).transpose(2, 0, 1)
        self.mean[in_] = mean

    def set_input_scale(self, in_, scale):
        """Multiply the preprocessed input (after the mean) by ``scale``."""
        self._check(in_)
        self.input_scale[in_] = scale
