"""The proposal record (one `tf.train.Example` per stage-one mark) and its tf.data readers.

Layout of a proposals directory (`hourglass proposals --out PROPOSALS`)::

    PROPOSALS/manifest.json                         settings, counts, files (`proposals.write_manifest`)
    PROPOSALS/<split>/<class>-<CCCCC>.tfrecord      class: positive | negative; CCCCC: shard number
    PROPOSALS/<split>/images.jsonl                  one line per image of PREP's split (see below)

Feature keys:

- ``patch/png``: the patch as a 16-bit grayscale PNG; ``patch/size`` (int64).
- ``label`` (int64): 1 when the mark hits a training-positive box (high_risk or
  malignant; hit rule of `keras_hourglass.evaluation.froc`: inside the box,
  borders included), else 0. ``malignant`` (int64): 1 when it hits a malignant box.
- ``finding_label`` (bytes): the label of the box the mark lies in (the most
  severe one), "" on background.
- ``score`` (float): stage one's score; ``y``, ``x`` (float): the mark in the
  image frame; ``rank`` (int64): its rank among the image's marks (0 = best).
- ``split``, ``stratum``, ``patient_hash``, ``study_hash``, ``image_hash`` (bytes).

`images.jsonl` holds, per image of the split (marks or not): ``image_hash``,
``patient_hash``, ``stratum``, ``boxes`` (image frame), ``labels``,
``num_marks``. With it the FROC of any rescoring of the proposals is computed
exactly as `hourglass evaluate` computes it (the trainer chooses the
combination that way).
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from keras_hourglass import storage
from keras_hourglass.contract import RECORD_SUFFIX, record_file_name
from keras_hourglass.data.png16 import encode_png16

CLASSES = ("negative", "positive")
"""File prefix by `label` (positive: the mark lies in a box of `contract.TRAINING_POSITIVE_LABELS`)."""

_FEATURES = {
    "patch/png": tf.io.FixedLenFeature([], tf.string),
    "patch/size": tf.io.FixedLenFeature([], tf.int64),
    "label": tf.io.FixedLenFeature([], tf.int64),
    "malignant": tf.io.FixedLenFeature([], tf.int64),
    "finding_label": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "score": tf.io.FixedLenFeature([], tf.float32),
    "y": tf.io.FixedLenFeature([], tf.float32),
    "x": tf.io.FixedLenFeature([], tf.float32),
    "rank": tf.io.FixedLenFeature([], tf.int64),
    "split": tf.io.FixedLenFeature([], tf.string),
    "stratum": tf.io.FixedLenFeature([], tf.string),
    "patient_hash": tf.io.FixedLenFeature([], tf.string),
    "study_hash": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "image_hash": tf.io.FixedLenFeature([], tf.string),
}


def serialize_proposal(patch: np.ndarray, *, label: int, malignant: int, finding_label: str, score: float,
                       y: float, x: float, rank: int, split: str, stratum: str, patient_hash: str,
                       study_hash: str, image_hash: str) -> bytes:
    """Serialises one proposal (deterministic bytes).

    Args:
        patch: float `[P, P]` or `[P, P, 1]` in [0, 1].
        label, malignant, finding_label, score, y, x, rank, split, stratum, patient_hash, study_hash,
            image_hash: the features of the module docstring.

    Returns:
        The serialized `tf.train.Example`.
    """
    patch = np.asarray(patch)
    size = int(patch.shape[0])

    def text(value: str) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[str(value).encode("utf-8")]))

    def integer(value: int) -> tf.train.Feature:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))

    def number(value: float) -> tf.train.Feature:
        return tf.train.Feature(float_list=tf.train.FloatList(value=[float(value)]))

    feature = {
        "patch/png": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encode_png16(patch)])),
        "patch/size": integer(size), "label": integer(label), "malignant": integer(malignant),
        "finding_label": text(finding_label), "score": number(score), "y": number(y), "x": number(x),
        "rank": integer(rank), "split": text(split), "stratum": text(stratum),
        "patient_hash": text(patient_hash), "study_hash": text(study_hash), "image_hash": text(image_hash),
    }
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    return example.SerializeToString(deterministic=True)


def parse_proposal(serialized: tf.Tensor) -> dict:
    """Parses one serialized proposal (graph-safe).

    Returns:
        dict with ``patch`` float32 `[P, P, 1]` in [0, 1] and the other features of the module
        docstring (``label``, ``malignant``, ``rank`` int32; ``score``, ``y``, ``x`` float32; strings).
    """
    parsed = tf.io.parse_single_example(serialized, _FEATURES)
    patch = tf.io.decode_png(parsed.pop("patch/png"), channels=1, dtype=tf.uint16)
    size = tf.cast(parsed.pop("patch/size"), tf.int32)
    patch = tf.reshape(tf.cast(patch, tf.float32) / 65535.0, tf.stack([size, size, 1]))
    out = {"patch": patch}
    for key, value in parsed.items():
        out[key] = tf.cast(value, tf.int32) if value.dtype == tf.int64 else value
    return out


def shard_name(cls: str, shard: int) -> str:
    """Returns: the file name of one shard, e.g. ``positive-00000.tfrecord``."""
    if cls not in CLASSES:
        raise ValueError(f"unknown class {cls!r}; expected one of {CLASSES}")
    return record_file_name(cls, shard)


def list_files(proposals_dir: str | os.PathLike, split: str, cls: str | None = None) -> list[str]:
    """Returns: the sorted, non-empty shard files of a split (and class)."""
    pattern = storage.join(os.fspath(proposals_dir), split, f"{cls or '*'}-*{RECORD_SUFFIX}")
    return [f for f in storage.glob(pattern) if storage.getsize(f) > 0]


def _augment(patch: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Random flips and 90-degree turns (a patch has no preferred orientation)."""
    seeds = tf.random.experimental.stateless_split(seed, num=3)
    patch = tf.image.stateless_random_flip_left_right(patch, seeds[0])
    patch = tf.image.stateless_random_flip_up_down(patch, seeds[1])
    turns = tf.random.stateless_uniform([], seeds[2], minval=0, maxval=4, dtype=tf.int32)
    return tf.image.rot90(patch, turns)


