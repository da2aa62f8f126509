"""Importers: canonical CSV, VinDr-Mammo, CBIS-DDSM (tiny fixtures written here)."""

from __future__ import annotations

import csv
import os
import re

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicom_factory import write_mammogram_file
from keras_hourglass.data.importers import get_importer, ImportResult
from keras_hourglass.errors import InputError

PHI = {"PatientName": "Zyxwvut^Quintessa", "PatientID": "PID-ZQ-774411", "PatientBirthDate": "19380517",
       "AccessionNumber": "ACC-99173355"}


def write_mammogram(path, rows: int = 96, cols: int = 64, *, laterality: str = "L", seed: int = 0,
                    modality: str = "MG", phi: dict | None = None, pixels: np.ndarray | None = None) -> str:
    """Writes a small MG For Presentation DICOM (12-bit MONOCHROME2) with identifying tags."""
    rng = np.random.default_rng(seed)
    if pixels is None:
        y, x = np.mgrid[0:rows, 0:cols]
        inside = ((y - rows / 2) / (rows * 0.48)) ** 2 + (x / (cols * 0.8)) ** 2 <= 1
        if laterality == "R":
            inside = inside[:, ::-1]
        pixels = np.where(inside, 1800 + rng.integers(0, 600, (rows, cols)), 60).astype(np.uint16)
    return write_mammogram_file(path, pixels, laterality=laterality, view="CC", modality=modality, **(phi or PHI))


def write_mask(path, rows: int, cols: int, box: tuple[int, int, int, int], value: int = 255) -> str:
    """Writes a binary ROI mask DICOM (8-bit) with `value` inside box (y0, x0, y1, x1)."""
    mask = np.zeros((rows, cols), np.uint8)
    y0, x0, y1, x1 = box
    mask[y0:y1, x0:x1] = value
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.Rows, ds.Columns = mask.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = mask.tobytes()
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    ds.save_as(os.fspath(path), enforce_file_format=True)
    return os.fspath(path)


def crash_on_marked_images(batch):
    """A stand-in ingest function whose process dies (like a codec segfault) on keys containing 'crash'."""
    from keras_hourglass.data.ingest import process_many

    if any("crash" in record.key for record, _settings, _salt in batch):
        os._exit(11)
    return process_many(batch)


def write_csv(path, header: list[str], rows: list[list]) -> str:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return os.fspath(path)


CANONICAL = ["image_path", "patient_id", "study_id", "laterality", "view", "label", "finding_type",
             "xmin", "ymin", "xmax", "ymax"]


def _codes(result: ImportResult) -> dict[str, str]:
    return {r.row.split(":")[1]: r.code for r in result.rejects}


# ---------------------------------------------------------------------------------------- canonical
def test_canonical_groups_rows_validates_and_accounts_for_every_row(tmp_path):
    for name in ("a.dcm", "b.dcm", "c.dcm", "d.dcm", "e.dcm"):
        (tmp_path / name).write_bytes(b"placeholder")  # the importer checks existence only
    rows = [
        ["a.dcm", "P1", "S1", "L", "CC", "malignant", "mass", 10, 20, 30, 40],       # 1 a: two findings
        ["a.dcm", "P1", "S1", "L", "CC", "benign", "calcification", 1, 2, 3, 4],    # 2
        ["b.dcm", "P2", "S2", "R", "MLO", "normal", "", "", "", "", ""],           # 3 b: normal
        ["c.dcm", "P3", "S3", "L", "CC", "cancer", "mass", 1, 2, 3, 4],             # 4 bad label
        ["c.dcm", "P3", "S3", "L", "CC", "benign", "mass", 1, 2, 3, 4],             # 5 sibling of 4
        ["d.dcm", "P4", "S4", "L", "CC", "benign", "lump", 1, 2, 3, 4],             # 6 bad type
        ["e.dcm", "P5", "S5", "L", "CC", "high_risk", "mass", 5, 2, 5, 4],          # 7 degenerate x
        ["missing.dcm", "P6", "S6", "L", "CC", "normal", "", "", "", "", ""],      # 8 missing file
        ["b.dcm", "P2", "S2", "R", "MLO", "normal", "", "1", "", "", ""],          # 9 partial box
        ["", "P7", "S7", "L", "CC", "normal", "", "", "", "", ""],                 # 10 no path
        ["e.dcm", "P5", "S5", "X", "CC", "benign", "mass", 1, 2, 3, 4],             # 11 bad laterality
        ["f.dcm", "P8", "S8", "L", "CC", "malignant", "mass", "", "", "", ""],      # 12 missing box
    ]
    table = write_csv(tmp_path / "ann.csv", CANONICAL, rows)
    result = get_importer("canonical")(table, str(tmp_path))
    result.check_accounting()
    assert result.total_rows == 12
    images = {image.key: image for image in result.images}
    assert sorted(images) == ["a.dcm"]
    a = images["a.dcm"]
    assert [f.label for f in a.findings] == ["malignant", "benign"]
    assert a.findings[0].box == (20.0, 10.0, 40.0, 30.0)  # (y0, x0, y1, x1) from xmin,ymin,xmax,ymax
    assert a.rows == ["ann.csv:1", "ann.csv:2"] and a.laterality == "L" and a.patient_id == "P1"
    codes = _codes(result)
    assert codes == {"3": "sibling_rejected", "4": "bad_label", "5": "sibling_rejected",
                     "6": "bad_finding_type", "7": "degenerate_box", "8": "missing_file", "9": "bad_value",
                     "10": "missing_field", "11": "bad_value", "12": "missing_box"}


