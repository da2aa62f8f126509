"""Two-phase training of the Hourglass (patches, then whole images), distributed and resumable.

`train()` is what `hourglass train` runs:

1. choose the strategy (`distribution.make_strategy`) and build the model and
   one Adam optimizer under its scope (seeded);
2. restore the last backup of RUN/backup if there is one (weights, optimizer
   state, number of completed epochs) and skip what is done;
3. for each phase: compile, then `fit` (inside `multiworker_fit_fix`) with the
   callbacks FrocCallback -> HistoryCSV -> TensorBoardLogger -> BestCheckpoint
   -> EpochBackup (epochs numbered globally across the phases);
4. write RUN/model.keras (the inference model: image -> final heatmap) and
   RUN/config.json.

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
import os
import platform
import sys
import time
from typing import Callable

from keras_hourglass.errors import InputError
from keras_hourglass.training.config import TrainConfig, manifest_hash
from keras_hourglass.training.geometry import REFERENCE_LONG_SIDE, Geometry, prep_long_side, resolve_geometry

log = logging.getLogger(__name__)

#: `dataset_fn(phase, batch_size, seed, stride, multiple) -> tf.data.Dataset` of
#: `(image [b, H, W, 1], boxes [b, MAX_BOXES, 4] heatmap frame)`, infinite; `batch_size` is
#: the batch of *one input pipeline* (the per-replica batch under a strategy).
DatasetFn = Callable[[str, int, int, int, int], "object"]


def package_versions() -> dict:
    """Versions of the packages that determine the result."""
    import keras
    import numpy
    import tensorflow as tf

    from keras_hourglass.version import __version__

    return {"keras_hourglass": __version__, "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": numpy.__version__, "python": platform.python_version()}


def make_loss(config: TrainConfig, geometry: Geometry):
    """The Keras loss for `config.loss`, with the geometry resolved for this run (heatmap pixels)."""
    from keras_hourglass.losses import GaussianL2Loss, HypersensitiveLoss, PenaltyReducedFocalLoss

    if config.loss == "l2":
        return GaussianL2Loss(sigma=geometry.target_sigma)
    if config.loss == "focal":
        return PenaltyReducedFocalLoss(sigma=geometry.target_sigma)
    return HypersensitiveLoss(omega=config.omega, top_k=int(config.top_k), patch_size=geometry.patch_size,
                              mask_size=geometry.mask_size, sigmas=geometry.sigmas, recenter=config.recenter)


def make_learning_rate(config: TrainConfig):
    """Adam's learning rate: a float (constant) or a Keras warmup + cosine-decay schedule over all phases."""
    import keras

    if config.lr_schedule == "constant":
        return float(config.learning_rate)
    total = config.total_steps()
    warmup = min(1000, total // 20) if config.warmup_steps is None else min(int(config.warmup_steps), total)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else float(config.learning_rate),
        decay_steps=max(1, total - warmup), alpha=float(config.min_lr_fraction),
        warmup_target=float(config.learning_rate) if warmup else None, warmup_steps=warmup)


def run_geometry(config: TrainConfig, prep_dir: str | None, stride: int, multiple: int,
                 long_side: int | None = None) -> Geometry:
    """Resolves `config`'s reference-pixel geometry against PREP's long side (or `long_side`).

    Without PREP and `long_side` the reference scale is assumed (reference pixels = pixels).
    """
    if long_side is None:
        long_side = prep_long_side(prep_dir) if prep_dir else REFERENCE_LONG_SIDE
    return resolve_geometry(config, long_side=int(long_side), stride=stride, input_multiple=multiple)


def prep_dataset_fn(prep_dir: str, config: TrainConfig, crop_size: int) -> DatasetFn:
    """The default `DatasetFn`: `keras_hourglass.data.pipeline.training_dataset` on PREP/train.

    Args:
        prep_dir: PREP.
        config: the run's settings (max_boxes, augment, images_per_epoch).
        crop_size: the resolved phase-1 crop side in image pixels (`Geometry.crop_size`).
    """
    from keras_hourglass.data import pipeline

    def dataset_fn(phase, batch_size, seed, stride, multiple):
        return pipeline.training_dataset(
            prep_dir, split="train", phase=phase, batch_size=batch_size, stride=stride,
            input_multiple=multiple, patch_size=int(crop_size), max_boxes=config.max_boxes,
            seed=seed, augment=config.augment, images_per_epoch=config.images_per_epoch)

    return dataset_fn


