"""Object storage: every user-pointable path goes through `keras_hourglass.storage` (tf.io.gfile for URLs).

1. End to end under TensorFlow's in-memory ``ram://`` filesystem: prepare -> train -> evaluate ->
   export -> predict --saved-model, every output under ``ram://`` (the raw DICOM input stays local:
   pydicom reads it).
2. Publication order on a store without atomic rename: a recording wrapper around the storage
   primitives shows that an export writes nothing under the numeric version name before the whole
   version exists under a non-numeric name, and that ``saved_model.pb`` is the last file moved into
   it; a backup's ``state.json`` (its marker) is written only after the weights it names.
3. Conventions: no ``open(`` / ``os.replace`` / ``glob.glob`` / ``shutil.`` / ``os.listdir`` /
   ``os.makedirs`` outside the storage modules and the listed exceptions.
"""

from __future__ import annotations

import json
import os
import uuid

import numpy as np
import pytest

from keras_hourglass import storage

tf = pytest.importorskip("tensorflow")


def _ram(name: str) -> str:
    return f"ram://hourglass-{uuid.uuid4().hex[:8]}/{name}"


# --------------------------------------------------------------------------- storage basics
def test_storage_primitives_on_ram_and_local(tmp_path):
    for root in (_ram("basics"), str(tmp_path / "basics")):
        storage.write_json(storage.join(root, "a", "x.json"), {"v": 1})
        storage.write_text(storage.join(root, "a", "y.txt"), "hi\n")
        assert storage.read_json(storage.join(root, "a", "x.json")) == {"v": 1}
        assert storage.isdir(storage.join(root, "a")) and storage.isfile(storage.join(root, "a", "y.txt"))
        assert storage.listdir(storage.join(root, "a")) == ["x.json", "y.txt"]  # no temporary name left
        assert storage.glob(storage.join(root, "*", "*.json")) == [storage.join(root, "a", "x.json")]
        assert storage.getsize(storage.join(root, "a", "y.txt")) == 3
        with storage.open(storage.join(root, "a", "y.txt"), newline="") as handle:
            assert handle.read() == "hi\n"
        with storage.replacing(storage.join(root, "m.keras"), keep_suffix=True) as tmp:
            assert tmp.endswith(".keras") and not storage.is_url(tmp)  # a local file for any writer
            with open(tmp, "wb") as handle:
                handle.write(b"zip")
        assert storage.read_bytes(storage.join(root, "m.keras")) == b"zip"
        with pytest.raises(FileNotFoundError):
            storage.read_bytes(storage.join(root, "missing.json"))
        storage.remove_tree(root)
        assert not storage.exists(storage.join(root, "a", "x.json"))
    with pytest.raises(ValueError, match="reading only"):
        storage.open(_ram("w.txt"), "w")
    assert storage.is_url("gs://b/x") and storage.is_url("s3://b/x") and storage.is_url("hdfs://nn/x")
    assert not storage.is_url("/tmp/x") and not storage.is_url("relative/x")
    assert storage.dirname("gs://b/x/y") == "gs://b/x" and storage.basename("gs://b/x/y/") == "y"


