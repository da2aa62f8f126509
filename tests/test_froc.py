"""FROC on hand-built cases whose answers are computed in the comments."""

from __future__ import annotations

import json

import numpy as np
import pytest

from keras_hourglass.evaluation.froc import (
    BACKGROUND,
    EXTRA_HIT,
    HIT,
    NON_POSITIVE,
    FPI_POINTS,
    ImageRecord,
    froc,
    fpi_key,
    match_image,
)

KEYS = ["0.125", "0.25", "0.5", "1", "2", "4", "4.8", "8"]
BOX = [0.0, 0.0, 10.0, 10.0]


def four_image_case() -> list[ImageRecord]:
    """Three patients, four images, three malignant findings.

    img1 (P1): malignant M1 [0,0,10,10], benign B1 [20,20,30,30]
        (5,5,.95) hits M1; (25,25,.90) on the benign finding -> FP;
        (7,7,.40) second mark on M1 -> ignored (or FP under the strict policy)
    img2 (P1): normal; (50,50,.85) FP; (60,60,.30) FP
    img3 (P2): malignant M2 [0,0,10,10], malignant M3 [40,40,50,50]
        (45,45,.70) hits M3; (80,80,.60) FP; (2,2,.20) hits M2
    img4 (P3): normal; (10,10,.50) FP

    Sweep (4 images, 3 findings):
        thr   .95  .90  .85  .70  .60  .50  .40  .30  .20
        hits   1    1    1    2    2    2    2    2    3
        FP     0    1    2    2    3    4    4    5    5
        FPI    0   .25  .5   .5  .75   1    1   1.25 1.25
        sens  1/3  1/3  1/3  2/3  2/3  2/3  2/3  2/3   1
    Step rule (lowest threshold with FPI <= target):
        0.125 -> thr .95 -> 1/3;  0.25 -> .90 -> 1/3;  0.5 -> .70 -> 2/3;
        1 -> .40 -> 2/3;  2, 4, 4.8, 8 -> .20 -> 1
    mean = (1/3 + 1/3 + 2/3 + 2/3 + 1 + 1 + 1 + 1) / 8 = 6/8 = 0.75
    max sensitivity 1, first reached at FPI 1.25.
    """
    return [
        ImageRecord(
            "img1", "P1",
            marks=[[5, 5, 0.95], [25, 25, 0.90], [7, 7, 0.40]],
            boxes=[BOX, [20, 20, 30, 30]], labels=["malignant", "benign"],
        ),
        ImageRecord("img2", "P1", marks=[[50, 50, 0.85], [60, 60, 0.30]]),
        ImageRecord(
            "img3", "P2",
            marks=[[45, 45, 0.70], [80, 80, 0.60], [2, 2, 0.20]],
            boxes=[BOX, [40, 40, 50, 50]], labels=["malignant", "malignant"],
        ),
        ImageRecord("img4", "P3", marks=[[10, 10, 0.50]]),
    ]


def test_single_image_known_scores():
    # One malignant box; marks: FP .9, FP .8, hit .5.  One image:
    # thr .9 -> FPI 1 sens 0; .8 -> FPI 2 sens 0; .5 -> FPI 2 sens 1.
    record = ImageRecord("a", "p", marks=[[50, 50, 0.9], [60, 60, 0.8], [5, 5, 0.5]], boxes=[BOX], labels=["malignant"])
    result = froc([record], n_bootstrap=0)
    assert result.sensitivity_at_fpi == {k: v for k, v in zip(KEYS, [0, 0, 0, 0, 1, 1, 1, 1])}
    assert result.mean_sensitivity == pytest.approx(0.5)
    assert result.max_sensitivity == 1.0
    assert result.fpi_at_max_sensitivity == 2.0
    np.testing.assert_allclose(result.curve_threshold, [0.9, 0.8, 0.5])
    np.testing.assert_allclose(result.curve_fpi, [1, 2, 2])
    np.testing.assert_allclose(result.curve_sensitivity, [0, 0, 1])
    assert result.operating_points["2"] == {"threshold": 0.5, "fpi": 2.0, "sensitivity": 1.0}
    # Below the first operating point no mark is kept: sensitivity 0, no threshold.
    assert result.operating_points["0.125"] == {"threshold": None, "fpi": 0.0, "sensitivity": 0.0}
    # Linear interpolation between (1, 0) and (2, 1) at FPI 1.5 gives 0.5; step gives 0.
    assert froc([record], fpi_points=[1.5], interpolation="linear", n_bootstrap=0).sensitivity_at_fpi == {"1.5": 0.5}
    assert froc([record], fpi_points=[1.5], n_bootstrap=0).sensitivity_at_fpi == {"1.5": 0.0}


