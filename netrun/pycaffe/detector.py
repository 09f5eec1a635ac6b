"""pycaffe's ``caffe.Detector``: classify windows of images (R-CNN style).

``detect_windows([(image_file, windows), ...])`` crops each window (ymin, xmin,
ymax, xmax) out of its image -- with ``context_pad`` pixels of surrounding context,
padded with the mean where the box leaves the image -- warps it to the input size
and runs the net.  Returns one dict per window: ``window``, ``prediction`` (the
first output's scores), ``filename``.  ``detect_selective_search`` needs the
external selective_search_ijcv_with_python module (and MATLAB), as in pycaffe.
"""
import os

import numpy as np

from . import io as caffe_io
from .classifier import configure_transformer
from .pycaffe import TEST, Net


class Detector(Net):
    """``Detector(model_file, pretrained_file, mean=None, input_scale=None,
    raw_scale=None, channel_swap=None, context_pad=None)`` (module doc)."""

    def __init__(self, model_file, pretrained_file, mean=None, input_scale=None,
                 raw_scale=None, channel_swap=None, context_pad=None, **kw):
        super().__init__(model_file, TEST, weights=pretrained_file, **kw)
        self.transformer = configure_transformer(self, mean, input_scale, raw_scale,
                                                 channel_swap)
        self.configure_crop(context_pad)

    def detect_windows(self, images_windows):
        images_windows = [(f, list(ws)) for f, ws in images_windows]
        crops = []
        for fname, windows in images_windows:
            image = caffe_io.load_image(fname).astype(np.float32)
            crops.extend(self.crop(image, w) for w in windows)
        in_ = self.inputs[0]
        caffe_in = np.stack([self.transformer.preprocess(in_, c) for c in crops])
        predictions = self.forward_all(**{in_: caffe_in})[self.outputs[0]]
        out, k = [], 0
        for fname, windows in images_windows:
            for w in windows:
                out.append({"window": w, "prediction": predictions[k], "filename": fname})
                k += 1
        return out

    def detect_selective_search(self, image_fnames):
        import selective_search_ijcv_with_python as selective_search
        image_fnames = [os.path.abspath(f) for f in image_fnames]
        windows = selective_search.get_windows(image_fnames, cmd="selective_search_rcnn")
        return self.detect_windows(zip(image_fnames, windows))

    def crop(self, im, window):
        """The window (ymin, xmin, ymax, xmax) of ``im``, with context when configured."""
        window = np.asarray(window)
        if not self.context_pad:
            return im[int(window[0]):int(window[2]), int(window[1]):int(window[3])]
        size = self.blobs[self.inputs[0]].width            # assumes a square input
        scale = size / (1.0 * size - self.context_pad * 2)
        half_h = (window[2] - window[0] + 1) / 2.0
        half_w = (window[3] - window[1] + 1) / 2.0
        center = (window[0] + half_h, window[1] + half_w)
        box = np.round(np.tile(center, 2) + scale * np.array((-half_h, -half_w, half_h, half_w)))
        full_h, full_w = box[2] - box[0] + 1, box[3] - box[1] + 1
        scale_h, scale_w = size / full_h, size / full_w
        pad_y = int(round(max(0, -box[0]) * scale_h))      # rows/cols outside the image
        pad_x = int(round(max(0, -box[1]) * scale_w))
        im_h, im_w = im.shape[:2]
        box = np.clip(box, 0.0, [im_h, im_w, im_h, im_w])
        clip_h, clip_w = box[2] - box[0] + 1, box[3] - box[1] + 1
        assert clip_h > 0 and clip_w > 0
        crop_h = min(int(round(clip_h * scale_h)), size - pad_y)
        crop_w = min(int(round(clip_w * scale_w)), size - pad_x)
        b = box.astype(int)
        context = caffe_io.resize_image(im[b[0]:b[2], b[1]:b[3]], (crop_h, crop_w))
        out = np.ones(self.crop_dims, np.float32) * self.crop_mean
        out[pad_y:pad_y + crop_h, pad_x:pad_x + crop_w] = context
        return out

    def configure_crop(self, context_pad):
        """Crop size (the input's H, W, K) and, with context_pad, the mean in image
        space for the padding."""
        in_ = self.inputs[0]
        tpose = self.transformer.transpose[in_]
        inv = list(np.argsort(tpose))
        self.crop_dims = np.array(self.blobs[in_].data.shape[1:])[inv]
        self.context_pad = context_pad
        if not context_pad:
            return
        mean = self.transformer.mean.get(in_)
        if mean is None:
            self.crop_mean = np.zeros(self.crop_dims, np.float32)
            return
        crop_mean = np.broadcast_to(mean, self.blobs[in_].data.shape[1:]).transpose(inv).copy()
        swap = self.transformer.channel_swap.get(in_)
        if swap is not None:
            crop_mean = crop_mean[:, :, [list(swap).index(i) for i in range(crop_mean.shape[2])]]
        raw = self.transformer.raw_scale.get(in_)
        if raw is not None:
            crop_mean = crop_mean / raw
        self.crop_mean = crop_mean
