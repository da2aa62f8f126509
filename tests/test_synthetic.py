"""Synthetic mammograms: determinism, prevalence, boxes, DICOM content, PHI list, CSV, CLI."""

from __future__ import annotations

import csv
import dataclasses
import json
import os

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, RLELossless

from keras_hourglass.cli.main import main
from keras_hourglass.contract import LABELS
from keras_hourglass.data import dicom
from keras_hourglass.data.synthetic import (CSV_COLUMNS, RENDERED_FINDING_TYPES, SynthConfig, generate_dataset,
                                            plan_dataset, render_image)
from keras_hourglass.data.synthetic.findings import FindingSpec, render_finding

H, W = 192, 160
CONFIG = SynthConfig(num_images=16, seed=11, height=H, width=W, malignant_rate=0.3, high_risk_rate=0.15,
                     benign_rate=0.2)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    summary = generate_dataset(out, CONFIG)
    with open(out / "annotations.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return out, summary, rows


def _dicoms(out):
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(out / "images") for f in fs if f.endswith(".dcm"))


def test_same_seed_same_bytes_and_pixels(synth, tmp_path):
    out, summary, _ = synth
    again = tmp_path / "again"
    generate_dataset(again, CONFIG)
    for name in ("annotations.csv", "phi.json"):
        assert (out / name).read_bytes() == (again / name).read_bytes()
    first, second = _dicoms(out), _dicoms(again)
    assert [os.path.relpath(p, out) for p in first] == [os.path.relpath(p, again) for p in second]
    assert len(first) == summary["images"] == CONFIG.num_images
    for a, b in zip(first, second):
        np.testing.assert_array_equal(pydicom.dcmread(a).pixel_array, pydicom.dcmread(b).pixel_array)
    other = dataclasses.replace(CONFIG, seed=12, num_images=2)
    stored_a, _, _ = render_image(plan_dataset(CONFIG)[0], CONFIG)
    stored_b, _, _ = render_image(plan_dataset(other)[0], other)
    assert not np.array_equal(stored_a, stored_b)


def test_label_prevalence_follows_rates():
    cfg = SynthConfig(num_images=4000, seed=1, malignant_rate=0.2, high_risk_rate=0.05, benign_rate=0.1)
    plans = plan_dataset(cfg)  # no pixels: cheap
    labels = [p.label for p in plans]
    freq = {k: labels.count(k) / len(labels) for k in LABELS}
    for label, rate in (("malignant", 0.2), ("high_risk", 0.05), ("benign", 0.1), ("normal", 0.65)):
        assert abs(freq[label] - rate) < 0.035, (label, freq)
    screening = [p.label for p in plan_dataset(SynthConfig(num_images=4000, seed=2))]
    assert 0.003 <= screening.count("malignant") / 4000 <= 0.02
    assert screening.count("normal") / 4000 > 0.88
    with pytest.raises(ValueError):
        SynthConfig(num_images=3, malignant_rate=0.7, benign_rate=0.5).validate()


def test_exams_patients_views():
    plans = plan_dataset(SynthConfig(num_images=300, seed=4))
    per_study: dict[str, list] = {}
    per_patient: dict[str, set] = {}
    for p in plans:
        per_study.setdefault(p.tags.study_uid, []).append((p.laterality, p.view))
        per_patient.setdefault(p.tags.patient_id, set()).add(p.tags.study_uid)
    sizes = [len(v) for k, v in per_study.items() if k != plans[-1].tags.study_uid]  # last exam may be cut
    assert min(sizes) >= 2 and max(sizes) == 4 and len(set(sizes)) >= 2
    assert max(len(v) for v in per_patient.values()) >= 2  # patients with several exams
    assert all(len(set(v)) == len(v) for v in per_study.values())


def test_boxes_contain_lesion_centre_and_lie_inside(synth):
    out, _, rows = synth
    cfg = SynthConfig(num_images=40, seed=5, height=H, width=W, malignant_rate=0.5, high_risk_rate=0.2,
                      benign_rate=0.3)
    found = 0
    for plan in plan_dataset(cfg):
        if not plan.findings:
            continue
        _, _, findings = render_image(plan, cfg)
        for f in findings:
            found += 1
            y0, x0, y1, x1 = f.box
            cy, cx = f.center
            assert 0 <= y0 < y1 <= H and 0 <= x0 < x1 <= W
            assert y0 <= cy <= y1 and x0 <= cx <= x1
            ty0, tx0, ty1, tx1 = f.tight_box
            assert ty0 <= cy <= ty1 and tx0 <= cx <= tx1
            inter = max(0, min(y1, ty1) - max(y0, ty0)) * max(0, min(x1, tx1) - max(x0, tx0))
            assert inter >= 0.4 * (ty1 - ty0) * (tx1 - tx0)  # loose, but on the lesion
    assert found >= 10
    for r in rows:
        if r["label"] != "normal":
            x0, y0, x1, y1 = (float(r[k]) for k in ("xmin", "ymin", "xmax", "ymax"))
            assert 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H


