"""Reliability: SIGKILL of `hourglass prepare` mid-run, then a rerun, gives the uninterrupted result.

200 tiny valid DICOMs (32x24, a few malignant with boxes, a few corrupt ones to exercise rejects)
are prepared by a `hourglass prepare` subprocess in chunks of 4 images; the process is SIGKILLed as
soon as a chunk marker exists (in soak: killed 3 times, later each time). The same command is then
rerun to completion and compared with an uninterrupted run into another directory (same salt):

- the parsed records are identical (split, stratum, image hash, boxes, labels, decoded pixels);
- rejects.csv is identical, and the rerun resumed (skipped the chunks finished before the kill);
- temporary files left by the kill are hidden names the pipeline never reads;
- the TFRecord files are byte-identical (manifest content_hash), although the killed process and
  the reference run have different hash seeds (this caught Example map order following the hash
  seed; prepare now serialises deterministically).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from test_reliability_fuzz import tiny_dataset
from keras_hourglass import contract

SOAK = os.environ.get("HOURGLASS_SOAK", "") not in ("", "0")
IMAGES = 200
SALT = "kill-salt-3"


def _dataset(root: Path) -> Path:
    rows = ["image_path,patient_id,study_id,laterality,view,label,finding_type,xmin,ymin,xmax,ymax"]
    for i in range(IMAGES):
        relative = f"images/k{i:04d}.dcm"
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if i % 50 == 7:
            path.write_bytes(b"not a dicom at all")  # a reject, to check rejects.csv survives too
        else:
            tiny_dataset(i, phi={"PatientName": "Kill^Test", "PatientID": f"KT{i % 40:03d}",
                                 "PatientBirthDate": "19600101", "AccessionNumber": f"KA{i:05d}"}
                         ).save_as(path, enforce_file_format=True)
        label = ("normal", "benign", "malignant")[i % 3]
        box = "4,6,12,16" if label != "normal" else ",,,"
        rows.append(f"{relative},P{i % 40:03d},S{i:04d},L,CC,{label},{'mass' if label != 'normal' else ''},{box}")
    (root / "annotations.csv").write_text("\n".join(rows) + "\n")
    return root / "annotations.csv"


def _argv(table: Path, root: Path, out: Path) -> list[str]:
    return ["prepare", "--annotations", str(table), "--images-root", str(root), "--out", str(out), "--size", "32",
            "--workers", "1", "--salt", SALT, "--images-per-file", "4", "--quiet"]


def _markers(out: Path) -> int:
    return sum(1 for _ in out.glob("*/*.done"))


def _kill_midway(argv: list[str], out: Path, after_markers: int) -> int:
    """Starts prepare, SIGKILLs it once `after_markers` chunk markers exist. Returns: markers at the kill."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    process = subprocess.Popen([sys.executable, "-m", "keras_hourglass.cli.main", *argv], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while _markers(out) < after_markers:
            if process.poll() is not None:
                pytest.fail(f"prepare ended (exit {process.returncode}) before the kill: "
                            f"{process.stderr.read().decode()[-1500:]}")
            if time.monotonic() > deadline:
                pytest.fail("no chunk marker within 120 s")
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL, f"prepare was not killed (exit {process.returncode})"
    return _markers(out)


def _records(out: Path) -> dict[str, tuple]:
    import tensorflow as tf

    from keras_hourglass.data import records

    parsed = {}
    for split in contract.SPLITS:
        for path in records.list_files(str(out), split):
            for raw in tf.data.TFRecordDataset(path):
                ex = records.parse_example(raw)
                key = ex["image_hash"].numpy().decode()
                assert key not in parsed, f"{key} written twice"
                parsed[key] = (split, os.path.basename(path), ex["label"].numpy().decode(),
                               tuple(np.round(ex["boxes"].numpy(), 4).ravel().tolist()),
                               tuple(ex["box_labels"].numpy().tolist()),
                               ex["patient_hash"].numpy().decode(),
                               np.asarray(ex["image"].numpy()).tobytes())
    return parsed


def test_prepare_sigkill_then_rerun_matches_uninterrupted(tmp_path):
    from keras_hourglass.cli.main import build_parser
    from keras_hourglass.data.prepare import PrepareConfig, prepare

    root = tmp_path / "data"
    table = _dataset(root)
    killed, reference = tmp_path / "killed", tmp_path / "reference"

    at_kill = []
    for number in range(3 if SOAK else 1):
        at_kill.append(_kill_midway(_argv(table, root, killed), killed, after_markers=1 + 10 * number))
        assert not (killed / "manifest.json").exists(), "the run finished before the kill: test is void"
    chunks_total = -(-IMAGES // 4)  # an upper bound (chunks are per split and stratum)
    assert at_kill[-1] < chunks_total

    def run(out: Path) -> dict:
        args = build_parser().parse_args(_argv(table, root, out))
        config = PrepareConfig(  # the same flags the killed subprocess parsed, run in-process
            annotations=args.annotations, images_root=args.images_root, out=args.out, size=args.size,
            workers=args.workers, salt=args.salt, images_per_file=args.images_per_file, quiet=True)
        return prepare(config)

    resumed = run(killed)
    uninterrupted = run(reference)
    assert resumed["manifest"] and uninterrupted["manifest"]
    assert resumed["chunks"]["skipped"] >= at_kill[-1] >= 1, f"the rerun did not resume: {resumed['chunks']}"
    assert uninterrupted["chunks"]["skipped"] == 0

    a, b = _records(killed), _records(reference)
    assert len(b) == IMAGES - IMAGES // 50 and set(a) == set(b)
    different = [k for k in b if a[k] != b[k]]
    assert not different, f"{len(different)} records differ, e.g. {different[:3]}"
    assert (killed / "rejects.csv").read_bytes() == (reference / "rejects.csv").read_bytes()
    leftovers = [p.name for p in killed.rglob("*") if p.name.endswith(".tmp")]
    assert all(name.startswith(".") for name in leftovers), f"visible temporary files left: {leftovers}"
    print(f"\nkilled at {at_kill} chunk markers; rerun skipped {resumed['chunks']['skipped']} of "
          f"{resumed['chunks']['total']} chunks; {len(a)} records identical; hidden .tmp left: {len(leftovers)}")
    differing = [str(p.relative_to(reference)) for p in sorted(reference.rglob("*.tfrecord"))
                 if p.read_bytes() != (killed / p.relative_to(reference)).read_bytes()]
    assert not differing, f"same records but {len(differing)} TFRecord files differ in bytes: {differing[:3]}"
    assert resumed["content_hash"] == uninterrupted["content_hash"]
