"""Tests of tuning/: search space, objective and tie-breaker, HyperModel, outputs, `hourglass tune`."""

from __future__ import annotations

import csv
import json
import math
import os

import pytest

from keras_hourglass.errors import InputError
from tuning import objective as objective_lib
from tuning import search_space as ss

# A very small Hourglass: input multiple 8, 32x32 images -> 8x8 heatmaps.
TINY = {"num_stacks": 1, "depth": 1, "num_features": 4, "stem_features": 4}


# ---------------------------------------------------------------------------------------------
# Search space (no TensorFlow)


def test_default_space_declares_the_documented_domains():
    import keras_tuner

    hp = keras_tuner.HyperParameters()
    values = ss.SearchSpace().declare(hp)
    assert set(values) == {"omega", "top_k", "sigmas", "learning_rate"}  # patch_size: loss default
    by_name = {p.name: p for p in hp.space}
    assert (by_name["omega"].min_value, by_name["omega"].max_value, by_name["omega"].sampling) == (1e-3, 1.0, "log")
    assert (by_name["top_k"].min_value, by_name["top_k"].max_value) == (0, 8)
    assert list(by_name["sigmas"].values) == ["6,9,12,18", "12", "4,8,16,32"]  # reference px
    assert by_name["learning_rate"].sampling == "log"
    assert all(ss.parse_sigmas(s) for s in by_name["sigmas"].values)


def test_space_file_overrides_only_listed_parameters(tmp_path):
    path = tmp_path / "space.json"
    path.write_text(json.dumps({
        "omega": {"min": 0.01, "max": 0.1},
        "top_k": {"values": [0, 3]},
        "sigmas": {"fixed": "2,4"},
        "patch_size": {"values": [8, 16]},
    }))
    space = ss.load_space(path)
    assert space.omega == ss.Range(0.01, 0.1, "log")  # omega defaults to log sampling
    assert space.top_k == ss.Choice((0, 3))
    assert space.sigmas == ss.Fixed("2,4")
    assert space.patch_size == ss.Choice((8, 16))
    assert space.learning_rate == ss.SearchSpace().learning_rate
    assert space.tuned_names() == ["omega", "top_k", "learning_rate", "patch_size"]
    # to_json round-trips through the file format.
    assert ss.space_from_dict(space.to_json()) == space


@pytest.mark.parametrize(
    "content, reason",
    [
        ("{not json", "not valid JSON"),
        ('["omega"]', "JSON object"),
        ('{"gamma": {"min": 1, "max": 2}}', "unknown hyper-parameter 'gamma'"),
        ('{"omega": {"min": 0.1, "max": 0.01}}', "must be smaller"),
        ('{"omega": {"min": 0, "max": 1}}', "positive"),
        ('{"top_k": {"min": -1, "max": 3}}', ">= 0"),
        ('{"top_k": {"min": 0.5, "max": 3}}', "not an integer"),
        ('{"sigmas": {"values": ["1,x"]}}', "not a number"),
        ('{"sigmas": {"min": 1, "max": 3}}', "not a range"),
        ('{"omega": {"values": []}}', "non-empty"),
        ('{"omega": {"min": 0.1, "max": 1, "sampling": "cubic"}}', "sampling"),
        ('{"omega": 0.01}', "expected an object"),
    ],
)
def test_bad_space_file_names_the_file_and_the_reason(tmp_path, content, reason):
    path = tmp_path / "bad_space.json"
    path.write_text(content)
    with pytest.raises(InputError) as info:
        ss.load_space(path)
    assert info.value.path == str(path)
    assert reason in info.value.reason
    assert "\n" not in str(info.value)


def test_missing_space_file():
    with pytest.raises(InputError, match="not found") as info:
        ss.load_space("/nonexistent/space.json")
    assert info.value.path == "/nonexistent/space.json"


def test_flags_override_the_file():
    space = ss.apply_flags(
        ss.SearchSpace(), omega_range="0.001,1", top_k_range="3", lr_range="1e-4,1e-3",
        sigmas=["1.5,3,6", "3"], patch_sizes="16",
    )
    assert space.omega == ss.Range(0.001, 1.0, "log")
    assert space.top_k == ss.Fixed(3)
    assert space.learning_rate == ss.Range(1e-4, 1e-3, "log")
    assert space.sigmas == ss.Choice(("1.5,3,6", "3"))
    assert space.patch_size == ss.Fixed(16)
    with pytest.raises(InputError) as info:
        ss.apply_flags(ss.SearchSpace(), omega_range="1,0.1")
    assert info.value.path == "--omega-range"
    with pytest.raises(InputError):
        ss.apply_flags(ss.SearchSpace(), top_k_range="a,b")


