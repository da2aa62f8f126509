"""Reliability: `hourglass prepare` over mutated DICOM files never crashes and accounts for every row.

A few valid tiny (32x24) DICOMs (raw explicit and implicit VR, MONOCHROME1 with windows, RLE and
JPEG 2000 compressed) are mutated, seeded, into N files (500 in the suite, 5000 with
HOURGLASS_SOAK=1): truncations, bit flips, wrong element lengths, absurd Rows/Columns, a wrong
transfer syntax UID in the file meta, missing pixel data, garbage preambles/prefixes, header
semantics (modality, frames, photometric, For Processing), empty and random files, missing files,
unmutated controls, and valid files OUTSIDE --images-root reached by paths escaping it (``..``,
absolute, symlinked file or folder; they must be rejected as ``outside_root``, never ingested). All
are listed in one canonical CSV and go through the real CLI in-process (`hourglass prepare
--workers 2`). Checks:

- exit code 0; manifest rows == CSV rows == ingested + rejected;
- every file is either in the TFRecords (by its salted image hash) or in rejects.csv, never both;
- every reject has a code and a non-empty reason; no ``unexpected_error`` (the DICOM reader must map
  every failure to a typed DicomError) and mutations with a known outcome get the right code;
- unmutated controls are all ingested, and every ingested image decodes to the expected shape.

Reproduce a failure: HOURGLASS_FUZZ_SEED=<seed printed in the failure> pytest tests/test_reliability_fuzz.py
"""

from __future__ import annotations

import collections
import csv
import io
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import (ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless,  # noqa: E402
                         RLELossless, generate_uid)

from keras_hourglass import contract  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns on every corrupt file

ROWS, COLS = 32, 24
SALT = "fuzz-salt-7"
FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.2.1"
SOAK = os.environ.get("HOURGLASS_SOAK", "") not in ("", "0")
COUNT = int(os.environ.get("HOURGLASS_FUZZ_COUNT", 5000 if SOAK else 500))
SEED = int(os.environ.get("HOURGLASS_FUZZ_SEED", 20261124))
CANONICAL = ["image_path", "patient_id", "study_id", "laterality", "view", "label", "finding_type",
             "xmin", "ymin", "xmax", "ymax"]

# Mutations whose outcome is known: kind -> the reject codes allowed (None: must be ingested).
EXPECTED = {
    "control": None,
    "random_preamble": None,  # the 128-byte preamble is free-form: the file stays valid
    "no_pixel_data": {"no_pixel_data"},
    "empty_file": {"unreadable"},
    "random_bytes": {"unreadable"},
    "garbage_prefix": {"unreadable"},
    "missing_file": {"missing_file"},
    "modality_ct": {"not_mammography"},
    "for_processing": {"for_processing"},
    "multi_frame": {"multi_frame", "unreadable"},
    "rgb": {"unsupported_photometric"},
    "huge_dims": {"too_large"},
    "zero_dims": {"unreadable"},
    "unknown_syntax": {"unsupported_transfer_syntax"},
    "empty_syntax": {"unsupported_transfer_syntax", "unreadable"},
    # A valid file OUTSIDE --images-root, reached by a path that escapes it: never opened, always this code.
    "escape_dotdot": {"outside_root"},
    "escape_absolute": {"outside_root"},
    "escape_symlink": {"outside_root"},
    "escape_symlink_dir": {"outside_root"},
    "escape_missing": {"outside_root"},
}
ESCAPES = ("escape_dotdot", "escape_absolute", "escape_symlink", "escape_symlink_dir", "escape_missing")