def test_canonical_split_column_and_header_errors(tmp_path):
    (tmp_path / "a.dcm").write_bytes(b"x")
    good = write_csv(tmp_path / "s.csv", CANONICAL + ["split"], [
        ["a.dcm", "P1", "S1", "L", "CC", "normal", "", "", "", "", "", "test"],
        ["a.dcm", "P1", "S1", "L", "CC", "normal", "", "", "", "", "", "holdout"]])
    result = get_importer("canonical")(good, str(tmp_path))
    assert _codes(result) == {"1": "sibling_rejected", "2": "bad_split"}
    bad = write_csv(tmp_path / "bad.csv", ["image_path", "label"], [["a.dcm", "normal"]])
    with pytest.raises(InputError, match="missing column"):
        get_importer("canonical")(bad, str(tmp_path))
    with pytest.raises(InputError, match="unknown format"):
        get_importer("dicomdir")
    dup = write_csv(tmp_path / "dup.csv", CANONICAL, [
        ["a.dcm", "P1", "S1", "L", "CC", "normal", "", "", "", "", ""],
        ["./sub/../a.dcm", "P1", "S1", "L", "CC", "normal", "", "", "", "", ""],   # same key once normalised
        [str(tmp_path / "a.dcm"), "P2", "S1", "L", "CC", "normal", "", "", "", "", ""],  # same file, abs path
    ])
    result = get_importer("canonical")(dup, str(tmp_path))
    result.check_accounting()
    assert [(i.key, i.rows) for i in result.images] == [("a.dcm", ["dup.csv:1", "dup.csv:2"])]
    assert _codes(result) == {"3": "duplicate_image"}
    latin = tmp_path / "latin.csv"
    latin.write_bytes((",".join(CANONICAL) + "\na.dcm,P\xe9,S1,L,CC,normal,,,,,\n").encode("latin-1"))
    (image,) = get_importer("canonical")(str(latin), str(tmp_path)).images
    assert image.patient_id == "P\xe9"
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(InputError, match="empty"):
        get_importer("canonical")(str(empty), str(tmp_path))


# ------------------------------------------------------------------------------------------ VinDr
VINDR = ["study_id", "series_id", "image_id", "laterality", "view_position", "height", "width",
         "breast_birads", "breast_density", "finding_categories", "finding_birads", "xmin", "ymin",
         "xmax", "ymax", "split"]