def test_several_marks_on_one_finding_count_once():
    # Malignant [10,10,20,20]; three marks inside it (one on the border) and one outside.
    record = ImageRecord(
        "a", "p",
        marks=[[15, 15, 0.9], [12, 18, 0.8], [20, 20, 0.7], [100, 100, 0.6]],
        boxes=[[10, 10, 20, 20]], labels=["malignant"],
    )
    match = match_image(record)
    assert list(match.status) == [HIT, EXTRA_HIT, EXTRA_HIT, BACKGROUND]
    assert list(match.false_positive) == [False, False, False, True]

    ignore = froc([record], n_bootstrap=0)  # default: extra hits are not FPs
    np.testing.assert_array_equal(ignore.curve_false_marks, [0, 0, 0, 1])
    np.testing.assert_array_equal(ignore.curve_hits, [1, 1, 1, 1])
    assert ignore.max_sensitivity == 1.0 and ignore.fpi_at_max_sensitivity == 0.0

    strict = froc([record], extra_hits="false_positive", n_bootstrap=0)
    np.testing.assert_array_equal(strict.curve_false_marks, [0, 1, 2, 3])
    np.testing.assert_array_equal(strict.curve_hits, [1, 1, 1, 1])
    assert strict.settings["extra_hits"] == "false_positive"
    # Hit count never exceeds the findings: sensitivity stays 1.
    assert strict.sensitivity_at_fpi["0.125"] == 1.0


def test_marks_on_benign_and_high_risk_are_false_positives():
    # benign [0,0,10,10], high_risk [20,20,30,30], malignant [50,50,60,60]
    # marks: .9 on benign (FP), .8 on high_risk (FP), .3 on malignant (hit)
    # thr .9 FPI 1 sens 0; .8 FPI 2 sens 0; .3 FPI 2 sens 1
    record = ImageRecord(
        "a", "p",
        marks=[[5, 5, 0.9], [25, 25, 0.8], [55, 55, 0.3]],
        boxes=[BOX, [20, 20, 30, 30], [50, 50, 60, 60]],
        labels=[b"benign", "HIGH_RISK", "malignant"],
    )
    assert list(match_image(record).status) == [NON_POSITIVE, NON_POSITIVE, HIT]
    assert list(match_image(record).finding) == [0, 1, 2]
    result = froc([record], n_bootstrap=0)
    assert result.num_malignant_findings == 1
    assert result.num_findings_by_label == {"benign": 1, "high_risk": 1, "malignant": 1}
    assert result.sensitivity_at_fpi["1"] == 0.0
    assert result.sensitivity_at_fpi["2"] == 1.0


def test_normal_images_count_in_the_denominator():
    # The single-image case plus 3 normal images without marks: FPI = false marks / 4.
    # thr .9 -> FPI .25; .8 -> .5; .5 -> .5 with sens 1.
    records = [ImageRecord("a", "p", marks=[[50, 50, 0.9], [60, 60, 0.8], [5, 5, 0.5]], boxes=[BOX], labels=["malignant"])]
    records += [ImageRecord(f"n{i}", f"q{i}") for i in range(3)]
    result = froc(records, n_bootstrap=0)
    assert result.num_images == 4 and result.num_patients == 4
    np.testing.assert_allclose(result.curve_fpi, [0.25, 0.5, 0.5])
    assert result.sensitivity_at_fpi["0.25"] == 0.0
    assert result.sensitivity_at_fpi["0.5"] == 1.0


