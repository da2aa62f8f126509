"""Two-phase training of the Hourglass (patches, then whole images), distributed and resumable.

`train()` is what `hourglass train` runs:

1. choose the strategy (`distribution.make_strategy`); under its scope build
   (seeded, in the `--mixed-precision` dtype policy) and compile the model with
   `training.fit.build_model` / `compile_model`;
2. restore the last backup of RUN/backup if there is one (weights, optimizer
   state, number of completed epochs) and skip what is done;
3. fit the phases with `training.fit.fit_phases` (the path every tuning trial
   also takes), with the callbacks FrocCallback -> HistoryCSV ->
   TensorBoardLogger -> BestCheckpoint -> EpochBackup (epochs numbered globally
   across the phases);
4. write RUN/model.keras (the inference model: image -> final heatmap) and
   RUN/config.json.

The contract travels forward: PREP's manifest ``preprocessing`` block is read
once (`geometry.prep_preprocessing`) and recorded in config.json
(``preprocessing``) and inside model.keras and best.keras
(`modelfile.embed_preprocessing`), so export and serving never need PREP.

Only the chief writes into RUN; other workers write the same files into a
temporary directory that is deleted (`distribution.WriteDir`). Resuming needs
RUN to be on storage every worker can read (all workers restore from the
chief's RUN/backup), which is also what the TensorFlow multi-worker guide
assumes for checkpoints.
"""

from __future__ import annotations

import itertools
import json
import logging
import platform
import sys
import time
import warnings
from typing import Callable

from keras_hourglass import storage
from keras_hourglass.errors import ArgumentError, InputError
from keras_hourglass.evaluation import selection
from keras_hourglass.training.config import TrainConfig, manifest_hash
from keras_hourglass.training.fit import (DatasetFn, build_model, compile_model, fit_phases, froc_callback,
                                          make_learning_rate, make_loss, precision_summary, prep_dataset_fn,
                                          prep_validation, run_geometry)
from keras_hourglass.modelfile import embed_preprocessing
from keras_hourglass.training.geometry import REFERENCE_LONG_SIDE, prep_preprocessing

__all__ = ["DatasetFn", "make_learning_rate", "make_loss", "package_versions", "prep_dataset_fn", "run_geometry",
           "train"]

log = logging.getLogger(__name__)


def package_versions() -> dict:
    """Versions of the packages that determine the result."""
    import keras
    import numpy
    import tensorflow as tf

    from keras_hourglass.version import __version__

    return {"keras_hourglass": __version__, "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": numpy.__version__, "python": platform.python_version()}


def _epoch_agreement(strategy, completed: int) -> None:
    """Fails if the workers restored different epoch counts (RUN not shared)."""
    import tensorflow as tf

    from keras_hourglass.training.multiworker_fix import in_multi_worker_mode

    if not in_multi_worker_mode(strategy):
        return

    @tf.function
    def gather():
        value = tf.constant([float(completed)])
        return tf.distribute.get_replica_context().all_gather(value, axis=0)

    values = strategy.experimental_local_results(strategy.run(gather))[0].numpy()
    low, high = float(values.min()), float(values.max())
    if low != high:
        raise InputError("backup", f"workers restored different epochs ({int(low)} vs {int(high)}): RUN must be "
                                   "on storage shared by every worker")


def _fixed_images(dataset, count: int = 4):
    """The first `count` images of an evaluation dataset, zero-padded to one size: `[N, H, W, 1]`."""
    import tensorflow as tf

    images = [tf.convert_to_tensor(e["image"] if isinstance(e, dict) else e[0], tf.float32)
              for e in itertools.islice(iter(dataset), count)]
    images = [i[None] if i.shape.rank == 3 else i for i in images]
    if not images:
        return None
    height = max(int(i.shape[1]) for i in images)
    width = max(int(i.shape[2]) for i in images)
    return tf.concat([tf.image.pad_to_bounding_box(i, 0, 0, height, width) for i in images], axis=0)


def _validation(prep_dir: str | None, config: TrainConfig, multiple: int, validation):
    """(FrocCallback or None, fixed image batch for TensorBoard or None).

    The validation set is `validation` (a dataset of evaluation dicts) or PREP/val
    (its first `config.val_images` images; all when None; none when 0).
    """
    if validation is None:
        if prep_dir is None or config.val_images == 0:
            return None, None
        try:
            validation = prep_validation(prep_dir, config, multiple)
        except InputError as err:
            warnings.warn(f"{err}: training without validation (no val_sensitivity, no best.keras)",
                          stacklevel=2)
            return None, None
    callback, validation = froc_callback(validation, config)
    return callback, _fixed_images(validation)


