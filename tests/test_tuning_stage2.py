"""`hourglass tune --stage 2`: a tiny 2-trial search over the stage-two classifier (hand-built PREP of test_two_stage).

Checks: the outputs of stage-one tuning (best_hyperparameters.json, trials.csv), the objective (the
two-stage val sensitivity at 2 FPI), resume (a rerun runs no trial), refusals (other settings, stage-one
flags), and that `train --stage 2 --hparams best_hyperparameters.json` retrains the best trial's weights.
"""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
keras = pytest.importorskip("keras")
pytest.importorskip("keras_tuner")

from keras_hourglass.cli.main import main  # noqa: E402
from test_two_stage import one_line_error, standin_model, write_prep  # noqa: E402


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune_stage2")
    prep = write_prep(root / "prep")
    model_path = str(root / "stage1.keras")
    standin_model().save(model_path)
    proposals, tune = str(root / "proposals"), str(root / "tune")
    assert main(["proposals", "--model", model_path, "--data", prep, "--out", proposals, "--threshold", "0.1",
                 "--quiet"]) == 0
    command = ["tune", "--stage", "2", "--data", proposals, "--out", tune, "--max-trials", "2", "--epochs", "1",
               "--steps-per-epoch", "2", "--batch-size", "8", "--run-eagerly", "--seed", "5"]
    assert main(command) == 0
    return {"root": root, "proposals": proposals, "tune": tune, "command": command}


def test_outputs_are_stage_ones(searched):
    tune = searched["tune"]
    rows = list(csv.DictReader(open(os.path.join(tune, "trials.csv"))))
    assert len(rows) == 2 and all(r["status"] == "COMPLETED" for r in rows)
    assert sum(int(r["is_best"]) for r in rows) == 1
    assert {"learning_rate", "dropout", "dense", "filters", "balance", "objective"} <= set(rows[0])
    best = json.load(open(os.path.join(tune, "best_hyperparameters.json")))["values"]
    assert best["batch_size"] == 8 and set(best) == {"learning_rate", "dropout", "dense", "filters", "balance",
                                                     "batch_size"}
    settings = json.load(open(os.path.join(tune, "search.json")))
    assert settings["stage"] == 2 and settings["target_fpi"] == 2.0


def test_objective_is_the_two_stage_val_sensitivity(searched):
    from tuning.outputs import best_trial, load_trials

    record = best_trial(load_trials(os.path.join(searched["tune"], "hourglass_tune")))
    metrics = record.metrics
    # Stage one alone finds the one val cancer with its best mark: sensitivity 1 at 2 FPI.
    assert metrics["val_stage_one_sensitivity"] == 1.0
    assert 0.0 <= metrics["val_sensitivity"] <= 1.0
    assert metrics["val_sensitivity"] == metrics["val_sensitivity_at_2"]
    assert metrics["val_stage_two_weight"] in (1.0, 0.75, 0.5, 0.25) and "val_auc" in metrics


def test_rerun_resumes_and_other_settings_are_refused(searched, capsys):
    capsys.readouterr()
    assert main(searched["command"]) == 0
    assert json.loads(capsys.readouterr().out)["trials_run"] == []  # both trials kept, none rerun
    assert main([*searched["command"][:-2], "--seed", "6"]) == 2  # command ends with --seed 5
    one_line_error(capsys, "tune", "other settings (seed)")
    assert main([*searched["command"], "--omega-range", "0.01,0.1"]) == 2
    one_line_error(capsys, "tune", "--omega-range: is a stage-one setting")
    assert main([*searched["command"][:-2], "--target-fpi", "3"]) == 2
    one_line_error(capsys, "tune", "--target-fpi")


def test_train_with_the_best_hyperparameters_retrains_the_best_trial(searched):
    from tuning.outputs import best_trial, load_trials
    from keras_hourglass.two_stage.classifier import load_classifier
    from keras_hourglass.two_stage.train import Stage2Config, apply_hparams, compile_classifier

    tune, run2 = searched["tune"], str(searched["root"] / "run2")
    best_file = os.path.join(tune, "best_hyperparameters.json")
    assert main(["train", "--stage", "2", "--data", searched["proposals"], "--out", run2, "--hparams", best_file,
                 "--epochs", "1", "--steps-per-epoch", "2", "--seed", "5", "--quiet"]) == 0
    record = best_trial(load_trials(os.path.join(tune, "hourglass_tune")))
    values = json.load(open(best_file))["values"]
    config = apply_hparams(Stage2Config(epochs=1, steps_per_epoch=2, seed=5), values)
    trial_model = compile_classifier(config, 16)
    trial_model.load_weights(os.path.join(tune, "hourglass_tune", f"trial_{record.trial_id}",
                                          "checkpoint.weights.h5"))
    retrained = load_classifier(os.path.join(run2, "model.keras"))
    for a, b in zip(trial_model.get_weights(), retrained.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)  # the trial ran eagerly, train in a graph
    chosen = json.load(open(os.path.join(run2, "config.json")))["two_stage"]["combination"]
    assert chosen["candidates"][chosen["name"]]["sensitivity_at_fpi"]["2"] == record.metrics["val_sensitivity"]


def test_space_and_hparams_file_errors():
    import keras_tuner

    from keras_hourglass.errors import InputError
    from keras_hourglass.two_stage.train import Stage2Config, apply_hparams
    from tuning.stage2 import STAGE2_PARAM_NAMES, Stage2Space

    hp = keras_tuner.HyperParameters()
    values = Stage2Space().declare(hp)
    assert tuple(values) == STAGE2_PARAM_NAMES and values["filters"] in ("8,16,32", "16,32,64", "32,64,128")
    config = apply_hparams(Stage2Config(), {**values, "tuner/epochs": 3})
    assert isinstance(config.filters, tuple) and config.balance in ("sampling", "weights")
    with pytest.raises(InputError, match="best.json: unknown stage-two hyper-parameter 'omega'"):
        apply_hparams(Stage2Config(), {"omega": 0.1}, source="best.json")
    with pytest.raises(InputError, match="best.json: dropout: must be in"):
        apply_hparams(Stage2Config(), {"dropout": 1.5}, source="best.json")
