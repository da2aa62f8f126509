"""`HourglassHyperModel`: the Hourglass + HypersensitiveLoss as a KerasTuner HyperModel.

`build(hp)` declares the search space (`tuning.search_space.SearchSpace`) and
returns `build_hourglass(preset)` compiled with
`HypersensitiveLoss(omega, top_k, patch_size, sigmas)` and Adam(learning_rate).
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
from tuning.search_space import SearchSpace, parse_sigmas

#: Signature of a training-data factory: (settings) -> infinite tf.data.Dataset of (image, boxes).
TrainDataFn = Callable[[Mapping[str, Any]], Any]
#: Signature of a validation-callback factory: (settings) -> keras callback writing val_sensitivity.
CallbackFn = Callable[[Mapping[str, Any]], keras.callbacks.Callback]


def loss_kwargs(values: Mapping[str, Any]) -> dict[str, Any]:
    """Maps hyper-parameter values to `HypersensitiveLoss` keyword arguments.

    Args:
        values: {name: value} with some of omega, top_k, sigmas ("1.5,3,6"), patch_size.

    Returns:
        The keyword arguments for the parameters present (others keep the loss defaults).
    """
    kwargs: dict[str, Any] = {}
    if "omega" in values:
        kwargs["omega"] = float(values["omega"])
    if "top_k" in values:
        kwargs["top_k"] = int(values["top_k"])
    if "sigmas" in values:
        kwargs["sigmas"] = parse_sigmas(values["sigmas"])
    if "patch_size" in values:
        kwargs["patch_size"] = int(values["patch_size"])
    return kwargs


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
        steps_per_epoch: training steps per epoch.
        crop_size: patch-phase crop side in image pixels (the pipeline's patch_size).
        max_boxes: rows of the box tensor.
        target_fpi: FPI at which `val_sensitivity` is read.
        seed: seeds the weights and the data order (same seed, same trial values -> same run).
        train_data: optional factory replacing the pipeline (tests, custom data); it gets
            {"data_dir", "phase", "batch_size", "stride", "input_multiple", "crop_size",
            "max_boxes", "seed"}.
        validation_callback: optional factory replacing `FrocCallback`; it gets
            {"data_dir", "target_fpi", "input_multiple", "stride"}.
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
        seed: int | None = None,
        train_data: TrainDataFn | None = None,
        validation_callback: CallbackFn | None = None,
        run_eagerly: bool = False,
        verbose: int = 0,
    ):
        super().__init__(name="hourglass", tunable=True)
        self.data_dir = None if data_dir is None else os.fspath(data_dir)
        self.space = space or SearchSpace()
        self.preset = preset
        self.model_overrides = dict(model_overrides or {})
        self.phase = phase
        self.batch_size = int(batch_size)
        self.epochs = int(epochs)
        self.steps_per_epoch = steps_per_epoch
        self.crop_size = crop_size
        self.max_boxes = int(max_boxes)
        self.target_fpi = float(target_fpi)
        self.seed = seed
        self.train_data = train_data
        self.validation_callback = validation_callback
        self.run_eagerly = bool(run_eagerly)
        self.verbose = verbose
        from keras_hourglass.model import input_multiple, resolve_config

        config = resolve_config(preset, **self.model_overrides)
        self.stride = int(config["output_stride"])
        self.input_multiple = int(input_multiple(config))

    # -- KerasTuner hooks -------------------------------------------------------------------

    def declare_hyperparameters(self, hp: keras_tuner.HyperParameters) -> None:
        """Declares the search space on `hp` (called once by the tuner)."""
        self.space.declare(hp)

    def build(self, hp: keras_tuner.HyperParameters) -> keras.Model:
        """Returns: the compiled Hourglass for the trial's values (under the tuner's strategy scope)."""
        from keras_hourglass.losses import HypersensitiveLoss
        from keras_hourglass.model import build_hourglass

        values = self.space.declare(hp)
        if self.seed is not None:
            keras.utils.set_random_seed(int(self.seed))
        model = build_hourglass(self.preset, **self.model_overrides)
        loss = HypersensitiveLoss(**loss_kwargs(values))
        learning_rate = float(values.get("learning_rate", 1e-3))
        losses = [loss] * _num_outputs(model) if _num_outputs(model) > 1 else loss
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate), loss=losses, run_eagerly=self.run_eagerly
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
            {metric: value} of the best epoch, with `val_sensitivity`.

        Raises:
            ValueError: the validation callback did not write `val_sensitivity`.
        """
        callbacks = list(kwargs.pop("callbacks", None) or [])
        epochs = int(kwargs.pop("epochs", self.epochs))
        initial_epoch = int(kwargs.pop("initial_epoch", 0))
        kwargs.pop("verbose", None)
        dataset = self._training_dataset(model)
        steps = self.steps_per_epoch or self._default_steps()
        validation = self._validation_callback()
        # The validation callback must run first: KerasTuner's checkpoint callback reads its value.
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

    def _settings(self) -> dict[str, Any]:
        return {
            "data_dir": self.data_dir,
            "phase": self.phase,
            "batch_size": self.batch_size,
            "stride": self.stride,
            "input_multiple": self.input_multiple,
            "crop_size": self.crop_size,
            "max_boxes": self.max_boxes,
            "seed": self.seed,
            "target_fpi": self.target_fpi,
        }

    def _training_dataset(self, model: keras.Model):
        settings = self._settings()
        if self.train_data is not None:
            dataset = self.train_data(settings)
        else:
            from keras_hourglass.data import pipeline

            extra = {} if self.crop_size is None else {"patch_size": int(self.crop_size)}
            dataset = pipeline.training_dataset(
                self.data_dir,
                split="train",
                phase=self.phase,
                batch_size=self.batch_size,
                stride=self.stride,
                input_multiple=self.input_multiple,
                max_boxes=self.max_boxes,
                seed=self.seed,
                **extra,
            )
        count = _num_outputs(model)
        if count > 1:
            dataset = dataset.map(lambda image, boxes: (image, tuple([boxes] * count)))
        return dataset

    def _default_steps(self) -> int:
        from keras_hourglass.data import pipeline

        return int(pipeline.steps_per_epoch(self.data_dir, split="train", batch_size=self.batch_size))

    def _validation_callback(self) -> keras.callbacks.Callback:
        if self.validation_callback is not None:
            return self.validation_callback(self._settings())
        from keras_hourglass.evaluation import FrocCallback

        return FrocCallback(self.data_dir, target_fpi=self.target_fpi)
