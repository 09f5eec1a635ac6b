"""The Layer base class and the registry of layer types.

A layer is built from its ``LayerParameter`` and then driven by the net:

* ``setup(bottom, top)``   -- once: read the parameters, create ``self.blobs``
  (learnable parameters, filled by their fillers), check the bottoms.
* ``reshape(bottom, top)`` -- before every forward: give the tops their shapes.
* ``forward(bottom, top)`` -- compute ``top[i].data`` from ``bottom[j].data``.
* ``backward(top, propagate_down, bottom)`` -- from ``top[i].diff`` write
  ``bottom[j].diff`` (overwrite) where ``propagate_down[j]``, and *add* the
  parameter gradients into ``self.blobs[k].diff`` where
  ``self.param_propagate_down[k]``.

``bottom`` and ``top`` are lists of :class:`netrun.blob.Blob`; for an in-place
layer ``top[0] is bottom[0]``.
"""
import numpy as np

from ..errors import LayerError

_REGISTRY = {}


def register(*type_names):
    """Class decorator: make the layer available under Caffe's type string(s)."""
    def deco(cls):
        for name in type_names:
            if name in _REGISTRY:
                raise RuntimeError(f"layer type {name!r} registered twice")
            _REGISTRY[name] = cls
        if cls.__dict__.get("type") is None:
            cls.type = type_names[0]
        return cls
    return deco


def registered_types():
    return sorted(_REGISTRY)


def layer_class(type_name):
    """The class for a Caffe type string, or None."""
    return _REGISTRY.get(type_name)


# Python layers that netrun has built in: (python_param.module, python_param.layer) -> class
_PYTHON_BUILTINS = {}


def register_python(module, layer):
    """Class decorator: run a well-known pycaffe layer (e.g. py-faster-rcnn's
    ``rpn.proposal_layer.ProposalLayer``) with netrun's own implementation, with no
    user code (so without ``allow_python_layers``)."""
    def deco(cls):
        _PYTHON_BUILTINS[(module, layer)] = cls
        cls.type = "Python"
        return cls
    return deco


def python_builtins():
    return dict(_PYTHON_BUILTINS)


def layer_class_for(param):
    """The class that runs LayerParameter ``param``: a built-in for a well-known Python
    layer, else the class registered for its type (None if there is none)."""
    if param.type == "Python":
        pp = param.python_param
        cls = _PYTHON_BUILTINS.get((pp.module, pp.layer))
        if cls is not None:
            return cls
    return _REGISTRY.get(param.type)


class Context:
    """What a layer may need from the net: phase, dtype, random numbers, warnings."""

    def __init__(self, phase, dtype=np.float32, rng=None, warn=None, allow_python_layers=False,
                 base_dir=".", budget=None):
        self.phase = phase              # caffe_pb2.TRAIN (0) or caffe_pb2.TEST (1)
        self.dtype = np.dtype(dtype)
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self._warn = warn
        self.allow_python_layers = allow_python_layers
        self.base_dir = base_dir
        self.budget = budget            # netrun.memory.Budget: charged before allocating
        self.pending_fills = None       # a list: fillers run after weights are loaded

    def warn(self, message):
        if self._warn is not None:
            self._warn(message)

    def warn_once(self, key, message):
        """warn(message) the first time ``key`` is seen by this context (one net)."""
        seen = self.__dict__.setdefault("_warned_keys", set())
        if key not in seen:
            seen.add(key)
            self.warn(message)


