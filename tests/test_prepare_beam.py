"""hourglass prepare --runner (Apache Beam, the `beam` extra): the same Examples as the local path, accounting
by the pipeline, fuzzed DICOMs, PHI, path safety, and the one-line errors.

The pipelines run on the DirectRunner with 2 worker processes (``--direct_num_workers 2
--direct_running_mode multi_processing``), as on a cluster: every worker imports the table itself.
About 15 s per pipeline on the 2-core machine (worker start-up: TensorFlow + pydicom imports).
"""

from __future__ import annotations

import collections
import json
import os
import sys
from pathlib import Path

import pytest

from keras_hourglass import contract
from keras_hourglass.cli.main import main as cli_main
from keras_hourglass.data.prepare import PrepareConfig, prepare
from keras_hourglass.errors import InputError
from test_importers import write_mammogram
from test_prepare import SALT, _config, _dataset, _rejects

pytestmark = pytest.mark.slow
TWO_WORKERS = ["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"]


def _beam():
    return pytest.importorskip("apache_beam", reason="the beam extra: pip install 'keras-hourglass[beam]'")


def _examples(prep: Path) -> dict[tuple[str, str], collections.Counter]:
    """(split, stratum) -> multiset of the serialized Examples, read from the files (any sharding)."""
    import tensorflow as tf

    from keras_hourglass.data import records

    found: dict[tuple[str, str], collections.Counter] = collections.defaultdict(collections.Counter)
    for split in contract.SPLITS:
        for stratum in contract.LABELS:
            for path in records.list_files(prep, split, stratum):
                found[(split, stratum)].update(bytes(r.numpy()) for r in tf.data.TFRecordDataset(path))
    return dict(found)


def test_beam_path_writes_the_examples_of_the_local_path_byte_for_byte(tmp_path):
    _beam()
    root = tmp_path / "in"
    (root / "corrupt.dcm").parent.mkdir(parents=True)
    (root / "corrupt.dcm").write_bytes(b"DICM" * 50)
    write_mammogram(root / "ct.dcm", 96, 64, modality="CT")
    extra = [["corrupt.dcm", "MRN-X1", "S", "L", "CC", "normal", "", "", "", "", ""],
             ["ct.dcm", "MRN-X2", "S", "L", "CC", "benign", "mass", 1, 1, 5, 5],
             ["ct.dcm", "MRN-X2", "S", "L", "CC", "malignant", "mass", 1, 1, 9, 9],
             ["gone.dcm", "MRN-G", "S", "L", "CC", "normal", "", "", "", "", ""],
             ["img001.dcm", "MRN-55500001", "STUDY-1", "L", "CC", "benign", "mass", 60, 80, 90, 99]]  # clipped
    table = _dataset(root, images=16, patients=8, extra_rows=extra)
    local = prepare(_config(table, root, tmp_path / "local"))
    beam = prepare(_config(table, root, tmp_path / "beam", runner="DirectRunner", beam_options=TWO_WORKERS))
    assert beam["runner"] == "DirectRunner" and local["runner"] == "local"

    a, b = _examples(tmp_path / "local"), _examples(tmp_path / "beam")
    assert sum(sum(c.values()) for c in a.values()) == 16
    assert a == b  # same bytes per split and stratum; only the cut into files differs
    assert beam["examples_hash"] == local["examples_hash"] and beam["content_hash"] is None
    ml = json.loads((tmp_path / "local" / "manifest.json").read_text())
    mb = json.loads((tmp_path / "beam" / "manifest.json").read_text())
    for key in ("inputs", "ingested", "images_written", "findings", "rejects", "boxes_clipped", "splits", "salt",
                "preprocessing", "preprocessing_rules_fired", "settings_fingerprint", "examples_hash"):
        assert mb[key] == ml[key], key
    assert mb["inputs"]["rows"] == mb["ingested"]["rows"] + mb["rejects"]["rows"] == 21
    assert (tmp_path / "beam" / "rejects.csv").read_bytes() == (tmp_path / "local" / "rejects.csv").read_bytes()
    assert {r["code"] for r in _rejects(tmp_path / "beam")} >= {"unreadable", "not_mammography",
                                                                "missing_file"}
    names = sorted(f["path"] for f in mb["files"])
    on_disk = sorted(str(p.relative_to(tmp_path / "beam")) for p in (tmp_path / "beam").rglob("*.tfrecord"))
    assert names == on_disk and all(n.split("/")[1].count("-of-") == 1 for n in names)
    assert not [p for p in (tmp_path / "beam").rglob("*") if "beam-temp" in str(p)]  # temp files finalised


