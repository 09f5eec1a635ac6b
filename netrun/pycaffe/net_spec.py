"""pycaffe's ``caffe.net_spec``: write nets in Python (``caffe.NetSpec``, ``caffe.layers``,
``caffe.params``, ``caffe.to_proto``).

``L.Type(*bottoms, **kwargs)`` describes one layer; it returns its top (a
:class:`Top`), a tuple of tops (``ntop=n``), or the :class:`Function` itself
(``ntop=0``).  ``in_place=True`` makes the tops the bottoms.  Keyword arguments go,
as in pycaffe, to the layer when their name ends in ``param`` (``param``,
``transform_param``, ``convolution_param``...), else to the layer's own
``<type>_param`` message when it has that field (Deconvolution and Im2col use
``convolution_param``), else to the LayerParameter itself (``loss_weight``,
``include``...).  A list sets a repeated field (a bare value becomes a list of one),
a dict fills a message.

Names: in ``NetSpec.to_proto`` every top assigned to the spec is named after its
attribute; the others, and every top of ``to_proto(*tops)``, are named
``<Type><n>`` with one counter per type, numbered in the order the layers are
reached (bottoms first); a layer is named after its first top.
"""
from collections import Counter, OrderedDict

from ..proto import caffe_pb2, is_repeated

# layer types whose parameters live in another type's message
SHARED_PARAMS = {"Deconvolution": "convolution", "Im2col": "convolution"}


def param_name_dict():
    """{layer type: field prefix}: "Convolution" -> "convolution" (convolution_param)."""
    out = {}
    for f in caffe_pb2.LayerParameter.DESCRIPTOR.fields:
        if f.name.endswith("_param") and f.message_type is not None:
            type_name = f.message_type.name
            if type_name.endswith("Parameter"):
                out[type_name[:-len("Parameter")]] = f.name[:-len("_param")]
    for t, prefix in SHARED_PARAMS.items():
        out.setdefault(t, prefix)
    return out


def _field_is_repeated(msg, name):
    field = msg.DESCRIPTOR.fields_by_name.get(name)
    if field is None:
        raise AttributeError(f"{msg.DESCRIPTOR.name} has no field {name!r}")
    return is_repeated(field)


def assign_proto(proto, name, val):
    """Set field ``name`` of ``proto`` from a Python value: lists fill repeated fields
    (a single value becomes a list of one), dicts fill messages, others are assigned."""
    repeated = _field_is_repeated(proto, name)
    if repeated and not isinstance(val, list):
        val = [val]
    if isinstance(val, list):
        target = getattr(proto, name)
        if val and isinstance(val[0], dict):
            for item in val:
                sub = target.add()
                for k, v in item.items():
                    assign_proto(sub, k, v)
        else:
            target.extend(val)
    elif isinstance(val, dict):
        sub = getattr(proto, name)
        for k, v in val.items():
            assign_proto(sub, k, v)
    else:
        setattr(proto, name, val)


class Top:
    """One output blob of a layer (``fn``), the ``n``-th."""

    def __init__(self, fn, n):
        self.fn = fn
        self.n = n

    def to_proto(self):
        """A NetParameter with every layer needed to compute this top."""
        return to_proto(self)

    def _to_proto(self, layers, names, autonames):
        return self.fn._to_proto(layers, names, autonames)


class Function:
    """One layer: its type, its bottoms (Tops) and its keyword parameters."""

    def __init__(self, type_name, inputs, params):
        self.type_name = type_name
        for i, inp in enumerate(inputs):
            if not isinstance(inp, Top):
                raise TypeError(f"{type_name} input {i} is not a Top (type is {type(inp)})")
        self.inputs = inputs
        self.params = dict(params)
        self.ntop = self.params.pop("ntop", 1)
        self.in_place = self.params.pop("in_place", False)
        self.tops = tuple(Top(self, n) for n in range(self.ntop))

    @staticmethod
    def _auto(key, type_name, names, autonames):
        if key not in names:
            autonames[type_name] += 1
            names[key] = f"{type_name}{autonames[type_name]}"
        return names[key]

    def _get_top_name(self, top, names, autonames):
        return self._auto(top, top.fn.type_name, names, autonames)

    def _get_name(self, names, autonames):
        if self not in names and self.ntop > 0:
            names[self] = self._get_top_name(self.tops[0], names, autonames)
        return self._auto(self, self.type_name, names, autonames)

    def _to_proto(self, layers, names, autonames):
        if self in layers:
            return
        bottoms = []
        for inp in self.inputs:
            inp._to_proto(layers, names, autonames)
            bottoms.append(layers[inp.fn].top[inp.n])
        layer = caffe_pb2.LayerParameter(type=self.type_name)
        layer.bottom.extend(bottoms)
        if self.in_place:
            layer.top.extend(layer.bottom)
        else:
            layer.top.extend(self._get_top_name(t, names, autonames) for t in self.tops)
        layer.name = self._get_name(names, autonames)
        prefix = _param_names.get(self.type_name)
        for k, v in self.params.items():
            if k.endswith("param"):
                assign_proto(layer, k, v)
                continue
            sub = getattr(layer, f"{prefix}_param", None) if prefix else None
            if sub is not None and k in sub.DESCRIPTOR.fields_by_name:
                assign_proto(sub, k, v)
            else:
                assign_proto(layer, k, v)
        layers[self] = layer


def to_proto(*tops):
    """A NetParameter with every layer needed to compute ``tops`` (automatic names)."""
    layers = OrderedDict()
    autonames = Counter()
    for top in tops:                 # a Function (ntop=0) too, which pycaffe refuses
        (top if isinstance(top, Function) else top.fn)._to_proto(layers, {}, autonames)
    net = caffe_pb2.NetParameter()
    net.layer.extend(layers.values())
    return net


class NetSpec:
    """Tops assigned as attributes (or items) are named after them by ``to_proto``."""

    def __init__(self):
        super().__setattr__("tops", OrderedDict())

    def __setattr__(self, name, value):
        self.tops[name] = value

    def __getattr__(self, name):
        try:
            return self.tops[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setitem__(self, key, value):
        self.__setattr__(key, value)

    def __getitem__(self, item):
        return self.tops[item]

    def to_proto(self):
        names = {v: k for k, v in self.tops.items()}
        autonames = Counter()
        layers = OrderedDict()
        for top in self.tops.values():
            top._to_proto(layers, names, autonames)     # a Top, or a Function (ntop=0)
        net = caffe_pb2.NetParameter()
        net.layer.extend(layers.values())
        return net


class Layers:
    """``layers.Type(*bottoms, **params)`` -> Top, tuple of Tops, or Function (ntop=0)."""

    def __getattr__(self, type_name):
        if type_name.startswith("__"):
            raise AttributeError(type_name)

        def layer_fn(*args, **kwargs):
            fn = Function(type_name, args, kwargs)
            if fn.ntop == 0:
                return fn
            return fn.tops[0] if fn.ntop == 1 else fn.tops
        layer_fn.__name__ = type_name
        return layer_fn


class Parameters:
    """``params.Pooling.MAX`` is ``caffe_pb2.PoolingParameter.MAX``."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        message = getattr(caffe_pb2, name + "Parameter")

        class Param:
            def __getattr__(self, value_name):
                return getattr(message, value_name)
        return Param()


_param_names = param_name_dict()
layers = Layers()
params = Parameters()