def test_vindr_labels_categories_paths_and_split(tmp_path):
    for study, image in (("st1", "im1"), ("st1", "im2"), ("st2", "im3"), ("st3", "im4")):
        path = tmp_path / "images" / study / f"{image}.dicom"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    rows = [
        ["st1", "se", "im1", "L", "CC", 96, 64, "BI-RADS 4", "DENSITY C", "['Mass']", "BI-RADS 5",
         10.5, 20.0, 30.0, 40.0, "training"],                                                   # 1 malignant
        ["st1", "se", "im1", "L", "CC", 96, 64, "BI-RADS 4", "DENSITY C",
         "['Suspicious Calcification', 'Mass']", "BI-RADS 4", 1, 2, 3, 4, "training"],          # 2 high_risk
        ["st1", "se", "im2", "L", "MLO", 96, 64, "BI-RADS 1", "DENSITY C", "['No Finding']", "", "", "",
         "", "", "training"],                                                                   # 3 normal
        ["st2", "se", "im3", "R", "CC", 96, 64, "BI-RADS 3", "DENSITY B", "['Architectural Distortion']",
         "BI-RADS 3", 5, 5, 9, 9, "test"],                                                      # 4 benign
        ["st3", "se", "im4", "R", "CC", 96, 64, "BI-RADS 2", "DENSITY B", "[Mass", "BI-RADS 2", 5, 5, 9, 9,
         "test"],                                                                               # 5 bad list
        ["st9", "se", "im9", "R", "CC", 96, 64, "BI-RADS 2", "DENSITY B", "['No Finding']", "", "", "",
         "", "", "test"],                                                                       # 6 missing file
        ["st2", "se", "im3", "R", "CC", 96, 64, "BI-RADS 3", "DENSITY B", "['Skin Thickening']",
         "BI-RADS 1", 5, 5, 9, 9, "test"],                                                      # 7 unmapped
    ]
    table = write_csv(tmp_path / "finding_annotations.csv", VINDR, rows)
    result = get_importer("vindr")(table, str(tmp_path))
    result.check_accounting()
    images = {image.key: image for image in result.images}
    assert sorted(images) == ["images/st1/im1.dicom", "images/st1/im2.dicom"]
    im1 = images["images/st1/im1.dicom"]
    assert [(f.label, f.finding_type) for f in im1.findings] == [("malignant", "mass"),
                                                                 ("high_risk", "mass")]
    assert im1.findings[0].box == (20.0, 10.5, 40.0, 30.0)
    assert im1.patient_id == "st1" and im1.split == "train" and im1.laterality == "L"
    assert images["images/st1/im2.dicom"].findings == []
    assert _codes(result) == {"4": "sibling_rejected", "5": "bad_value", "6": "missing_file",
                              "7": "bad_label"}
    # A configurable map: BI-RADS 3 as high_risk, and 1 rejected no more.
    result = get_importer("vindr")(table, str(tmp_path),
                                   birads_map={1: "benign", 3: "high_risk", 4: "high_risk", 5: "malignant"})
    im3 = {i.key: i for i in result.images}["images/st2/im3.dicom"]
    assert [(f.label, f.finding_type) for f in im3.findings] == [("high_risk", "distortion"),
                                                                 ("benign", "other")]
    assert im3.split == "test"


# ------------------------------------------------------------------------------------------- CBIS
MASS = ["patient_id", "breast_density", "left or right breast", "image view", "abnormality id",
        "abnormality type", "mass shape", "mass margins", "assessment", "pathology", "subtlety",
        "image file path", "cropped image file path", "ROI mask file path"]
CALC = ["patient_id", "breast density", "left or right breast", "image view", "abnormality id",
        "abnormality type", "calc type", "calc distribution", "assessment", "pathology", "subtlety",
        "image file path", "cropped image file path", "ROI mask file path"]


