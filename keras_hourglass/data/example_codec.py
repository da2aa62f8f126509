"""The prepared-image Example, built and serialised without TensorFlow (the ingest workers' side).

`serialize_example` is the ONE builder of a prepared image's record: `records.make_example` (the
TensorFlow side: returns a `tf.train.Example`) wraps it, and both prepare paths call it through
`plan.image_outcome`. It fills the `tf.train.Example` wire format (tensorflow/core/example/
{example,feature}.proto: Example{features=1}, Features{map<string, Feature> feature=1},
Feature{oneof bytes_list=1, float_list=2, int64_list=3}, packed lists) through a message class
declared here with protobuf's descriptor API, so that a Beam worker (or any process that only
decodes and serialises) never imports TensorFlow; a test checks the bytes against
`tf.train.Example(...).SerializeToString(deterministic=True)` (the field numbers are the contract,
not the message names). Serialisation is deterministic (map keys sorted), see `records`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from keras_hourglass.contract import LABELS, stratum_of
from keras_hourglass.data.png16 import encode_png16


def _message_classes():
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="keras_hourglass/tf_example_wire.proto",
                                              package="keras_hourglass.tf_example_wire", syntax="proto3")

    def message(name: str, fields: list[tuple], nested=()):
        proto = file.message_type.add(name=name) if not nested else nested[0].nested_type.add(name=name)
        for field_name, number, kind, label, type_name, packed, oneof in fields:
            field = proto.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                field.type_name = type_name
            if packed:
                field.options.packed = True
            if oneof is not None:
                field.oneof_index = oneof
        return proto

    repeated, optional = F.LABEL_REPEATED, F.LABEL_OPTIONAL
    prefix = ".keras_hourglass.tf_example_wire."
    message("BytesList", [("value", 1, F.TYPE_BYTES, repeated, None, False, None)])
    message("FloatList", [("value", 1, F.TYPE_FLOAT, repeated, None, True, None)])
    message("Int64List", [("value", 1, F.TYPE_INT64, repeated, None, True, None)])
    feature = message("Feature", [("bytes_list", 1, F.TYPE_MESSAGE, optional, prefix + "BytesList", False, 0),
                                  ("float_list", 2, F.TYPE_MESSAGE, optional, prefix + "FloatList", False, 0),
                                  ("int64_list", 3, F.TYPE_MESSAGE, optional, prefix + "Int64List", False, 0)])
    feature.oneof_decl.add(name="kind")
    features = message("Features", [("feature", 1, F.TYPE_MESSAGE, repeated, prefix + "Features.FeatureEntry",
                                     False, None)])
    entry = message("FeatureEntry", [("key", 1, F.TYPE_STRING, optional, None, False, None),
                                     ("value", 2, F.TYPE_MESSAGE, optional, prefix + "Feature", False, None)],
                    nested=(features,))
    entry.options.map_entry = True
    message("Example", [("features", 1, F.TYPE_MESSAGE, optional, prefix + "Features", False, None)])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    descriptor = pool.FindMessageTypeByName(prefix[1:] + "Example")
    if not hasattr(message_factory, "GetMessageClass"):  # protobuf < 3.21 (the TFX 1.16 leg's 3.20)
        return message_factory.MessageFactory(pool).GetPrototype(descriptor)
    return message_factory.GetMessageClass(descriptor)


_EXAMPLE = None


def _example_class():
    global _EXAMPLE
    if _EXAMPLE is None:
        _EXAMPLE = _message_classes()
    return _EXAMPLE


def serialize_example(
    image: np.ndarray | bytes,
    *,
    boxes,
    box_labels: Sequence[str],
    finding_types: Sequence[str],
    patient_hash: str,
    study_hash: str,
    image_hash: str,
    laterality: str = "",
    view: str = "",
    transform: Sequence[float] = (),
    label: str | None = None,
    height: int | None = None,
    width: int | None = None,
) -> bytes:
    """Builds and serialises the Example of one prepared image (arguments as `records.make_example`).

    Returns:
        The deterministic serialization (the bytes a TFRecord holds).
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if len(box_labels) != len(boxes) or len(finding_types) != len(boxes):
        raise ValueError(f"{len(boxes)} boxes but {len(box_labels)} labels and "
                         f"{len(finding_types)} finding types")
    derived = stratum_of(box_labels)
    if label is None:
        label = derived
    elif label not in LABELS:
        raise ValueError(f"unknown stratum {label!r}")
    if isinstance(image, (bytes, bytearray)):
        if height is None or width is None:
            raise ValueError("height and width are required with PNG bytes")
        png = bytes(image)
    else:
        array = np.asarray(image)
        height, width = int(array.shape[0]), int(array.shape[1])
        png = encode_png16(array)

    def text(values):
        return [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in values]

    features = {
        "image/png": ("bytes_list", [png]),
        "image/height": ("int64_list", [int(height)]),
        "image/width": ("int64_list", [int(width)]),
        "boxes": ("float_list", [float(v) for v in boxes.reshape(-1)]),
        "box_labels": ("bytes_list", text(box_labels)),
        "finding_types": ("bytes_list", text(finding_types)),
        "label": ("bytes_list", text([label])),
        "patient_hash": ("bytes_list", text([patient_hash])),
        "study_hash": ("bytes_list", text([study_hash])),
        "image_hash": ("bytes_list", text([image_hash])),
        "laterality": ("bytes_list", text([laterality])),
        "view": ("bytes_list", text([view])),
        "transform": ("float_list", [float(v) for v in transform]),
    }
    example = _example_class()()
    for key, (kind, values) in features.items():
        values_list = getattr(example.features.feature[key], kind)
        values_list.SetInParent()  # an empty list is still a set `kind`, as in tf.train.Feature
        values_list.value.extend(values)
    return example.SerializeToString(deterministic=True)
