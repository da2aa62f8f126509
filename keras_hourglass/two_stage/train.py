"""Class-balanced training of the stage-two classifier (`hourglass train --stage 2`).

`train_classifier(config, PROPOSALS, RUN2)`:

1. reads PROPOSALS/manifest.json (the patch side, the stage-one threshold, the
   class counts) and refuses a train split without positives or negatives;
2. builds the classifier (`two_stage.classifier.build_classifier`) and Adam
   under the strategy's scope (`training.distribution.make_strategy`, as stage
   one), seeded with `keras.utils.set_random_seed`;
3. restores RUN2/backup if there is one (`training.callbacks.EpochBackup`:
   weights, optimizer state, completed epochs; another configuration in the
   same RUN2 is refused) and fits the remaining epochs on the balanced stream
   of `two_stage.records.training_dataset` (`balance="sampling"`: positives and
   negatives drawn with probability 1/2; `"weights"`: the natural stream,
   weighted `n / (2 n_class)`), validating on PROPOSALS/val (loss, AUC);
4. writes RUN2/model.keras, RUN2/history.csv and RUN2/config.json, whose
   `two_stage.combination` is the combination chosen on the val proposals
   (`two_stage.evaluate.select_combination`) and whose `proposals` block holds
   what `hourglass evaluate --classifier` needs to score a split as the
   proposals were made (stage-one threshold, max marks, long side, patch size).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time

from keras_hourglass import storage
from keras_hourglass.contract import SPLITS
from keras_hourglass.errors import ArgumentError, InputError

BALANCES = ("sampling", "weights")


@dataclasses.dataclass(frozen=True)
class Stage2Config:
    """Settings of a stage-two run.

    Attributes:
        epochs: epochs of `steps_per_epoch` batches.
        steps_per_epoch: batches per epoch.
        batch_size: global batch (split over the replicas).
        learning_rate: Adam's learning rate (constant).
        seed: initialisation, data order and augmentation.
        balance: "sampling" or "weights" (module docstring).
        augment: flips and 90-degree turns.
        filters, dense, dropout, backbone, backbone_weights: `build_classifier` arguments.
    """

    epochs: int = 10
    steps_per_epoch: int = 100
    batch_size: int = 64
    learning_rate: float = 1e-3
    seed: int = 0
    balance: str = "sampling"
    augment: bool = True
    filters: tuple[int, ...] = (16, 32, 64)
    dense: int = 64
    dropout: float = 0.3
    backbone: str | None = None
    backbone_weights: str | None = None

    def validate(self) -> "Stage2Config":
        """Returns: self. Raises: ArgumentError naming the field of a bad value."""
        for name in ("epochs", "steps_per_epoch", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ArgumentError(name, f"must be >= 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ArgumentError("learning_rate", f"must be > 0, got {self.learning_rate}")
        if self.balance not in BALANCES:
            raise ArgumentError("balance", f"must be one of {BALANCES}, got {self.balance!r}")
        if not 0 <= self.dropout < 1:
            raise ArgumentError("dropout", f"must be in [0, 1), got {self.dropout}")
        return self

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["filters"] = list(self.filters)
        return out


def apply_hparams(config: Stage2Config, values: dict, source: str = "hparams") -> Stage2Config:
    """Returns a copy of `config` with tuned values applied (`hourglass tune --stage 2` names).

    Args:
        config: the settings to start from.
        values: {field name: value}; `filters` may be a comma list string ("16,32,64"),
            KerasTuner's `tuner/*` entries are skipped.
        source: named in errors (the file).

    Returns:
        The validated `Stage2Config`.

    Raises:
        InputError: an unknown name or a bad value, naming `source`.
    """
    names = {f.name for f in dataclasses.fields(Stage2Config)}
    updates = {}
    for key, value in values.items():
        if key.startswith("tuner/"):
            continue
        if key not in names:
            raise InputError(source, f"unknown stage-two hyper-parameter {key!r}")
        if key == "filters" and isinstance(value, str):
            try:
                value = tuple(int(v) for v in value.split(","))
            except ValueError:
                raise InputError(source, f"filters: {value!r} is not a comma list of integers") from None
        updates[key] = tuple(value) if key == "filters" else value
    try:
        return dataclasses.replace(config, **updates).validate()
    except InputError as err:
        raise InputError(source, f"{err.path}: {err.reason}") from None


def _fingerprint(config: Stage2Config, manifest_sha: str, global_batch: int) -> str:
    keep = {k: v for k, v in config.to_json().items()}
    keep.update(manifest_sha256=manifest_sha, global_batch=global_batch)
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def _class_counts(manifest: dict, split: str) -> tuple[int, int]:
    counts = (manifest.get("splits") or {}).get(split) or {}
    return int(counts.get("negative") or 0), int(counts.get("positive") or 0)


def _save_atomic(model, path: str) -> None:
    with storage.replacing(path, keep_suffix=True) as tmp:  # Keras needs the .keras suffix
        model.save(tmp)


def compile_classifier(config: Stage2Config, patch_size: int, *, run_eagerly: bool = False):
    """Seeds Keras with `config.seed`, builds the classifier and compiles it (Adam, cross-entropy, AUC).

    The one build of `train_classifier` and of the stage-two tuning trials
    (`tuning.stage2.Stage2HyperModel`). Call it inside the strategy's scope.

    Args:
        config: the settings (`seed`, `learning_rate`, the `build_classifier` arguments).
        patch_size: patch side P (PROPOSALS/manifest.json `patch.resolved`).
        run_eagerly: no graph tracing (smoke searches of a few steps: `hourglass tune --run-eagerly`).

    Returns:
        The compiled `keras.Model`.

    Raises:
        InputError: a bad classifier setting, naming its flag.
    """
    import keras

    from keras_hourglass.two_stage.classifier import build_classifier

    try:
        keras.utils.set_random_seed(int(config.seed))
        model = build_classifier(patch_size, filters=config.filters, dense=config.dense, dropout=config.dropout,
                                 backbone=config.backbone, backbone_weights=config.backbone_weights)
        model.compile(optimizer=keras.optimizers.Adam(float(config.learning_rate)),
                      loss=keras.losses.BinaryCrossentropy(),
                      metrics=[keras.metrics.AUC(name="auc"), keras.metrics.BinaryAccuracy(name="accuracy")],
                      run_eagerly=bool(run_eagerly))
    except ValueError as err:
        raise ArgumentError("backbone" if config.backbone else "filters", str(err)) from None
    return model


def fit_classifier(model, config: Stage2Config, proposals_dir: str, manifest: dict, *, initial_epoch: int = 0,
                   callbacks: list | None = None, strategy=None, verbose="auto"):
    """Fits epochs `initial_epoch + 1 .. config.epochs` on the balanced stream, validating on PROPOSALS/val.

    The one fit of `train_classifier` and of the stage-two tuning trials.

    Args:
        model: from `compile_classifier`.
        config: the settings.
        proposals_dir: PROPOSALS.
        manifest: PROPOSALS/manifest.json (`proposals.read_manifest`).
        initial_epoch: epochs already done (a resumed run re-seeds its stream, so it does not
            replay the batches already seen).
        callbacks: Keras callbacks.
        strategy: the model's strategy (for the multi-worker fit fix), or None.
        verbose: Keras `fit` verbosity.

    Returns:
        The Keras `History`.
    """
    from keras_hourglass.two_stage import records

    negatives, positives = _class_counts(manifest, "train")
    data = records.training_dataset(proposals_dir, batch_size=config.batch_size,
                                    seed=config.seed + 1000 * int(initial_epoch), balance=config.balance,
                                    class_counts=(negatives, positives), augment=config.augment)
    validation, validation_steps = None, None
    val_count = sum(_class_counts(manifest, "val"))
    if val_count:
        batch = 256
        validation_steps = -(-val_count // batch)  # explicit: Keras warns "ran out of data" without it
        validation = records.evaluation_dataset(proposals_dir, split="val", batch_size=batch).map(
            lambda p: (p["patch"], p["label"][:, None]))
    from keras_hourglass.training.multiworker_fix import multiworker_fit_fix

    with multiworker_fit_fix(strategy if strategy is not None else model.distribute_strategy):
        return model.fit(data, epochs=config.epochs, initial_epoch=int(initial_epoch),
                         steps_per_epoch=config.steps_per_epoch, validation_data=validation,
                         validation_steps=validation_steps, callbacks=list(callbacks or []), verbose=verbose,
                         shuffle=False)


def train_classifier(config: Stage2Config, proposals_dir: str, run_dir: str, *, strategy=None, strategy_info=None,
                     verbose="auto", command: list[str] | None = None) -> dict:
    """Trains (or resumes) the stage-two classifier and writes RUN2.

    Args:
        config: the settings (validated here).
        proposals_dir: PROPOSALS (`hourglass proposals`).
        run_dir: RUN2; created; an existing RUN2/backup is resumed from.
        strategy: a ready `tf.distribute.Strategy` (default: `make_strategy("auto")`).
        strategy_info: its `StrategyInfo`.
        verbose: Keras `fit` verbosity.
        command: the command line for config.json.

    Returns:
        The summary written to RUN2/config.json.

    Raises:
        InputError: bad PROPOSALS (no manifest, no positives or negatives in train), a backup of
            another configuration, a bad setting.
    """
    import keras

    from keras_hourglass.data.manifest import file_sha256
    from keras_hourglass.training import callbacks as cb
    from keras_hourglass.training.distribution import WriteDir, make_strategy, per_replica_batch_size
    from keras_hourglass.training.train import package_versions
    from keras_hourglass.two_stage.combine import RULE
    from keras_hourglass.two_stage.evaluate import select_combination
    from keras_hourglass.two_stage.proposals import read_manifest

    config.validate()
    manifest = read_manifest(proposals_dir)
    manifest_path = storage.join(proposals_dir, "manifest.json")
    negatives, positives = _class_counts(manifest, "train")
    if positives == 0 or negatives == 0:
        raise InputError(manifest_path, f"the train split has {positives} positive and {negatives} negative "
                                        "proposals: stage two needs both (propose with a lower threshold or more "
                                        "marks per image, or add training positives)")
    patch_size = int(manifest["patch"]["resolved"])
    if strategy is None:
        strategy, strategy_info = make_strategy("auto")
    per_replica_batch_size(config.batch_size, strategy.num_replicas_in_sync)
    with strategy.scope():
        model = compile_classifier(config, patch_size)

    storage.makedirs(run_dir)
    info = strategy_info
    write = WriteDir(run_dir, info) if info is not None else None
    join = write.join if write is not None else (lambda name: storage.join(run_dir, name))
    backup_dir = storage.join(run_dir, "backup")
    manifest_sha = file_sha256(manifest_path)
    fingerprint = _fingerprint(config, manifest_sha, config.batch_size)
    state = cb.read_backup_state(backup_dir)
    if state and state.get("fingerprint") != fingerprint:
        raise InputError(backup_dir, "was written by a run with other settings or proposals; use a new run_dir= "
                                     "or delete it to start over")
    completed = int(state["completed_epochs"]) if state else 0
    history_path = join("history.csv")
    if completed:
        cb.truncate_history(history_path, completed)
        cb.restore_from_backup(model, backup_dir)

    summary = {
        "stage": 2,
        "command": command if command is not None else sys.argv,
        "data": {"proposals_dir": storage.abspath(proposals_dir), "manifest_sha256": manifest_sha,
                 "class_counts": {split: dict(zip(("negative", "positive"), _class_counts(manifest, split)))
                                  for split in SPLITS}},
        "proposals": {"stage_one_model": manifest["stage_one"]["model"],
                      "stage_one_sha256": manifest["stage_one"]["model_sha256"],
                      "threshold": manifest["stage_one"]["threshold"],
                      "max_marks": manifest["stage_one"]["max_marks"],
                      "prep_dir": manifest["data"]["prep_dir"], "prep_manifest_sha256": manifest["data"]["manifest_sha256"],
                      "long_side": manifest["data"]["long_side"], "patch": manifest["patch"]},
        "hyperparameters": config.to_json(),
        "model": {"patch_size": patch_size, "parameters": int(model.count_params()), "name": model.name},
        "seed": int(config.seed),
        "strategy": {**(info.to_json() if info is not None else {}), "global_batch_size": config.batch_size},
        "versions": package_versions(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    is_chief = info is None or info.is_chief
    if is_chief:
        storage.write_json(join("config.json"), {**summary, "result": None}, default=str)

    if completed < config.epochs:
        callbacks = [cb.HistoryCSV(history_path, phase="stage2"),
                     cb.EpochBackup(join("backup"), phase="stage2", extra_state={"fingerprint": fingerprint})]
        fit_classifier(model, config, proposals_dir, manifest, initial_epoch=completed, callbacks=callbacks,
                       strategy=strategy, verbose=verbose)
    _save_atomic(model, join("model.keras"))
    combination = select_combination(model, proposals_dir, "val")
    history = cb.read_history(history_path)
    summary["two_stage"] = {
        "combination": combination,
        "rule": RULE,
    }
    summary["result"] = {"run_dir": storage.abspath(run_dir), "model": storage.abspath(storage.join(run_dir, "model.keras")),
                         "epochs_completed": int(config.epochs), "resumed_from_epoch": completed,
                         "final_logs": history[-1] if history else None, "history": history,
                         "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    storage.write_json(join("config.json"), summary, default=str)
    if write is not None:
        write.cleanup()
    return summary


def read_run_config(classifier_path: str) -> dict | None:
    """Returns: RUN2/config.json beside a classifier file, or None when there is none.

    Raises:
        InputError: the file exists but is not a stage-two config.
    """
    path = storage.join(storage.dirname(storage.abspath(classifier_path)), "config.json")
    if not storage.exists(path):
        return None
    try:
        config = storage.read_json(path)
    except (OSError, ValueError):
        raise InputError(path, "not a readable JSON file") from None
    if not isinstance(config, dict) or config.get("stage") != 2:
        raise InputError(path, "not the config.json of a stage-two run (`hourglass train --stage 2`)")
    return config
