"""On-load upgrades of legacy Caffe definitions to the current (V2) format.

Caffe upgrades every NetParameter it reads (text prototxt or binary caffemodel)
in a fixed order; ``upgrade_net`` applies the same steps:

1. **V0 -> V1** (``layers { layer { type: "conv" ... } bottom: ... }``):
   separate ``padding`` layers are dropped and their ``pad`` goes into the conv /
   pool layer that consumes their output (which is rewired to the padding
   layer's input); then every V0 field moves into its V1 home (``num_output``
   -> ``convolution_param`` / ``inner_product_param``, ``kernelsize`` ->
   ``kernel_size``, ``scale``/``meanfile``/``cropsize``/``mirror`` ->
   ``transform_param`` ...).  Only the net's name, ``input``, ``input_dim``
   and ``force_backward`` survive this step, as in Caffe.
2. **Data transformation**: ``scale``, ``mean_file``, ``crop_size`` and
   ``mirror`` of V1 DATA / IMAGE_DATA / WINDOW_DATA layers move from
   ``data_param`` / ``image_data_param`` / ``window_data_param`` into
   ``transform_param``.
3. **V1 -> V2**: ``layers`` (enum ``type: CONVOLUTION``) become ``layer``
   (``type: "Convolution"``); per-layer ``param`` names, ``blob_share_mode``,
   ``blobs_lr`` and ``weight_decay`` become ``param { name share_mode lr_mult
   decay_mult }`` (the i-th entry of each list fills ``param[i]``); include /
   exclude, ``loss_weight``, ``blobs`` and every ``*_param`` are copied.
4. **Input fields**: the ``input`` + ``input_shape`` / ``input_dim`` header
   becomes one ``Input`` layer named "input", placed first, whose tops are the
   inputs and whose shapes are the declared ones (``input_dim`` read four at a
   time).  ``input`` alone (no shapes: an old caffemodel) is simply removed.
5. **BatchNorm**: a BatchNorm layer with exactly three ``param`` specs (the old
   way to freeze its statistics) gets ``lr_mult: 0`` and ``decay_mult: 0`` on
   each of them; names and share modes are kept.  (A warning is given only when
   some lr_mult was nonzero; ``needs_upgrade`` ignores specs that already read
   ``lr_mult: 0 decay_mult: 0``, which the rewrite leaves unchanged.)

Binary V1/V0 caffemodels keep their ``blobs`` through these steps, with legacy
``num/channels/height/width`` dims; :func:`blob_shape` and :func:`blob_array`
read either kind of BlobProto.

Solvers: :func:`upgrade_solver` turns the legacy ``solver_type`` enum into the
``type`` string.
"""

from ..errors import NetrunError
from ..proto import caffe_pb2
from ..proto import is_repeated
from .blobproto import blob_array, blob_shape  # noqa: F401  (re-exported)

__all__ = ["needs_upgrade", "upgrade_net", "blob_shape", "blob_array",
           "solver_needs_upgrade", "upgrade_solver", "V1_TYPE_NAMES", "V0_TYPE_NAMES"]


def _quiet(_msg):
    pass


# --------------------------------------------------------------------------------------
# type names
# --------------------------------------------------------------------------------------
_V1 = caffe_pb2.V1LayerParameter

# V1 enum name -> V2 type string (Caffe's UpgradeV1LayerType)
_V1_ENUM_TO_V2 = {
    "NONE": "", "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax",
    "BNLL": "BNLL", "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss",
    "CONVOLUTION": "Convolution", "DECONVOLUTION": "Deconvolution", "DATA": "Data",
    "DROPOUT": "Dropout", "DUMMY_DATA": "DummyData", "EUCLIDEAN_LOSS": "EuclideanLoss",
    "ELTWISE": "Eltwise", "EXP": "Exp", "FLATTEN": "Flatten", "HDF5_DATA": "HDF5Data",
    "HDF5_OUTPUT": "HDF5Output", "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData", "INFOGAIN_LOSS": "InfogainLoss",
    "INNER_PRODUCT": "InnerProduct", "LRN": "LRN", "MEMORY_DATA": "MemoryData",
    "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss", "MVN": "MVN",
    "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence",
    "SOFTMAX": "Softmax", "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split",
    "SLICE": "Slice", "TANH": "TanH", "WINDOW_DATA": "WindowData",
    "THRESHOLD": "Threshold",
}
#: V1LayerType enum value -> V2 type string
V1_TYPE_NAMES = {_V1.LayerType.Value(k): v for k, v in _V1_ENUM_TO_V2.items()}