def _stream(files: list[str], seed: int, shuffle_buffer: int) -> tf.data.Dataset:
    names = tf.data.Dataset.from_tensor_slices(files).shuffle(len(files), seed=seed).repeat()
    stream = names.interleave(tf.data.TFRecordDataset, cycle_length=min(4, len(files)), block_length=1)
    return stream.shuffle(shuffle_buffer, seed=seed + 1)


def training_dataset(proposals_dir: str | os.PathLike, *, batch_size: int, seed: int, split: str = "train",
                     balance: str = "sampling", class_counts: tuple[int, int] | None = None,
                     augment: bool = True, shuffle_buffer: int = 512) -> tf.data.Dataset:
    """The infinite, class-balanced training stream of a split's proposals.

    Args:
        proposals_dir: PROPOSALS.
        batch_size: patches per batch.
        seed: seeds the shuffles, the class sampler and the augmentation.
        split: the split to read.
        balance: "sampling" (default: positives and negatives drawn with probability 1/2 each) or
            "weights" (the natural stream; each patch weighted by `n / (2 n_class)`, from
            `class_counts`).
        class_counts: `(negatives, positives)`, needed by "weights".
        augment: flips and 90-degree turns.
        shuffle_buffer: records buffered per stream.

    Returns:
        `tf.data.Dataset` of `(patch [B, P, P, 1], label [B, 1])`, plus `weight [B]` with "weights".
    """
    if balance not in ("sampling", "weights"):
        raise ValueError(f"balance must be 'sampling' or 'weights', got {balance!r}")
    negatives, positives = list_files(proposals_dir, split, "negative"), list_files(proposals_dir, split, "positive")
    if balance == "sampling":
        streams = [_stream(files, seed + 7919 * (i + 1), shuffle_buffer)
                   for i, files in enumerate((negatives, positives)) if files]
        mixed = tf.data.Dataset.sample_from_datasets(streams, weights=[1.0 / len(streams)] * len(streams), seed=seed)
        weights = None
    else:
        mixed = _stream(negatives + positives, seed, shuffle_buffer)
        num_negative, num_positive = class_counts
        total = num_negative + num_positive
        weights = tf.constant([total / (2.0 * max(num_negative, 1)), total / (2.0 * max(num_positive, 1))])
    mixed = tf.data.Dataset.zip((mixed, tf.data.Dataset.counter()))

    def transform(serialized, counter):
        proposal = parse_proposal(serialized)
        patch = proposal["patch"]
        if augment:
            patch = _augment(patch, tf.stack([tf.constant(seed, tf.int64), counter]))
        label = tf.cast(proposal["label"], tf.float32)[None]
        if weights is None:
            return patch, label
        return patch, label, tf.gather(weights, proposal["label"])

    dataset = mixed.map(transform, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.batch(batch_size, drop_remainder=True).with_options(options).prefetch(tf.data.AUTOTUNE)


def evaluation_dataset(proposals_dir: str | os.PathLike, *, split: str, batch_size: int = 256) -> tf.data.Dataset:
    """Every proposal of a split once, in file order.

    Returns:
        `tf.data.Dataset` of dicts (`parse_proposal`'s keys), batched; empty when the split has none.
    """
    files = list_files(proposals_dir, split)
    dataset = tf.data.TFRecordDataset(files) if files else tf.data.Dataset.from_tensor_slices(tf.zeros([0], tf.string))
    dataset = dataset.map(parse_proposal, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)
