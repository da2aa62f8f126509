"""The one fit path: build, compile and fit the phases (patches, then whole images).

`hourglass train` (`keras_hourglass.training.train.train`) and every tuning trial
(`tuning.hypermodel.HourglassHyperModel`) train through these functions, so a trial
trains exactly as `hourglass train` does with the same values and seed:

- `build_model`: seeds Keras with `config.seed` and builds the model under the
  dtype policy of `config.mixed_precision` (inside the caller's strategy scope);
- `compile_model`: Adam with `make_learning_rate` (one schedule over all steps of
  all phases), one `make_loss` per model output (intermediate supervision), and
  `config.jit_compile`;
- `fit_phases`: one `model.fit` per phase of `config.phases()`, epochs counted
  globally across the phases (`initial_epoch` skips the epochs already done: a
  resumed run, a Hyperband continuation), `config.steps_per_epoch_or_default()`
  steps, the boxes repeated once per output, the input pipeline re-seeded at the
  global epoch where each `fit` starts, and the constant schedule's per-phase rate.

What is not training stays with the callers: `train()` owns RUN (strategy,
backup and resume, config.json, the run callbacks), the hypermodel owns the
search space and the trial's metrics.

Mixed precision: `"bfloat16"` / `"float16"` select Keras' `mixed_bfloat16` /
`mixed_float16` policy while the model is built, so its layers compute in low
precision with float32 variables; the heatmap heads are float32 layers
(`build_hourglass`) and the losses compute in float32 (`keras.backend.floatx()`).
With `mixed_float16`, `model.compile` wraps Adam in a `LossScaleOptimizer`.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from keras_hourglass.training.config import PRECISIONS, TrainConfig
from keras_hourglass.training.geometry import REFERENCE_LONG_SIDE, Geometry, prep_long_side, resolve_geometry

#: `dataset_fn(phase, batch_size, seed, stride, multiple) -> tf.data.Dataset` of
#: `(image [b, H, W, 1], boxes [b, MAX_BOXES, 4] heatmap frame)`, infinite; `batch_size` is
#: the batch of *one input pipeline* (the per-replica batch under a multi-replica strategy).
DatasetFn = Callable[[str, int, int, int, int], "object"]
#: `callbacks_fn(phase, epoch_offset) -> [keras.callbacks.Callback, ...]`: the callbacks of one
#: phase's `fit` (`epoch_offset`: epochs of the earlier phases; Keras counts epochs within the phase).
CallbacksFn = Callable[[str, int], list]
#: Seed step of the input pipeline per global epoch at which a `fit` starts.
DATA_SEED_STEP = 1000


def dtype_policy_name(precision: str) -> str:
    """The Keras dtype policy of a `--mixed-precision` choice.

    Args:
        precision: "float32", "bfloat16" or "float16".

    Returns:
        "float32", "mixed_bfloat16" or "mixed_float16".

    Raises:
        ValueError: `precision` is not one of `PRECISIONS`.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return "float32" if precision == "float32" else f"mixed_{precision}"


@contextlib.contextmanager
def dtype_policy_scope(precision: str) -> Iterator[None]:
    """Sets Keras' global dtype policy for `precision` inside the block, then restores the previous one.

    Layers keep the policy they were created with (and save it in their config), so
    building a model inside the block is enough.

    Args:
        precision: "float32", "bfloat16" or "float16".
    """
    import keras

    name = dtype_policy_name(precision)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def precision_summary(model) -> dict:
    """What config.json records about the precision of a built (or compiled) model.

    Args:
        model: a model from `build_model`.

    Returns:
        {"dtype_policy", "compute_dtype", "variable_dtype", "output_dtypes", "loss_scale"}
        (`loss_scale`: Keras wraps the optimizer in a `LossScaleOptimizer`, mixed_float16).
    """
    policy = model.dtype_policy
    return {"dtype_policy": policy.name, "compute_dtype": policy.compute_dtype,
            "variable_dtype": policy.variable_dtype,
            "output_dtypes": [str(getattr(t, "dtype", "float32")) for t in model.outputs],
            "loss_scale": policy.name == "mixed_float16"}


