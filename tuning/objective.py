"""The tuning objective and the tie-breaker used to pick the best trial.

Objective: `val_sensitivity`, the validation sensitivity at the target FPI
(default 4.8 false marks per image) written into the epoch logs by
`keras_hourglass.evaluation.FrocCallback`; direction max. Never `val_loss`:
the loss's scale changes with omega and k, so losses of different trials are
not comparable.

Tie-breaker (sensitivities on a validation set of N malignant findings are
multiples of 1/N, so exact ties are common). Among trials (or epochs) with the
same objective, prefer, in order:

1. higher `val_mean_sensitivity` (the mean over the FROC points: the better
   curve overall),
2. higher `val_max_sensitivity` (the higher plateau),
3. lower omega (the weaker background penalty: keeps the detector
   hypersensitive, the point of the method),
4. the earlier trial id (deterministic).

Points 1-2 (and the objective) are the library's epoch order,
`keras_hourglass.evaluation.selection.epoch_rank_key`, which also picks
`hourglass train`'s best.keras; this module adds the trial-level points 3-4.
KerasTuner's oracle ranks trials by the objective alone (it sees one float);
this module applies the full order when `tuning.outputs` picks the trial for
`best_hyperparameters.json`, and when `HourglassHyperModel.fit` picks the
epoch whose metrics a trial reports. This module does not import TensorFlow.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from keras_hourglass.evaluation.selection import (  # noqa: F401 (re-exported: the one epoch order)
    MAX_NAME,
    MEAN_NAME,
    OBJECTIVE_NAME,
    TIE_BREAKERS,
    as_number,
    epoch_rank_key,
)

DIRECTION = "max"
#: Sensitivity at these FPI points is reported per trial (trials.csv columns).
REPORTED_FPI = (1.0, 2.0, 4.8)


def fpi_metric_name(fpi: float) -> str:
    """Returns: the epoch-log key of the sensitivity at `fpi`, e.g. "val_sensitivity_at_4.8"."""
    return f"val_sensitivity_at_{float(fpi):g}"


def objective():
    """Returns: `keras_tuner.Objective("val_sensitivity", "max")`."""
    import keras_tuner

    return keras_tuner.Objective(OBJECTIVE_NAME, DIRECTION)


def rank_key(metrics: Mapping[str, Any], omega: Any = None, order: Any = 0) -> tuple:
    """The sort key of one trial or epoch: smaller is better.

    Args:
        metrics: {metric name: value}; must hold `val_sensitivity` to rank well.
        omega: the trial's omega (lower wins a tie); None if not tuned.
        order: trial id or epoch index (earlier wins a tie).

    Returns:
        A tuple usable with `sorted` / `min`.
    """
    omega_value = as_number(omega)
    return (
        *epoch_rank_key(metrics),
        omega_value if omega_value != -math.inf else math.inf,
        _order_key(order),
    )


def _order_key(order: Any) -> tuple:
    try:
        return (0, int(order), "")
    except (TypeError, ValueError):
        return (1, 0, str(order))


def best_epoch(history: Mapping[str, Sequence[float]]) -> int:
    """Picks the epoch whose metrics a trial reports.

    Args:
        history: `keras.callbacks.History.history` ({metric: [value per epoch]}).

    Returns:
        The index of the best epoch by the objective then the tie-breakers
        (earlier epoch on a full tie).

    Raises:
        ValueError: the objective is not in the history (FrocCallback missing).
    """
    values = history.get(OBJECTIVE_NAME)
    if not values:
        raise ValueError(
            f"{OBJECTIVE_NAME!r} is not in the training logs; is the FrocCallback on the validation split?"
        )
    epochs = range(len(values))

    def logs(epoch: int) -> dict[str, Any]:
        return {k: v[epoch] for k, v in history.items() if epoch < len(v)}

    return min(epochs, key=lambda e: rank_key(logs(e), order=e))
