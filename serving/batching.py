"""TF Serving's batching parameters file (text proto `tensorflow.serving.BatchingParameters`).

tensorflow-serving-api's wheel does not ship `session_bundle_config.proto`, so the message is rebuilt
here from the upstream definition (fields 1-7 with their upstream numbers and wrapper types). The
export warms up at every `allowed_batch_sizes` entry (`export.warmup`), read with `allowed_batch_sizes`.
"""

from __future__ import annotations

import functools
import os

from keras_hourglass import storage
from keras_hourglass.errors import InputError


@functools.lru_cache(maxsize=1)
def batching_parameters_class():
    """Returns: the `tensorflow.serving.BatchingParameters` message class (fields 1-7)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    f = descriptor_pb2.FileDescriptorProto(name="session_bundle_config_subset.proto", package="tensorflow.serving",
                                           syntax="proto3", dependency=["google/protobuf/wrappers.proto"])
    m = f.message_type.add(name="BatchingParameters")
    fd = descriptor_pb2.FieldDescriptorProto
    for number, name, type_name in [(1, "max_batch_size", "Int64Value"), (2, "batch_timeout_micros", "Int64Value"),
                                    (3, "max_enqueued_batches", "Int64Value"), (4, "num_batch_threads", "Int64Value"),
                                    (5, "thread_pool_name", "StringValue")]:
        m.field.add(name=name, number=number, type=fd.TYPE_MESSAGE, label=fd.LABEL_OPTIONAL,
                    type_name=f".google.protobuf.{type_name}")
    m.field.add(name="allowed_batch_sizes", number=6, type=fd.TYPE_INT64, label=fd.LABEL_REPEATED)
    m.field.add(name="pad_variable_length_inputs", number=7, type=fd.TYPE_BOOL, label=fd.LABEL_OPTIONAL)
    pool.Add(f)
    descriptor = pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters")
    if not hasattr(message_factory, "GetMessageClass"):  # protobuf < 3.21 (the TFX 1.16 leg's 3.20)
        return message_factory.MessageFactory(pool).GetPrototype(descriptor)
    return message_factory.GetMessageClass(descriptor)


def read_batching_parameters(path: str | os.PathLike):
    """Parses a batching parameters file. Returns: the `BatchingParameters` message.

    Raises:
        InputError: unreadable, not the text proto, or against TF Serving's rules (allowed_batch_sizes
            increasing, the last equal to max_batch_size).
    """
    from google.protobuf import text_format

    try:
        text = storage.read_text(path)
    except OSError as err:
        raise InputError(path, f"cannot read batching parameters ({err.strerror or type(err).__name__})") from None
    try:
        params = text_format.Parse(text, batching_parameters_class()())
    except text_format.ParseError as err:
        raise InputError(path, f"not TF Serving batching parameters: {str(err).splitlines()[0][:200]}") from None
    sizes = list(params.allowed_batch_sizes)
    if sizes and (sizes != sorted(set(sizes)) or sizes[0] < 1):
        raise InputError(path, f"allowed_batch_sizes must increase strictly from >= 1, got {sizes}")
    if sizes and params.HasField("max_batch_size") and sizes[-1] != params.max_batch_size.value:
        raise InputError(path, f"the last allowed_batch_sizes ({sizes[-1]}) must equal max_batch_size "
                               f"({params.max_batch_size.value})")
    return params


def allowed_batch_sizes(path: str | os.PathLike) -> tuple[int, ...]:
    """Returns: the batch sizes TF Serving may run with this file: `allowed_batch_sizes`, else every size
    from 1 to `max_batch_size` (TF Serving then runs batches of any size up to it)."""
    params = read_batching_parameters(path)
    sizes = tuple(int(s) for s in params.allowed_batch_sizes)
    if sizes:
        return sizes
    top = int(params.max_batch_size.value) if params.HasField("max_batch_size") else 1
    return tuple(range(1, max(top, 1) + 1))