def _targets_for(num_outputs: int):
    """Repeats the boxes once per model output (intermediate supervision)."""
    def to_targets(image, boxes):
        if num_outputs == 1:
            return image, boxes
        return image, tuple(boxes for _ in range(num_outputs))
    return to_targets


def _distributed_dataset(strategy, dataset_fn: DatasetFn, phase: str, global_batch: int, seed: int,
                         stride: int, multiple: int, num_outputs: int):
    """The training data for `fit`: one input pipeline per worker, each batched per replica.

    Each worker's pipeline is seeded with `seed + input_pipeline_id` so workers
    draw different images; within a worker the replicas take consecutive
    per-replica batches, i.e. the global batch is split across replicas.
    """
    import tensorflow as tf

    from keras_hourglass.training.distribution import per_replica_batch_size

    per_replica_batch_size(global_batch, strategy.num_replicas_in_sync)
    to_targets = _targets_for(num_outputs)
    if strategy.num_replicas_in_sync == 1 and not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return dataset_fn(phase, global_batch, seed, stride, multiple).map(to_targets)

    def from_context(context: tf.distribute.InputContext):
        batch = context.get_per_replica_batch_size(global_batch)
        dataset = dataset_fn(phase, batch, seed + context.input_pipeline_id, stride, multiple)
        return dataset.map(to_targets).prefetch(2)

    return strategy.distribute_datasets_from_function(from_context)


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
    from keras_hourglass.evaluation.callback import FrocCallback

    if validation is None:
        if prep_dir is None or config.val_images == 0:
            return None, None
        from keras_hourglass.data import pipeline

        try:
            validation = pipeline.evaluation_dataset(prep_dir, split="val", input_multiple=multiple)
        except InputError as err:
            print(f"hourglass train: warning: {err}: training without validation (no val_sensitivity, "
                  "no best.keras)", file=sys.stderr)
            return None, None
    if config.val_images:
        count = int(config.val_images)
        validation = validation.take(count) if hasattr(validation, "take") else \
            list(itertools.islice(iter(validation), count))
    return FrocCallback(validation, target_fpi=config.target_fpi), _fixed_images(validation)


