"""Annotation importers: one module per source format, one common output.

Every importer turns an annotation table into `ImportResult`: image
records (`ImageRecord`, each with its findings in the ORIGINAL DICOM pixel
frame and the source rows it came from) and rejects (`Reject`: source
file, row number, image path, reason code and message). Row numbers are
1-based data-record numbers of the source CSV (the header is not counted;
a quoted field with embedded newlines is still one record).

Reject reasons name the column and the rule but never echo a cell's
value: in a table whose columns are shifted, any cell may hold an
identifier, and rejects.csv must stay free of them.

Accounting invariant: every data row of every input table ends up in
exactly one image record's `rows` or in exactly one `Reject`.

Grouping rule (`group_rows`): when ANY row of an image is rejected, every
other row of that image is rejected too (code ``sibling_rejected``). An
image whose lesion row is unusable would otherwise be written with that
lesion unannotated (a cancer trained as background), which is worse for a
hypersensitive detector than losing the image.

Registry: `IMPORTERS` maps the ``--format`` name to the module's
``load(annotations, images_root, **options) -> ImportResult``.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib
import io
import logging
import os
from typing import Callable, Iterable, Iterator

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Finding:
    """One annotated finding.

    Attributes:
        label: one of `keras_hourglass.contract.FINDING_LABELS`.
        finding_type: one of `keras_hourglass.contract.FINDING_TYPES`.
        box: (y0, x0, y1, x1) in ORIGINAL continuous pixel coordinates, or
            None when it comes from a mask at ingest (`mask_paths`).
        row: the source row, "file:number".
        mask_paths: ROI mask DICOM candidates (CBIS-DDSM), first usable wins.
    """

    label: str
    finding_type: str
    box: tuple[float, float, float, float] | None
    row: str
    mask_paths: tuple[str, ...] = ()


@dataclasses.dataclass
class ImageRecord:
    """One image to ingest.

    Attributes:
        key: stable identity of the image (its path relative to the images
            root); hashed into `image_hash`.
        path: the DICOM file to read.
        patient_id: RAW patient key (hashed by prepare, never written).
        study_id: RAW study key.
        laterality: "L", "R" or "" (then the DICOM header decides).
        view: "CC", "MLO", ... or "".
        findings: the findings (empty: a normal image).
        rows: every source row ("file:number") of this image, exact duplicates included.
        split: the dataset's own split ("train"/"val"/"test") or None.
        expected_shape: (rows, columns) the table says the DICOM has (VinDr's height/width),
            checked at ingest: boxes are in that frame.
        duplicate_rows: rows of `rows` that repeat an earlier row exactly (merged: their finding
            counts once; counted in the manifest).
    """

    key: str
    path: str
    patient_id: str
    study_id: str
    laterality: str
    view: str
    findings: list[Finding]
    rows: list[str]
    split: str | None = None
    expected_shape: tuple[int, int] | None = None
    duplicate_rows: int = 0


@dataclasses.dataclass
class Reject:
    """One rejected source row.

    Attributes:
        row: "file:number".
        image_path: the image path as given by the table ("" if none).
        code: short reason category (manifest counts per code).
        reason: one line for humans.
        secrets: raw identifiers to redact from image_path/reason before writing.
    """

    row: str
    image_path: str
    code: str
    reason: str
    secrets: tuple[str, ...] = ()


@dataclasses.dataclass
class ImportResult:
    """What an importer returns.

    Attributes:
        images: image records, sorted by key.
        rejects: rejected rows.
        total_rows: data rows read from all tables.
        sources: the table file names, for the manifest.
    """

    images: list[ImageRecord]
    rejects: list[Reject]
    total_rows: int
    sources: list[str]

    def check_accounting(self) -> None:
        """Raises AssertionError unless every row is in exactly one image or reject."""
        rows = [r for image in self.images for r in image.rows] + [r.row for r in self.rejects]
        if len(rows) != self.total_rows or len(set(rows)) != len(rows):
            raise AssertionError(f"importer accounted for {len(rows)} rows ({len(set(rows))} distinct) "
                                 f"of {self.total_rows}")


@dataclasses.dataclass
class ParsedRow:
    """A valid source row before grouping by image (internal to importers)."""

    row: str
    key: str
    path: str
    patient_id: str
    study_id: str
    laterality: str
    view: str
    finding: Finding | None
    split: str | None
    expected_shape: tuple[int, int] | None = None


def read_csv_rows(path: str | os.PathLike, required: Iterable[str],
                  aliases: dict[str, str] | None = None) -> Iterator[tuple[str, dict[str, str]]]:
    """Reads a CSV into (row id, {column: value}) with stripped values.

    Args:
        path: the CSV file.
        required: columns that must be present (after applying aliases).
        aliases: alternative header spellings -> canonical column name.

    Yields:
        ("<file name>:<n>", row dict), n counting data records from 1.

    Raises:
        InputError: unreadable file or missing columns.
    """
    from keras_hourglass.errors import InputError

    name = os.path.basename(os.fspath(path))
    try:
        with open(path, "rb") as raw:
            data = raw.read()
    except OSError as err:
        raise InputError(path, f"cannot read annotation table: {err.strerror or err}") from None
    kind = _not_text(data)
    if kind:
        raise InputError(path, f"annotation table is {kind}, not a UTF-8 (or latin-1) CSV: save it as CSV UTF-8")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        # Spreadsheet exports from Windows are often cp1252/latin-1; every byte decodes in latin-1.
        logger.warning("%s is not UTF-8; reading it as latin-1", name)
        text = data.decode("latin-1")
    handle = io.StringIO(text, newline="")
    with handle:
        reader = csv.reader(handle)
        try:
            header = next(reader)
        except StopIteration:
            raise InputError(path, "annotation table is empty (no header)") from None
        except csv.Error as err:
            raise InputError(path, f"not a CSV file: {err}") from None
        columns = [(aliases or {}).get(h.strip(), h.strip()) for h in header]
        missing = [c for c in required if c not in columns]
        if missing:
            # Never echo the header: a table without one has a data row (a patient id) in its place.
            known = [c for c in columns if c in set(required) | set(aliases or {}) | OPTIONAL_COLUMNS]
            hint = " (no header line? the first line is read as the header)" if not known else ""
            raise InputError(path, f"missing column(s) {', '.join(missing)}; the header has {len(columns)} "
                                   f"column(s), {len(known)} of them known{hint}")
        number = 0
        try:
            for values in reader:
                if not any(v.strip() for v in values):
                    continue  # blank line: not a record
                number += 1
                values = values + [""] * (len(columns) - len(values))
                row = {c: v.strip() for c, v in zip(columns, values)}
                if len(values) > len(columns) and any(v.strip() for v in values[len(columns):]):
                    row["__extra__"] = "1"
                yield f"{name}:{number}", row
        except csv.Error as err:
            raise InputError(path, f"malformed CSV after data record {number}: {err}") from None


OPTIONAL_COLUMNS = {"split", "height", "width", "series_id", "breast_birads", "breast_density", "assessment",
                    "subtlety", "calc type", "calc distribution", "mass shape", "mass margins", "abnormality id"}
"""Column names the importers know besides their required ones (may be named in messages)."""

_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32-LE text (byte-order mark FF FE 00 00)"),
         (b"\x00\x00\xfe\xff", "UTF-32-BE text (byte-order mark 00 00 FE FF)"),
         (b"\xff\xfe", "UTF-16-LE text (byte-order mark FF FE)"),
         (b"\xfe\xff", "UTF-16-BE text (byte-order mark FE FF)"))
_MAGIC = ((b"PK\x03\x04", "a ZIP archive (an .xlsx/.ods workbook?)"),
          (b"\xd0\xcf\x11\xe0", "an OLE2 file (an .xls workbook?)"),
          (b"\x1f\x8b", "gzip-compressed"),
          (b"%PDF", "a PDF document"))


def _not_text(data: bytes) -> str | None:
    """Returns: what the bytes are when they are not a text table (BOM, known binary format, NUL bytes), else None."""
    for prefix, kind in _BOMS + _MAGIC:
        if data.startswith(prefix):
            return kind
    if b"\x00" in data[:65536]:
        return "binary or UTF-16/32 without a byte-order mark (it holds NUL bytes)"
    return None


def parse_float(value: str) -> float | None:
    """Returns: the float in `value`, None when empty; raises ValueError if not a finite number."""
    if value is None or value.strip() == "" or value.strip().lower() in ("nan", "none", "null"):
        return None
    try:
        number = float(value)
    except ValueError:
        raise ValueError("a box value is not a number") from None  # never echo the cell (PHI)
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError("a box value is not a finite number")
    return number


class DegenerateBoxError(ValueError):
    """A box with xmax <= xmin or ymax <= ymin (reject code ``degenerate_box``)."""


def box_from_xyxy(row: dict[str, str]) -> tuple[float, float, float, float] | None:
    """Parses xmin, ymin, xmax, ymax into a (y0, x0, y1, x1) box.

    Returns:
        The box, or None when all four are empty.

    Raises:
        ValueError: partial or non-numeric; `DegenerateBoxError` (a ValueError) when xmax <= xmin or
            ymax <= ymin. Negative or out-of-image values are clipped at ingest (counted), where the
            image size is known.
    """
    values = [parse_float(row.get(k, "")) for k in ("xmin", "ymin", "xmax", "ymax")]
    if all(v is None for v in values):
        return None
    if any(v is None for v in values):
        raise ValueError("partial box: xmin, ymin, xmax, ymax must all be given or all be empty")
    xmin, ymin, xmax, ymax = values
    if xmax <= xmin or ymax <= ymin:
        raise DegenerateBoxError("degenerate box: xmax <= xmin or ymax <= ymin")
    return (ymin, xmin, ymax, xmax)


def resolve(images_root: str | os.PathLike, relative: str) -> str:
    """Resolves a table's path inside the images root, before any file is opened.

    The path is joined to the REAL images root and resolved with every symlink
    (`os.path.realpath`); the result must lie inside the real root. Absolute
    paths elsewhere, ``..`` escapes in any spelling and symlinks (files or
    folders) that point outside are refused with the same code whether or not
    the target exists, so the reject code tells nothing about files outside
    the root. There is deliberately no way to turn this off.

    Args:
        images_root: the ``--images-root`` directory.
        relative: the path as the table gives it.

    Returns:
        The real path of the file (read this one: it is the path that was checked).

    Raises:
        ValueError: ("outside_root", message) for a path that leaves the root,
            ("bad_value", message) for a path with a NUL character.
    """
    if "\x00" in relative:
        raise ValueError("bad_value", "image path contains a NUL character")
    root = real_root(images_root)
    real = os.path.realpath(os.path.join(root, relative))
    if not is_inside(real, root):
        raise ValueError("outside_root", "image path resolves (symlinks included) outside the images root")
    return real


def real_root(images_root: str | os.PathLike) -> str:
    """Returns: the real path of the images root (symlinks resolved)."""
    return os.path.realpath(os.fspath(images_root))


def is_inside(path: str, root: str) -> bool:
    """Returns: whether the real path `path` is `root` itself or lies below the real path `root`."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def group_rows(parsed: list[ParsedRow], rejects: list[Reject]) -> list[ImageRecord]:
    """Groups valid rows into images, applying the sibling rule (module doc).

    Rows of one image must agree on patient_id (else all of its rows are
    rejected, code ``inconsistent_image``). A file listed under two path
    spellings keeps the spelling listed first; the rows of the other are
    rejected (``duplicate_image``). A normal row (no finding) next
    to finding rows of the same image counts as ingested with them. A row
    that repeats an earlier row of its image exactly (every value but its
    number) is merged into it: ingested, its finding counted once
    (`ImageRecord.duplicate_rows`, summed in the manifest).

    Args:
        parsed: valid rows.
        rejects: rejected rows so far; extended in place.

    Returns:
        Image records sorted by key.
    """
    by_key: dict[str, list[ParsedRow]] = {}
    for row in parsed:
        by_key.setdefault(row.key, []).append(row)
    # One file listed under two spellings of its path would be written twice (maybe in two splits).
    first_key_of_file: dict[str, str] = {}
    duplicate_of: dict[str, str] = {}
    for key in by_key:  # table order: the spelling listed first wins
        real = os.path.realpath(by_key[key][0].path)
        if real in first_key_of_file:
            duplicate_of[key] = by_key[first_key_of_file[real]][0].row
        else:
            first_key_of_file[real] = key
    path_of_reject = {r.image_path: r for r in rejects if r.image_path}
    images = []
    for key in sorted(by_key):
        rows = by_key[key]
        first = rows[0]
        reason = None
        if key in duplicate_of:
            reason = ("duplicate_image", f"the same file is listed under another path (row {duplicate_of[key]})")
        elif key in path_of_reject:
            bad = path_of_reject[key]
            reason = ("sibling_rejected", f"another row of this image was rejected ({bad.row}: {bad.code})")
        elif len({r.patient_id for r in rows}) > 1:
            reason = ("inconsistent_image", "rows of this image give different patient_id values")
        elif len({r.expected_shape for r in rows}) > 1:
            reason = ("inconsistent_image", "rows of this image give different image sizes")
        elif len({r.split for r in rows}) > 1:
            reason = ("inconsistent_image", "rows of this image give different split values")
        if reason:
            secrets = tuple({r.patient_id for r in rows} | {r.study_id for r in rows})
            for r in rows:
                rejects.append(Reject(r.row, key, reason[0], reason[1], secrets))
            continue
        findings, seen = [], set()
        for r in rows:
            signature = _row_signature(r)
            if signature in seen:
                continue  # an exact duplicate row: one finding, not two (they would inflate FROC counts)
            seen.add(signature)
            if r.finding is not None:
                findings.append(r.finding)
        images.append(ImageRecord(
            key=key, path=first.path, patient_id=first.patient_id, study_id=first.study_id,
            laterality=first.laterality, view=first.view, findings=findings,
            rows=[r.row for r in rows], split=first.split, expected_shape=first.expected_shape,
            duplicate_rows=len(rows) - len(seen)))
    return images


def _row_signature(row: ParsedRow) -> tuple:
    """Everything a parsed row says except its row number: equal signatures are exact duplicates."""
    finding = row.finding
    what = None if finding is None else (finding.label, finding.finding_type, finding.box, finding.mask_paths)
    return (row.key, row.path, row.patient_id, row.study_id, row.laterality, row.view, row.split,
            row.expected_shape, what)


IMPORTERS: dict[str, str] = {
    "canonical": "keras_hourglass.data.importers.canonical",
    "vindr": "keras_hourglass.data.importers.vindr",
    "cbis-ddsm": "keras_hourglass.data.importers.cbis_ddsm",
}


def get_importer(fmt: str) -> Callable[..., ImportResult]:
    """Returns: the ``load`` function of the importer registered as `fmt`.

    Raises:
        ArgumentError: (`fmt`) unknown format.
    """
    from keras_hourglass.errors import ArgumentError

    if fmt not in IMPORTERS:
        raise ArgumentError("fmt", f"unknown format {fmt!r}; choose one of {', '.join(IMPORTERS)}")
    return importlib.import_module(IMPORTERS[fmt]).load


__all__ = ["DegenerateBoxError", "Finding", "ImageRecord", "ImportResult", "IMPORTERS", "ParsedRow",
           "Reject", "box_from_xyxy", "get_importer", "group_rows", "is_inside", "read_csv_rows", "real_root",
           "resolve"]
