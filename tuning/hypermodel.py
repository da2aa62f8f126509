"""`HourglassHyperModel`: the Hourglass + HypersensitiveLoss as a KerasTuner HyperModel.

`build(hp)` declares the search space (`tuning.search_space.SearchSpace`) and
returns `build_hourglass(preset)` compiled with `HypersensitiveLoss(omega,
top_k, patch_size, sigmas)` and Adam(learning_rate). The trial's values are
applied to a `keras_hourglass.training.config.TrainConfig` with the same
`apply_hparams` and `make_loss` that `hourglass train --hparams` uses, so a
parameter left out of the space takes the training default, and
`best_hyperparameters.json` retrains exactly the loss that was tuned.
`fit(hp, model)` trains on the pipeline's training dataset with the
`FrocCallback` on the validation split and returns the metrics of the best
epoch (objective `val_sensitivity`, then the tie-breakers of
`tuning.objective`) as a dict, which KerasTuner records for the trial.

A trial may itself use a distribution strategy: pass one to the tuner
(`tuning.search.make_tuner(..., distribution_strategy=...)`,
`hourglass tune --strategy mirrored`); KerasTuner calls `build` under
`strategy.scope()`, so the model, the optimizer and the loss are created on
the strategy and `fit` runs data-parallel. `--batch-size` is the global batch.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import keras
import keras_tuner

from tuning import objective as objective_lib
from tuning.search_space import SearchSpace

#: Signature of a training-data factory: (settings) -> infinite tf.data.Dataset of (image, boxes).
TrainDataFn = Callable[[Mapping[str, Any]], Any]
#: Signature of a validation-callback factory: (settings) -> keras callback writing val_sensitivity.
CallbackFn = Callable[[Mapping[str, Any]], keras.callbacks.Callback]
_EXECUTION_SEED_STEP = 1009


def _num_outputs(model: keras.Model) -> int:
    return len(model.outputs)


class HourglassHyperModel(keras_tuner.HyperModel):
    """Builds and trains one Hourglass per trial.

    Args:
        data_dir: the prepared data directory (`hourglass prepare` / `hourglass synth`).
        space: the search space (default `SearchSpace()`).
        preset: model preset, "tiny" or "paper".
        model_overrides: extra `build_hourglass` options (e.g. {"depth": 2}).
        phase: "patch" or "full" (the training pipeline's phase).
        batch_size: global batch size.
        epochs: epochs per execution (Hyperband passes its own).
        steps_per_epoch: training steps per epoch (default: the training default,
            `images_per_epoch // batch_size`).
        crop_size: patch-phase crop side in image pixels (default: the training default).
        max_boxes: rows of the box tensor.
        target_fpi: FPI at which `val_sensitivity` is read.
        val_images: validate on the first N images of the val split (None: all).
        seed: seeds the weights and the data order (every trial starts from the same
            initial weights, so trials differ only by their hyper-parameters; execution i of
            a trial uses seed + 1009 * i).
        jit_compile: XLA for the train step (None: Keras' "auto", as `hourglass train`).
        train_data: optional factory replacing the pipeline (custom data, tests); it gets
            {"data_dir", "phase", "batch_size", "stride", "input_multiple", "crop_size",
            "max_boxes", "seed", "target_fpi"} and returns an infinite dataset of
            (image, boxes).
        validation_callback: optional factory replacing `FrocCallback` (same settings dict);
            the callback must write `val_sensitivity` into the epoch logs.
        run_eagerly: compile with `run_eagerly=True`: no graph tracing (which costs ~10-30 s
            per trial on CPU), slower steps. For smoke searches of a few steps and debugging.
        verbose: Keras fit verbosity.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike | None,
        *,
        space: SearchSpace | None = None,
        preset: str = "tiny",
        model_overrides: Mapping[str, Any] | None = None,
        phase: str = "patch",
        batch_size: int = 4,
        epochs: int = 1,
        steps_per_epoch: int | None = None,
        crop_size: int | None = None,
        max_boxes: int = 16,
        target_fpi: float = 4.8,
        val_images: int | None = None,
        seed: int | None = None,
        jit_compile: bool | None = None,
        train_data: TrainDataFn | None = None,
        validation_callback: CallbackFn | None = None,
        run_eagerly: bool = False,
        verbose: int = 0,
    ):
        super().__init__(name="hourglass", tunable=True)
        from keras_hourglass.model import input_multiple, resolve_config
        from keras_hourglass.training.config import TrainConfig

        if phase not in ("patch", "full"):
            raise ValueError(f"phase must be 'patch' or 'full', got {phase!r}")
        self.data_dir = None if data_dir is None else os.fspath(data_dir)
        self.space = space or SearchSpace()
        self.epochs = int(epochs)
        self.val_images = val_images
        self.seed = seed
        self.train_data = train_data
        self.validation_callback = validation_callback
        self.run_eagerly = bool(run_eagerly)
        self.verbose = verbose
        #: Index of the current execution of a trial (`--executions-per-trial`), set by the tuner
        #: (`tuning.search`): each execution starts from other initial weights and data order.
        self.execution = 0
        fixed: dict[str, Any] = dict(
            preset=preset, model=dict(model_overrides or {}), phase=phase, batch_size=int(batch_size),
            steps_per_epoch=steps_per_epoch, max_boxes=int(max_boxes), target_fpi=float(target_fpi),
            seed=0 if seed is None else int(seed), jit_compile=jit_compile,
            patch_epochs=int(epochs) if phase == "patch" else 0, full_epochs=int(epochs) if phase == "full" else 0,
        )
        if crop_size is not None:
            fixed["crop_size"] = int(crop_size)
        #: The settings that are not tuned, as `hourglass train` holds them.
        self.base_config = TrainConfig(**fixed)
        model_config = resolve_config(preset, **self.base_config.model)
        self.stride = int(model_config["output_stride"])
        self.input_multiple = int(input_multiple(model_config))
        self.long_side: int | None = None  # PREP's, read on first use (see `geometry`)

    # -- KerasTuner hooks -------------------------------------------------------------------

    def fixed_values(self) -> dict[str, Any]:
        """The settings every trial shares that `hourglass train --hparams` also reads.

        They are declared as `hp.Fixed`, so `best_hyperparameters.json` retrains the model the
        loss was tuned for: the preset, its scalar model options, the global batch size and
        (patch phase) the crop size. Explicit `hourglass train` flags still win over them.

        Returns:
            {name: value}.
        """
        config = self.base_config
        values: dict[str, Any] = {"preset": config.preset, "batch_size": int(config.batch_size)}
        if config.phase == "patch":
            values["crop_size"] = int(config.crop_size)
        for key, value in sorted(config.model.items()):
            if isinstance(value, (bool, int, float, str)):
                values[key] = value
        return values

    def declare_hyperparameters(self, hp: keras_tuner.HyperParameters) -> None:
        """Declares the search space and the fixed settings on `hp` (called once by the tuner)."""
        self._declare(hp)

    def _declare(self, hp: keras_tuner.HyperParameters) -> dict[str, Any]:
        values = self.space.declare(hp)
        for name, value in self.fixed_values().items():
            values[name] = hp.Fixed(name, value)
        return values

    def train_config(self, hp: keras_tuner.HyperParameters):
        """Returns: the `TrainConfig` of a trial: the fixed settings with the trial's values applied."""
        from keras_hourglass.training.config import apply_hparams

        return apply_hparams(self.base_config, self._declare(hp), source="hyperparameters").validate()

    def geometry(self, config):
        """The trial's reference-pixel geometry resolved against PREP's long side, as `hourglass train` does."""
        from keras_hourglass.training.train import run_geometry

        if self.long_side is None and self.data_dir is not None:
            from keras_hourglass.training.geometry import prep_long_side

            self.long_side = prep_long_side(self.data_dir)
        return run_geometry(config, None, self.stride, self.input_multiple, self.long_side)

    def build(self, hp: keras_tuner.HyperParameters) -> keras.Model:
        """Returns: the compiled Hourglass for the trial's values (under the tuner's strategy scope)."""
        from keras_hourglass.model import build_hourglass
        from keras_hourglass.training.train import make_learning_rate, make_loss

        config = self.train_config(hp)
        keras.utils.set_random_seed(int(config.seed) + _EXECUTION_SEED_STEP * int(self.execution))
        model = build_hourglass(config.preset, **config.model)
        count = _num_outputs(model)
        geometry = self.geometry(config)
        losses = [make_loss(config, geometry) for _ in range(count)]
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=make_learning_rate(config)),
            loss=losses if count > 1 else losses[0],
            jit_compile="auto" if config.jit_compile is None else config.jit_compile,
            run_eagerly=self.run_eagerly,
        )
        return model

    def fit(self, hp: keras_tuner.HyperParameters, model: keras.Model, *args, **kwargs) -> dict[str, float]:
        """Trains `model` and returns the metrics of its best epoch.

        Args:
            hp: the trial's hyper-parameters.
            model: the model from `build`.
            *args: ignored (the data comes from `data_dir`, or `train_data`).
            **kwargs: `callbacks` (KerasTuner's), `epochs` / `initial_epoch` (Hyperband);
                other `model.fit` arguments are passed on.

        Returns:
            {metric: value} of the best epoch (objective, then tie-breakers), with
            `val_sensitivity`.

        Raises:
            ValueError: the validation callback did not write `val_sensitivity`.
        """
        config = self.train_config(hp)
        callbacks = list(kwargs.pop("callbacks", None) or [])
        epochs = int(kwargs.pop("epochs", self.epochs))
        initial_epoch = int(kwargs.pop("initial_epoch", 0))
        kwargs.pop("verbose", None)
        dataset = self._training_dataset(config, _num_outputs(model))
        steps = config.steps_per_epoch or max(1, int(config.images_per_epoch) // int(config.batch_size))
        validation = self._validation_callback(config)
        # The validation callback must come first: KerasTuner's checkpoint callback reads its keys.
        history = model.fit(
            dataset,
            epochs=epochs,
            initial_epoch=initial_epoch,
            steps_per_epoch=steps,
            callbacks=[validation, *callbacks],
            verbose=self.verbose,
            **kwargs,
        )
        logs = history.history
        epoch = objective_lib.best_epoch(logs)
        return {name: float(values[epoch]) for name, values in logs.items() if epoch < len(values)}

    # -- data ------------------------------------------------------------------------------

    def _data_seed(self) -> int | None:
        return None if self.seed is None else int(self.seed) + _EXECUTION_SEED_STEP * int(self.execution)

    def _settings(self, config) -> dict[str, Any]:
        return {
            "data_dir": self.data_dir,
            "phase": config.phase,
            "batch_size": int(config.batch_size),
            "stride": self.stride,
            "input_multiple": self.input_multiple,
            "crop_size": int(self.geometry(config).crop_size),
            "max_boxes": int(config.max_boxes),
            "seed": self._data_seed(),
            "target_fpi": float(config.target_fpi),
        }

    def _training_dataset(self, config, num_outputs: int):
        if self.train_data is not None:
            dataset = self.train_data(self._settings(config))
        else:
            from keras_hourglass.training.train import prep_dataset_fn

            dataset = prep_dataset_fn(self.data_dir, config, self.geometry(config).crop_size)(
                config.phase, int(config.batch_size), self._data_seed(), self.stride, self.input_multiple
            )
        if num_outputs > 1:  # intermediate supervision: the boxes once per output
            dataset = dataset.map(lambda image, boxes: (image, tuple(boxes for _ in range(num_outputs))))
        return dataset

    def _validation_callback(self, config) -> keras.callbacks.Callback:
        if self.validation_callback is not None:
            return self.validation_callback(self._settings(config))
        from keras_hourglass.data.pipeline import evaluation_dataset
        from keras_hourglass.evaluation.callback import FrocCallback

        validation = evaluation_dataset(self.data_dir, split="val", input_multiple=self.input_multiple)
        if self.val_images:
            validation = validation.take(int(self.val_images))
        return FrocCallback(validation, target_fpi=float(config.target_fpi))
