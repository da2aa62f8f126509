"""Object storage: every user-pointable path goes through `keras_hourglass.storage` (tf.io.gfile for URLs).

1. End to end under TensorFlow's in-memory ``ram://`` filesystem: prepare -> train -> evaluate ->
   export -> predict --saved-model, every output under ``ram://`` (the raw DICOM input stays local:
   pydicom reads it).
2. Publication order on a store without atomic rename: a recording wrapper around the storage
   primitives shows that an export writes nothing under the numeric version name before the whole
   version exists under a non-numeric name, and that ``saved_model.pb`` is the last file moved into
   it; a backup's ``state.json`` (its marker) is written only after the weights it names.
3. Conventions: no ``open(`` / ``os.replace`` / ``glob.glob`` / ``shutil.`` / ``os.listdir`` /
   ``os.makedirs`` outside the storage modules and the listed exceptions.
"""

from __future__ import annotations

import json
import os
import uuid

import numpy as np
import pytest

from keras_hourglass import storage

tf = pytest.importorskip("tensorflow")


def _ram(name: str) -> str:
    return f"ram://hourglass-{uuid.uuid4().hex[:8]}/{name}"


# --------------------------------------------------------------------------- storage basics
def test_storage_primitives_on_ram_and_local(tmp_path):
    for root in (_ram("basics"), str(tmp_path / "basics")):
        storage.write_json(storage.join(root, "a", "x.json"), {"v": 1})
        storage.write_text(storage.join(root, "a", "y.txt"), "hi\n")
        assert storage.read_json(storage.join(root, "a", "x.json")) == {"v": 1}
        assert storage.isdir(storage.join(root, "a")) and storage.isfile(storage.join(root, "a", "y.txt"))
        assert storage.listdir(storage.join(root, "a")) == ["x.json", "y.txt"]  # no temporary name left
        assert storage.glob(storage.join(root, "*", "*.json")) == [storage.join(root, "a", "x.json")]
        assert storage.getsize(storage.join(root, "a", "y.txt")) == 3
        with storage.open(storage.join(root, "a", "y.txt"), newline="") as handle:
            assert handle.read() == "hi\n"
        with storage.replacing(storage.join(root, "m.keras"), keep_suffix=True) as tmp:
            assert tmp.endswith(".keras") and not storage.is_url(tmp)  # a local file for any writer
            with open(tmp, "wb") as handle:
                handle.write(b"zip")
        assert storage.read_bytes(storage.join(root, "m.keras")) == b"zip"
        with pytest.raises(FileNotFoundError):
            storage.read_bytes(storage.join(root, "missing.json"))
        storage.remove_tree(root)
        assert not storage.exists(storage.join(root, "a", "x.json"))
    with pytest.raises(ValueError, match="reading only"):
        storage.open(_ram("w.txt"), "w")
    assert storage.is_url("gs://b/x") and storage.is_url("s3://b/x") and storage.is_url("hdfs://nn/x")
    assert not storage.is_url("/tmp/x") and not storage.is_url("relative/x")
    assert storage.dirname("gs://b/x/y") == "gs://b/x" and storage.basename("gs://b/x/y/") == "y"


def test_keras_saves_and_loads_a_model_on_ram():
    import keras

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    path = _ram("model.keras")
    model.save(path)  # keras.src.utils.file_utils: a remote path is written locally, then copied with gfile
    again = keras.saving.load_model(path)
    x = np.ones((1, 4), np.float32)
    np.testing.assert_allclose(again.predict(x, verbose=0), model.predict(x, verbose=0))


# --------------------------------------------------------------------------- 1. end to end under ram://
@pytest.mark.slow
def test_prepare_train_evaluate_export_predict_all_under_ram(tmp_path, capsys):
    from test_prepare import _dataset

    from keras_hourglass.cli.main import main

    raw = tmp_path / "in"
    raw.mkdir()
    table = _dataset(raw, images=24, patients=12)
    root = _ram("e2e")
    prep, run, evaluation, base = (storage.join(root, name) for name in ("prep", "run", "eval", "serving"))

    assert main(["prepare", "--annotations", table, "--images-root", str(raw), "--out", prep, "--size", "64",
                 "--val-fraction", "0.25", "--test-fraction", "0.25", "--salt", "ram-salt", "--quiet",
                 "--images-per-file", "4"]) == 0
    manifest = storage.read_json(storage.join(prep, "manifest.json"))
    assert manifest["ingested"]["images"] == 24 and storage.exists(storage.join(prep, "rejects.csv"))
    assert manifest["content_hash"]  # the files' hash, read back through gfile
    assert storage.glob(storage.join(prep, "train", "*.tfrecord"))
    capsys.readouterr()

    assert main(["train", "--data", prep, "--out", run, "--phase", "patch", "--epochs", "1",
                 "--steps-per-epoch", "2", "--batch-size", "2", "--crop-size", "768", "--patch-size", "96",
                 "--sigmas", "24,48", "--val-images", "0", "--model-option", "depth=1",
                 "--model-option", "num_features=8", "--model-option", "stem_features=4", "--seed", "3",
                 "--no-jit-compile", "--quiet"]) == 0
    for name in ("model.keras", "config.json", "history.csv", "backup/state.json"):
        assert storage.exists(storage.join(run, name)), name
    config = storage.read_json(storage.join(run, "config.json"))
    assert config["data"]["prep_dir"] == prep and config["result"]["model"] == storage.join(run, "model.keras")
    assert storage.glob(storage.join(run, "logs", "train", "events.*"))
    state = storage.read_json(storage.join(run, "backup", "state.json"))
    assert storage.exists(storage.join(run, "backup", state["weights"]))
    capsys.readouterr()

    assert main(["evaluate", "--model", storage.join(run, "model.keras"), "--data", prep, "--split", "val",
                 "--out", evaluation, "--bootstrap", "0", "--overlays", "1", "--quiet"]) == 0
    froc = storage.read_json(storage.join(evaluation, "froc.json"))
    assert "4.8" in froc["sensitivity_at_fpi"] and froc["data"] == prep
    for name in ("froc.png", "marks.csv", "findings.csv"):
        assert storage.getsize(storage.join(evaluation, name)) > 0, name
    capsys.readouterr()

    assert main(["export", "--model", storage.join(run, "model.keras"), "--base-path", base,
                 "--evaluation", evaluation, "--verify", "ops"]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert exported["version"] == 1 and exported["path"] == storage.join(base, "1")
    assert storage.listdir(base) == ["1"]  # the non-numeric staging name is gone
    for name in ("saved_model.pb", "variables/variables.index", "assets.extra/keras_hourglass.json",
                 "assets.extra/tf_serving_warmup_requests"):
        assert storage.exists(storage.join(base, "1", name)), name

    dicom = os.path.join(str(raw), "img000.dcm")
    assert main(["predict", "--saved-model", base, "--overlay-dir", storage.join(root, "overlays"), dicom]) == 0
    predicted = json.loads(capsys.readouterr().out)
    assert str(predicted["model_version"]) == "1" and len(predicted["results"]) == 1
    assert storage.listdir(storage.join(root, "overlays")) == ["img000.dcm.png"]
