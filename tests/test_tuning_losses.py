"""`hourglass tune --loss l2|focal`: each loss tuned over its own settings ("tuned against tuned")."""

from __future__ import annotations

import json

import pytest

from keras_hourglass.errors import InputError
from tuning import search_space as ss

TINY = {"num_stacks": 1, "depth": 1, "num_features": 4, "stem_features": 4}


def test_each_loss_has_its_own_default_space():
    hypersensitive = ss.default_space("hypersensitive")
    assert hypersensitive == ss.SearchSpace() and hypersensitive.target_sigma is None
    for loss in ("l2", "focal"):
        space = ss.default_space(loss)
        assert space.tuned_names() == ["learning_rate", "target_sigma"]
        assert space.target_sigma == ss.Range(6.0, 24.0, "log") and space.learning_rate == ss.Range(1e-4, 3e-3, "log")
        assert ss.space_from_dict(space.to_json(), base=space) == space  # the recorded space reloads
    with pytest.raises(ValueError, match="loss must be one of"):
        ss.default_space("mse")


def test_a_setting_of_another_loss_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "space.json"
    path.write_text(json.dumps({"omega": {"min": 0.01, "max": 0.1}}))
    with pytest.raises(InputError, match="omega is not a setting of the l2 loss") as err:
        ss.check_space_for_loss(ss.load_space(path, ss.default_space("l2")), "l2", path)
    assert str(err.value).startswith(f"{path}: ")
    path.write_text(json.dumps({"target_sigma": {"values": [8, 12]}, "learning_rate": {"fixed": 0.001}}))
    space = ss.check_space_for_loss(ss.load_space(path, ss.default_space("focal")), "focal", path)
    assert space.target_sigma == ss.Choice((8.0, 12.0)) and space.learning_rate == ss.Fixed(0.001)
    with pytest.raises(InputError, match="target_sigma is not a setting of the hypersensitive loss"):
        ss.check_space_for_loss(ss.apply_flags(ss.SearchSpace(), target_sigma_range="12"), "hypersensitive")


def test_cli_refuses_flags_of_another_loss_and_writes_nothing(tmp_path, capsys):
    from keras_hourglass.cli.main import main
    from test_tuning import make_prepared

    prep = make_prepared(str(tmp_path / "data"))
    out = tmp_path / "tune"
    for loss, flag, value in (("l2", "--omega-range", "0.01,0.1"), ("focal", "--sigmas", "6,12"),
                              ("hypersensitive", "--target-sigma-range", "8,16")):
        assert main(["tune", "--data", prep, "--out", str(out), "--loss", loss, flag, value]) == 2
        assert flag in capsys.readouterr().err
    assert main(["tune", "--stage", "2", "--data", prep, "--out", str(out), "--loss", "l2"]) == 2
    assert "--loss" in capsys.readouterr().err
    assert not out.exists()


def _standin_froc(settings):
    """Records the loss each trial was really compiled with; the objective rises with its sigma."""
    import keras

    class StandInFroc(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            loss = self.model.loss[0] if isinstance(self.model.loss, (list, tuple)) else self.model.loss
            logs["val_sensitivity"] = min(1.0, loss.sigma / 30.0)
            logs["val_mean_sensitivity"] = logs["val_max_sensitivity"] = 0.5
            logs["val_seen_sigma"] = loss.sigma
            logs["val_seen_focal"] = float(type(loss).__name__ == "PenaltyReducedFocalLoss")

    return StandInFroc()


@pytest.mark.parametrize("loss,loss_class", [("l2", "GaussianL2Loss"), ("focal", "PenaltyReducedFocalLoss")])
def test_a_search_over_l2_or_focal_trains_that_loss_and_records_it_for_train(tmp_path, loss, loss_class):
    from keras_hourglass.training.config import TrainConfig, apply_hparams
    from tuning import outputs, search
    from test_tuning import _memory_dataset
    from tuning.hypermodel import HourglassHyperModel

    hypermodel = HourglassHyperModel(None, loss=loss, preset="tiny", model_overrides=TINY, batch_size=2, epochs=1,
                                     steps_per_epoch=1, seed=1, train_data=_memory_dataset,
                                     validation_callback=_standin_froc, run_eagerly=True)
    model = hypermodel.build(hypermodel_values(target_sigma=10.0, learning_rate=1e-3))
    assert type(model.loss[0] if isinstance(model.loss, (list, tuple)) else model.loss).__name__ == loss_class
    tuner = search.make_tuner(hypermodel, tmp_path, kind="random", max_trials=3, seed=2)
    search.run_search(tuner, tmp_path)
    records = outputs.load_trials(search.project_dir(tmp_path))
    assert len(records) == 3 and all(r.status == "COMPLETED" for r in records)
    for r in records:  # each trial trained the tuned loss with its own target sigma (no PREP: scale 1)
        assert 6.0 <= r.values["target_sigma"] <= 24.0 and "omega" not in r.values
        assert r.metrics["val_seen_sigma"] == pytest.approx(r.values["target_sigma"], rel=1e-3)
        assert r.metrics["val_seen_focal"] == float(loss == "focal")
    best = json.loads((tmp_path / "best_hyperparameters.json").read_text())["values"]
    assert best["target_sigma"] == max(r.values["target_sigma"] for r in records)  # the objective decided
    config = apply_hparams(TrainConfig(), best)  # what `hourglass train --hparams` reads
    assert (config.loss, config.target_sigma) == (loss, best["target_sigma"])
    assert (tmp_path / "objective.png").stat().st_size > 1000


def hypermodel_values(**values):
    import keras_tuner

    hp = keras_tuner.HyperParameters()
    hp.values.update(values)
    return hp


def test_trial_phases_follow_patch_and_full_epochs_as_train_does(tmp_path, capsys):
    from keras_hourglass.cli.main import main
    from test_tuning import make_prepared
    from tuning.hypermodel import HourglassHyperModel

    hypermodel = HourglassHyperModel(None, model_overrides=TINY, epochs=16, patch_epochs=12, full_epochs=4)
    assert hypermodel.base_config.phases() == [("patch", 12), ("full", 4)]  # train --patch-epochs 12 --full-epochs 4
    prep = make_prepared(str(tmp_path / "data"))
    out = tmp_path / "tune"
    for flags, needle in ((["--patch-epochs", "2", "--full-epochs", "1", "--epochs", "4"], "--epochs"),
                          (["--patch-epochs", "2", "--tuner", "hyperband"], "--patch-epochs"),
                          (["--full-epochs", "-1"], "--full-epochs")):
        assert main(["tune", "--data", prep, "--out", str(out), *flags]) == 2
        assert needle in capsys.readouterr().err
    assert not out.exists()


def test_a_search_recorded_before_loss_was_a_setting_still_resumes(tmp_path):
    from tuning import cli

    settings = {k: None for k in (*cli._SEARCH_KEYS, "max_trials", "data")}
    old = {k: v for k, v in settings.items() if k not in ("loss", "patch_epochs", "full_epochs")}
    (tmp_path / cli.SETTINGS_FILE).write_text(json.dumps(old))
    cli._check_settings(str(tmp_path), {**settings, "loss": "hypersensitive"}, overwrite=False)  # resumes
    with pytest.raises(InputError, match="other settings \\(loss\\)"):
        cli._check_settings(str(tmp_path), {**settings, "loss": "l2"}, overwrite=False)