def test_malignant_findings_differ_from_benign_with_overlap():
    def roughness(label: str, ftype: str, seed: int) -> float:
        rng = np.random.default_rng(seed)
        spec = FindingSpec(label, ftype, float(rng.beta(*{"benign": (2, 5), "malignant": (5, 2)}[label])), 0.5)
        density = np.zeros((200, 200), np.float32)
        allowed = np.zeros((200, 200), bool)
        allowed[100, 100] = True
        render_finding(spec, density, allowed, 1.0, rng)
        mask = density > 0.1 * density.max()  # the 10 % iso-contour includes spicules
        perimeter = np.count_nonzero(mask ^ np.roll(mask, 1, 0)) + np.count_nonzero(mask ^ np.roll(mask, 1, 1))
        return perimeter ** 2 / (4 * np.pi * mask.sum()), float(density.max())

    benign = np.array([roughness("benign", "mass", s) for s in range(25)])
    malignant = np.array([roughness("malignant", "mass", 100 + s) for s in range(25)])
    assert malignant[:, 0].mean() > 1.25 * benign[:, 0].mean()  # irregular / spiculated outlines
    assert malignant[:, 1].mean() > benign[:, 1].mean()  # higher contrast
    assert malignant[:, 0].min() < benign[:, 0].max()  # but the classes overlap


def test_files_read_back_oriented_and_typed(synth):
    out, _, rows = synth
    by_path = {r["image_path"]: r for r in rows}
    rules = set()
    for path in _dicoms(out):
        rel = os.path.relpath(path, out).replace(os.sep, "/")
        mam = dicom.read_mammogram(path, long_side=96)
        assert mam.image.shape == (96, 80) and 0.0 <= mam.image.min() and mam.image.max() <= 1.0
        assert (mam.header.laterality, mam.header.view) == (by_path[rel]["laterality"], by_path[rel]["view"])
        assert mam.transform.flipped == (by_path[rel]["laterality"] == "R")
        third = mam.image.shape[1] // 3
        assert mam.image[:, :third].mean() > mam.image[:, -third:].mean() + 0.1  # chest wall left
        rules.add(mam.orientation_rule)
        padded = "PixelPaddingValue" in pydicom.dcmread(path, stop_before_pixels=True)
        assert mam.voi_rule.endswith("+padding") == padded
    assert rules == {"tags+pixels"}
    assert any(p.tags.pixel_padding is not None for p in plan_dataset(dataclasses.replace(CONFIG, num_images=40)))


def test_dicom_content_variety(synth):
    out, summary, _ = synth
    seen: dict[str, set] = {k: set() for k in ("photometric", "syntax", "bits", "view", "lat", "voi", "sop", "mod")}
    for path in _dicoms(out):
        ds = pydicom.dcmread(path)
        seen["photometric"].add(ds.PhotometricInterpretation)
        seen["syntax"].add(ds.file_meta.TransferSyntaxUID)
        seen["bits"].add(int(ds.BitsStored))
        seen["view"].add(ds.ViewPosition)
        seen["lat"].add(ds.Laterality)
        seen["sop"].add(ds.SOPClassUID)
        seen["mod"].add(ds.Modality)
        if "VOILUTSequence" in ds:
            seen["voi"].add("lut")
        if "WindowCenter" in ds:
            seen["voi"].add(ds.get("VOILUTFunction", "LINEAR"))
        assert ds.PresentationIntentType == "FOR PRESENTATION" and int(ds.BitsAllocated) == 16
        assert 12 <= int(ds.BitsStored) <= 14 and ds.pixel_array.max() < 2 ** int(ds.BitsStored)
    assert seen["photometric"] == {"MONOCHROME1", "MONOCHROME2"}
    assert RLELossless in seen["syntax"] and len(seen["syntax"]) >= 2
    if pydicom.pixels.get_encoder(JPEG2000Lossless).is_available:
        assert JPEG2000Lossless in seen["syntax"]
    assert seen["bits"] == {12, 14} and seen["view"] == {"CC", "MLO"} and seen["lat"] == {"L", "R"}
    assert seen["sop"] == {dicom.FOR_PRESENTATION_SOP_CLASS} and seen["mod"] == {"MG"}
    assert {"lut", "LINEAR", "SIGMOID"} <= seen["voi"]
    assert sum(summary["images_per_label"].values()) == CONFIG.num_images


