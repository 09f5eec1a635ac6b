"""Images as Caffe sees them: decoding, resizing, and image inputs for the CLI.

Caffe reads images with OpenCV, so netrun follows OpenCV's conventions:

* **Channel order** is BGR; a color image is read as 3 channels (alpha is
  dropped, gray is replicated), a gray one as 1 channel (color converts with
  OpenCV's weights ``Y = (4899 R + 9617 G + 1868 B + 2^13) >> 14``).  16-bit
  images keep their top 8 bits.  JPEG EXIF orientation is applied (OpenCV >= 3.1).
* **Resizing** is OpenCV's ``INTER_LINEAR`` on 8-bit pixels: output pixel
  ``d`` samples the source at ``s = (d + 0.5) * in/out - 0.5`` (clamped to the
  edge, no antialiasing), with 11-bit fixed-point weights ``a = round(2048 t)``:
  a horizontal pass ``S = p0 a0 + p1 a1`` then a vertical one
  ``((b0 (S0 >> 4)) >> 16 + (b1 (S1 >> 4)) >> 16 + 2) >> 2``.
* Layout: arrays come back as ``(H, W, C)`` uint8; blobs want ``(C, H, W)``.

Image inputs on the command line (``--input data=cat.png``) are prepared as
pycaffe's ``Transformer.preprocess`` does, in this order:

1. read (BGR or gray, to the input's channels) and resize to the blob's H x W;
2. ``--raw-scale R``: values become ``pixel / 255 * R`` (pycaffe reads
   images as [0, 1] floats and multiplies by ``raw_scale``); without it pixels
   stay 0-255;
3. subtract ``--mean B,G,R`` (one value per channel, or one for all) or
   ``--mean-file`` (a ``.binaryproto`` BlobProto or ``.npy``; per pixel when its
   H x W is the input's, its center crop when larger, as Caffe's TEST-phase
   data layer crops it);
4. multiply by ``--scale``.

This is also Caffe's data-layer formula ``(x - mean) * scale``.
"""
import os
import re
import struct
import warnings

import numpy as np

from ..errors import NetrunError, reading

COEF_BITS = 11
COEF_SCALE = 1 << COEF_BITS


def _pil():
    try:
        from PIL import Image, ImageOps
    except ImportError:
        raise NetrunError("image files need Pillow: pip install netrun[images]") from None
    return Image, ImageOps


# what a damaged or hostile image file can make Pillow raise while it is parsed or decoded
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, KeyError,
                 ZeroDivisionError, RuntimeError, struct.error)


def read_image(source, color=True, what=None, limit=None, input_hw=None):
    """Decode an image file (path) or encoded bytes.

    ``color``: True -> (H, W, 3) BGR, False -> (H, W, 1) gray, None -> as stored
    (gray stays 1 channel, anything else 3).  Returns uint8.

    The header's size is checked before any pixel is decoded: at most
    :func:`netrun.io.limits.image_pixel_limit` pixels (from the memory ``limit``,
    default --max-memory's, and the ``input_hw`` the image is resized to);
    Pillow's DecompressionBombError becomes the same one-line error.
    """
    import io
    from .limits import check_image_size
    Image, ImageOps = _pil()
    label = str(what or (source if isinstance(source, (str, os.PathLike)) else "encoded image"))
    with warnings.catch_warnings():
        # Pillow warns from 89.5 Mpx and raises from twice that; netrun's own check
        # below decides (and Pillow's error becomes netrun's)
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)
        except FileNotFoundError:
            raise NetrunError("no such image file", label) from None
        except IsADirectoryError:
            raise NetrunError("is a directory, not an image file", label) from None
        except Image.DecompressionBombError as e:
            raise NetrunError(bomb_message(e), label) from None
        except MemoryError:
            raise NetrunError("out of memory reading its header", label) from None
        except DECODE_ERRORS as e:
            raise NetrunError(f"cannot decode image ({e})", label) from None
        with im:
            w, h = im.size
            check_image_size(w, h, label, limit, input_hw)
            try:
                im.load()
                return _to_array(im, color, ImageOps)
            except Image.DecompressionBombError as e:
                raise NetrunError(bomb_message(e), label) from None
            except MemoryError:
                raise NetrunError(f"out of memory decoding its {w}x{h} pixels", label) from None
            except DECODE_ERRORS as e:
                raise NetrunError(f"cannot decode image ({e})", label) from None


def bomb_message(e):
    text = str(e).split(", could be", 1)[0].rstrip(". ")
    return f"refused as a decompression bomb: {text[:1].lower()}{text[1:]} (Pillow's limit)"


