"""Stage-two data: stage one over every split of PREP, one labelled patch per mark.

`make_proposals` is what `hourglass proposals` runs. For every split of PREP
(train, val, test; a split PREP lacks is recorded as absent) it runs stage one
image by image (`keras_hourglass.evaluation.predict.MarkPredictor`, breast mask
on, as `hourglass evaluate`), keeps the marks with `score >= threshold` (the
FROC's inclusive rule), and writes one record per kept mark
(`keras_hourglass.two_stage.records`): a patch at the training scale
(`keras_hourglass.two_stage.patches`), stage one's score, and its labels from
the evaluation's hit rule (`keras_hourglass.evaluation.froc.match_image`: a
mark inside a box, borders included): `label` 1 on a high_risk or malignant
box (stage one's training positives), `malignant` 1 on a malignant box.

Threshold: `threshold` given, or `operating_point` (an FPI): the threshold of
stage one's operating point at that FPI on PREP/val (`FrocResult.operating_point`,
computed in a first pass over val), or neither: every mark (at most
`max_marks` per image).

Proposals of split S come from the images of split S only, and carry its
patient, study and image hashes and the image stratum, so no patient crosses
splits (a patient hash found in two splits of PREP is refused). The manifest
accounts for every mark: per split, marks predicted = marks kept + marks below
the threshold, marks kept = positives + negatives = records in the split's
files; counts by finding label and by stratum. It is written last: a
PROPOSALS without manifest.json is incomplete (rerun the same command).
"""

from __future__ import annotations

import json
import time
from typing import Any, Iterable, Iterator

import numpy as np
from tqdm.auto import tqdm

from keras_hourglass import storage
from keras_hourglass.contract import EVALUATION_POSITIVE_LABELS, LABELS, SPLITS, TRAINING_POSITIVE_LABELS
from keras_hourglass.errors import ArgumentError, InputError
from keras_hourglass.evaluation.froc import HIT, EXTRA_HIT, match_image
from keras_hourglass.two_stage.patches import DEFAULT_PATCH_SIZE, crop_patches, resolve_patch_size

FORMAT = "keras-hourglass-proposals/1"
RECORDS_PER_SHARD = 4096


def _text(value: Any) -> str:
    value = np.reshape(np.asarray(value.numpy() if hasattr(value, "numpy") else value), -1)
    item = value[0] if value.size else b""
    return item.decode("utf-8") if isinstance(item, bytes) else str(item)


def stage_one_images(predictor, dataset: Iterable[dict]) -> Iterator[tuple[Any, np.ndarray, dict]]:
    """Runs stage one image by image, keeping each image's pixels alongside its marks.

    Args:
        predictor: a `MarkPredictor`.
        dataset: `keras_hourglass.data.pipeline.evaluation_dataset` (dicts, batch 1).

    Yields:
        `(PredictedImage, image [H, W] float32 unpadded, {"stratum", "study_hash"})`.
    """
    for element in dataset:
        record = predictor([element])[0]
        pixels = np.asarray(element["image"].numpy() if hasattr(element["image"], "numpy") else element["image"])
        pixels = pixels.reshape(pixels.shape[-3:])[: record.height, : record.width, 0]
        extra = {"stratum": _text(element.get("label", "")), "study_hash": _text(element.get("study_hash", ""))}
        yield record, pixels, extra