def _fingerprint(summary: dict) -> str:
    """Hash of what must not change between a run and its resumption."""
    import hashlib

    keep = {k: summary[k] for k in ("model", "loss", "seed")}
    keep["manifest_sha256"] = summary["data"]["manifest_sha256"]
    keep["hyperparameters"] = {k: v for k, v in summary["hyperparameters"].items()
                               if k not in ("val_images", "target_fpi")}
    if keep["hyperparameters"].get("mixed_precision") == "float32":  # the default: backups from before the flag
        del keep["hyperparameters"]["mixed_precision"]
    keep["global_batch_size"] = summary["strategy"]["global_batch_size"]
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _save_model(model, path: str, preprocessing: dict | None) -> None:
    """Saves an inference model (`path` is a local temporary file of `storage.replacing`) plus the
    preprocessing entry.

    The file holds the graph and weights only, never a compile state: a one-stack model is its own
    inference model and is compiled with the training loss and optimizer, which would make the file need
    `keras_hourglass.losses` to load and carry the optimizer's slots. An uncompiled functional view of the
    same layers is saved instead.
    """
    import keras

    if getattr(model, "optimizer", None) is not None:
        inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
        outputs = model.outputs[0] if len(model.outputs) == 1 else model.outputs
        model = keras.Model(inputs, outputs, name=model.name)
    model.save(path)
    if preprocessing:
        embed_preprocessing(path, preprocessing)


def _save_atomic(model, path: str, preprocessing: dict | None = None) -> None:
    with storage.replacing(path, keep_suffix=True) as tmp:  # Keras needs the .keras suffix
        _save_model(model, tmp, preprocessing)


def run_preprocessing(prep_dir: str | None, long_side: int | None) -> dict | None:
    """The preprocessing block a run records: PREP's manifest block (read once), its long side replaced by
    an explicit `long_side`; `{"long_side": long_side}` without PREP; None when neither is known."""
    block = prep_preprocessing(prep_dir) if prep_dir else {}
    if long_side is not None:
        block = {**block, "long_side": int(long_side)}
        if "size" in block:
            block["size"] = int(long_side)
    return block or None


