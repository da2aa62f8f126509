"""TFX module file: `tuner_fn` for the Tuner component and `run_fn` for the Trainer.

Use it as `module_file` (or `tuner_fn="keras_hourglass.tfx_module.tuner_fn"`,
`run_fn="keras_hourglass.tfx_module.run_fn"`) of TFX's `Tuner` and `Trainer`, after an
`ImportExampleGen` over the TFRecords of `hourglass prepare` (see README, "TFX"). It imports
neither TFX nor TensorFlow at module level: the core package does not depend on TFX, and
`TunerFnResult` is imported only when `tuner_fn` runs inside TFX.

Data: `fn_args.train_files` / `fn_args.eval_files` (ExampleGen's gzipped TFRecords of our own
Examples) are staged into a local prepared directory by `keras_hourglass.examplegen`, which
routes each Example by its `label` feature, so the stratum-balanced epochs of
`keras_hourglass.data.pipeline` come from the Examples, not from file names. The eval split is
the validation split (the FROC objective).

`fn_args.custom_config` (all keys optional):

- `"tune"`: the search, as `hourglass tune` flags: `tuner` ("random"), `max_trials` (10),
  `epochs` (1), `steps_per_epoch`, `executions_per_trial`, `batch_size` (8), `preset` ("tiny"),
  `model_options` ({}), `phase` ("both": a trial fits as `hourglass train` does), `crop_size`,
  `val_images`, `seed`, `target_fpi` (4.8), `jit_compile`, `mixed_precision` ("float32"),
  `run_eagerly`, and `space` (a `hourglass tune --space` JSON object).
- `"train"`: `TrainConfig` fields for the Trainer (e.g. `{"patch_epochs": 2, "full_epochs": 0}`);
  they take precedence over `fn_args.hyperparameters` (the Tuner's best), as `hourglass train`
  flags take precedence over `--hparams`. `"hparams"`: values used when no Tuner feeds the Trainer.
- `"long_side"`, `"preprocessing"`: PREP's `--size` and `manifest.json` `preprocessing` block
  (default: the largest image side among the Examples; read_mammogram's defaults).
- `"export"`: `export_keras_model` options (`max_marks`, `threshold`, `verify`, `batch_sizes`).
- `"staging_dir"`: a local directory for the staged data (default: a temporary directory).
"""

from __future__ import annotations

import atexit
import os
import tempfile
from typing import Any, Mapping

from keras_hourglass import storage
from keras_hourglass.errors import InputError

#: `custom_config` keys (anything else is refused, naming the key: typos do not pass silently).
CONFIG_KEYS = ("tune", "train", "hparams", "long_side", "preprocessing", "export", "staging_dir")
_TUNE_KEYS = ("tuner", "max_trials", "epochs", "steps_per_epoch", "executions_per_trial", "batch_size",
              "preset", "model_options", "phase", "crop_size", "val_images", "seed", "target_fpi",
              "jit_compile", "mixed_precision", "run_eagerly", "space")
_EXPORT_KEYS = ("max_marks", "threshold", "verify", "batch_sizes")


def custom_config(fn_args: Any) -> dict[str, Any]:
    """Returns: `fn_args.custom_config` checked against `CONFIG_KEYS` ({} when unset).

    Raises:
        InputError: an unknown key (at the top level, in "tune" or in "export").
    """
    config = dict(getattr(fn_args, "custom_config", None) or {})
    for scope, keys, known in (("custom_config", config, CONFIG_KEYS),
                               ("custom_config['tune']", config.get("tune") or {}, _TUNE_KEYS),
                               ("custom_config['export']", config.get("export") or {}, _EXPORT_KEYS)):
        unknown = sorted(set(keys) - set(known))
        if unknown:
            raise InputError(scope, f"unknown key {unknown[0]!r}; expected some of {', '.join(known)}")
    return config


def stage_data(fn_args: Any, config: Mapping[str, Any], prefix: str) -> str:
    """Stages `fn_args.train_files` / `eval_files` as a local prepared directory.

    Args:
        fn_args: TFX `FnArgs`.
        config: `custom_config(fn_args)`.
        prefix: name prefix of the staging directory.

    Returns:
        The prepared directory (train and val splits, manifest.json).
    """
    from keras_hourglass.examplegen import stage_examples

    root = config.get("staging_dir")
    if root:
        storage.makedirs(root)
    directory = tempfile.mkdtemp(prefix=f"{prefix}-", dir=root or None)
    return stage_examples(fn_args.train_files, fn_args.eval_files, directory,
                          long_side=config.get("long_side"), preprocessing=config.get("preprocessing"))


def build_tuner(fn_args: Any, prep_dir: str, config: Mapping[str, Any]):
    """Our tuner (`tuning.search.make_tuner`) on `fn_args.working_dir` over a staged PREP.

    Returns:
        A KerasTuner tuner with the `val_sensitivity` objective and the search space.
    """
    from tuning import search
    from tuning.hypermodel import HourglassHyperModel
    from tuning.search_space import SearchSpace, space_from_dict

    tune = dict(config.get("tune") or {})
    space = space_from_dict(tune["space"], source="custom_config['tune']['space']") if tune.get("space") \
        else SearchSpace()
    epochs = int(tune.get("epochs", 1))
    hypermodel = HourglassHyperModel(
        prep_dir, space=space, preset=tune.get("preset", "tiny"), model_overrides=tune.get("model_options"),
        phase=tune.get("phase", "both"), batch_size=int(tune.get("batch_size", 8)), epochs=epochs,
        steps_per_epoch=tune.get("steps_per_epoch") or _steps(getattr(fn_args, "train_steps", None), epochs),
        crop_size=tune.get("crop_size"), target_fpi=float(tune.get("target_fpi", 4.8)),
        val_images=tune.get("val_images"), seed=tune.get("seed"), jit_compile=tune.get("jit_compile"),
        mixed_precision=tune.get("mixed_precision", "float32"), run_eagerly=bool(tune.get("run_eagerly", False)),
    )
    return search.make_tuner(
        hypermodel, fn_args.working_dir, kind=tune.get("tuner", "random"),
        max_trials=int(tune.get("max_trials", 10)), max_epochs=epochs,
        executions_per_trial=int(tune.get("executions_per_trial", 1)), seed=tune.get("seed"),
    )


