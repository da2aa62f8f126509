"""One SavedModel for both stages: `hourglass export --model RUN/model.keras --classifier RUN2/model.keras`.

`TwoStageDetector` is an `export.signatures.HourglassDetector` whose `detect` (and so both image
signatures, `serving_default` and `detect_png`) runs, in one graph of plain TensorFlow ops:

1. stage one as the single-stage export does (heatmap, breast mask, `find_peaks`), keeping the
   proposals as `hourglass proposals` made them: at most `max_proposals` marks (RUN2's
   `proposals.max_marks`) with stage-one score >= RUN2's proposal threshold;
2. the patch of each proposal, cut by `keras_hourglass.two_stage.patches.crop_patches_tf`
   (`tf.image.crop_and_resize`, the crop rule of the proposals) at the classifier's patch side;
3. stage two's probability of each patch;
4. the combined score, `keras_hourglass.two_stage.combine.combine_scores_tf` with the combination RUN2
   recorded (the rule of `hourglass evaluate --classifier`); the marks sorted by it, then the
   request's threshold applied to it (`score > threshold`, as in the single-stage export).

Outputs keep the single-stage names and shapes (`marks` `[B, max_marks, 3]` = (y, x, combined score),
`num_marks`, `long_side`, `heatmap` in `serving_default`), so the clients and the DICOM outputs read a
two-stage export unchanged, plus `stage_one_score` and `probability` `[B, max_marks]` per mark row
(0 on padding rows). The contract gains a `two_stage` block (`two_stage_contract`). `export_keras_model`
calls `two_stage_detector` when given a classifier, and passes `export.verify_two_stage` as an extra
check, so a combined export is verified against the Python two-stage pipeline before it is published.
"""

from __future__ import annotations

import logging
import os

import tensorflow as tf

from export.signatures import HourglassDetector
from keras_hourglass.errors import ArgumentError, InputError, escape_controls
from keras_hourglass.two_stage.combine import combine_scores_tf, stage_two_weight
from keras_hourglass.two_stage.patches import crop_patches_tf
from serving.contract import PROBABILITY_OUTPUT, STAGE_ONE_SCORE_OUTPUT, inclusive_threshold

log = logging.getLogger(__name__)
PROPOSAL_RULE = "stage-one marks with score >= threshold are proposals (null: every mark), at most max_marks per image"