def build_model(config: TrainConfig, model_fn: Callable[[], object] | None = None):
    """Seeds Keras with `config.seed` and builds the model under `config.mixed_precision`.

    Call it inside the strategy's scope.

    Args:
        config: the run's settings (`seed`, `mixed_precision`, `preset`, `model`).
        model_fn: `() -> keras.Model` (default: `build_hourglass(config.preset, **config.model)`).

    Returns:
        The (uncompiled) model.
    """
    import keras

    keras.utils.set_random_seed(int(config.seed))
    with dtype_policy_scope(config.mixed_precision):
        if model_fn is not None:
            return model_fn()
        from keras_hourglass.model.hourglass import build_hourglass

        return build_hourglass(config.preset, **config.model)


def run_geometry(config: TrainConfig, prep_dir: str | None, stride: int, multiple: int,
                 long_side: int | None = None) -> Geometry:
    """Resolves `config`'s reference-pixel geometry against PREP's long side (or `long_side`).

    Without PREP and `long_side` the reference scale is assumed (reference pixels = pixels).
    """
    if long_side is None:
        long_side = prep_long_side(prep_dir) if prep_dir else REFERENCE_LONG_SIDE
    return resolve_geometry(config, long_side=int(long_side), stride=stride, input_multiple=multiple)


def make_loss(config: TrainConfig, geometry: Geometry):
    """The Keras loss for `config.loss`, with the geometry resolved for this run (heatmap pixels)."""
    from keras_hourglass.losses import GaussianL2Loss, HypersensitiveLoss, PenaltyReducedFocalLoss

    if config.loss == "l2":
        return GaussianL2Loss(sigma=geometry.target_sigma)
    if config.loss == "focal":
        return PenaltyReducedFocalLoss(sigma=geometry.target_sigma)
    return HypersensitiveLoss(omega=config.omega, top_k=int(config.top_k), patch_size=geometry.patch_size,
                              mask_size=geometry.mask_size, sigmas=geometry.sigmas, recenter=config.recenter,
                              recenter_region=config.recenter_region)


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


def compile_model(model, config: TrainConfig, geometry: Geometry, *, run_eagerly: bool = False) -> None:
    """Compiles `model` for both phases: Adam (`make_learning_rate`) and one loss per output.

    One compile serves both phases: the loss is the same and the model is fully
    convolutional, so phase 2 only retraces the step for the whole-image shapes.
    Call it inside the strategy's scope.

    Args:
        model: a model from `build_model`.
        config: the run's settings.
        geometry: the resolved geometry (`run_geometry`).
        run_eagerly: no graph tracing (smoke searches, debugging).
    """
    import keras

    losses = [make_loss(config, geometry) for _ in model.outputs]
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=make_learning_rate(config)),
                  loss=losses if len(losses) > 1 else losses[0],
                  jit_compile="auto" if config.jit_compile is None else config.jit_compile,
                  run_eagerly=bool(run_eagerly))


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
            seed=seed, augment=config.augment, zoom=config.zoom, rotate=bool(config.rotate),
            images_per_epoch=config.images_per_epoch)

    return dataset_fn


def prep_validation(prep_dir: str, config: TrainConfig, input_multiple: int):
    """PREP/val as `froc_callback` reads it: one image per shard in turn when `config.val_images` takes a
    subset (its first N must mix every stratum), file order otherwise.

    Raises:
        InputError: PREP has no val TFRecords.
    """
    from keras_hourglass.data.pipeline import evaluation_dataset

    return evaluation_dataset(prep_dir, split="val", input_multiple=input_multiple,
                              interleave_shards=bool(config.val_images))