def cbis_fixture(root) -> tuple[list[str], dict]:
    """Two tables (mass train, calc test), images + masks; returns (tables, expected boxes)."""
    image1 = "Mass-Training_P_00001_LEFT_CC/1.2.3/1.2.3.4/000000.dcm"
    mask1 = "Mass-Training_P_00001_LEFT_CC_1/1.2.3/1.2.3.5/000001.dcm"
    crop1 = "Mass-Training_P_00001_LEFT_CC_1/1.2.3/1.2.3.5/000000.dcm"
    image2 = "Calc-Test_P_00002_RIGHT_MLO/1.2.9/1.2.9.4/000000.dcm"
    mask2 = "Calc-Test_P_00002_RIGHT_MLO_1/1.2.9/1.2.9.5/000000.dcm"
    crop2 = "Calc-Test_P_00002_RIGHT_MLO_1/1.2.9/1.2.9.5/000001.dcm"
    write_mammogram(root / image1, 96, 64)
    write_mask(root / mask1, 96, 64, (10, 12, 20, 30))
    write_mammogram(root / crop1, 10, 18, seed=3)  # a cropped image: not binary
    write_mammogram(root / image2, 96, 64, laterality="R")
    write_mask(root / mask2, 48, 32, (5, 6, 10, 8))  # half-size mask: rescaled x2
    write_mammogram(root / crop2, 10, 18, seed=4)
    mass = write_csv(root / "mass_case_description_train_set.csv", MASS, [
        ["P_00001", 3, "LEFT", "CC", 1, "mass", "OVAL", "SPICULATED", 5, "MALIGNANT", 4,
         image1[:20] + "\n" + image1[20:], crop1, mask1 + "\n"],                  # 1: embedded newlines
        ["P_00001", 3, "LEFT", "CC", 2, "mass", "OVAL", "SPICULATED", 5, "BENIGN", 4,
         image1, mask1, crop1],                                                  # 2: swapped columns
        ["P_00003", 3, "LEFT", "CC", 1, "mass", "OVAL", "SPICULATED", 5, "UNPROVEN", 4,
         "Mass-Training_P_00003_LEFT_CC/1/2/000000.dcm", "", ""],                # 3: bad pathology
    ])
    calc = write_csv(root / "calc_case_description_test_set.csv", CALC, [
        ["P_00002", 2, "RIGHT", "MLO", 1, "calcification", "PLEOMORPHIC", "CLUSTERED", 4,
         "BENIGN_WITHOUT_CALLBACK", 3, image2, crop2, mask2],
    ])
    return [mass, calc], {image1: [(10, 12, 20, 30), (10, 12, 20, 30)], image2: [(10, 12, 20, 16)]}


def test_cbis_tables_quirks_labels_and_split(tmp_path):
    tables, _ = cbis_fixture(tmp_path)
    result = get_importer("cbis-ddsm")(tables, str(tmp_path))
    result.check_accounting()
    assert result.total_rows == 4
    images = {image.key: image for image in result.images}
    mass = images["Mass-Training_P_00001_LEFT_CC/1.2.3/1.2.3.4/000000.dcm"]
    assert [f.label for f in mass.findings] == ["malignant", "benign"]
    assert mass.split == "train" and mass.patient_id == "P_00001" and mass.study_id == "1.2.3"
    assert all(f.box is None and f.mask_paths for f in mass.findings)
    calc = images["Calc-Test_P_00002_RIGHT_MLO/1.2.9/1.2.9.4/000000.dcm"]
    assert calc.split == "test" and calc.laterality == "R" and calc.findings[0].finding_type == "calcification"
    assert calc.findings[0].label == "benign"
    assert [(r.row, r.code) for r in result.rejects] == [
        ("mass_case_description_train_set.csv:3", "bad_label")]


def test_cbis_mask_boxes_are_rescaled_and_cropped_images_are_skipped(tmp_path):
    from keras_hourglass.data.ingest import mask_box

    tables, expected = cbis_fixture(tmp_path)
    result = get_importer("cbis-ddsm")(tables, str(tmp_path))
    for image in result.images:
        boxes = [mask_box(f.mask_paths, (96, 64)) for f in image.findings]
        np.testing.assert_allclose(boxes, expected[image.key])
    empty = write_mask(tmp_path / "empty.dcm", 8, 8, (0, 0, 0, 0))
    with pytest.raises(ValueError, match="empty mask"):
        mask_box((empty,), (8, 8))