class TwoStageDetector(HourglassDetector):
    """Stage one, then stage two on the patch of every proposal, then the combined score (module docstring).

    Args:
        model: the stage-one heatmap model (as `HourglassDetector`).
        classifier: the stage-two `keras.Model`, `patch [B, P, P, 1]` -> `probability [B, 1]`.
        combination: a key of `keras_hourglass.two_stage.combine.COMBINATIONS`.
        patch_size: P, the patch side in image pixels (the classifier's input).
        proposal_threshold: stage one's proposal threshold (`score >= it`); None: every mark.
        max_proposals: stage-one marks per image that may be proposals; None: `max_marks`.
        **kwargs: `HourglassDetector` arguments (`stride`, `input_multiple`, `max_marks`, `threshold`
            (on the combined score), `long_side`, `pool_size`, `breast_only`, `peak_fn`).
    """

    def __init__(self, model, classifier, *, combination: str, patch_size: int,
                 proposal_threshold: float | None = None, max_proposals: int | None = None, **kwargs):
        super().__init__(model, **kwargs)
        stage_two_weight(combination)  # ValueError on an unknown name
        self.classifier = classifier
        self.combination = combination
        self.patch_size = int(patch_size)
        self.proposal_threshold = None if proposal_threshold is None else float(proposal_threshold)
        self.max_proposals = int(max_proposals or self.max_marks)
        floor = float("-inf") if proposal_threshold is None else inclusive_threshold(proposal_threshold)
        self.proposer = HourglassDetector(model, stride=self.stride, input_multiple=self.input_multiple,
                                          max_marks=self.max_proposals, threshold=floor, long_side=self.long_side,
                                          pool_size=self.pool_size, breast_only=self.breast_only, peak_fn=self.peak_fn)

    def detect(self, image: tf.Tensor, threshold=None) -> dict[str, tf.Tensor]:
        """`serving_default`: heatmap, rescored marks, num_marks, long_side, stage_one_score, probability."""
        image = tf.convert_to_tensor(image, tf.float32)
        heatmap = self.heatmap(image)
        proposals, count = self.proposer.marks(heatmap, image, self.proposer.threshold)
        rescored = self.rescore(image, proposals, count, self.threshold if threshold is None else threshold)
        batch = tf.shape(image)[0]
        return {"heatmap": heatmap, **rescored, "long_side": tf.fill([batch], tf.constant(self.long_side, tf.int32))}

    def rescore(self, image: tf.Tensor, proposals: tf.Tensor, count: tf.Tensor, threshold) -> dict[str, tf.Tensor]:
        """Stage two and the combination on the proposals of a batch.

        Args:
            image: float32 `[B, H, W, 1]` (unpadded).
            proposals: float32 `[B, max_proposals, 3]` stage-one marks (y, x, score), sorted by score.
            count: int32 `[B]` valid proposals per image.
            threshold: keep marks whose combined score is > it.

        Returns:
            `marks` `[B, max_marks, 3]` (y, x, combined score; padding (-1, -1, 0)), `num_marks` `[B]`,
            `stage_one_score` and `probability` `[B, max_marks]` (0 on padding).
        """
        k, m = self.max_proposals, self.max_marks
        batch = tf.shape(image)[0]
        patches = crop_patches_tf(image, proposals, self.patch_size)
        probability = tf.reshape(tf.cast(self.classifier(patches, training=False), tf.float32)[:, 0], [batch, k])
        stage_one = proposals[..., 2]
        combined = combine_scores_tf(stage_one, probability, self.combination)
        valid = tf.sequence_mask(count, k)
        # Rank the valid proposals by the combined score; top_k keeps equal scores in stage one's order.
        order = tf.argsort(tf.where(valid, combined, float("-inf")), axis=-1, direction="DESCENDING", stable=True)

        def ranked(t: tf.Tensor) -> tf.Tensor:
            t = tf.gather(t, order, axis=1, batch_dims=1)[:, :m]
            if k < m:
                t = tf.pad(t, [[0, 0], [0, m - k]] + [[0, 0]] * (len(t.shape) - 2))
            return t

        keep = ranked(tf.cast(valid, tf.int32)) > 0
        keep &= ranked(combined) > tf.cast(threshold, tf.float32)
        num_marks = tf.reduce_sum(tf.cast(keep, tf.int32), axis=1)
        rows = tf.sequence_mask(num_marks, m)  # `keep` is a prefix: sorted descending, threshold on the same score
        zero = tf.zeros_like(rows, tf.float32)
        marks = tf.concat([ranked(proposals[..., :2]), ranked(combined)[..., None]], axis=-1)
        return {
            "marks": tf.where(rows[..., None], marks, tf.constant([-1.0, -1.0, 0.0])),
            "num_marks": num_marks,
            STAGE_ONE_SCORE_OUTPUT: tf.where(rows, ranked(stage_one), zero),
            PROBABILITY_OUTPUT: tf.where(rows, ranked(probability), zero),
        }

    def per_image_outputs(self) -> dict[str, tf.TensorSpec]:
        """Returns: `HourglassDetector.per_image_outputs` plus the stage-one score and probability rows."""
        row = tf.TensorSpec([self.max_marks], tf.float32)
        return {**super().per_image_outputs(), STAGE_ONE_SCORE_OUTPUT: row, PROBABILITY_OUTPUT: row}


