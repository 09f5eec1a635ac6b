"""Layer implementations, one module per family, registered by Caffe type string."""
from .base import Context, Layer, layer_class, layer_class_for, register, registered_types  # noqa: F401
from . import neuron, common, shape, loss, data, python, vision, normalization, recurrent  # noqa: F401  (importing registers the layers)
from . import forks, fork_data, detection, rcnn  # noqa: F401,E402  (the Caffe forks' layers)
