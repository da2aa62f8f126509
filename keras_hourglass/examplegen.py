"""Prepared data from TFX ExampleGen output: `stage_examples(train_files, eval_files, out_dir)`.

TFX's ImportExampleGen re-writes our own `tf.train.Example`s (`keras_hourglass.data.records`) as
gzipped TFRecords split by ExampleGen (`Split-train/data_tfrecord-*.gz`, `Split-eval/...`), so
the file names no longer say an image's stratum. The training pipeline balances its epochs over
the four strata by reading one stream per stratum, so this module routes every Example by its
own `label` feature into the prepared-directory layout (`PREP/<split>/<stratum>-<CCCCC>.tfrecord`,
`contract.shard_file_name`, written atomically with `records.write_records_atomic`) and writes a `manifest.json`
with the images per split and stratum and the training long side (the largest image side among
the Examples, unless given). `keras_hourglass.data.pipeline` and `train()` then read it as any
`hourglass prepare` output, so the TFX path trains on exactly the pipeline `hourglass train` uses.

The copy is local (the pipeline lists files with the local filesystem); the ExampleGen files may
be anywhere `tf.io.gfile` reads (gs://, s3://, hdfs://).
"""

from __future__ import annotations

import json
import os
from typing import Iterable, Sequence

from keras_hourglass import storage
from keras_hourglass.contract import LABELS, shard_file_name
from keras_hourglass.errors import InputError

#: Examples per staged TFRecord file (the pipeline interleaves up to 4 files per stratum).
CHUNK_SIZE = 256
SOURCE = "tfx-examplegen"


def expand_files(patterns: Sequence[str] | str) -> list[str]:
    """Expands TFX file patterns (`fn_args.train_files` are globs such as `.../Split-train/*`).

    Args:
        patterns: one pattern or a list of them (paths or globs, any `tf.io.gfile` filesystem).

    Returns:
        The sorted, de-duplicated files.

    Raises:
        InputError: a pattern matches no file.
    """
    files: set[str] = set()
    for pattern in [patterns] if isinstance(patterns, str) else list(patterns):
        found = [f for f in storage.glob(pattern) if not storage.isdir(f)]
        if not found:
            raise InputError(pattern, "matches no ExampleGen file")
        files.update(found)
    return sorted(files)


def _compression(path: str) -> str:
    return "GZIP" if path.endswith(".gz") else ""


def _serialized(files: Iterable[str]):
    import tensorflow as tf

    for path in files:
        try:
            for record in tf.data.TFRecordDataset(path, compression_type=_compression(path)):
                yield path, record.numpy()
        except tf.errors.DataLossError:
            raise InputError(path, "not a TFRecord file (or a truncated one)") from None


def _split(files: Sequence[str], split_dir: str) -> tuple[dict[str, int], int]:
    """Writes one split. Returns: ({stratum: images}, largest image side)."""
    import tensorflow as tf

    from keras_hourglass.data import records

    pending: dict[str, list[bytes]] = {label: [] for label in LABELS}
    chunks = {label: 0 for label in LABELS}
    counts = {label: 0 for label in LABELS}
    long_side = 0

    def flush(label: str) -> None:
        name = shard_file_name(label, chunks[label])
        records.write_records_atomic(storage.join(split_dir, name), pending[label])
        chunks[label] += 1
        pending[label] = []

    for path, record in _serialized(files):
        try:
            features = tf.train.Example.FromString(record).features.feature
            label = features["label"].bytes_list.value[0].decode("utf-8")
            height = int(features["image/height"].int64_list.value[0])
            width = int(features["image/width"].int64_list.value[0])
        except Exception:  # not our Example: no label / size features
            raise InputError(path, "holds an Example without label, image/height and image/width "
                                   "(not written by `hourglass prepare`)") from None
        if label not in pending:
            raise InputError(path, f"an Example has the unknown label {label!r}; expected one of {LABELS}")
        pending[label].append(record)
        counts[label] += 1
        long_side = max(long_side, height, width)
        if len(pending[label]) >= CHUNK_SIZE:
            flush(label)
    for label in LABELS:
        if pending[label]:
            flush(label)
    return counts, long_side


def stage_examples(
    train_files: Sequence[str] | str,
    eval_files: Sequence[str] | str,
    out_dir: str | os.PathLike,
    *,
    long_side: int | None = None,
    preprocessing: dict | None = None,
) -> str:
    """Writes ExampleGen's train and eval splits as a prepared directory (train and val splits).

    Args:
        train_files: ExampleGen files or patterns of the training split (`fn_args.train_files`).
        eval_files: ... of the evaluation split (`fn_args.eval_files`); becomes PREP/val.
        out_dir: a new or empty local directory (PREP).
        long_side: the training long side (`hourglass prepare --size`); default: the largest
            image side among the Examples.
        preprocessing: more of PREP's `manifest.json` `preprocessing` block (windowing,
            orientation, ...), which the export writes into the model contract.

    Returns:
        `out_dir`, readable by `keras_hourglass.data.pipeline` and `train()`.

    Raises:
        InputError: no file matches, a file is not a TFRecord of our Examples, or a split is empty.
    """
    out_dir = os.fspath(out_dir)
    if storage.isdir(out_dir) and storage.listdir(out_dir):
        raise InputError(out_dir, "not empty: stage the ExampleGen output into a new directory")
    written: dict[str, dict[str, int]] = {}
    sides = []
    for split, patterns in (("train", train_files), ("val", eval_files)):
        files = expand_files(patterns)
        counts, side = _split(files, storage.join(out_dir, split))
        if not sum(counts.values()):
            raise InputError(files[0], f"the ExampleGen files of the {split} split hold no Example")
        written[split], sides = counts, sides + [side]
    manifest = {
        "source": SOURCE,
        "images_written": written,
        "preprocessing": {**(preprocessing or {}), "long_side": int(long_side) if long_side else max(sides)},
    }
    storage.write_json(storage.join(out_dir, "manifest.json"), manifest, sort_keys=True)
    return out_dir