def two_stage_detector(stage_one: HourglassDetector, stage_two) -> TwoStageDetector:
    """The combined detector of a stage-one detector and a loaded stage-two run.

    Args:
        stage_one: the single-stage detector export would write (its settings are kept; a long side of
            0, unknown, becomes the one the classifier's proposals record).
        stage_two: a `keras_hourglass.two_stage.system.StageTwo` (`load_stage_two`).

    Returns:
        A `TwoStageDetector`.

    Raises:
        InputError: (the classifier file) its patches were cut at another long side than the detector's.
    """
    from keras_hourglass.two_stage.system import check_long_side

    long_side = stage_one.long_side or stage_two.long_side or 0
    if not long_side:
        raise ArgumentError("long_side", "neither the detector nor the classifier records the long side of the "
                                         "training images; give long_side=")
    check_long_side(stage_two, long_side, where=stage_two.path, what="the detector's images (long_side=)")
    return TwoStageDetector(
        stage_one.model, stage_two.classifier, combination=stage_two.combination, patch_size=stage_two.patch_size,
        proposal_threshold=stage_two.threshold, max_proposals=stage_two.max_proposals, stride=stage_one.stride,
        input_multiple=stage_one.input_multiple, max_marks=stage_one.max_marks, threshold=stage_one.threshold,
        long_side=long_side, pool_size=stage_one.pool_size, breast_only=stage_one.breast_only,
        peak_fn=stage_one.peak_fn)


def two_stage_contract(detector: TwoStageDetector, stage_two, model_path: str | os.PathLike | None) -> dict:
    """The contract's `two_stage` block (`serving.contract`).

    Args:
        detector: the combined detector.
        stage_two: its `StageTwo`.
        model_path: RUN/model.keras, to compare with the stage one that made the proposals.

    Returns:
        JSON-safe dict: `stages`, `combination`, `proposals`, `patch`, `classifier`, `outputs`.
    """
    from keras_hourglass.data.manifest import file_sha256
    from keras_hourglass.two_stage.combine import EPSILON, RULE

    config_path = os.path.join(os.path.dirname(os.path.abspath(stage_two.path)), "config.json")
    recorded = (stage_two.config.get("proposals") or {}).get("stage_one_sha256")
    actual = file_sha256(os.fspath(model_path)) if model_path is not None and os.path.isfile(model_path) else None
    matches = None if recorded is None or actual is None else recorded == actual
    if matches is False:
        log.warning("%s was trained on the proposals of another stage-one model than %s: the export combines "
                    "them as recorded", escape_controls(stage_two.path), escape_controls(str(model_path)))
    return {
        "stages": 2,
        "combination": {"name": detector.combination, "stage_two_weight": stage_two_weight(detector.combination),
                        "rule": RULE, "epsilon": EPSILON, "source": stage_two.combination_source},
        "proposals": {"threshold": detector.proposal_threshold, "max_marks": detector.max_proposals,
                      "rule": PROPOSAL_RULE},
        "patch": {**stage_two.geometry(), "long_side": detector.long_side, "sampling": "crop_and_resize nearest, "
                  "whole pixels, zero outside the image (keras_hourglass.two_stage.patches)"},
        "classifier": {"model_sha256": file_sha256(stage_two.path),
                       "config_sha256": file_sha256(config_path) if os.path.isfile(config_path) else None,
                       "parameters": int(stage_two.classifier.count_params()),
                       "proposals_stage_one_sha256": recorded, "stage_one_matches": matches},
        "outputs": {"marks": "(y, x, combined score), sorted by it; threshold applies to it",
                    STAGE_ONE_SCORE_OUTPUT: "stage one's score per mark row (0 on padding)",
                    PROBABILITY_OUTPUT: "stage two's probability per mark row (0 on padding)"},
    }


def check_evaluation(operating_points: dict | None, stage_two, evaluation) -> None:
    """Refuses operating points measured on another system than the one exported.

    Args:
        operating_points: `export.contract.operating_points_from_froc(..., system="two_stage")`, or None.
        stage_two: the exported `StageTwo`.
        evaluation: the froc.json path (named in the error).

    Raises:
        InputError: the evaluation combined the scores another way.
    """
    if operating_points is None:
        return
    name = operating_points.get("combination")
    if name != stage_two.combination:
        raise InputError(evaluation, f"its two-stage operating points use the combination {str(name)[:40]!r}, "
                                     f"the export {stage_two.combination!r}: evaluate with the same combination")


def verification(detector: TwoStageDetector, stage_two):
    """Returns: the `export_detector` check of a combined export, `check(path) -> dict`
    (`export.verify_two_stage.verify_two_stage` against the Python two-stage pipeline)."""
    from export.verify_two_stage import verify_two_stage

    def check(path: str) -> dict:
        return verify_two_stage(path, detector, stage_two.classifier)

    return check
