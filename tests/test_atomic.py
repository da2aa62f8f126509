"""keras_hourglass.atomic: the one atomic-write helper."""

import json
import os

import pytest

from keras_hourglass import atomic


def test_writes_replace_the_file_and_leave_no_temporary(tmp_path):
    path = tmp_path / "sub" / "state.json"
    atomic.write_json(path, {"b": 1, "a": [1, 2]}, sort_keys=True)
    assert path.read_text() == json.dumps({"a": [1, 2], "b": 1}, indent=2) + "\n"
    atomic.write_json(tmp_path / "sub" / "config.json", {"path": tmp_path}, default=str)
    assert json.loads((tmp_path / "sub" / "config.json").read_text()) == {"path": str(tmp_path)}
    (tmp_path / "sub" / "config.json").unlink()
    atomic.write_bytes(path, b"new")
    atomic.write_text(tmp_path / "sub" / "t.csv", "a,b\r\n1,2\r\n")
    assert path.read_bytes() == b"new" and (tmp_path / "sub" / "t.csv").read_bytes() == b"a,b\r\n1,2\r\n"
    assert sorted(os.listdir(tmp_path / "sub")) == ["state.json", "t.csv"]


def test_a_failed_write_keeps_the_old_version(tmp_path):
    path = tmp_path / "model.keras"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic.replacing(path, keep_suffix=True) as tmp:
            with open(tmp, "wb") as handle:
                handle.write(b"half")
            raise RuntimeError("killed mid-write")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["model.keras"]


def test_temporary_names_are_hidden_siblings(tmp_path):
    plain = atomic.temporary_path(tmp_path / "malignant-00001.tfrecord")
    suffixed = atomic.temporary_path(tmp_path / "epoch-0003.weights.h5", keep_suffix=True)
    for name in (plain, suffixed):
        assert os.path.dirname(name) == str(tmp_path) and os.path.basename(name).startswith(".")
    assert plain.endswith(".tmp") and not plain.endswith(".tfrecord")  # never listed by a reader's glob
    assert suffixed.endswith(".tmp.weights.h5")  # Keras checks the suffix
    assert atomic.temporary_path("x.json") != atomic.temporary_path("x.json")


def test_atomic_is_tensorflow_free(imports_tensorflow):
    assert not imports_tensorflow("keras_hourglass.atomic")


def test_fsync_tree_flushes_every_file_and_directory(tmp_path, monkeypatch):
    import os

    from keras_hourglass import atomic

    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("x", "a/y", "a/b/z"):
        (tmp_path / name).write_bytes(b"1")
    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else fd)
        return real(fd)

    monkeypatch.setattr(atomic.os, "fsync", spy)
    atomic.fsync_tree(tmp_path)
    if os.path.exists("/proc/self/fd"):
        expected = {str(tmp_path / p) for p in ("x", "a/y", "a/b/z", "", "a", "a/b")}
        assert {s.rstrip("/") for s in synced} == {e.rstrip("/") for e in expected}
    else:
        assert len(synced) == 6