# V0 type string -> V1 enum name (Caffe's UpgradeV0LayerType)
_V0_TO_V1_ENUM = {
    "accuracy": "ACCURACY", "bnll": "BNLL", "concat": "CONCAT", "conv": "CONVOLUTION",
    "data": "DATA", "dropout": "DROPOUT", "euclidean_loss": "EUCLIDEAN_LOSS",
    "flatten": "FLATTEN", "hdf5_data": "HDF5_DATA", "hdf5_output": "HDF5_OUTPUT",
    "im2col": "IM2COL", "images": "IMAGE_DATA", "infogain_loss": "INFOGAIN_LOSS",
    "innerproduct": "INNER_PRODUCT", "lrn": "LRN",
    "multinomial_logistic_loss": "MULTINOMIAL_LOGISTIC_LOSS", "pool": "POOLING",
    "relu": "RELU", "sigmoid": "SIGMOID", "softmax": "SOFTMAX",
    "softmax_loss": "SOFTMAX_LOSS", "split": "SPLIT", "tanh": "TANH",
    "window_data": "WINDOW_DATA",
}
#: V0 type string -> V1LayerType enum value
V0_TYPE_NAMES = {k: _V1.LayerType.Value(v) for k, v in _V0_TO_V1_ENUM.items()}

# V0 field -> {V0 type: (sub-message of V1LayerParameter, field there)}.
# A V0 field set on a layer type not listed is reported and dropped (Caffe logs an
# error and carries on).  Repeated destinations get the value appended.
_V0_FIELD_MAP = {
    "num_output": {"conv": ("convolution_param", "num_output"),
                   "innerproduct": ("inner_product_param", "num_output")},
    "biasterm": {"conv": ("convolution_param", "bias_term"),
                 "innerproduct": ("inner_product_param", "bias_term")},
    "weight_filler": {"conv": ("convolution_param", "weight_filler"),
                      "innerproduct": ("inner_product_param", "weight_filler")},
    "bias_filler": {"conv": ("convolution_param", "bias_filler"),
                    "innerproduct": ("inner_product_param", "bias_filler")},
    "pad": {"conv": ("convolution_param", "pad"), "pool": ("pooling_param", "pad")},
    "kernelsize": {"conv": ("convolution_param", "kernel_size"),
                   "pool": ("pooling_param", "kernel_size")},
    "group": {"conv": ("convolution_param", "group")},
    "stride": {"conv": ("convolution_param", "stride"),
               "pool": ("pooling_param", "stride")},
    "pool": {"pool": ("pooling_param", "pool")},
    "dropout_ratio": {"dropout": ("dropout_param", "dropout_ratio")},
    "local_size": {"lrn": ("lrn_param", "local_size")},
    "alpha": {"lrn": ("lrn_param", "alpha")},
    "beta": {"lrn": ("lrn_param", "beta")},
    "k": {"lrn": ("lrn_param", "k")},
    "source": {"data": ("data_param", "source"),
               "hdf5_data": ("hdf5_data_param", "source"),
               "images": ("image_data_param", "source"),
               "window_data": ("window_data_param", "source"),
               "infogain_loss": ("infogain_loss_param", "source")},
    "batchsize": {"data": ("data_param", "batch_size"),
                  "hdf5_data": ("hdf5_data_param", "batch_size"),
                  "images": ("image_data_param", "batch_size"),
                  "window_data": ("window_data_param", "batch_size")},
    "rand_skip": {"data": ("data_param", "rand_skip"),
                  "images": ("image_data_param", "rand_skip")},
    "shuffle_images": {"images": ("image_data_param", "shuffle")},
    "new_height": {"images": ("image_data_param", "new_height")},
    "new_width": {"images": ("image_data_param", "new_width")},
    "concat_dim": {"concat": ("concat_param", "concat_dim")},
    "det_fg_threshold": {"window_data": ("window_data_param", "fg_threshold")},
    "det_bg_threshold": {"window_data": ("window_data_param", "bg_threshold")},
    "det_fg_fraction": {"window_data": ("window_data_param", "fg_fraction")},
    "det_context_pad": {"window_data": ("window_data_param", "context_pad")},
    "det_crop_mode": {"window_data": ("window_data_param", "crop_mode")},
    "hdf5_output_param": {"hdf5_output": (None, "hdf5_output_param")},
}
# V0 fields that go to transform_param whatever the layer type
_V0_TRANSFORM = {"scale": "scale", "meanfile": "mean_file", "cropsize": "crop_size",
                 "mirror": "mirror"}
