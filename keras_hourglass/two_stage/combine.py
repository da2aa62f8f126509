"""How the two stages' scores combine into the two-stage system's score (numpy; TensorFlow on demand).

With `s` stage one's mark score (a heatmap value, which may be <= 0 or > 1)
and `p` stage two's probability that the patch is a training positive
(high-risk or malignant), every combination is a weighted geometric mean

    score = max(s, EPSILON) ** (1 - w) * p ** w

with the stage-two weight `w`:

| name            | w    | score                          |
|-----------------|------|--------------------------------|
| probability     | 1    | p (stage two alone re-ranks)   |
| geometric_0.75  | 0.75 | s^0.25 p^0.75                  |
| product         | 0.5  | sqrt(s p): ranks exactly as s*p |
| geometric_0.25  | 0.25 | s^0.75 p^0.25                  |

A FROC depends only on how the marks are ranked, and `sqrt` is monotone, so
`product` is the product and the (plain) geometric mean at once; its score is
reported as `sqrt(s p)` so that it stays on the scale of its inputs. `w = 0`
is stage one alone (`STAGE_ONE`): it is evaluated beside the candidates on
the val proposals, as the reference, but never chosen. The trainer chooses the
candidate with the best mean sensitivity (over the FROC's FPI points) on the
val split's proposals and records it in RUN2/config.json (`two_stage.combination`).

The rule is written once (`_weighted_geometric_mean`) and evaluated two ways: `combine_scores`
(numpy, float64: `hourglass evaluate --classifier`, the trainer's choice) and `combine_scores_tf`
(TensorFlow ops, float32: inside the combined SavedModel of `hourglass export --classifier`).
TensorFlow is imported only by `combine_scores_tf`.
"""

from __future__ import annotations

import numpy as np

EPSILON = 1e-6
"""Floor of stage one's score: a heatmap value <= 0 counts as this (marks then rank by p)."""
COMBINATIONS: dict[str, float] = {"probability": 1.0, "geometric_0.75": 0.75, "product": 0.5, "geometric_0.25": 0.25}
"""Candidate name -> stage-two weight `w`."""
STAGE_ONE = "stage_one"
"""The reference (w = 0): stage one's own score."""
DEFAULT_COMBINATION = "product"
"""Used when the val split cannot choose (no positive finding among its images)."""
RULE = "score = max(s, 1e-6) ** (1 - w) * p ** w (s: stage one, p: stage two; keras_hourglass.two_stage.combine)"
"""The rule in words, as run configs, froc.json and export contracts record it."""


def stage_two_weight(name: str) -> float:
    """Returns: the weight `w` of a combination name (`STAGE_ONE` is 0). Raises: ValueError: unknown name."""
    if name == STAGE_ONE:
        return 0.0
    if name not in COMBINATIONS:
        raise ValueError(f"unknown combination {name!r}; expected one of {sorted(COMBINATIONS)}")
    return COMBINATIONS[name]


def _weighted_geometric_mean(stage_one, probability, w: float, maximum, clip):
    """The rule, on arrays of any library: `maximum(a, c)` and `clip(a, lo, hi)` are that library's ops."""
    if w == 0.0:
        return stage_one
    p = clip(probability, 0.0, 1.0)
    if w == 1.0:
        return p
    return maximum(stage_one, EPSILON) ** (1.0 - w) * p ** w


def combine_scores(stage_one: np.ndarray, probability: np.ndarray, name: str) -> np.ndarray:
    """Combines the scores of the two stages.

    Args:
        stage_one: `[M]` stage-one scores.
        probability: `[M]` stage-two probabilities in [0, 1].
        name: a key of `COMBINATIONS`, or `STAGE_ONE`.

    Returns:
        float64 `[M]` combined scores (higher = more suspicious).
    """
    s = np.array(stage_one, np.float64)
    return _weighted_geometric_mean(s, np.asarray(probability, np.float64), stage_two_weight(name), np.maximum, np.clip)


def combine_scores_tf(stage_one, probability, name: str):
    """`combine_scores` with TensorFlow ops (float32), for graphs such as the combined export.

    Args:
        stage_one: float32 tensor of stage-one scores (any shape).
        probability: float32 tensor of stage-two probabilities, same shape.
        name: a key of `COMBINATIONS`, or `STAGE_ONE`.

    Returns:
        float32 tensor of combined scores, same shape.
    """
    import tensorflow as tf

    s = tf.convert_to_tensor(stage_one, tf.float32)
    p = tf.convert_to_tensor(probability, tf.float32)
    return _weighted_geometric_mean(s, p, stage_two_weight(name), tf.maximum, tf.clip_by_value)


def choose_combination(scores: dict[str, float | None]) -> tuple[str, str]:
    """Chooses the candidate with the highest validation score.

    Args:
        scores: combination name -> its validation score (None: undefined); `STAGE_ONE` is ignored.

    Returns:
        `(name, reason)`; `DEFAULT_COMBINATION` when no candidate has a score. Ties go to the
        candidate listed first in `COMBINATIONS` (the one that leans most on stage two).
    """
    defined = [(name, scores[name]) for name in COMBINATIONS if scores.get(name) is not None]
    if not defined:
        return DEFAULT_COMBINATION, "no validation score (no positive finding among the val images): default"
    best = max(defined, key=lambda item: item[1])  # max keeps the first of equal values
    return best[0], "highest mean sensitivity on the val proposals"