def test_hand_computed_four_image_case():
    result = froc(four_image_case(), n_bootstrap=0)
    third = 1 / 3
    expected = [third, third, 2 * third, 2 * third, 1, 1, 1, 1]
    for key, value in zip(KEYS, expected):
        assert result.sensitivity_at_fpi[key] == pytest.approx(value), key
    assert result.mean_sensitivity == pytest.approx(0.75)
    assert result.max_sensitivity == 1.0
    assert result.fpi_at_max_sensitivity == pytest.approx(1.25)
    assert result.operating_points["1"]["threshold"] == pytest.approx(0.40)
    assert result.num_images == 4 and result.num_patients == 3 and result.num_malignant_findings == 3
    np.testing.assert_allclose(result.curve_fpi, [0, 0.25, 0.5, 0.5, 0.75, 1, 1, 1.25, 1.25])
    np.testing.assert_array_equal(result.curve_hits, [1, 1, 1, 2, 2, 2, 2, 2, 3])

    # Strict policy: the .40 second mark on M1 is FP -> FP 5 at .40, 6 at .30 -> max at FPI 1.5.
    strict = froc(four_image_case(), extra_hits="false_positive", n_bootstrap=0)
    assert strict.sensitivity_at_fpi["1"] == pytest.approx(2 * third)  # thr .50 now
    assert strict.operating_points["1"]["threshold"] == pytest.approx(0.50)
    assert strict.fpi_at_max_sensitivity == pytest.approx(1.5)

    # Any FPI budget: FPI <= 1.1 -> the .40 point (FPI 1); below the first point -> no threshold.
    assert result.operating_point(1.1) == {"threshold": pytest.approx(0.40), "fpi": 1.0, "sensitivity": pytest.approx(2 * third)}
    assert result.sensitivity(1.24) == pytest.approx(2 * third) and result.sensitivity(1.25) == 1.0

    # Linear: envelope (0,1/3) (.25,1/3) (.5,2/3) (.75,2/3) (1,2/3) (1.25,1); at 1.125 -> 5/6.
    linear = froc(four_image_case(), fpi_points=[0.125, 1.125], interpolation="linear", n_bootstrap=0)
    assert linear.sensitivity_at_fpi == {"0.125": pytest.approx(third), "1.125": pytest.approx(5 / 6)}


def test_mark_inside_two_malignant_boxes_hits_both():
    record = ImageRecord(
        "a", "p", marks=[[10, 10, 0.5]], boxes=[BOX, [10, 10, 20, 20]], labels=["malignant", "malignant"]
    )
    result = froc([record], n_bootstrap=0)
    assert result.max_sensitivity == 1.0 and result.curve_false_marks[-1] == 0


def test_no_malignant_finding_policy():
    records = [
        ImageRecord("a", "p", marks=[[5, 5, 0.9], [50, 50, 0.2]], boxes=[BOX], labels=["benign"]),
        ImageRecord("b", "q", marks=[[1, 1, 0.4]]),
    ]
    result = froc(records, n_bootstrap=50)
    assert result.num_malignant_findings == 0
    assert all(v is None for v in result.sensitivity_at_fpi.values())
    assert result.mean_sensitivity is None and result.max_sensitivity is None
    assert result.fpi_at_max_sensitivity is None
    assert all(v is None for v in result.ci95.values())
    assert "no malignant finding" in result.warning
    payload = result.to_json()
    text = json.dumps(payload, allow_nan=False)  # strict JSON: no NaN anywhere
    assert '"warning"' in text
    # The false-mark side of the curve is still measured: FP 1, 2, 3 over 2 images.
    assert [p["fpi"] for p in payload["curve"]] == [0.5, 1.0, 1.5]
    assert all(p["sensitivity"] is None for p in payload["curve"])


def test_no_hit_at_all_is_measured_zero_at_fpi_zero():
    # Only false marks: the maximum sensitivity 0 needs no mark at all, so it is "reached" at FPI 0.
    result = froc([ImageRecord("a", "p", marks=[[50, 50, 0.9]], boxes=[BOX], labels=["malignant"])], n_bootstrap=0)
    assert result.max_sensitivity == 0.0 and result.fpi_at_max_sensitivity == 0.0
    assert result.sensitivity_at_fpi["8"] == 0.0


def test_no_marks_at_all_is_measured_zero():
    result = froc([ImageRecord("a", "p", boxes=[BOX], labels=["malignant"])], n_bootstrap=10)
    assert result.max_sensitivity == 0.0 and result.sensitivity_at_fpi["8"] == 0.0
    assert result.to_json()["curve"] == []


