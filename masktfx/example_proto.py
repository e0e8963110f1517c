"""tf.train.Example without loading TensorFlow.

Ingest's Beam workers only need to serialize Examples; importing TensorFlow for that costs each
worker seconds and hundreds of MB. These classes are built from the same message definitions
(tensorflow/core/example/{example,feature}.proto) in a private descriptor pool, so their bytes are
exactly tf.train.Example's, and they never clash with TensorFlow's own registration.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool

try:  # protobuf >= 4.21
    from google.protobuf.message_factory import GetMessageClass as _message_class
except ImportError:  # protobuf 3.20 (the pinned stack)
    from google.protobuf import message_factory as _factory

    def _message_class(descriptor):
        return _factory.MessageFactory(descriptor.file.pool).GetPrototype(descriptor)

_PACKAGE = "tensorflow"
_LABEL_OPTIONAL = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
_LABEL_REPEATED = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
_T = descriptor_pb2.FieldDescriptorProto


def _file() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(name="masktfx/tf_example.proto", package=_PACKAGE,
                                               syntax="proto3")

    def message(name, *fields):
        msg = proto.message_type.add(name=name)
        for number, field_name, kind, label, type_name, packed in fields:
            field = msg.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                field.type_name = type_name
            if packed:
                field.options.packed = True
        return msg

    message("BytesList", (1, "value", _T.TYPE_BYTES, _LABEL_REPEATED, "", False))
    message("FloatList", (1, "value", _T.TYPE_FLOAT, _LABEL_REPEATED, "", True))
    message("Int64List", (1, "value", _T.TYPE_INT64, _LABEL_REPEATED, "", True))
    feature = message("Feature",
                      (1, "bytes_list", _T.TYPE_MESSAGE, _LABEL_OPTIONAL, ".tensorflow.BytesList",
                       False),
                      (2, "float_list", _T.TYPE_MESSAGE, _LABEL_OPTIONAL, ".tensorflow.FloatList",
                       False),
                      (3, "int64_list", _T.TYPE_MESSAGE, _LABEL_OPTIONAL, ".tensorflow.Int64List",
                       False))
    feature.oneof_decl.add(name="kind")
    for field in feature.field:
        field.oneof_index = 0
    features = message("Features",
                       (1, "feature", _T.TYPE_MESSAGE, _LABEL_REPEATED,
                        ".tensorflow.Features.FeatureEntry", False))
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=_T.TYPE_STRING, label=_LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=_T.TYPE_MESSAGE, label=_LABEL_OPTIONAL,
                    type_name=".tensorflow.Feature")
    message("Example", (1, "features", _T.TYPE_MESSAGE, _LABEL_OPTIONAL, ".tensorflow.Features",
                        False))
    return proto


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file())
Example = _message_class(_POOL.FindMessageTypeByName("tensorflow.Example"))
