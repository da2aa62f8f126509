"""Ingest of one image (runs in worker processes; imports no TensorFlow).

`process_image` reads the DICOM with the ONE preprocessing function
(`keras_hourglass.data.dicom.read_mammogram`), derives CBIS-DDSM boxes from
ROI masks, maps boxes from the ORIGINAL to the IMAGE frame
(`PixelTransform.forward_boxes`), clips boxes reaching outside the image
(counted) and rejects findings with nothing left (zero area), then encodes
the image as a 16-bit PNG. The result never contains raw identifiers:
reasons are scrubbed of the record's and the header's ids.

A table laterality that contradicts the DICOM's (ImageLaterality /
Laterality) rejects the image (``laterality_mismatch``): the annotation
may belong to another image, and a mislocated box is worse than none.

An image is all-or-nothing: if one of its findings is unusable, every row
of the image is rejected (see `keras_hourglass.data.importers`).
"""

from __future__ import annotations

import dataclasses
import os
import warnings

import numpy as np

from keras_hourglass.data import phi
from keras_hourglass.data.importers import ImageRecord
from keras_hourglass.data.png16 import encode_png16
from keras_hourglass.errors import InputError, escape_controls


@dataclasses.dataclass(frozen=True)
class IngestSettings:
    """Preprocessing settings shared by every image of a run (recorded in the manifest).

    Attributes:
        long_side: training-scale long side in pixels (`--size`).
        voi: VOI rule of `read_mammogram` ("auto", "window", "none" or an index).
        orient: orientation rule ("left": chest wall on the left).
        max_pixels: reject images above this many pixels before decoding.
        decoder: "pydicom" or "tfio" (tensorflow-io's DCMTK decode + the same post-processing;
            needs the TF 2.17.1 environment, see `keras_hourglass.data.tfio_decoder`).
    """

    long_side: int = 1536
    voi: str = "auto"
    orient: str = "left"
    max_pixels: int = 40_000_000
    decoder: str = "pydicom"


def mask_box(paths: tuple[str, ...], original_shape: tuple[int, int]) -> tuple[float, float, float, float]:
    """Bounding box of the nonzero pixels of the first candidate that is a binary mask.

    Args:
        paths: ROI mask DICOM candidates.
        original_shape: (rows, columns) of the mammogram; a mask of another size is rescaled.

    Returns:
        (y0, x0, y1, x1) in the mammogram's original continuous pixel frame.

    Raises:
        ValueError: (code, message) when no candidate is usable.
    """
    import pydicom

    problems = []
    for path in paths:
        try:
            mask = np.asarray(pydicom.dcmread(path).pixel_array)
        except Exception as err:  # pydicom raises many types on bad files
            problems.append(f"unreadable ({type(err).__name__})")
            continue
        if mask.ndim != 2:
            problems.append(f"not a 2-D mask (shape {mask.shape})")
            continue
        nonzero = mask != 0
        if not nonzero.any():
            problems.append("empty mask")
            continue
        if mask[nonzero].min() != mask[nonzero].max():
            problems.append("not binary (a cropped image?)")
            continue
        rows = np.flatnonzero(nonzero.any(axis=1))
        cols = np.flatnonzero(nonzero.any(axis=0))
        sy = original_shape[0] / mask.shape[0]
        sx = original_shape[1] / mask.shape[1]
        return (rows[0] * sy, cols[0] * sx, (rows[-1] + 1) * sy, (cols[-1] + 1) * sx)
    raise ValueError("bad_mask", "no usable ROI mask: " + "; ".join(problems or ["no candidate"]))


def clip_boxes(boxes: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clips image-frame boxes to the image.

    Args:
        boxes: `[N, 4]` (y0, x0, y1, x1).
        height, width: image size.

    Returns:
        (clipped boxes, bool `[N]` changed by clipping, bool `[N]` degenerate: zero area after clipping).
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    limits = np.array([height, width, height, width], np.float64)
    clipped = np.clip(boxes, 0.0, limits)
    changed = np.any(np.abs(clipped - boxes) > 1e-6, axis=1)
    degenerate = (clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1])
    return clipped, changed, degenerate


def rejected_result(record: ImageRecord, code: str, reason: str, salt: str, secrets=(),
                    bad_row: str | None = None) -> dict:
    """Builds the result of a rejected image: `bad_row` (or every row) gets the reason, the others
    ``sibling_rejected``; identifiers in `secrets`, the record's own ids and its path (as the table
    spells it, as resolved, and its file name: folders may be named after the patient) are scrubbed
    from the reason, and control characters escaped."""
    secrets = [*secrets, record.patient_id, record.study_id, *path_spellings(record)]
    reason = escape_controls(phi.redact(reason, secrets, salt))
    rows = []
    for row in record.rows:
        if bad_row is None or row == bad_row:
            rows.append((row, code, reason))
        else:
            rows.append((row, "sibling_rejected", f"another row of this image was rejected ({bad_row}: {code})"))
    return {"status": "rejected", "key": record.key, "rejects": rows}


