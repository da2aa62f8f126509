"""`hourglass predict --dicom-sr / --dicom-pr`: SR (TID 1500) and GSPS round trips through highdicom/pydicom."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
hd = pytest.importorskip("highdicom")

import pydicom  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from dicom_factory import write_mammogram_file  # noqa: E402
from keras_hourglass.cli.main import main  # noqa: E402
from keras_hourglass.data.dicom import read_mammogram  # noqa: E402
from serving.dicom_outputs import overlay_radius  # noqa: E402
from serving_doubles import breast_pixels, conv_model, write_mammogram_dicom  # noqa: E402

LONG_SIDE = 64
IDENTITY = dict(PatientID="PAT-4711", PatientName="Doe^Jane", PatientBirthDate="19600101", PatientSex="F",
                AccessionNumber="ACC-99", StudyID="S1", StudyDate="20261201", StudyTime="101500",
                ReferringPhysicianName="", SeriesNumber=3, InstanceNumber=1)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from export.saved_model import export_detector
    from export.signatures import HourglassDetector

    detector = HourglassDetector(conv_model(stride=2, seed=1), stride=2, input_multiple=4, max_marks=4,
                                 threshold=-1e9, long_side=LONG_SIDE)
    path = tmp_path_factory.mktemp("serving") / "hourglass"
    export_detector(detector, path, verify="none")
    return str(path)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A right CC (stored chest wall right: flipped by preprocessing), 96 x 72 -> 64 x 48 (downscaled)."""
    path = tmp_path_factory.mktemp("dicom") / "right.dcm"
    return write_mammogram_file(path, breast_pixels(seed=2)[:, ::-1], laterality="R", view="CC",
                                SeriesInstanceUID=generate_uid(), **IDENTITY)


