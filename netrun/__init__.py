"""netrun: run Caffe networks forward and backward in pure Python, with Caffe's numbers."""
from .blob import Blob  # noqa: F401
from .errors import NetrunError  # noqa: F401
from .net import Net, NetrunWarning  # noqa: F401

__version__ = "0.1.0"
TRAIN, TEST = 0, 1
