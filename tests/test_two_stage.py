"""The two-stage system: proposals -> stage-two training -> combined evaluation (tiny, hand-built).

Stage one is a stand-in whose marks we can compute by hand (as in test_evaluation): a frozen 1x1
convolution (weight 1) and 2x2 average pooling, so a bright pixel (r, c) of value v on the 0.02
background gives a mark of score v/4 + 0.015 at ((r//2 + .5) * 2, (c//2 + .5) * 2).

Every image of the hand-built PREP (64x64, long side 64: the default 384 reference px patch is
16 px) has four spots, each in its own place:

    (15, 15) 1.0 in a malignant box  [8, 8, 24, 24]   -> mark (15, 15) .265: label 1, malignant 1
    (15, 47) 0.8 in a high_risk box  [8, 40, 24, 56]  -> mark (15, 47) .215: label 1, malignant 0
    (47, 15) 0.6 in a benign box     [40, 8, 56, 24]  -> mark (47, 15) .165: label 0 (benign)
    (47, 47) 0.4 on background                        -> mark (47, 47) .115: label 0 (background)

Every image also has a faint spot, (31, 31) 0.24 -> mark .075, which `--threshold 0.1` drops (the
manifest counts it as below the threshold); normal images carry only the background and faint spots.
The flat 0.02 background is outside the breast mask: it gives no mark.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from keras_hourglass import contract  # noqa: E402
from keras_hourglass.cli.main import main  # noqa: E402

FINDINGS = {
    "malignant": ((15, 15, 1.0), [8, 8, 24, 24]),
    "high_risk": ((15, 47, 0.8), [8, 40, 24, 56]),
    "benign": ((47, 15, 0.6), [40, 8, 56, 24]),
}
BACKGROUND_SPOT = (47, 47, 0.4)
FAINT_SPOT = (31, 31, 0.24)  # a stage-one mark of score .075, under the proposals' --threshold 0.1
# split -> [(patient, image, with findings?)]; patient p-shared is refused in `test_patient_in_two_splits`.
LAYOUT = {
    "train": [("pt1", "t1", True), ("pt2", "t2", True), ("pt3", "t3", True), ("pt4", "t4", False)],
    "val": [("pv1", "v1", True), ("pv2", "v2", False)],
    "test": [("pe1", "e1", True), ("pe2", "e2", False)],
}


def standin_model() -> keras.Model:
    image = keras.Input((None, None, 1), name="image")
    x = keras.layers.Conv2D(1, 1, kernel_initializer="ones", bias_initializer="zeros", name="conv")(image)
    return keras.Model(image, keras.layers.AveragePooling2D(2, name="heatmap")(x))


def write_prep(root, layout=LAYOUT) -> str:
    from keras_hourglass.data import records

    for split, images in layout.items():
        by_stratum: dict[str, list[bytes]] = {}
        for patient, image_hash, findings in images:
            pixels = np.full((64, 64), 0.02, np.float32)
            spots, boxes, labels = [BACKGROUND_SPOT, FAINT_SPOT], [], []
            if findings:
                for label, (spot, box) in FINDINGS.items():
                    spots.append(spot)
                    boxes.append(box)
                    labels.append(label)
            for r, c, v in spots:
                pixels[r, c] = v
            example = records.make_example(
                pixels, boxes=np.asarray(boxes, np.float32).reshape(-1, 4), box_labels=labels,
                finding_types=["mass"] * len(labels), patient_hash=patient, study_hash=f"s{patient}",
                image_hash=image_hash, transform=[64.0, 64.0, 64.0, 64.0, 0.0])
            by_stratum.setdefault(contract.stratum_of(labels), []).append(example.SerializeToString())
        for stratum, items in by_stratum.items():
            records.write_records_atomic(os.path.join(root, split, contract.shard_file_name(stratum, 0)), items)
    with open(os.path.join(root, "manifest.json"), "w") as handle:
        json.dump({"note": "test fixture", "preprocessing": {"long_side": 64}}, handle)
    return str(root)


def read_proposals(out: str, split: str) -> list[dict]:
    from keras_hourglass.two_stage.records import list_files, parse_proposal

    rows = []
    for serialized in tf.data.TFRecordDataset(list_files(out, split)):
        parsed = parse_proposal(serialized)
        rows.append({k: (v.numpy().decode() if v.dtype == tf.string else v.numpy()) for k, v in parsed.items()})
    return rows


def one_line_error(capsys, command: str, message: str) -> None:
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"hourglass {command}: error: ") and message in err and "\n" not in err, err


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    """PREP -> PROPOSALS -> RUN2 -> EVAL, through the CLI, once for the module."""
    root = tmp_path_factory.mktemp("two_stage")
    prep = write_prep(root / "prep")
    model_path = str(root / "stage1.keras")
    standin_model().save(model_path)
    proposals, run2, evaluation = str(root / "proposals"), str(root / "run2"), str(root / "eval")
    assert main(["proposals", "--model", model_path, "--data", prep, "--out", proposals, "--threshold", "0.1",
                 "--quiet"]) == 0
    train = ["train", "--stage", "2", "--data", proposals, "--out", run2, "--epochs", "2", "--steps-per-epoch", "3",
             "--batch-size", "8", "--classifier-filters", "4,8", "--seed", "3", "--quiet"]
    assert main(train) == 0
    assert main(["evaluate", "--model", model_path, "--classifier", os.path.join(run2, "model.keras"), "--data", prep,
                 "--out", evaluation, "--bootstrap", "50", "--overlays", "1", "--quiet"]) == 0
    return {"root": root, "prep": prep, "model": model_path, "proposals": proposals, "run2": run2,
            "eval": evaluation, "train": train}


def test_manifest_accounts_for_every_mark(system):
    manifest = json.load(open(os.path.join(system["proposals"], "manifest.json")))
    assert manifest["format"] == "keras-hourglass-proposals/1" and manifest["patch"]["resolved"] == 16
    assert manifest["stage_one"]["threshold"] == 0.1 and manifest["data"]["long_side"] == 64
    for split, images in LAYOUT.items():
        counts = manifest["splits"][split]
        with_findings = sum(1 for _, _, f in images if f)
        assert counts["images"] == len(images) and counts["patients"] == len(images)
        assert counts["marks"] == len(images) + 3 * with_findings  # every spot is one kept mark
        assert counts["positive"] == 2 * with_findings and counts["malignant"] == with_findings
        assert counts["negative"] == counts["marks"] - counts["positive"]
        assert counts["marks_below_threshold"] == len(images)  # the faint spots
        assert counts["marks_predicted"] == counts["marks"] + counts["marks_below_threshold"]
        assert counts["by_finding_label"] == {"benign": with_findings, "high_risk": with_findings,
                                              "malignant": with_findings, "background": len(images)}
        assert sum(f["records"] for f in counts["files"]) == counts["marks"] == len(read_proposals(system["proposals"], split))
        rows = [json.loads(line) for line in open(os.path.join(system["proposals"], split, "images.jsonl"))]
        assert sum(r["num_marks"] for r in rows) == counts["marks"] and len(rows) == len(images)
    assert manifest["totals"]["marks"] == sum(manifest["splits"][s]["marks"] for s in LAYOUT)


def test_labels_on_the_hand_built_case(system):
    rows = {(r["image_hash"], round(float(r["y"])), round(float(r["x"]))): r for r in read_proposals(system["proposals"], "train")}
    t1 = {key[1:]: row for key, row in rows.items() if key[0] == "t1"}
    assert set(t1) == {(15, 15), (15, 47), (47, 15), (47, 47)}
    expect = {(15, 15): (1, 1, "malignant", 0.265), (15, 47): (1, 0, "high_risk", 0.215),
              (47, 15): (0, 0, "benign", 0.165), (47, 47): (0, 0, "", 0.115)}
    for where, (label, malignant, finding, score) in expect.items():
        row = t1[where]
        assert (row["label"], row["malignant"], row["finding_label"]) == (label, malignant, finding), where
        assert row["score"] == pytest.approx(score, abs=1e-4)
        assert row["patient_hash"] == "pt1" and row["stratum"] == "malignant" and row["split"] == "train"
    assert [t1[w]["rank"] for w in ((15, 15), (15, 47), (47, 15), (47, 47))] == [0, 1, 2, 3]
    # The patch is centred on the mark: the spot sits at (8, 8) of its 16-px patch (top-left 15 - 8 + .5 -> 7).
    patch = t1[(15, 15)]["patch"][..., 0]
    assert patch.shape == (16, 16) and np.unravel_index(np.argmax(patch), patch.shape) == (8, 8)
    assert patch.max() == pytest.approx(1.0, abs=1e-4)
    normal = [r for r in rows.values() if r["image_hash"] == "t4"]
    assert len(normal) == 1 and normal[0]["label"] == 0 and normal[0]["stratum"] == "normal"


def test_training_streams_balance_the_classes(system):
    from keras_hourglass.two_stage.records import training_dataset

    # train: 6 positives, 7 negatives. Sampling: each class drawn with probability 1/2.
    batches = list(training_dataset(system["proposals"], batch_size=50, seed=0, augment=False).take(4))
    share = float(np.mean(np.concatenate([labels.numpy() for _, labels in batches])))
    assert 0.35 < share < 0.65
    # Weights: the natural stream, each class weighted to half of the loss (n / (2 n_class)).
    patches, labels, weights = next(iter(training_dataset(system["proposals"], batch_size=13, seed=0,
                                                          balance="weights", class_counts=(7, 6))))
    assert patches.shape == (13, 16, 16, 1) and labels.shape == (13, 1)
    expected = np.where(labels.numpy()[:, 0] == 1, 13 / 12, 13 / 14)
    np.testing.assert_allclose(weights.numpy(), expected, rtol=1e-6)


def test_no_patient_crosses_splits(system, tmp_path, capsys):
    seen = {split: {r["patient_hash"] for r in read_proposals(system["proposals"], split)} for split in LAYOUT}
    assert not (seen["train"] & seen["val"]) and not (seen["train"] & seen["test"]) and not (seen["val"] & seen["test"])
    assert all(r["split"] == "val" for r in read_proposals(system["proposals"], "val"))
    # A PREP whose patient is in two splits is refused.
    layout = {"train": [("same", "a", True)], "test": [("same", "b", False)]}
    prep = write_prep(tmp_path / "prep", layout)
    assert main(["proposals", "--model", system["model"], "--data", prep, "--out", str(tmp_path / "p"), "--quiet"]) == 2
    one_line_error(capsys, "proposals", "is in the train and test splits")


def test_classifier_round_trips_through_keras_file(system, tmp_path):
    from keras_hourglass.two_stage.classifier import build_classifier, load_classifier

    model = build_classifier(16, filters=(4, 8), dense=8)
    patches = np.random.RandomState(0).rand(3, 16, 16, 1).astype(np.float32)
    path = str(tmp_path / "c.keras")
    model.save(path)
    again = load_classifier(path)
    np.testing.assert_allclose(again.predict(patches, verbose=0), model.predict(patches, verbose=0), atol=1e-6)
    assert again.get_layer("stage1_conv1").__class__.__name__ == "ConvBNReLU"
    trained = load_classifier(os.path.join(system["run2"], "model.keras"))
    assert tuple(trained.inputs[0].shape) == (None, 16, 16, 1) and tuple(trained.outputs[0].shape) == (None, 1)


def test_backbone_option_builds_and_round_trips(tmp_path):
    from keras_hourglass.two_stage.classifier import build_classifier, load_classifier

    model = build_classifier(32, backbone="MobileNetV3Small", dense=0)
    path = str(tmp_path / "b.keras")
    model.save(path)
    patch = np.full((1, 32, 32, 1), 0.5, np.float32)
    np.testing.assert_allclose(load_classifier(path)(patch, training=False), model(patch, training=False), atol=1e-5)
    with pytest.raises(ValueError, match="unknown backbone"):
        build_classifier(32, backbone="VGG16")


def test_stage_two_run_directory_and_resume(system, capsys):
    config = json.load(open(os.path.join(system["run2"], "config.json")))
    assert config["stage"] == 2 and config["hyperparameters"]["filters"] == [4, 8]
    assert config["proposals"]["threshold"] == 0.1 and config["proposals"]["long_side"] == 64
    assert config["data"]["class_counts"]["train"] == {"negative": 7, "positive": 6}
    combination = config["two_stage"]["combination"]
    assert combination["split"] == "val" and combination["positive_labels"] == ["malignant"]
    assert combination["name"] in ("probability", "geometric_0.75", "product", "geometric_0.25")
    assert set(combination["candidates"]) == {"stage_one", "probability", "geometric_0.75", "product", "geometric_0.25"}
    # Stage one alone finds the val cancer at its best mark: sensitivity 1 at every FPI point.
    assert combination["candidates"]["stage_one"]["mean_sensitivity"] == 1.0
    from keras_hourglass.training.callbacks import read_history

    history = read_history(os.path.join(system["run2"], "history.csv"))
    assert [int(r["epoch"]) for r in history] == [1, 2] and "val_auc" in history[0]
    # Rerunning the finished command (spelled train-stage2 this time) resumes after epoch 2: nothing left.
    capsys.readouterr()
    again = ["train-stage2", *system["train"][3:]]
    assert main(again) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["resumed_from_epoch"] == 2
    assert main([*again, "--learning-rate", "0.01"]) == 2  # other settings in the same RUN2 are refused
    one_line_error(capsys, "train-stage2", "was written by a run with other settings")


def test_combined_froc_has_both_systems(system):
    import csv

    payload = json.load(open(os.path.join(system["eval"], "froc.json")))
    two = payload["two_stage"]
    assert payload["num_images"] == two["num_images"] == 2 and payload["num_malignant_findings"] == 1
    assert two["num_malignant_findings"] == 1 and set(two["sensitivity_at_fpi"]) == set(payload["sensitivity_at_fpi"])
    assert payload["sensitivity_at_fpi"]["0.125"] == 1.0  # stage one: the cancer is the best mark
    assert two["combination"]["source"] == "RUN2/config.json" and two["proposals"]["threshold"] == 0.1
    assert two["num_marks"] == 5 and payload["num_marks"] == 7  # the combined system keeps the proposals only
    assert two["settings"]["n_bootstrap"] == payload["settings"]["n_bootstrap"] == 50
    assert set(payload["comparison"]["sensitivity_at_fpi"]["4.8"]) == {"stage_one", "two_stage"}
    assert os.path.getsize(os.path.join(system["eval"], "froc.png")) > 5000
    with open(os.path.join(system["eval"], "marks_two_stage.csv")) as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 5 and sum(r["status"] == "hit" for r in rows) == 1


def test_bad_inputs_are_one_line_errors(system, tmp_path, capsys):
    missing = str(tmp_path / "missing.keras")
    assert main(["proposals", "--model", missing, "--data", system["prep"], "--out", str(tmp_path / "p")]) == 2
    one_line_error(capsys, "proposals", "missing.keras: no such model file")
    assert main(["proposals", "--model", system["model"], "--data", str(tmp_path / "nodata"),
                 "--out", str(tmp_path / "p")]) == 2
    one_line_error(capsys, "proposals", "nodata: no such prepared directory")
    assert main(["proposals", "--model", system["model"], "--data", system["prep"], "--out", system["proposals"]]) == 2
    one_line_error(capsys, "proposals", "already holds proposals")
    assert main(["proposals", "--model", system["model"], "--data", system["prep"], "--out", str(tmp_path / "p"),
                 "--patch-size", "96"]) == 2
    one_line_error(capsys, "proposals", "--patch-size: 96 reference px resolves to 4.0 px")
    # A heatmap model is not a classifier; a PREP is not a PROPOSALS; stage-one flags do not apply.
    assert main(["evaluate", "--model", system["model"], "--classifier", system["model"], "--data", system["prep"],
                 "--out", str(tmp_path / "e"), "--quiet"]) == 2
    one_line_error(capsys, "evaluate", "not a patch classifier")
    assert main(["train", "--stage", "2", "--data", system["prep"], "--out", str(tmp_path / "r")]) == 2
    one_line_error(capsys, "train-stage2", "not a proposals manifest (format 'keras-hourglass-proposals/1' expected): a prep")
    with pytest.raises(SystemExit) as exit_info:  # a stage-one flag is an argparse error (exit 2, one line)
        main(["train", "--stage=2", "--data", system["proposals"], "--out", str(tmp_path / "r"), "--omega", "0.1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hourglass: error: unrecognized arguments: --omega 0.1") and "\n" not in err


def test_operating_point_reads_the_threshold_on_val(system, tmp_path):
    # Val marks (malignant positives only): .265 hit; false .215, .165 (v1) -> FPI 1 over 2 images at .165.
    out = str(tmp_path / "p")
    assert main(["proposals", "--model", system["model"], "--data", system["prep"], "--out", out,
                 "--operating-point", "1", "--quiet"]) == 0
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    point = manifest["stage_one"]["operating_point"]
    assert point["split"] == "val" and point["fpi_reached"] == 1.0 and point["sensitivity"] == 1.0
    assert manifest["stage_one"]["threshold"] == pytest.approx(0.165, abs=1e-4)
    assert manifest["splits"]["train"]["marks"] == 9  # malignant, high_risk, benign marks of 3 images


def test_combinations_and_patch_geometry():
    from keras_hourglass.errors import InputError
    from keras_hourglass.two_stage.combine import choose_combination, combine_scores
    from keras_hourglass.two_stage.patches import crop_patches, resolve_patch_size

    s, p = np.array([0.5, -1.0, 0.2]), np.array([0.5, 0.9, 0.0])
    np.testing.assert_allclose(combine_scores(s, p, "probability"), p)
    np.testing.assert_allclose(combine_scores(s, p, "product"), np.sqrt(np.maximum(s, 1e-6) * p))
    np.testing.assert_allclose(combine_scores(s, p, "stage_one"), s)
    assert choose_combination({"probability": 0.5, "product": 0.7, "stage_one": 0.9})[0] == "product"
    assert choose_combination({"probability": 0.7, "product": 0.7})[0] == "probability"
    assert choose_combination({"probability": None})[0] == "product"
    assert resolve_patch_size(384, long_side=256) == 64 and resolve_patch_size(384, long_side=1536) == 384
    with pytest.raises(InputError, match="give at least 48"):
        resolve_patch_size(40, long_side=256)
    image = np.arange(36, dtype=np.float32).reshape(6, 6)
    patch = crop_patches(image, np.array([[0.2, 5.9]]), 4)[0, ..., 0]  # top-left (-2, 4): padded with 0
    np.testing.assert_array_equal(patch, np.pad(image[0:2, 4:6], ((2, 0), (0, 2))))
    assert crop_patches(image, np.zeros((0, 3)), 4).shape == (0, 4, 4, 1)
