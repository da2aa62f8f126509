"""`hourglass train`: configuration precedence, bad input, and one real end-to-end run."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from keras_hourglass import contract
from keras_hourglass.errors import InputError


def parse(*argv):
    from keras_hourglass.cli import train as cli

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    cli.register(sub)
    return parser.parse_args(["train", "--data", "PREP", "--out", "RUN", *map(str, argv)])


def build(*argv):
    from keras_hourglass.cli.train import build_config

    return build_config(parse(*argv))


def test_defaults_and_the_paper_profile():
    config = build()
    assert (config.loss, config.omega, config.top_k, config.learning_rate) == ("hypersensitive", 0.01, 3, 1e-3)
    # principle (a) is off by default (chosen on validation, README) and on in the paper profile
    assert config.sigmas == (6.0, 9.0, 12.0, 18.0) and config.recenter is False
    assert (config.patch_size, config.crop_size, config.lr_schedule) == (72, 768, "cosine")
    assert config.phases() == [("patch", 5), ("full", 5)]
    paper = build("--profile", "paper")
    assert (paper.learning_rate, paper.lr_schedule, paper.images_per_epoch, paper.preset) == (
        1e-4, "constant", 8000, "paper")
    assert paper.phases() == [("patch", 40), ("full", 40)] and paper.recenter is True
    assert build("--recenter").recenter is True and build("--profile", "paper", "--no-recenter").recenter is False
    assert build("--profile", "paper", "--learning-rate", "3e-4", "--epochs", "4").learning_rate == 3e-4
    with pytest.raises(InputError, match="--full-learning-rate"):
        build("--full-learning-rate", "1e-4")
    assert build("--lr-schedule", "constant", "--full-learning-rate", "1e-4").full_learning_rate == 1e-4


def test_precedence_defaults_then_hparams_then_flags(tmp_path):
    hp = tmp_path / "best_hyperparameters.json"
    hp.write_text(json.dumps({  # keras_tuner HyperParameters.get_config() form
        "space": [{"class_name": "Float", "config": {"name": "omega"}}],
        "values": {"omega": 0.05, "top_k": 5, "learning_rate": 3e-4, "sigmas": "2,4",
                   "patch_size": 16, "num_features": 24, "tuner/epochs": 3}}))
    config = build("--hparams", hp)
    assert (config.omega, config.top_k, config.learning_rate, config.sigmas, config.patch_size) == (
        0.05, 5, 3e-4, (2.0, 4.0), 16)
    assert config.model == {"num_features": 24}
    config = build("--hparams", hp, "--omega", "1.0", "--sigmas", "3", "--model-option", "num_features=8")
    assert (config.omega, config.top_k, config.sigmas, config.model) == (1.0, 5, (3.0,), {"num_features": 8})
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps({"top_k": 0, "loss": "l2"}))
    assert (build("--hparams", flat).top_k, build("--hparams", flat).loss) == (0, "l2")


def test_epoch_split():
    assert build("--epochs", "5").phases() == [("patch", 3), ("full", 2)]
    assert build("--epochs", "5", "--patch-epochs", "4").phases() == [("patch", 4), ("full", 1)]
    assert build("--phase", "full", "--epochs", "3").phases() == [("full", 3)]
    assert build("--patch-epochs", "2", "--full-epochs", "0").phases() == [("patch", 2)]
    with pytest.raises(InputError, match="--epochs: 5 != --patch-epochs 1 \\+ --full-epochs 1"):
        build("--epochs", "5", "--patch-epochs", "1", "--full-epochs", "1")


def test_recenter_region_flag_and_hparams():
    assert build().recenter_region == "patch"
    assert build("--recenter-region", "box").recenter_region == "box"
    with pytest.raises(SystemExit):
        build("--recenter-region", "image")


def test_bad_hparams_name_the_file(tmp_path):
    bad = tmp_path / "hp.json"
    bad.write_text("{nope")
    with pytest.raises(InputError, match="hp.json: not valid JSON"):
        build("--hparams", bad)
    bad.write_text(json.dumps({"values": {"omegaa": 0.1}, "space": []}))
    with pytest.raises(InputError, match="hp.json: unknown hyper-parameter 'omegaa'"):
        build("--hparams", bad)
    bad.write_text(json.dumps({"top_k": 2.5}))
    with pytest.raises(InputError, match="--top-k: must be an integer"):
        build("--hparams", bad)


def test_cli_help_and_bad_data_exit_codes(tmp_path, capsys):
    from keras_hourglass.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "TF_CONFIG" in out and "GLOBAL batch" in out
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"hourglass train: error: {tmp_path / 'missing'}: not a directory (run `hourglass prepare` first)"]
    (tmp_path / "empty").mkdir()
    assert main(["train", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "run")]) == 2
    assert "no manifest.json" in capsys.readouterr().err
    prep = write_prep(tmp_path / "prep")
    # 4 reference px at a 64-px PREP is 0.17 heatmap px: refused in one line, before anything is written.
    assert main(["train", "--data", prep, "--out", str(tmp_path / "run"), "--patch-size", "4"]) == 2
    assert capsys.readouterr().err.strip() == (
        "hourglass train: error: --patch-size: 4 reference px resolves to 0.17 heatmap px at long side 64 px "
        "(stride 4), below the minimum 3: give at least 72")
    assert not (tmp_path / "run").exists()  # nothing written for a refused run


def test_a_prep_without_training_positives_is_refused(tmp_path, capsys):
    from keras_hourglass.cli.main import main

    prep = tmp_path / "prep"
    prep.mkdir()
    (prep / "manifest.json").write_text(json.dumps({
        "preprocessing": {"long_side": 64},
        "images_written": {"train": {"normal": 4, "benign": 2, "high_risk": 0, "malignant": 0}}}))
    assert main(["train", "--data", str(prep), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "the train split has no high_risk or malignant image" in err
    assert not (tmp_path / "run").exists()


def write_prep(root) -> str:
    """A small prepared directory: 64x64 images, bright squares on the positive findings."""
    from keras_hourglass.data import records

    rng = np.random.RandomState(0)
    counter = 0

    def example(label, patient):
        nonlocal counter
        counter += 1
        pixels = (0.1 * rng.rand(64, 64)).astype(np.float32)
        boxes, labels, types = np.zeros((0, 4)), [], []
        if label != "normal":
            y, x = rng.randint(8, 48, size=2)
            pixels[y:y + 8, x:x + 8] = 0.9
            boxes, labels, types = [[y, x, y + 8, x + 8]], [label], ["mass"]
        return records.make_example(pixels, boxes=boxes, box_labels=labels, finding_types=types,
                                    patient_hash=patient, image_hash=f"i{counter}", study_hash="s",
                                    transform=[64.0, 64.0, 64.0, 64.0, 0.0]).SerializeToString()

    for split, per in (("train", 3), ("val", 2)):
        for stratum in contract.LABELS:
            if split == "val" and stratum in ("benign", "high_risk"):
                continue
            items = [example(stratum, f"{split}{stratum}{i}") for i in range(per)]
            records.write_records_atomic(os.path.join(root, split, contract.shard_file_name(stratum, 0)), items)
    with open(os.path.join(root, "manifest.json"), "w") as handle:
        json.dump({"note": "test fixture", "preprocessing": {"long_side": 64}}, handle)
    return str(root)


@pytest.mark.slow
def test_train_end_to_end_writes_every_output(tmp_path):
    prep = write_prep(tmp_path / "prep")
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "keras_hourglass.cli.main", "train", "--data", prep, "--out", str(run),
           "--patch-epochs", "2", "--full-epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2",
           "--crop-size", "768", "--patch-size", "96", "--sigmas", "24,48", "--val-images", "4",
           "--model-option", "num_stacks=1", "--model-option", "depth=1", "--model-option", "num_features=8",
           "--model-option", "stem_features=4", "--learning-rate", "1e-3", "--seed", "5", "--no-jit-compile", "--quiet"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("TF_CONFIG", None)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])  # JSON summary, last line of stdout
    assert summary["epochs_completed"] == 3 and summary["strategy"] == "default"

    # config.json: enough to rebuild and reproduce.
    config = json.loads((run / "config.json").read_text())
    manifest = hashlib.sha256((tmp_path / "prep" / "manifest.json").read_bytes()).hexdigest()
    assert config["data"]["manifest_sha256"] == manifest
    assert config["hyperparameters"]["omega"] == 0.01 and config["hyperparameters"]["patch_epochs"] == 2
    assert config["model"]["config"]["depth"] == 1 and config["model"]["output_stride"] == 4
    assert config["loss"]["omega"] == 0.01 and config["loss"]["top_k"] == 3
    # Reference pixels resolved against the PREP's 64-px long side: x 64/1536.
    assert config["geometry"]["given"]["patch_size"] == 96 and config["geometry"]["given"]["crop_size"] == 768
    assert config["geometry"]["resolved"]["patch_size"] == config["loss"]["patch_size"] == 4
    assert config["loss"]["sigmas"] == [1.0, 2.0] and config["geometry"]["resolved"]["crop_size"] == 32
    assert set(config["versions"]) >= {"tensorflow", "keras", "keras_hourglass", "numpy"}
    assert config["seed"] == 5 and "--crop-size" in config["command"]
    assert config["strategy"]["global_batch_size"] == 2 and config["strategy"]["learning_rate_scaled"] is False

    # History: one row per global epoch, both phases, the validation FROC in the logs.
    from keras_hourglass.training.callbacks import read_history

    history = read_history(str(run / "history.csv"))
    assert [(int(r["epoch"]), r["phase"]) for r in history] == [(1, "patch"), (2, "patch"), (3, "full")]
    assert all("val_sensitivity" in r for r in history)
    assert all(float(r["epoch_seconds"]) > 0 for r in history)  # the quality benchmark's time to quality

    # The inference model: image -> one heatmap at stride 4.
    import keras

    import keras_hourglass.model  # noqa: F401  (registers the custom layers; the package is lazy)

    model = keras.models.load_model(run / "model.keras")  # plain Keras: no loss or optimizer in the file
    assert getattr(model, "optimizer", None) is None
    assert len(model.outputs) == 1
    heatmap = model.predict(np.zeros((1, 64, 64, 1), np.float32), verbose=0)
    assert heatmap.shape == (1, 16, 16, 1)

    # Best checkpoint by val_sensitivity (saved whenever the value is finite and improves).
    best = json.loads((run / "best.json").read_text())
    assert best["monitor"] == "val_sensitivity" and 1 <= best["epoch"] <= 3
    best_model = keras.models.load_model(run / "best.keras")
    assert len(best_model.outputs) == 1 and getattr(best_model, "optimizer", None) is None

    # TensorBoard: scalars and heatmap images.
    import tensorflow as tf

    tags = set()
    for name in os.listdir(run / "logs" / "train"):
        for raw in tf.data.TFRecordDataset(str(run / "logs" / "train" / name)):
            event = tf.compat.v1.Event.FromString(raw.numpy())
            tags.update(v.tag for v in event.summary.value)
    assert {"epoch_loss", "epoch_val_sensitivity", "learning_rate", "heatmaps", "images"} <= tags
