"""Importer for VinDr-Mammo (``finding_annotations.csv``).

Columns used: study_id, image_id, laterality (L/R), view_position,
finding_categories (a stringified Python list, parsed with
``ast.literal_eval``), finding_birads ("BI-RADS 4"), xmin, ymin, xmax,
ymax, split (training/test -> train/test; prepare carves ``val`` out of
train by salted patient hash). Images are read from
``<images-root>/images/<study_id>/<image_id>.dicom`` (or
``<images-root>/<study_id>/<image_id>.dicom``).

The height/width columns give the DICOM size the boxes refer to; an
image whose file has another size is rejected at ingest
(``size_mismatch``: the row may describe another file).

Labels: ``['No Finding']`` -> normal; otherwise by finding_birads with
`DEFAULT_BIRADS_MAP` (2-3 benign, 4 high_risk, 5 malignant; override with
``birads_map``). VinDr-Mammo has no patient identifier: the study_id is the
patient key (one study per patient in the public release), so the
patient-level split is a study-level split.
"""

from __future__ import annotations

import ast
import os
import re

from keras_hourglass.contract import FINDING_LABELS
from keras_hourglass.data.importers import (DegenerateBoxError, Finding, ImportResult, ParsedRow, Reject,
                                            box_from_xyxy, group_rows, parse_float, read_csv_rows, resolve)

REQUIRED = ("study_id", "image_id", "laterality", "view_position", "finding_categories", "finding_birads",
            "xmin", "ymin", "xmax", "ymax", "split")
DEFAULT_BIRADS_MAP = {2: "benign", 3: "benign", 4: "high_risk", 5: "malignant"}
CATEGORY_TYPES = (
    ("mass", "mass"),
    ("calcification", "calcification"),
    ("architectural distortion", "distortion"),
    ("asymmetry", "asymmetry"),
)
"""Finding category (lower-case substring) -> finding_type, by priority; anything else is "other"."""
SPLIT_MAP = {"training": "train", "train": "train", "test": "test", "val": "val", "validation": "val"}


def parse_birads_map(text: str) -> dict[int, str]:
    """Parses "2=benign,3=benign,4=high_risk,5=malignant" into a map.

    Raises:
        ValueError: malformed text or an unknown label.
    """
    result = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = part.partition("=")
        if value.strip() not in FINDING_LABELS:
            raise ValueError(f"BI-RADS map entry {part!r}: label must be benign, high_risk or malignant")
        result[int(key)] = value.strip()
    if not result:
        raise ValueError("empty BI-RADS map")
    return result


def _categories(text: str) -> list[str]:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ValueError("bad_value", "finding_categories is not a Python list literal") from None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value) or not value:
        raise ValueError("bad_value", "finding_categories is not a non-empty list of names")
    return [v.strip() for v in value]


def _finding_type(categories: list[str]) -> str:
    lowered = [c.lower() for c in categories]
    for needle, finding_type in CATEGORY_TYPES:
        if any(needle in c for c in lowered):
            return finding_type
    return "other"


def _image_path(images_root: str, study_id: str, image_id: str) -> tuple[str, str]:
    """Returns (key, real path or ""); raises ValueError("outside_root", ...) when a candidate leaves the root."""
    if {study_id, image_id} & {".", ".."}:
        raise ValueError("outside_root", "study_id/image_id name a parent or current directory")
    key = f"images/{study_id}/{image_id}.dicom"
    candidates = [resolve(images_root, relative) for relative in (key, f"{study_id}/{image_id}.dicom")]
    for full in candidates:
        if os.path.isfile(full):
            return key, full
    return key, ""


def parse_row(row_id: str, row: dict[str, str], images_root: str, birads_map: dict[int, str]) -> ParsedRow:
    """Validates one VinDr row. Raises ValueError(code, message)."""
    study_id, image_id = row["study_id"], row["image_id"]
    if not study_id or not image_id:
        raise ValueError("missing_field", "empty study_id or image_id")
    if not re.fullmatch(r"[\w.\-]+", study_id) or not re.fullmatch(r"[\w.\-]+", image_id):
        raise ValueError("bad_value", "study_id/image_id contain characters not allowed in a file name")
    key, full = _image_path(images_root, study_id, image_id)
    categories = _categories(row["finding_categories"])
    split = SPLIT_MAP.get(row["split"].strip().lower())
    if split is None:
        raise ValueError("bad_split", "split is not training or test")
    laterality = {"L": "L", "R": "R"}.get(row["laterality"].strip().upper())
    if laterality is None:
        raise ValueError("bad_value", "laterality is not L or R")
    try:
        box = box_from_xyxy(row)
    except DegenerateBoxError as err:
        raise ValueError("degenerate_box", str(err)) from None
    except ValueError as err:
        raise ValueError("bad_value", str(err)) from None
    finding = None
    if [c.lower() for c in categories] == ["no finding"]:
        if box is not None:
            raise ValueError("bad_value", "a 'No Finding' row has a box")
    else:
        match = re.fullmatch(r"(?:bi-?rads\s*)?(\d)\w?", row["finding_birads"].strip(), flags=re.IGNORECASE)
        if not match:
            raise ValueError("bad_label", "finding_birads is not 'BI-RADS n'")
        label = birads_map.get(int(match.group(1)))
        if label is None:
            raise ValueError("bad_label", f"finding BI-RADS {match.group(1)} has no label in the "
                                          f"BI-RADS map {birads_map}")
        if box is None:
            raise ValueError("missing_box", f"a {label} finding needs xmin, ymin, xmax, ymax")
        finding = Finding(label=label, finding_type=_finding_type(categories), box=box, row=row_id)
    if not full:
        raise ValueError("missing_file", "image file not found under the images root")
    try:
        height, width = parse_float(row.get("height", "")), parse_float(row.get("width", ""))
    except ValueError:
        raise ValueError("bad_value", "height/width are not numbers") from None
    shape = (int(height), int(width)) if height and width else None
    return ParsedRow(row=row_id, key=key, path=full, patient_id=study_id, study_id=study_id,
                     laterality=laterality, view=row["view_position"].strip().upper(), finding=finding,
                     split=split, expected_shape=shape)


def load(annotations: str | list[str], images_root: str, *, birads_map: dict[int, str] | None = None,
         **_options) -> ImportResult:
    """Reads VinDr-Mammo's finding_annotations.csv.

    Args:
        annotations: path of finding_annotations.csv (or a one-element list).
        images_root: the dataset root (holding images/).
        birads_map: finding BI-RADS -> label (default `DEFAULT_BIRADS_MAP`).

    Returns:
        The `ImportResult`.
    """
    if isinstance(annotations, (list, tuple)):
        if len(annotations) != 1:
            from keras_hourglass.errors import ArgumentError
            raise ArgumentError("annotations", "the vindr format takes exactly one CSV (finding_annotations.csv)")
        annotations = annotations[0]
    birads_map = dict(birads_map or DEFAULT_BIRADS_MAP)
    parsed, rejects, total = [], [], 0
    for row_id, row in read_csv_rows(annotations, REQUIRED):
        total += 1
        try:
            parsed.append(parse_row(row_id, row, os.fspath(images_root), birads_map))
        except ValueError as err:
            code, message = err.args if len(err.args) == 2 else ("bad_value", str(err))
            key = f"images/{row.get('study_id', '')}/{row.get('image_id', '')}.dicom"
            rejects.append(Reject(row_id, key, code, message, (row.get("study_id", ""),)))
    images = group_rows(parsed, rejects)
    return ImportResult(images=images, rejects=rejects, total_rows=total,
                        sources=[os.path.basename(os.fspath(annotations))])
