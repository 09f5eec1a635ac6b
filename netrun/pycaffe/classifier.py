"""pycaffe's ``caffe.Classifier``: a :class:`Net` that classifies images.

``predict(images, oversample=True)``: each (H, W, K) image is resized to
``image_dims`` (default: the input's H x W), then either cut into the ten
``oversample`` crops of the input's size (scores averaged over them) or
center-cropped; each crop goes through the Transformer and the net, in batches of
the net's batch size.  Returns (N, classes) scores of the net's first output.
"""
import numpy as np

from . import io as caffe_io
from .pycaffe import TEST, Net


def configure_transformer(net, mean=None, input_scale=None, raw_scale=None,
                          channel_swap=None):
    """A Transformer for the net's first input: HWC -> CHW, then the options given."""
    in_ = net.inputs[0]
    t = caffe_io.Transformer({in_: net.blobs[in_].data.shape})
    t.set_transpose(in_, (2, 0, 1))
    if mean is not None:
        t.set_mean(in_, mean)
    if input_scale is not None:
        t.set_input_scale(in_, input_scale)
    if raw_scale is not None:
        t.set_raw_scale(in_, raw_scale)
    if channel_swap is not None:
        t.set_channel_swap(in_, channel_swap)
    return t


class Classifier(Net):
    """``Classifier(model_file, pretrained_file, image_dims=None, mean=None,
    input_scale=None, raw_scale=None, channel_swap=None)`` (module doc)."""

    def __init__(self, model_file, pretrained_file, image_dims=None, mean=None,
                 input_scale=None, raw_scale=None, channel_swap=None, **kw):
        super().__init__(model_file, TEST, weights=pretrained_file, **kw)
        self.transformer = configure_transformer(self, mean, input_scale, raw_scale,
                                                 channel_swap)
        in_ = self.inputs[0]
        self.crop_dims = np.array(self.blobs[in_].data.shape[2:])
        self.image_dims = self.crop_dims if image_dims is None or not len(image_dims) \
            else np.array(image_dims)

    def predict(self, inputs, oversample=True):
        h, w = (int(d) for d in self.image_dims[:2])
        batch = np.zeros((len(inputs), h, w, np.asarray(inputs[0]).shape[2]), np.float32)
        for i, im in enumerate(inputs):
            batch[i] = caffe_io.resize_image(im, (h, w))
        if oversample:
            batch = caffe_io.oversample(batch, self.crop_dims)
        else:
            ch, cw = (int(d) for d in self.crop_dims)
            y, x = int(h / 2.0 - ch / 2.0), int(w / 2.0 - cw / 2.0)
            batch = batch[:, y:y + ch, x:x + cw, :]
        in_ = self.inputs[0]
        caffe_in = np.stack([self.transformer.preprocess(in_, im) for im in batch])
        scores = self.forward_all(**{in_: caffe_in})[self.outputs[0]]
        if oversample:
            scores = scores.reshape((len(scores) // 10, 10, -1)).mean(1)
        return scores
