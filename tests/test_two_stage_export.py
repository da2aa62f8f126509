"""One export for serving: `hourglass export --model RUN/model.keras --classifier RUN2/model.keras`.

End to end with the hand-built case of test_two_stage (64x64 images, long side 64, a stand-in
stage one of stride 2, 16-px patches): proposals -> stage two (a few steps) -> evaluate
--classifier -> export of both stages (verified in full: op allow-list, saved_model_cli, warmup
replay, the two-stage check against the Python pipeline) -> `hourglass predict --saved-model`.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")

from keras_hourglass.cli.main import main  # noqa: E402
from test_two_stage import one_line_error, standin_model, write_prep  # noqa: E402

MAX_MARKS = 8


@pytest.fixture(scope="module")
def combined(tmp_path_factory):
    """PREP -> PROPOSALS -> RUN2 -> EVAL -> one combined export, through the CLI, once for the module."""
    root = tmp_path_factory.mktemp("two_stage_export")
    prep = write_prep(root / "prep")
    model = str(root / "run" / "model.keras")  # no config.json: the export takes the proposals' long side
    os.makedirs(os.path.dirname(model))
    standin_model().save(model)
    proposals, run2, evaluation = str(root / "proposals"), str(root / "run2"), str(root / "eval")
    assert main(["proposals", "--model", model, "--data", prep, "--out", proposals, "--threshold", "0.1",
                 "--quiet"]) == 0
    assert main(["train", "--stage", "2", "--data", proposals, "--out", run2, "--epochs", "1", "--steps-per-epoch",
                 "3", "--batch-size", "8", "--classifier-filters", "4,8", "--seed", "3", "--quiet"]) == 0
    classifier = os.path.join(run2, "model.keras")
    assert main(["evaluate", "--model", model, "--classifier", classifier, "--data", prep, "--out", evaluation,
                 "--bootstrap", "0", "--quiet"]) == 0
    base = str(root / "serving" / "hourglass")
    return {"root": root, "prep": prep, "model": model, "run2": run2, "classifier": classifier, "eval": evaluation,
            "base": base, "export": [
                "export", "--model", model, "--classifier", classifier, "--base-path", base,
                "--max-marks", str(MAX_MARKS), "--evaluation", evaluation]}


def library_two_stage(combined: dict, elements: list[dict]) -> list:
    """The library's two-stage records of evaluation elements (`hourglass evaluate --classifier`'s scoring)."""
    from keras_hourglass.modelfile import load_heatmap_model
    from keras_hourglass.two_stage.evaluate import predict_two_stage
    from keras_hourglass.two_stage.system import load_stage_two

    stage_two = load_stage_two(combined["classifier"])
    _, records = predict_two_stage(load_heatmap_model(combined["model"]), stage_two.classifier, elements,
                                   combination=stage_two.combination, proposal_threshold=stage_two.threshold,
                                   max_proposals=stage_two.max_proposals)
    return records


@pytest.fixture(scope="module")
def exported(combined):
    import io
    from contextlib import redirect_stdout

    out = io.StringIO()
    with redirect_stdout(out):
        assert main(combined["export"]) == 0
    return json.loads(out.getvalue())


def test_the_export_records_both_stages_and_is_verified(combined, exported):
    from keras_hourglass.two_stage.combine import RULE, stage_two_weight

    meta, run2 = exported["metadata"], json.load(open(os.path.join(combined["run2"], "config.json")))
    two = meta["two_stage"]
    name = run2["two_stage"]["combination"]["name"]
    assert two["stages"] == 2 and two["combination"]["name"] == name and two["combination"]["rule"] == RULE
    assert two["combination"]["stage_two_weight"] == stage_two_weight(name)
    assert two["proposals"]["threshold"] == 0.1 and two["proposals"]["max_marks"] == 100
    assert two["patch"]["patch_size"] == 16 and two["patch"]["long_side"] == 64 == meta["long_side"]
    assert two["classifier"]["stage_one_matches"] is True
    froc = json.load(open(os.path.join(combined["eval"], "froc.json")))
    assert meta["operating_points"]["system"] == "two_stage"
    points = froc["two_stage"]["operating_points"]
    assert meta["operating_points"]["points"]["4.8"]["threshold"] == points["4.8"]["threshold"]
    check = exported["verification"]
    assert check["two_stage_check"]["marks_compared"] > 0 and check["warmup_records_replayed"] > 0
    outputs = check["signatures"]["serving_default"]["outputs"]
    assert {"marks", "num_marks", "heatmap", "long_side", "stage_one_score", "probability"} == set(outputs)
    assert outputs["marks"] == ["DT_FLOAT", f"(-1, {MAX_MARKS}, 3)"]
    assert outputs["stage_one_score"] == outputs["probability"] == ["DT_FLOAT", f"(-1, {MAX_MARKS})"]
    assert {"marks", "num_marks", "long_side", "stage_one_score", "probability"} <= set(
        check["signatures"]["detect_png"]["outputs"])


def test_the_exported_scores_are_the_librarys_two_stage_scores(combined, exported):
    from keras_hourglass.data.pipeline import evaluation_dataset

    loaded = tf.saved_model.load(exported["path"])
    elements = list(evaluation_dataset(combined["prep"], split="test", input_multiple=2))
    library = library_two_stage(combined, elements)
    compared = 0
    for element, record in zip(elements, library):
        out = loaded.signatures["serving_default"](image=element["image"])
        n = int(out["num_marks"][0])
        marks = out["marks"][0, :n].numpy()
        assert n == len(record.marks) and n > 0  # every combined score is > 0, the default threshold
        np.testing.assert_allclose(marks[:, :2], record.marks[:, :2], atol=1e-4)
        np.testing.assert_allclose(marks[:, 2], record.marks[:, 2], rtol=1e-4, atol=1e-5)
        np.testing.assert_array_less(0.1 - 1e-6, out["stage_one_score"][0, :n].numpy())  # proposals only
        compared += n
    assert compared == 5  # the 4 spots of e1 and the background spot of e2 (their faint spots are no proposals)
    # A batch of two images (one H, W) gives each image's own marks.
    batch = loaded.signatures["serving_default"](image=tf.concat([e["image"] for e in elements], axis=0))
    for i, record in enumerate(library):
        n = int(batch["num_marks"][i])
        np.testing.assert_allclose(batch["marks"][i, :n].numpy(), record.marks, rtol=1e-4, atol=1e-4)


def test_predict_reads_the_two_stage_export_unchanged(combined, exported, tmp_path, capsys):
    from keras_hourglass.data.dicom import read_mammogram
    from serving_doubles import breast_pixels, write_mammogram_dicom

    dicom = write_mammogram_dicom(tmp_path / "l_cc.dcm", breast_pixels(64, 64, seed=1))
    capsys.readouterr()
    assert main(["predict", "--saved-model", combined["base"], dicom]) == 0
    (result,) = json.loads(capsys.readouterr().out)["results"]
    image = read_mammogram(dicom, long_side=64).image  # what the client sent
    (record,) = library_two_stage(combined, [{"image": image[None, :, :, None]}])
    expected = record.marks[record.marks[:, 2] > 0][:MAX_MARKS]
    assert result["num_marks"] == len(expected) > 0
    np.testing.assert_allclose([m["score"] for m in result["marks"]], expected[:, 2], atol=2e-6)
    # TF Serving's REST API (row form: the extra outputs share the batch dimension) through the client.
    from serving import client as sc
    from serving_doubles import TFServingRestDouble

    server, url = TFServingRestDouble(exported["path"]).start()
    try:
        detection = sc.RestClient(url, signature="detect_png").detect_file(dicom)
    finally:
        server.shutdown()
        server.server_close()
    np.testing.assert_allclose(detection.marks[:, 2], expected[:, 2], atol=1e-4)  # a 16-bit PNG of the image


def test_a_classifier_of_another_patch_geometry_is_a_one_line_error(combined, tmp_path, capsys):
    argv = [*combined["export"][:7], "--base-path", str(tmp_path / "b"), "--verify", "ops"]
    assert main([*argv, "--long-side", "128"]) == 2
    one_line_error(capsys, "export", f"{combined['classifier']}: the detector's images (--long-side) have long side "
                                     "128 px, the classifier's proposals 64 px")
    run3 = tmp_path / "run3"
    shutil.copytree(combined["run2"], run3, ignore=shutil.ignore_patterns("backup"))
    config = json.load(open(run3 / "config.json"))
    config["proposals"]["patch"]["resolved"] = 24
    (run3 / "config.json").write_text(json.dumps(config))
    argv[4] = str(run3 / "model.keras")
    assert main(argv) == 2
    one_line_error(capsys, "export", "model.keras: takes 16-px patches, but its config.json records 24-px patches")
    assert not os.path.exists(tmp_path / "b" / "1")


def test_bad_classifier_and_evaluation_are_one_line_errors(combined, tmp_path, capsys):
    base = ["--base-path", str(tmp_path / "b"), "--verify", "ops"]
    assert main(["export", "--model", combined["model"], "--classifier", combined["model"], *base]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith(f"hourglass export: error: {combined['model']}: not a patch classifier")
    assert err.count("\n") == 1
    stage_one_froc = tmp_path / "froc.json"
    stage_one_froc.write_text(json.dumps({"operating_points": {"4.8": {"threshold": 0.1}}}))
    assert main(["export", "--model", combined["model"], "--classifier", combined["classifier"], *base,
                 "--evaluation", str(stage_one_froc)]) == 2
    one_line_error(capsys, "export", "froc.json: has no two_stage results (run hourglass evaluate --classifier)")
    lonely = tmp_path / "lonely" / "model.keras"
    lonely.parent.mkdir()
    shutil.copy(combined["classifier"], lonely)
    assert main(["export", "--model", combined["model"], "--classifier", str(lonely), *base]) == 2
    one_line_error(capsys, "export", "no config.json of a stage-two run beside it")


def test_the_graph_crop_and_combination_are_the_numpy_ones():
    from keras_hourglass.two_stage.combine import COMBINATIONS, STAGE_ONE, combine_scores, combine_scores_tf
    from keras_hourglass.two_stage.patches import crop_patches, crop_patches_tf

    rng = np.random.default_rng(0)
    image = rng.random((37, 29)).astype(np.float32)
    marks = np.column_stack([rng.uniform(0, 37, 12), rng.uniform(0, 29, 12)]).astype(np.float32)
    marks[:3] = [[0, 0], [37, 29], [0.5, 28.5]]  # corners and edges: zero outside the image
    np.testing.assert_array_equal(crop_patches_tf(image[None, ..., None], marks[None], 16).numpy(),
                                  crop_patches(image, marks, 16))
    s, p = np.array([0.5, -1.0, 0.2, 3.0]), np.array([0.5, 0.9, 0.0, 1.2])
    for name in (STAGE_ONE, *COMBINATIONS):
        np.testing.assert_allclose(combine_scores_tf(s, p, name).numpy(), combine_scores(s, p, name), rtol=1e-6)


def test_the_two_stage_check_fails_on_another_combination(combined, exported):
    from export.saved_model import load_inference_model
    from export.two_stage import TwoStageDetector
    from export.verify import VerificationError
    from export.verify_two_stage import verify_two_stage
    from keras_hourglass.two_stage.system import load_stage_two

    stage_two = load_stage_two(combined["classifier"])
    model, stride, multiple = load_inference_model(combined["model"])
    other = "probability" if stage_two.combination != "probability" else "product"
    wrong = TwoStageDetector(model, stage_two.classifier, combination=other, patch_size=16, proposal_threshold=0.1,
                             max_proposals=100, stride=stride, input_multiple=multiple, max_marks=MAX_MARKS,
                             long_side=64)
    with pytest.raises(VerificationError, match="combined scores differ from the Python pipeline's"):
        verify_two_stage(exported["path"], wrong, stage_two.classifier)


def test_served_marks_match_the_png_marks_within_float_tolerance():
    """serving_default (float image) and detect_png (16-bit PNG) may differ in the last float32 bits."""
    np = pytest.importorskip("numpy")
    from export.verify_two_stage import _same_marks_above

    png = np.array([[10.0, 20.0, 0.5977039], [30.0, 40.0, 0.59046495], [50.0, 60.0, 0.30000004],
                    [70.0, 80.0, 0.1]])
    served = png[:3].copy()
    served[1, 2] = 0.590465  # the 1e-7 difference a real two-stage export showed
    served[2, 2] = 0.3000001
    assert _same_marks_above(served, png, 0.3, 1e-4)
    assert _same_marks_above(served[:2], png, 0.3, 1e-4)  # the mark at the threshold may fall either side
    assert _same_marks_above(served[[1, 0]], png, 0.3, 1e-4)  # near-equal scores may swap order
    moved = served.copy()
    moved[0, 0] += 4.0
    assert not _same_marks_above(moved, png, 0.3, 1e-4)  # another position
    assert not _same_marks_above(served[1:], png, 0.3, 1e-4)  # a clear mark missing
    wrong = served.copy()
    wrong[0, 2] = 0.7
    assert not _same_marks_above(wrong, png, 0.3, 1e-4)  # another score
