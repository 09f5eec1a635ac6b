"""The net: Caffe's graph rules, all in one place.

Building a net from a NetParameter follows Caffe's ``Net::Init``:

1. **Filter** layers by their include/exclude NetStateRules against the state
   (phase, level, stages).  A layer with include rules is kept if any rule is
   met; otherwise it is kept unless an exclude rule is met.
2. **Split**: every top consumed by more than one bottom (a top with a non-zero
   explicit ``loss_weight`` counts as one more consumer) is followed by a Split
   layer ``<blob>_<layer>_<i>_split`` whose tops ``..._split_<k>`` feed the
   consumers in order; backward sums their diffs.  The loss weight moves to
   split top 0.
3. **Connect** layers in order.  A top named like the bottom at the same index
   is in place (the same blob); producing an existing blob otherwise is an
   error.  Tops nobody consumes are the net outputs (sorted by name).
4. **Set up** each layer, give it loss weights (loss layers: 1 on top 0 by
   default), and decide backward: a layer needs backward if a bottom needs it
   or one of its parameters has ``lr_mult != 0``; ``propagate_down: false``
   stops the gradient at that bottom.  Then, from the last layer back, layers
   that do not lead to a loss, or whose tops all skip backpropagation, are not
   run backward.  ``force_backward`` then turns backward on everywhere the
   layer allows it.
5. **Share** parameters by ``ParamSpec.name``: later owners of a name use the
   first owner's blob, so their gradients accumulate in one place.

Forward computes ``loss = sum over tops of loss_weight * sum(top)``; the loss
tops' diffs hold their loss weights, which seeds backward.  Backward
overwrites bottom diffs and adds into parameter diffs (clear them with
``clear_param_diffs()``).
"""
import difflib
import os
import warnings
from collections import OrderedDict

import numpy as np

from .blob import Blob
from .errors import LayerError, NetrunError
from .layers import Context, layer_class_for, registered_types
from .layers.forks import FORK_LAYERS
from .passes import Batches, Passes
from .proto import caffe_pb2

PHASES = {"train": caffe_pb2.TRAIN, "test": caffe_pb2.TEST}


class NetrunWarning(UserWarning):
    pass


def _default_warn(message):
    warnings.warn(message, NetrunWarning, stacklevel=3)


def parse_phase(phase):
    if phase is None:
        return caffe_pb2.TEST
    if isinstance(phase, str):
        key = phase.lower()
        if key not in PHASES:
            raise NetrunError(f"unknown phase {phase!r} (use train or test)")
        return PHASES[key]
    return int(phase)


# -- 1. filtering ---------------------------------------------------------------------
def state_meets_rule(state, rule):
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(s not in stages for s in rule.stage):
        return False
    if any(s in stages for s in rule.not_stage):
        return False
    return True


def filter_layers(param, state):
    """Indices of the layers of ``param`` that the state keeps."""
    kept = []
    for i, lp in enumerate(param.layer):
        if len(lp.include) and len(lp.exclude):
            raise NetrunError(f'layer "{lp.name}" ({lp.type}) has both include and exclude rules; '
                              "give one kind only", None)
        if len(lp.include):
            ok = any(state_meets_rule(state, r) for r in lp.include)
        else:
            ok = not any(state_meets_rule(state, r) for r in lp.exclude)
        if ok:
            kept.append(i)
    return kept


# -- 2. splits --------------------------------------------------------------------------
def split_layer_name(layer, blob, idx):
    return f"{blob}_{layer}_{idx}_split"


def split_blob_name(layer, blob, idx, k):
    return f"{blob}_{layer}_{idx}_split_{k}"


