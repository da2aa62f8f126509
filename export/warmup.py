"""TF Serving warmup requests (`assets.extra/tf_serving_warmup_requests`).

TF Serving replays these records when it loads a version, before marking it
AVAILABLE, so the first real request does not pay for lazy initialisation.
The file is a TFRecord of `tensorflow_serving.apis.prediction_log_pb2.PredictionLog`
(at most 1000 records); each holds a `PredictLog` with a `PredictRequest`.

The records written here:
1. `serving_default`, one float32 image `[1, h, w, 1]` (small: the float
   tensor is stored in the SavedModel);
2. `detect_png`, one 16-bit PNG at the training size (long side x 0.8 long
   side; a PNG of a smooth image is small);
3. `detect_png`, a batch of two 8-bit PNGs of different sizes (exercises the
   per-image `tf.map_fn` path).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

WARMUP_FILE = "tf_serving_warmup_requests"
MAX_RECORDS = 1000  # TF Serving's limit


def warmup_path(saved_model_dir: str | os.PathLike) -> str:
    """Returns: `DIR/assets.extra/tf_serving_warmup_requests`."""
    return os.path.join(saved_model_dir, "assets.extra", WARMUP_FILE)


def _ramp(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return (0.5 + 0.25 * np.sin(yy / 17.0) * np.cos(xx / 23.0)).astype(np.float32)


def _png(image: np.ndarray, bits: int) -> bytes:
    import tensorflow as tf

    scale = 65535 if bits == 16 else 255
    dtype = tf.uint16 if bits == 16 else tf.uint8
    pixels = tf.cast(tf.round(tf.clip_by_value(image, 0.0, 1.0) * scale), dtype)[..., None]
    return tf.io.encode_png(pixels).numpy()


def build_warmup_requests(
    *,
    model_name: str = "hourglass",
    long_side: int = 512,
    threshold: float = float("nan"),
    float_image_hw: tuple[int, int] = (128, 96),
) -> list:
    """Builds the warmup `PredictionLog`s.

    Args:
        model_name: model name put in each request's model_spec.
        long_side: long side (pixels) of the detect_png warmup image.
        threshold: threshold sent with the detect_png requests (NaN: the
            export default, as clients send it).
        float_image_hw: size of the serving_default warmup image.

    Returns:
        A list of `prediction_log_pb2.PredictionLog`.
    """
    import tensorflow as tf
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    def log(signature: str, inputs: dict) -> prediction_log_pb2.PredictionLog:
        request = predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature)
        )
        for key, value in inputs.items():
            request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
        return prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))

    long_side = max(int(long_side), 16)
    h, w = float_image_hw
    small = [_png(_ramp(long_side // 4, long_side // 5), 8), _png(_ramp(long_side // 5, long_side // 4), 8)]
    return [
        log("serving_default", {"image": _ramp(h, w)[None, ..., None]}),
        log(
            "detect_png",
            {
                "image_bytes": np.array([_png(_ramp(long_side, int(long_side * 0.8)), 16)], dtype=object),
                "threshold": np.array([threshold], np.float32),
            },
        ),
        log(
            "detect_png",
            {
                "image_bytes": np.array(small, dtype=object),
                "threshold": np.full([2], threshold, np.float32),
            },
        ),
    ]


def write_warmup_requests(saved_model_dir: str | os.PathLike, records: list) -> str:
    """Writes `records` to `DIR/assets.extra/tf_serving_warmup_requests`.

    Returns:
        The path written.
    """
    import tensorflow as tf

    if not 0 < len(records) <= MAX_RECORDS:
        raise ValueError(f"TF Serving accepts 1..{MAX_RECORDS} warmup records, got {len(records)}")
    path = warmup_path(saved_model_dir)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
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
