"""The one home of filesystem operations on paths a user can name: local paths and URLs alike.

Every path a user can point at object storage (PREP and its manifests and shards, RUN and its
backups, TUNE, the export base, warmup, plots, froc.json, config.json, PROPOSALS) goes through this
module. A path with a scheme (``gs://``, ``s3://``, ``hdfs://``, ``ram://`` in the tests: anything
``SCHEME://``) goes through `tf.io.gfile`, imported only when such a path is used, so the
TensorFlow-free ingest workers and the serving client stay TensorFlow-free on local paths. A local
path keeps the local semantics of `keras_hourglass.atomic` (fsync, `os.replace`).

Writes are atomic in the sense the store allows:

- local: `atomic` (temporary name in the same directory, fsync, `os.replace`, directory fsync);
- URL: the content is written in full to a local temporary file, uploaded under a hidden temporary
  name beside the final one (``.NAME.<pid>-<hex>.tmp``), then renamed over the final name. On GCS
  and S3 a rename is a server-side copy plus a delete (not atomic), but an object only becomes
  visible once its upload is complete, so a reader sees the old or the whole new file.

A directory (a SavedModel version, a stage of a backup) is published with `publish_directory`:

- local: its files and directories are fsynced, then one `os.rename` of the staging directory;
- URL (no atomic directory rename on object stores): the complete content is first uploaded under a
  non-numeric hidden staging name (``BASE/.tmp-<hex>/``), then moved file by file into the final
  directory with the MARKER (``saved_model.pb``) moved LAST, then the staging name is removed. A
  reader that waits for the marker (TF Serving does not load a version without ``saved_model.pb``)
  never sees a partial version.

May import: the standard library, `keras_hourglass.atomic`, `keras_hourglass.errors`; TensorFlow
(and tensorflow-io, for s3:// and hdfs://) lazily, for URLs only.
Used by: everything in keras_hourglass/, export/, serving/ and tuning/ that touches a user's path.
"""

from __future__ import annotations

import builtins
import contextlib
import glob as _glob
import io
import json
import os
import re
import shutil
import tempfile
import uuid
from typing import Any, Callable, Iterator

from keras_hourglass import atomic
from keras_hourglass.errors import InputError

_builtin_open = builtins.open

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
STAGING_PREFIX = ".tmp-"


def is_url(path: str | os.PathLike) -> bool:
    """Returns: True when `path` has a scheme (``gs://``, ``s3://``, ``hdfs://``, ``ram://``, ...)."""
    return bool(_URL.match(os.fspath(path)))


class UnsupportedFilesystem(InputError, OSError):
    """A URL whose scheme no loaded TensorFlow filesystem implements (an `InputError`: the CLI exits
    2 with one line; also an `OSError`, as every other storage failure)."""

    def __init__(self, path: str | os.PathLike, reason: str):
        InputError.__init__(self, path, reason)


_PLUGIN_SCHEMES = ("s3", "hdfs", "viewfs", "har", "az")
"""Schemes TensorFlow >= 2.6 does not implement itself: tensorflow-io's filesystem plugins register
them when `tensorflow_io` is imported (TensorFlow ships gs:// and ram://)."""
_PLUGINS_TRIED: list[bool] = []


def _scheme(path: str | os.PathLike) -> str:
    return os.fspath(path).partition("://")[0].lower()


def _gfile(path: str | os.PathLike = ""):
    """Returns: `tf.io.gfile`, after importing tensorflow-io once when `path`'s scheme needs its plugins."""
    import tensorflow as tf  # only for URLs: local paths never import TensorFlow here

    if _scheme(path) in _PLUGIN_SCHEMES and not _PLUGINS_TRIED:
        _PLUGINS_TRIED.append(True)
        try:
            import tensorflow_io  # noqa: F401 - registers s3://, hdfs://, az:// with tf.io.gfile
        except Exception:  # noqa: BLE001 - not installed, or its libraries do not load on this TensorFlow
            pass
    return tf.io.gfile


