"""PHI scan: look for identifying strings in every byte of every file under a directory.

Reusable helper for the reliability tests (and by hand: ``python tests/phi_scan.py DIR phi.json``).

What is scanned, recursively (a "blob" is any byte string found along the way):

- every file's bytes, and every file's path relative to the root (directory names leak too);
- inside each blob: zip archives (``.keras`` files are zips with deflated JSON), gzip streams,
  TFRecord framing (TFRecords, TensorBoard event files, TF Serving warmup files: each record's
  payload), and every embedded PNG's text chunks (tEXt, zTXt and iTXt, decompressed), wherever the
  PNG sits (a file, a TFRecord feature, a TensorBoard image summary, a zip member).

What is searched: each value and its common variants (`variants`), case-insensitively, encoded as
UTF-8 and UTF-16-LE/BE:

- person names ``Last^First^Middle``: as given, with spaces or commas instead of ``^``, in
  "First Last" order, and each name component of 5 or more characters on its own;
- dates ``YYYYMMDD``: also ``YYYY-MM-DD``, ``YYYY/MM/DD``, ``YYYY.MM.DD``, ``DD.MM.YYYY``,
  ``DD/MM/YYYY``, ``MM/DD/YYYY``;
- any other value: as given, and without its separators (``-``, ``_``, spaces, ``.``) when that
  leaves at least 6 characters.

Values shorter than 4 characters are ignored (they would match random bytes).
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import os
import re
import struct
import sys
import zipfile
import zlib
from typing import Iterable, Iterator

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MIN_LENGTH = 4
MAX_DEPTH = 4


@dataclasses.dataclass(frozen=True)
class Hit:
    """One occurrence of a secret.

    Attributes:
        path: the file (relative to the scanned root).
        where: the container chain inside the file, e.g. ``zip:config.json`` or
            ``record 3 > png@120:iTXt`` ("" for the raw bytes, ``<path>`` for the file name).
        field: the PHI field the value belongs to (e.g. "PatientName").
        value: the original value.
        variant: the form that matched.
        encoding: "utf-8", "utf-16-le" or "utf-16-be".
    """

    path: str
    where: str
    field: str
    value: str
    variant: str
    encoding: str

    def __str__(self) -> str:
        inside = f" [{self.where}]" if self.where else ""
        return f"{self.path}{inside}: {self.field} {self.value!r} as {self.variant!r} ({self.encoding})"


# ------------------------------------------------------------------------------------------ variants
_DATE = re.compile(r"^(\d{4})(\d{2})(\d{2})$")


def variants(value: str, field: str = "") -> set[str]:
    """The forms under which `value` may appear (see the module docstring).

    Args:
        value: the raw identifier.
        field: the DICOM keyword (PatientName and *Date* fields get name/date variants).

    Returns:
        Lower-cased variants of at least `MIN_LENGTH` characters.
    """
    value = str(value).strip()
    out = {value}
    if "^" in value or field.endswith("Name"):
        parts = [p.strip() for p in value.split("^") if p.strip()]
        if parts:
            out |= {" ".join(parts), ", ".join(parts), ",".join(parts), "_".join(parts)}
            out.add(" ".join(parts[1:] + parts[:1]))  # First [Middle] Last
            out |= {p for p in parts if len(p) >= 5}
    match = _DATE.match(value)
    if match and ("Date" in field or not field):
        y, m, d = match.groups()
        out |= {f"{y}-{m}-{d}", f"{y}/{m}/{d}", f"{y}.{m}.{d}", f"{d}.{m}.{y}", f"{d}/{m}/{y}", f"{m}/{d}/{y}"}
    squeezed = re.sub(r"[-_ .^]", "", value)
    if len(squeezed) >= 6:
        out.add(squeezed)
    return {v.lower() for v in out if len(v) >= MIN_LENGTH}


def load_secrets(phi_json: str | os.PathLike, extra_fields: Iterable[str] = ()) -> dict[str, list[str]]:
    """Reads `hourglass synth`'s phi.json: field -> values (the four PHI fields, plus `extra_fields`
    from its ``identifiers`` section, e.g. "StudyInstanceUID")."""
    with open(phi_json, encoding="utf-8") as handle:
        data = json.load(handle)
    secrets = {field: list(values) for field, values in data.get("by_field", {}).items()}
    if not secrets:
        secrets = {"PHI": list(data.get("values", []))}
    for field in extra_fields:
        secrets[field] = list(data.get("identifiers", {}).get(field, []))
    return secrets


@dataclasses.dataclass
class _Needle:
    field: str
    value: str
    variant: str
    encoding: str
    pattern: bytes


def _needles(secrets: dict[str, Iterable[str]]) -> list[_Needle]:
    needles = []
    for field, values in secrets.items():
        for value in values:
            if value is None or len(str(value).strip()) < MIN_LENGTH:
                continue
            for variant in sorted(variants(value, field)):
                for encoding in ("utf-8", "utf-16-le", "utf-16-be"):
                    needles.append(_Needle(field, str(value), variant, encoding, variant.encode(encoding)))
    return needles


# ------------------------------------------------------------------------------------------ containers
def tfrecord_payloads(data: bytes) -> list[bytes] | None:
    """Splits TFRecord framing (uint64 length, uint32 crc, data, uint32 crc); None if `data` is not one."""
    records, position = [], 0
    while position < len(data):
        if position + 12 > len(data):
            return None
        (length,) = struct.unpack_from("<Q", data, position)
        end = position + 12 + length + 4
        if length > len(data) or end > len(data):
            return None
        records.append(data[position + 12:position + 12 + length])
        position = end
    return records if records else None


def png_text_chunks(data: bytes, start: int = 0) -> Iterator[tuple[str, bytes]]:
    """Yields (chunk type, decoded text bytes) for the text chunks of the PNG starting at `start`."""
    position = start + len(PNG_SIGNATURE)
    while position + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, position)
        body = data[position + 8:position + 8 + length]
        position += 12 + length
        if kind == b"tEXt":
            yield "tEXt", body
        elif kind == b"zTXt":
            key, _, rest = body.partition(b"\0")
            try:
                yield "zTXt", key + b"\0" + zlib.decompress(rest[1:])
            except zlib.error:
                yield "zTXt", body
        elif kind == b"iTXt":
            key, _, rest = body.partition(b"\0")
            compressed = rest[:1] == b"\x01"
            # rest: compression flag, method, language\0, translated keyword\0, text
            fields = rest[2:].split(b"\0", 2)
            text = fields[2] if len(fields) == 3 else rest
            if compressed:
                try:
                    text = zlib.decompress(text)
                except zlib.error:
                    pass
            yield "iTXt", key + b"\0" + b"\0".join(fields[:2]) + b"\0" + text
        elif kind == b"IEND" or length > len(data):
            return


def _inner_blobs(blob: bytes, name: str) -> Iterator[tuple[str, bytes]]:
    """(label, bytes) of every container found in `blob`."""
    if blob[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(io.BytesIO(blob)) as archive:
                for member in archive.namelist():
                    yield f"zip:{member}", member.encode("utf-8") + b"\n" + archive.read(member)
        except (zipfile.BadZipFile, OSError, RuntimeError, zlib.error):
            pass
    if blob[:2] == b"\x1f\x8b":
        try:
            yield "gzip", gzip.decompress(blob)
        except (OSError, EOFError, zlib.error):
            pass
    looks_tfrecord = any(k in name for k in (".tfrecord", "tfevents", "tf_serving_warmup", ".records"))
    if looks_tfrecord or len(blob) >= 16:
        payloads = tfrecord_payloads(blob)
        if payloads and (looks_tfrecord or len(payloads) > 1):
            for index, payload in enumerate(payloads):
                yield f"record {index}", payload
    start = blob.find(PNG_SIGNATURE)
    while start != -1:
        for kind, text in png_text_chunks(blob, start):
            yield f"png@{start}:{kind}", text
        start = blob.find(PNG_SIGNATURE, start + 1)


class Scanner:
    """Scans blobs for a fixed set of secrets.

    Args:
        secrets: field -> raw values.
    """

    def __init__(self, secrets: dict[str, Iterable[str]]):
        self.needles = _needles(secrets)
        if not self.needles:
            raise ValueError("no secret of at least 4 characters to look for")

    def scan_blob(self, blob: bytes, path: str, where: str = "", depth: int = 0) -> list[Hit]:
        """Searches `blob` and every container inside it (to `MAX_DEPTH` levels)."""
        hits = []
        lowered = blob.lower()
        for needle in self.needles:
            if needle.pattern in lowered:
                hits.append(Hit(path, where, needle.field, needle.value, needle.variant, needle.encoding))
        if depth < MAX_DEPTH:
            for label, inner in _inner_blobs(blob, path if not where else where):
                hits += self.scan_blob(inner, path, f"{where} > {label}" if where else label, depth + 1)
        return hits

    def scan_tree(self, root: str | os.PathLike, *, skip: Iterable[str] = ()) -> tuple[list[Hit], int]:
        """Scans every file under `root` (and every relative path).

        Args:
            root: the directory.
            skip: relative paths (files or directories) not to scan, e.g. the synthetic inputs.

        Returns:
            (hits, number of files scanned).
        """
        root = os.fspath(root)
        skip = {os.path.normpath(s) for s in skip}
        hits, files = [], 0
        for directory, dirnames, filenames in os.walk(root):
            rel_dir = os.path.relpath(directory, root)
            dirnames[:] = sorted(d for d in dirnames if os.path.normpath(os.path.join(rel_dir, d)) not in skip)
            for filename in sorted(filenames):
                relative = os.path.normpath(os.path.join(rel_dir, filename))
                if relative in skip:
                    continue
                files += 1
                hits += self.scan_blob(relative.encode("utf-8"), relative, "<path>", MAX_DEPTH)
                with open(os.path.join(directory, filename), "rb") as handle:
                    hits += self.scan_blob(handle.read(), relative)
        return hits, files


def scan_tree(root: str | os.PathLike, secrets: dict[str, Iterable[str]], *, skip: Iterable[str] = ()
              ) -> tuple[list[Hit], int]:
    """Shortcut: `Scanner(secrets).scan_tree(root, skip=skip)`."""
    return Scanner(secrets).scan_tree(root, skip=skip)


def main(argv: list[str] | None = None) -> int:
    """``python tests/phi_scan.py DIR PHI_JSON``: prints every hit; exit 1 if any."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: phi_scan.py DIR PHI_JSON", file=sys.stderr)
        return 2
    hits, files = scan_tree(argv[0], load_secrets(argv[1]))
    for hit in hits:
        print(hit)
    print(f"{files} files scanned, {len(hits)} hits", file=sys.stderr)
    return 1 if hits else 0


if __name__ == "__main__":
    sys.exit(main())
