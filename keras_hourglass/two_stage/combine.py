"""How the two stages' scores combine into the two-stage system's score (numpy only).

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


def stage_two_weight(name: str) -> float:
    """Returns: the weight `w` of a combination name (`STAGE_ONE` is 0). Raises: ValueError: unknown name."""
    if name == STAGE_ONE:
        return 0.0
    if name not in COMBINATIONS:
        raise ValueError(f"unknown combination {name!r}; expected one of {sorted(COMBINATIONS)}")
    return COMBINATIONS[name]


def combine_scores(stage_one: np.ndarray, probability: np.ndarray, name: str) -> np.ndarray:
    """Combines the scores of the two stages.

    Args:
        stage_one: `[M]` stage-one scores.
        probability: `[M]` stage-two probabilities in [0, 1].
        name: a key of `COMBINATIONS`, or `STAGE_ONE`.

    Returns:
        float64 `[M]` combined scores (higher = more suspicious).
    """
    w = stage_two_weight(name)
    s = np.maximum(np.asarray(stage_one, np.float64), EPSILON)
    p = np.clip(np.asarray(probability, np.float64), 0.0, 1.0)
    if w == 0.0:
        return np.asarray(stage_one, np.float64).copy()
    if w == 1.0:
        return p
    return s ** (1.0 - w) * p ** w


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