def test_sr_and_gsps_round_trip_to_the_marks(base, source, tmp_path, capsys):
    sr_dir, pr_dir = tmp_path / "sr", tmp_path / "pr"
    assert main(["predict", "--saved-model", base, "--dicom-sr", str(sr_dir), "--dicom-pr", str(pr_dir), source]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    (result,) = out["results"]
    src = pydicom.dcmread(source)
    assert (result["StudyInstanceUID"], result["SeriesInstanceUID"], result["SOPInstanceUID"]) == (
        src.StudyInstanceUID, src.SeriesInstanceUID, src.SOPInstanceUID)
    assert result["laterality"] == "R" and result["view"] == "CC" and result["num_marks"] == 4
    for secret in ("PAT-4711", "Doe", "ACC-99", "19600101"):  # only the SR/GSPS carry study identity
        assert secret not in captured.out and secret not in captured.err
    mammogram = read_mammogram(source, long_side=LONG_SIDE)
    assert mammogram.transform.flipped and mammogram.image.shape == (64, 48)

    sr = hd.sr.srread(result["dicom_sr"])
    assert result["dicom_sr"] == str(sr_dir / f"{src.SOPInstanceUID}.SR.dcm") and sorted(os.listdir(sr_dir)) == [
        f"{src.SOPInstanceUID}.SR.dcm"]
    assert sr.StudyInstanceUID == src.StudyInstanceUID and sr.PatientID == "PAT-4711"
    assert sr.AccessionNumber == "ACC-99" and sr.SeriesInstanceUID != src.SeriesInstanceUID
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    groups = sr.content.get_planar_roi_measurement_groups()
    assert len(groups) == len(result["marks"])
    for group, mark in zip(groups, result["marks"]):
        assert group.roi.graphic_type == hd.sr.GraphicTypeValues.POINT
        (x, y), = group.roi.value
        reference = group.roi.ContentSequence[0].ReferencedSOPSequence[0]
        assert reference.ReferencedSOPInstanceUID == src.SOPInstanceUID
        # ORIGINAL pixels: back through the flip and the downscale to the model's mark within 0.5 px.
        image_y, image_x = mammogram.transform.forward_points(np.array([y, x]))
        assert abs(image_y - mark["image_y"]) < 0.5 and abs(image_x - mark["image_x"]) < 0.5
        assert abs(x - mark["x"]) < 0.5 and abs(y - mark["y"]) < 0.5
        assert group.get_measurements()[0].value == pytest.approx(mark["score"], abs=1e-5)

    pr = pydicom.dcmread(result["dicom_pr"])
    assert pr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.11.1" and pr.Modality == "PR"
    assert pr.StudyInstanceUID == src.StudyInstanceUID
    (annotation,) = pr.GraphicAnnotationSequence
    assert annotation.ReferencedImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    circles = [g for g in annotation.GraphicObjectSequence if g.GraphicType == "CIRCLE"]
    assert len(circles) == len(result["marks"])
    scale = 64 / 96
    for circle, mark in zip(circles, result["marks"]):
        cx, cy, ex, ey = (float(v) for v in circle.GraphicData)
        # The GSPS circle, mapped onto the preprocessed image, is the PNG overlay's circle.
        image_y, image_x = mammogram.transform.forward_points(np.array([cy, cx]))
        assert abs(image_y - mark["image_y"]) < 0.5 and abs(image_x - mark["image_x"]) < 0.5
        assert abs(np.hypot(ex - cx, ey - cy) * scale - overlay_radius((64, 48))) < 0.5


def test_an_unreferenceable_or_malformed_source_writes_no_sr(base, tmp_path, capsys):
    no_series = write_mammogram_dicom(tmp_path / "in" / "no_series.dcm", breast_pixels(seed=1))  # no SeriesInstanceUID
    garbage = tmp_path / "in" / "garbage.dcm"
    garbage.write_bytes(b"DICM" + b"\x00" * 50)
    sr_dir = tmp_path / "sr"
    assert main(["predict", "--saved-model", base, "--dicom-sr", str(sr_dir), no_series, str(garbage)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 2
    assert "no_series.dcm" in lines[0] and "no SeriesInstanceUID" in lines[0]
    assert "garbage.dcm" in lines[1]
    assert not sr_dir.exists() or os.listdir(sr_dir) == []  # nothing half-written, no temp file left
    results = json.loads(captured.out)["results"]
    assert all("error" in r for r in results)


def test_an_overlay_rendered_from_the_gsps_matches_the_png_overlay(base, source, tmp_path, capsys):
    from PIL import Image

    from serving.client import write_overlay

    overlays, pr_dir = tmp_path / "overlays", tmp_path / "pr"
    assert main(["predict", "--saved-model", base, "--overlay-dir", str(overlays), "--dicom-pr", str(pr_dir),
                 source]) == 0
    (result,) = json.loads(capsys.readouterr().out)["results"]
    png = np.asarray(Image.open(overlays / "right.dcm.png"))
    mammogram = read_mammogram(source, long_side=LONG_SIDE)
    (annotation,) = pydicom.dcmread(result["dicom_pr"]).GraphicAnnotationSequence
    circles = [g.GraphicData for g in annotation.GraphicObjectSequence]
    scores = [float(t.UnformattedTextValue) for t in annotation.TextObjectSequence]
    scale = mammogram.image.shape[1] / mammogram.transform.original_shape[1]
    marks, radii = [], []
    for (cx, cy, ex, ey), score in zip(circles, scores):
        y, x = mammogram.transform.forward_points(np.array([cy, cx]))  # original -> preprocessed pixels
        marks.append((y, x, score))
        radii.append(np.hypot(ex - cx, ey - cy) * scale)
    assert np.ptp(radii) < 1e-6
    write_overlay(mammogram.image, np.array(marks), str(tmp_path / "from_gsps.png"), radius=radii[0])
    rendered = np.asarray(Image.open(tmp_path / "from_gsps.png"))
    differing = np.any(rendered != png, axis=-1).mean()
    drawn = np.any(png != np.asarray(Image.open(overlays / "right.dcm.png").convert("L").convert("RGB")), axis=-1)
    assert drawn.sum() > 50 and differing < 0.005, f"{differing:.4f} of the pixels differ"
