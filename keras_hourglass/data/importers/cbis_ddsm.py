"""Importer for CBIS-DDSM (mass and calc case-description CSVs + ROI masks).

Pass one or more of ``mass_case_description_{train,test}_set.csv`` and
``calc_case_description_{train,test}_set.csv`` as ``--annotations``. Quirks
handled:

- the calc tables spell ``breast density`` where the mass tables spell
  ``breast_density`` (aliased; neither is needed);
- path fields are quoted and may contain embedded newlines (the csv
  module reads them as one record; all whitespace is removed from paths);
- boxes come from the ROI mask DICOMs at ingest: the bounding box of the
  nonzero mask pixels, rescaled when the mask size differs from the
  image's. Some rows swap the ROI mask and cropped-image columns, so both
  are candidates and the first that is a binary mask is used.

File layout: the CSV paths are tried first (relative to --images-root).
TCIA's NBIA download uses other folder names below the first component
(``Mass-Training_P_00001_LEFT_CC/07-20-2016-DDSM-74994/1.000000-full
mammogram images-24515/1-1.dcm``), so when a CSV path is missing the
importer falls back to the DICOM files under ``<images-root>/<first path
component>/``: exactly one for the full mammogram (else the row is
rejected as ambiguous), and every file of the ROI folder as a mask
candidate (``1-1.dcm``/``1-2.dcm`` hold the mask and the crop in either
order; the binary one is the mask).

Labels: MALIGNANT -> malignant; BENIGN and BENIGN_WITHOUT_CALLBACK ->
benign. Split: "Training"/"Test" in the image path (Mass-Training_...,
Calc-Test_...) -> train/test; prepare carves val out of train by salted
patient hash. Study key: the StudyInstanceUID directory of the path
(second component) when present, else the patient id. Mass and calc
tables list the same mammogram under different folders; those are
separate image records (same patient, so always in the same split).
"""

from __future__ import annotations

import os
import re

from keras_hourglass.data.importers import (Finding, ImportResult, ParsedRow, Reject, group_rows, is_inside,
                                            read_csv_rows, real_root, resolve)

REQUIRED = ("patient_id", "left or right breast", "image view", "abnormality type", "pathology",
            "image file path", "cropped image file path", "ROI mask file path")
ALIASES = {"breast density": "breast_density"}
PATHOLOGY = {"MALIGNANT": "malignant", "BENIGN": "benign", "BENIGN_WITHOUT_CALLBACK": "benign"}
TYPES = {"mass": "mass", "calcification": "calcification"}


def clean_path(value: str) -> str:
    """Returns: a path field with every whitespace character (embedded newlines too) removed."""
    return re.sub(r"\s+", "", value or "")


class _Locator:
    """Finds CBIS-DDSM files by their CSV path or, failing that, by their top folder (TCIA layout).

    Every path, the fallback folders and every file found in them included, must resolve (symlinks
    included) inside the real images root (`resolve`); one that leaves it rejects the row
    (``outside_root``) before any file is opened.
    """

    def __init__(self, images_root: str):
        self.root = real_root(images_root)
        self._listing: dict[str, list[str]] = {}

    def files_under(self, top: str) -> list[str]:
        if top not in self._listing:
            base = resolve(self.root, top)
            found = []
            for directory, _dirs, names in os.walk(base):  # followlinks=False: linked folders are not walked
                found += [os.path.join(directory, n) for n in names if n.lower().endswith(".dcm")]
            real = [os.path.realpath(f) for f in sorted(found)]
            self._listing[top] = real
        listing = self._listing[top]
        if any(not is_inside(f, self.root) for f in listing):
            raise ValueError("outside_root", "a DICOM file under the image's top folder is a symlink leaving "
                                             "the images root")
        return listing

    def image(self, key: str) -> str | None:
        full = resolve(self.root, key)
        if os.path.isfile(full):
            return full
        candidates = self.files_under(key.split("/", 1)[0])
        if len(candidates) > 1:
            raise ValueError("ambiguous_file", f"image file missing and {len(candidates)} DICOM files under its "
                                               "top folder")
        return candidates[0] if candidates else None

    def masks(self, paths: list[str]) -> list[str]:
        resolved = [resolve(self.root, p) for p in paths if p]
        exact = [full for full in resolved if os.path.isfile(full)]
        if exact:
            return exact
        tops = []
        for path in paths:
            top = path.split("/", 1)[0] if path else ""
            if top and top not in tops:
                tops.append(top)
        return [f for top in tops for f in self.files_under(top)]