# the pooling method enum has the same names in V0 and in PoolingParameter
_V0_POOL = {caffe_pb2.V0LayerParameter.PoolMethod.Value(n):
            caffe_pb2.PoolingParameter.PoolMethod.Value(n)
            for n in ("MAX", "AVE", "STOCHASTIC")}

# layer types whose parameter message may still hold the transformation fields
_DATA_TRANSFORM_HOMES = {
    _V1.DATA: "data_param",
    _V1.IMAGE_DATA: "image_data_param",
    _V1.WINDOW_DATA: "window_data_param",
}
_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")


# --------------------------------------------------------------------------------------
# detection
# --------------------------------------------------------------------------------------
def _needs_v0(net):
    return any(l.HasField("layer") for l in net.layers)


def _needs_v1(net):
    return len(net.layers) > 0


def _needs_data(net):
    for l in net.layers:
        home = _DATA_TRANSFORM_HOMES.get(l.type)
        if home and l.HasField(home):
            sub = getattr(l, home)
            if any(sub.HasField(f) for f in _TRANSFORM_FIELDS):
                return True
    return False


def _needs_input(net):
    return len(net.input) > 0


def _bn_spec_frozen(spec):
    return (spec.HasField("lr_mult") and spec.lr_mult == 0
            and spec.HasField("decay_mult") and spec.decay_mult == 0)


def _old_batchnorms(net):
    return [l for l in net.layer if l.type == "BatchNorm" and len(l.param) == 3]


def _needs_batchnorm(net):
    # Caffe rewrites every BatchNorm with three specs; a net whose specs already read
    # lr_mult: 0 decay_mult: 0 comes out identical, so it is not reported here.
    return any(not _bn_spec_frozen(p) for l in _old_batchnorms(net) for p in l.param)


def needs_upgrade(net):
    """True when ``net`` uses any legacy form that :func:`upgrade_net` rewrites."""
    return (_needs_v0(net) or _needs_v1(net) or _needs_data(net)
            or _needs_input(net) or _needs_batchnorm(net))


# --------------------------------------------------------------------------------------
# V0 -> V1
# --------------------------------------------------------------------------------------
def _v0_label(entry, index):
    name = entry.layer.name if entry.HasField("layer") else entry.name
    return f'V0 layer "{name}"' if name else f"V0 layer #{index}"


