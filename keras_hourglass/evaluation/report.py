"""Text and CSV reports of an evaluation (no TensorFlow).

- `format_table(result)`: the sensitivity table printed by `hourglass evaluate`.
- `format_markdown_table({name: result}, fpi_points=(1, 2, 4.8))`: one row per
  model (e.g. the loss ablation), sensitivity [95% CI] at the chosen FPI
  points and the maximum sensitivity.
- `write_marks_csv(path, records, ...)`: one row per mark, in image and in
  original DICOM coordinates, with its match and whether it is kept at the
  default operating point.
- `write_findings_csv(path, records, ...)`: one row per finding (box), with
  the best score of the marks inside it and whether it is detected at the
  operating point: the list of missed cancers to review.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from keras_hourglass import storage
from keras_hourglass.contract import EVALUATION_POSITIVE_LABELS
from keras_hourglass.evaluation.froc import FrocResult, ImageRecord, match_image

MARKS_CSV_COLUMNS = (
    "image_hash",
    "patient_hash",
    "rank",
    "score",
    "y",
    "x",
    "y_original",
    "x_original",
    "status",
    "finding_index",
    "finding_label",
    "false_positive",
    "at_operating_point",
)
"""Columns of marks.csv.

`y, x`: image frame (what the model saw); `y_original, x_original`: the
DICOM pixel frame (continuous coordinates, via the stored PixelTransform;
empty when the record has none). `status`: hit (best mark of a malignant
finding), extra_hit (another mark on an already hit malignant finding),
non_positive (on a benign/high-risk finding only), background.
`finding_index`: index of the matched box in the image's findings (-1 for
none). `false_positive`: 1 when the mark counts as a false mark under the
FROC policy. `at_operating_point`: 1 when `score >= ` the threshold of the
default operating point (e.g. 4.8 FPI).
"""


FINDINGS_CSV_COLUMNS = (
    "image_hash",
    "patient_hash",
    "finding_index",
    "label",
    "finding_type",
    "y0",
    "x0",
    "y1",
    "x1",
    "y0_original",
    "x0_original",
    "y1_original",
    "x1_original",
    "best_score",
    "detected_at_operating_point",
)
"""Columns of findings.csv. Boxes in the image frame and the original DICOM
frame; `best_score`: the highest score of the marks inside the box (empty if
none); `detected_at_operating_point`: 1 when `best_score >= ` the operating
threshold (for non-positive findings: a mark sits on it, i.e. a false mark)."""


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_table(result: FrocResult | Mapping[str, Any]) -> str:
    """The sensitivity table: FPI -> sensitivity [95% CI], and the summary.

    Args:
        result: a `FrocResult` or a froc.json dict.

    Returns:
        A multi-line string.
    """
    data = result.to_json(max_curve_points=0) if isinstance(result, FrocResult) else result
    lines = [
        f"images {data['num_images']}  patients {data['num_patients']}  "
        f"malignant findings {data['num_malignant_findings']}",
        f"{'FPI':>6}  {'sensitivity':>11}  95% CI",
    ]
    for key, value in data["sensitivity_at_fpi"].items():
        ci = (data.get("ci95") or {}).get(key)
        ci_text = f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "-"
        lines.append(f"{key:>6}  {_fmt(value):>11}  {ci_text}")
    mean_ci = data.get("ci95_mean_sensitivity")
    max_ci = data.get("ci95_max_sensitivity")
    lines.append(
        f"{'mean':>6}  {_fmt(data.get('mean_sensitivity')):>11}  "
        + (f"[{mean_ci[0]:.3f}, {mean_ci[1]:.3f}]" if mean_ci else "-")
    )
    lines.append(
        f"{'max':>6}  {_fmt(data.get('max_sensitivity')):>11}  "
        + (f"[{max_ci[0]:.3f}, {max_ci[1]:.3f}]" if max_ci else "-")
        + (
            f"  at {data['fpi_at_max_sensitivity']:.3g} FPI"
            if data.get("fpi_at_max_sensitivity") is not None
            else ""
        )
    )
    if data.get("warning"):
        lines.append(f"warning: {data['warning']}")
    return "\n".join(lines)


def _with_ci(value: float | None, ci: Sequence[float] | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{value:.3f}"


def format_markdown_table(
    results: Mapping[str, FrocResult | Mapping[str, Any]],
    fpi_points: Sequence[float] = (1.0, 2.0, 4.8),
) -> str:
    """A markdown table comparing several FROC results.

    Args:
        results: row name -> `FrocResult` or froc.json dict.
        fpi_points: FPI points shown (they must be among the results' points).

    Returns:
        The table (header, separator, one row per result), no trailing newline.
    """
    from keras_hourglass.evaluation.froc import fpi_key

    keys = [fpi_key(f) for f in fpi_points]
    header = ["model", *(f"sens@{k} FPI [95% CI]" for k in keys), "max sens [95% CI]", "FPI at max"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, result in results.items():
        data = result.to_json(max_curve_points=0) if isinstance(result, FrocResult) else result
        ci = data.get("ci95") or {}
        cells = [name]
        cells += [_with_ci(data["sensitivity_at_fpi"].get(k), ci.get(k)) for k in keys]
        cells.append(_with_ci(data.get("max_sensitivity"), data.get("ci95_max_sensitivity")))
        fpi_max = data.get("fpi_at_max_sensitivity")
        cells.append("n/a" if fpi_max is None else f"{fpi_max:.3g}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@contextlib.contextmanager
def _publishing(path: str | os.PathLike, buffer: io.StringIO) -> Iterator[None]:
    """Writes `buffer`'s text to `path` atomically (`storage.write_text`) when the block succeeds."""
    yield
    storage.write_text(path, buffer.getvalue())


def _inverse_points(transform: Sequence[float] | None, points: np.ndarray) -> np.ndarray | None:
    if transform is None or len(transform) == 0:
        return None
    from keras_hourglass.data.dicom import PixelTransform

    return PixelTransform.from_list(transform).inverse_points(points)


def write_marks_csv(
    path: str | os.PathLike,
    records: Iterable[ImageRecord],
    *,
    operating_threshold: float | None = None,
    positive_labels: Sequence[str] = EVALUATION_POSITIVE_LABELS,
    extra_hits: str = "ignore",
) -> int:
    """Writes marks.csv (columns `MARKS_CSV_COLUMNS`).

    Args:
        path: output CSV.
        records: `ImageRecord`s (a `PredictedImage` adds its `transform`).
        operating_threshold: threshold of the default operating point; None
            marks no row as kept.
        positive_labels: evaluation positives.
        extra_hits: FROC policy for several marks on one finding.

    Returns:
        The number of mark rows written.
    """
    rows = 0
    fh = io.StringIO(newline="")
    with _publishing(path, fh):
        writer = csv.writer(fh)
        writer.writerow(MARKS_CSV_COLUMNS)
        for record in records:
            match = match_image(record, positive_labels=positive_labels, extra_hits=extra_hits)
            original = _inverse_points(getattr(record, "transform", None), record.marks[:, :2])
            ranks = np.empty(record.marks.shape[0], dtype=np.int64)
            ranks[np.argsort(-record.marks[:, 2], kind="stable")] = np.arange(record.marks.shape[0])
            for m, (y, x, score) in enumerate(record.marks):
                finding = int(match.finding[m])
                writer.writerow([
                    record.image_id,
                    record.patient_id,
                    int(ranks[m]),
                    f"{score:.6g}",
                    f"{y:.2f}",
                    f"{x:.2f}",
                    "" if original is None else f"{original[m, 0]:.2f}",
                    "" if original is None else f"{original[m, 1]:.2f}",
                    match.status[m],
                    finding,
                    record.labels[finding] if finding >= 0 else "",
                    int(match.false_positive[m]),
                    int(operating_threshold is not None and score >= operating_threshold),
                ])
                rows += 1
    return rows


def write_findings_csv(
    path: str | os.PathLike,
    records: Iterable[ImageRecord],
    *,
    operating_threshold: float | None = None,
) -> int:
    """Writes findings.csv (columns `FINDINGS_CSV_COLUMNS`), one row per box.

    Args:
        path: output CSV.
        records: `ImageRecord`s (a `PredictedImage` adds `transform` and
            `finding_types`).
        operating_threshold: threshold of the default operating point.

    Returns:
        The number of finding rows written.
    """
    rows = 0
    fh = io.StringIO(newline="")
    with _publishing(path, fh):
        writer = csv.writer(fh)
        writer.writerow(FINDINGS_CSV_COLUMNS)
        for record in records:
            transform = getattr(record, "transform", None)
            original = None
            if transform is not None and len(transform) and record.boxes.shape[0]:
                from keras_hourglass.data.dicom import PixelTransform

                original = PixelTransform.from_list(transform).inverse_boxes(record.boxes)
            types = tuple(getattr(record, "finding_types", ()) or ())
            marks = record.marks
            for n, (box, label) in enumerate(zip(record.boxes, record.labels)):
                y0, x0, y1, x1 = box
                inside = (marks[:, 0] >= y0) & (marks[:, 0] <= y1) & (marks[:, 1] >= x0) & (marks[:, 1] <= x1)
                best = float(marks[inside, 2].max()) if inside.any() else None
                writer.writerow([
                    record.image_id,
                    record.patient_id,
                    n,
                    label,
                    types[n] if n < len(types) else "",
                    *(f"{v:.2f}" for v in box),
                    *((f"{v:.2f}" for v in original[n]) if original is not None else ("",) * 4),
                    "" if best is None else f"{best:.6g}",
                    int(best is not None and operating_threshold is not None and best >= operating_threshold),
                ])
                rows += 1
    return rows