def test_a_scheme_without_its_plugin_is_a_one_line_input_error(capsys):
    from keras_hourglass.cli.main import main
    from keras_hourglass.errors import InputError

    try:
        import tensorflow_io  # noqa: F401
        pytest.skip("tensorflow-io is installed: s3:// is implemented")
    except ImportError:
        pass
    with pytest.raises(InputError, match="pip install tensorflow-io") as raised:
        storage.exists("s3://bucket/prep")
    assert isinstance(raised.value, OSError)
    assert main(["train", "--data", "hdfs://namenode/prep", "--out", "/nonexistent-hourglass/run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "hdfs:// needs tensorflow-io's filesystem plugins" in err


def test_keras_saves_and_loads_a_model_on_ram():
    import keras

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    path = _ram("model.keras")
    model.save(path)  # keras.src.utils.file_utils: a remote path is written locally, then copied with gfile
    again = keras.saving.load_model(path)
    x = np.ones((1, 4), np.float32)
    np.testing.assert_allclose(again.predict(x, verbose=0), model.predict(x, verbose=0))


# --------------------------------------------------------------------------- 1. end to end under ram://
@pytest.mark.slow
def test_prepare_train_evaluate_export_predict_all_under_ram(tmp_path, capsys):
    from test_prepare import _dataset

    from keras_hourglass.cli.main import main

    raw = tmp_path / "in"
    raw.mkdir()
    table = _dataset(raw, images=24, patients=12)
    root = _ram("e2e")
    prep, run, evaluation, base = (storage.join(root, name) for name in ("prep", "run", "eval", "serving"))

    assert main(["prepare", "--annotations", table, "--images-root", str(raw), "--out", prep, "--size", "64",
                 "--val-fraction", "0.25", "--test-fraction", "0.25", "--salt", "ram-salt", "--quiet",
                 "--images-per-file", "4"]) == 0
    manifest = storage.read_json(storage.join(prep, "manifest.json"))
    assert manifest["ingested"]["images"] == 24 and storage.exists(storage.join(prep, "rejects.csv"))
    assert manifest["content_hash"]  # the files' hash, read back through gfile
    assert storage.glob(storage.join(prep, "train", "*.tfrecord"))
    capsys.readouterr()

    assert main(["train", "--data", prep, "--out", run, "--phase", "patch", "--epochs", "1",
                 "--steps-per-epoch", "2", "--batch-size", "2", "--crop-size", "768", "--patch-size", "96",
                 "--sigmas", "24,48", "--val-images", "0", "--model-option", "num_stacks=1", "--model-option", "depth=1",
                 "--model-option", "num_features=8", "--model-option", "stem_features=4", "--seed", "3",
                 "--no-jit-compile", "--quiet"]) == 0
    for name in ("model.keras", "config.json", "history.csv", "backup/state.json"):
        assert storage.exists(storage.join(run, name)), name
    config = storage.read_json(storage.join(run, "config.json"))
    assert config["data"]["prep_dir"] == prep and config["result"]["model"] == storage.join(run, "model.keras")
    assert storage.glob(storage.join(run, "logs", "train", "events.*"))
    state = storage.read_json(storage.join(run, "backup", "state.json"))
    assert storage.exists(storage.join(run, "backup", state["weights"]))
    capsys.readouterr()

    assert main(["evaluate", "--model", storage.join(run, "model.keras"), "--data", prep, "--split", "val",
                 "--out", evaluation, "--bootstrap", "0", "--overlays", "1", "--quiet"]) == 0
    froc = storage.read_json(storage.join(evaluation, "froc.json"))
    assert "4.8" in froc["sensitivity_at_fpi"] and froc["data"] == prep
    for name in ("froc.png", "marks.csv", "findings.csv"):
        assert storage.getsize(storage.join(evaluation, name)) > 0, name
    capsys.readouterr()

    assert main(["export", "--model", storage.join(run, "model.keras"), "--base-path", base,
                 "--evaluation", evaluation, "--verify", "ops"]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert exported["version"] == 1 and exported["path"] == storage.join(base, "1")
    assert storage.listdir(base) == ["1"]  # the non-numeric staging name is gone
    for name in ("saved_model.pb", "variables/variables.index", "assets.extra/keras_hourglass.json",
                 "assets.extra/tf_serving_warmup_requests"):
        assert storage.exists(storage.join(base, "1", name)), name

    dicom = os.path.join(str(raw), "img000.dcm")
    assert main(["predict", "--saved-model", base, "--overlay-dir", storage.join(root, "overlays"), dicom]) == 0
    predicted = json.loads(capsys.readouterr().out)
    assert str(predicted["model_version"]) == "1" and len(predicted["results"]) == 1
    assert storage.listdir(storage.join(root, "overlays")) == ["img000.dcm.png"]


def test_tuning_outputs_state_and_hparams_under_ram():
    """TUNE on object storage without a training run: KerasTuner's state writes, the state check, the
    outputs (trials.csv, objective.png, best_hyperparameters.json) and the HParams sessions."""
    from tuning import durability, hparams, outputs

    tune = _ram("tune")
    project = storage.join(tune, "hourglass")
    space = [{"class_name": "Float", "config": {"name": "omega", "min_value": 0.001, "max_value": 1.0}},
             {"class_name": "Int", "config": {"name": "top_k", "min_value": 0, "max_value": 5}}]
    assert durability.install_atomic_state_writes()
    from keras_tuner.src import utils as kt_utils

    for i, (omega, value) in enumerate([(0.01, 0.5), (0.1, 0.75)]):
        metrics = {name: {"direction": "max", "observations": [{"value": [value], "step": 0}]}
                   for name, _ in hparams.METRICS}
        kt_utils.save_json(storage.join(project, f"trial_{i}", "trial.json"), {
            "trial_id": str(i), "status": "COMPLETED", "metrics": {"metrics": metrics},
            "hyperparameters": {"space": space, "values": {"omega": omega, "top_k": 3}}})
    assert storage.listdir(storage.join(project, "trial_0")) == ["trial.json"]  # no hidden upload left
    durability.check_state_files(project)
    summary = outputs.write_outputs(project, tune)
    assert summary["best_trial_id"] == "1" and summary["trials"] == 2
    assert storage.read_json(storage.join(tune, "best_hyperparameters.json"))["values"]["omega"] == 0.1
    assert storage.getsize(storage.join(tune, "objective.png")) > 0
    logs = hparams.logs_dir(tune)
    assert sorted(hparams.sync(project, logs)) == ["0", "1"]
    assert sorted(n for n in storage.listdir(logs) if not n.startswith("events")) == ["trial_0", "trial_1"]
    assert all(len(storage.listdir(storage.join(logs, f"trial_{i}"))) == 1 for i in (0, 1))
    assert hparams.sync(project, logs) == []  # idempotent: the sessions are found on the store
    hparams.clear(logs)
    assert not storage.glob(storage.join(logs, "*", "*"))


# --------------------------------------------------------------------------- 2. publication order
class Recorder:
    """Records every write-side storage primitive (the URL path: a store without atomic rename)."""

    def __init__(self, monkeypatch):
        self.ops: list[tuple[str, str, str | None]] = []
        for name in ("copy", "rename", "remove", "makedirs"):
            original = getattr(storage, name)

            def wrapper(*args, _name=name, _original=original, **kwargs):
                self.ops.append((_name, os.fspath(args[-1] if _name in ("copy", "rename") else args[0]),
                                 os.fspath(args[0]) if _name in ("copy", "rename") else None))
                return _original(*args, **kwargs)

            monkeypatch.setattr(storage, name, wrapper)

    def written(self) -> list[str]:
        """The destinations of file writes (copies and renames), in order."""
        return [target for op, target, _ in self.ops if op in ("copy", "rename")]


def test_export_on_a_non_atomic_store_writes_saved_model_pb_last(monkeypatch):
    from serving_doubles import conv_model

    from export.saved_model import MARKER, TMP_PREFIX, export_detector
    from export.signatures import HourglassDetector

    base = _ram("serving/hourglass")
    detector = HourglassDetector(conv_model(stride=2), stride=2, input_multiple=4, max_marks=3, long_side=40)
    recorder = Recorder(monkeypatch)
    result = export_detector(detector, base, verify="none")
    version = storage.join(base, "1")
    assert result.path == version and storage.listdir(base) == ["1"]

    written = recorder.written()
    into_version = [w for w in written if w.startswith(version + "/")]
    staged = [w for w in written if w.startswith(storage.join(base, TMP_PREFIX))]
    assert into_version and staged
    # Nothing is written under the numeric name before the whole version exists under the hidden one ...
    first_into_version = written.index(into_version[0])
    assert all(written.index(s) < first_into_version for s in staged)
    assert {w[len(version) + 1:] for w in into_version} == {s[len(base) + 1:].split("/", 1)[1] for s in staged}
    assert all(op == "rename" for op, target, _ in recorder.ops if target in into_version)  # moved, not rewritten
    # ... and saved_model.pb is the last file to arrive there.
    assert into_version[-1] == storage.join(version, MARKER)
    assert "variables/variables.index" in {w[len(version) + 1:] for w in into_version}
    assert not [n for n in storage.listdir(base) if n.startswith(TMP_PREFIX)]  # the staging name is removed


def test_local_export_keeps_one_rename(tmp_path, monkeypatch):
    from serving_doubles import conv_model

    from export.saved_model import export_detector
    from export.signatures import HourglassDetector
    from keras_hourglass import atomic

    renames = []
    original = os.rename
    monkeypatch.setattr(os, "rename", lambda a, b: (renames.append((a, b)), original(a, b))[1])
    synced = []
    monkeypatch.setattr(atomic, "fsync_tree", lambda root: synced.append(os.fspath(root)))
    detector = HourglassDetector(conv_model(stride=2), stride=2, input_multiple=4, max_marks=3, long_side=40)
    result = export_detector(detector, tmp_path / "base", verify="none")
    assert [b for _, b in renames] == [result.path] and synced == [renames[0][0]]  # fsynced, then one rename
    assert os.path.basename(renames[0][0]).startswith(".tmp-")


def test_backup_on_a_non_atomic_store_writes_the_weights_before_the_state(monkeypatch):
    import keras

    from keras_hourglass.training.callbacks import BACKUP_STATE, EpochBackup, read_backup_state, restore_from_backup

    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer="adam", loss="mse")
    model.optimizer.build(model.trainable_variables)
    backup = _ram("run/backup")
    callback = EpochBackup(backup, phase="patch")
    callback.set_model(model)
    recorder = Recorder(monkeypatch)
    callback.on_epoch_end(0)
    callback.on_epoch_end(1)

    final = [w for w in recorder.written() if not storage.basename(w).startswith(".")]
    weights = [storage.join(backup, f"epoch-000{n}.weights.h5") for n in (1, 2)]
    state = storage.join(backup, BACKUP_STATE)
    assert final == [weights[0], state, weights[1], state]  # each state.json after the weights it names
    for op, target, source in recorder.ops:  # every final name is a rename of a complete hidden upload
        if op in ("copy", "rename") and (target in weights or target == state):
            assert op == "rename" and storage.basename(source).startswith(".")
    removed = [target for op, target, _ in recorder.ops if op == "remove"]
    assert weights[0] in removed and recorder.ops.index(("remove", weights[0], None)) > len(recorder.ops) - 3
    assert read_backup_state(backup)["weights"] == "epoch-0002.weights.h5"
    assert restore_from_backup(model, backup) == 2


# --------------------------------------------------------------------------- 3. conventions
ROOTS = ("keras_hourglass", "export", "serving", "tuning")
FILESYSTEM_CALLS = ("open", "os.replace", "os.rename", "glob.glob", "os.listdir", "os.makedirs", "os.path.exists",
                    "os.remove", "shutil.*", "Path")
# (file, call): why it may stay. Everything else on a path a user can name goes through keras_hourglass.storage.
ALLOWED = {
    ("keras_hourglass/storage.py", "*"): "the one home of filesystem operations",
    ("keras_hourglass/atomic.py", "*"): "storage's local backend (fsync, os.replace)",
    ("keras_hourglass/data/importers/__init__.py", "open"): "annotation tables of the user's local input (raw ingest)",
    ("keras_hourglass/data/tfio_decoder.py", "open"): "raw DICOM bytes from the local --images-root",
    ("keras_hourglass/data/synthetic/dataset.py", "open"): "`hourglass synth` writes raw local input for prepare",
    ("keras_hourglass/data/synthetic/dataset.py", "os.makedirs"): "`hourglass synth` writes raw local input",
    ("serving/tls.py", "open"): "TLS certificate files of the local client",
    ("export/verify.py", "os.listdir"): "saved_model_cli's outputs in a local tempfile scratch directory",
    ("export/verify.py", "shutil.*"): "shutil.which: finding the saved_model_cli executable",
    ("export/verify.py", "Path"): "Path(sys.executable): the interpreter's bin directory",
}


def _dotted(node) -> str | None:
    import ast

    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def filesystem_calls(root: str) -> set[tuple[str, str]]:
    """Returns: `(file, call)` for every direct filesystem call under the package directories."""
    import ast
    import pathlib

    found = set()
    for directory in ROOTS:
        for path in sorted(pathlib.Path(root, directory).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                name = _dotted(node.func) if isinstance(node, ast.Call) else None
                if name is None:
                    continue
                key = "shutil.*" if name.startswith("shutil.") else name
                if key in FILESYSTEM_CALLS:
                    found.add((path.relative_to(root).as_posix(), key))
    return found


def test_no_filesystem_call_outside_storage_and_the_listed_exceptions():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    found = filesystem_calls(root)
    stray = sorted(c for c in found if c not in ALLOWED and (c[0], "*") not in ALLOWED)
    assert not stray, f"use keras_hourglass.storage (or list the exception with its reason): {stray}"
    stale = sorted(c for c in ALLOWED if c[1] != "*" and c not in found)
    assert not stale, f"exceptions no longer needed: {stale}"


def test_the_check_catches_a_new_call(tmp_path):
    (tmp_path / "tuning").mkdir()
    (tmp_path / "tuning" / "x.py").write_text("import glob, os\nopen('a')\nos.replace('a', 'b')\nglob.glob('*')\n")
    assert filesystem_calls(str(tmp_path)) == {("tuning/x.py", "open"), ("tuning/x.py", "os.replace"),
                                               ("tuning/x.py", "glob.glob")}


def test_importing_storage_does_not_import_tensorflow(imports_tensorflow):
    assert not imports_tensorflow("keras_hourglass.storage")