def test_cbis_falls_back_to_the_tcia_folder_layout(tmp_path):
    from keras_hourglass.data.ingest import mask_box

    # NBIA download: other folder names below the first component; mask and crop as 1-1/1-2.
    write_mammogram(tmp_path / "Mass-Test_P_00009_LEFT_MLO/07-20-2016-DDSM-1/1.000000-full-2/1-1.dcm", 96, 64)
    write_mammogram(tmp_path / "Mass-Test_P_00009_LEFT_MLO_1/07-21-2016-DDSM-2/1.000000-ROI-3/1-1.dcm", 10, 18)
    write_mask(tmp_path / "Mass-Test_P_00009_LEFT_MLO_1/07-21-2016-DDSM-2/1.000000-ROI-3/1-2.dcm", 96, 64,
               (30, 10, 40, 20))
    write_mammogram(tmp_path / "Mass-Test_P_00010_LEFT_CC/a/b/1-1.dcm", 96, 64)
    write_mammogram(tmp_path / "Mass-Test_P_00010_LEFT_CC/a/c/1-1.dcm", 96, 64)
    table = write_csv(tmp_path / "mass_case_description_test_set.csv", MASS, [
        ["P_00009", 2, "LEFT", "MLO", 1, "mass", "ROUND", "CIRCUMSCRIBED", 4, "MALIGNANT", 3,
         "Mass-Test_P_00009_LEFT_MLO/1.2.3/1.2.3.4/000000.dcm",
         "Mass-Test_P_00009_LEFT_MLO_1/1.2.3/1.2.3.5/000000.dcm",
         "Mass-Test_P_00009_LEFT_MLO_1/1.2.3/1.2.3.5/000001.dcm"],
        ["P_00010", 2, "LEFT", "CC", 1, "mass", "ROUND", "CIRCUMSCRIBED", 4, "BENIGN", 3,
         "Mass-Test_P_00010_LEFT_CC/1/2/000000.dcm", "x/000000.dcm", "x/000001.dcm"],
    ])
    result = get_importer("cbis-ddsm")([table], str(tmp_path))
    (image,) = result.images
    assert image.path.endswith("1.000000-full-2/1-1.dcm")
    assert mask_box(image.findings[0].mask_paths, (96, 64)) == (30, 10, 40, 20)
    assert [(r.row.split(":")[1], r.code) for r in result.rejects] == [("2", "ambiguous_file")]


# ------------------------------------------------------------------------------- paths and tables
def _escape_fixture(tmp_path):
    """root/ (one good image, links/ pointing outside) and outside/canary.dcm (a valid mammogram)."""
    from hostile import plant_links

    root, outside = tmp_path / "root", tmp_path / "outside"
    write_mammogram(root / "good.dcm")
    (root / "inner").mkdir()
    os.symlink(root / "good.dcm", root / "inner" / "alias.dcm")  # a symlink that stays inside: fine
    canary = write_mammogram(outside / "canary.dcm")
    plant_links(root, outside, canary)
    return root, outside


def test_canonical_rejects_every_path_leaving_the_root_before_opening_it(tmp_path):
    from hostile import OpenRecorder, escaping_paths

    root, outside = _escape_fixture(tmp_path)
    spellings = escaping_paths("../outside/canary.dcm", str(outside / "canary.dcm"))
    rows = [[path, f"P{i}", f"S{i}", "L", "CC", "normal", "", "", "", "", ""] for i, path in enumerate(spellings.values())]
    rows += [["good.dcm", "PG", "SG", "L", "CC", "normal", "", "", "", "", ""],
             [str(root / "inner" / "alias.dcm"), "PA", "SA", "L", "CC", "normal", "", "", "", "", ""]]
    table = write_csv(tmp_path / "t.csv", CANONICAL, rows)
    with OpenRecorder() as recorder:
        result = get_importer("canonical")(table, str(root))
    result.check_accounting()
    codes = _codes(result)
    escaping = {str(i + 1): name for i, name in enumerate(spellings)}
    assert {name: codes.get(row) for row, name in escaping.items()} == {name: "outside_root" for name in spellings}
    # The good file and its inside alias are one image (the alias a duplicate); nothing outside was opened.
    assert [i.key for i in result.images] == ["good.dcm"] and codes[str(len(rows))] == "duplicate_image"
    assert recorder.under(outside) == [] and recorder.under("/etc") == []
    # Existing and missing targets are indistinguishable: the same code and the same reason.
    reasons = {r.reason for r in result.rejects if r.code == "outside_root"}
    assert reasons == {"image path resolves (symlinks included) outside the images root"}


