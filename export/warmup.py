"""TF Serving warmup requests (`assets.extra/tf_serving_warmup_requests`).

TF Serving replays these records when it loads a version, before marking it
AVAILABLE, so the first real request does not pay for lazy initialisation.
The file is a TFRecord of `tensorflow_serving.apis.prediction_log_pb2.PredictionLog`
(at most 1000 records); each holds a `PredictLog` with a `PredictRequest`.

The records are at the shapes that will be served (`warmup_shapes`): the
export's long side, one portrait (long side x 0.8 long side, rows x columns)
and one landscape image, at every batch size TF Serving may form
(`batch_sizes`: `allowed_batch_sizes` of the batching parameters when
batching is on, else 1):

1. `metadata`, once;
2. `serving_default`, per batch size and orientation: a constant float32
   image `[B, h, w, 1]`, stored as ONE value (TensorProto's compact form,
   which TF and TF Serving broadcast), so a 1536-px record is 40 bytes,
   not 7 MB;
3. `detect_png`, per batch size, twice: B flat 16-bit PNGs alternating
   portrait and landscape, starting with each (a flat PNG is a few KB), so
   both sizes and mixed batches go through the per-image `tf.map_fn` path.
"""

from __future__ import annotations

import os

import numpy as np

from keras_hourglass import storage

WARMUP_FILE = "tf_serving_warmup_requests"
MAX_RECORDS = 1000  # TF Serving's limit


def warmup_path(saved_model_dir: str | os.PathLike) -> str:
    """Returns: `DIR/assets.extra/tf_serving_warmup_requests`."""
    return storage.join(os.fspath(saved_model_dir), "assets.extra", WARMUP_FILE)


WARMUP_ASPECT = 0.8  # columns / rows of a portrait mammogram at training scale (e.g. 1536 x 1229)
WARMUP_VALUE = 0.5


def warmup_shapes(long_side: int, aspect: float = WARMUP_ASPECT) -> list[tuple[int, int]]:
    """Returns: `[(rows, cols) portrait, (rows, cols) landscape]` at `long_side`."""
    long_side = max(int(long_side), 16)
    short = max(1, round(long_side * aspect))
    return [(long_side, short), (short, long_side)]


def _flat_png16(h: int, w: int) -> bytes:
    from keras_hourglass.data.png16 import encode_png16

    return encode_png16(np.full((h, w), WARMUP_VALUE, np.float32))


def build_warmup_requests(
    *,
    model_name: str = "hourglass",
    long_side: int = 512,
    threshold: float = float("nan"),
    batch_sizes: tuple[int, ...] = (1,),
    aspect: float = WARMUP_ASPECT,
) -> list:
    """Builds the warmup `PredictionLog`s (see the module docstring).

    Args:
        model_name: model name put in each request's model_spec.
        long_side: the export's long side (the size of real requests).
        threshold: threshold sent with the detect_png requests (NaN: the
            export default, as clients send it).
        batch_sizes: every batch size the server may run (batching's
            `allowed_batch_sizes`; (1,) without batching).
        aspect: columns / rows of the portrait image.

    Returns:
        A list of `prediction_log_pb2.PredictionLog`.
    """
    import tensorflow as tf
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    from serving.contract import DETECT_PNG, METADATA_SIGNATURE, SERVING_DEFAULT, metadata_request

    def log(signature: str, inputs: dict) -> prediction_log_pb2.PredictionLog:
        request = predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature)
        )
        for key, value in inputs.items():
            request.inputs[key].CopyFrom(value if hasattr(value, "tensor_shape") else tf.make_tensor_proto(value))
        return prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))

    sizes = sorted({int(b) for b in batch_sizes})
    if not sizes or sizes[0] < 1:
        raise ValueError(f"batch sizes must be >= 1, got {list(batch_sizes)}")
    shapes = warmup_shapes(long_side, aspect)
    pngs = [_flat_png16(h, w) for h, w in shapes]
    records = [log(METADATA_SIGNATURE, metadata_request())]
    for batch in sizes:
        for h, w in shapes:
            image = tf.make_tensor_proto(WARMUP_VALUE, dtype=tf.float32, shape=[batch, h, w, 1])
            records.append(log(SERVING_DEFAULT, {"image": image}))
        for first in (0, 1):
            records.append(log(DETECT_PNG, {
                "image_bytes": np.array([pngs[(first + i) % 2] for i in range(batch)], dtype=object),
                "threshold": np.full([batch], threshold, np.float32),
            }))
    return records


def write_warmup_requests(saved_model_dir: str | os.PathLike, records: list) -> str:
    """Writes `records` to `DIR/assets.extra/tf_serving_warmup_requests`.

    Returns:
        The path written.
    """
    import tensorflow as tf

    if not 0 < len(records) <= MAX_RECORDS:
        raise ValueError(f"TF Serving accepts 1..{MAX_RECORDS} warmup records, got {len(records)}")
    path = warmup_path(saved_model_dir)
    storage.makedirs(storage.dirname(path))
    with tf.io.TFRecordWriter(path) as writer:  # TensorFlow's own writer: any filesystem tf.io.gfile knows
        for record in records:
            writer.write(record.SerializeToString())
    return path


def read_warmup_requests(saved_model_dir: str | os.PathLike) -> list:
    """Reads and parses the warmup file. Returns: a list of `PredictionLog`."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    logs = []
    for raw in tf.data.TFRecordDataset(warmup_path(saved_model_dir)):
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(raw.numpy())
        logs.append(log)
    return logs