@contextlib.contextmanager
def _as_os_errors(path: str | os.PathLike) -> Iterator[None]:
    """Re-raises TensorFlow's filesystem errors as `OSError`s (`FileNotFoundError` for a missing
    path), so callers handle a URL's failures as they handle a local path's; an unknown scheme
    names the package that provides it."""
    import tensorflow as tf

    try:
        yield
    except tf.errors.NotFoundError as err:
        raise FileNotFoundError(2, err.message.split("\n")[0] or "not found", os.fspath(path)) from None
    except tf.errors.PermissionDeniedError as err:
        raise PermissionError(13, err.message.split("\n")[0], os.fspath(path)) from None
    except tf.errors.UnimplementedError:
        scheme = _scheme(path)
        hint = (f"{scheme}:// needs tensorflow-io's filesystem plugins: pip install tensorflow-io"
                if scheme in _PLUGIN_SCHEMES else f"no TensorFlow filesystem implements {scheme}://")
        raise UnsupportedFilesystem(path, hint) from None
    except tf.errors.OpError as err:
        raise OSError(5, err.message.split("\n")[0], os.fspath(path)) from None


def join(path: str | os.PathLike, *parts: str) -> str:
    """Returns: `parts` joined under `path` with ``/`` (URLs) or `os.path.join` (local)."""
    path = os.fspath(path)
    if is_url(path):
        return "/".join([path.rstrip("/"), *(p.strip("/") for p in parts)]) if parts else path
    return os.path.join(path, *parts)


def abspath(path: str | os.PathLike) -> str:
    """Returns: `os.path.abspath(path)` for a local path, a URL unchanged."""
    return os.fspath(path) if is_url(path) else os.path.abspath(path)


def dirname(path: str | os.PathLike) -> str:
    """Returns: the parent of `path` (a URL keeps its scheme)."""
    path = os.fspath(path)
    if is_url(path):
        head, _, _ = path.rstrip("/").rpartition("/")
        return head if not head.endswith(":/") else head + "/"
    return os.path.dirname(path)


def basename(path: str | os.PathLike) -> str:
    """Returns: the last component of `path`."""
    return os.fspath(path).rstrip("/").rpartition("/")[2] if is_url(path) else os.path.basename(os.fspath(path))


def exists(path: str | os.PathLike) -> bool:
    """Returns: True when `path` exists (file or directory)."""
    if not is_url(path):
        return os.path.exists(path)
    with _as_os_errors(path):
        return _gfile(path).exists(os.fspath(path))


def isdir(path: str | os.PathLike) -> bool:
    """Returns: True when `path` is a directory (for an object store: a prefix with objects under it)."""
    if not is_url(path):
        return os.path.isdir(path)
    with _as_os_errors(path):  # gfile.isdir answers False for an unknown scheme; exists raises
        return _gfile(path).exists(os.fspath(path)) and _gfile(path).isdir(os.fspath(path))


def isfile(path: str | os.PathLike) -> bool:
    """Returns: True when `path` is a file."""
    if is_url(path):
        return exists(path) and not isdir(path)
    return os.path.isfile(path)


def getsize(path: str | os.PathLike) -> int:
    """Returns: the size of the file at `path` in bytes."""
    if not is_url(path):
        return os.path.getsize(path)
    with _as_os_errors(path):
        return int(_gfile(path).stat(os.fspath(path)).length)


def makedirs(path: str | os.PathLike) -> None:
    """Creates `path` and its parents (no error if it exists)."""
    if is_url(path):
        with _as_os_errors(path):
            _gfile(path).makedirs(os.fspath(path))
    else:
        os.makedirs(path, exist_ok=True)


def listdir(path: str | os.PathLike) -> list[str]:
    """Returns: the names in directory `path` (sorted; no trailing ``/`` on directories)."""
    if not is_url(path):
        return sorted(os.listdir(path))
    with _as_os_errors(path):
        return sorted({name.rstrip("/") for name in _gfile(path).listdir(os.fspath(path))})


def glob(pattern: str | os.PathLike) -> list[str]:
    """Returns: the paths matching `pattern` (``*``, ``?``, ``[...]`` in any component), sorted."""
    pattern = os.fspath(pattern)
    if is_url(pattern):
        with _as_os_errors(pattern):
            return sorted(_gfile(pattern).glob(pattern))
    return sorted(_glob.glob(pattern))


def walk(top: str | os.PathLike) -> Iterator[tuple[str, list[str], list[str]]]:
    """Yields: ``(dirpath, dirnames, filenames)`` as `os.walk` does (top-down)."""
    if is_url(top):
        for dirpath, dirs, files in _gfile(top).walk(os.fspath(top)):
            yield dirpath, [d.rstrip("/") for d in dirs], list(files)
    else:
        yield from os.walk(top)


