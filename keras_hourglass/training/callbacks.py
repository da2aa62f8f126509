"""Training callbacks: crash-safe backup/resume, history CSV, TensorBoard, best checkpoint.

All of them count epochs *globally* across the two training phases (patch, then
full image): `epoch_offset` is the number of epochs of earlier phases, so the
logs of phase 2 continue those of phase 1 instead of restarting at 0.

Multi-worker: every worker runs every callback (saving may need every worker),
but each writes under its `distribution.WriteDir`: the chief into RUN, the
other workers into a temporary directory that is deleted at the end.
"""

from __future__ import annotations

import csv
import io
import math
import time
from typing import Any, Callable, Mapping

import keras

from keras_hourglass import storage

BACKUP_STATE = "state.json"


def read_backup_state(backup_dir: str) -> dict | None:
    """The last completed backup in `backup_dir`, or None.

    Returns:
        `{"completed_epochs": int, "weights": file name, "phase": str, ...}`; None when
        there is no state file or it names a weights file that does not exist.
    """
    path = storage.join(backup_dir, BACKUP_STATE)
    if not storage.exists(path):
        return None
    state = storage.read_json(path)
    if not storage.exists(storage.join(backup_dir, state["weights"])):
        return None
    return state


def restore_from_backup(model: keras.Model, backup_dir: str) -> int:
    """Loads the model weights and optimizer state of the last backup.

    Args:
        model: a compiled model (its optimizer is built here if needed).
        backup_dir: the directory written by `EpochBackup` (RUN/backup).

    Returns:
        The number of epochs completed (0 when there is nothing to restore).
    """
    state = read_backup_state(backup_dir)
    if state is None:
        return 0
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    model.load_weights(storage.join(backup_dir, state["weights"]))
    return int(state["completed_epochs"])


class EpochBackup(keras.callbacks.Callback):
    """Saves weights + optimizer state after every epoch, crash-consistently.

    Unlike `keras.callbacks.BackupAndRestore` (Keras 3.15), which writes
    `latest.weights.h5` and then `training_metadata.json` in place (a kill
    between the two leaves weights and epoch count out of step) and has no
    multi-worker logic (workers sharing a `backup_dir` race), this callback
    writes `epoch-NNNN.weights.h5` under a temporary name, renames it, and only
    then atomically replaces `state.json`, which names the weights file and the
    number of completed epochs. The previous weights file is deleted last, so a
    SIGKILL at any moment leaves a consistent (state, weights) pair. On an object store (no
    atomic rename) the same order holds: the weights file is complete under its final name
    (`storage.replacing`) before `state.json`, the marker, names it.

    Args:
        write_dir: where this task writes (the chief: RUN/backup; other
            workers: a temporary directory).
        epoch_offset: epochs of earlier phases.
        phase: the phase name stored in the state.
        extra_state: more keys to store in `state.json`.
    """

    def __init__(self, write_dir: str, epoch_offset: int = 0, phase: str = "",
                 extra_state: dict | None = None):
        super().__init__()
        self.write_dir = write_dir
        self.epoch_offset = int(epoch_offset)
        self.phase = phase
        self.extra_state = dict(extra_state or {})

    def on_epoch_end(self, epoch, logs=None):
        storage.makedirs(self.write_dir)
        completed = self.epoch_offset + epoch + 1
        name = f"epoch-{completed:04d}.weights.h5"
        with storage.replacing(storage.join(self.write_dir, name), keep_suffix=True) as tmp:
            self.model.save_weights(tmp, overwrite=True)
        previous = read_backup_state(self.write_dir)
        storage.write_json(storage.join(self.write_dir, BACKUP_STATE), {
            "completed_epochs": completed,
            "phase": self.phase,
            "weights": name,
            "time": time.time(),
            **self.extra_state,
        })
        if previous and previous["weights"] != name:
            try:
                storage.remove(storage.join(self.write_dir, previous["weights"]))
            except (FileNotFoundError, OSError):
                pass


def _clean(value):
    try:
        value = float(value)
    except (TypeError, ValueError):
        return value
    return value if math.isfinite(value) else str(value)


class HistoryCSV(keras.callbacks.Callback):
    """Adds one row per epoch (global epoch number, phase, wall seconds, every log value) to a CSV.

    The file is rewritten whole and atomically each epoch (`storage.write_text`; object stores
    cannot append), so it is never half-written.

    On resume, call `truncate_history(path, completed_epochs)` first so that
    epochs the interrupted run logged but did not back up are not duplicated.
    """

    def __init__(self, path: str, epoch_offset: int = 0, phase: str = ""):
        super().__init__()
        self.path = path
        self.epoch_offset = int(epoch_offset)
        self.phase = phase

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": self.epoch_offset + epoch + 1, "phase": self.phase}
        started = getattr(self, "_started", None)
        if started is not None:  # wall time of the epoch: its steps and the callbacks before this one
            row["epoch_seconds"] = round(time.perf_counter() - started, 3)
        row.update({k: _clean(v) for k, v in sorted((logs or {}).items())})
        fields = list(row)
        header, rows = _read_csv(self.path)
        fields = header + [f for f in fields if f not in header]  # a new column widens the header
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, fieldnames=fields, restval="", lineterminator="\r\n")
        writer.writeheader()
        writer.writerows([*rows, row])
        storage.write_text(self.path, buffer.getvalue())


def _read_csv(path: str) -> tuple[list[str], list[dict]]:
    """Returns: `(header, rows)` of a CSV file (`([], [])` when it is missing or empty)."""
    if not storage.exists(path):
        return [], []
    with storage.open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def read_history(path: str) -> list[dict]:
    """Rows of a history CSV as dicts (strings)."""
    return _read_csv(path)[1]


