"""The model contract travels forward: prepare -> manifest -> train -> model.keras -> export -> SavedModel
metadata -> serving client. After training, PREP is no longer needed: deleting it changes nothing that
`hourglass export` and `hourglass predict` produce."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import zipfile

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from keras_hourglass.cli.main import main  # noqa: E402
from keras_hourglass.modelfile import PREPROCESSING_ENTRY, embed_preprocessing, read_preprocessing  # noqa: E402
from serving_doubles import breast_pixels, conv_model, write_mammogram_dicom  # noqa: E402

TINY = ["--model-option", "num_stacks=1", "--model-option", "depth=1", "--model-option", "num_features=4",
        "--model-option", "stem_features=4"]


def _run(argv: list[str]) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    assert code == 0, argv
    return json.loads(out.getvalue().strip().splitlines()[-1] if argv[0] == "train" else out.getvalue())


def _prepare(tmp_path):
    """PREP at long side 64 with non-default preprocessing (min-max VOI, no reorientation)."""
    from keras_hourglass.data.prepare import PrepareConfig, prepare

    images = tmp_path / "images"
    rows = ["image_path,patient_id,study_id,laterality,view,label,finding_type,xmin,ymin,xmax,ymax,split"]
    for i in range(8):
        lat = "LR"[i % 2]
        pixels = breast_pixels(rows=96, cols=72, seed=i)
        write_mammogram_dicom(images / f"m{i}.dcm", pixels if lat == "L" else pixels[:, ::-1], laterality=lat)
        label = ("normal", "benign", "high_risk", "malignant")[i % 4]
        box = ",,,," if label == "normal" else "20,30,40,50"
        split = "val" if i >= 6 else "train"
        rows.append(f"m{i}.dcm,P{i},S{i},{lat},CC,{label},{'' if label == 'normal' else 'mass'},{box},{split}")
    table = tmp_path / "table.csv"
    table.write_text("\n".join(rows) + "\n")
    prep = tmp_path / "prep"
    prepare(PrepareConfig(annotations=[str(table)], images_root=str(images), out=str(prep), size=64, voi="none",
                          orient="none", salt="s", quiet=True))
    return images, prep


def _stable(export: dict) -> dict:
    """An export's JSON without what differs between any two exports (time, paths, version)."""
    meta = {k: v for k, v in export["metadata"].items() if k not in ("created_utc", "source_model")}
    meta["lineage"] = {k: v for k, v in meta["lineage"].items() if k != "model_sha256"}
    return meta


@pytest.mark.slow
def test_deleting_prep_after_training_changes_neither_export_nor_predict(tmp_path):
    images, prep = _prepare(tmp_path)
    manifest = json.loads((prep / "manifest.json").read_text())
    run = tmp_path / "run"
    # One phase of one step: what is checked is the block that travels, not the training (a second
    # phase would trace and run another train step).
    _run(["train", "--data", str(prep), "--out", str(run), "--phase", "patch", "--epochs", "1",
          "--steps-per-epoch", "1", "--batch-size", "2", "--val-images", "0", "--seed", "1", "--no-jit-compile",
          "--quiet", "--crop-size", "768", "--patch-size", "96", "--sigmas", "24,48", *TINY])
    model = run / "model.keras"
    carried = read_preprocessing(model)
    assert carried["long_side"] == 64 and carried["windowing"] == "none" and carried["orientation"] == "none"
    assert {k: manifest["preprocessing"][k] for k in carried} == carried
    assert json.loads((run / "config.json").read_text())["preprocessing"] == carried

    dicoms = [str(images / "m0.dcm"), str(images / "m1.dcm")]

    def export_and_predict(name: str) -> tuple[dict, dict]:
        base = tmp_path / name / "hourglass"
        exported = _run(["export", "--model", str(model), "--base-path", str(base), "--verify", "ops",
                         "--max-marks", "5"])
        predicted = {}
        for signature in ("serving_default", "detect_png"):
            out = _run(["predict", "--saved-model", str(base), "--signature", signature, *dicoms])
            predicted[signature] = {k: v for k, v in out.items() if k != "target"}
        return exported, predicted

    export_before, predict_before = export_and_predict("before")
    assert export_before["metadata"]["preprocessing"]["source"] == "model"
    shutil.rmtree(prep)
    export_after, predict_after = export_and_predict("after")
    assert _stable(export_after) == _stable(export_before)
    assert predict_after == predict_before
    pre = predict_after["serving_default"]["preprocessing"]
    assert (pre["long_side"], pre["voi"], pre["orient"]) == (64, "none", "none")
    assert all(r["long_side"] == 64 for r in predict_after["detect_png"]["results"])


def test_model_file_carries_preprocessing_through_keras_load(tmp_path):
    import keras

    path = tmp_path / "m.keras"
    model = conv_model(stride=2)
    model.save(path)
    assert read_preprocessing(path) is None
    embed_preprocessing(path, {"long_side": 40, "windowing": "none"})
    assert read_preprocessing(path) == {"long_side": 40, "windowing": "none"}
    with zipfile.ZipFile(path) as archive:
        assert PREPROCESSING_ENTRY in archive.namelist() and "config.json" in archive.namelist()
    loaded = keras.saving.load_model(path, compile=False)  # Keras ignores the entry
    x = np.random.RandomState(0).rand(1, 8, 8, 1).astype(np.float32)
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), atol=1e-6)
    with pytest.raises(ValueError):
        embed_preprocessing(path, {"long_side": 41})


def test_export_preprocessing_order_model_then_config_then_prep_with_warning(tmp_path, caplog):
    from export.saved_model import training_preprocessing

    run = tmp_path / "run"
    run.mkdir()
    model = run / "model.keras"
    conv_model(stride=2).save(model)
    prep = tmp_path / "prep"
    prep.mkdir()
    (prep / "manifest.json").write_text(json.dumps({"preprocessing": {"long_side": 96, "windowing": "auto"}}))
    config = {"data": {"prep_dir": str(prep)}}
    (run / "config.json").write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING, logger="export.saved_model"):
        assert training_preprocessing(model) == {"long_side": 96, "windowing": "auto", "source": "prep_dir"}
    assert "carries no preprocessing" in caplog.text
    (run / "config.json").write_text(json.dumps({**config, "preprocessing": {"long_side": 80, "windowing": "none"}}))
    assert training_preprocessing(model) == {"long_side": 80, "windowing": "none", "source": "config"}
    embed_preprocessing(model, {"long_side": 72, "orientation": "none"})
    shutil.rmtree(prep)
    assert training_preprocessing(model) == {"long_side": 72, "orientation": "none", "source": "model"}
    (run / "config.json").unlink()
    assert training_preprocessing(model)["long_side"] == 72
