"""The conventions shared between modules, defined once (no TensorFlow).

Every module that names a label, a positive set, a stratum, a split, a prepared file or a
preprocessing setting imports it from here, so that the ingest workers (no TensorFlow), the
`tf.data` pipeline, the loss, evaluation and serving cannot drift apart:

- `LABELS`: finding labels and image strata, least to most severe; `FINDING_LABELS` the ones a
  finding may carry (all but "normal"); `stratum_of` the stratum of an image.
- Two positive sets under distinct names: `TRAINING_POSITIVE_LABELS` (whose boxes feed the loss's
  detector term; benign boxes are background) and `EVALUATION_POSITIVE_LABELS` (what FROC counts
  as a hit to find).
- `SPLITS`, `FINDING_TYPES`.
- Prepared-file names: `shard_file_name` (the local path's chunks), `BEAM_SHARD_TEMPLATE` (the
  Beam path's), `shard_pattern` (what readers list), `done_marker_name`.
- The manifest's ``preprocessing`` block: `preprocessing_block` builds it, `PREPROCESSING_KEYS`
  names its keys, `long_side_of` reads the training long side back.

May import: the standard library only. Imported by: `keras_hourglass.data` (importers, plan,
records, prepare, beam_ingest, pipeline, synthetic), `keras_hourglass.evaluation`,
`keras_hourglass.examplegen`, `keras_hourglass.training`, and by tuning/, export/ and serving/.
"""

from __future__ import annotations

from typing import Iterable, Mapping

LABELS: tuple[str, ...] = ("normal", "benign", "high_risk", "malignant")
"""Finding labels and image strata, least to most severe."""

FINDING_LABELS: tuple[str, ...] = LABELS[1:]
"""Labels a finding may carry ("normal" is an image without findings)."""

TRAINING_POSITIVE_LABELS: tuple[str, ...] = ("high_risk", "malignant")
"""Training positives: their boxes feed the loss's detector term (benign boxes are background)."""

EVALUATION_POSITIVE_LABELS: tuple[str, ...] = ("malignant",)
"""Evaluation positives: the findings FROC counts (marks on other findings are false marks)."""

SPLITS: tuple[str, ...] = ("train", "val", "test")
"""Dataset splits (assigned per patient)."""

FINDING_TYPES: tuple[str, ...] = ("mass", "calcification", "distortion", "asymmetry", "other")
"""Finding types of the annotation tables and the records."""

RECORD_SUFFIX = ".tfrecord"
"""Suffix of every prepared TFRecord file."""

BEAM_SHARD_TEMPLATE = "-SSSSS-of-NNNNN"
"""Beam's `shard_name_template` of the Beam path: ``<stratum>-SSSSS-of-NNNNN.tfrecord``."""

DONE_SUFFIX = ".done"
"""Suffix of a local chunk's completion marker (beside its TFRecord)."""


def stratum_of(labels: Iterable[str]) -> str:
    """Returns the image stratum: the most severe of its finding labels.

    Args:
        labels: finding labels of one image (empty for a normal image).

    Returns:
        One of `LABELS` ("normal" when there is no finding).

    Raises:
        ValueError: a label that is not one of `LABELS`.
    """
    best = 0
    for label in labels:
        if label not in LABELS:
            raise ValueError(f"unknown label {label!r}; expected one of {LABELS}")
        best = max(best, LABELS.index(label))
    return LABELS[best]


def shard_file_name(stratum: str, chunk: int) -> str:
    """Returns the file name of one chunk of the local path, e.g. ``malignant-00003.tfrecord``.

    Args:
        stratum: image stratum, one of `LABELS`.
        chunk: chunk number within (split, stratum).

    Raises:
        ValueError: an unknown stratum.
    """
    if stratum not in LABELS:
        raise ValueError(f"unknown stratum {stratum!r}")
    return record_file_name(stratum, chunk)


def record_file_name(prefix: str, chunk: int) -> str:
    """Returns the file name of chunk `chunk` of a family of record files, e.g. ``positive-00000.tfrecord``.

    Args:
        prefix: the family (an image stratum here, a stage-two class in `two_stage.records`).
        chunk: chunk number.
    """
    return f"{prefix}-{int(chunk):05d}{RECORD_SUFFIX}"


def shard_pattern(stratum: str | None = None) -> str:
    """Returns the glob of a stratum's TFRecord files on either path (all strata for None).

    Args:
        stratum: one of `LABELS`, or None.

    Raises:
        ValueError: an unknown stratum.
    """
    if stratum is not None and stratum not in LABELS:
        raise ValueError(f"unknown stratum {stratum!r}; expected one of {LABELS}")
    return f"{stratum or '*'}-*{RECORD_SUFFIX}"


def done_marker_name(record_path: str) -> str:
    """Returns: the completion marker beside a local chunk (``x.tfrecord`` -> ``x.done``)."""
    if not record_path.endswith(RECORD_SUFFIX):
        raise ValueError(f"{record_path!r} is not a {RECORD_SUFFIX} file")
    return record_path[: -len(RECORD_SUFFIX)] + DONE_SUFFIX


ORIENTATION_RULES: Mapping[str, str] = {
    "left": "chest wall on the left (right breasts mirrored; tags, then pixels)",
    "right": "chest wall on the right (left breasts mirrored; tags, then pixels)",
    "none": "stored orientation kept",
}
"""`read_mammogram`'s ``orient`` values and what each one does (written into the manifest)."""

PREPROCESSING_KEYS: tuple[str, ...] = ("size", "long_side", "windowing", "orientation", "orientation_rule",
                                       "max_pixels", "decoder", "png_bits", "box_frame")
"""Keys of the manifest's ``preprocessing`` block. ``long_side`` (``size`` is its older name) is the
training long side in pixels; ``windowing`` is `read_mammogram`'s ``voi``; ``orientation`` its
``orient``. There is no pixel-spacing or scale entry yet: images are resized by their long side."""

BOX_FRAME = "image (training scale), continuous pixel coordinates"


def preprocessing_block(*, long_side: int, windowing: str, orientation: str, max_pixels: int,
                        decoder: str) -> dict:
    """Returns the manifest's ``preprocessing`` block (keys `PREPROCESSING_KEYS`).

    Args:
        long_side: training-scale long side (pixels).
        windowing: `read_mammogram`'s ``voi`` rule.
        orientation: `read_mammogram`'s ``orient`` rule, a key of `ORIENTATION_RULES`.
        max_pixels: larger images are rejected before decoding.
        decoder: "pydicom" or "tfio".
    """
    return {"size": long_side, "long_side": long_side, "windowing": windowing, "orientation": orientation,
            "orientation_rule": ORIENTATION_RULES[orientation], "max_pixels": max_pixels, "decoder": decoder,
            "png_bits": 16, "box_frame": BOX_FRAME}


def long_side_of(manifest: Mapping) -> int:
    """Returns the training long side recorded in a manifest.

    Args:
        manifest: a parsed PREP/manifest.json.

    Raises:
        KeyError, TypeError, ValueError: no ``preprocessing.long_side`` (not a prepared manifest).
    """
    return int(manifest["preprocessing"]["long_side"])
