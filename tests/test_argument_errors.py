"""The library names its Python arguments; each subcommand maps them to its flags (`errors.with_flags`)."""

from __future__ import annotations

import re
import subprocess

import pytest

from keras_hourglass.cli.main import main as cli_main
from keras_hourglass.errors import ArgumentError


def _cli_error(capsys, argv: list[str]) -> str:
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err.strip()


def test_train_epochs_python_argument_and_flag(tmp_path, capsys):
    from keras_hourglass.training.config import split_epochs

    with pytest.raises(ArgumentError) as info:
        split_epochs("both", 2, None, 5)
    assert info.value.argument == "epochs" and str(info.value) == "epochs: 2 != patch_epochs=-3 + full_epochs=5"
    err = _cli_error(capsys, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--epochs", "2",
                              "--full-epochs", "5"])
    assert err == "hourglass train: error: --epochs: 2 != --patch-epochs -3 + --full-epochs 5"


def test_train_config_field_python_argument_and_flag(tmp_path, capsys):
    from keras_hourglass.training.config import TrainConfig

    with pytest.raises(ArgumentError, match="^full_learning_rate: needs lr_schedule=constant "):
        TrainConfig(full_learning_rate=1e-4).validate()
    with pytest.raises(ArgumentError, match="^crop_size: must be >= 1, got 0$"):
        TrainConfig(crop_size=0).validate()
    err = _cli_error(capsys, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"),
                              "--full-learning-rate", "1e-4"])
    assert err.startswith("hourglass train: error: --full-learning-rate: needs --lr-schedule constant (")
    with pytest.raises(ArgumentError, match=r"^zoom: must be a number in \[1, 4\], got 0.5$"):
        TrainConfig(zoom=0.5).validate()
    err = _cli_error(capsys, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--zoom", "9"])
    assert err == "hourglass train: error: --zoom: must be a number in [1, 4], got 9.0"


def test_prepare_python_argument_and_flag(tmp_path, capsys):
    from keras_hourglass.data.importers import get_importer
    from keras_hourglass.data.prepare import PrepareConfig, prepare

    root, table = tmp_path / "in", tmp_path / "table.csv"
    root.mkdir()
    table.write_text("image_path\n")
    with pytest.raises(ArgumentError, match=r"^size: 8 is too small \(at least 16 pixels\)$"):
        prepare(PrepareConfig(annotations=[str(table)], images_root=str(root), out=str(tmp_path / "p"), size=8))
    with pytest.raises(ArgumentError, match="^out: is images_root= or inside it: "):
        prepare(PrepareConfig(annotations=[str(table)], images_root=str(root), out=str(root / "p")))
    with pytest.raises(ArgumentError, match="^fmt: unknown format 'nope'"):
        get_importer("nope")
    base = ["prepare", "--annotations", str(table), "--images-root", str(root)]
    err = _cli_error(capsys, [*base, "--out", str(tmp_path / "p"), "--size", "8"])
    assert err == "hourglass prepare: error: --size: 8 is too small (at least 16 pixels)"
    err = _cli_error(capsys, [*base, "--out", str(root / "p")])
    assert err.startswith("hourglass prepare: error: --out: is --images-root or inside it: ")
    err = _cli_error(capsys, [*base, "--out", str(tmp_path / "p"), "--images-per-file", "0"])
    assert err == "hourglass prepare: error: --images-per-file: must be at least 1"


def test_library_errors_name_no_flags_and_every_argument_has_a_flag():
    """No `InputError("--flag", ...)` left in training/ and data/; each argument they name maps to a flag."""
    from keras_hourglass.cli.prepare import _prepare_flags
    from keras_hourglass.cli.train import TRAIN_FLAGS

    tree = "keras_hourglass/training keras_hourglass/data".split()
    flagged = subprocess.run(["git", "grep", "-nE", r"Error\(f?\"--", "--", *tree], capture_output=True, text=True)
    assert flagged.stdout == "", flagged.stdout
    named = subprocess.run(["git", "grep", "-hoE", r"ArgumentError\(\"[a-z_]+\"", "--", *tree],
                           capture_output=True, text=True, check=True).stdout
    arguments = set(re.findall(r'"([a-z_]+)"', named))
    assert {"epochs", "strategy", "batch_size", "size", "workers", "fmt", "annotations"} <= arguments
    assert arguments <= set(TRAIN_FLAGS) | set(_prepare_flags()), arguments - set(TRAIN_FLAGS) - set(_prepare_flags())


def test_two_stage_errors_name_no_flags_and_its_clis_map_every_argument():
    """two_stage/ speaks Python too; `hourglass proposals` and `train --stage 2` map what it names."""
    from keras_hourglass.cli.proposals import PROPOSALS_FLAGS
    from keras_hourglass.cli.train_stage2 import STAGE2_FLAGS
    from keras_hourglass.errors import ArgumentError, with_flags
    from keras_hourglass.two_stage.train import Stage2Config

    tree = ["keras_hourglass/two_stage"]
    flagged = subprocess.run(["git", "grep", "-nE", r"Error\(f?\"--", "--", *tree], capture_output=True, text=True)
    assert flagged.stdout == "", flagged.stdout
    named = subprocess.run(["git", "grep", "-hoE", r"ArgumentError\(\"[a-z_]+\"", "--", *tree],
                           capture_output=True, text=True, check=True).stdout
    arguments = set(re.findall(r'"([a-z_]+)"', named))
    assert {"threshold", "operating_point", "learning_rate", "dropout"} <= arguments
    from export.cli import EXPORT_FLAGS  # the combination: evaluate --classifier and export --classifier

    mapped = set(PROPOSALS_FLAGS) | set(STAGE2_FLAGS) | set(EXPORT_FLAGS)
    assert arguments <= mapped, arguments - mapped
    with pytest.raises(ArgumentError) as caught:
        Stage2Config(dropout=1.5).validate()
    assert (caught.value.argument, str(caught.value.reason)) == ("dropout", "must be in [0, 1), got 1.5")
    cli = with_flags(caught.value, STAGE2_FLAGS)
    assert (cli.path, cli.reason) == ("--dropout", "must be in [0, 1), got 1.5")


def test_training_without_a_val_split_warns_in_python_terms(tmp_path):
    """The library warns (warnings.warn), it does not print as if it were the CLI."""
    from keras_hourglass.training.config import TrainConfig
    from keras_hourglass.training.train import _validation

    (tmp_path / "train").mkdir()
    with pytest.warns(UserWarning, match="training without validation") as caught:
        assert _validation(str(tmp_path), TrainConfig(), 32, None) == (None, None)
    assert "hourglass train" not in str(caught[0].message)
