"""`HourglassHyperModel`: the Hourglass + HypersensitiveLoss as a KerasTuner HyperModel.

A trial trains exactly as `hourglass train` does with the same values: `build(hp)`
and `fit(hp, model)` go through the same fit path (`keras_hourglass.training.fit`:
`build_model`, `compile_model`, `fit_phases`) as `keras_hourglass.training.train.train`.

`build(hp)` declares the search space (`tuning.search_space.SearchSpace`), applies the
trial's values to a `keras_hourglass.training.config.TrainConfig` with the same
`apply_hparams` that `hourglass train --hparams` uses (a parameter left out of the
space takes the training default, and `best_hyperparameters.json` retrains exactly
the loss that was tuned), then builds and compiles the model. `fit(hp, model)`
fits the phases (by default both, patches then whole images, with the epochs split
between them as `hourglass train --epochs` does), with the `FrocCallback` on the
validation split first, and returns the metrics of the best epoch (objective
`val_sensitivity`, then the tie-breakers of `tuning.objective`) as a dict, which
KerasTuner records for the trial. Hyperband's `epochs` / `initial_epoch` count
epochs globally across the phases.

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


class HourglassHyperModel(keras_tuner.HyperModel):
    """Builds and trains one Hourglass per trial, as `hourglass train` would.

    Args:
        data_dir: the prepared data directory (`hourglass prepare` / `hourglass synth`).
        loss: the loss every trial trains ("hypersensitive", "l2" or "focal"; `hourglass train --loss`).
        space: the search space (default: the loss's, `search_space.default_space`).
        preset: model preset, "tiny" or "paper".
        model_overrides: extra `build_hourglass` options (e.g. {"depth": 2}).
        phase: "both" (patches, then whole images, as `hourglass train`), "patch" or "full".
        batch_size: global batch size.
        epochs: epochs per execution, all phases (Hyperband passes its own); with
            `phase="both"` split as `hourglass train --epochs` does (the patch phase gets
            the odd one) unless `patch_epochs` / `full_epochs` say otherwise.
        patch_epochs: epochs of the patch phase (`hourglass train --patch-epochs`; None: from `epochs`).
        full_epochs: epochs of the whole-image phase (`hourglass train --full-epochs`; None: from `epochs`).
        steps_per_epoch: training steps per epoch (default: the training default,
            `images_per_epoch // batch_size`).
        crop_size: patch-phase crop side in reference image pixels (default: the training default).
        max_boxes: rows of the box tensor.
        target_fpi: FPI at which `val_sensitivity` is read.
        val_images: validate on the first N images of the val split (None: all).
        seed: seeds the weights and the data order as `hourglass train --seed` does (None: 0;
            every trial starts from the same initial weights, so trials differ only by their
            hyper-parameters; execution i of a trial uses seed + 1009 * i).
        jit_compile: XLA for the train step (None: Keras' "auto", as `hourglass train`).
        mixed_precision: "float32", "bfloat16" or "float16" (as `hourglass train --mixed-precision`).
        train_data: optional factory replacing the pipeline (custom data, tests); it gets
            {"data_dir", "phase", "batch_size", "stride", "input_multiple", "crop_size",
            "max_boxes", "seed", "target_fpi"} (`batch_size`: of one input pipeline, i.e. per
            replica under a multi-replica strategy; `seed`: of this phase's pipeline) and returns
            an infinite dataset of (image, boxes).
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
        loss: str = "hypersensitive",
        space: SearchSpace | None = None,
        preset: str = "tiny",
        model_overrides: Mapping[str, Any] | None = None,
        phase: str = "both",
        batch_size: int = 4,
        epochs: int = 1,
        patch_epochs: int | None = None,
        full_epochs: int | None = None,
        steps_per_epoch: int | None = None,
        crop_size: int | None = None,
        max_boxes: int = 16,
        target_fpi: float = 4.8,
        val_images: int | None = None,
        seed: int | None = None,
        jit_compile: bool | None = None,
        mixed_precision: str = "float32",
        train_data: TrainDataFn | None = None,
        validation_callback: CallbackFn | None = None,
        run_eagerly: bool = False,
        verbose: int = 0,
    ):
        super().__init__(name="hourglass", tunable=True)
        from keras_hourglass.model import input_multiple, resolve_config
        from keras_hourglass.training.config import PHASES, PRECISIONS, TrainConfig

        if phase not in PHASES:
            raise ValueError(f"phase must be one of {', '.join(PHASES)}, got {phase!r}")
        if mixed_precision not in PRECISIONS:
            raise ValueError(f"mixed_precision must be one of {', '.join(PRECISIONS)}, got {mixed_precision!r}")
        if int(epochs) < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs!r}")
        from tuning.search_space import check_space_for_loss, default_space

        self.patch_epochs, self.full_epochs = patch_epochs, full_epochs
        self.data_dir = None if data_dir is None else os.fspath(data_dir)
        self.space = check_space_for_loss(space, loss, "space") if space is not None else default_space(loss)
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
            loss=loss, preset=preset, model=dict(model_overrides or {}), phase=phase, batch_size=int(batch_size),
            steps_per_epoch=steps_per_epoch, max_boxes=int(max_boxes), target_fpi=float(target_fpi),
            seed=0 if seed is None else int(seed), jit_compile=jit_compile, val_images=val_images,
            mixed_precision=mixed_precision, **self._phase_epochs(phase, self.epochs),
        )
        if crop_size is not None:
            fixed["crop_size"] = int(crop_size)
        #: The settings that are not tuned, as `hourglass train` holds them.
        self.base_config = TrainConfig(**fixed)
        model_config = resolve_config(preset, **self.base_config.model)
        self.stride = int(model_config["output_stride"])
        self.input_multiple = int(input_multiple(model_config))
        self.long_side: int | None = None  # PREP's, read on first use (see `geometry`)

    def _phase_epochs(self, phase: str, epochs: int) -> dict[str, int]:
        from keras_hourglass.training.config import split_epochs

        patch, full = split_epochs(phase, int(epochs), self.patch_epochs, self.full_epochs)
        return {"patch_epochs": patch or 0, "full_epochs": full or 0}

    # -- KerasTuner hooks -------------------------------------------------------------------

    def fixed_values(self) -> dict[str, Any]:
        """The settings every trial shares that `hourglass train --hparams` also reads.

        They are declared as `hp.Fixed`, so `best_hyperparameters.json` retrains the model the
        loss was tuned for: the loss, the preset, its scalar model options, the global batch size,
        the crop size (when the patch phase runs) and a precision other than float32.
        Explicit `hourglass train` flags still win over them.

        Returns:
            {name: value}.
        """
        config = self.base_config
        values: dict[str, Any] = {"loss": config.loss, "preset": config.preset, "batch_size": int(config.batch_size)}
        if config.epochs_of("patch"):
            values["crop_size"] = int(config.crop_size)
        if config.mixed_precision != "float32":
            values["mixed_precision"] = config.mixed_precision
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

    def train_config(self, hp: keras_tuner.HyperParameters, epochs: int | None = None):
        """The `TrainConfig` of a trial: the fixed settings with the trial's values applied.

        Args:
            hp: the trial's hyper-parameters.
            epochs: epochs of this execution, all phases (default: Hyperband's `tuner/epochs`,
                else the hypermodel's `epochs`).

        Returns:
            The validated `TrainConfig`, seeded for the current execution.
        """
        import dataclasses

        from keras_hourglass.training.config import apply_hparams

        if epochs is None:
            epochs = hp.values.get("tuner/epochs", self.epochs)
        config = apply_hparams(self.base_config, self._declare(hp), source="hyperparameters")
        seed = int(self.base_config.seed) + _EXECUTION_SEED_STEP * int(self.execution)
        return dataclasses.replace(config, seed=seed, **self._phase_epochs(config.phase, int(epochs))).validate()

    def geometry(self, config):
        """The trial's reference-pixel geometry resolved against PREP's long side, as `hourglass train` does."""
        from keras_hourglass.training.fit import run_geometry

        if self.long_side is None and self.data_dir is not None:
            from keras_hourglass.training.geometry import prep_long_side

            self.long_side = prep_long_side(self.data_dir)
        return run_geometry(config, None, self.stride, self.input_multiple, self.long_side)

    def build(self, hp: keras_tuner.HyperParameters) -> keras.Model:
        """Returns: the compiled Hourglass for the trial's values (under the tuner's strategy scope)."""
        from keras_hourglass.training.fit import build_model, compile_model

        config = self.train_config(hp)
        model = build_model(config)
        compile_model(model, config, self.geometry(config), run_eagerly=self.run_eagerly)
        return model

    def fit(self, hp: keras_tuner.HyperParameters, model: keras.Model, *args, **kwargs) -> dict[str, float]:
        """Fits the phases as `hourglass train` does and returns the metrics of the best epoch.

        Args:
            hp: the trial's hyper-parameters.
            model: the model from `build`.
            *args: ignored (the data comes from `data_dir`, or `train_data`).
            **kwargs: `callbacks` (KerasTuner's), `epochs` / `initial_epoch` (Hyperband; global
                epochs across the phases); other `model.fit` arguments are passed on.

        Returns:
            {metric: value} of the best epoch (objective, then tie-breakers), with
            `val_sensitivity`.

        Raises:
            ValueError: the validation callback did not write `val_sensitivity`.
        """
        from keras_hourglass.training.fit import fit_phases

        epochs = kwargs.pop("epochs", None)
        config = self.train_config(hp, epochs=None if epochs is None else int(epochs))
        callbacks = list(kwargs.pop("callbacks", None) or [])
        initial_epoch = int(kwargs.pop("initial_epoch", 0))
        kwargs.pop("verbose", None)
        validation = self._validation_callback(config)
        # The validation callback must come first: KerasTuner's checkpoint callback reads its keys.
        logs = fit_phases(model, config, self._dataset_fn(config), initial_epoch=initial_epoch,
                          callbacks_fn=lambda phase, offset: [validation, *callbacks], verbose=self.verbose,
                          **kwargs)
        epoch = objective_lib.best_epoch(logs)
        return {name: float(values[epoch]) for name, values in logs.items() if epoch < len(values)}

    # -- data ------------------------------------------------------------------------------

    def _settings(self, config) -> dict[str, Any]:
        return {
            "data_dir": self.data_dir,
            "phase": config.phase,
            "batch_size": int(config.batch_size),
            "stride": self.stride,
            "input_multiple": self.input_multiple,
            "crop_size": int(self.geometry(config).crop_size),
            "max_boxes": int(config.max_boxes),
            "seed": int(config.seed),
            "target_fpi": float(config.target_fpi),
        }

    def _dataset_fn(self, config):
        """The trial's `training.fit.DatasetFn`: the pipeline as `hourglass train` reads it, or `train_data`."""
        if self.train_data is None:
            from keras_hourglass.training.fit import prep_dataset_fn

            return prep_dataset_fn(self.data_dir, config, self.geometry(config).crop_size)
        settings = self._settings(config)

        def dataset_fn(phase, batch_size, seed, stride, multiple):
            return self.train_data({**settings, "phase": phase, "batch_size": int(batch_size), "seed": int(seed),
                                    "stride": int(stride), "input_multiple": int(multiple)})

        return dataset_fn

    def _validation_callback(self, config) -> keras.callbacks.Callback:
        if self.validation_callback is not None:
            return self.validation_callback(self._settings(config))
        from keras_hourglass.training.fit import froc_callback, prep_validation

        return froc_callback(prep_validation(self.data_dir, config, self.input_multiple), config)[0]