def test_bootstrap_ci_contains_point_estimate_and_is_seeded():
    records = four_image_case()
    result = froc(records, n_bootstrap=300, seed=3)
    for key in KEYS:
        lo, hi = result.ci95[key]
        assert lo <= result.sensitivity_at_fpi[key] <= hi, key
    lo, hi = result.ci95_max_sensitivity
    assert lo <= result.max_sensitivity <= hi
    lo, hi = result.ci95_mean_sensitivity
    assert lo <= result.mean_sensitivity <= hi
    # P3 alone (drawn 3 times) has no malignant finding: such replicates are left out and counted.
    assert result.num_bootstrap_undefined > 0
    again = froc(records, n_bootstrap=300, seed=3)
    assert again.ci95 == result.ci95
    band = result.ci95_band
    assert len(band["fpi"]) == len(band["lower"]) == len(band["upper"]) == 41
    assert band["fpi"][0] == pytest.approx(0.125) and band["fpi"][-1] == pytest.approx(8)


def test_bootstrap_ci_degenerate_when_patients_are_identical():
    # Every patient: one image, malignant box, FP at .9, hit at .8 -> any resample gives the same curve.
    records = [
        ImageRecord(f"i{k}", f"p{k}", marks=[[50, 50, 0.9], [5, 5, 0.8]], boxes=[BOX], labels=["malignant"])
        for k in range(6)
    ]
    result = froc(records, n_bootstrap=200, seed=0)
    for key in KEYS:
        lo, hi = result.ci95[key]
        assert lo == hi == result.sensitivity_at_fpi[key], key
    assert result.ci95_max_sensitivity == [1.0, 1.0]
    assert "only 6 patient(s)" in result.warning  # CIs on so few patients are flagged


def test_json_contract():
    result = froc(four_image_case(), n_bootstrap=20)
    payload = json.loads(json.dumps(result.to_json(), allow_nan=False))
    for key in (
        "sensitivity_at_fpi", "mean_sensitivity", "max_sensitivity", "fpi_at_max_sensitivity", "ci95",
        "num_images", "num_malignant_findings", "num_patients", "curve", "settings", "warning",
    ):
        assert key in payload, key
    assert list(payload["sensitivity_at_fpi"]) == KEYS
    assert list(payload["ci95"]) == KEYS
    assert all(len(v) == 2 for v in payload["ci95"].values())
    assert set(payload["curve"][0]) >= {"threshold", "fpi", "sensitivity"}
    assert payload["settings"]["bootstrap_unit"] == "patient"
    assert [fpi_key(f) for f in FPI_POINTS] == KEYS


def test_curve_thinning_keeps_ends_and_order():
    rng = np.random.default_rng(0)
    records = []
    for i in range(60):
        marks = np.column_stack([rng.uniform(0, 100, 40), rng.uniform(0, 100, 40), rng.uniform(0, 1, 40)])
        records.append(ImageRecord(f"i{i}", f"p{i // 2}", marks=marks, boxes=[[0, 0, 30, 30]], labels=["malignant"]))
    result = froc(records, n_bootstrap=0)
    assert result.curve_fpi.size == 2400
    thin = result.curve_points(max_points=100)
    assert len(thin) <= 100
    assert thin[0]["threshold"] == result.curve_threshold[0]
    assert thin[-1]["threshold"] == result.curve_threshold[-1]
    assert np.all(np.diff([p["fpi"] for p in thin]) >= 0)
    assert np.all(np.diff([p["threshold"] for p in thin]) < 0)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="at least one image"):
        froc([])
    with pytest.raises(ValueError, match="marks must be"):
        ImageRecord("a", "p", marks=[[1, 2]])
    with pytest.raises(ValueError, match="labels"):
        ImageRecord("a", "p", boxes=[BOX], labels=[])
    with pytest.raises(ValueError, match="extra_hits"):
        froc([ImageRecord("a", "p")], extra_hits="twice")
    # Dict records are accepted.
    assert froc([{"image_id": "a", "patient_id": "p", "marks": [[1, 1, 0.5]]}], n_bootstrap=0).num_marks == 1


def test_public_name_is_the_function_in_any_import_order():
    import keras_hourglass
    import keras_hourglass.evaluation.froc as module

    assert keras_hourglass.froc is module.froc
    assert keras_hourglass.froc([ImageRecord("a", "p")], n_bootstrap=0).num_images == 1


