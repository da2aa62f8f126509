"""Importer for the canonical annotation CSV (DESIGN.md).

Columns: ``image_path,patient_id,study_id,laterality,view,label,
finding_type,xmin,ymin,xmax,ymax[,split]``, one row per finding; a normal
image is one row with label ``normal`` and empty box columns. Boxes are in
original DICOM pixel coordinates (x = column), read as continuous
coordinates: the box covers [xmin, xmax) x [ymin, ymax). ``image_path`` is
relative to ``--images-root``. An empty ``split`` (or no column) lets
prepare assign the split by salted patient hash.
"""

from __future__ import annotations

import os
import re

from keras_hourglass.contract import FINDING_TYPES, LABELS, SPLITS
from keras_hourglass.data.importers import (DegenerateBoxError, Finding, ImportResult, ParsedRow,
                                            Reject, box_from_xyxy, group_rows, read_csv_rows, resolve)

REQUIRED = ("image_path", "patient_id", "study_id", "laterality", "view", "label", "finding_type",
            "xmin", "ymin", "xmax", "ymax")


def image_key(path: str) -> str:
    """Returns: the normalised image path ("./a//b.dcm" -> "a/b.dcm"), the identity of an image."""
    return os.path.normpath(path).replace(os.sep, "/") if path else ""


def _laterality(value: str) -> str:
    value = value.strip().upper()
    mapped = {"L": "L", "LEFT": "L", "R": "R", "RIGHT": "R", "": ""}.get(value)
    if mapped is None:
        raise ValueError("laterality is not L, R or empty")
    return mapped


def parse_row(row_id: str, row: dict[str, str], images_root: str) -> ParsedRow:
    """Validates one canonical row.

    Args:
        row_id: "file:number".
        row: the row's values by column.
        images_root: directory the image paths are relative to.

    Returns:
        The parsed row.

    Raises:
        ValueError: with (code, message) args for the reject.
    """
    if row.get("__extra__"):
        raise ValueError("bad_row", "more values than columns")
    path = row["image_path"]
    if not path:
        raise ValueError("missing_field", "empty image_path")
    full = resolve(images_root, path)  # refuses paths leaving --images-root before any file is touched
    if not row["patient_id"]:
        raise ValueError("missing_field", "empty patient_id")
    label = row["label"].strip().lower()
    if label not in LABELS:
        raise ValueError("bad_label", f"label is not one of {', '.join(LABELS)}")
    try:
        box = box_from_xyxy(row)
        laterality = _laterality(row["laterality"])
    except ValueError as err:
        code = "degenerate_box" if isinstance(err, DegenerateBoxError) else "bad_value"
        raise ValueError(code, str(err)) from None
    view = row["view"].strip().upper()
    if not re.fullmatch(r"[A-Z0-9_]{0,8}", view):
        raise ValueError("bad_value", "view is not a short code such as CC or MLO")
    split = row.get("split", "").strip().lower() or None
    if split is not None and split not in SPLITS:
        raise ValueError("bad_split", f"split is not one of {', '.join(SPLITS)} or empty")
    finding = None
    if label == "normal":
        if box is not None:
            raise ValueError("bad_value", "a normal row must have empty box columns")
    else:
        finding_type = row["finding_type"].strip().lower()
        if finding_type not in FINDING_TYPES:
            raise ValueError("bad_finding_type",
                             f"finding_type is not one of {', '.join(FINDING_TYPES)}")
        if box is None:
            raise ValueError("missing_box", f"a {label} finding needs xmin, ymin, xmax, ymax")
        finding = Finding(label=label, finding_type=finding_type, box=box, row=row_id)
    if not os.path.isfile(full):
        raise ValueError("missing_file", "image file not found under the images root")
    return ParsedRow(row=row_id, key=image_key(path), path=full, patient_id=row["patient_id"],
                     study_id=row["study_id"] or row["patient_id"], laterality=laterality,
                     view=view, finding=finding, split=split)


def load(annotations: str | list[str], images_root: str, **_options) -> ImportResult:
    """Reads a canonical annotation CSV.

    Args:
        annotations: the CSV path (or a one-element list).
        images_root: directory the image paths are relative to.

    Returns:
        The `ImportResult`.
    """
    if isinstance(annotations, (list, tuple)):
        if len(annotations) != 1:
            from keras_hourglass.errors import ArgumentError
            raise ArgumentError("annotations", "the canonical format takes exactly one CSV")
        annotations = annotations[0]
    parsed, rejects, total = [], [], 0
    for row_id, row in read_csv_rows(annotations, REQUIRED):
        total += 1
        try:
            parsed.append(parse_row(row_id, row, images_root))
        except ValueError as err:
            code, message = err.args if len(err.args) == 2 else ("bad_value", str(err))
            rejects.append(Reject(row_id, image_key(row.get("image_path", "")), code, message,
                                  (row.get("patient_id", ""), row.get("study_id", ""))))
    images = group_rows(parsed, rejects)
    return ImportResult(images=images, rejects=rejects, total_rows=total,
                        sources=[os.path.basename(os.fspath(annotations))])