def froc_callback(validation, config: TrainConfig):
    """The `FrocCallback` on the first `config.val_images` images of `validation` (all when None).

    Args:
        validation: evaluation dicts, batch 1 (a dataset or a list).
        config: the run's settings (`val_images`, `target_fpi`).

    Returns:
        `(FrocCallback, the validation images it uses)`.
    """
    import itertools

    from keras_hourglass.evaluation.callback import FrocCallback

    if config.val_images:
        count = int(config.val_images)
        validation = validation.take(count) if hasattr(validation, "take") else \
            list(itertools.islice(iter(validation), count))
    return FrocCallback(validation, target_fpi=float(config.target_fpi)), validation


def _targets_for(num_outputs: int):
    """Repeats the boxes once per model output (intermediate supervision)."""
    def to_targets(image, boxes):
        if num_outputs == 1:
            return image, boxes
        return image, tuple(boxes for _ in range(num_outputs))
    return to_targets


def distributed_dataset(strategy, dataset_fn: DatasetFn, phase: str, global_batch: int, seed: int,
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


def phase_learning_rate(config: TrainConfig, phase: str) -> float | None:
    """The constant schedule's rate for `phase` (None for the cosine schedule, which spans the phases)."""
    if config.lr_schedule != "constant":
        return None
    if phase == "full" and config.full_learning_rate is not None:
        return float(config.full_learning_rate)
    return float(config.learning_rate)


def fit_phases(model, config: TrainConfig, dataset_fn: DatasetFn, *, callbacks_fn: CallbacksFn | None = None,
               initial_epoch: int = 0, strategy=None, verbose="auto", **fit_kwargs) -> dict[str, list]:
    """Fits a compiled model through the phases of `config` (patches, then whole images).

    Args:
        model: a model from `build_model`, compiled with `compile_model`.
        config: the run's settings (phases and epochs, steps, batch size, seed, schedule).
        dataset_fn: the training data (see `DatasetFn`).
        callbacks_fn: the callbacks of each phase's `fit` (see `CallbacksFn`).
        initial_epoch: global epochs already trained (skipped).
        strategy: the `tf.distribute.Strategy` (default: the model's).
        verbose: Keras `fit` verbosity.
        **fit_kwargs: more `model.fit` arguments.

    Returns:
        The Keras history of the epochs trained, all phases in order: {metric: [value per epoch]}.

    Raises:
        ValueError: `initial_epoch` is negative.
    """
    from keras_hourglass.model.hourglass import model_input_multiple, model_stride
    from keras_hourglass.training.multiworker_fix import multiworker_fit_fix

    if initial_epoch < 0:
        raise ValueError(f"initial_epoch must be >= 0, got {initial_epoch}")
    strategy = strategy if strategy is not None else model.distribute_strategy
    stride, multiple, num_outputs = model_stride(model), model_input_multiple(model), len(model.outputs)
    steps = config.steps_per_epoch_or_default()
    history: dict[str, list] = {}
    offset = 0
    for phase, epochs in config.phases():
        if initial_epoch >= offset + epochs:
            offset += epochs
            continue
        rate = phase_learning_rate(config, phase)
        if rate is not None:
            model.optimizer.learning_rate.assign(rate)
        initial = max(0, initial_epoch - offset)
        # A resumed run re-seeds its pipeline, so it does not replay the batches already seen.
        seed = int(config.seed) + DATA_SEED_STEP * (offset + initial)
        data = distributed_dataset(strategy, dataset_fn, phase, int(config.batch_size), seed, stride, multiple,
                                   num_outputs)
        with multiworker_fit_fix(strategy):
            result = model.fit(data, epochs=epochs, initial_epoch=initial, steps_per_epoch=steps,
                               callbacks=callbacks_fn(phase, offset) if callbacks_fn else None,
                               verbose=verbose, shuffle=False, **fit_kwargs)
        for name, values in result.history.items():
            history.setdefault(name, []).extend(values)
        offset += epochs
    return history