def train(config: TrainConfig, run_dir: str, *, prep_dir: str | None = None, strategy=None,
          strategy_info=None, strategy_name: str = "auto", dataset_fn: DatasetFn | None = None,
          validation=None, model_fn: Callable[[], object] | None = None, verbose="auto",
          command: list[str] | None = None, callbacks: list | None = None, return_model: bool = False,
          long_side: int | None = None):
    """Trains (or resumes training) and writes the run directory.

    Args:
        config: the hyper-parameters (validated here).
        run_dir: RUN; created if needed; an existing RUN/backup is resumed from.
        prep_dir: PREP (prepared data); needed unless `dataset_fn` is given.
        strategy: a ready `tf.distribute.Strategy` (else made from `strategy_name`;
            create it before any other TensorFlow work when it is multi-worker).
        strategy_info: the `StrategyInfo` of `strategy` (from `make_strategy`).
        strategy_name: `auto`, `default`, `mirrored` or `multi-worker`.
        dataset_fn: training data (default: `prep_dataset_fn(prep_dir, config)`).
        validation: evaluation dicts for `FrocCallback` (a dataset or a list, batch 1; default:
            PREP/val); its first `config.val_images` images are used (all when None, none when 0
            and `validation` is None).
        model_fn: `() -> keras.Model` (default: `build_hourglass(config.preset, **config.model)`);
            called under the strategy scope.
        verbose: Keras `fit` verbosity ("auto" = progress bar, 2 = one line per epoch, 0 = silent).
        command: the command line, for config.json.
        callbacks: more Keras callbacks, run after the built-in ones but before the backup
            (their `epoch` argument counts within the phase).
        return_model: also return the trained (training) model.
        long_side: the training images' long side, to resolve the reference-pixel geometry
            (default: PREP's manifest; the reference 1536 without PREP).

    Returns:
        The summary also written to RUN/config.json (its `result` part filled; its
        `result.write_dir` says where this task wrote), or `(summary, model)`.
    """
    from keras_hourglass.model.hourglass import inference_model, model_input_multiple, model_stride, resolve_config
    from keras_hourglass.training import callbacks as cb
    from keras_hourglass.training.distribution import StrategyInfo, WriteDir, make_strategy
    from keras_hourglass.training.multiworker_fix import keras_needs_fix

    config.validate()
    if strategy is None:
        strategy, info = make_strategy(strategy_name)
    elif strategy_info is not None:
        info = strategy_info
    else:
        info = StrategyInfo(name=type(strategy).__name__, num_replicas=int(strategy.num_replicas_in_sync),
                            num_workers=1, task_type=None, task_id=None, is_chief=True, devices=())
    if dataset_fn is None:
        if prep_dir is None:
            raise ArgumentError("prep_dir", "no prepared data given")
        if not storage.isdir(prep_dir):
            raise InputError(prep_dir, "not a directory")
    try:
        model_config = resolve_config(config.preset, **config.model) if model_fn is None else None
    except ValueError as err:
        raise ArgumentError("model", str(err)) from None

    with strategy.scope():
        model = build_model(config, model_fn)
    stride = model_stride(model)
    multiple = model_input_multiple(model)
    num_outputs = len(model.outputs)
    final_model = inference_model(model)
    preprocessing = run_preprocessing(prep_dir, long_side)
    if long_side is None and preprocessing:
        long_side = preprocessing["long_side"]
    geometry = run_geometry(config, prep_dir, stride, multiple, long_side)
    if geometry.crop_clamped and config.epochs_of("patch"):
        log.warning("crop %s reference px is larger than the %d-px images: clamped to %d px", config.crop_size,
                    geometry.long_side, geometry.crop_size)
    if dataset_fn is None:
        dataset_fn = prep_dataset_fn(prep_dir, config, geometry.crop_size)
    storage.makedirs(run_dir)
    write = WriteDir(run_dir, info)
    backup_dir = storage.join(run_dir, "backup")  # every worker restores from the chief's backup

    summary = {
        "command": command if command is not None else sys.argv,
        "data": {"prep_dir": storage.abspath(prep_dir) if prep_dir else None,
                 "manifest_sha256": manifest_hash(prep_dir) if prep_dir else None},
        "preprocessing": preprocessing,
        "hyperparameters": config.to_json(),
        "model": {"preset": config.preset, "config": model_config, "output_stride": stride,
                  "input_multiple": multiple, "num_outputs": num_outputs},
        "geometry": {"unit": f"reference pixels (long side {REFERENCE_LONG_SIDE}, heatmap stride 4)",
                     "given": {k: v for k, v in config.to_json().items()
                               if k in ("patch_size", "mask_size", "sigmas", "target_sigma", "crop_size")},
                     "resolved": geometry.to_json()},
        "loss": make_loss(config, geometry).get_config(),
        "seed": int(config.seed),
        "precision": {"mixed_precision": config.mixed_precision, **precision_summary(model)},
        "strategy": {**info.to_json(), "global_batch_size": config.batch_size,
                     "per_replica_batch_size": config.batch_size // max(1, info.num_replicas),
                     "learning_rate_scaled": False,
                     "multiworker_fit_fix": bool(info.name == "multi-worker" and keras_needs_fix())},
        "versions": package_versions(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }

    fingerprint = _fingerprint(summary)
    state = cb.read_backup_state(backup_dir)
    if state and state.get("fingerprint") != fingerprint:
        raise InputError(backup_dir, "was written by a run with other hyper-parameters, model or data; "
                                     "use a new run_dir= or delete it to start over")
    completed = int(state["completed_epochs"]) if state else 0
    if info.is_chief:
        storage.write_json(write.join("config.json"), {**summary, "result": None}, default=str)
    _epoch_agreement(strategy, completed)
    resumed_from = completed
    history_path = write.join("history.csv")
    if completed:
        cb.truncate_history(history_path, completed)
        log.info("resuming from %s after epoch %d", backup_dir, completed)

    froc, fixed_images = _validation(prep_dir, config, multiple, validation)
    with strategy.scope():
        compile_model(model, config, geometry)
        if completed:
            cb.restore_from_backup(model, backup_dir)

    def phase_callbacks(phase: str, offset: int) -> list:
        return [*((froc,) if froc is not None else ()),
                cb.HistoryCSV(history_path, epoch_offset=offset, phase=phase),
                cb.TensorBoardLogger(write.join("logs"), epoch_offset=offset, images=fixed_images,
                                     heatmap_fn=lambda images: final_model(images, training=False)),
                cb.BestCheckpoint(write.join("best.keras"), write.join("best.json"),
                                  save_fn=lambda path: _save_model(final_model, path, preprocessing),
                                  epoch_offset=offset, rank=selection.epoch_rank_key),
                *(callbacks or []),
                cb.EpochBackup(write.join("backup"), epoch_offset=offset, phase=phase,
                               extra_state={"fingerprint": fingerprint})]

    fit_phases(model, config, dataset_fn, callbacks_fn=phase_callbacks, initial_epoch=completed,
               strategy=strategy, verbose=verbose)
    completed = max(completed, sum(epochs for _, epochs in config.phases()))

    _save_atomic(final_model, write.join("model.keras"), preprocessing)
    history = cb.read_history(history_path)
    best_path = write.join("best.json")
    best = None
    if storage.exists(best_path):
        best = storage.read_json(best_path)
    summary["result"] = {
        "run_dir": storage.abspath(run_dir),
        "model": storage.abspath(storage.join(run_dir, "model.keras")),
        "best": {**best, "path": storage.abspath(storage.join(run_dir, "best.keras"))} if best else None,
        "epochs_completed": completed,
        "resumed_from_epoch": resumed_from,
        "final_logs": history[-1] if history else None,
        "history": history,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "write_dir": write.path,
    }
    storage.write_json(write.join("config.json"), summary, default=str)
    write.cleanup()
    return (summary, model) if return_model else summary
