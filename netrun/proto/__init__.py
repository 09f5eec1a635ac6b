"""Caffe's schema (``caffe_pb2``, generated from proto/caffe.proto) and small helpers."""


def is_repeated(field):
    """Whether a FieldDescriptor is repeated (``label`` left the API in protobuf 7)."""
    flag = getattr(field, "is_repeated", None)
    if flag is not None:
        return bool(flag)
    return field.label == field.LABEL_REPEATED