def insert_splits(layers, origins, where):
    """Caffe's InsertSplits over a list of LayerParameters.

    Returns (new_layers, new_origins); ``origins[i]`` is the index of the layer in
    the original file (None for an inserted Split).
    """
    last_top = {}                 # blob name -> (layer, top index) of its latest producer
    source = {}                   # (layer, bottom index) -> (layer, top index)
    count = {}                    # (layer, top index) -> number of consumers
    loss_w = {}
    for i, lp in enumerate(layers):
        for j, b in enumerate(lp.bottom):
            if b not in last_top:
                later = [l.name for l in layers[i:] if b in l.top]
                hint = (f'; it is produced only by the later layer "{later[0]}" (layers run in '
                        "file order: a cycle?)") if later else ""
                raise NetrunError(f'Unknown bottom blob "{b}" (layer "{lp.name}", bottom {j}){hint}',
                                  where(origins[i]))
            source[(i, j)] = last_top[b]
            count[last_top[b]] = count.get(last_top[b], 0) + 1
        for j, t in enumerate(lp.top):
            last_top[t] = (i, j)
        for j in range(min(len(lp.loss_weight), len(lp.top))):
            key = last_top[lp.top[j]]
            loss_w[key] = lp.loss_weight[j]
            if lp.loss_weight[j]:
                count[key] = count.get(key, 0) + 1
    out, out_origins = [], []
    next_split = {}
    for i, lp in enumerate(layers):
        new = caffe_pb2.LayerParameter()
        new.CopyFrom(lp)
        for j in range(len(new.bottom)):
            key = source[(i, j)]
            if count.get(key, 0) > 1:
                k = next_split.get(key, 0)
                next_split[key] = k + 1
                new.bottom[j] = split_blob_name(layers[key[0]].name, new.bottom[j], key[1], k)
        out.append(new)
        out_origins.append(origins[i])
        for j, t in enumerate(new.top):
            n = count.get((i, j), 0)
            if n > 1:
                w = loss_w.get((i, j), 0.0)
                split = caffe_pb2.LayerParameter(name=split_layer_name(lp.name, t, j), type="Split")
                split.bottom.append(t)
                for k in range(n):
                    split.top.append(split_blob_name(lp.name, t, j, k))
                    if w:
                        split.loss_weight.append(w if k == 0 else 0.0)
                if w:
                    del new.loss_weight[:]
                    next_split[(i, j)] = next_split.get((i, j), 0) + 1
                out.append(split)
                out_origins.append(origins[i])
    return out, out_origins


# Every layer type BVLC Caffe registers (upstream master).
BVLC_TYPES = frozenset("""
AbsVal Accuracy ArgMax BNLL BatchNorm BatchReindex Bias Clip Concat ContrastiveLoss Convolution
Crop Data Deconvolution Dropout DummyData ELU Eltwise Embed EuclideanLoss Exp Filter Flatten
HDF5Data HDF5Output HingeLoss Im2col ImageData InfogainLoss InnerProduct Input LRN LSTM LSTMUnit
Log MVN MemoryData MultinomialLogisticLoss PReLU Parameter Pooling Power Python RNN ReLU
Reduction Reshape SPP Scale Sigmoid SigmoidCrossEntropyLoss Silence Slice Softmax
SoftmaxWithLoss Split Swish TanH Threshold Tile WindowData""".split())


# A layer's setup/reshape should raise LayerError for every bad parameter; these
# exceptions from setup/reshape mean a check is missing: report them as user errors
# naming the layer (chained, so --debug shows where they came from).
SETUP_ERRORS = (ValueError, IndexError, ZeroDivisionError, OverflowError, TypeError, KeyError)


def invalid_parameters(e):
    if getattr(e, "netrun_user_code", False):   # a Python layer's own error (pycaffe mode)
        raise e
    return NetrunError(f"invalid parameters ({type(e).__name__}: {e})")


# Well-known layer types of Caffe forks that netrun does not implement: what they are,
# and the BVLC types that come closest (spelling-based suggestions mean nothing for
# these names).  The forks' layers netrun has: netrun/layers/forks.py (FORK_LAYERS).
FORK_TYPES = {
    "Interp": ("the DeepLab/PSPNet forks' bilinear resize", ["Deconvolution"]),
    "ReLU6": ("ReLU capped at 6 (Clip with min 0, max 6)", ["Clip", "ReLU"]),
    "Axpy": ("SENet's a * x + y", ["Scale", "Eltwise"]),
    "PSROIPooling": ("an R-FCN fork layer with no BVLC equivalent", []),
    "Reorg": ("a YOLOv2 fork layer with no BVLC equivalent", []),
    "Region": ("a YOLOv2 fork layer with no BVLC equivalent", []),
}