def _fold_padding_layers(net):
    """The V0 ``layers`` list without its ``padding`` layers (a list of copies).

    A layer reading a padding layer's output takes over the padding layer's input
    and its ``pad``; it must be a single-input conv or pool layer, and the padding
    layer must have one bottom and one top (Caffe checks the same).
    """
    producer = {name: None for name in net.input}     # blob -> index of last writer
    kept = []
    for i, entry in enumerate(net.layers):
        v0type = entry.layer.type
        new = None
        if v0type != "padding":
            new = caffe_pb2.V1LayerParameter()
            new.CopyFrom(entry)
            kept.append(new)
        for j, blob in enumerate(entry.bottom):
            if blob not in producer:
                raise NetrunError(f'{_v0_label(entry, i)}: bottom "{blob}" is not produced '
                                  "by any earlier layer nor declared as an input")
            src_i = producer[blob]
            if src_i is None:
                continue
            src = net.layers[src_i]
            if src.layer.type != "padding":
                continue
            if v0type not in ("conv", "pool"):
                raise NetrunError(f'{_v0_label(entry, i)}: takes the output of padding layer '
                                  f'"{src.layer.name}" but is a "{v0type}" layer; only conv '
                                  "and pool layers can absorb a padding layer")
            if len(entry.bottom) != 1:
                raise NetrunError(f"{_v0_label(entry, i)}: a layer fed by a padding layer "
                                  f"must have exactly one bottom, it has {len(entry.bottom)}")
            if len(src.bottom) != 1 or len(src.top) != 1:
                raise NetrunError(f'padding layer "{src.layer.name}" must have one bottom and '
                                  f"one top, it has {len(src.bottom)} and {len(src.top)}")
            new.layer.pad = src.layer.pad
            new.bottom[j] = src.bottom[0]
        for blob in entry.top:
            producer[blob] = i
    return kept


def _set_field(msg, field, value):
    fd = msg.DESCRIPTOR.fields_by_name[field]
    if fd.message_type is not None:
        getattr(msg, field).CopyFrom(value)
    elif is_repeated(fd):
        getattr(msg, field).append(value)
    else:
        setattr(msg, field, value)


def _upgrade_v0_layer(entry, index, problems):
    """One V0 ``layers`` entry -> a V1LayerParameter."""
    out = caffe_pb2.V1LayerParameter()
    out.bottom.extend(entry.bottom)
    out.top.extend(entry.top)
    if not entry.HasField("layer"):
        problems.append(f"{_v0_label(entry, index)} has no V0 'layer' block: only its "
                        "bottoms and tops are kept")
        return out
    v0 = entry.layer
    label = _v0_label(entry, index)
    if v0.HasField("name"):
        out.name = v0.name
    v0type = v0.type
    if v0.HasField("type"):
        if v0type not in V0_TYPE_NAMES:
            raise NetrunError(f'{label}: unknown V0 layer type "{v0type}"')
        out.type = V0_TYPE_NAMES[v0type]
    out.blobs.extend(v0.blobs)
    out.blobs_lr.extend(v0.blobs_lr)
    out.weight_decay.extend(v0.weight_decay)
    for field, homes in _V0_FIELD_MAP.items():
        if not v0.HasField(field):
            continue
        home = homes.get(v0type)
        if home is None:
            problems.append(f'{label}: parameter {field} does not apply to a "{v0type}" '
                            "layer; dropped")
            continue
        sub_name, dest = home
        value = getattr(v0, field)
        if field == "pool":
            value = _V0_POOL[value]
        target = out if sub_name is None else getattr(out, sub_name)
        _set_field(target, dest, value)
    for field, dest in _V0_TRANSFORM.items():
        if v0.HasField(field):
            setattr(out.transform_param, dest, getattr(v0, field))
    return out


def _upgrade_v0(net, problems):
    kept = _fold_padding_layers(net)
    out = caffe_pb2.NetParameter()
    if net.HasField("name"):
        out.name = net.name
    for i, entry in enumerate(kept):
        out.layers.add().CopyFrom(_upgrade_v0_layer(entry, i, problems))
    out.input.extend(net.input)
    out.input_dim.extend(net.input_dim)
    if net.HasField("force_backward"):
        out.force_backward = net.force_backward
    return out


# --------------------------------------------------------------------------------------
# data transformation fields
# --------------------------------------------------------------------------------------
def _upgrade_data_transform(net):
    for l in net.layers:
        home = _DATA_TRANSFORM_HOMES.get(l.type)
        if not home or not l.HasField(home):
            continue
        sub = getattr(l, home)
        for f in _TRANSFORM_FIELDS:
            if sub.HasField(f):
                setattr(l.transform_param, f, getattr(sub, f))
                sub.ClearField(f)