def mark_labels(record) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Labels the marks of one image with the evaluation's hit rule.

    Args:
        record: an `ImageRecord` (marks, boxes, labels).

    Returns:
        `(label, malignant, finding_label)`: int `[M]` 1 for a mark inside a high_risk or malignant box,
        int `[M]` 1 for a mark inside a malignant box, and per mark the most severe label of the boxes
        containing it ("" for none).
    """

    on = (HIT, EXTRA_HIT)
    positive = np.isin(match_image(record, positive_labels=TRAINING_POSITIVE_LABELS).status, on)
    malignant = np.isin(match_image(record, positive_labels=EVALUATION_POSITIVE_LABELS).status, on)
    marks, boxes = record.marks, record.boxes
    inside = ((marks[:, 0:1] >= boxes[None, :, 0]) & (marks[:, 0:1] <= boxes[None, :, 2])
              & (marks[:, 1:2] >= boxes[None, :, 1]) & (marks[:, 1:2] <= boxes[None, :, 3]))
    severity = np.array([LABELS.index(label) if label in LABELS else -1 for label in record.labels])
    finding = []
    for row in inside:
        levels = severity[row]
        finding.append(LABELS[int(levels.max())] if levels.size and levels.max() >= 0 else "")
    return positive.astype(np.int64), malignant.astype(np.int64), finding


class _ShardWriter:
    """Buffers serialized proposals of one (split, class) and writes full shards atomically."""

    def __init__(self, directory: str, cls: str, per_shard: int):
        self.directory, self.cls, self.per_shard = directory, cls, int(per_shard)
        self.buffer: list[bytes] = []
        self.files: list[dict] = []

    def add(self, serialized: bytes) -> None:
        self.buffer.append(serialized)
        if len(self.buffer) >= self.per_shard:
            self.flush()

    def flush(self) -> None:
        from keras_hourglass.data.records import write_records_atomic
        from keras_hourglass.two_stage.records import shard_name

        if not self.buffer:
            return
        name = shard_name(self.cls, len(self.files))
        count = write_records_atomic(storage.join(self.directory, name), self.buffer)
        self.files.append({"file": f"{storage.basename(self.directory)}/{name}", "class": self.cls,
                           "records": count})
        self.buffer = []


def _clear_stale(out_dir: str) -> None:
    """Refuses a finished PROPOSALS; removes the shards of an interrupted run."""
    if storage.exists(storage.join(out_dir, "manifest.json")):
        raise InputError(out_dir, "already holds proposals (manifest.json): use a new out_dir= or delete it")
    from keras_hourglass.two_stage.records import CLASSES

    for split in SPLITS:
        directory = storage.join(out_dir, split)
        if not storage.isdir(directory):
            continue
        for name in storage.listdir(directory):
            if name == "images.jsonl" or (name.endswith(".tfrecord") and name.split("-")[0] in CLASSES):
                storage.remove(storage.join(directory, name))


def _split_dataset(prep_dir: str, split: str, multiple: int):
    from keras_hourglass.data import pipeline, records

    if not any(storage.getsize(f) > 0 for f in records.list_files(prep_dir, split)):
        return None
    return pipeline.evaluation_dataset(prep_dir, split=split, input_multiple=multiple)


def operating_threshold(predictor, prep_dir: str, multiple: int, fpi: float, *, progress: bool = False) -> dict:
    """Stage one's threshold at an FPI budget on PREP/val.

    Returns:
        `{"fpi": target, "split": "val", "threshold", "fpi_reached", "sensitivity"}`.

    Raises:
        InputError: PREP has no val split, or no mark of val fits the budget.
    """
    from keras_hourglass.evaluation.froc import froc

    dataset = _split_dataset(prep_dir, "val", multiple)
    if dataset is None:
        raise ArgumentError("operating_point", f"needs a val split in {prep_dir} to read stage one's threshold")
    records = predictor(dataset, progress=progress)
    point = froc(records, n_bootstrap=0).operating_point(float(fpi))
    if point["threshold"] is None:
        raise ArgumentError("operating_point", f"no stage-one threshold reaches FPI <= {fpi:g} on the val split")
    return {"fpi": float(fpi), "split": "val", "threshold": point["threshold"], "fpi_reached": point["fpi"],
            "sensitivity": point["sensitivity"]}


def make_proposals(model, prep_dir: str, out_dir: str, *, patch_size: float = DEFAULT_PATCH_SIZE,
                   threshold: float | None = None, operating_point: float | None = None, max_marks: int = 100,
                   records_per_shard: int = RECORDS_PER_SHARD, model_path: str | None = None,
                   progress: bool = False) -> dict:
    """Runs stage one over every split of PREP and writes PROPOSALS (module docstring).

    Args:
        model: the stage-one heatmap model.
        prep_dir: PREP.
        out_dir: PROPOSALS (created; a finished one is refused, an interrupted one is cleared).
        patch_size: patch side in reference pixels (resolved against PREP's long side).
        threshold: keep marks with `score >= threshold`.
        operating_point: instead of `threshold`: the FPI whose stage-one threshold on PREP/val is used.
        max_marks: marks per image (the highest-scoring local maxima).
        records_per_shard: records per TFRecord file.
        model_path: the model's file, recorded (with its SHA-256) in the manifest.
        progress: progress bars.

    Returns:
        The manifest (also written to PROPOSALS/manifest.json).

    Raises:
        InputError: bad PREP, a degenerate patch size, a patient in two splits, no image at all.
    """
    from keras_hourglass.data.manifest import file_sha256
    from keras_hourglass.evaluation.predict import MarkPredictor
    from keras_hourglass.model import model_input_multiple
    from keras_hourglass.training.config import manifest_hash
    from keras_hourglass.training.geometry import REFERENCE_LONG_SIDE, prep_long_side
    from keras_hourglass.training.train import package_versions
    from keras_hourglass.two_stage.records import serialize_proposal

    if threshold is not None and operating_point is not None:
        raise ArgumentError("threshold", "give threshold= or operating_point=, not both")
    long_side = prep_long_side(prep_dir)
    size = resolve_patch_size(patch_size, long_side=long_side)
    try:
        multiple = model_input_multiple(model)
    except (ValueError, TypeError) as err:
        raise InputError(model_path or "model", f"not a fully convolutional heatmap model ({type(err).__name__})") from None
    predictor = MarkPredictor(model, max_marks=max_marks)
    point = None
    if operating_point is not None:
        point = operating_threshold(predictor, prep_dir, multiple, operating_point, progress=progress)
        threshold = point["threshold"]
    storage.makedirs(out_dir)
    _clear_stale(out_dir)

    patient_split: dict[str, str] = {}
    splits: dict[str, dict] = {}
    for split in SPLITS:
        dataset = _split_dataset(prep_dir, split, multiple)
        if dataset is None:
            splits[split] = {"present": False}
            continue
        directory = storage.join(out_dir, split)
        writers = {cls: _ShardWriter(directory, cls, records_per_shard) for cls in ("negative", "positive")}
        counts = {"present": True, "images": 0, "images_with_marks": 0, "patients": 0, "marks_predicted": 0,
                  "marks_below_threshold": 0, "marks": 0, "positive": 0, "negative": 0, "malignant": 0,
                  "by_finding_label": {label: 0 for label in (*LABELS[1:], "background")},
                  "by_stratum": {label: 0 for label in LABELS}}
        patients: set[str] = set()
        lines: list[str] = []
        images = stage_one_images(predictor, dataset)
        for record, pixels, extra in tqdm(images, desc=f"proposals {split}", unit="image", disable=not progress):
            other = patient_split.setdefault(record.patient_id, split)
            if other != split:
                raise InputError(prep_dir, f"patient {record.patient_id[:12]} is in the {other} and {split} splits: "
                                           "prepare split by patient")
            patients.add(record.patient_id)
            predicted = record.marks.shape[0]
            if threshold is not None:
                record.marks = record.marks[record.marks[:, 2] >= threshold]
            marks = record.marks
            label, malignant, finding = mark_labels(record)
            patches = crop_patches(pixels, marks, size)
            for m in range(marks.shape[0]):
                serialized = serialize_proposal(
                    patches[m], label=label[m], malignant=malignant[m], finding_label=finding[m],
                    score=marks[m, 2], y=marks[m, 0], x=marks[m, 1], rank=m, split=split,
                    stratum=extra["stratum"], patient_hash=record.patient_id, study_hash=extra["study_hash"],
                    image_hash=record.image_id)
                writers["positive" if label[m] else "negative"].add(serialized)
                counts["by_finding_label"][finding[m] or "background"] += 1
            counts["images"] += 1
            counts["images_with_marks"] += int(marks.shape[0] > 0)
            counts["marks_predicted"] += predicted
            counts["marks_below_threshold"] += predicted - marks.shape[0]
            counts["marks"] += marks.shape[0]
            counts["positive"] += int(label.sum())
            counts["negative"] += int(marks.shape[0] - label.sum())
            counts["malignant"] += int(malignant.sum())
            if extra["stratum"] in counts["by_stratum"]:
                counts["by_stratum"][extra["stratum"]] += marks.shape[0]
            lines.append(json.dumps({"image_hash": record.image_id, "patient_hash": record.patient_id,
                                     "stratum": extra["stratum"], "boxes": record.boxes.tolist(),
                                     "labels": list(record.labels), "num_marks": int(marks.shape[0])}))
        for writer in writers.values():
            writer.flush()
        storage.makedirs(directory)
        storage.write_text(storage.join(directory, "images.jsonl"), "".join(f"{line}\n" for line in lines))
        counts["patients"] = len(patients)
        counts["files"] = writers["negative"].files + writers["positive"].files
        written = sum(f["records"] for f in counts["files"])
        if not (written == counts["marks"] == counts["positive"] + counts["negative"]
                == counts["marks_predicted"] - counts["marks_below_threshold"]):
            raise RuntimeError(f"proposal accounting failed for split {split}: {written} records, {counts}")
        splits[split] = counts
    if not any(s["present"] for s in splits.values()):
        raise InputError(prep_dir, "no TFRecords in any split (run `hourglass prepare`)")

    keys = ("images", "marks_predicted", "marks_below_threshold", "marks", "positive", "negative", "malignant")
    manifest = {
        "format": FORMAT,
        "stage_one": {"model": storage.abspath(model_path) if model_path else None,
                      "model_sha256": file_sha256(model_path) if model_path else None,
                      "max_marks": int(max_marks), "threshold": threshold, "operating_point": point,
                      "threshold_rule": "marks with score >= threshold are kept (null: every mark)",
                      "breast_only": True},
        "data": {"prep_dir": storage.abspath(prep_dir), "manifest_sha256": manifest_hash(prep_dir),
                 "long_side": int(long_side)},
        "patch": {"unit": f"reference pixels (long side {REFERENCE_LONG_SIDE})", "given": float(patch_size),
                  "resolved": int(size),
                  "crop_rule": "size x size pixels, top-left (floor(y - size/2 + 0.5), floor(x - size/2 + 0.5)), "
                               "zero outside the image"},
        "labels": {"label": "1 when the mark lies inside a high_risk or malignant box (borders included)",
                   "malignant": "1 when the mark lies inside a malignant box (borders included)"},
        "splits": splits,
        "totals": {key: sum(s.get(key, 0) for s in splits.values()) for key in keys},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": package_versions(),
    }
    storage.write_json(storage.join(out_dir, "manifest.json"), manifest)
    return manifest


def read_manifest(proposals_dir: str) -> dict:
    """Reads PROPOSALS/manifest.json.

    Raises:
        InputError: missing, unreadable, or not written by `hourglass proposals`.
    """
    from keras_hourglass.data.manifest import read_json

    path = storage.join(proposals_dir, "manifest.json")
    if not storage.isdir(proposals_dir):
        raise InputError(proposals_dir, "no such proposals directory (run `hourglass proposals`)")
    if not storage.exists(path):
        raise InputError(proposals_dir, "no manifest.json: not a finished `hourglass proposals` output")
    manifest = read_json(path)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        hint = ": a prepared directory, give the output of `hourglass proposals`" if "preprocessing" in manifest else ""
        raise InputError(path, f"not a proposals manifest (format {FORMAT!r} expected){hint}")
    return manifest


def read_images(proposals_dir: str, split: str) -> list[dict]:
    """Returns: the rows of PROPOSALS/<split>/images.jsonl (empty when the split is absent)."""
    path = storage.join(proposals_dir, split, "images.jsonl")
    if not storage.exists(path):
        return []
    return [json.loads(line) for line in storage.read_text(path).splitlines() if line.strip()]