def path_spellings(record: ImageRecord) -> list[str]:
    """Returns: the forms under which the record's path may appear in a message (longest first)."""
    spellings = {record.key, record.path, os.path.basename(record.path), os.path.basename(record.key)}
    for finding in record.findings:
        for mask in finding.mask_paths:
            spellings |= {mask, os.path.basename(mask)}
    return sorted((s for s in spellings if s), key=len, reverse=True)


def process_image(record: ImageRecord, settings: IngestSettings, salt: str) -> dict:
    """Reads, preprocesses and encodes one image with its findings (see `_process_image`).

    pydicom's warnings on a corrupt file quote its path (folders may be named after the patient) and
    header values, and would reach stderr raw: they are silenced here; the reject reason says what is
    wrong with the file.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _process_image(record, settings, salt)


def _process_image(record: ImageRecord, settings: IngestSettings, salt: str) -> dict:
    """Reads, preprocesses and encodes one image with its findings.

    Args:
        record: the image and its findings (original frame).
        settings: preprocessing settings.
        salt: dataset salt (only to scrub identifiers from reject reasons).

    Returns:
        ``{"status": "ok", key, png, height, width, boxes [N,4] image frame, box_labels,
        finding_types, laterality, view, transform, clipped, voi_rule, orientation_rule}``
        or ``{"status": "rejected", key, rejects: [(row, code, reason), ...]}`` covering every row.
    """
    if settings.decoder == "tfio":
        from keras_hourglass.data.tfio_decoder import read_mammogram_tfio as read
    else:
        from keras_hourglass.data.dicom import read_mammogram as read

    secrets = [record.patient_id, record.study_id]
    try:
        mammogram = read(record.path, long_side=settings.long_side, voi=settings.voi,
                         max_pixels=settings.max_pixels, orient=settings.orient)
    except InputError as err:
        if type(err).__name__ == "TfioUnavailableError":
            raise  # an environment problem, not a bad file
        return rejected_result(record, getattr(err, "code", "dicom_error"), err.reason, salt, secrets)
    except MemoryError:
        return rejected_result(record, "too_large", "out of memory while decoding", salt, secrets)
    except Exception as err:  # noqa: BLE001 - a corrupt file must not stop a 100k-image ingest
        message = " ".join(str(err).split())[:200]
        return rejected_result(record, "unexpected_error", f"{type(err).__name__}: {message}", salt, secrets)
    header = mammogram.header
    secrets += [header.patient_id, header.study_instance_uid, header.sop_instance_uid]
    if record.laterality and header.laterality and record.laterality != header.laterality:
        # The table and the file disagree on the breast: the annotation may belong to another image.
        return rejected_result(record, "laterality_mismatch", "the table's laterality differs from the "
                               "DICOM's ImageLaterality/Laterality", salt, secrets)
    if record.expected_shape and tuple(record.expected_shape) != tuple(mammogram.transform.original_shape):
        return rejected_result(record, "size_mismatch", "the table's image size differs from the DICOM's "
                               "Rows/Columns (the boxes would not fit this file)", salt, secrets)
    height, width = mammogram.image.shape
    boxes, labels, types = [], [], []
    for finding in record.findings:
        box = finding.box
        if box is None:
            try:
                box = mask_box(finding.mask_paths, mammogram.transform.original_shape)
            except ValueError as err:
                return rejected_result(record, err.args[0], err.args[1], salt, secrets, finding.row)
        boxes.append(box)
        labels.append(finding.label)
        types.append(finding.finding_type)
    clipped_count = 0
    if boxes:
        image_boxes = mammogram.transform.forward_boxes(np.asarray(boxes, np.float64))
        image_boxes, changed, degenerate = clip_boxes(image_boxes, height, width)
        for finding, bad in zip(record.findings, degenerate):
            if bad:
                return rejected_result(record, "degenerate_box", "box has zero area inside the image after "
                                       "clipping", salt, secrets, finding.row)
        clipped_count = int(changed.sum())
    else:
        image_boxes = np.zeros((0, 4))
    return {
        "status": "ok",
        "key": record.key,
        "png": encode_png16(mammogram.image),
        "height": int(height),
        "width": int(width),
        "boxes": image_boxes.astype(np.float32),
        "box_labels": labels,
        "finding_types": types,
        "laterality": record.laterality or (header.laterality or ""),
        "view": record.view or (header.view or ""),
        "transform": mammogram.transform.to_list(),
        "clipped": clipped_count,
        "voi_rule": mammogram.voi_rule,
        "orientation_rule": mammogram.orientation_rule,
    }


def process_many(batch: list[tuple[ImageRecord, IngestSettings, str]]) -> list[dict]:
    """Runs `process_image` over a batch (one inter-process round trip per batch)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    return [process_image(*item) for item in batch]