def open(path: str | os.PathLike, mode: str = "r", *, encoding: str | None = None,  # noqa: A001
         newline: str | None = None):
    """Opens `path` for reading (``r``, ``rb``) or, locally, for any mode.

    Writes to a URL go through `write_bytes` / `write_text` / `replacing` (atomic) instead: opening
    one for writing raises `ValueError`, so no caller writes an object store in place by accident.

    Args:
        path: the file.
        mode: ``"r"`` or ``"rb"`` (any `open` mode for a local path).
        encoding: text encoding (text modes; default utf-8 for URLs).
        newline: as `open`'s (text modes), e.g. ``""`` for the csv module.

    Returns:
        A file object (a context manager).
    """
    if not is_url(path):
        kwargs = {} if "b" in mode else {"encoding": encoding, "newline": newline}
        return _builtin_open(path, mode, **kwargs)
    if mode not in ("r", "rb"):
        raise ValueError(f"{path}: URLs are opened for reading only; write with storage.write_* or replacing")
    data = read_bytes(path)
    if mode == "rb":
        return io.BytesIO(data)
    return io.StringIO(data.decode(encoding or "utf-8"), newline=newline)


def read_bytes(path: str | os.PathLike) -> bytes:
    """Returns: the content of the file at `path`."""
    if is_url(path):
        with _as_os_errors(path), _gfile(path).GFile(os.fspath(path), "rb") as handle:
            return handle.read()
    with _builtin_open(path, "rb") as handle:
        return handle.read()


def read_text(path: str | os.PathLike, encoding: str = "utf-8") -> str:
    """Returns: the decoded content of the file at `path` (no newline translation)."""
    return read_bytes(path).decode(encoding)


def read_json(path: str | os.PathLike) -> Any:
    """Returns: the JSON value in the file at `path`."""
    return json.loads(read_text(path))


def remove(path: str | os.PathLike) -> None:
    """Removes the file at `path`."""
    if is_url(path):
        with _as_os_errors(path):
            _gfile(path).remove(os.fspath(path))
    else:
        os.remove(path)


