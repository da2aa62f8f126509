"""best.keras is the epoch a tuning trial reports: one epoch order for training and tuning."""

from __future__ import annotations

import json
import math

import keras
import pytest

from keras_hourglass.evaluation.selection import epoch_rank_key
from keras_hourglass.training.callbacks import BestCheckpoint
from tuning import objective as objective_lib

# Validation figures of six epochs: three tie at 0.5 on the objective, two of them also on the mean.
HISTORY = [
    {"val_sensitivity": 0.25, "val_mean_sensitivity": 0.9, "val_max_sensitivity": 1.0},
    {"val_sensitivity": 0.5, "val_mean_sensitivity": 0.3, "val_max_sensitivity": 0.9},
    {"val_sensitivity": float("nan"), "val_mean_sensitivity": 0.9, "val_max_sensitivity": 1.0},
    {"val_sensitivity": 0.5, "val_mean_sensitivity": 0.4, "val_max_sensitivity": 0.8},
    {"val_sensitivity": 0.5, "val_mean_sensitivity": 0.4, "val_max_sensitivity": 0.8},
    {"val_sensitivity": 0.5, "val_mean_sensitivity": 0.4, "val_max_sensitivity": 0.7},
]


def write_file(path: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("a model")


def saved_epochs(tmp_path, history, state=None) -> tuple[list[int], dict]:
    """Feeds `history` to a BestCheckpoint (ranked as `hourglass train` ranks); returns the epochs it saved."""
    saved: list[int] = []
    tmp_path.mkdir(exist_ok=True)
    state_path = tmp_path / "best.json"
    if state is not None:
        state_path.write_text(json.dumps(state))
    callback = BestCheckpoint(str(tmp_path / "best.keras"), str(state_path),
                              save_fn=lambda path: write_file(path) or saved.append(epoch), rank=epoch_rank_key)
    callback.set_model(keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)]))
    for epoch, logs in enumerate(history):
        callback.on_epoch_end(epoch, dict(logs))
    return saved, json.loads(state_path.read_text())


def test_best_checkpoint_picks_the_tuners_epoch(tmp_path):
    saved, state = saved_epochs(tmp_path, HISTORY)
    columns = {key: [logs[key] for logs in HISTORY] for key in HISTORY[0]}
    assert objective_lib.best_epoch(columns) == 3  # 0.5, then the higher mean; the earlier of two full ties
    assert saved == [0, 1, 3] and state["epoch"] == 4 and state["value"] == 0.5  # NaN (epoch 2) never wins
    assert state["rank"] == [-0.5, -0.4, -0.8]


def test_best_checkpoint_resumes_with_its_saved_rank(tmp_path):
    saved, _ = saved_epochs(tmp_path, HISTORY[4:], state={"value": 0.5, "rank": [-0.5, -0.4, -0.8], "epoch": 4})
    assert saved == []  # a full tie with the saved best (and a worse plateau) keeps the earlier epoch
    saved, state = saved_epochs(tmp_path / "old", [HISTORY[1]], state={"value": 0.5, "epoch": 2})
    assert saved == [0] and state["rank"] == [-0.5, -0.3, -0.9]  # an old state file: its value alone, tie-breakers unknown


def test_best_checkpoint_without_rank_keeps_monitor_and_mode(tmp_path):
    saved: list[float] = []
    callback = BestCheckpoint(str(tmp_path / "b.keras"), str(tmp_path / "b.json"), monitor="loss", mode="min",
                              save_fn=lambda path: write_file(path) or saved.append(loss))
    for epoch, loss in enumerate([3.0, 2.0, 2.0, math.inf, 1.5]):
        callback.on_epoch_end(epoch, {"loss": loss})
    assert saved == [3.0, 2.0, 1.5]
    with pytest.raises(ValueError, match="mode must be"):
        BestCheckpoint("b.keras", str(tmp_path / "c.json"), mode="best")
