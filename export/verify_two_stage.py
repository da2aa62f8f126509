"""Verification of a two-stage export against the Python two-stage pipeline (in this process).

`export.verify.verify_saved_model` checks what every export must pass (op allow-list,
saved_model_cli, warmup replay in a plain-TensorFlow subprocess: that replay already runs the
classifier and the in-graph crop, as TF Serving will). A two-stage export must also score as
`hourglass evaluate --classifier` does, so `verify_two_stage` loads the staged SavedModel and, on one
deterministic breast-like image (`reference_image`, exactly representable as a 16-bit PNG):

1. `detect_png` with threshold -inf (every proposal) equals `keras_hourglass.two_stage.evaluate.
   predict_two_stage` on the same pixels (Keras stage one + `find_peaks`, numpy crop, Keras
   classifier, numpy combination): same number of marks, same positions, combined scores within
   `atol`; its stage-one scores and probabilities recombine (numpy `combine_scores`) to its scores;
2. `serving_default` on the float image returns exactly `detect_png`'s marks above the export's
   default threshold.

The image's sides are multiples of the model's input multiple, so neither side pads (the Python
pipeline computes its breast mask on the padded image, the signatures on the unpadded one).
"""

from __future__ import annotations

import numpy as np

from export.verify import VerificationError
from serving.contract import DETECT_PNG, PROBABILITY_OUTPUT, SERVING_DEFAULT, STAGE_ONE_SCORE_OUTPUT

REFERENCE_LONG_SIDE = 256
"""Largest long side of the reference image (px): the check is about equality, not scale."""


def reference_image(long_side: int, multiple: int, seed: int = 0) -> np.ndarray:
    """A float32 `[H, W]` breast-like image: a half-ellipse of tissue on the left edge with bright blobs.

    Args:
        long_side: the export's long side (capped at `REFERENCE_LONG_SIDE`).
        multiple: the model's input multiple (H and W are multiples of it).
        seed: texture and blob positions.

    Returns:
        Values `k / 65535` (k integer), so a 16-bit PNG carries them exactly.
    """
    side = max(min(int(long_side) or REFERENCE_LONG_SIDE, REFERENCE_LONG_SIDE), 4 * multiple)
    rows = -(-side // multiple) * multiple
    cols = max(multiple, -(-round(rows * 0.8) // multiple) * multiple)
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float64)
    inside = ((y + 0.5 - rows / 2) / (rows * 0.48)) ** 2 + ((x + 0.5) / (cols * 0.85)) ** 2 <= 1
    image = np.where(inside, 0.4 + 0.05 * rng.random((rows, cols)), 0.01)
    for _ in range(6):
        cy, cx = rng.uniform(0.15, 0.85) * rows, rng.uniform(0.1, 0.6) * cols
        image += 0.5 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * (rows / 40) ** 2)) * inside
    quantized = np.round(np.clip(image, 0.0, 1.0) * 65535.0).astype(np.uint16)
    return quantized.astype(np.float32) / np.float32(65535.0)


def python_two_stage_marks(detector, classifier, image: np.ndarray) -> np.ndarray:
    """The library's two-stage marks of one image (`predict_two_stage`, as `hourglass evaluate --classifier`).

    Args:
        detector: the `export.two_stage.TwoStageDetector` (its stage one, proposals and combination).
        classifier: the stage-two Keras model.
        image: float32 `[H, W]`, sides multiples of the input multiple.

    Returns:
        float64 `[N, 3]` (y, x, combined score), sorted by score, at most `detector.max_marks` rows.
    """
    from keras_hourglass.two_stage.evaluate import predict_two_stage

    h, w = image.shape
    element = {"image": image[None, :, :, None], "height": np.array([h]), "width": np.array([w])}
    _, combined = predict_two_stage(detector.model, classifier, [element], combination=detector.combination,
                                    max_marks=detector.max_proposals, proposal_threshold=detector.proposal_threshold,
                                    max_proposals=detector.max_proposals)
    return combined[0].marks[: detector.max_marks]


