"""The TFRecord schema of prepared mammograms (tf.train.Example).

Layout of a prepared directory::

    PREP/manifest.json, PREP/rejects.csv
    PREP/<split>/<stratum>-<CCCCC>.tfrecord              the local path
    PREP/<split>/<stratum>-<SSSSS>-of-<NNNNN>.tfrecord   the Beam path (``--runner``)

``split`` is train|val|test, ``stratum`` the image label (most severe
finding: malignant > high_risk > benign > normal). Local path: ``CCCCC``
is the chunk number within that (split, stratum), the unit of atomic
writing and of resumption (``<file>.done`` beside it). Beam path: shard
SSSSS of NNNNN, written by Beam's file sink (temporary files, finalised
when the write succeeds). Readers list ``<stratum>-*.tfrecord``. The
names are `keras_hourglass.contract`'s (`shard_file_name`,
`BEAM_SHARD_TEMPLATE`, `shard_pattern`).

Feature keys (one Example per image):

- ``image/png``: 16-bit grayscale PNG at training scale; ``image/height``,
  ``image/width`` (int64).
- ``boxes``: float list, flattened ``[N, 4]`` of ``(y0, x0, y1, x1)`` in the
  IMAGE frame, continuous pixel coordinates.
- ``box_labels``, ``finding_types``: bytes lists of length N.
- ``label``: the image stratum; ``patient_hash``, ``study_hash``,
  ``image_hash``, ``laterality``, ``view``: bytes.
- ``transform``: float list, ``PixelTransform.to_list()`` (original <-> image).

Writers serialise with ``SerializeToString(deterministic=True)``: the
features map is otherwise ordered by the process's hash seed, and the
same records would differ in bytes between runs (breaking the manifest's
content hash and resumed-vs-uninterrupted byte identity).
"""

from __future__ import annotations

import os
from typing import Iterable, Sequence

import numpy as np
import tensorflow as tf

from keras_hourglass import storage
from keras_hourglass.contract import LABELS, shard_pattern
from keras_hourglass.data.example_codec import serialize_example

_FEATURES = {
    "image/png": tf.io.FixedLenFeature([], tf.string),
    "image/height": tf.io.FixedLenFeature([], tf.int64),
    "image/width": tf.io.FixedLenFeature([], tf.int64),
    "boxes": tf.io.VarLenFeature(tf.float32),
    "box_labels": tf.io.VarLenFeature(tf.string),
    "finding_types": tf.io.VarLenFeature(tf.string),
    "label": tf.io.FixedLenFeature([], tf.string),
    "patient_hash": tf.io.FixedLenFeature([], tf.string),
    "study_hash": tf.io.FixedLenFeature([], tf.string),
    "image_hash": tf.io.FixedLenFeature([], tf.string),
    "laterality": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "view": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "transform": tf.io.VarLenFeature(tf.float32),
}


def make_example(
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
) -> tf.train.Example:
    """Builds the Example of one prepared image.

    Args:
        image: float `[H, W]`/`[H, W, 1]` in [0, 1], uint16, or already-encoded
            16-bit PNG bytes (then `height` and `width` are required).
        boxes: `[N, 4]` (y0, x0, y1, x1) in the image frame.
        box_labels: N labels from `LABELS`.
        finding_types: N finding types.
        patient_hash, study_hash, image_hash: salted hashes (never raw ids).
        laterality: "L"/"R" (or "").
        view: "CC"/"MLO"/... (or "").
        transform: `PixelTransform.to_list()`.
        label: the stratum; default: derived from `box_labels`.
        height, width: image size, needed when `image` is PNG bytes.

    Returns:
        A `tf.train.Example` (built by `example_codec.serialize_example`, the one builder, which the
        TensorFlow-free ingest workers call directly).
    """
    return tf.train.Example.FromString(serialize_example(
        image, boxes=boxes, box_labels=box_labels, finding_types=finding_types, patient_hash=patient_hash,
        study_hash=study_hash, image_hash=image_hash, laterality=laterality, view=view, transform=transform,
        label=label, height=height, width=width))


def parse_example(serialized: tf.Tensor) -> dict:
    """Parses one serialized Example (graph-safe, for tf.data.map).

    Args:
        serialized: scalar string tensor.

    Returns:
        dict with ``image`` float32 `[H, W, 1]` in [0, 1], ``boxes`` float32
        `[N, 4]` (image frame), ``box_labels`` and ``finding_types`` string
        `[N]`, ``label``, ``patient_hash``, ``study_hash``, ``image_hash``,
        ``laterality``, ``view`` (string scalars), ``transform`` float32 `[T]`,
        ``height``, ``width`` int32 scalars.
    """
    parsed = tf.io.parse_single_example(serialized, _FEATURES)
    height = tf.cast(parsed["image/height"], tf.int32)
    width = tf.cast(parsed["image/width"], tf.int32)
    image = tf.io.decode_png(parsed["image/png"], channels=1, dtype=tf.uint16)
    image = tf.cast(image, tf.float32) / 65535.0
    image = tf.ensure_shape(image, [None, None, 1])
    return {
        "image": image,
        "boxes": tf.reshape(tf.sparse.to_dense(parsed["boxes"]), [-1, 4]),
        "box_labels": tf.sparse.to_dense(parsed["box_labels"], default_value=""),
        "finding_types": tf.sparse.to_dense(parsed["finding_types"], default_value=""),
        "label": parsed["label"],
        "patient_hash": parsed["patient_hash"],
        "study_hash": parsed["study_hash"],
        "image_hash": parsed["image_hash"],
        "laterality": parsed["laterality"],
        "view": parsed["view"],
        "transform": tf.sparse.to_dense(parsed["transform"]),
        "height": height,
        "width": width,
    }


def list_files(prep_dir: str | os.PathLike, split: str, stratum: str | None = None) -> list[str]:
    """Lists the complete TFRecord files of a split (and stratum), sorted.

    Temporary files of an interrupted write (hidden ``.*.tmp`` names) are never listed.

    Args:
        prep_dir: the prepared directory.
        split: train, val or test.
        stratum: one of `LABELS`, or None for all.

    Returns:
        Sorted paths.
    """
    return storage.glob(storage.join(os.fspath(prep_dir), split, shard_pattern(stratum)))


def write_records_atomic(path: str | os.PathLike, serialized: Iterable[bytes]) -> int:
    """Writes serialized records to `path` atomically (`keras_hourglass.storage.replacing`).

    Args:
        path: final file path.
        serialized: serialized Examples.

    Returns:
        The number of records written.
    """
    count = 0
    with storage.replacing(path) as tmp:
        with tf.io.TFRecordWriter(tmp) as writer:
            for record in serialized:
                writer.write(record)
                count += 1
    return count