# ---------------------------------------------------------------------------------------------
# Objective and tie-breaker (no TensorFlow)


def test_objective_is_val_sensitivity_max():
    obj = objective_lib.objective()
    assert (obj.name, obj.direction) == ("val_sensitivity", "max")


def test_rank_key_breaks_ties_in_the_documented_order():
    base = {"val_sensitivity": 0.5, "val_mean_sensitivity": 0.3, "val_max_sensitivity": 0.8}
    better_objective = dict(base, val_sensitivity=0.6, val_mean_sensitivity=0.0)
    better_mean = dict(base, val_mean_sensitivity=0.4, val_max_sensitivity=0.1)
    better_max = dict(base, val_max_sensitivity=0.9)
    ranked = sorted(
        [
            ("base_high_omega", base, 0.5, "4"),
            ("base_low_omega", base, 0.01, "5"),
            ("base_low_omega_earlier", base, 0.01, "3"),
            ("better_max", better_max, 1.0, "6"),
            ("better_mean", better_mean, 1.0, "7"),
            ("better_objective", better_objective, 1.0, "8"),
            ("nan", dict(base, val_sensitivity=math.nan), 0.001, "0"),
        ],
        key=lambda t: objective_lib.rank_key(t[1], omega=t[2], order=t[3]),
    )
    assert [t[0] for t in ranked] == [
        "better_objective", "better_mean", "better_max",
        "base_low_omega_earlier", "base_low_omega", "base_high_omega", "nan",
    ]


def test_best_epoch_uses_objective_then_tie_breakers():
    history = {
        "loss": [3.0, 2.0, 1.0, 0.5],
        "val_sensitivity": [0.2, 0.6, 0.6, 0.4],
        "val_mean_sensitivity": [0.1, 0.2, 0.3, 0.9],
    }
    assert objective_lib.best_epoch(history) == 2
    with pytest.raises(ValueError, match="FrocCallback"):
        objective_lib.best_epoch({"loss": [1.0]})


# ---------------------------------------------------------------------------------------------
# HyperModel + tuner + outputs, in process, with an in-memory dataset and a stand-in callback