def test_froc_plots_reports_and_cli_module_do_not_import_tensorflow():
    import subprocess
    import sys

    code = (
        "import argparse, sys\n"
        "import keras_hourglass.evaluation.froc, keras_hourglass.evaluation.plots, keras_hourglass.evaluation.report\n"
        "import keras_hourglass.cli.evaluate as cli\n"
        "cli.register(argparse.ArgumentParser().add_subparsers())\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TF imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def brute_force_curve(records, extra_hits="ignore"):
    """An independent, slow FROC: at every threshold, re-apply the rules from scratch."""
    thresholds = sorted({m[2] for r in records for m in r.marks}, reverse=True)
    findings = sum(lab == "malignant" for r in records for lab in r.labels)
    curve = []
    for t in thresholds:
        hit, false = 0, 0
        for r in records:
            kept = [m for m in r.marks if m[2] >= t]
            detected = set()
            for y, x, score in sorted(kept, key=lambda m: -m[2]):
                inside = [
                    n for n, (b, lab) in enumerate(zip(r.boxes, r.labels))
                    if lab == "malignant" and b[0] <= y <= b[2] and b[1] <= x <= b[3]
                ]
                new = [n for n in inside if n not in detected]
                if not inside or (extra_hits == "false_positive" and not new):
                    false += 1
                detected.update(inside)
            hit += len(detected)
        curve.append((t, false / len(records), hit / findings))
    return curve


@pytest.mark.parametrize("extra_hits", ["ignore", "false_positive"])
def test_sweep_matches_brute_force_on_random_cases(extra_hits):
    rng = np.random.default_rng(7)
    labels_pool = ["malignant", "benign", "high_risk"]
    for _ in range(20):
        records = []
        for i in range(int(rng.integers(1, 6))):
            n = int(rng.integers(0, 4))
            y0, x0 = rng.integers(0, 30, (2, n))
            boxes = np.stack([y0, x0, y0 + rng.integers(2, 12, n), x0 + rng.integers(2, 12, n)], axis=1)
            labels = list(rng.choice(labels_pool, n)) if n else []
            # Integer coordinates and scores on a coarse grid: borders and score ties happen.
            marks = np.column_stack([rng.integers(0, 40, 8), rng.integers(0, 40, 8), rng.integers(1, 6, 8) / 5])
            records.append(ImageRecord(f"i{i}", f"p{i % 3}", marks=marks, boxes=boxes.reshape(-1, 4), labels=labels))
        if not any("malignant" in r.labels for r in records):
            continue
        result = froc(records, extra_hits=extra_hits, n_bootstrap=0)
        expected = brute_force_curve(records, extra_hits)
        np.testing.assert_allclose(result.curve_threshold, [c[0] for c in expected])
        np.testing.assert_allclose(result.curve_fpi, [c[1] for c in expected])
        np.testing.assert_allclose(result.curve_sensitivity, [c[2] for c in expected])


def test_bootstrap_replicate_equals_explicit_patient_resampling():
    # One replicate (n_bootstrap=1): its CI is [v, v] where v is the FROC of the resampled set,
    # built here explicitly by copying every image of each drawn patient (patients in sorted order).
    records = four_image_case()
    for seed in range(5):
        patients = sorted({r.patient_id for r in records})
        drawn = np.random.default_rng(seed).integers(0, len(patients), len(patients))
        resampled = [
            ImageRecord(f"{r.image_id}#{k}", f"{r.patient_id}#{k}", r.marks, r.boxes, r.labels)
            for k, p in enumerate(drawn) for r in records if r.patient_id == patients[p]
        ]
        result = froc(records, n_bootstrap=1, seed=seed)
        if not any("malignant" in r.labels for r in resampled):
            assert result.num_bootstrap_undefined == 1 and result.ci95["1"] is None
            continue
        explicit = froc(resampled, n_bootstrap=0)
        for key in KEYS:
            assert result.ci95[key] == [pytest.approx(explicit.sensitivity_at_fpi[key])] * 2, (seed, key)
        assert result.ci95_max_sensitivity == [pytest.approx(explicit.max_sensitivity)] * 2