def remove_tree(path: str | os.PathLike) -> None:
    """Removes the directory `path` and everything under it; a missing path is not an error."""
    if not is_url(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    gfile = _gfile(path)
    path = os.fspath(path)
    if not gfile.exists(path):
        return
    entries = list(walk(path))
    for dirpath, _, files in entries:
        for name in files:
            with contextlib.suppress(Exception):
                gfile.remove(join(dirpath, name))
    for dirpath, _, _ in reversed(entries):  # deepest first; some stores have no directories to remove
        with contextlib.suppress(Exception):
            if gfile.isdir(dirpath):
                gfile.rmtree(dirpath)


def copy(source: str | os.PathLike, target: str | os.PathLike, overwrite: bool = True) -> None:
    """Copies the file `source` to `target` (either may be a URL)."""
    if is_url(source) or is_url(target):
        with _as_os_errors(target):
            _gfile(target if is_url(target) else source).copy(os.fspath(source), os.fspath(target),
                                                               overwrite=overwrite)
    else:
        if not overwrite and os.path.exists(target):
            raise FileExistsError(target)
        shutil.copyfile(source, target)


def rename(source: str | os.PathLike, target: str | os.PathLike, overwrite: bool = True) -> None:
    """Renames the FILE `source` to `target` (same store). Atomic locally; on GCS / S3 a copy and a
    delete, whose target only appears once complete."""
    if is_url(source) or is_url(target):
        with _as_os_errors(target):
            _gfile(target).rename(os.fspath(source), os.fspath(target), overwrite=overwrite)
    elif overwrite:
        atomic.replace_file(source, target)
    else:
        if os.path.exists(target):  # os.rename would replace a file silently on POSIX
            raise FileExistsError(target)
        os.rename(source, target)


def _upload(local: str, target: str) -> None:
    """Publishes the complete local file `local` at the URL `target` (hidden name, then rename)."""
    makedirs(dirname(target))
    hidden = atomic.temporary_path(target)
    try:
        copy(local, hidden)
        rename(hidden, target)
    except BaseException:
        with contextlib.suppress(Exception):
            if exists(hidden):
                remove(hidden)
        raise


@contextlib.contextmanager
def replacing(path: str | os.PathLike, keep_suffix: bool = False) -> Iterator[str]:
    """Context manager: write the file at the yielded LOCAL temporary path; on exit it replaces `path`.

    For a local `path` this is `atomic.replacing`. For a URL the yielded path is a local temporary
    file (any writer works: TFRecordWriter, `model.save`, `savefig`, `zipfile`), uploaded on a normal
    exit under a hidden name beside `path` and renamed over it; on an exception nothing is uploaded.

    Args:
        path: the final path.
        keep_suffix: end the temporary name with `path`'s suffix (Keras and matplotlib check it).

    Yields:
        The temporary path.
    """
    if not is_url(path):
        with atomic.replacing(path, keep_suffix=keep_suffix) as tmp:
            yield tmp
        return
    scratch = tempfile.mkdtemp(prefix="hourglass-upload-")
    try:
        tmp = atomic.temporary_path(os.path.join(scratch, basename(path)), keep_suffix=keep_suffix)
        yield tmp
        _upload(tmp, os.fspath(path))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to `path` atomically (see the module docstring for URLs).

    Args:
        path: the final path (its directory is created if needed).
        data: the file content.
    """
    if not is_url(path):
        atomic.write_bytes(path, data)
        return
    with replacing(path) as tmp:
        with _builtin_open(tmp, "wb") as handle:
            handle.write(data)


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Writes `text` to `path` atomically (no newline translation)."""
    write_bytes(path, text.encode(encoding))


def write_json(path: str | os.PathLike, value: Any, *, indent: int | None = 2, sort_keys: bool = False,
               default: Callable[[Any], Any] | None = None) -> None:
    """Writes `value` as JSON (with a final newline) to `path` atomically (`atomic.write_json`'s args)."""
    write_text(path, json.dumps(value, indent=indent, sort_keys=sort_keys, default=default) + "\n")


def local_staging(target_parent: str | os.PathLike) -> str:
    """Returns: where to write a directory before `publish_directory`, always on the local disk.

    For a local `target_parent`: a fresh hidden non-numeric name inside it (``.tmp-<hex>``, not yet
    created: the same filesystem, so one rename publishes it; the writer creates it with the usual
    permissions). For a URL: a new local temporary directory, uploaded by `publish_directory`.
    """
    if is_url(target_parent):
        return tempfile.mkdtemp(prefix="hourglass-staging-")
    makedirs(target_parent)
    return os.path.join(os.fspath(target_parent), f"{STAGING_PREFIX}{uuid.uuid4().hex}")


def _relative_files(root: str) -> list[str]:
    out = []
    for dirpath, _, files in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        out.extend(name if rel == "." else os.path.join(rel, name).replace(os.sep, "/") for name in files)
    return sorted(out)


def publish_directory(staging: str, target: str | os.PathLike, *, marker: str | None = None) -> None:
    """Publishes the complete directory `staging` (from `local_staging`) as `target`.

    Local `target`: `atomic.fsync_tree(staging)`, one `os.rename` (fails if `target` exists and is
    not empty), `atomic.fsync_directory` of the parent.

    URL `target`: every file is uploaded under ``PARENT/.tmp-<hex>/`` (a non-numeric hidden name that
    TF Serving and our readers ignore); then the files are renamed into `target` with `marker` LAST;
    then the hidden staging name and the local `staging` are removed. `target` must not exist.

    Args:
        staging: the local directory holding the complete content.
        target: the final directory.
        marker: the relative path of the file that makes the directory valid for its readers
            (``saved_model.pb`` for a SavedModel); it is written last. None: no ordering.

    Raises:
        FileExistsError: `target` exists (URL; locally `os.rename` raises `OSError`).
    """
    target = os.fspath(target)
    if not is_url(target):
        atomic.fsync_tree(staging)
        os.rename(staging, target)  # atomic on one filesystem; fails if target is non-empty
        atomic.fsync_directory(os.path.dirname(target) or ".")
        return
    if exists(target):
        raise FileExistsError(target)
    files = _relative_files(staging)
    if marker is not None:
        files = [f for f in files if f != marker] + ([marker] if marker in files else [])
    parent = dirname(target)
    hidden = join(parent, f"{STAGING_PREFIX}{os.getpid()}-{os.urandom(4).hex()}")
    try:
        for rel in files:  # 1. the whole content under the hidden non-numeric name
            makedirs(dirname(join(hidden, rel)))
            copy(os.path.join(staging, rel), join(hidden, rel))
        for rel in files:  # 2. into place, the marker last
            makedirs(dirname(join(target, rel)))
            rename(join(hidden, rel), join(target, rel), overwrite=False)
    finally:
        remove_tree(hidden)
    shutil.rmtree(staging, ignore_errors=True)