def _fingerprint(summary: dict) -> str:
    """Hash of what must not change between a run and its resumption."""
    import hashlib

    keep = {k: summary[k] for k in ("model", "loss", "seed")}
    keep["manifest_sha256"] = summary["data"]["manifest_sha256"]
    keep["hyperparameters"] = {k: v for k, v in summary["hyperparameters"].items()
                               if k not in ("val_images", "target_fpi")}
    keep["global_batch_size"] = summary["strategy"]["global_batch_size"]
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _save_atomic(model, path: str) -> None:
    tmp = os.path.join(os.path.dirname(path), f"tmp-{os.getpid()}-{os.path.basename(path)}")
    model.save(tmp)
    os.replace(tmp, path)


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
    import keras
    import tensorflow as tf

    from keras_hourglass.model.hourglass import inference_model, model_input_multiple, model_stride, resolve_config
    from keras_hourglass.training import callbacks as cb
    from keras_hourglass.training.distribution import StrategyInfo, WriteDir, make_strategy
    from keras_hourglass.training.multiworker_fix import keras_needs_fix, multiworker_fit_fix

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
            raise InputError("--data", "no prepared data given")
        if not os.path.isdir(prep_dir):
            raise InputError(prep_dir, "not a directory")
    try:
        model_config = resolve_config(config.preset, **config.model) if model_fn is None else None
    except ValueError as err:
        raise InputError("--model-option", str(err)) from None

    keras.utils.set_random_seed(int(config.seed))
    with strategy.scope():
        if model_fn is not None:
            model = model_fn()
        else:
            from keras_hourglass.model.hourglass import build_hourglass

            model = build_hourglass(config.preset, **config.model)
        optimizer = keras.optimizers.Adam(learning_rate=make_learning_rate(config))
    stride = model_stride(model)
    multiple = model_input_multiple(model)
    num_outputs = len(model.outputs)
    final_model = inference_model(model)
    geometry = run_geometry(config, prep_dir, stride, multiple, long_side)
    if geometry.crop_clamped and config.epochs_of("patch"):
        log.warning("crop %s reference px is larger than the %d-px images: clamped to %d px", config.crop_size,
                    geometry.long_side, geometry.crop_size)
    if dataset_fn is None:
        dataset_fn = prep_dataset_fn(prep_dir, config, geometry.crop_size)
    os.makedirs(run_dir, exist_ok=True)
    write = WriteDir(run_dir, info)
    backup_dir = os.path.join(run_dir, "backup")  # every worker restores from the chief's backup

    summary = {
        "command": command if command is not None else sys.argv,
        "data": {"prep_dir": os.path.abspath(prep_dir) if prep_dir else None,
                 "manifest_sha256": manifest_hash(prep_dir) if prep_dir else None},
        "hyperparameters": config.to_json(),
        "model": {"preset": config.preset, "config": model_config, "output_stride": stride,
                  "input_multiple": multiple, "num_outputs": num_outputs},
        "geometry": {"unit": f"reference pixels (long side {REFERENCE_LONG_SIDE}, heatmap stride 4)",
                     "given": {k: v for k, v in config.to_json().items()
                               if k in ("patch_size", "mask_size", "sigmas", "target_sigma", "crop_size")},
                     "resolved": geometry.to_json()},
        "loss": make_loss(config, geometry).get_config(),
        "seed": int(config.seed),
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
                                     "use a new --out or delete it to start over")
    completed = int(state["completed_epochs"]) if state else 0
    if info.is_chief:
        with open(write.join("config.json"), "w") as handle:
            json.dump({**summary, "result": None}, handle, indent=2, default=str)
    _epoch_agreement(strategy, completed)
    resumed_from = completed
    history_path = write.join("history.csv")
    if completed:
        cb.truncate_history(history_path, completed)
        log.info("resuming from %s after epoch %d", backup_dir, completed)

    froc_callback, fixed_images = _validation(prep_dir, config, multiple, validation)
    steps = config.steps_per_epoch_or_default()
    losses = [make_loss(config, geometry) for _ in range(num_outputs)]
    # One compile for both phases: the loss is the same and the model is fully
    # convolutional, so phase 2 only retraces the step for the whole-image shapes.
    with strategy.scope():
        model.compile(optimizer=optimizer, loss=losses if num_outputs > 1 else losses[0],
                      jit_compile="auto" if config.jit_compile is None else config.jit_compile)
        if completed:
            cb.restore_from_backup(model, backup_dir)
    offset = 0
    for phase, epochs in config.phases():
        if completed >= offset + epochs:
            offset += epochs
            continue
        if config.lr_schedule == "constant":
            rate = config.learning_rate if phase == "patch" or config.full_learning_rate is None \
                else config.full_learning_rate
            optimizer.learning_rate.assign(rate)
        initial = completed - offset
        # A resumed run re-seeds its pipeline, so it does not replay the batches already seen.
        seed = int(config.seed) + 1000 * (offset + initial)
        data = _distributed_dataset(strategy, dataset_fn, phase, int(config.batch_size), seed, stride,
                                    multiple, num_outputs)
        phase_callbacks = [c for c in (froc_callback,) if c is not None]
        phase_callbacks += [
            cb.HistoryCSV(history_path, epoch_offset=offset, phase=phase),
            cb.TensorBoardLogger(write.join("logs"), epoch_offset=offset, images=fixed_images,
                                 heatmap_fn=lambda images: final_model(images, training=False)),
            cb.BestCheckpoint(write.join("best.keras"), write.join("best.json"),
                              save_fn=lambda path: final_model.save(path), epoch_offset=offset),
            *(callbacks or []),
            cb.EpochBackup(write.join("backup"), epoch_offset=offset, phase=phase,
                           extra_state={"fingerprint": fingerprint}),
        ]
        with multiworker_fit_fix(strategy):
            model.fit(data, epochs=epochs, initial_epoch=initial, steps_per_epoch=steps,
                      callbacks=phase_callbacks, verbose=verbose, shuffle=False)
        offset += epochs
        completed = offset

    _save_atomic(final_model, write.join("model.keras"))
    history = cb.read_history(history_path)
    best_path = write.join("best.json")
    best = json.load(open(best_path)) if os.path.exists(best_path) else None
    summary["result"] = {
        "run_dir": os.path.abspath(run_dir),
        "model": os.path.abspath(os.path.join(run_dir, "model.keras")),
        "best": {**best, "path": os.path.abspath(os.path.join(run_dir, "best.keras"))} if best else None,
        "epochs_completed": completed,
        "resumed_from_epoch": resumed_from,
        "final_logs": history[-1] if history else None,
        "history": history,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "write_dir": write.path,
    }
    with open(write.join("config.json"), "w") as handle:
        json.dump(summary, handle, indent=2, default=str)
    write.cleanup()
    return (summary, model) if return_model else summary