def test_vindr_and_cbis_refuse_paths_leaving_the_root(tmp_path):
    root, outside = _escape_fixture(tmp_path)
    write_mammogram(outside / "im1.dicom")
    os.makedirs(root / "images")
    os.symlink(outside, root / "images" / "linked_study")
    vindr = write_csv(tmp_path / "finding_annotations.csv", VINDR, [
        ["..", "se", "im1", "L", "CC", 96, 64, "BI-RADS 1", "DENSITY C", "['No Finding']", "", "", "", "", "",
         "training"],                                                                   # root/../im1.dicom
        ["linked_study", "se", "im1", "L", "CC", 96, 64, "BI-RADS 1", "DENSITY C", "['No Finding']", "", "", "",
         "", "", "training"],                                                           # a symlinked study
    ])
    result = get_importer("vindr")(vindr, str(root))
    assert _codes(result) == {"1": "outside_root", "2": "outside_root"}

    image = "Mass-Training_P_00001_LEFT_CC/1.2.3/1.2.3.4/000000.dcm"
    write_mammogram(root / image)
    write_mask(outside / "mask.dcm", 96, 64, (10, 12, 20, 30))
    os.makedirs(root / "Mass-Training_P_00002_LEFT_CC")
    os.symlink(outside / "canary.dcm", root / "Mass-Training_P_00002_LEFT_CC" / "1-1.dcm")  # TCIA fallback
    row = ["P_00001", 3, "LEFT", "CC", 1, "mass", "OVAL", "SPICULATED", 5, "MALIGNANT", 4]
    cbis = write_csv(tmp_path / "mass_case_description_train_set.csv", MASS, [
        row + ["../outside/canary.dcm", "", ""],                                        # 1 image outside
        row + [image, "../outside/mask.dcm", ""],                                       # 2 mask outside
        row + [image, "", str(outside / "mask.dcm")],                                   # 3 crop/mask abs outside
        ["P_00002"] + row[1:] + ["Mass-Training_P_00002_LEFT_CC/x/y/000000.dcm", "a/1.dcm", "a/2.dcm"],  # 4
        row + ["Mass-Training_P_00001_LEFT_CC/../../outside/canary.dcm", "", ""],       # 5
    ])
    result = get_importer("cbis-ddsm")([cbis], str(root))
    result.check_accounting()
    assert {row: code for row, code in _codes(result).items() if code != "sibling_rejected"} == {
        "1": "outside_root", "2": "outside_root", "3": "outside_root", "4": "outside_root", "5": "outside_root"}


def test_a_table_without_header_or_in_utf16_is_named_not_echoed(tmp_path):
    headerless = tmp_path / "headerless.csv"
    headerless.write_text("img.dcm,MRN901234,ST77,L,CC,normal,,,,,\n")
    with pytest.raises(InputError) as err:
        get_importer("canonical")(str(headerless), str(tmp_path))
    message = str(err.value)
    assert "MRN901234" not in message and "img.dcm" not in message and "ST77" not in message
    assert "missing column(s) image_path" in message and "no header line?" in message
    text = ",".join(CANONICAL) + "\nimg.dcm,MRN901234,ST77,L,CC,normal,,,,,\n"
    for name, data, kind in [
        ("utf16le.csv", text.encode("utf-16"), "UTF-16-LE text (byte-order mark FF FE)"),
        ("utf16be.csv", b"\xfe\xff" + text.encode("utf-16-be"), "UTF-16-BE text (byte-order mark FE FF)"),
        ("nobom.csv", text.encode("utf-16-le"), "it holds NUL bytes"),
        ("book.csv", b"PK\x03\x04" + b"\0" * 40, "a ZIP archive (an .xlsx/.ods workbook?)"),
    ]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(InputError, match=re.escape(kind)):
            get_importer("canonical")(str(tmp_path / name), str(tmp_path))


def test_exact_duplicate_rows_are_merged_into_one_finding(tmp_path):
    (tmp_path / "a.dcm").write_bytes(b"x")
    row = ["a.dcm", "P1", "S1", "L", "CC", "malignant", "mass", 10, 20, 30, 40]
    table = write_csv(tmp_path / "dup.csv", CANONICAL, [row, row, row[:7] + [10, 20, 30, 41], row])
    result = get_importer("canonical")(table, str(tmp_path))
    result.check_accounting()
    (image,) = result.images
    assert image.rows == ["dup.csv:1", "dup.csv:2", "dup.csv:3", "dup.csv:4"]  # every row accounted for
    assert [f.box for f in image.findings] == [(20.0, 10.0, 40.0, 30.0), (20.0, 10.0, 41.0, 30.0)]
    assert image.duplicate_rows == 2
