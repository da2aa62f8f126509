"""hourglass prepare (local path): accounting, boxes, splits, PHI, resumability, workers, CLI."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from keras_hourglass import contract
from keras_hourglass.cli.main import main as cli_main
from keras_hourglass.data import phi, records
from keras_hourglass.data.dicom import PixelTransform
from keras_hourglass.data.prepare import PrepareConfig, prepare
from keras_hourglass.errors import InputError
from test_importers import CANONICAL, PHI, cbis_fixture, write_csv, write_mammogram

SALT = "test-salt-0001"
LABELS4 = ["normal", "benign", "high_risk", "malignant"]


def _dataset(root: Path, images: int = 16, patients: int = 8, extra_rows=(), phi=None, split=None) -> str:
    """`images` 96x64 DICOMs of `patients` patients, strata in turn; returns the CSV path."""
    rows = []
    for i in range(images):
        laterality = "L" if i % 2 else "R"
        name = f"img{i:03d}.dcm"
        write_mammogram(root / name, 96, 64, laterality=laterality, seed=i, phi=phi)
        patient = f"MRN-5550{i % patients:04d}"
        label = LABELS4[i % 4]
        box = ["", "", "", ""] if label == "normal" else [8, 16, 28, 40]
        row = [name, patient, f"STUDY-{i % patients}", laterality, "CC", label,
               "" if label == "normal" else "mass", *box]
        rows.append(row + ([split(i)] if split else []))
    rows += [list(r) + ([""] if split else []) for r in extra_rows]
    return write_csv(root / "annotations.csv", CANONICAL + (["split"] if split else []), rows)


def _config(table, root, out, **kw) -> PrepareConfig:
    args = dict(annotations=[str(table)], images_root=str(root), out=str(out), size=48, salt=SALT,
                images_per_file=3, quiet=True)
    args.update(kw)
    return PrepareConfig(**args)


def _read_all(prep) -> dict[str, dict]:
    """image_hash -> parsed record (numpy), over every split."""
    out = {}
    for split in contract.SPLITS:
        for path in records.list_files(prep, split):
            for raw in tf.data.TFRecordDataset(path):
                ex = {k: v.numpy() for k, v in records.parse_example(raw).items()}
                ex["split"] = split
                ex["file"] = os.path.basename(path)
                out[ex["image_hash"].decode()] = ex
    return out


def _rejects(prep) -> list[dict]:
    import csv
    with open(os.path.join(prep, "rejects.csv"), newline="") as handle:
        return list(csv.DictReader(handle))


def test_every_row_ingested_or_rejected_and_boxes_reach_the_image_frame(tmp_path):
    root = tmp_path / "in"
    (root / "corrupt.dcm").parent.mkdir(parents=True)
    (root / "corrupt.dcm").write_bytes(b"DICM" * 50)
    write_mammogram(root / "ct.dcm", 96, 64, modality="CT")
    write_mammogram(root / "edge.dcm", 96, 64, laterality="L")
    write_mammogram(root / "lat.dcm", 96, 64, laterality="L")
    extra = [
        ["corrupt.dcm", "MRN-X1", "S", "L", "CC", "normal", "", "", "", "", ""],          # unreadable
        ["ct.dcm", "MRN-X2", "S", "L", "CC", "benign", "mass", 1, 1, 5, 5],                # not MG
        ["ct.dcm", "MRN-X2", "S", "L", "CC", "malignant", "mass", 1, 1, 9, 9],             # its sibling
        ["edge.dcm", "MRN-X3", "S", "L", "CC", "malignant", "mass", 40, 80, 90, 200],      # clipped
        ["img000.dcm", "MRN-55500000", "STUDY-0", "R", "CC", "benign", "mass", 70, 100, 90, 120],  # outside
        ["nothere.dcm", "MRN-X4", "S", "L", "CC", "normal", "", "", "", "", ""],          # missing file
        ["img001.dcm", "MRN-55500001", "STUDY-1", "L", "CC", "cancer", "mass", 1, 1, 2, 2],  # bad label
        ["lat.dcm", "MRN-X5", "S", "R", "CC", "malignant", "mass", 1, 1, 9, 9],           # file says L
    ]
    table = _dataset(root, extra_rows=extra)
    summary = prepare(_config(table, root, tmp_path / "prep"))
    manifest = json.loads((tmp_path / "prep" / "manifest.json").read_text())
    rejects = _rejects(tmp_path / "prep")
    total = 16 + len(extra)
    assert manifest["inputs"]["rows"] == total == summary["rows"]
    assert manifest["ingested"]["rows"] + manifest["rejects"]["rows"] == total
    assert len(rejects) == manifest["rejects"]["rows"]
    codes = {r["row"].split(":")[1]: r["code"] for r in rejects}
    assert codes == {"1": "sibling_rejected", "17": "unreadable", "18": "not_mammography",
                     "19": "not_mammography", "21": "degenerate_box", "22": "missing_file",
                     "23": "bad_label", "2": "sibling_rejected", "24": "laterality_mismatch"}
    assert all(r["reason"] for r in rejects)
    assert manifest["boxes_clipped"] == 1
    written = _read_all(tmp_path / "prep")
    assert len(written) == manifest["ingested"]["images"] == 15  # 16 - img000 - img001 + edge
    assert sum(n for split in manifest["images_written"].values() for n in split.values()) == 15
    assert manifest["findings"] == {"benign": 3, "high_risk": 4, "malignant": 5}
    assert manifest["code_version"] and manifest["salt"] == SALT and manifest["preprocessing"]["size"] == 48
    for ex in written.values():
        assert ex["label"].decode() == contract.stratum_of(b.decode() for b in ex["box_labels"])
        assert ex["file"].startswith(ex["label"].decode() + "-")
        assert ex["image"].shape == (48, 32, 1)
    # Boxes: original (ymin, xmin, ymax, xmax) forward-mapped to the 48x32 image (R breasts mirrored).
    for i in (2, 3):  # img002 high_risk R, img003 malignant L
        ex = written[phi.salted_hash(f"img{i:03d}.dcm", SALT, "image")]
        transform = PixelTransform.from_list(ex["transform"])
        assert transform.flipped == (i == 2)
        np.testing.assert_allclose(ex["boxes"], transform.forward_boxes(np.array([[16, 8, 40, 28]])), atol=1e-4)
        np.testing.assert_allclose(ex["boxes"], [[8, 18, 20, 28]] if i == 2 else [[8, 4, 20, 14]], atol=1e-4)
    edge = written[phi.salted_hash("edge.dcm", SALT, "image")]
    np.testing.assert_allclose(edge["boxes"], [[40.0, 40 * 32 / 64, 48.0, 32.0]], atol=1e-4)  # clipped
    flipped = [PixelTransform.from_list(e["transform"]).flipped for e in written.values()]
    assert any(flipped) and not all(flipped)  # right breasts mirrored to face left


def test_patients_never_straddle_splits(tmp_path):
    root = tmp_path / "in"
    table = _dataset(root, images=24, patients=12)
    prepare(_config(table, root, tmp_path / "prep", val_fraction=0.3, test_fraction=0.3))
    splits_of = collections.defaultdict(set)
    for ex in _read_all(tmp_path / "prep").values():
        splits_of[ex["patient_hash"]].add(ex["split"])
    assert len(splits_of) == 12
    assert all(len(s) == 1 for s in splits_of.values())
    assert {s for v in splits_of.values() for s in v} == {"train", "val", "test"}
    # A dataset split column is honoured; a patient the source put in two splits goes to test.
    root2 = tmp_path / "in2"
    table = _dataset(root2, images=8, patients=4, split=lambda i: "train" if i < 6 else "test")
    prepare(_config(table, root2, tmp_path / "prep2", val_fraction=0.0))
    manifest = json.loads((tmp_path / "prep2" / "manifest.json").read_text())
    assert manifest["splits"]["conflicts"] == 2  # patients 2 and 3 (images 2,6 and 3,7)
    by_patient = collections.defaultdict(set)
    for ex in _read_all(tmp_path / "prep2").values():
        by_patient[ex["patient_hash"]].add(ex["split"])
    assert sorted(tuple(v) for v in by_patient.values()) == [("test",), ("test",), ("train",), ("train",)]


def test_small_datasets_still_get_val_and_test_patients():
    from keras_hourglass.data.importers import ImageRecord
    from keras_hourglass.data.splits import assign_splits

    images = [ImageRecord(key=f"{i}.dcm", path="", patient_id=f"P{i}", study_id="S", laterality="L", view="CC",
                          findings=[], rows=[str(i)]) for i in range(3)]
    split_of, stats = assign_splits(images, "s", val_fraction=0.01, test_fraction=0.01)
    assert sorted(split_of.values()) == ["test", "train", "val"]
    assert assign_splits(images, "s", val_fraction=0.01, test_fraction=0.01)[0] == split_of  # stable
    assert set(assign_splits(images, "s", val_fraction=0.0, test_fraction=0.0)[0].values()) == {"train"}
    assert set(assign_splits(images[:1], "s", val_fraction=0.5, test_fraction=0.4)[0].values()) <= {
        "train", "val", "test"}


def _variants(value: str) -> set[bytes]:
    texts = {value, value.upper(), value.lower(), value.replace("^", " "), value.replace("^", ", ")}
    if value.isdigit() and len(value) == 8:
        texts |= {f"{value[:4]}-{value[4:6]}-{value[6:]}", f"{value[6:]}/{value[4:6]}/{value[:4]}"}
    out = set()
    for text in texts:
        out |= {text.encode("utf-8"), text.encode("utf-16-le"), text.encode("utf-16-be")}
    return out


def test_no_patient_identifier_in_any_output_byte(tmp_path):
    root = tmp_path / "in"
    csv_ids = [f"MRN-5550{i:04d}" for i in range(4)]
    extra = [
        # rejected rows whose image path and reason would carry the patient id
        [f"{csv_ids[0]}/missing.dcm", csv_ids[0], "STUDY-0", "L", "CC", "normal", "", "", "", "", ""],
        ["img002.dcm", csv_ids[2], "STUDY-2", "L", "CC", "benign", "lump", 1, 1, 2, 2],
        # shifted columns: identifiers in cells whose value a reason might echo
        ["img003.dcm", csv_ids[3], "STUDY-3", "L", "CC", PHI["PatientName"], "mass", 1, 1, 2, 2],
        ["img001.dcm", csv_ids[1], "STUDY-1", "L", "CC", "benign", "mass", PHI["PatientBirthDate"], 1, "x", 2],
        ["img001.dcm", csv_ids[1], "STUDY-1", PHI["AccessionNumber"], "CC", "benign", "mass", 1, 1, 2, 2],
    ]
    table = _dataset(root, images=8, patients=4, extra_rows=extra)
    prepare(_config(table, root, tmp_path / "prep"))
    secrets = set()
    for value in [*PHI.values(), *csv_ids]:
        secrets |= _variants(value)
    files = [p for p in (tmp_path / "prep").rglob("*") if p.is_file()]
    assert any(p.suffix == ".tfrecord" for p in files) and any(p.name == "rejects.csv" for p in files)
    blobs = [(str(p), p.read_bytes()) for p in files]
    for path in (p for p in files if p.suffix == ".tfrecord"):
        for raw in tf.data.TFRecordDataset(str(path)):
            example = tf.train.Example.FromString(raw.numpy())
            for key, feature in example.features.feature.items():
                if key != "image/png":
                    blobs.append((f"{path}:{key}", b"\0".join(feature.bytes_list.value)))
    for name, blob in blobs:
        for secret in secrets:
            assert secret not in blob, f"{secret!r} found in {name}"
    rejects = _rejects(tmp_path / "prep")
    assert len(rejects) == 8 and all(set(r) == {"row", "image_hash", "code", "reason"} for r in rejects)
    assert all(len(r["image_hash"]) == 16 and r["row"].startswith("annotations.csv:") for r in rejects)


def test_interrupted_run_resumes_to_the_same_records(tmp_path):
    root = tmp_path / "in"
    table = _dataset(root, images=12, patients=6)
    config = _config(table, root, tmp_path / "prep")
    first = prepare(config)
    before = _read_all(tmp_path / "prep")
    train = sorted((tmp_path / "prep" / "train").glob("*.tfrecord"))
    victim = train[1]
    victim.unlink()  # lost file, marker kept: redone
    (tmp_path / "prep" / "train" / train[2].name.replace(".tfrecord", ".done")).unlink()  # no marker: redone
    (tmp_path / "prep" / "manifest.json").unlink()
    (tmp_path / "prep" / "train" / f".{train[0].name}.123.tmp").write_bytes(b"half a chunk")
    second = prepare(config)
    assert second["chunks"]["written"] == 2
    assert second["chunks"]["skipped"] == first["chunks"]["total"] - 2
    assert second["content_hash"] == first["content_hash"]
    after = _read_all(tmp_path / "prep")
    assert sorted(after) == sorted(before)
    for key in before:
        np.testing.assert_array_equal(after[key]["image"], before[key]["image"])
    third = prepare(_config(table, root, tmp_path / "prep", salt=None))  # salt reused from the state
    assert third["chunks"]["written"] == 0 and third["content_hash"] == first["content_hash"]
    with pytest.raises(InputError, match="other settings"):
        prepare(_config(table, root, tmp_path / "prep", size=64))
    (tmp_path / "old" / "shards").mkdir(parents=True)  # the layout before issue 14: never mixed with this one
    with pytest.raises(InputError, match="older version"):
        prepare(_config(table, root, tmp_path / "old"))


def test_unwritable_output_is_a_one_line_input_error(tmp_path):
    root = tmp_path / "in"
    table = _dataset(root, images=2, patients=1)
    (tmp_path / "prep").mkdir()
    (tmp_path / "prep" / "train").write_text("a file where the split directory goes")
    with pytest.raises(InputError, match="cannot write"):
        prepare(_config(table, root, tmp_path / "prep", val_fraction=0.0, test_fraction=0.0))


@pytest.mark.slow
def test_two_worker_processes_write_the_same_records(tmp_path):
    root = tmp_path / "in"
    table = _dataset(root, images=8, patients=4)
    one = prepare(_config(table, root, tmp_path / "w1", workers=1))
    two = prepare(_config(table, root, tmp_path / "w2", workers=2))
    assert one["content_hash"] == two["content_hash"]


@pytest.mark.slow
def test_a_worker_that_dies_costs_only_its_image(tmp_path):
    from keras_hourglass.data import importers, ingest, prepare as prep
    from test_importers import crash_on_marked_images

    root = tmp_path / "in"
    items = []
    for i in range(6):
        key = "crash.dcm" if i == 4 else f"ok{i}.dcm"
        write_mammogram(root / key, 32, 24, seed=i)
        record = importers.ImageRecord(key=key, path=str(root / key), patient_id=f"P{i}", study_id="S",
                                       laterality="L", view="CC", findings=[], rows=[f"t.csv:{i + 1}"])
        items.append(prep._Planned(record, f"h{i}", "p", "s", "train", "normal"))
    settings = ingest.IngestSettings(long_side=16)
    results = list(prep._results(items, settings, SALT, workers=2, batch=2, fn=crash_on_marked_images))
    assert [r["key"] for r in results] == [p.record.key for p in items]  # order kept
    assert [r["status"] for r in results] == ["ok"] * 4 + ["rejected", "ok"]
    assert results[4]["rejects"] == [("t.csv:5", "decoder_crash", results[4]["rejects"][0][2])]


def test_vindr_and_cbis_through_prepare(tmp_path):
    root = tmp_path / "cbis"
    tables, _ = cbis_fixture(root)
    prepare(PrepareConfig(annotations=tables, images_root=str(root), out=str(tmp_path / "p"), fmt="cbis-ddsm",
                          size=48, salt=SALT, quiet=True))
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert manifest["inputs"]["rows"] == 4 and manifest["ingested"]["rows"] == 3
    assert manifest["images_written"]["test"]["benign"] == 1
    written = _read_all(tmp_path / "p")
    calc = next(e for e in written.values() if e["split"] == "test")
    transform = PixelTransform.from_list(calc["transform"])
    np.testing.assert_allclose(calc["boxes"], transform.forward_boxes(np.array([[10, 12, 20, 16]])), atol=1e-4)
    assert calc["laterality"] == b"R"
    vroot = tmp_path / "vindr"
    write_mammogram(vroot / "images" / "stA" / "imA.dicom", 96, 64)
    write_mammogram(vroot / "images" / "stB" / "imB.dicom", 96, 64)
    from test_importers import VINDR
    table = write_csv(vroot / "finding_annotations.csv", VINDR, [
        ["stA", "se", "imA", "L", "CC", 96, 64, "", "", "['Mass']", "BI-RADS 5", 8, 16, 28, 40, "training"],
        ["stB", "se", "imB", "L", "CC", 96, 64, "", "", "['No Finding']", "", "", "", "", "", "test"],
        ["stC", "se", "imC", "L", "CC", 128, 64, "", "", "['No Finding']", "", "", "", "", "", "test"]])
    write_mammogram(vroot / "images" / "stC" / "imC.dicom", 96, 64)  # the table says 128 rows
    prepare(PrepareConfig(annotations=[table], images_root=str(vroot), out=str(tmp_path / "v"), fmt="vindr",
                          size=48, salt=SALT, quiet=True, val_fraction=0.0))
    manifest = json.loads((tmp_path / "v" / "manifest.json").read_text())
    assert manifest["images_written"]["train"]["malignant"] == 1
    assert manifest["images_written"]["test"]["normal"] == 1
    assert manifest["rejects"]["by_code"] == {"size_mismatch": 1}


def test_ingest_side_imports_no_tensorflow(imports_tensorflow):
    assert not imports_tensorflow("keras_hourglass.data.prepare", "keras_hourglass.data.ingest",
                                  "keras_hourglass.cli.prepare", "keras_hourglass.data.importers.cbis_ddsm",
                                  "keras_hourglass.data.importers.vindr")


def test_cli_help_errors_and_tfio(tmp_path, capsys):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, "-m", "keras_hourglass.cli.main", "prepare", "--help"],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0 and "examples:" in out.stdout and "--runner" in out.stdout and "--num-shards" not in out.stdout
    (tmp_path / "root").mkdir()
    code = cli_main(["prepare", "--annotations", str(tmp_path / "no.csv"), "--images-root", str(tmp_path / "root"),
                     "--out", str(tmp_path / "p")])
    assert code == 2 and "no.csv: annotation table not found" in capsys.readouterr().err
    table = _dataset(tmp_path / "in", images=1, patients=1)
    code = cli_main(["prepare", "--annotations", table, "--images-root", str(tmp_path / "in"),
                     "--out", str(tmp_path / "p"), "--decoder", "tfio"])
    err = capsys.readouterr().err
    assert code == 2 and ("tfio" in err.lower() or "tensorflow" in err.lower())
    assert len(err.strip().splitlines()) == 1
    code = cli_main(["prepare", "--annotations", table, "--images-root", str(tmp_path / "in"),
                     "--out", str(tmp_path / "ok"), "--size", "48", "--quiet", "--salt", SALT])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["runner"] == "local" and summary["inputs"]["rows"] == 1


@pytest.mark.tfio
def test_tfio_decoder_writes_the_same_records_as_pydicom(tmp_path):
    from keras_hourglass.data.tfio_decoder import tfio_status

    available, reason = tfio_status()
    if not available and os.environ.get("HOURGLASS_REQUIRE_TFIO", "") in ("", "0"):
        pytest.skip(reason)
    root = tmp_path / "in"
    table = _dataset(root, images=4, patients=2)
    prepare(_config(table, root, tmp_path / "py"))
    prepare(_config(table, root, tmp_path / "tfio", decoder="tfio"))
    a, b = _read_all(tmp_path / "py"), _read_all(tmp_path / "tfio")
    assert sorted(a) == sorted(b) and len(a) == 4
    for key in a:
        np.testing.assert_allclose(a[key]["image"], b[key]["image"], atol=2e-3)
        np.testing.assert_allclose(a[key]["boxes"], b[key]["boxes"], atol=1e-4)


def test_rejects_name_rows_and_image_hashes_never_paths(tmp_path):
    """Folders named after patients (as real exports do) reach no artifact: rejects carry the row and the
    salted image hash; another row's id in a path or a shifted cell is not echoed either."""
    root = tmp_path / "in"
    write_mammogram(root / "DOE^JANE" / "MRN901234" / "L_CC.dcm", 96, 64)
    (root / "ROE^RICHARD").mkdir()
    (root / "ROE^RICHARD" / "MRN445566_R_CC.dcm").write_bytes(b"not a dicom")
    extra = [
        ["DOE^JANE/MRN901234/L_CC.dcm", "MRN-OTHER-1", "S-1", "L", "CC", "normal", "", "", "", "", ""],
        ["ROE^RICHARD/MRN445566_R_CC.dcm", "MRN-OTHER-2", "S-2", "R", "CC", "normal", "", "", "", "", ""],
        ["DOE^JANE/MRN901234/gone.dcm", "MRN-OTHER-3", "S-3", "L", "CC", "normal", "", "", "", "", ""],
        ["../MRN778899/x.dcm", "MRN-OTHER-4", "S-4", "L", "CC", "normal", "", "", "", "", ""],
        ["img000.dcm", "MRN-OTHER-5", "S-5", "L", "CC", "MRN901234", "mass", 1, 1, 5, 5],
    ]
    table = _dataset(root, images=4, patients=2, extra_rows=extra)
    out = tmp_path / "prep"
    prepare(_config(table, root, out))
    rejects = {r["row"]: r for r in _rejects(out)}
    by_code = {r["code"] for r in rejects.values()}
    assert {"unreadable", "missing_file", "outside_root", "bad_label"} <= by_code
    image_hash = phi.salted_hash("ROE^RICHARD/MRN445566_R_CC.dcm", SALT, "image")
    assert rejects["annotations.csv:6"]["image_hash"] == image_hash
    for path in [p for p in out.rglob("*") if p.is_file()]:
        data = path.read_bytes()
        for secret in (b"DOE", b"JANE", b"ROE^RICHARD", b"RICHARD", b"MRN901234", b"MRN445566", b"MRN778899",
                       b"L_CC.dcm", b"gone.dcm", b"MRN-OTHER"):
            assert secret not in data, f"{secret!r} in {path}"