def unknown_type_message(type_name):
    known = registered_types()
    if type_name in BVLC_TYPES:
        return f'layer type "{type_name}" is a BVLC Caffe layer that netrun does not implement yet'
    if type_name in FORK_TYPES:
        what, close = FORK_TYPES[type_name]
        what = f": {what}"
        if type_name in FORK_LAYERS:
            what += f", from the {FORK_LAYERS[type_name]} fork"
    elif type_name in FORK_LAYERS:
        what, close = f": a layer of the {FORK_LAYERS[type_name]} fork that netrun lacks", []
    else:
        what = ""
        close = difflib.get_close_matches(type_name, known, n=3, cutoff=0.5)
        lower = {k.lower(): k for k in known}
        if type_name.lower() in lower and lower[type_name.lower()] not in close:
            close.insert(0, lower[type_name.lower()])
    hint = f"; closest known types: {', '.join(close)}" if close else ""
    return (f'unknown layer type "{type_name}" (not a BVLC Caffe layer{what}{hint}; '
            f"`netrun layers` lists the {len(known)} known types)")


# -- the net ----------------------------------------------------------------------------------
class Net(Passes, Batches):
    """A Caffe network, built with Caffe's rules (see the module docstring).

    ``Net(model, phase="test", weights=None)``; ``model`` is a prototxt path or a
    ``caffe_pb2.NetParameter``.  pycaffe-style positional forms
    ``Net(model, weights, phase)`` and ``Net(model, phase)`` also work.
    """

    def __init__(self, model, *args, phase=None, weights=None, level=0, stages=(),
                 dtype=np.float32, seed=0, edits=(), input_shapes=None, warn=None,
                 allow_python_layers=False, inference=False, max_memory="default",
                 fill_params=True, engine="numpy"):
        for a in args:                         # pycaffe's positional forms
            if isinstance(a, (int, np.integer)) or (isinstance(a, str) and a.lower() in PHASES):
                phase = a
            else:
                weights = a
        self._warn = warn or _default_warn
        from .engines import ENGINES
        if engine not in ENGINES:
            raise NetrunError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
        self.engine = engine
        self._engines = {}
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise NetrunError(f"dtype must be float32 or float64, not {self.dtype}")
        self.phase = parse_phase(phase)
        self.inference = inference
        from .memory import Budget, default_limit
        self.budget = Budget(default_limit() if max_memory == "default" else max_memory)
        self.declared_input_shapes = {}
        self.check_finite = None      # None, "warn" or "strict": watch for NaN/Inf per layer
        self._nonfinite_seen = False
        source = self._load(model)
        self.source = source
        param = source.param
        if edits:
            from .edits import apply_edits
            apply_edits(param, edits, source.path)
        if input_shapes:
            self._apply_input_shapes(param, input_shapes)
        self.name = param.name
        self.rng = np.random.default_rng(seed)
        state = caffe_pb2.NetState()
        state.CopyFrom(param.state)
        state.phase = self.phase
        if level:
            state.level = level
        state.stage.extend(s for s in (stages or ()) if s not in state.stage)
        self.state = state
        kept = filter_layers_located(param, state, source)
        check_input_shapes(param, kept, source)
        layer_params = [param.layer[i] for i in kept]
        layer_params, origins = insert_splits(layer_params, kept, source.where)
        self.force_backward = param.force_backward
        self._build(layer_params, origins, allow_python_layers)
        # Fillers run after the weights are loaded, and only for parameters the
        # weights did not give (fill_params=False: shapes only, e.g. for summary).
        loaded = self.copy_from(weights) if weights is not None else set()
        if fill_params:
            self._fill_pending(loaded)
        self._pending_fills = []

    # -- loading -------------------------------------------------------------------------
    def _load(self, model):
        from .io.prototxt import NetSource, read_net, shapeless_inputs, upgrade_if_needed
        if isinstance(model, caffe_pb2.NetParameter):
            p = caffe_pb2.NetParameter()
            p.CopyFrom(model)
            return NetSource(upgrade_if_needed(p, self._warn),
                             shapeless_inputs={n: None for n in shapeless_inputs(p)})
        if isinstance(model, (str, os.PathLike)):
            return read_net(model, warn=self._warn)
        raise TypeError("model must be a prototxt path or a caffe_pb2.NetParameter")

    # data layers that --input-shape/--input replace by an Input layer
    DATA_LAYER_TYPES = ("Data", "ImageData", "HDF5Data", "MemoryData", "WindowData",
                        "DenseImageData")

    def _apply_input_shapes(self, param, input_shapes):
        """Override the declared shapes of Input tops; remember what was declared.

        A data layer (Data, ImageData, HDF5Data, MemoryData, WindowData, or a
        Python layer without bottoms) with a top given here becomes an Input
        layer, so the net runs without its database: given tops take the given
        shapes, the others (labels) shape (N,) with N the first dim of the first
        given top.  A legacy ``input:`` declared without a shape (the upgrade drops
        it, as Caffe does) given here becomes a top of a new first Input layer.
        """
        self.declared_input_shapes = {}
        replaced = set()
        data_tops = []
        shapeless = [n for n in self.source.shapeless_inputs if n in input_shapes]
        if shapeless:
            new = caffe_pb2.LayerParameter(name="input", type="Input")
            for n in shapeless:
                new.top.append(n)
                new.input_param.shape.add().dim.extend(int(d) for d in input_shapes[n])
            rest = [caffe_pb2.LayerParameter() for _ in param.layer]
            for copy, lp in zip(rest, param.layer):
                copy.CopyFrom(lp)
            del param.layer[:]
            param.layer.add().CopyFrom(new)
            param.layer.extend(rest)
            if self.source.lines:
                line = self.source.shapeless_inputs[shapeless[0]] or self.source.lines[0]
                self.source.lines = [line] + list(self.source.lines)
            replaced.update(shapeless)
        for lp in param.layer:
            if not (lp.type in self.DATA_LAYER_TYPES or (lp.type == "Python" and not len(lp.bottom))):
                continue
            data_tops.extend(lp.top)
            given = [t for t in lp.top if t in input_shapes]
            if not given:
                continue
            first = tuple(input_shapes[given[0]])
            n = int(first[0]) if first else 1
            new = caffe_pb2.LayerParameter(name=lp.name, type="Input")
            new.top.extend(lp.top)
            new.include.extend(lp.include)
            new.exclude.extend(lp.exclude)
            if lp.HasField("phase"):
                new.phase = lp.phase
            for t in lp.top:
                new.input_param.shape.add().dim.extend(int(d) for d in input_shapes.get(t, (n,)))
            lp.CopyFrom(new)
            replaced.update(given)
        for name, shape in input_shapes.items():
            if name in replaced:
                continue
            hit = False
            for lp in param.layer:
                if lp.type == "Input" and name in lp.top:
                    j = list(lp.top).index(name)
                    shapes = lp.input_param.shape
                    if len(shapes) == 1 and len(lp.top) > 1:
                        keep = shapes[0]
                        for _ in range(len(lp.top) - 1):
                            shapes.add().CopyFrom(keep)
                    while len(shapes) <= j:
                        shapes.add()
                    self.declared_input_shapes[name] = tuple(shapes[j].dim)
                    del shapes[j].dim[:]
                    shapes[j].dim.extend(int(d) for d in shape)
                    hit = True
            if not hit:
                names = list(dict.fromkeys(input_names(param) + data_tops))
                raise NetrunError(f'"{name}" is not an input of the net '
                                  f"(inputs: {', '.join(names) or 'none'})")

    # -- 3./4./5. build ----------------------------------------------------------------------
    def _build(self, layer_params, origins, allow_python_layers):
        self._charged = set()        # blobs charged to the memory budget
        self.layers = []
        self._layer_names = []
        self._layer_where = []
        self.blobs = OrderedDict()
        self.bottom_ids, self.top_ids = [], []
        self.bottom_need_backward = []
        self.layer_need_backward = []
        self.blob_loss_weights = {}
        self.inputs = []
        blob_need_backward = {}
        available = []           # keeps insertion order; net outputs are sorted at the end
        ctx = Context(self.phase, self.dtype, self.rng, self._warn, allow_python_layers,
                      os.path.dirname(self.source.path) if self.source.path else ".",
                      self.budget)
        ctx.pending_fills = self._pending_fills = []
        param_owner = {}         # ParamSpec name -> (layer index, param index)
        self._shares = []
        producers = {}
        for li, lp in enumerate(layer_params):
            where = self.source.where(origins[li])
            label = f'layer "{lp.name}" ({lp.type})'
            loc = f"{where}: {label}" if where else label
            if len(lp.propagate_down) and len(lp.propagate_down) != len(lp.bottom):
                raise NetrunError("propagate_down must be given 0 times or once per bottom "
                                  f"({len(lp.propagate_down)} given, {len(lp.bottom)} bottoms)", loc)
            cls = layer_class_for(lp)
            if cls is None:
                raise NetrunError(unknown_type_message(lp.type), loc)
            if not lp.HasField("phase"):
                lp = _with_phase(lp, self.phase)
            try:
                layer = cls(lp, ctx)
            except LayerError as e:
                raise e.located(loc) from None
            self.layers.append(layer)
            self._layer_names.append(lp.name)
            self._layer_where.append(loc)
            bottoms, bids, bneed = [], [], []
            need_backward = False
            for j, name in enumerate(lp.bottom):
                if name not in self.blobs or name not in available:
                    raise NetrunError(f'Unknown bottom blob "{name}" (layer "{lp.name}", bottom {j})',
                                      where)
                available.remove(name)
                bottoms.append(self.blobs[name])
                bids.append(name)
                prop = lp.propagate_down[j] if len(lp.propagate_down) else True
                bneed.append(blob_need_backward[name] and prop)
                need_backward |= blob_need_backward[name]
            tops, tids = [], []
            n_top = len(lp.top)
            if cls.auto_top_blobs:
                n_top = max(n_top, cls.min_tops or 0, cls.exact_tops or 0)
            for j in range(n_top):
                if j >= len(lp.top):               # anonymous top, never usable as a bottom
                    name = f"(automatic {lp.name} {j})"
                    blob = Blob((), self.dtype)
                    self.blobs[name] = blob
                    blob_need_backward[name] = False
                    tops.append(blob)
                    tids.append(name)
                    continue
                name = lp.top[j]
                if j < len(lp.bottom) and name == lp.bottom[j]:
                    tops.append(self.blobs[name])          # in place
                elif name in self.blobs:
                    raise NetrunError(f'top blob "{name}" is already produced by layer '
                                      f'"{producers[name]}" (only an in-place layer, with the '
                                      "same name at the same bottom index, may reuse a blob)", loc)
                else:
                    blob = Blob((), self.dtype)
                    self.blobs[name] = blob
                    blob_need_backward[name] = False
                    producers[name] = lp.name
                    tops.append(blob)
                if getattr(cls, "is_input", False):
                    self.inputs.append(name)
                tids.append(name)
                available.append(name)
            try:
                layer.check_blob_counts(bottoms, tops)
                layer.setup(bottoms, tops)
                layer.reshape(bottoms, tops)
            except LayerError as e:
                raise e.located(loc) from None
            except NetrunError as e:
                raise e.located(loc) from None
            except SETUP_ERRORS as e:        # safety net: a parameter no check caught
                raise invalid_parameters(e).located(loc) from e
            # charge the new tops now, before a later layer (Split) or a loss weight
            # allocates their arrays
            self._charge_blobs(tids)
            # loss weights
            weights = list(lp.loss_weight)
            if not weights and cls.is_loss:
                weights = [1.0]
            if len(weights) > len(tops):
                raise NetrunError(f"{len(weights)} loss_weight values for {len(tops)} tops", loc)
            layer.loss_weights = weights + [0.0] * (len(tops) - len(weights))
            for name, w in zip(tids, layer.loss_weights):
                if w:
                    self.blob_loss_weights[name] = w
                    self.blobs[name].diff[...] = w
            # parameters
            specs = list(lp.param)
            if len(specs) > len(layer.blobs):
                raise NetrunError(f"{len(specs)} param specs given, but {lp.type} has "
                                  f"{len(layer.blobs)} parameter blob(s)", loc)
            layer.param_propagate_down = []
            for k in range(len(layer.blobs)):
                spec = specs[k] if k < len(specs) else caffe_pb2.ParamSpec()
                pn = spec.lr_mult != 0
                need_backward |= pn
                layer.param_propagate_down.append(pn)
                if spec.name:
                    if spec.name in param_owner:
                        self._shares.append((li, k, param_owner[spec.name], spec))
                    else:
                        param_owner[spec.name] = (li, k)
            self.bottom_ids.append(bids)
            self.top_ids.append(tids)
            self.bottom_need_backward.append(bneed)
            self.layer_need_backward.append(need_backward)
            if need_backward:
                for name in tids:
                    blob_need_backward[name] = True
        self._first_need = (list(self.layer_need_backward),
                            [list(b) for b in self.bottom_need_backward], dict(blob_need_backward),
                            [list(layer.param_propagate_down) for layer in self.layers])
        self._plan_backward()
        self.outputs = sorted(available)
        self._share_params()
        self._refresh_views()
        self._charge_blobs()

    def _charge_blobs(self, names=None):
        """Charge each blob's data (and diff, unless inference) once, before any forward."""
        per = 1 if self.inference else 2
        charged = self._charged
        for name in (self.blobs if names is None else names):
            blob = self.blobs[name]
            if name not in charged and not blob.has_data:
                charged.add(name)
                self.budget.charge(blob.nbytes * per, f'blob "{name}" {blob.shape}')

    def _plan_backward(self):
        """Caffe's second pass: prune layers that do not lead to a loss; force_backward."""
        need, bneed, blob_need_backward, ppd = self._first_need
        for layer, p in zip(self.layers, ppd):
            layer.param_propagate_down = list(p)
        self.layer_need_backward = list(need)
        self.bottom_need_backward = [list(b) for b in bneed]
        blob_need_backward = dict(blob_need_backward)
        under_loss, skip = set(), set()
        for li in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[li]
            contributes = False
            skip_all = True
            for j, name in enumerate(self.top_ids[li]):
                if layer.loss_weights[j] or name in under_loss:
                    contributes = True
                if name not in skip:
                    skip_all = False
                if contributes and not skip_all:
                    break
            if self.layer_need_backward[li] and skip_all:
                self.layer_need_backward[li] = False
                self.bottom_need_backward[li] = [False] * len(self.bottom_ids[li])
            if not contributes:
                self.layer_need_backward[li] = False
            for j, name in enumerate(self.bottom_ids[li]):
                if contributes:
                    under_loss.add(name)
                else:
                    self.bottom_need_backward[li][j] = False
                if not self.bottom_need_backward[li][j]:
                    skip.add(name)
        if self.force_backward:
            for li, layer in enumerate(self.layers):
                self.layer_need_backward[li] = True
                for j, name in enumerate(self.bottom_ids[li]):
                    nb = self.bottom_need_backward[li][j] or layer.allow_force_backward(j)
                    self.bottom_need_backward[li][j] = nb
                    blob_need_backward[name] = blob_need_backward[name] or nb
                layer.param_propagate_down = [True] * len(layer.blobs)
        self.blob_need_backward = blob_need_backward
        # layers may skip work only a backward pass reads (argmax, kept inputs)
        for layer, need in zip(self.layers, self.layer_need_backward):
            layer.need_backward = need
        # ... and keep what they computed from their bottoms (convolution columns)
        # when no later layer rewrites those arrays in place before backward reads
        # them.  Split tops share their bottom's array: a rewrite of one is of all.
        # (Caffe's own rules already refuse most such nets; this keeps it safe.)
        array = {}                           # blob -> the blob whose array it holds

        def array_of(name):
            return array.get(name, name)
        for li, layer in enumerate(self.layers):
            for t in self.top_ids[li]:
                array[t] = array_of(self.bottom_ids[li][0] if layer.type == "Split" else t)
        rewritten = set()
        for li in range(len(self.layers) - 1, -1, -1):
            bottoms = self.bottom_ids[li]
            self.layers[li].inputs_stable = not any(array_of(b) in rewritten for b in bottoms)
            rewritten.update(array_of(t) for t in self.top_ids[li] if t in bottoms)

    def set_force_backward(self, force=True):
        """Turn Caffe's ``force_backward`` on or off after building."""
        self.force_backward = bool(force)
        self._plan_backward()

    def _share_params(self):
        for li, k, (oli, ok), spec in self._shares:
            mine = self.layers[li].blobs[k]
            owner = self.layers[oli].blobs[ok]
            if spec.share_mode == caffe_pb2.ParamSpec.PERMISSIVE:
                if mine.count != owner.count:
                    raise NetrunError(f'shared parameter "{spec.name}" has {mine.count} elements here '
                                      f"and {owner.count} in its owner layer "
                                      f'"{self._layer_names[oli]}"', self._layer_where[li])
                if mine.shape != owner.shape:
                    view = Blob(mine.shape, self.dtype)
                    view.data = owner.data.reshape(mine.shape)
                    view.diff = owner.diff.reshape(mine.shape)
                    self.layers[li].blobs[k] = view
                    continue
            elif mine.shape != owner.shape:
                raise NetrunError(f'shared parameter "{spec.name}" has shape {mine.shape} here and '
                                  f'{owner.shape} in its owner layer "{self._layer_names[oli]}" '
                                  "(share_mode: PERMISSIVE compares counts only)",
                                  self._layer_where[li])
            self.layers[li].blobs[k] = owner
        self._owned = set()
        for li, k, _, _ in self._shares:
            self._owned.add((li, k))

    def _refresh_views(self):
        self.params = OrderedDict()
        for name, layer in zip(self._layer_names, self.layers):
            if layer.blobs:
                self.params[name] = layer.blobs
        self.layer_dict = OrderedDict(zip(self._layer_names, self.layers))

    # -- running ---------------------------------------------------------------------------------
    def _layer_index(self, name, default):
        if name is None:
            return default
        if isinstance(name, int):
            return name
        try:
            return self._layer_names.index(name)
        except ValueError:
            raise NetrunError(f'no layer named "{name}"') from None

    def set_input(self, name, array):
        """Put an array into an input blob, reshaping the net if its shape differs."""
        if name not in self.blobs:
            raise NetrunError(f'"{name}" is not a blob of the net '
                              f"(inputs: {', '.join(self.inputs) or 'none'})")
        array = np.asarray(array)
        blob = self.blobs[name]
        if array.shape != blob.shape:
            blob.reshape(array.shape)
        blob.data[...] = array

    def reshape(self):
        """Propagate shapes through the net (after inputs changed shape)."""
        for li, layer in enumerate(self.layers):
            self._call(li, layer.reshape, self._bottoms(li), self._tops(li))

    def _bottoms(self, li):
        return [self.blobs[n] for n in self.bottom_ids[li]]

    def _tops(self, li):
        return [self.blobs[n] for n in self.top_ids[li]]

    def _call(self, li, fn, *args):
        try:
            return fn(*args)
        except NetrunError as e:
            raise e.located(self._layer_where[li]) from None
        except SETUP_ERRORS as e:            # safety net for reshape (not forward/backward)
            if getattr(fn, "__name__", None) != "reshape":
                raise
            raise invalid_parameters(e).located(self._layer_where[li]) from e

    def clear_param_diffs(self):
        for layer in self.layers:
            for b in layer.blobs:
                b.diff[...] = 0

    # -- weights --------------------------------------------------------------------------
    def copy_from(self, weights):
        """Load parameters from a .caffemodel (path or NetParameter), matching layers by
        name; returns the set of ids of the parameter blobs it wrote."""
        from .io.caffemodel import copy_weights
        return copy_weights(self, weights)

    def _fill_pending(self, loaded=()):
        """Run the fillers of parameters still in use and not loaded, in creation order."""
        from .fillers import fill
        live = {id(b) for layer in self.layers for b in layer.blobs}
        for blob, filler in self._pending_fills:
            if id(blob) in live and id(blob) not in loaded:
                blob.data[...] = fill(filler, blob.shape, self.rng)

    def to_onnx(self, path=None, outputs=None, dynamic_batch=True):
        """Export the deploy graph to ONNX with Caffe's semantics (netrun.export.onnx);
        saves to ``path`` when given and returns the ``Export`` (``.model``)."""
        from .export.onnx import to_onnx
        return to_onnx(self, path, outputs=outputs, dynamic_batch=dynamic_batch, warn=self._warn)

    def save(self, path):
        """Write the parameters as a binary .caffemodel (Caffe's Net::ToProto)."""
        from .io.caffemodel import save_weights
        save_weights(self, path)

    # -- views --------------------------------------------------------------------------------
    @property
    def layer_names(self):
        return list(self._layer_names)

    @property
    def top_names(self):
        return OrderedDict(zip(self._layer_names, (list(t) for t in self.top_ids)))

    @property
    def bottom_names(self):
        return OrderedDict(zip(self._layer_names, (list(b) for b in self.bottom_ids)))

    def param_owned(self, li, k):
        """False when parameter ``k`` of layer ``li`` is shared from an earlier owner."""
        return (li, k) not in self._owned

    def where(self, layer):
        return self._layer_where[self._layer_index(layer, 0)]

    # -- more of pycaffe's Net ----------------------------------------------------------------
    @property
    def _blob_names(self):
        """The blob names in net order (pycaffe's ``net._blob_names``)."""
        return list(self.blobs)

    def share_with(self, other):
        """Caffe's ``ShareTrainedLayersWith``: every layer of this net named as a
        layer of ``other`` uses that layer's parameter *data* (the same arrays;
        shapes and blob counts must match).  Gradients stay separate."""
        mine = self.layer_dict
        for name, source in other.layer_dict.items():
            target = mine.get(name)
            if target is None:
                continue
            if len(target.blobs) != len(source.blobs):
                raise NetrunError(f'layer "{name}" has {len(target.blobs)} parameter blob(s) here '
                                  f"and {len(source.blobs)} in the net to share with")
            for k, (t, s) in enumerate(zip(target.blobs, source.blobs)):
                if t.shape != s.shape:
                    raise NetrunError(f'layer "{name}" parameter {k} has shape {t.shape} here and '
                                      f"{s.shape} in the net to share with")
                t.share_data(s)


def filter_layers_located(param, state, source):
    try:
        return filter_layers(param, state)
    except NetrunError as e:
        for i, lp in enumerate(param.layer):
            if len(lp.include) and len(lp.exclude):
                w = source.where(i)
                raise e.located(w) if w else e from None
        raise


def check_input_shapes(param, kept, source):
    """Declared input dims must be positive (Caffe would abort or allocate nothing)."""
    for i in kept:
        lp = param.layer[i]
        if lp.type != "Input":
            continue
        for k, shape in enumerate(lp.input_param.shape):
            dims = tuple(shape.dim)
            if any(d <= 0 for d in dims):
                w = source.where(i)
                label = f'layer "{lp.name}" (Input)'
                raise NetrunError(f"input shape {k} has a zero or negative dimension: {dims}",
                                  f"{w}: {label}" if w else label)


def input_names(param):
    names = [t for lp in param.layer if lp.type == "Input" for t in lp.top]
    return names + list(param.input)


def _with_phase(lp, phase):
    new = caffe_pb2.LayerParameter()
    new.CopyFrom(lp)
    new.phase = phase
    return new