def _to_array(im, color, ImageOps):
    """A loaded Pillow image -> (H, W, 3) BGR or (H, W, 1) gray uint8 (see read_image)."""
    try:
        im = ImageOps.exif_transpose(im)
    except Exception:                       # a broken EXIF block: keep the pixels as stored
        pass
    mode = im.mode
    gray_modes = ("1", "L", "LA", "P;L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
    if color is None:
        color = mode not in gray_modes
    if mode.startswith("I;16") or mode in ("I", "F"):
        a = np.asarray(im)
        if mode.startswith("I;16"):
            a = (a.astype(np.uint32) >> 8).astype(np.uint8)
        else:
            a = np.clip(a, 0, 255).astype(np.uint8)
        g = a[..., None]
        return np.repeat(g, 3, axis=2) if color else g
    rgb = np.asarray(im.convert("RGB"))
    if color:
        return np.ascontiguousarray(rgb[..., ::-1])
    if mode in ("L", "1", "LA"):
        return np.asarray(im.convert("L"))[..., None]
    r, g, b = (rgb[..., i].astype(np.int32) for i in range(3))
    y = (r * 4899 + g * 9617 + b * 1868 + (1 << 13)) >> 14
    return y.astype(np.uint8)[..., None]


def _linear_taps(n_in, n_out):
    """Source indices and 11-bit weights of OpenCV's INTER_LINEAR along one axis."""
    scale = n_in / n_out
    f = ((np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    i0 = np.floor(f).astype(np.int64)
    t = (f - i0.astype(np.float32)).astype(np.float32)
    low = i0 < 0
    t[low] = 0
    i0[low] = 0
    high = i0 >= n_in - 1
    t[high] = 0
    i0[high] = n_in - 1
    i1 = np.minimum(i0 + 1, n_in - 1)
    w0 = np.rint((np.float32(1) - t) * np.float32(COEF_SCALE)).astype(np.int64)
    w1 = np.rint(t * np.float32(COEF_SCALE)).astype(np.int64)
    return i0, i1, w0, w1


def resize_linear(img, height, width):
    """Resize (H, W, C) uint8 to (height, width, C) as OpenCV's INTER_LINEAR (module doc)."""
    h_in, w_in = img.shape[:2]
    if (h_in, w_in) == (height, width):
        return img
    x0, x1, a0, a1 = _linear_taps(w_in, width)
    y0, y1, b0, b1 = _linear_taps(h_in, height)
    # horizontal pass on the two source rows each output row needs (only those rows
    # are widened to int64, not the whole image)
    rows0, rows1 = img[y0].astype(np.int64), img[y1].astype(np.int64)  # (height, w_in, C)
    s0 = rows0[:, x0] * a0[None, :, None] + rows0[:, x1] * a1[None, :, None]
    s1 = rows1[:, x0] * a0[None, :, None] + rows1[:, x1] * a1[None, :, None]
    out = (((b0[:, None, None] * (s0 >> 4)) >> 16) + ((b1[:, None, None] * (s1 >> 4)) >> 16) + 2) >> 2
    return np.clip(out, 0, 255).astype(np.uint8)


def read_mean_file(path, what="mean file", limit=None):
    """A mean as a (C, H, W) float64 array from a .binaryproto BlobProto or a .npy.

    Declared sizes are checked first (the .npy header; the file's bytes and the
    blob's shape) against the memory ``limit`` (default: --max-memory's)."""
    where = f"{path} ({what})"
    if str(path).lower().endswith(".npy"):
        from .limits import check_npy_file
        check_npy_file(path, where, limit)
        try:
            m = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise NetrunError("no such file", where) from None
        except (ValueError, OSError) as e:
            raise NetrunError(f"not a readable .npy array ({e})", where) from None
        m = np.asarray(m, np.float64)
    else:
        from ..proto import caffe_pb2
        from .caffemodel import blob_array
        from .prototxt import read_binary
        try:
            bp = read_binary(path, caffe_pb2.BlobProto(), limit=limit)
            m = blob_array(bp, np.float64, limit=limit)
        except NetrunError as e:
            raise NetrunError(e.message, where) from None
    if m.ndim == 4 and m.shape[0] == 1:
        m = m[0]
    if m.ndim == 1:
        m = m[:, None, None]
    if m.ndim != 3:
        raise NetrunError(f"a mean must be (1, C, H, W), (C, H, W) or (C,), not {m.shape}",
                          f"{path} ({what})")
    return m


# -- CLI image inputs ---------------------------------------------------------------------
def parse_floats(text, what):
    try:
        vals = [float(v) for v in str(text).replace(" ", ",").split(",") if v.strip()]
    except ValueError:
        raise NetrunError(f"{what} {text!r}: expected numbers separated by commas, e.g. 104,117,123") \
            from None
    if not vals:
        raise NetrunError(f"{what} {text!r}: expected at least one number")
    return vals


def fit_mean(mean, shape, what):
    """A (C, H, W) mean for an input of shape (C, H, W): itself, or its center crop."""
    c, h, w = shape
    if mean.shape[0] != c:
        raise NetrunError(f"{what} has {mean.shape[0]} channels, the input has {c}")
    mh, mw = mean.shape[1:]
    if (mh, mw) in ((h, w), (1, 1)):
        return mean
    if mh >= h and mw >= w:
        top, left = (mh - h) // 2, (mw - w) // 2
        return mean[:, top:top + h, left:left + w]
    raise NetrunError(f"{what} is {mh}x{mw}, smaller than the {h}x{w} input")


def load_images(net, name, paths, o):
    """Load image files as a batch for input blob ``name`` (see the module doc)."""
    if name not in net.inputs:
        raise NetrunError(f'input "{name}" names no input of the net '
                          f"(inputs: {', '.join(net.inputs) or 'none'})")
    shape = net.blobs[name].shape
    if len(shape) != 4:
        raise NetrunError(f'input "{name}" has shape {shape}: image files need a 4-D '
                          "(N, C, H, W) input (give --input-shape)")
    _, c, h, w = shape
    if c not in (1, 3):
        raise NetrunError(f'input "{name}" has {c} channels: images load as 1 (gray) or 3 (BGR) '
                          "channels")
    budget = getattr(net, "budget", None)
    limit = budget.limit if budget is not None else None
    imgs = [resize_linear(read_image(p, color=(c == 3), what=f"{p} (--input {name})",
                                     limit=limit, input_hw=(h, w)), h, w)
            for p in paths]
    u8 = np.stack(imgs).transpose(0, 3, 1, 2)                         # (N, C, H, W)
    mean = (read_mean_file(o["mean_file"], "--mean-file", limit)
            if o.get("mean_file") and not o.get("mean") else None)
    return preprocess(u8, net.dtype, o, mean, limit)


def preprocess(u8, dtype, o, mean=None, limit=None):
    """(N, C, H, W) uint8 pixels -> the input array: steps 2-4 of the module doc.

    ``o`` holds the options ``raw_scale``, ``mean``, ``mean_file`` and ``scale``;
    ``mean`` is the array read from ``o["mean_file"]`` (read once by the caller), or it is
    read here within ``limit`` bytes."""
    dtype = np.dtype(dtype)
    _, c, h, w = u8.shape
    raw_scale = o.get("raw_scale")
    if raw_scale is not None:
        x = (u8 / 255.0).astype(dtype)
        x *= dtype.type(raw_scale)
    else:
        x = u8.astype(dtype)
    if o.get("mean") and o.get("mean_file"):
        raise NetrunError("give --mean or --mean-file, not both")
    if o.get("mean"):
        vals = parse_floats(o["mean"], "--mean")
        if len(vals) not in (1, c):
            raise NetrunError(f"--mean gives {len(vals)} values for {c} channels "
                              "(give one per channel, in BGR order, or one for all)")
        x -= np.asarray(vals, dtype).reshape(-1, 1, 1)
    elif o.get("mean_file"):
        if mean is None:
            mean = read_mean_file(o["mean_file"], "--mean-file", limit)
        x -= fit_mean(mean, (c, h, w), f"--mean-file {o['mean_file']}").astype(dtype)
    scale = o.get("scale")
    if scale is not None:
        x *= dtype.type(scale)
    return x


# -- classification read-out --------------------------------------------------------------------
_SYNSET = re.compile(r"^n\d{8}\s")


def read_labels(path):
    """Class names, one a line; ``n01440764 tench, Tinca tinca`` gives ``tench, Tinca tinca``."""
    from .limits import read_lines
    with reading(f"{path} (--labels)"):
        lines = read_lines(path, f"{path} (--labels)")
    while lines and not lines[-1].strip():
        lines.pop()
    return [ln.split(None, 1)[1].strip() if _SYNSET.match(ln) else ln.strip() for ln in lines]


def softmax_outputs(net):
    """(blob name, (N, K) probabilities) for each net output made by a Softmax over axis 1."""
    out = []
    for name in net.outputs:
        for li, tids in enumerate(net.top_ids):
            if name not in tids:
                continue
            layer = net.layers[li]
            if layer.type != "Softmax":
                break
            data = np.asarray(net.blobs[name].data)
            axis = layer.param.softmax_param.axis
            if data.ndim >= 2 and axis in (1, 1 - data.ndim) and int(np.prod(data.shape[2:])) == 1:
                out.append((name, data.reshape(data.shape[0], data.shape[1])))
            break
    return out


def top_k_lines(net, k=5, labels=None, item_names=None):
    """Text lines giving the top-k classes per item of every Softmax output."""
    lines = []
    for name, probs in softmax_outputs(net):
        kk = min(k, probs.shape[1])
        order = np.argsort(-probs, axis=1, kind="stable")[:, :kk]
        for i in range(probs.shape[0]):
            what = f" ({item_names[i]})" if item_names and i < len(item_names) else ""
            lines.append(f"top-{kk} of {name}, item {i}{what}:")
            for rank, cls in enumerate(order[i], 1):
                label = labels[cls] if labels and cls < len(labels) else ""
                lines.append(f"  {rank}. class {int(cls):<5d} {float(probs[i, cls]):.6f}  {label}".rstrip())
    return lines
