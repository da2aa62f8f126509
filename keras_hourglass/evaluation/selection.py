"""Which epoch is best: the one order of validation figures that training and tuning share.

`hourglass train`'s best.keras (`keras_hourglass.training.callbacks.BestCheckpoint`) and the epoch a
tuning trial reports (`tuning.objective.best_epoch`) are picked by the same key, so retraining a trial's
values with the same seed and budget gives the trial's best epoch as best.keras.

Order (sensitivities on a validation set of N malignant findings are multiples of 1/N, so exact ties are
common): higher `val_sensitivity` (the sensitivity at the target FPI, written by `FrocCallback`), then
higher `val_mean_sensitivity` (the better curve overall), then higher `val_max_sensitivity` (the higher
plateau); on a full tie the earlier epoch. NaN or a missing figure ranks last. No TensorFlow.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

#: The objective: validation sensitivity at the target FPI (direction max).
OBJECTIVE_NAME = "val_sensitivity"
MEAN_NAME = "val_mean_sensitivity"
MAX_NAME = "val_max_sensitivity"
#: Figures that break ties, in order, all direction max.
TIE_BREAKERS = (MEAN_NAME, MAX_NAME)


def as_number(value: Any) -> float:
    """Returns: `value` as a float, NaN/None/missing as -inf (ranks last)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return -math.inf
    return number if math.isfinite(number) else -math.inf


def epoch_rank_key(logs: Mapping[str, Any]) -> tuple[float, ...]:
    """The sort key of one epoch's validation figures: smaller is better.

    Args:
        logs: the epoch logs ({name: value}); `val_sensitivity` must be there to rank well.

    Returns:
        (-objective, -mean sensitivity, -max sensitivity); ties go to the earlier epoch by the caller.
    """
    return (-as_number(logs.get(OBJECTIVE_NAME)), *(-as_number(logs.get(name)) for name in TIE_BREAKERS))