class Layer:
    type = None
    # Blob-count constraints, as Caffe's Exact/Min/MaxNum{Bottom,Top}Blobs (None: any).
    exact_bottoms = None
    min_bottoms = None
    max_bottoms = None
    exact_tops = None
    min_tops = None
    max_tops = None
    auto_top_blobs = False   # the net adds anonymous tops up to the minimum
    is_loss = False          # top 0 carries loss weight 1 unless loss_weight is given
    has_backward = True      # False: Caffe has no backward (never called by the net)
    in_place_ok = True

    def __init__(self, param, ctx):
        self.param = param
        self.name = param.name
        self.ctx = ctx
        self.phase = param.phase if param.HasField("phase") else ctx.phase
        self.dtype = ctx.dtype
        self.blobs = []                   # learnable parameters (Blob)
        self.param_propagate_down = []    # one bool per blob in self.blobs

    # -- the four steps ---------------------------------------------------------
    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        raise NotImplementedError

    def forward(self, bottom, top):
        raise NotImplementedError

    def backward(self, top, propagate_down, bottom):
        if any(propagate_down):
            raise LayerError(f"{self.type} has no backward pass")

    def allow_force_backward(self, bottom_index):
        return True

    # -- fusing in-place chains ------------------------------------------------------
    # A layer whose work on its (num, channels, rest) blob is done channel by channel
    # can offer it in pieces: the net then runs a chain of such layers in place on one
    # blob (BatchNorm -> Scale -> ReLU) tile by tile, so the blob crosses memory once
    # instead of once per layer.  The arithmetic of every element is unchanged.
    def channel_dims(self, bottom):
        """The (N, C, S) view whose channel ranges channel_forward/backward cut."""
        return None

    def channel_forward(self, bottom, top):
        """Prepare forward and return fn(lo, hi) computing it for channels [lo, hi) of
        the (N, C, S) view, or None when this configuration cannot be cut so.  Must
        not change any blob: the net may still fall back to forward()."""
        return None

    def channel_backward(self, top, propagate_down, bottom):
        """As channel_forward, for backward (parameter gradients included)."""
        return None

    def lead_forward(self, bottom, top):
        """For a layer whose top is then worked on in place by channel_forward layers
        (a convolution before its ReLU): run forward except a last per-channel step
        and return fn(lo, hi) doing that step for channels [lo, hi) of the top's
        (N, C, S) view -- the net runs it tile by tile together with the in-place
        layers after it -- or None, having changed nothing, when it cannot."""
        return None

    # -- helpers for subclasses ------------------------------------------------------
    def new_param(self, shape, filler=None):
        """Create a learnable parameter blob filled by a FillerParameter."""
        from ..blob import Blob
        from ..fillers import fill
        blob = Blob(shape, self.dtype)
        if self.ctx.budget is not None:
            self.ctx.budget.charge(blob.nbytes, f'layer "{self.name}" parameter {blob.shape}')
        if filler is not None:
            from ..fillers import check_filler
            check_filler(filler, blob.shape)
            if self.ctx.pending_fills is not None:
                self.ctx.pending_fills.append((blob, filler))
            else:
                blob.data[...] = fill(filler, blob.shape, self.ctx.rng)
        return blob

    def check_scratch(self, nbytes, what):
        """Refuse a temporary buffer (im2col columns, a padded copy...) that cannot fit
        in the memory budget next to the net's blobs (checked in reshape, from shapes)."""
        budget = self.ctx.budget
        if budget is None or budget.limit is None or nbytes < (1 << 20):
            return
        total = budget.total
        if total + nbytes > budget.limit:
            from ..memory import human
            raise LayerError(f"{what} needs {human(nbytes)} of scratch memory; with the "
                             f"net's {human(total)} that is more than the limit of "
                             f"{human(budget.limit)} (--max-memory)")

    def check_blob_counts(self, bottom, top):
        def one(kind, n, exact, lo, hi):
            if exact is not None and exact >= 0 and n != exact:
                raise LayerError(f"{self.type} takes {exact} {kind} blob(s), got {n}")
            if lo is not None and n < lo:
                raise LayerError(f"{self.type} takes at least {lo} {kind} blob(s), got {n}")
            if hi is not None and n > hi:
                raise LayerError(f"{self.type} takes at most {hi} {kind} blob(s), got {n}")
        one("bottom", len(bottom), self.exact_bottoms, self.min_bottoms, self.max_bottoms)
        one("top", len(top), self.exact_tops, self.min_tops, self.max_tops)
        if not self.in_place_ok:
            for j, t in enumerate(top):
                if any(t is b for b in bottom):
                    raise LayerError(f"{self.type} cannot run in place (top {j} is also a "
                                     "bottom): give the top its own name")

    def __repr__(self):
        return f"<{self.type} layer {self.name!r}>"


def canonical_axis(axis, num_axes):
    """Caffe's CanonicalAxisIndex: allow negative axes, check the range."""
    if not -num_axes <= axis < max(num_axes, 1):
        raise LayerError(f"axis {axis} out of range for a {num_axes}-D blob")
    return axis + num_axes if axis < 0 else axis


def not_in_place(layer, bottom, top):
    """Caffe's layers that cannot overwrite their input: a top that is a bottom is an error."""
    for t in top:
        for b in bottom:
            if t is b:
                raise LayerError(f"{layer.type} does not allow in-place computation")


def shape_count(shape, start=0, end=None):
    """Caffe's Blob::count(start, end): the product of those dimensions."""
    return int(np.prod(shape[start:end], dtype=np.int64))


def no_gradient(layer, blob, what):
    """Caffe aborts when asked for a gradient to indices; netrun gives 0 and warns once."""
    blob.diff[...] = 0
    if not getattr(layer, "_warned", False):
        layer._warned = True
        layer.ctx.warn(f'layer "{layer.name}" ({layer.type}): no gradient flows to {what} '
                       "(Caffe aborts here); it is set to 0")
