"""predict_marks, FrocCallback, plots, reports and `hourglass evaluate`.

The heatmap model here is a stand-in whose output we can compute by hand:
a frozen 1x1 convolution (weight 1) followed by 2x2 average pooling, so
heatmap pixel (j, i) = mean of image pixels [2j:2j+2, 2i:2i+2], stride 2,
and a bright image pixel (r, c) of value v gives a mark of score v/4 at
image coordinates ((r//2 + .5) * 2, (c//2 + .5) * 2).
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from keras_hourglass import contract  # noqa: E402
from keras_hourglass.evaluation.callback import FrocCallback  # noqa: E402
from keras_hourglass.evaluation.predict import predict_marks  # noqa: E402
from keras_hourglass.evaluation.froc import froc  # noqa: E402


def standin_model(multi_output: bool = False) -> keras.Model:
    image = keras.Input((None, None, 1), name="image")
    x = keras.layers.Conv2D(1, 1, kernel_initializer="ones", bias_initializer="zeros", name="conv")(image)
    heatmap = keras.layers.AveragePooling2D(2, name="heatmap")(x)
    if multi_output:
        # An "intermediate" head that scores everything higher: must be ignored.
        aux = keras.layers.Rescaling(10.0, name="heatmap_stack1")(heatmap)
        return keras.Model(image, [aux, heatmap])
    return keras.Model(image, heatmap)


def element(image_hash, patient, spots, boxes=(), labels=(), height=32, width=32, size=32):
    """One evaluation dict, batch 1, as evaluation_dataset yields it."""
    image = np.zeros((size, size), np.float32)
    for r, c, v in spots:
        image[r, c] = v
    return {
        "image": image[None, :, :, None],
        "boxes": np.asarray(boxes, np.float32).reshape(1, -1, 4),
        "box_labels": np.asarray([lab.encode() for lab in labels], dtype=object).reshape(1, -1),
        "patient_hash": np.asarray([patient.encode()], dtype=object),
        "image_hash": np.asarray([image_hash.encode()], dtype=object),
        "transform": np.asarray([[2 * height, 2 * width, height, width, 0.0]], np.float32),
        "height": np.asarray([height], np.int32),
        "width": np.asarray([width], np.int32),
    }


def small_set():
    """img1: malignant box around (5, 9) hit at .25, FP at (15, 21) .15, a spot in the padding (row 28 > height 24).
    img2 (normal): FP at (7, 7) score .2.

    Distinct scores: .25 (hit) .2 (FP) .15 (FP) -> FPI 0, .5, 1 over 2 images; sensitivity 1 from the first.
    """
    return [
        element(
            "img1", "pA", [(5, 9, 1.0), (15, 21, 0.6), (28, 3, 0.9)],
            boxes=[[0, 0, 12, 12], [14, 14, 18, 18]], labels=["malignant", "benign"], height=24,
        ),
        element("img2", "pB", [(7, 7, 0.8)]),
    ]


def test_predict_marks_image_coordinates_and_padding():
    records = predict_marks(standin_model(), small_set(), threshold=0.01, keep_images=1)
    first, second = records
    assert first.image_id == "img1" and first.patient_id == "pA"
    np.testing.assert_allclose(first.marks, [[5, 9, 0.25], [15, 21, 0.15]], atol=1e-6)  # padding spot dropped
    assert list(first.labels) == ["malignant", "benign"]
    assert (first.height, first.width) == (24, 32)
    assert first.transform == [48.0, 64.0, 24.0, 32.0, 0.0]
    assert first.image.shape == (24, 32) and first.image.dtype == np.uint8
    assert second.image is not None  # one malignant and one other image kept
    np.testing.assert_allclose(second.marks, [[7, 7, 0.2]], atol=1e-6)
    result = froc(records, n_bootstrap=0)
    np.testing.assert_allclose(result.curve_fpi, [0, 0.5, 1.0])
    assert result.sensitivity_at_fpi["0.125"] == 1.0


def test_predict_marks_uses_last_output_and_max_marks():
    records = predict_marks(
        standin_model(multi_output=True), small_set(), threshold=0.01, max_marks=1
    )
    np.testing.assert_allclose(records[0].marks, [[5, 9, 0.25]], atol=1e-6)  # not the x10 head
    assert len(predict_marks(standin_model(), small_set(), max_images=1)) == 1


def fit_with(callbacks, epochs=1, multi_output=True):
    model = standin_model(multi_output=multi_output)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0), loss="mse")
    x = np.zeros((2, 32, 32, 1), np.float32)
    y = np.zeros((2, 16, 16, 1), np.float32)
    history = model.fit(x, [y, y] if multi_output else y, epochs=epochs, batch_size=2, verbose=0, callbacks=callbacks)
    return model, history


def test_callback_writes_logs_before_model_checkpoint(tmp_path):
    # The hit (.25) is the best mark of the set, so every sensitivity is 1 whatever the
    # low-scoring background marks (threshold None keeps them) add.
    froc_cb = FrocCallback(small_set())
    best = tmp_path / "best.keras"
    checkpoint = keras.callbacks.ModelCheckpoint(
        str(best), monitor="val_sensitivity", mode="max", save_best_only=True, verbose=0
    )
    _, history = fit_with([froc_cb, checkpoint])
    assert history.history["val_sensitivity"] == [1.0]
    assert history.history["val_max_sensitivity"] == [1.0]
    assert history.history["val_mean_sensitivity"] == [1.0]
    assert history.history["val_sensitivity_at_0.125"] == [1.0]  # per-FPI keys (tuning/objective.py)
    assert best.exists()
    assert froc_cb.last_result.num_images == 2


def test_callback_every_n_epochs_and_no_malignant_policy():
    cb = FrocCallback([small_set()[1]], target_fpi=0.3, every_n_epochs=2)
    with pytest.warns(RuntimeWarning, match="no malignant finding"):
        _, history = fit_with([cb], epochs=3, multi_output=False)
    assert [epoch for epoch, _ in cb.history] == [1, 2]  # every 2nd epoch + the last one
    assert cb._predictor._predict.experimental_get_tracing_count() == 1  # traced once, reused
    # KerasTuner deep-copies search callbacks per trial: a fresh copy, same settings, no old model.
    import copy

    clone = copy.deepcopy(cb)
    assert clone.target_fpi == 0.3 and clone.every_n_epochs == 2 and clone.data is cb.data
    assert clone._predictor is None and clone.history == [] and clone.model is None
    values = history.history["val_sensitivity"]
    assert len(values) == 2 and all(math.isnan(v) for v in values)


# --------------------------------------------------------------------------- plots and reports


def test_plots_and_reports(tmp_path):
    from keras_hourglass.evaluation.plots import dense_curve, plot_froc, plot_froc_curves, plot_overlay
    from keras_hourglass.evaluation.report import MARKS_CSV_COLUMNS, format_table, write_marks_csv

    records = predict_marks(standin_model(), small_set(), threshold=0.01, keep_images=2)
    result = froc(records, n_bootstrap=50, seed=0)
    # The drawn curve is read with the reported rule: step values at the FPI points.
    grid, sens = dense_curve(result)
    assert np.all(sens == 1.0)  # the hit comes first, at FPI 0

    assert os.path.getsize(plot_froc(result, tmp_path / "froc.png")) > 5000
    as_json = json.loads(json.dumps(result.to_json()))
    empty = froc([records[1]], n_bootstrap=10)  # no malignant finding: a plot with the warning, no crash
    plot_froc(empty, tmp_path / "empty.png")
    plot_froc_curves({"stand-in": result, "from json": as_json, "undefined": empty}, tmp_path / "all.png")
    plot_overlay(records[0], tmp_path / "overlay.png", threshold=0.1)
    plot_overlay(froc_record_without_pixels(), tmp_path / "overlay_nopix.png")
    for name in ("froc.png", "empty.png", "all.png", "overlay.png", "overlay_nopix.png"):
        assert (tmp_path / name).stat().st_size > 1000, name

    table = format_table(result)
    assert "4.8" in table and "1.000" in table and "malignant findings 1" in table
    assert "warning" in format_table(empty) and "n/a" in format_table(empty)
    from keras_hourglass.evaluation.report import format_markdown_table

    markdown = format_markdown_table({"stand-in": result, "undefined": as_json | {"max_sensitivity": None}})
    lines = markdown.splitlines()
    assert lines[0].startswith("| model | sens@1 FPI [95% CI] | sens@2 FPI") and len(lines) == 4
    assert lines[2].startswith("| stand-in | 1.000 [1.000, 1.000] |")

    rows = write_marks_csv(tmp_path / "marks.csv", records, operating_threshold=0.2)
    import csv

    with open(tmp_path / "marks.csv") as fh:
        table_rows = list(csv.DictReader(fh))
    assert rows == len(table_rows) == 3 and tuple(table_rows[0]) == MARKS_CSV_COLUMNS
    top = table_rows[0]
    # transform [48, 64, 24, 32, not flipped]: original = image * 2.
    assert (top["y"], top["x"], top["y_original"], top["x_original"]) == ("5.00", "9.00", "10.00", "18.00")
    assert (top["status"], top["finding_label"], top["false_positive"], top["at_operating_point"]) == (
        "hit", "malignant", "0", "1")
    fp = table_rows[1]
    assert (fp["status"], fp["false_positive"], fp["at_operating_point"]) == ("background", "1", "0")


def froc_record_without_pixels():
    from keras_hourglass.evaluation.froc import ImageRecord

    return ImageRecord("x", "p", marks=[[5, 5, 0.9]], boxes=[[0, 0, 10, 10]], labels=["benign"])


# --------------------------------------------------------------------------- hourglass evaluate


def write_prep(root, split="test"):
    """A prepared directory with two 64x48 images (transform: original 128x96, flipped).

    m1 (patient pa): malignant [8,8,24,24] with a spot 1.0 at (15,15) -> heatmap .265 at (15,15): hit;
        benign [40,20,50,30] with a spot .8 at (45,25) -> .215: false.
    n1 (patient pb, normal): spot .6 at (30,30) -> .165: false.
    Background .02 gives only low-scoring marks. So: .265 hit at FPI 0 -> sensitivity 1 everywhere.
    """
    from keras_hourglass.data import records

    def image(spots):
        pixels = np.full((64, 48), 0.02, np.float32)
        for r, c, v in spots:
            pixels[r, c] = v
        return pixels

    common = {"study_hash": "s", "transform": [128.0, 96.0, 64.0, 48.0, 1.0]}
    malignant = records.make_example(
        image([(15, 15, 1.0), (45, 25, 0.8)]), boxes=[[8, 8, 24, 24], [40, 20, 50, 30]],
        box_labels=["malignant", "benign"], finding_types=["mass", "calcification"],
        patient_hash="pa", image_hash="m1", **common,
    )
    normal = records.make_example(
        image([(30, 30, 0.6)]), boxes=np.zeros((0, 4)), box_labels=[], finding_types=[],
        patient_hash="pb", image_hash="n1", **common,
    )
    for stratum, example in (("malignant", malignant), ("normal", normal)):
        records.write_records_atomic(
            os.path.join(root, split, contract.shard_file_name(stratum, 0)), [example.SerializeToString()]
        )
    return str(root)


def run_cli(*argv):
    from keras_hourglass.cli.main import main

    return main(["evaluate", *map(str, argv)])


def test_evaluate_cli_end_to_end(tmp_path, capsys):
    import csv

    prep = write_prep(tmp_path / "prep")
    model_path = tmp_path / "model.keras"
    standin_model(multi_output=True).save(model_path)
    out = tmp_path / "eval"
    rc = run_cli("--model", model_path, "--data", prep, "--out", out, "--overlays", 2, "--bootstrap", 100, "--quiet")
    stdout = capsys.readouterr().out
    assert rc == 0
    assert "froc.json: " + str(out / "froc.json") in stdout and "4.8" in stdout
    assert "operating point (FPI <= 4.8): threshold" in stdout
    payload = json.loads((out / "froc.json").read_text())
    assert payload["num_images"] == 2 and payload["num_patients"] == 2 and payload["num_malignant_findings"] == 1
    assert payload["sensitivity_at_fpi"]["0.125"] == 1.0 and payload["max_sensitivity"] == 1.0
    assert payload["ci95"]["4.8"] == [1.0, 1.0] or payload["num_bootstrap_undefined"] > 0
    assert payload["split"] == "test" and payload["settings"]["max_marks"] == 100
    assert payload["operating_point"]["target_fpi"] == 4.8 and payload["operating_point"]["sensitivity"] == 1.0
    assert (out / "froc.png").stat().st_size > 5000
    assert len(list((out / "overlays").glob("*.png"))) == 2
    with open(out / "marks.csv") as fh:
        rows = list(csv.DictReader(fh))
    top = max(rows, key=lambda r: float(r["score"]))
    # image (15, 15) -> original (15 * 2, (48 - 15) * 2) through the flipped transform.
    assert (top["image_hash"], top["patient_hash"], top["status"]) == ("m1", "pa", "hit")
    assert (float(top["y"]), float(top["x"])) == (15.0, 15.0)
    assert (float(top["y_original"]), float(top["x_original"])) == (30.0, 66.0)
    assert top["at_operating_point"] == "1"
    benign = [r for r in rows if r["status"] == "non_positive"]
    assert len(benign) == 1 and benign[0]["finding_label"] == "benign" and benign[0]["false_positive"] == "1"
    with open(out / "findings.csv") as fh:
        findings = list(csv.DictReader(fh))
    assert [(f["image_hash"], f["label"], f["finding_type"]) for f in findings] == [
        ("m1", "malignant", "mass"), ("m1", "benign", "calcification")]
    # Box [8,8,24,24] -> original y * 2, x -> (48 - x) * 2 (flipped, then ordered): [16, 48, 48, 80].
    malignant = findings[0]
    assert [float(malignant[k]) for k in ("y0_original", "x0_original", "y1_original", "x1_original")] == [
        16.0, 48.0, 48.0, 80.0]
    assert float(malignant["best_score"]) == pytest.approx(0.265, abs=1e-4)
    assert malignant["detected_at_operating_point"] == "1"


def test_evaluate_cli_bad_inputs(tmp_path, capsys):
    prep = write_prep(tmp_path / "prep")
    model_path = tmp_path / "model.keras"
    standin_model().save(model_path)
    garbage = tmp_path / "garbage.keras"
    garbage.write_bytes(b"not a zip")
    cases = [
        (["--model", tmp_path / "missing.keras", "--data", prep], "missing.keras: no such model file"),
        (["--model", model_path, "--data", tmp_path / "nodata"], "nodata: no such prepared directory"),
        (["--model", garbage, "--data", prep], "garbage.keras: not a Keras model archive"),
        (["--model", model_path, "--data", prep, "--split", "val"], "prep: no TFRecords for split 'val'"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert run_cli(*argv, "--out", tmp_path / "out", "--quiet") == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("hourglass evaluate: error: ") and message in err and "\n" not in err, err


def test_evaluate_cli_with_the_real_tiny_hourglass(tmp_path, capsys):
    from keras_hourglass.model import build_hourglass

    prep = write_prep(tmp_path / "prep")
    model_path = tmp_path / "model.keras"
    # A smaller tiny (one stack, depth 2): same custom layers and loading path, half the tracing time.
    build_hourglass("tiny", num_stacks=1, depth=2, head_initializer="glorot_uniform").save(model_path)
    out = tmp_path / "eval"
    assert run_cli("--model", model_path, "--data", prep, "--out", out, "--bootstrap", 0, "--overlays", 1, "--quiet") == 0
    payload = json.loads((out / "froc.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert payload["num_images"] == 2 and 0 < payload["num_marks"] <= 200
    assert set(payload["sensitivity_at_fpi"]) == {"0.125", "0.25", "0.5", "1", "2", "4", "4.8", "8"}


def test_callback_reads_a_prepared_directory(tmp_path, capsys):
    prep = write_prep(tmp_path / "prep", split="val")
    cb = FrocCallback(prep, verbose=1)  # split "val" by default
    _, history = fit_with([cb])
    assert history.history["val_sensitivity"] == [1.0]
    assert cb.last_result.num_images == 2 and cb.last_result.num_patients == 2
    assert "sensitivity@4.8 FPI 1.0000" in capsys.readouterr().out
    import copy

    assert copy.deepcopy(cb)._dataset is None  # the cached tf.data pipeline is not deep-copied
