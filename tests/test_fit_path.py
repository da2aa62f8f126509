"""The one fit path (`keras_hourglass.training.fit`): a tuning trial trains as `hourglass train` does, and
mixed precision (bfloat16 on CPU) keeps the heatmap and the losses in float32."""

from __future__ import annotations

import contextlib
import io
import json
import os

import numpy as np
import pytest

TINY = {"num_stacks": 1, "depth": 1, "num_features": 4, "stem_features": 4}
TINY_TWO_STACKS = {"num_stacks": 2, "depth": 1, "num_features": 4, "stem_features": 4}


def _memory_dataset_fn(phase, batch_size, seed, stride, multiple):
    """A `DatasetFn`: random 32x32 (patch) or 64x32 (full) images, one box per image."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    height = 32 if phase == "patch" else 64
    images = rng.random((4, height, 32, 1), dtype=np.float32)
    boxes = -np.ones((4, 16, 4), np.float32)
    boxes[:, 0] = (2.0, 2.0, 5.0, 5.0)
    return tf.data.Dataset.from_tensor_slices((images, boxes)).repeat().batch(batch_size)


def _config(**overrides):
    from keras_hourglass.training.config import TrainConfig

    options = dict(model=TINY_TWO_STACKS, patch_size=96, sigmas=(24.0, 48.0), crop_size=768, batch_size=2,
                   steps_per_epoch=2, patch_epochs=1, full_epochs=1, seed=4, val_images=0)
    options.update(overrides)
    return TrainConfig(**options).validate()


def _built(config, run_eagerly=True):
    from keras_hourglass.training.fit import build_model, compile_model, run_geometry

    model = build_model(config)
    compile_model(model, config, run_geometry(config, None, 4, 8, long_side=64), run_eagerly=run_eagerly)
    return model


# ---------------------------------------------------------------------------------------------
# The fit path itself


def test_fit_phases_counts_epochs_globally_and_skips_what_is_done():
    config = _config(patch_epochs=2, full_epochs=1, steps_per_epoch=1)
    model = _built(config)
    from keras_hourglass.training.fit import fit_phases

    seen = []

    def callbacks_fn(phase, offset):
        import keras

        class Record(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                seen.append((phase, offset + epoch + 1, int(self.model.optimizer.iterations.numpy())))

        return [Record()]

    history = fit_phases(model, config, _memory_dataset_fn, callbacks_fn=callbacks_fn, initial_epoch=1, verbose=0)
    assert seen == [("patch", 2, 1), ("full", 3, 2)]  # epoch 1 was already done
    assert len(history["loss"]) == 2 and all(np.isfinite(history["loss"]))
    with pytest.raises(ValueError, match="initial_epoch must be >= 0"):
        fit_phases(model, config, _memory_dataset_fn, initial_epoch=-1)


def test_hypermodel_epochs_are_split_between_the_phases_as_train_does():
    from tuning.hypermodel import HourglassHyperModel

    hypermodel = HourglassHyperModel(None, model_overrides=TINY, epochs=5)
    assert hypermodel.base_config.phases() == [("patch", 3), ("full", 2)]  # hourglass train --epochs 5
    assert HourglassHyperModel(None, model_overrides=TINY, epochs=1).base_config.phases() == [("patch", 1)]
    assert HourglassHyperModel(None, model_overrides=TINY, phase="full", epochs=2).base_config.phases() == [
        ("full", 2)]
    with pytest.raises(ValueError, match="phase must be one of patch, full, both"):
        HourglassHyperModel(None, phase="patches")
    with pytest.raises(ValueError, match="mixed_precision must be one of"):
        HourglassHyperModel(None, mixed_precision="half")


@pytest.mark.slow
def test_a_tuning_trial_and_hourglass_train_with_its_values_end_with_the_same_weights(tmp_path):
    """The done-when of the one-fit-path redesign: same values + same seed -> the same weights, bit for bit.

    Both run the same graphs on CPU (no XLA, "auto" = off without a GPU), so equality is exact; a trial in
    `run_eagerly` mode would differ in the last bits (another op fusion), hence none here.
    """
    import keras

    from keras_hourglass.cli.main import main
    from test_training import write_prep
    from tuning import search
    from tuning import search_space as ss
    from tuning.hypermodel import HourglassHyperModel

    prep = write_prep(tmp_path / "prep")
    trained = []

    class FinalWeights(keras.callbacks.Callback):  # KerasTuner deep-copies it; `trained` is shared
        def on_train_end(self, logs=None):
            trained.append([np.array(w) for w in self.model.get_weights()])

    space = ss.apply_flags(ss.SearchSpace(), patch_sizes="96", sigmas=["24,48"])
    hypermodel = HourglassHyperModel(prep, space=space, preset="tiny", model_overrides=TINY, batch_size=2,
                                     epochs=2, steps_per_epoch=2, crop_size=768, val_images=4, seed=3)
    assert hypermodel.base_config.phases() == [("patch", 1), ("full", 1)]
    tune = tmp_path / "tune"
    with contextlib.redirect_stdout(io.StringIO()):
        tuner = search.make_tuner(hypermodel, tune, kind="random", max_trials=1, seed=3)
        tuner.search(callbacks=[FinalWeights()])
        search.run_search(tuner, tune)  # writes best_hyperparameters.json (no trial left to run)
    assert len(trained) == 2  # on_train_end once per phase: the last is the trial's final model
    trial = tuner.oracle.get_best_trials(1)[0]
    assert trial.status == "COMPLETED" and np.isfinite(trial.score)

    run = tmp_path / "run"
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(["train", "--data", prep, "--out", str(run), "--hparams", str(tune / "best_hyperparameters.json"),
                     "--epochs", "2", "--steps-per-epoch", "2", "--seed", "3", "--val-images", "4", "--quiet"])
    assert code == 0
    config = json.loads((run / "config.json").read_text())
    values, hyper = trial.hyperparameters.values, config["hyperparameters"]  # train ran with the trial's values
    assert {k: hyper[k] for k in ("omega", "top_k", "learning_rate", "patch_size", "crop_size", "batch_size")} == {
        k: values[k] for k in ("omega", "top_k", "learning_rate", "patch_size", "crop_size", "batch_size")}
    assert hyper["sigmas"] == [float(s) for s in values["sigmas"].split(",")] and hyper["model"] == TINY
    assert [r["phase"] for r in config["result"]["history"]] == ["patch", "full"]

    import keras_hourglass.model  # noqa: F401  (registers the custom layers; the package is lazy)

    weights = keras.models.load_model(run / "model.keras").get_weights()
    assert len(weights) == len(trained[-1])
    for ours, theirs in zip(weights, trained[-1]):
        np.testing.assert_array_equal(ours, theirs)
    assert not all(np.array_equal(a, b) for a, b in zip(trained[0], trained[-1]))  # phase 2 did train


# ---------------------------------------------------------------------------------------------
# Mixed precision


def test_bfloat16_computes_in_low_precision_with_float32_heatmaps_losses_and_gradients():
    import keras
    import tensorflow as tf

    from keras_hourglass.training.fit import fit_phases

    config = _config(mixed_precision="bfloat16")
    model = _built(config)
    assert keras.config.dtype_policy().name == "float32"  # the global policy is left as it was
    assert model.get_layer("stem_conv").dtype_policy.name == "mixed_bfloat16"
    for name in ("heatmap", "heatmap_stack1"):  # the heads (and what the losses read) stay float32
        assert model.get_layer(name).dtype_policy.name == "float32"
    assert [str(t.dtype) for t in model.outputs] == ["float32", "float32"]
    assert not isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)  # only for float16

    history = fit_phases(model, config, _memory_dataset_fn, verbose=0)
    assert len(history["loss"]) == 2 and all(np.isfinite(history["loss"]))

    images, boxes = next(iter(_memory_dataset_fn("full", 2, 0, 4, 8)))
    with tf.GradientTape() as tape:
        heatmaps = model(images, training=True)
        loss = sum(fn(boxes, heatmap) for fn, heatmap in zip(model.loss, heatmaps))
    assert all(h.dtype == tf.float32 for h in heatmaps) and loss.dtype == tf.float32
    gradients = tape.gradient(loss, model.trainable_variables)
    assert all(g is not None and g.dtype == tf.float32 for g in gradients)
    assert all(bool(tf.reduce_all(tf.math.is_finite(g))) for g in gradients)
    assert float(loss) > 0 and np.isfinite(float(loss))


def test_float16_gets_loss_scaling():
    import keras

    model = _built(_config(mixed_precision="float16"))
    assert model.dtype_policy.name == "mixed_float16"
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)


def test_train_records_the_policy_and_model_keras_keeps_it(tmp_path):
    import keras

    import keras_hourglass.model  # noqa: F401  (registers the custom layers; the package is lazy)
    from keras_hourglass.training.train import train

    config = _config(mixed_precision="bfloat16", model=TINY, patch_epochs=1, full_epochs=0, steps_per_epoch=1)
    summary, model = train(config, str(tmp_path / "run"), dataset_fn=_memory_dataset_fn, strategy_name="default",
                           long_side=64, verbose=0, return_model=True)
    assert summary["hyperparameters"]["mixed_precision"] == "bfloat16"
    assert summary["precision"] == {"mixed_precision": "bfloat16", "dtype_policy": "mixed_bfloat16",
                                    "compute_dtype": "bfloat16", "variable_dtype": "float32",
                                    "output_dtypes": ["float32"], "loss_scale": False}
    assert json.loads((tmp_path / "run" / "config.json").read_text())["precision"] == summary["precision"]

    loaded = keras.models.load_model(tmp_path / "run" / "model.keras")
    assert loaded.get_layer("stem_conv").dtype_policy.name == "mixed_bfloat16"
    assert loaded.get_layer("heatmap").dtype_policy.name == "float32"
    images = np.random.default_rng(0).random((1, 64, 32, 1), dtype=np.float32)
    heatmap = loaded.predict(images, verbose=0)
    assert heatmap.dtype == np.float32
    np.testing.assert_array_equal(heatmap, model.predict(images, verbose=0))


def test_mixed_precision_flags():
    import argparse

    from keras_hourglass.cli import train as train_cli
    from keras_hourglass.training.fit import dtype_policy_name
    from tuning import cli as tune_cli

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    train_cli.register(sub)
    tune_cli.register(sub)
    args = parser.parse_args(["train", "--data", "P", "--out", "R", "--mixed-precision", "bfloat16"])
    assert train_cli.build_config(args).mixed_precision == "bfloat16"
    args = parser.parse_args(["train", "--data", "P", "--out", "R"])
    assert train_cli.build_config(args).mixed_precision == "float32"
    with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
        parser.parse_args(["train", "--data", "P", "--out", "R", "--mixed-precision", "half"])
    args = parser.parse_args(["tune", "--data", "P", "--out", "T", "--mixed-precision", "float16"])
    assert (args.mixed_precision, args.phase) == ("float16", "both")
    assert [dtype_policy_name(p) for p in ("float32", "bfloat16", "float16")] == [
        "float32", "mixed_bfloat16", "mixed_float16"]
    with pytest.raises(ValueError, match="precision must be one of float32, bfloat16, float16, got 'half'"):
        dtype_policy_name("half")


def test_a_float32_run_keeps_the_fingerprint_of_runs_from_before_the_flag():
    from keras_hourglass.training.train import _fingerprint

    summary = {"model": {}, "loss": {}, "seed": 0, "data": {"manifest_sha256": None},
               "strategy": {"global_batch_size": 8}, "hyperparameters": {"omega": 0.01}}
    before = _fingerprint(summary)
    summary["hyperparameters"]["mixed_precision"] = "float32"
    assert _fingerprint(summary) == before
    summary["hyperparameters"]["mixed_precision"] = "bfloat16"
    assert _fingerprint(summary) != before