def test_beam_path_survives_fuzzed_dicoms_and_keeps_paths_inside_the_root(tmp_path, capsys):
    _beam()
    from test_reliability_fuzz import ESCAPES, EXPECTED, SALT as FUZZ_SALT, build_corpus, check_fuzzed_prep

    seed = 20261201
    table, plan = build_corpus(tmp_path / "corpus", 80, seed)
    code = cli_main(["prepare", "--annotations", str(table), "--images-root", str(tmp_path / "corpus"),
                     "--out", str(tmp_path / "prep"), "--size", "32", "--salt", FUZZ_SALT, "--quiet",
                     "--runner", "DirectRunner", "--", *TWO_WORKERS])
    captured = capsys.readouterr()
    context = f"(Beam path, seed {seed}, 80 files)"
    assert code == 0, f"prepare exit {code} {context}: {captured.err[-2000:]}"
    outcome = check_fuzzed_prep(tmp_path / "prep", plan, json.loads(captured.out), context)
    escaped = [k for k in outcome if k in ESCAPES]
    assert escaped and all(set(outcome[k]) == {"outside_root"} for k in escaped), dict(outcome)
    assert EXPECTED["escape_dotdot"] == {"outside_root"}
    assert outcome["control"]["ingested"] > 0


def test_no_phi_in_a_beam_prepared_prep_or_its_output(tmp_path, capfd):
    _beam()
    import phi_scan

    synth, prep = tmp_path / "synth", tmp_path / "prep"
    assert cli_main(["synth", "--out", str(synth), "--images", "12", "--seed", "5", "--height", "96", "--width",
                     "72", "--malignant-rate", "0.4", "--benign-rate", "0.2", "--no-progress"]) == 0
    code = cli_main(["prepare", "--annotations", str(synth / "annotations.csv"), "--images-root", str(synth),
                     "--out", str(prep), "--size", "48", "--quiet", "--salt", "phi-beam", "--runner", "DirectRunner",
                     "--", *TWO_WORKERS])
    captured = capfd.readouterr()  # file-descriptor level: the worker processes' output too
    assert code == 0, captured.err[-2000:]
    (tmp_path / "captured_output.txt").write_text(captured.out + "\n" + captured.err)
    secrets = phi_scan.load_secrets(synth / "phi.json")
    hits, files = phi_scan.scan_tree(tmp_path, secrets, skip=["synth"])
    assert files >= 4 and any(p.suffix == ".tfrecord" for p in prep.rglob("*"))
    assert not hits, "\n".join(map(str, hits[:20]))


def test_beam_errors_are_one_line(tmp_path, capsys, monkeypatch):
    root = tmp_path / "in"
    table = _dataset(root, images=2, patients=1)
    with pytest.raises(InputError, match="^runner: .* but no runner="):
        prepare(_config(table, root, tmp_path / "a", beam_options=["--direct_num_workers", "2"]))
    with pytest.raises(InputError, match="^workers: is for the local path"):
        prepare(_config(table, root, tmp_path / "a", runner="DirectRunner", workers=2))
    monkeypatch.setitem(sys.modules, "apache_beam", None)  # as without the extra
    monkeypatch.delitem(sys.modules, "keras_hourglass.data.beam_ingest", raising=False)
    import keras_hourglass.data

    monkeypatch.delattr(keras_hourglass.data, "beam_ingest", raising=False)
    code = cli_main(["prepare", "--annotations", table, "--images-root", str(root), "--out", str(tmp_path / "b"),
                     "--runner", "DirectRunner"])
    err = capsys.readouterr().err
    assert code == 2 and "pip install 'keras-hourglass[beam]'" in err and len(err.strip().splitlines()) == 1
    monkeypatch.undo()
    _beam()
    with pytest.raises(InputError, match="no_such_option"):
        prepare(_config(table, root, tmp_path / "c", runner="DirectRunner", beam_options=["--no_such_option", "1"]))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "old.txt").write_text("x")
    with pytest.raises(InputError, match="not empty"):
        prepare(_config(table, root, tmp_path / "d", runner="DirectRunner"))
    assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "c" / "manifest.json")


def test_partitions_cover_every_image_once():
    _beam()
    from keras_hourglass.data import beam_ingest

    assert [beam_ingest.partition_count(n) for n in (0, 1, 5, 64, 65, 100_000)] == [1, 1, 5, 64, 64, 6250]
    assert PrepareConfig(annotations=[], images_root="", out="").runner is None


def test_an_exception_on_one_image_is_its_reject_not_a_failed_job(tmp_path, monkeypatch):
    _beam()
    from keras_hourglass.data import ingest

    root = tmp_path / "in"
    table = _dataset(root, images=4, patients=2)
    real = ingest.process_image

    def explode_on_img002(record, settings, salt):
        if record.key == "img002.dcm":
            raise RuntimeError(f"codec bug while reading {record.path} of {record.patient_id}")
        return real(record, settings, salt)

    monkeypatch.setattr(ingest, "process_image", explode_on_img002)  # the in-process DirectRunner sees it
    summary = prepare(_config(table, root, tmp_path / "p", runner="DirectRunner"))
    assert summary["rejects"] == {"rows": 1, "by_code": {"unexpected_error": 1}}
    assert summary["inputs"]["rows"] == 4 and sum(n for s in summary["images_written"].values()
                                                  for n in s.values()) == 3
    (reject,) = _rejects(tmp_path / "p")
    assert reject["row"] == "annotations.csv:3" and "RuntimeError" in reject["reason"]
    assert "img002" not in reject["reason"] and "MRN-" not in reject["reason"]  # path and id redacted
