"""BlobProto <-> numpy: shapes (current and legacy 4-D) and values."""
import math

import numpy as np

from ..errors import NetrunError

LEGACY_DIMS = ("num", "channels", "height", "width")


def is_legacy(bp):
    """True when the blob gives its shape as legacy num/channels/height/width."""
    return not bp.HasField("shape") and any(bp.HasField(f) for f in LEGACY_DIMS)


def blob_shape(bp):
    """Shape of a BlobProto: ``shape.dim``, else the legacy 4-D dims (unset ones
    count as 0, as in Caffe); a blob with neither is 0-axis (one value), as Caffe
    writes a scalar parameter such as a shared PReLU slope."""
    if bp.HasField("shape"):
        return tuple(int(d) for d in bp.shape.dim)
    if is_legacy(bp):
        return tuple(int(getattr(bp, f)) for f in LEGACY_DIMS)
    return ()


def blob_array(bp, dtype=np.float32, shape=None, limit=None):
    """The values (``double_data`` when present, else ``data``) as an array of
    ``shape`` (default: :func:`blob_shape`).

    The shape is checked before any array is built: no negative dims, as many
    values as it needs, and its bytes in ``dtype`` within the memory ``limit``
    (see :mod:`netrun.io.limits`)."""
    from .limits import check_declared
    vals = bp.double_data if len(bp.double_data) else bp.data
    shape = blob_shape(bp) if shape is None else tuple(shape)
    if any(d < 0 for d in shape):
        raise NetrunError(f"blob shape {shape} has a negative dimension")
    need = math.prod(shape)
    if len(vals) != need:
        raise NetrunError(f"blob holds {len(vals)} values but its shape {shape} needs {need}")
    check_declared(need * np.dtype(dtype).itemsize, f"a blob of shape {shape}", None, limit)
    return np.asarray(vals, dtype=dtype).reshape(shape)


def shapes_match(shape, bp):
    """Caffe's Blob::ShapeEquals: legacy dims compare against the shape padded to
    4-D on the left (a bias (N,) matches 1x1x1xN)."""
    if is_legacy(bp):
        if len(shape) > 4:
            return False
        return (1,) * (4 - len(shape)) + tuple(shape) == blob_shape(bp)
    return tuple(shape) == blob_shape(bp)