def _memory_dataset(settings):
    """Stand-in for the pipeline: 32x32 images, one box per image in heatmap pixels."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    images = rng.random((4, 32, 32, 1), dtype=np.float32)
    boxes = -np.ones((4, settings["max_boxes"], 4), np.float32)
    boxes[:, 0] = (2.0, 2.0, 5.0, 5.0)
    return tf.data.Dataset.from_tensor_slices((images, boxes)).repeat().batch(settings["batch_size"])


def _standin_froc(settings):
    """Stand-in for FrocCallback: sensitivities from the compiled loss's settings, with ties."""
    import keras

    class StandInFroc(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            loss = self.model.loss[0] if isinstance(self.model.loss, (list, tuple)) else self.model.loss
            logs["val_sensitivity"] = 0.5 if loss.omega < 0.1 else 0.25  # many exact ties
            logs["val_mean_sensitivity"] = 0.1 + loss.top_k / 100.0  # ties broken by top_k
            logs["val_max_sensitivity"] = 0.9
            for fpi in (1, 2, 4.8):
                logs[f"val_sensitivity_at_{fpi:g}"] = min(1.0, 0.1 * fpi)
            logs["val_seen_omega"] = loss.omega  # what the model was really compiled with
            logs["val_seen_top_k"] = float(loss.top_k)

    return StandInFroc()


def _hypermodel(**kwargs):
    from tuning.hypermodel import HourglassHyperModel

    options = dict(
        space=ss.apply_flags(ss.SearchSpace(), patch_sizes="4"),
        preset="tiny", model_overrides=TINY, batch_size=2, epochs=1, steps_per_epoch=1, seed=1,
        train_data=_memory_dataset, validation_callback=_standin_froc, run_eagerly=True,
    )
    options.update(kwargs)
    return HourglassHyperModel(None, **options)


def test_hypermodel_build_compiles_the_loss_from_hyperparameters():
    import keras_tuner

    from keras_hourglass.losses import HypersensitiveLoss

    hp = keras_tuner.HyperParameters()
    hp.values.update({"omega": 0.02, "top_k": 5, "sigmas": "1,2,4,8", "learning_rate": 3e-4})
    model = _hypermodel(model_overrides=dict(TINY, num_stacks=2)).build(hp)
    losses = model.loss if isinstance(model.loss, (list, tuple)) else [model.loss]
    assert len(losses) == 2  # one per stack (intermediate supervision)
    for loss in losses:
        assert isinstance(loss, HypersensitiveLoss)
        assert (loss.omega, loss.top_k, loss.sigmas, loss.patch_size) == (0.02, 5, (1.0, 2.0, 4.0, 8.0), 4)
    assert float(model.optimizer.learning_rate) == pytest.approx(3e-4)


def test_search_outputs_trials_csv_best_json_and_plot(tmp_path):
    import keras_tuner

    from tuning import outputs, search

    # omega in [0.001, 0.05]: the stand-in gives every trial the same objective, so the tie-breakers decide.
    space = ss.apply_flags(ss.SearchSpace(), omega_range="0.001,0.05", patch_sizes="4")
    tuner = search.make_tuner(_hypermodel(space=space), tmp_path, kind="random", max_trials=3, seed=3)
    summary = search.run_search(tuner, tmp_path)
    assert summary["role"] == "single" and summary["trials"] == 3
    assert sorted(summary["trials_run"]) == sorted(tuner.oracle.trials)

    records = outputs.load_trials(search.project_dir(tmp_path))
    assert len(records) == 3 and all(r.status == "COMPLETED" for r in records)
    for r in records:  # each trial trained with the loss its hyper-parameters describe
        assert r.metrics["val_seen_omega"] == pytest.approx(r.values["omega"])
        assert r.metrics["val_seen_top_k"] == r.values["top_k"]

    with open(tmp_path / "trials.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3
    assert {"trial_id", "status", "omega", "top_k", "sigmas", "learning_rate", "patch_size", "objective",
            "sensitivity_at_1", "sensitivity_at_2", "sensitivity_at_4.8", "mean_sensitivity"} <= set(rows[0])
    assert [float(r["sensitivity_at_2"]) for r in rows] == [pytest.approx(0.2)] * 3

    # Best by objective, then higher mean sensitivity (here: higher top_k), then lower omega.
    expected = min(records, key=lambda r: (-r.metrics["val_sensitivity"], -r.values["top_k"], r.values["omega"]))
    with open(tmp_path / "best_hyperparameters.json") as handle:
        config = json.load(handle)
    assert config["values"] == expected.values
    assert [r["trial_id"] for r in rows if r["is_best"] == "1"] == [expected.trial_id]
    assert len({r.values["top_k"] for r in records}) > 1  # the tie-breaker had something to decide
    # TFX convention: the JSON of HyperParameters.get_config(); it round-trips.
    hp = keras_tuner.HyperParameters.from_config(config)
    assert hp.values == config["values"]
    assert json.loads(json.dumps(hp.get_config())) == config
    assert (tmp_path / "objective.png").stat().st_size > 1000
    # The shared settings are recorded as fixed values, for `hourglass train --hparams`.
    assert {k: config["values"][k] for k in ("preset", "batch_size", *TINY)} == {"preset": "tiny", "batch_size": 2, **TINY}


def test_a_trial_runs_under_the_tuners_distribution_strategy(tmp_path):
    import tensorflow as tf

    from tuning import search

    seen = []

    def recording_froc(settings):
        callback = _standin_froc(settings)
        original = callback.on_epoch_end

        def on_epoch_end(epoch, logs=None):
            seen.append((type(callback.model.distribute_strategy).__name__,
                         type(callback.model.trainable_weights[0].value).__name__))
            original(epoch, logs)

        callback.on_epoch_end = on_epoch_end
        return callback

    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    hypermodel = _hypermodel(validation_callback=recording_froc)
    tuner = search.make_tuner(hypermodel, tmp_path, max_trials=1, seed=1, distribution_strategy=strategy)
    assert search.run_search(tuner, tmp_path)["status_counts"] == {"COMPLETED": 1}
    assert seen == [("MirroredStrategy", "MirroredVariable")]  # built in strategy.scope(), trained on it


def test_hyperband_passes_its_epochs_to_fit(tmp_path):
    from tuning import outputs, search

    tuner = search.make_tuner(_hypermodel(), tmp_path, kind="hyperband", max_epochs=2, seed=1)
    summary = search.run_search(tuner, tmp_path)
    records = outputs.load_trials(search.project_dir(tmp_path))
    assert summary["trials"] == len(records) >= 1
    assert all(r.status == "COMPLETED" for r in records)
    epochs = {r.hp_config["values"]["tuner/epochs"] for r in records}
    assert epochs <= {1, 2} and 2 in epochs
    with open(tmp_path / "best_hyperparameters.json") as handle:
        assert not any(k.startswith("tuner/") for k in json.load(handle)["values"])


# ---------------------------------------------------------------------------------------------
# `hourglass tune` on real prepared data (synth -> prepare), as users run it


TUNE_FLAGS = [
    "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "2", "--preset", "tiny",
    "--model-option", "num_stacks=1", "--model-option", "depth=1", "--model-option", "num_features=4",
    "--model-option", "stem_features=4", "--crop-size", "768", "--patch-sizes", "96", "--seed", "1",
    "--val-images", "6", "--run-eagerly", "--sigmas", "24,48", "48",
]
"""Geometry in reference pixels for the 64-px PREP of `make_prepared` (x 64/1536: crop 32, patch 4, sigmas 1-2)."""


def make_prepared(root) -> str:
    """A tiny prepared directory (24 synthetic 64-pixel images, train and val splits)."""
    import contextlib
    import io

    from keras_hourglass.cli.main import main

    synth, prep = os.path.join(root, "synth"), os.path.join(root, "prep")
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["synth", "--out", synth, "--images", "24", "--seed", "1", "--height", "128", "--width", "96",
                     "--malignant-rate", "0.4", "--high-risk-rate", "0.1", "--benign-rate", "0.2",
                     "--no-progress"]) == 0
        assert main(["prepare", "--annotations", os.path.join(synth, "annotations.csv"), "--images-root", synth,
                     "--out", prep, "--size", "64", "--val-fraction", "0.5", "--test-fraction", "0",
                     "--salt", "s", "--quiet"]) == 0
    return prep


def tune_command(prep, out, *extra) -> list[str]:
    import sys

    return [sys.executable, "-m", "keras_hourglass.cli.main", "tune", "--data", prep, "--out", out,
            *TUNE_FLAGS, *extra]


def clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERASTUNER_")}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    return env


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return make_prepared(str(tmp_path_factory.mktemp("tune_data")))


def test_cli_bad_space_file_exits_2_naming_the_file(tmp_path, capsys):
    from keras_hourglass.cli.main import main

    space = tmp_path / "space.json"
    space.write_text('{"omega": {"min": 1, "max": 0.1}}')
    data = tmp_path / "prep"
    data.mkdir()
    (data / "manifest.json").write_text(json.dumps({"images_written": {"val": {"malignant": 1}}}))
    code = main(["tune", "--data", str(data), "--out", str(tmp_path / "tune"), "--space", str(space)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [f"hourglass tune: error: {space}: omega: min (1.0) must be smaller than max (0.1)"]
    assert not (tmp_path / "tune").exists()  # nothing written on bad input
    assert main(["tune", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "t")]) == 2
    assert "missing: prepared data directory not found" in capsys.readouterr().err


def test_cli_rejects_a_val_split_without_malignant_images(tmp_path, capsys):
    from keras_hourglass.cli.main import main

    data = tmp_path / "prep"
    data.mkdir()
    written = {"train": {"malignant": 3}, "val": {"normal": 5, "benign": 1, "high_risk": 0, "malignant": 0}}
    (data / "manifest.json").write_text(json.dumps({"images_written": written}))
    assert main(["tune", "--data", str(data), "--out", str(tmp_path / "tune")]) == 2
    assert f"{data / 'manifest.json'}: the val split has no malignant image" in capsys.readouterr().err


def test_cli_refuses_to_resume_a_search_with_other_settings(tmp_path, capsys):
    from keras_hourglass.cli.main import main

    data = tmp_path / "prep"
    data.mkdir()
    (data / "manifest.json").write_text(json.dumps({"images_written": {"val": {"malignant": 1}}}))
    out = tmp_path / "tune"
    out.mkdir()
    (out / "search.json").write_text(json.dumps({"tuner": "bayesian"}))
    code = main(["tune", "--data", str(data), "--out", str(out), "--preset", "tiny"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"{out / 'search.json'}: --out holds a search with other settings (tuner" in err


@pytest.mark.slow
def test_killed_search_resumes_without_rerunning_completed_trials(prepared, tmp_path, capsys):
    """SIGKILL during trial 2, rerun the same command: trial 1 is kept, trial 2 reruns, 2 trials in all."""
    import signal
    import subprocess
    import time

    from keras_hourglass.training.config import TrainConfig, apply_hparams, load_hparams

    out = str(tmp_path / "tune")
    command = tune_command(prepared, out, "--max-trials", "2")
    project = os.path.join(out, "hourglass_tune")
    first_trial, second_trial = (os.path.join(project, f"trial_{i}", "trial.json") for i in (0, 1))

    log1 = open(tmp_path / "run1.log", "w")
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log1, env=clean_env())
    deadline = time.monotonic() + 360  # generous for loaded CI (xdist runs another file beside it); a hang still fails
    try:
        while not os.path.exists(second_trial):  # trial 2 created = trial 1 ended and saved
            assert proc.poll() is None, "search ended before it could be killed: " + open(tmp_path / "run1.log").read()
            assert time.monotonic() < deadline, "trial 2 never started"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        log1.close()
    assert proc.returncode == -signal.SIGKILL
    with open(first_trial) as handle:
        first = handle.read()
    assert json.loads(first)["status"] == "COMPLETED"
    with open(os.path.join(out, "trials.csv"), newline="") as handle:  # refreshed after each trial
        assert [(r["trial_id"], r["status"]) for r in csv.DictReader(handle)] == [("0", "COMPLETED")]

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=180, env=clean_env())
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "trial 0 started" not in rerun.stderr  # completed trial not retrained
    assert "trial 1 started" in rerun.stderr  # the interrupted trial is run again
    with open(first_trial) as handle:
        assert handle.read() == first  # ... and its record untouched
    summary = json.loads(rerun.stdout)
    assert summary["trials_run"] == ["1"] and summary["trials"] == 2
    with open(os.path.join(out, "trials.csv"), newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["trial_id"], r["status"]) for r in rows] == [("0", "COMPLETED"), ("1", "COMPLETED")]
    for row in rows:  # real FROC numbers from the FrocCallback, in [0, 1]
        for column in ("objective", "sensitivity_at_1", "sensitivity_at_2", "sensitivity_at_4.8", "mean_sensitivity"):
            assert 0.0 <= float(row[column]) <= 1.0

    # best_hyperparameters.json is what `hourglass train --hparams` reads.
    best_path = os.path.join(out, "best_hyperparameters.json")
    values = load_hparams(best_path)
    assert values == summary["best_values"]
    config = apply_hparams(TrainConfig(), values, source=best_path)
    assert (config.omega, config.top_k, config.patch_size) == (values["omega"], values["top_k"], 96)
    # ... and the fixed settings the loss was tuned with: the same model, batch and crop.
    assert (config.preset, config.batch_size, config.crop_size) == ("tiny", 2, 768)
    assert config.model == TINY
    assert config.sigmas == tuple(float(s) for s in values["sigmas"].split(","))

    # --report rebuilds the outputs from the recorded trials, without training.
    from keras_hourglass.cli.main import main

    os.remove(os.path.join(out, "trials.csv"))
    capsys.readouterr()
    assert main(["tune", "--out", out, "--report"]) == 0
    assert json.loads(capsys.readouterr().out)["best_trial_id"] == summary["best_trial_id"]
    assert os.path.exists(os.path.join(out, "trials.csv"))
    assert main(["tune", "--out", str(tmp_path / "nothing"), "--report"]) == 2


def test_executions_of_a_trial_start_from_different_weights(tmp_path):
    import numpy as np

    from tuning import search

    initial = []

    def recording_froc(settings):
        callback = _standin_froc(settings)
        original = callback.on_train_begin

        def on_train_begin(logs=None):
            initial.append(np.asarray(callback.model.trainable_weights[0].numpy()).copy())
            original(logs)

        callback.on_train_begin = on_train_begin
        return callback

    hypermodel = _hypermodel(validation_callback=recording_froc)
    tuner = search.make_tuner(hypermodel, tmp_path, max_trials=1, executions_per_trial=2, seed=1)
    assert search.run_search(tuner, tmp_path)["status_counts"] == {"COMPLETED": 1}
    assert len(initial) == 2 and not np.allclose(initial[0], initial[1])



# ---------------------------------------------------------------------------------------------
# Durability of the search state (tuning.durability)


def test_state_writes_are_atomic(tmp_path, monkeypatch):
    from keras_tuner.src import utils as kt_utils

    from tuning import durability

    assert durability.install_atomic_state_writes()
    path = tmp_path / "oracle.json"
    kt_utils.save_json(str(path), {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}

    def killed(*args):  # the process dies between writing the new state and renaming it
        raise KeyboardInterrupt

    monkeypatch.setattr(durability.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        kt_utils.save_json(str(path), {"a": 2})
    assert json.loads(path.read_text()) == {"a": 1}  # the old state, never a truncated file


def test_corrupt_state_file_is_named(tmp_path):
    from tuning import durability

    (tmp_path / "trial_0").mkdir()
    (tmp_path / "trial_0" / "trial.json").write_text('{"trial_id": "0", "stat')
    with pytest.raises(InputError) as info:
        durability.check_state_files(tmp_path)
    assert info.value.path == str(tmp_path / "trial_0" / "trial.json")


def test_resume_reconciles_the_oracle_with_the_trial_files(tmp_path):
    """Killed between a trial file and oracle.json: no finished trial reruns, no started one is lost."""
    import shutil

    from tuning import search

    project = search.project_dir(tmp_path)
    assert search.run_search(search.make_tuner(_hypermodel(), tmp_path, max_trials=1, seed=4), tmp_path)["trials"] == 1
    oracle_path = os.path.join(project, "oracle.json")
    oracle = json.load(open(oracle_path))

    # (a) trial 0's file says COMPLETED but oracle.json still lists it as running.
    json.dump(dict(oracle, ongoing_trials={"tuner0": "0"}), open(oracle_path, "w"))
    again = search.run_search(search.make_tuner(_hypermodel(), tmp_path, max_trials=1, seed=4), tmp_path)
    assert again["trials_run"] == [] and again["status_counts"] == {"COMPLETED": 1}

    # (b) trial 1's file exists (RUNNING) but oracle.json was not updated after it was created.
    shutil.copytree(os.path.join(project, "trial_0"), os.path.join(project, "trial_1"))
    trial_path = os.path.join(project, "trial_1", "trial.json")
    trial = json.load(open(trial_path))
    json.dump(dict(trial, trial_id="1", status="RUNNING", score=None, metrics={"metrics": {}}), open(trial_path, "w"))
    more = search.run_search(search.make_tuner(_hypermodel(), tmp_path, max_trials=2, seed=4), tmp_path)
    assert more["trials_run"] == ["1"] and more["status_counts"] == {"COMPLETED": 2}

    # (c) a finished search extended with a larger max_trials trains only the new trial.
    extended = search.run_search(search.make_tuner(_hypermodel(), tmp_path, max_trials=3, seed=4), tmp_path)
    assert extended["trials_run"] == ["2"] and extended["status_counts"] == {"COMPLETED": 3}


def test_chief_refreshes_the_outputs_when_a_worker_ends_a_trial(tmp_path, monkeypatch):
    from tuning import search

    monkeypatch.setenv("KERASTUNER_TUNER_ID", "chief")
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", "1")
    tuner = search.make_tuner(_hypermodel(), tmp_path, max_trials=2, seed=1)
    # What the gRPC servicer does for a worker: create a trial, record its metrics, end it.
    trial = tuner.oracle.create_trial("tuner0")
    tuner.oracle.update_trial(trial.trial_id, {"val_sensitivity": 0.5, "val_mean_sensitivity": 0.2})
    trial.status = "COMPLETED"
    tuner.oracle.end_trial(trial)
    with open(tmp_path / "trials.csv", newline="") as handle:
        assert [(r["trial_id"], r["status"], r["objective"]) for r in csv.DictReader(handle)] == [
            (trial.trial_id, "COMPLETED", "0.5")]
    assert json.load(open(tmp_path / "best_hyperparameters.json"))["values"] == trial.hyperparameters.values


# ---------------------------------------------------------------------------------------------
# TensorBoard HParams data (tuning.hparams), read back with TensorBoard's own readers


def _read_hparams(logs):
    """{run: session start info or experiment}, {run: {tag: value}} read with TensorBoard's event APIs."""
    import tensorflow as tf
    from tensorboard.backend.event_processing import plugin_event_multiplexer
    from tensorboard.plugins.hparams import metadata

    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(logs))
    mux.Reload()
    infos = {}
    for run, tags in mux.PluginRunToTagToContent(metadata.PLUGIN_NAME).items():
        for tag, content in tags.items():
            if tag == metadata.EXPERIMENT_TAG:
                infos[run] = metadata.parse_experiment_plugin_data(content)
            elif tag == metadata.SESSION_START_INFO_TAG:
                infos[run] = metadata.parse_session_start_info_plugin_data(content)
    scalars = {}
    for run, tags in mux.PluginRunToTagToContent("scalars").items():
        scalars[run] = {tag: float(tf.make_ndarray(mux.Tensors(run, tag)[-1].tensor_proto)) for tag in tags}
    return infos, scalars


def _hparam_value(value):
    kind = value.WhichOneof("kind")
    return {"number_value": value.number_value, "string_value": value.string_value,
            "bool_value": value.bool_value}[kind]


def test_hparams_dashboard_holds_every_finished_trial(tmp_path):
    import shutil

    from tuning import hparams, outputs, search

    tuner = search.make_tuner(_hypermodel(), tmp_path, max_trials=2, seed=3)
    summary = search.run_search(tuner, tmp_path)
    assert summary["hparams_logs"] == str(tmp_path / "logs")
    records = outputs.load_trials(search.project_dir(tmp_path))
    assert len(records) == 2 and all(r.completed for r in records)

    def check():
        infos, scalars = _read_hparams(tmp_path / "logs")
        experiment = infos.pop(".")
        assert [i.name for i in experiment.hparam_infos] == ["omega", "top_k", "sigmas", "learning_rate"]
        assert [m.name.tag for m in experiment.metric_infos] == [
            "val_sensitivity", "val_sensitivity_at_1", "val_sensitivity_at_2", "val_sensitivity_at_4.8",
            "val_mean_sensitivity", "val_max_sensitivity"]
        assert sorted(infos) == sorted(f"trial_{r.trial_id}" for r in records)
        for record in records:
            run = f"trial_{record.trial_id}"
            values = {name: _hparam_value(v) for name, v in infos[run].hparams.items()}
            # the searched values (patch_size is fixed by the fixture: not searched, not shown)
            assert values == pytest.approx({k: record.values[k] for k in ("omega", "top_k", "sigmas", "learning_rate")})
            assert infos[run].group_name == record.trial_id
            expected = {tag: record.metrics[tag] for tag, _ in hparams.METRICS}
            assert scalars[run] == pytest.approx(expected)

    check()
    # Resumable: a session lost (killed before it was written) is written by the next run, once.
    shutil.rmtree(tmp_path / "logs" / f"trial_{records[1].trial_id}")
    again = search.run_search(search.make_tuner(_hypermodel(), tmp_path, max_trials=2, seed=3), tmp_path)
    assert again["trials_run"] == []
    check()
    assert all(len(os.listdir(tmp_path / "logs" / f"trial_{r.trial_id}")) == 1 for r in records)
    # --overwrite starts the dashboard over with the search.
    search.make_tuner(_hypermodel(), tmp_path, max_trials=2, seed=3, overwrite=True)
    assert not (tmp_path / "logs").exists()


def test_hparams_of_a_trial_run_by_a_worker_are_written_by_the_chief(tmp_path, monkeypatch):
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "chief")
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", "1")
    from tuning import search

    tuner = search.make_tuner(_hypermodel(), tmp_path, max_trials=2, seed=1)
    # What the chief's gRPC servicer does for a worker: create a trial, record its metrics, end it.
    trial = tuner.oracle.create_trial("tuner0")
    metrics = {"val_sensitivity": 0.5, "val_mean_sensitivity": 0.2, "val_max_sensitivity": 0.75,
               "val_sensitivity_at_1": 0.25, "val_sensitivity_at_2": 0.375, "val_sensitivity_at_4.8": 0.5}
    tuner.oracle.update_trial(trial.trial_id, metrics)
    trial.status = "COMPLETED"
    tuner.oracle.end_trial(trial)
    infos, scalars = _read_hparams(tmp_path / "logs")
    run = f"trial_{trial.trial_id}"
    assert {k: _hparam_value(v) for k, v in infos[run].hparams.items()} == pytest.approx(
        {k: trial.hyperparameters.values[k] for k in ("omega", "top_k", "sigmas", "learning_rate")})
    assert scalars[run] == pytest.approx(metrics)
