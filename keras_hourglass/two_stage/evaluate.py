"""Scoring with both stages: the combined marks of a split, and the choice of the combination.

- `PatchScorer(classifier)`: stage two's probabilities for a batch of patches (traced once).
- `predict_two_stage(model, classifier, dataset, ...)`: stage one over an evaluation dataset
  (the `MarkPredictor` of `hourglass evaluate`), then stage two on the patch of every mark
  (`keras_hourglass.two_stage.patches`, the crop of `hourglass proposals`): two lists of
  `PredictedImage`, stage one's and the two-stage system's (same images, the combined
  score of `keras_hourglass.two_stage.combine`), ready for `froc` with the same hit rule.
- `proposal_records` / `select_combination`: the same on a proposals split (no stage one
  rerun): the FROC of every candidate combination on the val proposals.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

import numpy as np
from tqdm.auto import tqdm

from keras_hourglass.contract import EVALUATION_POSITIVE_LABELS as POSITIVE_LABELS
from keras_hourglass.evaluation.froc import ImageRecord, froc
from keras_hourglass.two_stage.combine import COMBINATIONS, STAGE_ONE, choose_combination, combine_scores
from keras_hourglass.two_stage.patches import crop_patches


class PatchScorer:
    """Stage two's probability for patches, in batches, with one traced function.

    Args:
        classifier: the stage-two model (`[B, P, P, 1]` -> `[B, 1]`).
        batch_size: patches per call.
    """

    def __init__(self, classifier, batch_size: int = 256):
        import tensorflow as tf

        from keras_hourglass.two_stage.classifier import classifier_patch_size

        self.patch_size = classifier_patch_size(classifier)
        self.batch_size = int(batch_size)
        spec = tf.TensorSpec([None, self.patch_size, self.patch_size, 1], tf.float32)
        self._score = tf.function(lambda x: classifier(x, training=False)[:, 0], input_signature=[spec])

    def __call__(self, patches: np.ndarray) -> np.ndarray:
        """Returns: float64 `[M]` probabilities of `patches` `[M, P, P, 1]`."""
        patches = np.asarray(patches, np.float32)
        if patches.shape[0] == 0:
            return np.zeros(0)
        chunks = [self._score(patches[i:i + self.batch_size]).numpy() for i in range(0, len(patches), self.batch_size)]
        return np.concatenate(chunks).astype(np.float64)


def rescore(record, probability: np.ndarray, combination: str, proposal_threshold: float | None = None,
            max_proposals: int | None = None):
    """The two-stage copy of a stage-one record.

    Args:
        record: a `PredictedImage` (or `ImageRecord`) with stage one's marks, sorted by score (descending).
        probability: `[M]` stage two's probabilities of its marks.
        combination: a key of `combine.COMBINATIONS`.
        proposal_threshold: marks with a stage-one score below it were never proposals: dropped.
        max_proposals: only the first (best) marks were proposals (`hourglass proposals --max-marks`).

    Returns:
        A copy whose marks carry the combined score, sorted by it (descending).
    """
    marks = record.marks
    keep = np.ones(marks.shape[0], bool) if proposal_threshold is None else marks[:, 2] >= proposal_threshold
    if max_proposals is not None:
        keep[int(max_proposals):] = False
    combined = np.column_stack([marks[keep, :2], combine_scores(marks[keep, 2], probability[keep], combination)])
    combined = combined[np.argsort(-combined[:, 2], kind="stable")]
    return dataclasses.replace(record, marks=combined)


def predict_two_stage(model, classifier, dataset: Iterable[dict], *, combination: str, max_marks: int = 100,
                      proposal_threshold: float | None = None, max_proposals: int | None = None,
                      max_images: int | None = None,
                      keep_images: int = 0, progress: bool = False):
    """Runs both stages over an evaluation dataset.

    Args:
        model: the stage-one heatmap model.
        classifier: the stage-two classifier.
        dataset: `pipeline.evaluation_dataset(...)` dicts (batch 1).
        combination: how the scores combine (`combine.COMBINATIONS`).
        max_marks: stage-one marks per image.
        proposal_threshold: stage one's proposal threshold (RUN2's proposals); None: every mark.
        max_proposals: stage one's marks per image when the proposals were made; None: `max_marks`.
        max_images: only the first images.
        keep_images: keep the pixels (uint8) of up to this many malignant and other images (overlays).
        progress: a progress bar.

    Returns:
        `(stage_one, two_stage)`: lists of `PredictedImage`, one per image, same order.
    """
    import itertools

    from keras_hourglass.evaluation.predict import MarkPredictor
    from keras_hourglass.two_stage.proposals import stage_one_images

    predictor = MarkPredictor(model, max_marks=max_marks)
    scorer = PatchScorer(classifier)
    elements = dataset if max_images is None else itertools.islice(dataset, int(max_images))
    first, second = [], []
    kept = {True: 0, False: 0}
    for record, pixels, _ in tqdm(stage_one_images(predictor, elements), desc="two-stage", unit="image",
                                  disable=not progress):
        malignant = any(label in POSITIVE_LABELS for label in record.labels)
        if keep_images and kept[malignant] < keep_images:
            record.image = (np.clip(pixels, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
            kept[malignant] += 1
        probability = scorer(crop_patches(pixels, record.marks, scorer.patch_size))
        first.append(record)
        second.append(rescore(record, probability, combination, proposal_threshold, max_proposals))
    return first, second


def score_proposals(classifier, proposals_dir: str, split: str) -> dict[str, np.ndarray]:
    """Stage two over the proposals of a split.

    Returns:
        dict of `[N]` arrays: ``image_hash``, ``y``, ``x``, ``score`` (stage one), ``probability``,
        ``label``, ``malignant``.
    """
    from keras_hourglass.two_stage.records import evaluation_dataset

    scorer = PatchScorer(classifier)
    parts: dict[str, list] = {k: [] for k in ("image_hash", "y", "x", "score", "probability", "label", "malignant")}
    for batch in evaluation_dataset(proposals_dir, split=split):
        parts["probability"].append(scorer(batch["patch"].numpy()))
        for key in ("image_hash", "y", "x", "score", "label", "malignant"):
            parts[key].append(batch[key].numpy())
    out = {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}
    out["image_hash"] = np.asarray([h.decode() if isinstance(h, bytes) else str(h) for h in out["image_hash"]])
    return out


def proposal_records(images: Sequence[dict], scored: dict[str, np.ndarray], scores: np.ndarray) -> list[ImageRecord]:
    """`ImageRecord`s of a proposals split rescored with `scores` (`[N]`, one per proposal of `scored`).

    Args:
        images: the split's `images.jsonl` rows (every image, marks or not).
        scored: `score_proposals(...)`.
        scores: the marks' new scores.
    """
    by_image: dict[str, list[int]] = {}
    for i, image_hash in enumerate(scored["image_hash"]):
        by_image.setdefault(str(image_hash), []).append(i)
    out = []
    for row in images:
        index = np.asarray(by_image.get(row["image_hash"], []), dtype=np.int64)
        marks = np.column_stack([scored["y"][index], scored["x"][index], scores[index]]) if index.size else None
        out.append(ImageRecord(row["image_hash"], row["patient_hash"], marks=marks, boxes=row["boxes"] or None,
                               labels=row["labels"]))
    return out


def select_combination(classifier, proposals_dir: str, split: str = "val") -> dict:
    """Evaluates every combination (and stage one alone) on a proposals split and chooses one.

    The score of a candidate is the FROC's mean sensitivity (over its FPI points) with the
    evaluation positives (malignant); when the split has no malignant finding, with the
    training positives (high_risk + malignant); when it has neither, `combine.DEFAULT_COMBINATION`.

    Returns:
        `{"name", "reason", "split", "positive_labels", "candidates": {name: {"stage_two_weight",
        "mean_sensitivity", "max_sensitivity", "sensitivity_at_fpi"}}}`.
    """
    from keras_hourglass.two_stage.combine import stage_two_weight
    from keras_hourglass.two_stage.proposals import read_images
    from keras_hourglass.contract import TRAINING_POSITIVE_LABELS

    images = read_images(proposals_dir, split)
    if not images:
        name, reason = choose_combination({})
        return {"name": name, "reason": f"no {split} proposals: default", "split": split, "positive_labels": None,
                "candidates": {}}
    scored = score_proposals(classifier, proposals_dir, split)
    candidates, positives = {}, None
    for labels in (POSITIVE_LABELS, TRAINING_POSITIVE_LABELS):
        results = {}
        for name in (STAGE_ONE, *COMBINATIONS):
            scores = combine_scores(scored["score"], scored["probability"], name)
            results[name] = froc(proposal_records(images, scored, scores), positive_labels=labels, n_bootstrap=0)
        if results[STAGE_ONE].num_malignant_findings:
            positives = labels
            candidates = {name: {"stage_two_weight": stage_two_weight(name),
                                 "mean_sensitivity": r.mean_sensitivity, "max_sensitivity": r.max_sensitivity,
                                 "sensitivity_at_fpi": dict(r.sensitivity_at_fpi)} for name, r in results.items()}
            break
    name, reason = choose_combination({k: v["mean_sensitivity"] for k, v in candidates.items()})
    if positives is not None and tuple(positives) != tuple(POSITIVE_LABELS):
        reason += " (with high_risk + malignant as positives: the val split has no malignant finding)"
    return {"name": name, "reason": reason, "split": split,
            "positive_labels": list(positives) if positives else None, "candidates": candidates}
