"""Binary files of Caffe forks whose LayerParameter field numbers clash with BVLC's.

Text prototxts name their fields, so only binary files (caffemodels, which carry each
layer's parameters) are affected.  BVLC's fields always win the number; netrun
re-reads the clashing field of a fork's layer with the fork's meaning:

======================  =======  ==================  =================================
fork field              number   BVLC field there    netrun's own number
======================  =======  ==================  =================================
SegNet upsample_param   137      embed_param         5137 (ENet's 147 is swish_param)
ENet upsample_param     147      swish_param         5137
SegNet dense_image_...  138      tile_param          46 (ENet's number, free in BVLC)
======================  =======  ==================  =================================

A layer of type ``Upsample`` that carries ``embed_param`` or ``swish_param`` (and no
``upsample_param``), or a ``DenseImageData`` layer with ``tile_param``, has that
field's original bytes parsed again as the fork's message (from the file's own bytes:
parsing them as BVLC's message first can lose values, e.g. SegNet's ``scale_w`` lands
on EmbedParameter's bool ``bias_term``).
"""
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from ..proto import caffe_pb2

# (layer type, BVLC field that clashes) -> the fork's field
CLASHES = {
    ("Upsample", "embed_param"): "upsample_param",
    ("Upsample", "swish_param"): "upsample_param",
    ("DenseImageData", "tile_param"): "dense_image_data_param",
}

_FORK_NET = None


def _fork_net_class():
    """NetParameter of a schema in which the clashing numbers have the forks' types."""
    global _FORK_NET
    if _FORK_NET is None:
        fdp = descriptor_pb2.FileDescriptorProto()
        caffe_pb2.DESCRIPTOR.CopyToProto(fdp)
        fdp.name = "netrun_fork_view.proto"
        fdp.package = "netrun_fork_view"
        for msg in fdp.message_type:
            for field in msg.field:
                if field.type_name.startswith(".caffe."):
                    field.type_name = ".netrun_fork_view." + field.type_name[len(".caffe."):]
            if msg.name == "LayerParameter":
                for field in msg.field:
                    if field.name in ("embed_param", "swish_param"):
                        field.type_name = ".netrun_fork_view.UpsampleParameter"
                    elif field.name == "tile_param":
                        field.type_name = ".netrun_fork_view.DenseImageDataParameter"
        pool = descriptor_pool.DescriptorPool()
        pool.Add(fdp)
        desc = pool.FindMessageTypeByName("netrun_fork_view.NetParameter")
        _FORK_NET = message_factory.GetMessageClass(desc)
    return _FORK_NET


def needs_resolving(param):
    return any(lp.HasField(f) and not lp.HasField(fork)
               for lp in param.layer
               for (t, f), fork in CLASHES.items() if lp.type == t)


def resolve(param, raw):
    """Give the layers of NetParameter ``param`` (parsed from bytes ``raw``) their fork
    fields back (see the module docstring); returns the layers resolved, by name."""
    if not needs_resolving(param):
        return []
    view = _fork_net_class().FromString(raw)
    done = []
    for lp, vp in zip(param.layer, view.layer):
        for (t, f), fork in CLASHES.items():
            if lp.type == t and lp.HasField(f) and not lp.HasField(fork):
                getattr(lp, fork).ParseFromString(getattr(vp, f).SerializeToString())
                lp.ClearField(f)
                done.append(lp.name)
    return done
