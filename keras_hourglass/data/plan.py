"""What `hourglass prepare` does with each image, shared by the local and the Beam path (no TensorFlow).

- `plan_images`: the images of an import with their salted hashes, split (by patient) and stratum.
- `partition_of`: the salted-hash partition of an image (the Beam path's unit of work).
- `reject_dict`: an importer reject as rejects.csv writes it (hashes, redacted reason).
- `image_outcome`: one ingest result -> its serialized Example, its counts and its rejects.

Counts are nested dicts of integers (`add_counts` sums them), so the local path can add them chunk by
chunk and the Beam path in a combine, with the same result::

    {"rows_ingested", "duplicate_rows_merged", "images_written_total", "boxes_clipped",
     "images_written": {split: {stratum: n}}, "findings": {label: n},
     "rules_fired": {"voi": {rule: n}, "orientation": {rule: n}}, "examples_digest": int}

``examples_digest`` is the sum of the SHA-256 of every written (split, stratum, serialized Example):
a hash of the multiset of records that does not depend on their order or on how they are cut into
files (manifest ``examples_hash``: the same on both paths for the same inputs and salt).
"""

from __future__ import annotations

import dataclasses
import hashlib
from keras_hourglass.contract import LABELS, SPLITS, stratum_of
from keras_hourglass.data import phi, splits
from keras_hourglass.data.example_codec import serialize_example
from keras_hourglass.data.importers import ImageRecord, ImportResult, Reject


@dataclasses.dataclass
class Planned:
    """One image to ingest with what the plan decided about it.

    Attributes:
        record: the importer's record (RAW ids: never leaves the ingest step).
        image_hash, patient_hash, study_hash: salted hashes written to the records.
        split: train, val or test (by patient).
        stratum: the most severe finding label ("normal" without findings).
    """

    record: ImageRecord
    image_hash: str
    patient_hash: str
    study_hash: str
    split: str
    stratum: str


def partition_of(key: str, salt: str, count: int) -> int:
    """Returns: the partition (0..count-1) of an image key or reject row, by its salted hash."""
    return int(phi.salted_hash(key, salt, "machine"), 16) % count


def plan_images(result: ImportResult, salt: str, *, val_fraction: float,
                test_fraction: float) -> tuple[list[Planned], dict]:
    """Assigns every imported image its hashes, split and stratum.

    Args:
        result: the importer's output (the whole table: splits are decided per patient).
        salt: dataset salt.
        val_fraction, test_fraction: patient shares (see `keras_hourglass.data.splits`).

    Returns:
        (planned images sorted by (split, stratum, image hash), split statistics).
    """
    split_of, split_stats = splits.assign_splits(result.images, salt, val_fraction=val_fraction,
                                                 test_fraction=test_fraction)
    items = []
    for record in result.images:
        items.append(Planned(
            record=record, image_hash=phi.salted_hash(record.key, salt, "image"),
            patient_hash=phi.salted_hash(record.patient_id, salt, "patient"),
            study_hash=phi.salted_hash(record.study_id, salt, "study"),
            split=split_of[record.key], stratum=stratum_of(f.label for f in record.findings)))
    items.sort(key=lambda p: (SPLITS.index(p.split), LABELS.index(p.stratum), p.image_hash))
    return items, split_stats


def images_seen(result: ImportResult) -> int:
    """Returns: distinct images named by the table (imported or rejected at import)."""
    return len({r.key for r in result.images} | {r.image_path for r in result.rejects if r.image_path})


def reject_dict(reject: Reject, salt: str) -> dict:
    """An importer reject as rejects.csv writes it: the row (table name + row number), the salted hash of
    the image path (the TFRecords' ``image_hash``), never the path itself (it may name the patient)."""
    return {"row": reject.row, "image_hash": phi.salted_hash(reject.image_path, salt, "image") if reject.image_path
            else "", "code": reject.code, "reason": phi.redact(reject.reason, reject.secrets, salt)}


def empty_counts() -> dict:
    """Returns: counts with every key at zero (the manifest shows every split and stratum)."""
    return {"rows_ingested": 0, "duplicate_rows_merged": 0, "images_written_total": 0, "boxes_clipped": 0,
            "images_written": {s: {label: 0 for label in LABELS} for s in SPLITS},
            "findings": {label: 0 for label in LABELS if label != "normal"},
            "rules_fired": {"voi": {}, "orientation": {}}, "examples_digest": 0}


def add_counts(target: dict, source: dict) -> dict:
    """Adds nested integer counts `source` into `target` (in place). Returns: `target`."""
    for key, value in source.items():
        if isinstance(value, dict):
            add_counts(target.setdefault(key, {}), value)
        else:
            target[key] = target.get(key, 0) + value
    return target


def example_digest(split: str, stratum: str, serialized: bytes) -> int:
    """Returns: the SHA-256 of one written record (with its split and stratum) as an integer."""
    return int.from_bytes(hashlib.sha256(f"{split}/{stratum}\0".encode() + serialized).digest(), "big")


def digest_hex(digest: int) -> str:
    """Returns: the order-independent `examples_digest` sum as 64 hex digits (mod 2**256)."""
    return f"{digest % (1 << 256):064x}"


@dataclasses.dataclass
class Outcome:
    """What one image contributes to PREP.

    Attributes:
        example: the serialized Example (None when the image is rejected).
        counts: its counts (see the module docstring).
        rejects: its rejects.csv rows (hashed, redacted).
    """

    example: bytes | None
    counts: dict
    rejects: list[dict]


def image_outcome(item: Planned, result: dict) -> Outcome:
    """Turns one ingest result (`keras_hourglass.data.ingest.process_image`) into its Example and counts.

    Args:
        item: the planned image.
        result: its ingest result.

    Returns:
        The image's `Outcome`; the Example comes from `example_codec.serialize_example` (no TensorFlow,
        deterministic bytes, the same builder as `records.make_example`).
    """
    if result["key"] != item.record.key:
        raise RuntimeError("ingest results out of order")  # a bug, never bad input
    if result["status"] != "ok":
        rejects = [{"row": row, "image_hash": item.image_hash, "code": code, "reason": reason}
                   for row, code, reason in result["rejects"]]
        return Outcome(None, {}, rejects)
    example = serialize_example(
        result["png"], height=result["height"], width=result["width"], boxes=result["boxes"],
        box_labels=result["box_labels"], finding_types=result["finding_types"], label=item.stratum,
        patient_hash=item.patient_hash, study_hash=item.study_hash, image_hash=item.image_hash,
        laterality=result["laterality"], view=result["view"], transform=result["transform"],
    )
    findings: dict[str, int] = {}
    for label in result["box_labels"]:
        findings[label] = findings.get(label, 0) + 1
    counts = {"rows_ingested": len(item.record.rows), "duplicate_rows_merged": item.record.duplicate_rows,
              "images_written_total": 1, "boxes_clipped": result["clipped"],
              "images_written": {item.split: {item.stratum: 1}}, "findings": findings,
              "rules_fired": {"voi": {result["voi_rule"]: 1}, "orientation": {result["orientation_rule"]: 1}},
              "examples_digest": example_digest(item.split, item.stratum, example)}
    return Outcome(example, counts, [])
