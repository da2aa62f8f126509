"""manifest.json, rejects.csv and the merge of per-machine manifests (no TensorFlow).

Files (see `keras_hourglass.data.prepare` for the whole layout):

- ``PREP/shards/sIIofNN.json``: one machine's manifest (``--shard-index II
  --num-shards NN``), with its rejects inline.
- ``PREP/manifest.json`` and ``PREP/rejects.csv``: the merge of all NN
  machine manifests, written when the last one is present (automatically
  at the end of ``hourglass prepare`` if it sees all of them, or by
  ``hourglass prepare --merge --out PREP``).

The merge checks that the machines agree (salt, format, settings, input
rows) and that ingested + rejected == rows of the input table(s).
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import os
import re

from keras_hourglass.errors import InputError

REJECT_COLUMNS = ("row", "image_hash", "code", "reason")
"""rejects.csv columns. A row is named by its table and record number (``annotations.csv:17``) and its image
by the salted hash of the path (as in the TFRecords): no path or table cell is ever written."""


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Writes `data` to `path` through a temporary file and os.replace."""
    directory, name = os.path.split(path)
    os.makedirs(directory or ".", exist_ok=True)
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: str, value) -> None:
    """Writes `value` as indented JSON, atomically."""
    write_bytes_atomic(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def read_json(path: str) -> dict:
    """Reads a JSON file, raising InputError naming it on failure."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
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
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def content_hash(prep_dir: str, files: list[str]) -> str:
    """Returns: SHA-256 over the sorted (relative path, file SHA-256) of the TFRecords."""
    digest = hashlib.sha256()
    for relative in sorted(files):
        digest.update(f"{relative}\0{file_sha256(os.path.join(prep_dir, relative))}\n".encode())
    return digest.hexdigest()


def machine_manifest_path(prep_dir: str, shard_index: int, num_shards: int) -> str:
    """Returns: PREP/shards/sIIofNN.json."""
    return os.path.join(prep_dir, "shards", f"s{shard_index:02d}of{num_shards:02d}.json")


def _add(target: dict, source: dict) -> None:
    for key, value in source.items():
        if isinstance(value, dict):
            _add(target.setdefault(key, {}), value)
        else:
            target[key] = target.get(key, 0) + value


def merge(prep_dir: str, num_shards: int | None = None) -> dict:
    """Merges the machine manifests into PREP/manifest.json and PREP/rejects.csv.

    Args:
        prep_dir: the prepared directory.
        num_shards: expected machine count (default: read from the manifests).

    Returns:
        The merged manifest.

    Raises:
        InputError: a machine manifest is missing or the machines disagree.
    """
    found = sorted(glob.glob(os.path.join(prep_dir, "shards", "s[0-9][0-9]of[0-9][0-9].json")))
    if not found:
        raise InputError(prep_dir, "no machine manifests under shards/ (run hourglass prepare first)")
    parts = [read_json(p) for p in found]
    counts = {p["shard"]["count"] for p in parts}
    if num_shards is None:
        if len(counts) != 1:
            raise InputError(prep_dir, f"shards/ mixes runs with --num-shards {sorted(counts)}")
        num_shards = counts.pop()
    parts = [p for p in parts if p["shard"]["count"] == num_shards]
    have = sorted(p["shard"]["index"] for p in parts)
    missing = sorted(set(range(num_shards)) - set(have))
    if missing:
        raise InputError(prep_dir, f"missing machine manifests for --shard-index {missing} of {num_shards}")
    first = parts[0]
    for part in parts[1:]:
        for key in ("salt", "format", "preprocessing", "inputs_total", "settings_fingerprint"):
            if part[key] != first[key]:
                raise InputError(machine_manifest_path(prep_dir, part["shard"]["index"], num_shards),
                                 f"disagrees with shard 0 on {key!r}: machines must run the same command "
                                 "(same --salt, inputs and settings)")
    totals: dict = {}
    rejects: list[dict] = []
    files: list[dict] = []
    for part in parts:
        _add(totals, part["counts"])
        rejects += part["rejects"]
        files += part["files"]
    rows_total = first["inputs_total"]["rows"]
    accounted = totals["rows_ingested"] + totals["rows_rejected"]
    if accounted != rows_total or len(rejects) != totals["rows_rejected"]:
        raise AssertionError(f"accounting broken: ingested {totals['rows_ingested']} + rejected "
                             f"{totals['rows_rejected']} != {rows_total} rows")
    by_code: dict[str, int] = {}
    for reject in rejects:
        by_code[reject["code"]] = by_code.get(reject["code"], 0) + 1
    files.sort(key=lambda f: f["path"])
    manifest = {
        "format": first["format"],
        "sources": first["sources"],
        "code_version": first["code_version"],
        "salt": first["salt"],
        "shards": {"count": num_shards},
        "preprocessing": first["preprocessing"],
        "splits": {**first["splits"], "conflicts": totals.get("split_conflicts", 0)},
        "inputs": {"rows": rows_total, "images": totals["images_seen"]},
        "ingested": {"rows": totals["rows_ingested"], "images": totals["images_written_total"],
                     "duplicate_rows_merged": totals.get("duplicate_rows_merged", 0)},
        "images_written": totals["images_written"],
        "findings": totals["findings"],
        "boxes_clipped": totals["boxes_clipped"],
        "preprocessing_rules_fired": totals.get("rules_fired", {}),
        "rejects": {"rows": totals["rows_rejected"], "by_code": dict(sorted(by_code.items()))},
        "files": files,
        "content_hash": content_hash(prep_dir, [f["path"] for f in files]),
    }
    write_bytes_atomic(os.path.join(prep_dir, "rejects.csv"), rejects_csv_bytes(rejects))
    write_json_atomic(os.path.join(prep_dir, "manifest.json"), manifest)
    return manifest


def is_machine_manifest_name(name: str) -> bool:
    """Returns: whether a file name is a machine manifest (sIIofNN.json)."""
    return re.fullmatch(r"s\d\dof\d\d\.json", name) is not None
