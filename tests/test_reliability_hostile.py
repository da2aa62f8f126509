"""Reliability: hostile and careless input through every subcommand (issue #11).

Table-driven. Every case runs the real CLI in-process (`tests/hostile.py:run_cli`, cwd inside the
test's world so stray relative writes are caught) and is checked for:

- the exit code (2 for bad arguments or inputs, 1 for a server-side failure, 0 where the input is
  accepted and its bad rows rejected), never an exception escaping (a "traceback");
- on an error, exactly one line on stderr, ``hourglass CMD: error: ...``, naming the flag or file;
- nothing created, changed or removed in the world outside the case's own output directory;
- a byte scan (`tests/phi_scan.py`: UTF-8/16 variants, inside zips, TFRecords, PNG text) of every
  artifact and of the captured stdout/stderr for the PHI planted in folder names, file names and
  every table column;
- for `prepare`: ingested + rejected == rows, every path escaping the root rejected as
  ``outside_root`` whether its target exists or not, and no file outside the root opened (an audit
  hook records every open of this process; `--workers 1` keeps the decoding in it).

What it tries: paths escaping --images-root in every spelling (`hostile.escaping_paths`: ``..``,
absolute, /etc/shadow, /proc, symlinked files, folders and chains, dangling links) in the canonical,
VinDr and CBIS-DDSM importers (ROI masks and TCIA fallback folders included); PHI in folders, file
names and each column; control characters, NUL, newlines and 5,000-character paths; tables without
header, empty, header-only, UTF-16/32, NUL-filled, workbooks, ragged and unterminated; impossible
sizes and counts; --out/--base-path that is a file, under a file, or inside --images-root; models
that are corrupt, truncated, empty, directories, zips without config, classifiers, 3-channel or
2-input models; TF Serving test doubles (REST and gRPC) that answer HTML, JSON of the wrong shape or
type, NaN, too many marks, huge replies, slow or dripping replies, 503 forever, redirects to
file://, errors with terminal escapes; --rest with file:// and ftp:// URLs; predict --version of a
local base path. Plus `GENERATED` random hostile table rows (60 in the suite, 2,000 in `make soak`).

The figures (cases, tracebacks, rows lost, PHI hits, outside reads) are printed by the last test
and written to $HOURGLASS_HOSTILE_REPORT when set (`make soak` does).
"""

from __future__ import annotations

import csv
import http.server
import json
import os
import random
import shutil
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

import phi_scan
from dicom_factory import write_mammogram_file
from hostile import (OpenRecorder, changed_outside, escaping_paths, plant_links, run_cli, snapshot, unfreeze_gc)
from keras_hourglass import contract

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SOAK = os.environ.get("HOURGLASS_SOAK", "") not in ("", "0")
GENERATED = int(os.environ.get("HOURGLASS_HOSTILE_COUNT", 2000 if SOAK else 60))
SEED = int(os.environ.get("HOURGLASS_HOSTILE_SEED", 20261211))
SALT = "hostile-salt-11"
CANONICAL = ["image_path", "patient_id", "study_id", "laterality", "view", "label", "finding_type",
             "xmin", "ymin", "xmax", "ymax"]

# The PHI planted in folder names, file names and table cells; none may appear in any output.
PLANTED = {
    "PatientName": ["DOE^JANE", "ROE^RICHARD^QUINCY"],
    "PatientID": ["MRN901234", "MRN445566", "MRN778899", "MRN112233", "MRN665544"],
    "Planted": ["SSN-078-05-1120", "ACCN-2026-55501", "Zyxwvutsrq"],
}
FIGURES = {"cases": 0, "tracebacks": 0, "rows": 0, "rows_lost": 0, "phi_hits": 0, "outside_reads": 0}
SCANNER = phi_scan.Scanner(PLANTED)


# ------------------------------------------------------------------------------------------- world
def _pixels(rows: int = 64, cols: int = 48, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols]
    inside = ((y - rows / 2) / (rows * 0.48)) ** 2 + (x / (cols * 0.8)) ** 2 <= 1
    return np.where(inside, 1800 + rng.integers(0, 600, (rows, cols)), 60).astype(np.uint16)


def _dicom(path, seed: int = 0) -> str:
    return write_mammogram_file(path, _pixels(seed=seed), laterality="L", view="CC",
                                PatientName="Fake^Person", PatientID="FAKE-0001")


def _write_table(path, rows, header=CANONICAL) -> str:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return os.fspath(path)