# --------------------------------------------------------------------------------------
# V1 -> V2
# --------------------------------------------------------------------------------------
_V1_SUBPARAMS = tuple(f.name for f in _V1.DESCRIPTOR.fields
                      if f.message_type is not None and f.name.endswith("_param"))
_SHARE_MODE = {_V1.DimCheckMode.Value(n): caffe_pb2.ParamSpec.DimCheckMode.Value(n)
               for n in ("STRICT", "PERMISSIVE")}


def _param_spec(layer, i):
    while len(layer.param) <= i:
        layer.param.add()
    return layer.param[i]


def _upgrade_v1_layer(v1, index, problems):
    out = caffe_pb2.LayerParameter()
    out.bottom.extend(v1.bottom)
    out.top.extend(v1.top)
    if v1.HasField("name"):
        out.name = v1.name
    out.include.extend(v1.include)
    out.exclude.extend(v1.exclude)
    label = f'V1 layer "{v1.name}"' if v1.name else f"V1 layer #{index}"
    if v1.HasField("type"):
        if v1.type not in V1_TYPE_NAMES:
            raise NetrunError(f"{label}: unknown V1 layer type {v1.type}")
        out.type = V1_TYPE_NAMES[v1.type]
    out.blobs.extend(v1.blobs)
    for i, name in enumerate(v1.param):
        _param_spec(out, i).name = name
    for i, mode in enumerate(v1.blob_share_mode):
        if mode not in _SHARE_MODE:
            raise NetrunError(f"{label}: unknown blob_share_mode {mode}")
        _param_spec(out, i).share_mode = _SHARE_MODE[mode]
    for i, lr in enumerate(v1.blobs_lr):
        _param_spec(out, i).lr_mult = lr
    for i, decay in enumerate(v1.weight_decay):
        _param_spec(out, i).decay_mult = decay
    out.loss_weight.extend(v1.loss_weight)
    for name in _V1_SUBPARAMS:
        if v1.HasField(name):
            getattr(out, name).CopyFrom(getattr(v1, name))
    if v1.HasField("layer"):
        problems.append(f"{label} still holds a V0 'layer' block; ignored")
    return out


def _upgrade_v1(net, problems):
    if len(net.layer):
        raise NetrunError("the definition has both 'layer' and 'layers' entries; the "
                          "current format uses layer { type: \"Convolution\" ... }, the "
                          "legacy one layers { type: CONVOLUTION ... }: use one of them")
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    out.ClearField("layers")
    out.ClearField("layer")
    for i, v1 in enumerate(net.layers):
        out.layer.add().CopyFrom(_upgrade_v1_layer(v1, i, problems))
    return out


# --------------------------------------------------------------------------------------
# input fields -> Input layer
# --------------------------------------------------------------------------------------
def _upgrade_input(net):
    """Returns True if an Input layer was made, False if the fields were just dropped."""
    n = len(net.input)
    has_shape = len(net.input_shape) > 0
    has_dim = len(net.input_dim) > 0
    made = False
    if has_shape or has_dim:
        if has_shape and len(net.input_shape) < n:
            raise NetrunError(f"{n} inputs but only {len(net.input_shape)} input_shape "
                              "entries: give one input_shape per input")
        if not has_shape and len(net.input_dim) < 4 * n:
            raise NetrunError(f"{n} inputs need {4 * n} input_dim values (four per input), "
                              f"got {len(net.input_dim)}")
        layer = caffe_pb2.LayerParameter(name="input", type="Input")
        for i, name in enumerate(net.input):
            layer.top.append(name)
            shape = layer.input_param.shape.add()
            if has_shape:
                shape.CopyFrom(net.input_shape[i])
            else:
                shape.dim.extend(net.input_dim[4 * i:4 * i + 4])
        rest = []
        for l in net.layer:
            c = caffe_pb2.LayerParameter()
            c.CopyFrom(l)
            rest.append(c)
        net.ClearField("layer")
        net.layer.add().CopyFrom(layer)
        net.layer.extend(rest)
        made = True
    net.ClearField("input")
    net.ClearField("input_shape")
    net.ClearField("input_dim")
    return made