# ----------------------------------------------------------------------------------- valid bases
def _pixels(seed: int, bits: int, rows: int = ROWS, cols: int = COLS) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols]
    inside = ((y - rows / 2) / (rows * 0.48)) ** 2 + (x / (cols * 0.8)) ** 2 <= 1
    top = 2 ** bits - 1
    return np.where(inside, top // 2 + rng.integers(0, top // 4, (rows, cols)), 40).astype(np.uint16)


def tiny_dataset(seed: int = 0, *, photometric: str = "MONOCHROME2", bits: int = 12, windows: bool = False,
                 phi: dict | None = None, rows: int = ROWS, cols: int = COLS) -> Dataset:
    """A valid MG For Presentation dataset (32x24 by default; explicit VR little endian)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["fuzz", str(seed)])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = FOR_PRESENTATION
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["fuzz-study", str(seed)])
    ds.Modality = "MG"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageLaterality = "L"
    ds.ViewPosition = "CC"
    for key, value in (phi or {"PatientName": "Fuzz^Tester", "PatientID": f"FZ{seed:04d}",
                               "PatientBirthDate": "19500101", "AccessionNumber": f"AC{seed:05d}"}).items():
        setattr(ds, key, value)
    if windows:
        ds.WindowCenter = [str(2 ** (bits - 1)), str(2 ** (bits - 2))]
        ds.WindowWidth = [str(2 ** bits), str(2 ** (bits - 1))]
        ds.VOILUTFunction = "SIGMOID"
    ds.set_pixel_data(_pixels(seed, bits, rows, cols), photometric, bits, generate_instance_uid=False)
    return ds


def _to_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def valid_bases() -> dict[str, bytes]:
    """The valid starting files: name -> bytes."""
    bases = {"raw12": _to_bytes(tiny_dataset(1)),
             "mono1_windows": _to_bytes(tiny_dataset(2, photometric="MONOCHROME1", bits=14, windows=True))}
    implicit = tiny_dataset(3)
    implicit.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    bases["implicit"] = _to_bytes(implicit)
    # JPEG 2000 at 64x48 (openjpeg's 6 resolutions need >= 32 px a side; same 4:3 aspect as 32x24).
    for name, syntax, rows, cols in (("rle", RLELossless, ROWS, COLS), ("j2k", JPEG2000Lossless, 64, 48)):
        ds = tiny_dataset(4 if name == "rle" else 5, rows=rows, cols=cols)
        try:
            ds.compress(syntax, generate_instance_uid=False)
        except Exception:  # noqa: BLE001 - the encoder plugin is optional
            continue
        bases[name] = _to_bytes(ds)
    return bases


# -------------------------------------------------------------------------------------- mutations
def _reparse(data: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def _edit(data: bytes, fn) -> bytes:
    ds = _reparse(data)
    fn(ds)
    return _to_bytes(ds)


def with_syntax(data: bytes, uid: str | None) -> bytes:
    """The same file with its file-meta TransferSyntaxUID replaced (None: removed), body bytes untouched."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    meta_end = 144 + int.from_bytes(data[140:144], "little")  # (0002,0000) UL group length at 132
    meta = _reparse(data).file_meta
    if uid is None:
        del meta.TransferSyntaxUID
    else:
        meta.TransferSyntaxUID = uid
    del meta.FileMetaInformationGroupLength
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_file_meta_info(buffer, meta, enforce_standard=uid is not None)
    return data[:132] + buffer.getvalue() + data[meta_end:]


def _element_offsets(data: bytes) -> list[tuple[int, int]]:
    """(offset of the length field, its width in bytes) of each explicit-VR element found by scanning."""
    long_vrs = {b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"OD", b"OL", b"OV", b"UC", b"UR"}
    offsets = []
    for i in range(132, len(data) - 8):
        vr = data[i + 4:i + 6]
        if not (vr.isalpha() and vr.isupper()):
            continue
        group = int.from_bytes(data[i:i + 2], "little")
        if group not in (0x0002, 0x0008, 0x0010, 0x0018, 0x0020, 0x0028, 0x7FE0):
            continue
        offsets.append((i + 8, 4) if vr in long_vrs else (i + 6, 2))
    return offsets


def mutate(kind: str, base: bytes, rng: random.Random) -> bytes | None:
    """Returns the mutated file content (None: the file is not written at all)."""
    if kind in ("control",) or kind in ESCAPES:
        return base
    if kind == "truncate":
        return base[:rng.randrange(0, len(base))]
    if kind == "bitflip":
        data = bytearray(base)
        for _ in range(rng.randint(1, 8)):
            position = rng.randrange(128, len(data))  # the preamble is free-form: flip after it
            data[position] ^= 1 << rng.randrange(8)
        return bytes(data)
    if kind == "bad_length":
        data = bytearray(base)
        offsets = _element_offsets(base) or [(140, 2)]
        for _ in range(rng.randint(1, 3)):
            at, width = rng.choice(offsets)
            value = rng.choice([0, 1, 3, 0xFF, 0xFFFF, 0xFFFFFFFF, int.from_bytes(data[at:at + width], "little") + 2,
                                rng.randrange(0, 2 ** (8 * width))]) % (2 ** (8 * width))
            data[at:at + width] = value.to_bytes(width, "little")
        return bytes(data)
    if kind == "huge_dims":
        return _edit(base, lambda ds: setattr(ds, "Rows", 65535) or setattr(ds, "Columns", 65535))
    if kind == "zero_dims":
        return _edit(base, lambda ds: setattr(ds, rng.choice(["Rows", "Columns"]), 0))
    if kind == "wrong_dims":  # header disagrees with the pixel data
        def shrink(ds):
            ds.Rows, ds.Columns = rng.choice([(ROWS + 1, COLS), (ROWS, COLS * 3), (1, 1), (ROWS * 4, COLS * 4)])
        return _edit(base, shrink)
    if kind == "wrong_syntax":
        return with_syntax(base, rng.choice([
            "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
            "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5",
            "1.2.840.10008.1.2.4.100"]))
    if kind == "unknown_syntax":
        return with_syntax(base, "1.2.3.4.5.6.7")
    if kind == "empty_syntax":
        return with_syntax(base, None)
    if kind == "no_pixel_data":
        def strip(ds):
            del ds.PixelData
        return _edit(base, strip)
    if kind == "random_preamble":
        return bytes(rng.randrange(256) for _ in range(128)) + base[128:]
    if kind == "garbage_prefix":
        return bytes(rng.randrange(256) for _ in range(rng.randint(1, 300))) + base[rng.choice([0, 128, 132]):]
    if kind == "empty_file":
        return b""
    if kind == "random_bytes":
        return bytes(rng.randrange(256) for _ in range(rng.randint(1, 4000)))
    if kind == "missing_file":
        return None
    if kind == "modality_ct":
        return _edit(base, lambda ds: setattr(ds, "Modality", "CT"))
    if kind == "for_processing":
        return _edit(base, lambda ds: setattr(ds, "SOPClassUID", FOR_PROCESSING))
    if kind == "multi_frame":
        return _edit(base, lambda ds: setattr(ds, "NumberOfFrames", rng.choice([2, 7])))
    if kind == "rgb":
        return _edit(base, lambda ds: setattr(ds, "PhotometricInterpretation", "RGB"))
    raise ValueError(kind)


# Weights: the random mutations dominate; the known-outcome ones keep every reason exercised.
KINDS = {"truncate": 18, "bitflip": 22, "bad_length": 16, "wrong_dims": 6, "wrong_syntax": 8, "huge_dims": 3,
         "zero_dims": 2, "unknown_syntax": 2, "empty_syntax": 2, "no_pixel_data": 3, "random_preamble": 2,
         "garbage_prefix": 3, "empty_file": 1, "random_bytes": 2, "missing_file": 1, "modality_ct": 1,
         "for_processing": 1, "multi_frame": 1, "rgb": 1, "control": 5, "escape_dotdot": 1, "escape_absolute": 1,
         "escape_symlink": 1, "escape_symlink_dir": 1, "escape_missing": 1}


def escaping_path(root: Path, kind: str, name: str, data: bytes) -> str:
    """Writes `data` OUTSIDE root (root/../outside/) and returns a table path that reaches it by `kind`."""
    outside = root.parent / "outside"
    outside.mkdir(exist_ok=True)
    if kind != "escape_missing":
        (outside / name).write_bytes(data)
    if kind in ("escape_dotdot", "escape_missing"):
        return f"../outside/{name}"
    if kind == "escape_absolute":
        return str(outside / name)
    if kind == "escape_symlink":
        (root / "images" / f"link_{name}").symlink_to(outside / name)
        return f"images/link_{name}"
    link = root / "images" / "outside_dir"
    if not link.is_symlink():
        link.symlink_to(outside)
    return f"images/outside_dir/{name}"


def build_corpus(root: Path, count: int, seed: int) -> tuple[Path, list[dict]]:
    """Writes `count` files under root/images and root/annotations.csv; returns (csv, plan rows)."""
    rng = random.Random(seed)
    bases = valid_bases()
    base_names = sorted(bases)
    kinds, weights = zip(*KINDS.items())
    plan = []
    (root / "images").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        kind = "control" if i < len(base_names) else rng.choices(kinds, weights)[0]
        base_name = base_names[i % len(base_names)]
        data = mutate(kind, bases[base_name], rng)
        relative = f"images/f{i:05d}_{kind}_{base_name}.dcm"
        if kind in ESCAPES:
            relative = escaping_path(root, kind, f"f{i:05d}_{kind}_{base_name}.dcm", data)
        elif data is not None:
            (root / relative).write_bytes(data)
        malignant = i % 7 == 3
        plan.append({"image_path": relative, "patient_id": f"PAT{i % 97:03d}", "study_id": f"ST{i:05d}",
                     "laterality": "L", "view": "CC", "label": "malignant" if malignant else "normal",
                     "finding_type": "mass" if malignant else "",
                     "xmin": 4 if malignant else "", "ymin": 6 if malignant else "",
                     "xmax": 12 if malignant else "", "ymax": 16 if malignant else "", "kind": kind})
    table = root / "annotations.csv"
    with open(table, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CANONICAL, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(plan)
    return table, plan


# ------------------------------------------------------------------------------------------ test
def test_prepare_survives_mutated_dicoms(tmp_path, capsys):
    from keras_hourglass.cli.main import main as cli_main

    table, plan = build_corpus(tmp_path / "corpus", COUNT, SEED)
    kinds = collections.Counter(p["kind"] for p in plan)
    assert len(plan) >= 500 and all(kinds[k] for k in ("truncate", "bitflip", "bad_length", "wrong_syntax",
                                                       "huge_dims", "no_pixel_data", "garbage_prefix"))
    assert sum(kinds[k] for k in ESCAPES) >= 3
    out = tmp_path / "prep"
    code = cli_main(["prepare", "--annotations", str(table), "--images-root", str(tmp_path / "corpus"),
                     "--out", str(out), "--size", "32", "--workers", "2", "--salt", SALT, "--quiet",
                     "--images-per-file", "128"])
    stdout = capsys.readouterr().out
    context = f"(seed {SEED}, {COUNT} files; HOURGLASS_FUZZ_SEED={SEED} reproduces)"
    assert code == 0, f"prepare exit {code} {context}"
    outcome = check_fuzzed_prep(out, plan, json.loads(stdout), context)
    assert outcome["control"]["ingested"] == kinds["control"] > 0
    print(f"\nfuzz {context}: " + json.dumps({k: dict(v) for k, v in sorted(outcome.items())}))


def check_fuzzed_prep(out: Path, plan: list[dict], summary: dict, context: str) -> dict:
    """Checks a PREP made from `build_corpus` (either prepare path): row and file accounting, reject codes
    and reasons, no untyped error, decoded shapes. Returns: {kind: Counter of outcomes}."""
    import tensorflow as tf

    from keras_hourglass.data import phi, records

    manifest = json.loads((out / "manifest.json").read_text())

    # Row accounting.
    assert manifest["inputs"]["rows"] == len(plan), context
    assert manifest["ingested"]["rows"] + manifest["rejects"]["rows"] == len(plan), context
    with open(out / "rejects.csv", newline="") as handle:
        rejects = list(csv.DictReader(handle))
    assert len(rejects) == manifest["rejects"]["rows"] == summary["rejects"]["rows"], context

    # File accounting: every file ingested (by salted image hash) xor rejected (by path).
    by_hash = {phi.salted_hash(p["image_path"], SALT, "image"): p for p in plan}
    ingested: dict[str, tuple] = {}
    for split in contract.SPLITS:
        for path in records.list_files(str(out), split):
            for raw in tf.data.TFRecordDataset(path):
                example = records.parse_example(raw)
                image_hash = example["image_hash"].numpy().decode()
                assert image_hash in by_hash, f"unknown image hash {image_hash} {context}"
                assert image_hash not in ingested, f"image written twice {context}"
                ingested[image_hash] = tuple(example["image"].shape)
    rejected = collections.defaultdict(list)  # by image path, through the salted hash rejects.csv carries
    for reject in rejects:
        assert reject["image_hash"] in by_hash, f"reject with an unknown image hash {reject} {context}"
        rejected[by_hash[reject["image_hash"]]["image_path"]].append(reject)
    ingested_paths = {by_hash[h]["image_path"] for h in ingested}
    assert not ingested_paths & set(rejected), f"files both ingested and rejected {context}"
    unaccounted = [p["image_path"] for p in plan if p["image_path"] not in ingested_paths | set(rejected)]
    assert not unaccounted, f"{len(unaccounted)} files in neither the records nor rejects.csv: " \
                            f"{unaccounted[:5]} {context}"
    assert manifest["ingested"]["images"] == len(ingested)

    # Every reject has a reason naming the problem; none escaped the typed errors.
    problems = []
    outcome: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for p in plan:
        if p["image_path"] in ingested_paths:
            outcome[p["kind"]]["ingested"] += 1
            continue
        for reject in rejected[p["image_path"]]:
            outcome[p["kind"]][reject["code"]] += 1
            if not reject["code"].strip() or len(reject["reason"].strip()) < 8:
                problems.append(f"{p['image_path']}: empty code/reason {reject}")
            if reject["code"] == "unexpected_error":
                problems.append(f"{p['image_path']}: an untyped exception escaped the reader: {reject['reason']}")
        expected = EXPECTED.get(p["kind"], "any")
        if expected is None and p["image_path"] not in ingested_paths:
            problems.append(f"{p['image_path']}: a valid file was rejected: {rejected[p['image_path']]}")
        elif isinstance(expected, set) and p["image_path"] in ingested_paths:
            problems.append(f"{p['image_path']}: should have been rejected ({sorted(expected)}) but was ingested")
        elif isinstance(expected, set):
            codes = {r["code"] for r in rejected[p["image_path"]]}
            if not codes <= expected:
                problems.append(f"{p['image_path']}: codes {sorted(codes)}, expected one of {sorted(expected)}")
    assert not problems, f"{len(problems)} problems {context}:\n" + "\n".join(problems[:20])

    # Ingested images decode at training scale (long side 32 -> 32x24, channel last).
    shapes = collections.Counter(ingested.values())
    assert set(shapes) <= {(32, 24, 1)}, f"unexpected image shapes {shapes} {context}"
    return outcome