def _models(directory: Path) -> dict[str, str]:
    import keras

    from serving_doubles import conv_model

    directory.mkdir()
    paths = {}
    good = directory / "good.keras"
    conv_model().save(good)
    paths["good"] = str(good)
    image = keras.Input((None, None, 1))
    x = keras.layers.Conv2D(3, 3, padding="same")(image)
    keras.Model(image, x).save(directory / "rgb3.keras")
    flat = keras.Input((16,))
    keras.Model(flat, keras.layers.Dense(2)(flat)).save(directory / "classifier.keras")
    a, b = keras.Input((None, None, 1)), keras.Input((None, None, 1))
    keras.Model([a, b], keras.layers.Conv2D(1, 3, padding="same")(keras.layers.Add()([a, b]))).save(
        directory / "two_inputs.keras")
    data = good.read_bytes()
    (directory / "truncated.keras").write_bytes(data[: len(data) // 2])
    (directory / "corrupt.keras").write_bytes(bytes(random.Random(1).randrange(256) for _ in range(4000)))
    (directory / "text.keras").write_text("this is not a model\n")
    (directory / "empty.keras").write_bytes(b"")
    with zipfile.ZipFile(directory / "noconfig.keras", "w") as archive:
        archive.writestr("metadata.json", "{}")
    with zipfile.ZipFile(directory / "badconfig.keras", "w") as archive:
        archive.writestr("config.json", "{not json")
        archive.writestr("metadata.json", "{}")
    (directory / "dir.keras").mkdir()
    for name in ("rgb3", "classifier", "two_inputs", "truncated", "corrupt", "text", "empty", "noconfig",
                 "badconfig", "dir"):
        paths[name] = str(directory / f"{name}.keras")
    return paths


class World:
    """Everything the cases use, under one directory; `outs` holds the per-case output directories."""

    def __init__(self, base: Path):
        self.base = base
        self.root = base / "root"
        self.outside = base / "outside"
        self.outs = base / "outs"
        self.outs.mkdir()
        self.afile = base / "afile.txt"
        self.afile.write_text("a file where a directory is expected\n")
        self.canary = _dicom(self.outside / "canary.dcm", seed=99)
        _dicom(self.outside / "im1.dicom", seed=98)
        plant_links(self.root, self.outside, self.canary)
        # Images in folders named after patients, as real exports do.
        self.good = ["DOE^JANE/MRN901234/L_CC.dcm", "ROE^RICHARD^QUINCY/MRN445566_R_MLO.dcm", "plain/p1.dcm",
                     "plain/p2.dcm"]
        for i, rel in enumerate(self.good):
            _dicom(self.root / rel, seed=i)
        (self.root / "DOE^JANE" / "MRN901234" / "SSN-078-05-1120.dcm").write_bytes(b"not a dicom file")
        self.clean_table = _write_table(base / "clean.csv", [
            [rel, f"PAT{i}", f"ST{i}", "L", "CC", "malignant" if i % 2 else "normal", "mass" if i % 2 else "",
             *([4, 6, 20, 30] if i % 2 else ["", "", "", ""])] for i, rel in enumerate(self.good)])
        outcome = run_cli(["prepare", "--annotations", self.clean_table, "--images-root", self.root, "--out",
                           base / "prep", "--size", "64", "--salt", SALT, "--quiet", "--val-fraction", "0",
                           "--test-fraction", "0.5"])
        assert outcome.code == 0, outcome
        self.prep = base / "prep"
        self.nomanifest = base / "nomanifest"
        self.nomanifest.mkdir()
        self.models = _models(base / "models")
        self.dicom = _dicom(base / "exam" / "L_CC.dcm", seed=7)
        self.serving = base / "serving" / "hourglass"
        from export.saved_model import export_detector
        from export.signatures import HourglassDetector
        from serving_doubles import conv_model

        detector = HourglassDetector(conv_model(), stride=2, input_multiple=2, max_marks=4, threshold=-1e9,
                                     long_side=64)
        export_detector(detector, self.serving, verify="none")
        shutil.copytree(self.serving / "1", self.serving / "2")

    def out(self, case_id: str) -> Path:
        return self.outs / case_id


@pytest.fixture(scope="module", autouse=True)
def _collector_back_after_the_module():
    with unfreeze_gc():
        yield


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return World(tmp_path_factory.mktemp("hostile"))


# -------------------------------------------------------------------------------------- checking
def _scan_phi(outcome, out: Path | None) -> list:
    hits = SCANNER.scan_blob((outcome.out + "\n" + outcome.err).encode("utf-8"), "<stdout/stderr>")
    if out is not None and out.exists():
        hits += SCANNER.scan_tree(out)[0]
    return hits


def check(world: World, case_id: str, argv: list, *, code: int, names: str | None = None, cwd=None) -> "Outcome":
    """Runs one case and asserts the common contract. Returns: the outcome."""
    out = world.out(case_id)
    argv = [a.replace("{OUT}", str(out)) if isinstance(a, str) else a for a in argv]
    before = snapshot(world.base, skip=(world.outs,))
    previous = os.getcwd()
    os.chdir(cwd or world.base)
    try:
        with OpenRecorder() as recorder:
            outcome = run_cli(argv)
    finally:
        os.chdir(previous)
    after = snapshot(world.base, skip=(world.outs,))
    FIGURES["cases"] += 1
    FIGURES["tracebacks"] += bool(outcome.traceback)
    hits = _scan_phi(outcome, out)
    FIGURES["phi_hits"] += len(hits)
    outside = recorder.under(world.outside) + [p for p in recorder.opened if p.startswith(("/etc/", "/proc/self/env"))]
    FIGURES["outside_reads"] += len(outside)
    assert not outcome.traceback, f"{case_id}: traceback\n{outcome.traceback}"
    assert outcome.code == code, f"{case_id}: exit {outcome.code}, expected {code}: {outcome}"
    if code != 0:
        lines = outcome.err_lines
        assert len(lines) == 1, f"{case_id}: {len(lines)} stderr lines: {lines}"
        assert lines[0].startswith((f"hourglass {argv[0]}: error: ", "hourglass: error: ")), f"{case_id}: {lines[0]!r}"
        assert "\x1b" not in outcome.err and "\r" not in outcome.err, f"{case_id}: raw control characters"
        if names:
            assert names in lines[0], f"{case_id}: {names!r} not named in {lines[0]!r}"
    assert not changed_outside(before, after), f"{case_id}: wrote outside --out: {changed_outside(before, after)}"
    assert not hits, f"{case_id}: PHI in the outputs: " + "; ".join(map(str, hits[:5]))
    assert not outside, f"{case_id}: opened files outside the root: {outside[:5]}"
    return outcome


# --------------------------------------------------------------------- outputs and arguments (all)
def _output_cases(w: World) -> list[tuple]:
    under = str(w.afile / "sub")
    prep = str(w.prep)
    good = w.models["good"]
    return [
        ("synth-out-file", ["synth", "--out", str(w.afile), "--images", "1"], 2, "--out exists and is not a directory"),
        ("synth-out-under-file", ["synth", "--out", under, "--images", "1"], 2, "is a file"),
        ("synth-huge-height", ["synth", "--out", "{OUT}", "--images", "1", "--height", "1000000"], 2, "--height"),
        ("synth-zero-images", ["synth", "--out", "{OUT}", "--images", "0"], 2, "--images"),
        ("synth-rate", ["synth", "--out", "{OUT}", "--images", "1", "--malignant-rate", "2"], 2, "--malignant-rate"),
        ("prepare-out-file", ["prepare", "--annotations", w.clean_table, "--images-root", str(w.root), "--out",
                              str(w.afile)], 2, "afile.txt"),
        ("prepare-out-under-file", ["prepare", "--annotations", w.clean_table, "--images-root", str(w.root),
                                    "--out", under], 2, "afile.txt"),
        ("prepare-out-is-root", ["prepare", "--annotations", w.clean_table, "--images-root", str(w.root), "--out",
                                 str(w.root)], 2, "--out"),
        ("prepare-out-in-root", ["prepare", "--annotations", w.clean_table, "--images-root", str(w.root), "--out",
                                 str(w.root / "plain" / "prep")], 2, "--out"),
        ("prepare-root-missing", ["prepare", "--annotations", w.clean_table, "--images-root",
                                  str(w.base / "nope"), "--out", "{OUT}"], 2, "nope"),
        ("prepare-root-is-file", ["prepare", "--annotations", w.clean_table, "--images-root", str(w.afile),
                                  "--out", "{OUT}"], 2, "afile.txt"),
        ("prepare-size-0", ["prepare", "--annotations", w.clean_table, "--images-root", str(w.root), "--out",
                            "{OUT}", "--size", "0"], 2, "--size"),
        ("prepare-size-huge", ["prepare", "--annotations", w.clean_table, "--images-root", str(w.root), "--out",
                               "{OUT}", "--size", "10000000"], 2, "--size"),
        ("prepare-size-text", ["prepare", "--annotations", w.clean_table, "--images-root", str(w.root), "--out",
                               "{OUT}", "--size", "big"], 2, "--size"),
        ("prepare-workers-0", ["prepare", "--annotations", w.clean_table, "--images-root", str(w.root), "--out",
                               "{OUT}", "--workers", "0"], 2, "--workers"),
        ("prepare-max-pixels-0", ["prepare", "--annotations", w.clean_table, "--images-root", str(w.root),
                                  "--out", "{OUT}", "--max-pixels", "0"], 2, "--max-pixels"),
        ("prepare-per-file-0", ["prepare", "--annotations", w.clean_table, "--images-root", str(w.root),
                                "--out", "{OUT}", "--images-per-file", "0"], 2, "--images-per-file"),
        ("prepare-val-fraction", ["prepare", "--annotations", w.clean_table, "--images-root", str(w.root),
                                  "--out", "{OUT}", "--val-fraction", "1.5"], 2, "--val-fraction"),
        ("prepare-shards-retired", ["prepare", "--annotations", w.clean_table, "--images-root", str(w.root),
                                    "--out", "{OUT}", "--num-shards", "2"], 2, "--num-shards"),
        ("prepare-beam-options-no-runner", ["prepare", "--annotations", w.clean_table, "--images-root",
                                            str(w.root), "--out", "{OUT}", "--", "--direct_num_workers", "2"], 2,
         "--runner"),
        ("prepare-runner-workers", ["prepare", "--annotations", w.clean_table, "--images-root", str(w.root),
                                    "--out", "{OUT}", "--runner", "DirectRunner", "--workers", "2"], 2, "--workers"),
        ("prepare-format", ["prepare", "--annotations", w.clean_table, "--images-root", str(w.root), "--out",
                            "{OUT}", "--format", "dicomdir"], 2, "--format"),
        ("prepare-table-dir", ["prepare", "--annotations", str(w.root), "--images-root", str(w.root), "--out",
                               "{OUT}"], 2, "annotation table not found"),
        ("train-out-file", ["train", "--data", prep, "--out", str(w.afile)], 2, "afile.txt"),
        ("train-out-under-file", ["train", "--data", prep, "--out", under], 2, "afile.txt"),
        ("train-no-manifest", ["train", "--data", str(w.nomanifest), "--out", "{OUT}"], 2, "no manifest.json"),
        ("train-data-missing", ["train", "--data", str(w.base / "nope"), "--out", "{OUT}"], 2, "nope"),
        ("evaluate-out-file", ["evaluate", "--model", good, "--data", prep, "--out", str(w.afile)], 2, "afile.txt"),
        ("evaluate-out-under-file", ["evaluate", "--model", good, "--data", prep, "--out", under], 2, "afile.txt"),
        ("evaluate-no-records", ["evaluate", "--model", good, "--data", str(w.nomanifest), "--out", "{OUT}",
                                 "--quiet"], 2, "nomanifest"),
        ("evaluate-max-marks", ["evaluate", "--model", good, "--data", prep, "--out", "{OUT}", "--max-marks",
                                "0"], 2, "--max-marks"),
        ("tune-no-manifest", ["tune", "--data", str(w.nomanifest), "--out", "{OUT}"], 2, "no manifest.json"),
        ("tune-out-file", ["tune", "--data", prep, "--out", str(w.afile)], 2, "afile.txt"),
        ("tune-out-under-file", ["tune", "--data", prep, "--out", under], 2, "afile.txt"),
        ("tune-report-empty", ["tune", "--out", "{OUT}", "--report"], 2, "no search here"),
        ("export-base-file", ["export", "--model", good, "--base-path", str(w.afile)], 2, "afile.txt"),
        ("export-base-under-file", ["export", "--model", good, "--base-path", under], 2, "afile.txt"),
        ("export-version-0", ["export", "--model", good, "--base-path", "{OUT}", "--version", "0"], 2, "version"),
        ("export-max-marks-0", ["export", "--model", good, "--base-path", "{OUT}", "--max-marks", "0"], 2,
         "--max-marks"),
        ("predict-overlay-under-file", ["predict", "--saved-model", str(w.serving), "--overlay-dir", under,
                                        w.dicom], 2, "afile.txt"),
        ("predict-long-side", ["predict", "--saved-model", str(w.serving), "--long-side", "5", w.dicom], 2,
         "--long-side"),
        ("predict-timeout-nan", ["predict", "--rest", "http://127.0.0.1:9", "--timeout", "nan", w.dicom], 2,
         "--timeout"),
        ("predict-retries-negative", ["predict", "--rest", "http://127.0.0.1:9", "--retries", "-1", w.dicom], 2,
         "--retries"),
        ("predict-max-message-0", ["predict", "--rest", "http://127.0.0.1:9", "--max-message-mb", "0", w.dicom], 2,
         "--max-message-mb"),
        ("unknown-command", ["frobnicate"], 2, "invalid choice"),
    ]


def test_bad_arguments_and_output_directories(world):
    for case_id, argv, code, names in _output_cases(world):
        check(world, case_id, argv, code=code, names=names)
    assert not (world.root / "plain" / "prep").exists() and world.afile.is_file()


# ------------------------------------------------------------------------------------------ models
BAD_MODELS = {
    "rgb3": "not a one-channel heatmap model", "classifier": "not a one-channel heatmap model",
    "two_inputs": "not a one-channel heatmap model", "truncated": "not a Keras model archive",
    "corrupt": "not a Keras model archive", "text": "not a Keras model archive", "empty": "not a Keras model archive",
    "noconfig": "not a Keras model archive", "badconfig": "cannot load the Keras model", "dir": "is a directory",
}


def test_unrelated_and_corrupt_models(world):
    for name, reason in BAD_MODELS.items():
        model = world.models[name]
        check(world, f"evaluate-{name}", ["evaluate", "--model", model, "--data", str(world.prep), "--out", "{OUT}",
                                          "--quiet"], code=2, names=f"{os.path.basename(model)}: {reason}")
        check(world, f"export-{name}", ["export", "--model", model, "--base-path", "{OUT}"], code=2,
              names=f"{os.path.basename(model)}: {reason}")
        assert not world.out(f"export-{name}").exists() or not os.listdir(world.out(f"export-{name}"))
    check(world, "export-savedmodel-as-model", ["export", "--model", str(world.serving / "1"), "--base-path",
                                                "{OUT}"], code=2, names="is a directory")


# ---------------------------------------------------------------------------------------- predict
REST_FAILURES = ["html", "array", "string", "no_predictions", "predictions_string", "no_marks", "marks_string",
                 "marks_shape", "marks_nan", "num_marks_big", "num_marks_negative", "num_marks_float",
                 "long_side_huge", "ragged", "not_utf8", "error_escape", "bad_gateway_html", "unavailable",
                 "huge_declared", "huge", "slow", "drip", "redirect_file", "close"]


def test_hostile_rest_servers(world):
    from serving_doubles import HostileRestServer

    server, url = HostileRestServer().start()
    try:
        # 9 retries: retries x timeout would be 10 s; the one deadline keeps every case near 1 s (the
        # bound leaves room for a loaded machine's process start-up).
        base = ["predict", "--long-side", "64", "--timeout", "1", "--retries", "9", "--max-message-mb", "1"]
        outcome = check(world, "rest-good", [*base, "--rest", f"{url}/good", world.dicom], code=0)
        assert json.loads(outcome.out)["results"][0]["num_marks"] == 1
        for mode in REST_FAILURES:
            start = time.monotonic()
            check(world, f"rest-{mode}", [*base, "--rest", f"{url}/{mode}", world.dicom], code=1, names=url)
            # One overall deadline (--timeout 1, retries included), not retries x timeout.
            assert time.monotonic() - start < 5.0, f"rest-{mode} took {time.monotonic() - start:.1f} s"
        check(world, "rest-not-found-escape", [*base, "--rest", f"{url}/not_found_escape", world.dicom], code=2,
              names="--model-name")
    finally:
        server.shutdown()
    for scheme_url in ("file:///etc/passwd", "ftp://127.0.0.1/x", "http://", "localhost:8501", "gopher://x"):
        check(world, f"rest-url-{scheme_url[:4]}", ["predict", "--rest", scheme_url, world.dicom], code=2,
              names="--rest")


def test_hostile_grpc_servers(world):
    from serving_doubles import HostileGrpcServicer

    server, address = HostileGrpcServicer().start()
    try:
        base = ["predict", "--grpc", address, "--long-side", "64", "--timeout", "1", "--retries", "1"]
        check(world, "grpc-good", [*base, "--model-name", "good", world.dicom], code=0)
        for mode in ("empty", "string_marks", "bad_shape", "nan", "slow", "internal_escape"):
            start = time.monotonic()
            check(world, f"grpc-{mode}", [*base, "--model-name", mode, world.dicom], code=1, names=address)
            assert time.monotonic() - start < 3.0
        check(world, "grpc-huge", [*base, "--model-name", "huge", "--max-message-mb", "1", world.dicom], code=2,
              names="--max-message-mb")
    finally:
        server.stop(0)


def test_predict_local_versions_and_bad_files(world):
    base = str(world.serving)
    outcome = check(world, "local-version-1", ["predict", "--saved-model", base, "--version", "1", world.dicom],
                    code=0)
    assert json.loads(outcome.out)["target"] == os.path.join(base, "1")
    check(world, "local-version-missing", ["predict", "--saved-model", base, "--version", "9", world.dicom], code=2,
          names="--version")
    check(world, "local-version-dir-mismatch", ["predict", "--saved-model", os.path.join(base, "2"), "--version",
                                                "1", world.dicom], code=2, names="--version")
    check(world, "local-version-0", ["predict", "--saved-model", base, "--version", "0", world.dicom], code=2,
          names="--version")
    check(world, "local-not-savedmodel", ["predict", "--saved-model", str(world.nomanifest), world.dicom], code=2,
          names="nomanifest")
    outcome = check(world, "local-bad-files", ["predict", "--saved-model", base, "--version", "2",
                                               str(world.base / "nope.dcm")], code=2, names="nope.dcm")
    assert json.loads(outcome.out)["results"][0]["error"]


def test_export_warns_about_a_broken_newest_version(world):
    base = world.out("export-broken-newest")
    shutil.copytree(world.serving / "1", base / "1")
    (base / "2").mkdir()
    (base / "2" / "saved_model.pb").write_bytes(b"half a copy")
    outcome = check(world, "export-broken-newest", ["export", "--model", world.models["good"], "--base-path", "{OUT}",
                                                    "--verify", "ops", "--max-marks", "3"], code=0)
    warnings = [line for line in outcome.err_lines if "warning" in line]
    assert warnings == [f"hourglass export: warning: {base / '2'}, the newest version in the base path, is broken "
                        "(saved_model.pb is not a SavedModel protocol buffer): TF Serving cannot load it; remove it "
                        "or publish a higher version"]
    assert json.loads(outcome.out)["version"] == 3


# ---------------------------------------------------------------------------------------- prepare
def _phi(i: int) -> str:
    values = [v for vs in PLANTED.values() for v in vs]
    return values[i % len(values)]


def _hostile_canonical_rows(world: World, rng: random.Random) -> tuple[list[list], dict[int, str]]:
    """The hostile canonical table: rows and, by 1-based row number, the reject code expected (or "ok")."""
    normal = ["L", "CC", "normal", "", "", "", "", "", ""]
    rows, expect = [], {}

    def add(row, code):
        rows.append(row)
        expect[len(rows)] = code

    spellings = escaping_paths("../outside/canary.dcm", str(world.outside / "canary.dcm"))
    for i, path in enumerate(spellings.values()):
        add([path, _phi(i), _phi(i + 1), *normal], "outside_root")
    add(["DOE^JANE/MRN901234/L_CC.dcm", "MRN901234", "DOE^JANE", *normal], "ok")
    add(["ROE^RICHARD^QUINCY/MRN445566_R_MLO.dcm", "MRN445566", "Zyxwvutsrq", "L", "CC", "malignant", "mass",
         4, 6, 20, 30, ""], "ok")
    add(["DOE^JANE/MRN901234/SSN-078-05-1120.dcm", "MRN901234", "S1", *normal], "unreadable")
    add(["DOE^JANE/MRN778899/gone.dcm", "MRN778899", "S2", *normal], "missing_file")
    add(["plain/MRN112233_other.dcm", "MRN445566", "S3", *normal], "missing_file")  # another row's id in a path
    add(["plain/p1.dcm", "PAT-P1", "S4", *normal], "ok")
    add(["plain/p1.dcm", "PAT-P1", "S4", *normal], "ok")  # an exact duplicate: merged
    # PHI in every column as a bad value (all on p2: the image is rejected, every row with its own code).
    add(["plain/p2.dcm", "PAT-P2", "S5", "DOE^JANE", "CC", "normal", "", "", "", "", "", ""], "bad_value")
    add(["plain/p2.dcm", "PAT-P2", "S5", "L", "MRN112233", "normal", "", "", "", "", "", ""], "bad_value")
    add(["plain/p2.dcm", "PAT-P2", "S5", "L", "CC", "ROE^RICHARD^QUINCY", "", "", "", "", "", ""], "bad_label")
    add(["plain/p2.dcm", "PAT-P2", "S5", "L", "CC", "malignant", "MRN665544", 1, 1, 5, 5, ""], "bad_finding_type")
    add(["plain/p2.dcm", "PAT-P2", "S5", "L", "CC", "malignant", "mass", "SSN-078-05-1120", 1, 5, 5, ""],
        "bad_value")
    add(["plain/p2.dcm", "PAT-P2", "S5", "L", "CC", "normal", "", "", "", "", "", "ACCN-2026-55501"], "bad_split")
    add(["plain/p2.dcm", "PAT-P2", "S5", "L", "CC", "malignant", "mass", 9, 9, 3, 3, ""], "degenerate_box")
    add(["plain/p2.dcm", "MRN665544", "S5", "L", "CC", "normal", "", "", "", "", "", ""], "inconsistent_image")
    add(["plain/\x1b[31mMRN112233.dcm", "PAT-C", "S6", *normal], "missing_file")
    add(["plain/new\nline\rMRN665544.dcm", "PAT-D", "S7", *normal], "missing_file")
    add(["a/" * 2500 + "MRN901234.dcm", "PAT-E", "S8", *normal], "missing_file")
    add(["plain", "PAT-F", "S9", *normal], "missing_file")
    add(["links/../plain/p1.dcm", "PAT-P1", "S4", *normal], "ok")  # the same key once normalised: a duplicate
    add(["", "MRN112233", "S10", *normal], "missing_field")
    add(["plain/q.dcm", "", "S11", *normal], "missing_field")
    add(["plain/q.dcm", "PAT-G", "S12", *normal, "extra", "MRN901234"], "bad_row")
    # Corrupt DICOMs in a folder named after the patient: pydicom's warnings quote the path.
    from test_reliability_fuzz import mutate, valid_bases

    bases = valid_bases()
    for i in range(20):  # every (mutation, base file) pair once
        kind = ("truncate", "bitflip", "bad_length", "wrong_syntax")[i % 4]
        rel = f"DOE^JANE/MRN901234/corrupt_{kind}_{i}.dcm"
        (world.root / rel).write_bytes(mutate(kind, bases[sorted(bases)[i % len(bases)]], rng))
        add([rel, "MRN901234", "DOE^JANE", *normal], "any")
    names = list(spellings.values())
    for i in range(GENERATED):
        kind = rng.random()
        patient = _phi(rng.randrange(100)) + rng.choice(["", "-X", "^Y"])
        if kind < 0.5:
            add([rng.choice(names), patient, _phi(i), *normal], "outside_root")
        elif kind < 0.8:
            folder = rng.choice(PLANTED["PatientName"]) + "/" + rng.choice(PLANTED["PatientID"])
            add([f"{folder}/{_phi(i)}_{i}.dcm", patient, "S", *normal], "missing_file")
        else:
            add([f"../{_phi(i)}/{i}.dcm", patient, "S", *normal], "outside_root")
    return rows, expect


def _records_image_hashes(prep: Path) -> set[str]:
    import tensorflow as tf

    from keras_hourglass.data import records

    hashes = set()
    for split in contract.SPLITS:
        for path in records.list_files(str(prep), split):
            for raw in tf.data.TFRecordDataset(path):
                hashes.add(records.parse_example(raw)["image_hash"].numpy().decode())
    return hashes


def _account(out: Path, rows: int) -> tuple[dict, dict[str, dict]]:
    manifest = json.loads((out / "manifest.json").read_text())
    with open(out / "rejects.csv", newline="", encoding="utf-8") as handle:
        rejects = {r["row"]: r for r in csv.DictReader(handle)}
    FIGURES["rows"] += rows
    lost = rows - (manifest["ingested"]["rows"] + manifest["rejects"]["rows"])
    FIGURES["rows_lost"] += abs(lost) + abs(manifest["inputs"]["rows"] - rows)
    assert manifest["inputs"]["rows"] == rows and lost == 0, manifest
    assert len(rejects) == manifest["rejects"]["rows"]
    return manifest, rejects


def test_prepare_hostile_canonical_table(world):
    from keras_hourglass.data import phi

    rows, expect = _hostile_canonical_rows(world, random.Random(SEED))
    table = _write_table(world.outs / "hostile.csv", rows, CANONICAL + ["split"])
    out = world.out("prepare-hostile")
    check(world, "prepare-hostile", ["prepare", "--annotations", table, "--images-root", str(world.root), "--out",
                                     "{OUT}", "--size", "64", "--salt", SALT, "--quiet", "--workers", "1"], code=0)
    manifest, rejects = _account(out, len(rows))
    codes = {int(r.split(":")[1]): rejects[r]["code"] for r in rejects}
    wrong = {n: (codes.get(n, "ok"), want) for n, want in expect.items() if codes.get(n, "ok") != want
             and want != "any" and not (want != "ok" and codes.get(n) == "sibling_rejected")}
    assert not wrong, f"{len(wrong)} rows with another outcome (got, expected): {dict(list(wrong.items())[:10])}"
    assert manifest["ingested"]["duplicate_rows_merged"] == 2
    allowed = {phi.salted_hash(row[0], SALT, "image") for n, row in enumerate(rows, 1) if expect[n] in ("ok", "any")}
    written = _records_image_hashes(out)
    assert {phi.salted_hash(key, SALT, "image") for key in world.good[:3]} <= written <= allowed  # no canary
    for row in rejects.values():
        assert len(row["image_hash"]) in (0, 16) and set(row) == {"row", "image_hash", "code", "reason"}


def test_prepare_hostile_vindr_and_cbis(world):
    study = world.root / "vindr" / "images" / "MRN901234"
    _dicom(study / "im1.dicom", seed=3)
    os.symlink(world.outside, world.root / "vindr" / "images" / "linked")
    os.symlink(world.outside, world.root / "vindr" / "linked2")
    header = ["study_id", "series_id", "image_id", "laterality", "view_position", "height", "width", "breast_birads",
              "breast_density", "finding_categories", "finding_birads", "xmin", "ymin", "xmax", "ymax", "split"]
    normal = ["L", "CC", 64, 48, "BI-RADS 1", "DENSITY C", "['No Finding']", "", "", "", "", "", "training"]
    vindr_rows = [["MRN901234", "se", "im1", *normal], ["..", "se", "im1", *normal], ["linked", "se", "im1", *normal],
                  ["linked2", "se", "im1", *normal], [".", "se", "..", *normal],
                  ["DOE^JANE", "se", "im1", *normal], ["MRN445566", "se", "SSN-078-05-1120", *normal]]
    table = _write_table(world.outs / "finding_annotations.csv", vindr_rows, header)
    out = world.out("prepare-vindr")
    check(world, "prepare-vindr", ["prepare", "--format", "vindr", "--annotations", table, "--images-root",
                                   str(world.root / "vindr"), "--out", "{OUT}", "--size", "64", "--salt", SALT,
                                   "--quiet"], code=0)
    _, rejects = _account(out, len(vindr_rows))
    assert [rejects.get(f"finding_annotations.csv:{n}", {}).get("code") for n in range(1, 8)] == [
        None, "outside_root", "outside_root", "outside_root", "outside_root", "bad_value", "missing_file"]

    cbis_root = world.root / "cbis"
    image = "Mass-Training_P_00001_LEFT_CC/1.2.3/1.2.3.4/000000.dcm"
    _dicom(cbis_root / image)
    os.makedirs(cbis_root / "Mass-Training_P_00002_LEFT_CC")
    os.symlink(world.canary, cbis_root / "Mass-Training_P_00002_LEFT_CC" / "1-1.dcm")
    header = ["patient_id", "breast_density", "left or right breast", "image view", "abnormality id",
              "abnormality type", "mass shape", "mass margins", "assessment", "pathology", "subtlety",
              "image file path", "cropped image file path", "ROI mask file path"]
    row = ["P_00001", 3, "LEFT", "CC", 1, "mass", "OVAL", "SPICULATED", 5, "MALIGNANT", 4]
    cbis_rows = [row + ["../outside/canary.dcm", "", ""], row + [image, "../../outside/canary.dcm", ""],
                 row + [image, "", str(world.canary)],
                 ["P_00002"] + row[1:] + ["Mass-Training_P_00002_LEFT_CC/x/y/000000.dcm", "a/1.dcm", "b/2.dcm"],
                 ["MRN901234"] + row[1:] + ["Mass-Training_DOE^JANE/MRN901234/1.dcm", "", ""]]
    table = _write_table(world.outs / "mass_case_description_train_set.csv", cbis_rows, header)
    out = world.out("prepare-cbis")
    check(world, "prepare-cbis", ["prepare", "--format", "cbis-ddsm", "--annotations", table, "--images-root",
                                  str(cbis_root), "--out", "{OUT}", "--size", "64", "--salt", SALT, "--quiet"], code=0)
    _, rejects = _account(out, len(cbis_rows))
    codes = [rejects[f"mass_case_description_train_set.csv:{n}"]["code"] for n in range(1, 6)]
    assert codes[:4] == ["outside_root"] * 4 or set(codes[:4]) <= {"outside_root", "sibling_rejected"}, codes
    assert codes[4] == "missing_file"


MALFORMED = {
    "headerless": "img.dcm,MRN901234,DOE^JANE,L,CC,normal,,,,,\n".encode(),
    "empty": b"",
    "blank_lines": b"\n\n\n",
    "utf16_bom": (",".join(CANONICAL) + "\nimg.dcm,MRN901234,S,L,CC,normal,,,,,\n").encode("utf-16"),
    "utf16_no_bom": (",".join(CANONICAL) + "\nimg.dcm,MRN901234,S,L,CC,normal,,,,,\n").encode("utf-16-le"),
    "utf32_bom": (",".join(CANONICAL) + "\nimg.dcm,MRN901234,S,L,CC,normal,,,,,\n").encode("utf-32"),
    "xlsx": b"PK\x03\x04\x14\x00\x06\x00" + b"MRN901234" * 20,
    "gzip": b"\x1f\x8b\x08\x00" + b"MRN901234" * 10,
    "nul_in_path": (",".join(CANONICAL) + "\nimg\x00MRN901234.dcm,P,S,L,CC,normal,,,,,\n").encode(),
    "semicolons": (";".join(CANONICAL) + "\nimg.dcm;MRN901234;S;L;CC;normal;;;;;\n").encode(),
    "huge_field": (",".join(CANONICAL) + '\n"' + "MRN901234" * 20000 + '",P,S,L,CC,normal,,,,,\n').encode(),
    "binary": bytes(random.Random(5).randrange(1, 256) for _ in range(3000)),
    "control_header": ("image_path\x1b[2J,patient_id\r,MRN901234\n").encode(),
}


def test_prepare_malformed_tables(world):
    for name, data in MALFORMED.items():
        table = world.outs / f"{name}.csv"
        table.write_bytes(data)
        outcome = check(world, f"table-{name}", ["prepare", "--annotations", str(table), "--images-root",
                                                 str(world.root), "--out", "{OUT}", "--quiet"], code=2,
                        names=f"{name}.csv")
        assert "image_path" not in outcome.err or "missing column" in outcome.err
    # Accepted tables whose rows are all rejected (or that have none): every row still accounted for.
    accepted = {"header_only": (",".join(CANONICAL) + "\n", 0),
                "unterminated_quote": (",".join(CANONICAL) + '\n"img.dcm,MRN901234,S,L,CC,normal,,,,,\n', 1),
                "latin1": ((",".join(CANONICAL) + "\nplain/\xe9MRN901234.dcm,P\xe9,S,L,CC,normal,,,,,\n"), 1)}
    for name, (text, rows) in accepted.items():
        table = world.outs / f"{name}.csv"
        table.write_bytes(text.encode("latin-1"))
        check(world, f"table-{name}", ["prepare", "--annotations", str(table), "--images-root", str(world.root),
                                       "--out", "{OUT}", "--quiet"], code=0)
        _account(world.out(f"table-{name}"), rows)


def test_zz_figures():
    """The closing figures of this run (also written to $HOURGLASS_HOSTILE_REPORT)."""
    print("\nhostile suite: " + json.dumps(FIGURES))
    report = os.environ.get("HOURGLASS_HOSTILE_REPORT")
    if report:
        Path(report).write_text(json.dumps({**FIGURES, "generated_rows": GENERATED, "seed": SEED}, indent=2) + "\n")
    assert FIGURES["tracebacks"] == FIGURES["rows_lost"] == FIGURES["phi_hits"] == FIGURES["outside_reads"] == 0