def test_out_inside_the_images_root_is_refused(tmp_path):
    table = _dataset(tmp_path / "in", images=1, patients=1)
    for out in (tmp_path / "in", tmp_path / "in" / "prep"):
        with pytest.raises(InputError, match="^out: is images_root= or inside it"):
            prepare(_config(table, tmp_path / "in", out))
    os.symlink(tmp_path / "in", tmp_path / "alias")  # the same directory under another name
    with pytest.raises(InputError, match="^out: is images_root= or inside it"):
        prepare(_config(table, tmp_path / "alias", tmp_path / "in" / "p2"))
    assert not (tmp_path / "in" / "prep").exists() and not (tmp_path / "in" / "p2").exists()


def test_duplicate_rows_count_once_and_are_counted_in_the_manifest(tmp_path):
    root = tmp_path / "in"
    write_mammogram(root / "m.dcm", 96, 64)
    row = ["m.dcm", "MRN-1", "S-1", "L", "CC", "malignant", "mass", 8, 16, 28, 40]
    table = write_csv(root / "annotations.csv", CANONICAL, [row, row, row])
    prepare(_config(table, root, tmp_path / "prep", val_fraction=0.0, test_fraction=0.0))
    manifest = json.loads((tmp_path / "prep" / "manifest.json").read_text())
    assert manifest["ingested"] == {"rows": 3, "images": 1, "duplicate_rows_merged": 2}
    assert manifest["findings"]["malignant"] == 1
    (example,) = _read_all(tmp_path / "prep").values()
    assert len(example["boxes"]) == 1