def truncate_history(path: str, completed_epochs: int) -> None:
    """Drops the rows of epochs after `completed_epochs` (logged but not backed up)."""
    if not storage.exists(path):
        return
    fields, rows = _read_csv(path)
    rows = [r for r in rows if int(r["epoch"]) <= completed_epochs]
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    storage.write_text(path, buffer.getvalue())


def _display(heatmap):
    """Min-max scales a [N, h, w, 1] heatmap to [0, 1] per image for display."""
    import tensorflow as tf

    heatmap = tf.convert_to_tensor(heatmap, tf.float32)
    low = tf.reduce_min(heatmap, axis=[1, 2, 3], keepdims=True)
    high = tf.reduce_max(heatmap, axis=[1, 2, 3], keepdims=True)
    return (heatmap - low) / tf.maximum(high - low, 1e-6)


class TensorBoardLogger(keras.callbacks.Callback):
    """Epoch scalars and heatmaps of a fixed validation batch for TensorBoard.

    Writes under `log_dir/train` every epoch: each numeric log value as a scalar
    (`epoch_<name>`, step = global epoch), the learning rate, and, when `images`
    is given, `heatmaps` = the model's final heatmap for those images (min-max
    scaled per image); the images themselves are written once as `images`.

    Args:
        log_dir: the TensorBoard directory (RUN/logs).
        epoch_offset: epochs of earlier phases.
        images: a fixed batch `[N, H, W, 1]` (same size) or None.
        heatmap_fn: image batch -> final heatmap `[N, h, w, 1]` (default: the
            last output of the model).
    """

    def __init__(self, log_dir: str, epoch_offset: int = 0, images=None, heatmap_fn=None):
        super().__init__()
        import tensorflow as tf

        self.log_dir = log_dir
        self.epoch_offset = int(epoch_offset)
        self.images = images
        self.heatmap_fn = heatmap_fn
        self._writer = tf.summary.create_file_writer(storage.join(log_dir, "train"))

    def _heatmaps(self):
        if self.heatmap_fn is not None:
            return self.heatmap_fn(self.images)
        out = self.model(self.images, training=False)
        return out[-1] if isinstance(out, (list, tuple)) else out

    def on_train_begin(self, logs=None):
        import tensorflow as tf

        if self.images is not None:
            with self._writer.as_default():
                tf.summary.image("images", self.images, step=self.epoch_offset,
                                 max_outputs=len(self.images))

    def on_epoch_end(self, epoch, logs=None):
        import tensorflow as tf

        step = self.epoch_offset + epoch + 1
        with self._writer.as_default():
            for key, value in (logs or {}).items():
                try:
                    value = float(value)
                except (TypeError, ValueError):
                    continue
                tf.summary.scalar(f"epoch_{key}", value, step=step)
            optimizer = getattr(self.model, "optimizer", None)
            if optimizer is not None:
                tf.summary.scalar("learning_rate", float(keras.ops.convert_to_numpy(
                    optimizer.learning_rate)), step=step)
            if self.images is not None:
                tf.summary.image("heatmaps", _display(self._heatmaps()), step=step,
                                 max_outputs=len(self.images))
        self._writer.flush()

    def on_train_end(self, logs=None):
        self._writer.flush()


class BestCheckpoint(keras.callbacks.Callback):
    """Saves the *inference* model whenever the monitored value improves (default: max).

    The monitored key must already be in the epoch logs, so the callback that
    computes it (`FrocCallback` for `val_sensitivity`) must come before this one
    in the callback list. The best value survives a resume: it is kept in
    `state_path` (JSON) next to the checkpoint.

    Args:
        path: the `.keras` file (RUN/best.keras), written atomically.
        state_path: JSON with the best value and epoch (RUN/best.json).
        save_fn: `path -> None` that writes the model (default: `model.save`).
        monitor: key of the epoch logs; an epoch without a finite value is never the best.
        mode: "max" or "min".
        epoch_offset: epochs of earlier phases.
        rank: `logs -> tuple`, smaller is better, that orders the epochs instead of `monitor` alone
            (e.g. `keras_hourglass.evaluation.selection.epoch_rank_key`: ties of the monitored value
            broken by further figures); on a full tie the earlier epoch stays the best.
    """

    def __init__(self, path: str, state_path: str, save_fn=None, monitor: str = "val_sensitivity",
                 mode: str = "max", epoch_offset: int = 0,
                 rank: Callable[[Mapping[str, Any]], tuple] | None = None):
        super().__init__()
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.path = path
        self.state_path = state_path
        self.save_fn = save_fn
        self.monitor = monitor
        self.mode = mode
        self.epoch_offset = int(epoch_offset)
        self.rank = rank or (lambda logs: ((-1.0 if mode == "max" else 1.0) * float(logs[monitor]),))
        self.best = None
        self.best_rank = None
        if storage.exists(state_path):
            state = storage.read_json(state_path)
            self.best = state.get("value")
            if self.best is not None:  # a state file without "rank" (older runs): ranked by its value alone
                saved = state.get("rank")  # JSON has no infinity: a missing figure (ranks last) is null
                self.best_rank = (tuple(math.inf if k is None else float(k) for k in saved) if saved
                                  else tuple(self.rank({monitor: self.best})))

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        value = logs.get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return
        key = tuple(float(k) for k in self.rank(logs))
        if self.best_rank is not None and not key < self.best_rank:
            return
        self.best, self.best_rank = float(value), key
        with storage.replacing(self.path, keep_suffix=True) as tmp:
            (self.save_fn or self.model.save)(tmp)
        storage.write_json(self.state_path, {"monitor": self.monitor, "mode": self.mode, "value": self.best,
                                            "rank": [k if math.isfinite(k) else None for k in key],
                                            "epoch": self.epoch_offset + epoch + 1})