def _steps(total: int | None, epochs: int) -> int | None:
    """TFX's `train_steps` (TrainArgs.num_steps, all epochs) as steps per epoch."""
    return max(1, int(total) // max(1, int(epochs))) if total else None


def tuner_fn(fn_args: Any):
    """TFX Tuner entry point.

    Args:
        fn_args: TFX `FnArgs` (`working_dir`, `train_files`, `eval_files`, `train_steps`,
            `custom_config`).

    Returns:
        `tfx.v1.components.TunerFnResult(tuner, fit_kwargs={})`: the data comes from the
        staged directory, not from `fit` arguments.
    """
    from tfx.v1.components import TunerFnResult

    config = custom_config(fn_args)
    prep_dir = stage_data(fn_args, config, "hourglass-tune-data")
    atexit.register(storage.remove_tree, prep_dir)  # the search runs after tuner_fn returns
    return TunerFnResult(tuner=build_tuner(fn_args, prep_dir, config), fit_kwargs={})


def train_config(fn_args: Any, config: Mapping[str, Any]):
    """The `TrainConfig` of the Trainer: defaults < the Tuner's best (or `custom_config["hparams"]`)
    < `custom_config["train"]`; `fn_args.train_steps` spreads over the epochs unless
    `steps_per_epoch` is given.

    Returns:
        A validated `TrainConfig`.
    """
    from keras_hourglass.training.config import TrainConfig, apply_hparams

    hyperparameters = getattr(fn_args, "hyperparameters", None)
    if hyperparameters:
        values = dict(hyperparameters.get("values", hyperparameters)) if isinstance(hyperparameters, Mapping) \
            else dict(hyperparameters.values)
        source = "fn_args.hyperparameters"
    else:
        values, source = dict(config.get("hparams") or {}), "custom_config['hparams']"
    result = apply_hparams(TrainConfig(), values, source=source)
    result = apply_hparams(result, dict(config.get("train") or {}), source="custom_config['train']")
    if result.steps_per_epoch is None and getattr(fn_args, "train_steps", None):
        total_epochs = sum(epochs for _, epochs in result.phases())
        result = apply_hparams(result, {"steps_per_epoch": _steps(fn_args.train_steps, total_epochs)},
                               source="fn_args.train_steps")
    return result.validate()


def publish_serving_model(model_path: str, serving_model_dir: str, export_options: Mapping[str, Any],
                          long_side: int | None = None) -> dict:
    """Exports and verifies `model_path`, then puts the SavedModel at exactly `serving_model_dir`.

    The export is written and verified under a local staging base (`export_keras_model`, version 1)
    and published with `storage.publish_directory`: one rename when `serving_model_dir` is local; on
    an object store the whole version is uploaded under a hidden name first and moved into place with
    `saved_model.pb` last, so a reader never sees a loadable half copy. Pusher versions the directory
    for TF Serving: no `<n>/` is added here.

    Returns:
        `ExportResult.to_json()` with `path` = `serving_model_dir`.

    Raises:
        InputError: `serving_model_dir` exists and is not empty.
    """
    from export.saved_model import MARKER, export_keras_model

    target = os.fspath(serving_model_dir)
    if storage.exists(target) and storage.listdir(target):
        raise InputError(target, "exists and is not empty; refusing to overwrite a serving model")
    parent = storage.dirname(target.rstrip("/"))
    staging = storage.local_staging(parent if not storage.is_url(target) else target)
    try:
        result = export_keras_model(model_path, staging, version=1, long_side=long_side, **export_options)
        if storage.isdir(target):
            storage.remove_tree(target)  # empty (checked above)
        storage.publish_directory(result.path, target, marker=MARKER)
    finally:
        storage.remove_tree(staging)
    return {**result.to_json(), "path": target, "version": None}


def run_fn(fn_args: Any) -> dict:
    """TFX Trainer entry point: trains with `train()` and writes the verified serving export.

    Args:
        fn_args: TFX `FnArgs` (`train_files`, `eval_files`, `train_steps`, `hyperparameters`,
            `custom_config`, `model_run_dir`, `serving_model_dir`).

    Returns:
        {"train": train()'s summary, "export": the export result}. RUN (model.keras,
        config.json, history.csv, TensorBoard `logs/`) is `fn_args.model_run_dir`.
    """
    from keras_hourglass.training.train import train

    config = custom_config(fn_args)
    settings = train_config(fn_args, config)
    prep_dir = stage_data(fn_args, config, "hourglass-train-data")
    try:
        summary = train(settings, fn_args.model_run_dir, prep_dir=prep_dir, strategy_name="auto",
                        verbose=2, command=["tfx", "Trainer", "keras_hourglass.tfx_module.run_fn"])
        from keras_hourglass.training.geometry import prep_long_side

        exported = publish_serving_model(storage.join(fn_args.model_run_dir, "model.keras"),
                                         fn_args.serving_model_dir, dict(config.get("export") or {}),
                                         long_side=prep_long_side(prep_dir))
    finally:
        storage.remove_tree(prep_dir)
    return {"train": summary, "export": exported}
