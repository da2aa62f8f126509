"""TensorBoard HParams data for a search: `tensorboard --logdir TUNE/logs`.

Layout (TensorBoard's HParams plugin, written with `tensorboard.plugins.hparams.api`):

- `TUNE/logs/`: the experiment: the domain of every searched hyper-parameter (from the
  trials' `HyperParameters.get_config()`) and the metrics below;
- `TUNE/logs/trial_<id>/`: one session per finished (COMPLETED) trial: its searched values
  and, as scalars at step 0, `val_sensitivity` (the objective), the sensitivity at 1, 2 and
  4.8 FPI, the mean and the max sensitivity (the values trials.csv shows).

"Searched" means every hyper-parameter of the space that is not `Fixed` (the fixed preset,
batch and crop are the same for every trial and would only clutter the views; KerasTuner's
`tuner/*` bookkeeping is left out too).

The data is built from the trial records (`TUNE/<project>/trial_*/trial.json`), which the
oracle writes for every trial whichever worker ran it, by `sync(project_dir, logs_dir)`: it
writes the sessions that are missing and leaves the others alone, so it is cheap to call after
every trial, survives a kill at any point (a session is written in a temporary directory and
renamed into place) and catches up on resume. The chief (or the single machine) calls it
whenever a trial ends, as it refreshes trials.csv.
"""

from __future__ import annotations

import math
import os
import threading
from typing import Any, Sequence

from keras_hourglass import storage
from tuning import objective as objective_lib
from tuning.outputs import TrialRecord, load_trials

LOGS_DIR = "logs"
#: (epoch-log key, display name) of the metrics of each session.
METRICS = (
    (objective_lib.OBJECTIVE_NAME, "val sensitivity (objective)"),
    *((objective_lib.fpi_metric_name(fpi), f"sensitivity at {fpi:g} FPI") for fpi in objective_lib.REPORTED_FPI),
    (objective_lib.MEAN_NAME, "mean sensitivity"),
    (objective_lib.MAX_NAME, "max sensitivity"),
)
_SESSION_PREFIX = "trial_"
#: The chief's oracle ends trials in gRPC server threads: one sync at a time.
_SYNC_LOCK = threading.Lock()


def logs_dir(directory: str | os.PathLike) -> str:
    """Returns: the HParams log directory of a search, `TUNE/logs`."""
    return storage.join(os.fspath(directory), LOGS_DIR)


def searched_names(hp_config: dict) -> list[str]:
    """Returns: the names of the non-`Fixed` hyper-parameters of a `HyperParameters.get_config()`."""
    return [
        str(entry["config"]["name"])
        for entry in hp_config.get("space", [])
        if entry.get("class_name") != "Fixed" and not str(entry["config"]["name"]).startswith("tuner/")
    ]


def _domain(entry: dict, hp_api):
    """Returns: the `hp_api.HParam` of one space entry of `HyperParameters.get_config()`."""
    kind, config = entry.get("class_name"), entry["config"]
    name = str(config["name"])
    if kind == "Float":
        return hp_api.HParam(name, hp_api.RealInterval(float(config["min_value"]), float(config["max_value"])))
    if kind == "Int":
        return hp_api.HParam(name, hp_api.IntInterval(int(config["min_value"]), int(config["max_value"])))
    if kind == "Choice":
        return hp_api.HParam(name, hp_api.Discrete(list(config["values"])))
    if kind == "Boolean":
        return hp_api.HParam(name, hp_api.Discrete([False, True]))
    return hp_api.HParam(name)


def _scalar_value(value: Any) -> bool | int | float | str:
    """HParams values are bool, int, float or str; anything else is shown as text."""
    return value if isinstance(value, (bool, int, float, str)) else str(value)


def _write_experiment(path: str, records: Sequence[TrialRecord]) -> None:
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp_api

    space = next((r.hp_config for r in records if r.hp_config.get("space")), {"space": []})
    searched = set(searched_names(space))
    hparams = [_domain(e, hp_api) for e in space.get("space", []) if str(e["config"]["name"]) in searched]
    metrics = [hp_api.Metric(tag, display_name=display) for tag, display in METRICS]
    writer = tf.summary.create_file_writer(path)
    with writer.as_default():
        hp_api.hparams_config(hparams=hparams, metrics=metrics)
    writer.close()


def _write_session(path: str, record: TrialRecord) -> None:
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp_api

    searched = searched_names(record.hp_config)
    values = {name: _scalar_value(record.values[name]) for name in searched if name in record.values}
    writer = tf.summary.create_file_writer(path)
    with writer.as_default():
        hp_api.hparams(values, trial_id=record.trial_id)
        for tag, _ in METRICS:
            value = record.metrics.get(tag)
            if value is not None and math.isfinite(value):
                tf.summary.scalar(tag, value, step=0)
    writer.close()


def _has_events(path: str) -> bool:
    return storage.isdir(path) and any(".tfevents." in name for name in storage.listdir(path))


def _publish(write, final: str, parent: str) -> None:
    """Writes with `write(tmp)` into a staging directory (`storage.local_staging`), then publishes it
    as `final` (`storage.publish_directory`: one rename locally, file by file on object stores)."""
    tmp = storage.local_staging(parent)
    try:
        write(tmp)
        if storage.isdir(final):  # a leftover without events (killed before the rename)
            storage.remove_tree(final)
        storage.publish_directory(tmp, final)
    finally:
        storage.remove_tree(tmp)


def _write_experiment_atomic(logs: str, records: Sequence[TrialRecord]) -> None:
    """Writes the experiment's event file in a staging directory, then publishes it into `logs`
    (each file whole: `storage.write_bytes`)."""
    tmp = storage.local_staging(logs)
    try:
        _write_experiment(tmp, records)
        for name in storage.listdir(tmp):
            storage.write_bytes(storage.join(logs, name), storage.read_bytes(storage.join(tmp, name)))
    finally:
        storage.remove_tree(tmp)


def sync(project_dir: str | os.PathLike, logs: str | os.PathLike) -> list[str]:
    """Writes the HParams sessions of the finished trials that have none yet.

    Args:
        project_dir: the KerasTuner project, `TUNE/<project>`.
        logs: the HParams log directory, `TUNE/logs` (`logs_dir(TUNE)`).

    Returns:
        The ids of the trials written now.
    """
    logs = os.fspath(logs)
    with _SYNC_LOCK:
        return _sync(project_dir, logs)


def _sync(project_dir: str | os.PathLike, logs: str) -> list[str]:
    finished = [r for r in load_trials(project_dir) if r.completed]
    if not finished:
        return []
    storage.makedirs(logs)
    if not any(".tfevents." in name for name in storage.listdir(logs)):
        _write_experiment_atomic(logs, finished)
    written = []
    for record in finished:
        final = storage.join(logs, f"{_SESSION_PREFIX}{record.trial_id}")
        if not _has_events(final):
            _publish(lambda tmp, record=record: _write_session(tmp, record), final, logs)
            written.append(record.trial_id)
    return written


def clear(logs: str | os.PathLike) -> None:
    """Deletes the HParams data of a search (`hourglass tune --overwrite` starts over)."""
    storage.remove_tree(os.fspath(logs))
