"""manifest.json and rejects.csv (no TensorFlow).

`finish` writes both at the end of ``hourglass prepare`` on either path (local processes or an
Apache Beam pipeline, see `keras_hourglass.data.prepare` and `keras_hourglass.data.beam_ingest`),
after checking that ingested + rejected == rows of the input table(s). The counts it receives are
summed by the ingest itself (`keras_hourglass.data.plan`), never recounted from the files.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json

from keras_hourglass import storage
from keras_hourglass.data import plan
from keras_hourglass.errors import InputError

REJECT_COLUMNS = ("row", "image_hash", "code", "reason")
"""rejects.csv columns. A row is named by its table and record number (``annotations.csv:17``) and its image
by the salted hash of the path (as in the TFRecords): no path or table cell is ever written."""


def read_json(path: str) -> dict:
    """Reads a JSON file, raising InputError naming it on failure."""
    try:
        return json.loads(storage.read_text(path))
    except (OSError, ValueError) as err:
        raise InputError(path, f"cannot read JSON: {err}") from None


def rejects_csv_bytes(rejects: list[dict]) -> bytes:
    """Returns: rejects.csv content (columns `REJECT_COLUMNS`), rows sorted by row id."""
    def order(reject):
        source, _, number = reject["row"].rpartition(":")
        return (source, int(number) if number.isdigit() else 0)

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=REJECT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for reject in sorted(rejects, key=order):
        writer.writerow({k: reject.get(k, "") for k in REJECT_COLUMNS})
    return buffer.getvalue().encode("utf-8")


def file_sha256(path: str) -> str:
    """Returns: the hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with storage.open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def content_hash(prep_dir: str, files: list[str]) -> str:
    """Returns: SHA-256 over the sorted (relative path, file SHA-256) of the TFRecords."""
    digest = hashlib.sha256()
    for relative in sorted(files):
        digest.update(f"{relative}\0{file_sha256(storage.join(prep_dir, relative))}\n".encode())
    return digest.hexdigest()


def finish(prep_dir: str, header: dict, counts: dict, rejects: list[dict], files: list[dict], *,
           rows_total: int, images_seen: int, content_hash: str | None = None, write=None) -> dict:
    """Checks the accounting and writes PREP/manifest.json and PREP/rejects.csv (both paths).

    Args:
        prep_dir: the prepared directory (a local path or a URL).
        header: format, sources, code_version, salt, runner, preprocessing, splits (with conflicts).
        counts: the summed per-image counts (`keras_hourglass.data.plan`).
        rejects: every rejects.csv row (importer and ingest rejects).
        files: the TFRecord files written, ``{"path" (relative to PREP), "split", "stratum"[, "records"]}``.
        rows_total: data rows of the input table(s).
        images_seen: distinct images the table names.
        content_hash: SHA-256 over the files (the local path; None on the Beam path, whose file
            boundaries are the runner's: compare `examples_hash` there).
        write: `write(path, bytes)` (default: `keras_hourglass.storage.write_bytes`).

    Returns:
        The manifest.

    Raises:
        AssertionError: ingested + rejected != rows (a bug: every row must be accounted for).
    """
    write = write or storage.write_bytes
    accounted = counts["rows_ingested"] + len(rejects)
    if accounted != rows_total:
        raise AssertionError(f"accounting broken: ingested {counts['rows_ingested']} + rejected "
                             f"{len(rejects)} != {rows_total} rows")
    by_code: dict[str, int] = {}
    for reject in rejects:
        by_code[reject["code"]] = by_code.get(reject["code"], 0) + 1
    manifest = {
        **header,
        "inputs": {"rows": rows_total, "images": images_seen},
        "ingested": {"rows": counts["rows_ingested"], "images": counts["images_written_total"],
                     "duplicate_rows_merged": counts["duplicate_rows_merged"]},
        "images_written": counts["images_written"],
        "findings": counts["findings"],
        "boxes_clipped": counts["boxes_clipped"],
        "preprocessing_rules_fired": counts["rules_fired"],
        "rejects": {"rows": len(rejects), "by_code": dict(sorted(by_code.items()))},
        "files": sorted(files, key=lambda f: f["path"]),
        "examples_hash": plan.digest_hex(counts["examples_digest"]),
        "content_hash": content_hash,
    }
    write(storage.join(prep_dir, "rejects.csv"), rejects_csv_bytes(rejects))
    write(storage.join(prep_dir, "manifest.json"), (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    return manifest