def test_phi_present_in_dicom_and_listed(synth):
    out, _, rows = synth
    phi = json.loads((out / "phi.json").read_text())
    values = set(phi["values"])
    fields = {"PatientName": set(), "PatientID": set(), "PatientBirthDate": set(), "AccessionNumber": set()}
    for path in _dicoms(out):
        ds = pydicom.dcmread(path)
        for key in fields:
            value = str(ds.get(key, ""))
            assert value, f"{key} missing in {path}"
            fields[key].add(value)
            assert value in values
    for key, vals in fields.items():
        assert set(phi["by_field"][key]) == vals
    assert len(fields["PatientID"]) >= 2 and all(len(v) >= 8 for v in values)
    csv_text = (out / "annotations.csv").read_text()
    assert all(v not in csv_text for v in fields["PatientName"] | fields["AccessionNumber"])
    assert {r["patient_id"] for r in rows} == fields["PatientID"]  # a hospital export carries PatientID


def test_csv_is_canonical(synth):
    out, _, rows = synth
    with open(out / "annotations.csv", newline="") as fh:
        header = next(csv.reader(fh))
    assert tuple(header) == CSV_COLUMNS
    images = {r["image_path"] for r in rows}
    assert len(images) == CONFIG.num_images
    for r in rows:
        assert os.path.isfile(out / r["image_path"]) and not os.path.isabs(r["image_path"])
        assert r["label"] in LABELS and r["laterality"] in ("L", "R") and r["view"] in ("CC", "MLO")
        box = [r[k] for k in ("xmin", "ymin", "xmax", "ymax")]
        if r["label"] == "normal":
            assert r["finding_type"] == "" and box == ["", "", "", ""]
        else:
            assert r["finding_type"] in RENDERED_FINDING_TYPES and all(float(v) >= 0 for v in box)
    assert {r["label"] for r in rows} - {"normal"}, "no lesions at these rates: fixture too small"


def test_cli_synth(tmp_path, capsys):
    code = main(["synth", "--out", str(tmp_path / "s"), "--images", "3", "--seed", "2", "--height", "96",
                 "--width", "80", "--malignant-rate", "0.5"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 3 and (tmp_path / "s" / "annotations.csv").is_file()
    assert main(["synth", "--out", str(tmp_path / "t"), "--images", "3", "--malignant-rate", "0.9",
                 "--benign-rate", "0.5"]) == 2
    assert "sum to at most 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["synth", "--out", str(tmp_path / "u"), "--images", "3", "--malignant-rate", "2"])
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        main(["synth", "--help"])
    assert "examples:" in capsys.readouterr().out


def test_stress_knobs_change_what_they_name_and_defaults_change_nothing():
    from keras_hourglass.data.synthetic.findings import DEFAULT_STRESS, StressSettings, loose_box

    tight, centre, shape = (100.0, 100.0, 120.0, 120.0), (110.0, 110.0), (640, 512)

    def boxes(stress, n=200):
        rng = np.random.default_rng(3)
        return np.array([loose_box(tight, centre, shape, rng, stress) for _ in range(n)])

    base = boxes(DEFAULT_STRESS)
    np.testing.assert_array_equal(base, boxes(StressSettings()))  # defaults draw what they drew before
    loose = boxes(StressSettings(box_looseness=6.0, box_offset=0.5))
    side = lambda b: (b[:, 2] - b[:, 0]).mean()  # noqa: E731
    assert side(loose) > 1.8 * side(base)
    for b in loose:  # the lesion centre stays inside every box
        assert b[0] <= centre[0] <= b[2] and b[1] <= centre[1] <= b[3]
    offset = lambda b: np.abs((b[:, 0] + b[:, 2]) / 2 - centre[0]).mean() / side(b)  # noqa: E731
    assert offset(boxes(StressSettings(box_offset=0.5))) > offset(boxes(StressSettings(box_offset=0.0))) + 0.05
    for bad in ({"box_looseness": 0.5}, {"box_offset": 0.7}, {"size_spread": 0.9}, {"contrast": 0.0}):
        with pytest.raises(ValueError):
            StressSettings(**bad).validate()


def test_contrast_and_size_spread_reach_the_pixels():
    from keras_hourglass.data.synthetic.findings import StressSettings

    spec = FindingSpec("malignant", "mass", 0.8, 0.5)

    def draw(stress):
        density = np.zeros((200, 200), np.float32)
        allowed = np.zeros((200, 200), bool)
        allowed[100, 100] = True
        found = render_finding(spec, density, allowed, 1.0, np.random.default_rng(1), stress)
        return density, found

    base, _ = draw(StressSettings())
    subtle, _ = draw(StressSettings(contrast=0.5))
    np.testing.assert_allclose(subtle, 0.5 * base, rtol=1e-5, atol=1e-7)
    sizes = []
    for seed in range(12):
        density = np.zeros((300, 300), np.float32)
        allowed = np.zeros((300, 300), bool)
        allowed[150, 150] = True
        found = render_finding(spec, density, allowed, 1.0, np.random.default_rng(seed), StressSettings(size_spread=3.0))
        sizes.append(found.tight_box[2] - found.tight_box[0])
    assert max(sizes) > 2.0 * min(sizes)