# --------------------------------------------------------------------------------------
# BatchNorm param specs
# --------------------------------------------------------------------------------------
def _upgrade_batchnorm(net):
    """Zero the multipliers; returns the names of layers that asked for learning."""
    learning = []
    for l in _old_batchnorms(net):
        if any(spec.lr_mult != 0 for spec in l.param):
            learning.append(l.name)
        for spec in l.param:
            spec.lr_mult = 0.0
            spec.decay_mult = 0.0
    return learning


# --------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------
def upgrade_net(net, warn=None):
    """A V2 copy of ``net`` (a caffe_pb2.NetParameter), upgraded as Caffe does on load.

    ``net`` is not modified.  ``warn(message)`` is called once per upgrade step that
    applied, plus once per field Caffe could not carry over (Caffe logs those and
    continues).  Structural problems Caffe aborts on raise NetrunError.
    """
    warn = warn or _quiet
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    problems = []

    if _needs_v0(out):
        out = _upgrade_v0(out, problems)
        warn("upgraded V0 layer definitions (layers { layer { type: \"conv\" } }) to V1")
        for p in problems:
            warn(p)
        problems = []
    if _needs_data(out):
        _upgrade_data_transform(out)
        warn("moved data transformation fields (scale, mean_file, crop_size, mirror) "
             "into transform_param")
    if _needs_v1(out):
        out = _upgrade_v1(out, problems)
        warn("upgraded V1 layer definitions (layers { type: ENUM }) to V2 "
             "(layer { type: \"Name\" })")
        for p in problems:
            warn(p)
    if _needs_input(out):
        dropped = ", ".join(f'"{n}"' for n in out.input)
        if _upgrade_input(out):
            warn("turned the legacy input/input_dim/input_shape fields into an Input layer")
        else:
            warn(f"dropped the legacy input fields ({dropped}): they declare no shape "
                 "(to feed them, give their shapes with --input-shape NAME=D0,D1,...)")
    if _needs_batchnorm(out):
        learning = _upgrade_batchnorm(out)
        if learning:            # only lr_mult matters: decay is scaled by lr_mult too
            names = ", ".join(f'"{n}"' for n in learning[:5])
            more = f" and {len(learning) - 5} more" if len(learning) > 5 else ""
            warn("BatchNorm statistics are not learned: set lr_mult and decay_mult to 0 "
                 f"in the three param specs of {names}{more}")
    return out


# --------------------------------------------------------------------------------------
# blobs
# --------------------------------------------------------------------------------------
# --------------------------------------------------------------------------------------
# solver
# --------------------------------------------------------------------------------------
_SOLVER_TYPES = {"SGD": "SGD", "NESTEROV": "Nesterov", "ADAGRAD": "AdaGrad",
                 "RMSPROP": "RMSProp", "ADADELTA": "AdaDelta", "ADAM": "Adam"}


def solver_needs_upgrade(solver):
    return solver.HasField("solver_type")


def upgrade_solver(solver, warn=None):
    """A copy of a caffe_pb2.SolverParameter with ``solver_type`` (enum) turned into
    ``type`` (string).  Both given at once is an error, as in Caffe."""
    warn = warn or _quiet
    out = caffe_pb2.SolverParameter()
    out.CopyFrom(solver)
    if not out.HasField("solver_type"):
        return out
    if out.HasField("type"):
        raise NetrunError("the solver gives both the legacy solver_type (enum) and type "
                          "(string); keep only type")
    enum_name = caffe_pb2.SolverParameter.SolverType.Name(out.solver_type)
    out.type = _SOLVER_TYPES[enum_name]
    out.ClearField("solver_type")
    warn(f"upgraded legacy solver_type: {enum_name} to type: \"{out.type}\"")
    return out
