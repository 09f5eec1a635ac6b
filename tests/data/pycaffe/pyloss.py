"""A pycaffe Python loss layer: scaled Euclidean loss, 0.5 * scale * sum((a - b)^2) / N."""
import numpy as np

import caffe


class EuclideanLossLayer(caffe.Layer):
    def setup(self, bottom, top):
        if len(bottom) != 2:
            raise Exception("EuclideanLossLayer needs two bottoms")
        self.scale = float(self.param_str) if self.param_str else 1.0

    def reshape(self, bottom, top):
        if bottom[0].count != bottom[1].count:
            raise Exception("the bottoms must have the same count")
        self.diff = np.zeros(bottom[0].data.shape, dtype=np.float32)
        top[0].reshape(1)

    def forward(self, bottom, top):
        self.diff[...] = bottom[0].data - bottom[1].data.reshape(self.diff.shape)
        top[0].data[...] = self.scale * np.sum(self.diff ** 2) / bottom[0].num / 2.0

    def backward(self, top, propagate_down, bottom):
        weight = top[0].diff.flat[0]                  # the loss weight Caffe puts there
        for i, sign in ((0, 1), (1, -1)):
            if propagate_down[i]:
                bottom[i].diff[...] = (sign * weight * self.scale / bottom[i].num
                                       * self.diff).reshape(bottom[i].diff.shape)