def _same_marks_above(served, marks, threshold: float, atol: float) -> bool:
    """Whether `served` are the `marks` above `threshold`, within `atol`.

    The float image of `serving_default` and the 16-bit PNG of `detect_png` run through different graphs:
    their scores may differ in the last float32 bits, so a mark within `atol` of the threshold may be on
    either side of it, and scores and positions are compared with a tolerance, not bit for bit.

    Args:
        served: `[N, 3]` marks of `serving_default` (its default threshold applied).
        marks: `[M, 3]` marks of `detect_png` with no threshold, sorted by score.
        threshold: the default threshold.
        atol: tolerance of the scores.

    Returns:
        True when they agree.
    """
    clear = marks[marks[:, 2] > threshold + atol]
    near = marks[np.abs(marks[:, 2] - threshold) <= atol]
    served_clear = served[served[:, 2] > threshold + atol]
    if len(served_clear) != len(clear) or len(served) - len(served_clear) > len(near):
        return False
    a = served_clear[np.lexsort(served_clear[:, :2].T[::-1])]
    b = clear[np.lexsort(clear[:, :2].T[::-1])]
    return bool(np.allclose(a[:, :2], b[:, :2], atol=1e-3) and np.allclose(a[:, 2], b[:, 2], atol=atol))


def verify_two_stage(path: str, detector, classifier, *, atol: float = 1e-4) -> dict:
    """Checks a staged two-stage SavedModel against the Python pipeline (module docstring).

    Args:
        path: the SavedModel directory.
        detector: the `TwoStageDetector` that was exported.
        classifier: its stage-two Keras model.
        atol: tolerance of the scores (float32 graph vs float64 numpy).

    Returns:
        `{"two_stage_check": {"image_hw", "marks_compared", "max_score_difference"}}`.

    Raises:
        VerificationError: one line per disagreement.
    """
    import tensorflow as tf

    from keras_hourglass.data.png16 import encode_png16
    from keras_hourglass.two_stage.combine import combine_scores

    image = reference_image(detector.long_side, detector.input_multiple)
    loaded = tf.saved_model.load(path)
    png = loaded.signatures[DETECT_PNG](image_bytes=tf.constant([encode_png16(image)]),
                                        threshold=tf.constant([-np.inf], tf.float32))
    count = int(png["num_marks"].numpy()[0])
    marks = png["marks"].numpy()[0, :count].astype(np.float64)
    expected = python_two_stage_marks(detector, classifier, image)
    problems = []
    difference = None
    if len(expected) != count:
        problems.append(f"two-stage check: the export returns {count} marks, the Python pipeline {len(expected)}")
    else:
        order_a, order_b = np.lexsort(marks[:, :2].T[::-1]), np.lexsort(expected[:, :2].T[::-1])
        if not np.allclose(marks[order_a, :2], expected[order_b, :2], atol=1e-3):
            problems.append("two-stage check: the export's marks are not at the Python pipeline's positions")
        difference = float(np.max(np.abs(marks[order_a, 2] - expected[order_b, 2]), initial=0.0))
        if difference > atol:
            problems.append(f"two-stage check: combined scores differ from the Python pipeline's by {difference:.3g}")
    recombined = combine_scores(png[STAGE_ONE_SCORE_OUTPUT].numpy()[0, :count],
                                png[PROBABILITY_OUTPUT].numpy()[0, :count], detector.combination)
    if not np.allclose(recombined, marks[:, 2], atol=atol):
        problems.append(f"two-stage check: {STAGE_ONE_SCORE_OUTPUT} and {PROBABILITY_OUTPUT} do not recombine to "
                        "the scores")
    default = loaded.signatures[SERVING_DEFAULT](image=tf.constant(image[None, :, :, None]))
    served = default["marks"].numpy()[0, : int(default["num_marks"].numpy()[0])].astype(np.float64)
    if not _same_marks_above(served, marks, float(np.float32(detector.threshold)), atol):
        problems.append("two-stage check: serving_default's marks are not detect_png's above the default threshold")
    if problems:
        raise VerificationError(path, problems)
    return {"two_stage_check": {"image_hw": list(image.shape), "marks_compared": count,
                                "max_score_difference": difference}}