def _split(path: str) -> str | None:
    head = path.split("/", 1)[0].lower()
    if "training" in head:
        return "train"
    if "test" in head:
        return "test"
    return None


def parse_row(row_id: str, row: dict[str, str], locator: _Locator) -> ParsedRow:
    """Validates one CBIS-DDSM row. Raises ValueError(code, message)."""
    patient_id = row["patient_id"]
    if not patient_id:
        raise ValueError("missing_field", "empty patient_id")
    key = clean_path(row["image file path"])
    if not key:
        raise ValueError("missing_field", "empty image file path")
    resolve(locator.root, key)  # a path leaving --images-root is refused first, whatever else is wrong
    label = PATHOLOGY.get(row["pathology"].strip().upper())
    if label is None:
        raise ValueError("bad_label", f"pathology is not MALIGNANT, BENIGN or "
                                      "BENIGN_WITHOUT_CALLBACK")
    finding_type = TYPES.get(row["abnormality type"].strip().lower())
    if finding_type is None:
        raise ValueError("bad_finding_type", f"abnormality type is not mass or "
                                             "calcification")
    laterality = {"LEFT": "L", "RIGHT": "R"}.get(row["left or right breast"].strip().upper())
    if laterality is None:
        raise ValueError("bad_value", "left or right breast is not LEFT or RIGHT")
    split = _split(key)
    if split is None:
        raise ValueError("bad_split", "image file path names neither Training nor Test")
    full = locator.image(key)
    if full is None:
        raise ValueError("missing_file", "image file not found under the images root")
    masks = locator.masks([clean_path(row["ROI mask file path"]), clean_path(row["cropped image file path"])])
    if not masks:
        raise ValueError("missing_file", "ROI mask file not found under the images root")
    parts = key.split("/")
    study_id = parts[1] if len(parts) > 2 else patient_id
    finding = Finding(label=label, finding_type=finding_type, box=None, row=row_id, mask_paths=tuple(masks))
    return ParsedRow(row=row_id, key=key, path=full, patient_id=patient_id, study_id=study_id,
                     laterality=laterality, view=row["image view"].strip().upper(), finding=finding, split=split)


def load(annotations: str | list[str], images_root: str, **_options) -> ImportResult:
    """Reads CBIS-DDSM case-description CSVs.

    Args:
        annotations: one or more case-description CSV paths.
        images_root: directory the CSV paths are relative to.

    Returns:
        The `ImportResult`.
    """
    tables = [annotations] if isinstance(annotations, (str, os.PathLike)) else list(annotations)
    names = [os.path.basename(os.fspath(t)) for t in tables]
    if len(set(names)) != len(names):
        from keras_hourglass.errors import ArgumentError
        raise ArgumentError("annotations", "two tables have the same file name; row ids would collide")
    parsed, rejects, total = [], [], 0
    locator = _Locator(os.fspath(images_root))
    for table in tables:
        for row_id, row in read_csv_rows(table, REQUIRED, ALIASES):
            total += 1
            try:
                parsed.append(parse_row(row_id, row, locator))
            except ValueError as err:
                code, message = err.args if len(err.args) == 2 else ("bad_value", str(err))
                rejects.append(Reject(row_id, clean_path(row.get("image file path", "")), code, message,
                                      (row.get("patient_id", ""),)))
    images = group_rows(parsed, rejects)
    return ImportResult(images=images, rejects=rejects, total_rows=total, sources=names)
