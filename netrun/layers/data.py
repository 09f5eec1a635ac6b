"""Layers that bring data into the net."""
import numpy as np

from ..errors import LayerError, check
from ..fillers import fill
from .base import Layer, register


def shape_of(blob_shape):
    """Tuple of a BlobShape message's dims."""
    return tuple(int(d) for d in blob_shape.dim)


@register("Input")
class Input(Layer):
    """Tops shaped by ``input_param.shape`` (one shape for all tops, or one each).
    Values come from the user; no forward or backward work."""
    exact_bottoms = 0
    min_tops = 1

    def setup(self, bottom, top):
        shapes = self.param.input_param.shape
        check(len(shapes) in (0, 1, len(top)),
              f"input_param gives {len(shapes)} shapes for {len(top)} tops "
              "(give one for all, or one per top)")
        for i, t in enumerate(top):
            if len(shapes):
                t.reshape(shape_of(shapes[0] if len(shapes) == 1 else shapes[i]))

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        pass


@register("DummyData")
class DummyData(Layer):
    """Tops filled by ``dummy_data_param.data_filler`` (one for all tops, or one
    each; default constant 0).  Constant fillers fill once; others refill at
    every forward."""
    exact_bottoms = 0
    min_tops = 1

    def setup(self, bottom, top):
        p = self.param.dummy_data_param
        n = len(top)
        legacy = len(p.num) > 0
        if legacy:
            for f in ("channels", "height", "width"):
                check(len(getattr(p, f)) in (1, n),
                      f"dummy_data_param.{f} must be given once or once per top")
            pick = lambda seq, i: seq[0] if len(seq) == 1 else seq[i]
            shapes = [(pick(p.num, i), pick(p.channels, i), pick(p.height, i), pick(p.width, i))
                      for i in range(n)]
        else:
            check(len(p.shape) in (1, n), "dummy_data_param.shape must be given once or once per top")
            shapes = [shape_of(p.shape[0] if len(p.shape) == 1 else p.shape[i]) for i in range(n)]
        check(len(p.data_filler) in (0, 1, n),
              "dummy_data_param.data_filler must be given zero, one, or once per top")
        if len(p.data_filler) == 0:
            from ..proto import caffe_pb2
            fillers = [caffe_pb2.FillerParameter(type="constant", value=0)] * n
        elif len(p.data_filler) == 1:
            fillers = [p.data_filler[0]] * n
        else:
            fillers = list(p.data_filler)
        self.fillers = fillers
        for t, s, f in zip(top, shapes, fillers):
            t.reshape(s)
            if (f.type or "constant") == "constant":
                t.data[...] = fill(f, t.shape, self.ctx.rng)

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        for t, f in zip(top, self.fillers):
            if (f.type or "constant") != "constant":
                t.data[...] = fill(f, t.shape, self.ctx.rng)

    def backward(self, top, propagate_down, bottom):
        pass
