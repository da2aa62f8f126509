"""Atomic file writes on a local filesystem, with the fsync rules written once (no TensorFlow).

A file written here is, at every instant (including after a SIGKILL or a power cut), either absent,
its previous version or its complete new version:

1. the content goes to a hidden temporary name in the SAME directory (`temporary_path`:
   ``.NAME.<pid>-<random>.tmp``, never matched by a reader's ``*.tfrecord`` / ``*.json`` glob;
   ``keep_suffix=True`` ends it with NAME's suffix for writers that insist on one, such as
   `keras.Model.save` or `savefig`);
2. the temporary file is flushed and fsynced;
3. `os.replace` renames it over the final name (atomic on POSIX, same filesystem);
4. the directory is fsynced, so the rename itself survives a crash.

On an error the temporary file is removed and the final name is untouched.

`replacing(path)` yields the temporary path for writers that need a path (TFRecordWriter, Keras);
`write_bytes`, `write_text` and `write_json` cover the rest. A whole directory written in a staging
place (a SavedModel version) is published the same way: `fsync_tree(staging)` (every file and
directory in it), then one rename by its owner, then `fsync_directory` of the parent.
URLs (gs://, s3://) are handled by `keras_hourglass.storage`, which uses this module for local paths.

May import: the standard library only. Used by: `keras_hourglass.data` (manifest, records, prepare,
examplegen), `keras_hourglass.training.callbacks`, tuning/, export/ (fsync_tree), serving/ and benchmarks/.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from typing import Any, Callable, Iterator

TEMP_SUFFIX = ".tmp"


def temporary_path(path: str | os.PathLike, keep_suffix: bool = False) -> str:
    """Returns a hidden, unique temporary name beside `path`.

    Args:
        path: the final path.
        keep_suffix: end the name with `path`'s suffix(es) (``model.keras`` ->
            ``.model.<pid>-<hex>.tmp.keras``) for writers that check it.

    Returns:
        ``DIR/.NAME.<pid>-<hex>.tmp`` (or the suffixed form).
    """
    directory, name = os.path.split(os.fspath(path))
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    if keep_suffix:
        stem, _, suffix = name.partition(".")
        if stem and suffix:
            return os.path.join(directory, f".{stem}.{token}{TEMP_SUFFIX}.{suffix}")
    return os.path.join(directory, f".{name}.{token}{TEMP_SUFFIX}")


def fsync_directory(directory: str | os.PathLike) -> None:
    """Flushes a directory entry (a rename or a new file in it) to disk.

    Args:
        directory: the directory ("" means the current one). Platforms that cannot open a directory
            (Windows) are skipped silently.
    """
    try:
        fd = os.open(os.fspath(directory) or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike) -> None:
    """Flushes a file's content to disk (call before the rename that publishes it)."""
    fd = os.open(os.fspath(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)



def fsync_tree(root: str | os.PathLike) -> None:
    """Flushes every file under `root`, and every directory's entries, to disk: what a directory
    written in a staging place needs before the one rename that publishes it.

    Args:
        root: the staging directory.
    """
    root = os.fspath(root)
    for dirpath, _, files in os.walk(root, topdown=False):
        for name in files:
            fsync_file(os.path.join(dirpath, name))
        fsync_directory(dirpath)


def replace_file(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Renames the complete file `source` over `target` (same filesystem) and fsyncs the directory."""
    os.replace(source, target)
    fsync_directory(os.path.dirname(os.fspath(target)))


@contextlib.contextmanager
def replacing(path: str | os.PathLike, keep_suffix: bool = False) -> Iterator[str]:
    """Context manager: write the file at the yielded temporary path; on exit it replaces `path`.

    Creates `path`'s directory if needed. On a normal exit the temporary file is fsynced, renamed
    over `path` and the directory fsynced; on an exception the temporary file is removed.

    Args:
        path: the final path.
        keep_suffix: see `temporary_path`.

    Yields:
        The temporary path (same directory).
    """
    path = os.fspath(path)
    directory = os.path.dirname(path)
    os.makedirs(directory or ".", exist_ok=True)
    tmp = temporary_path(path, keep_suffix=keep_suffix)
    try:
        yield tmp
        if os.path.isfile(tmp):
            fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.isfile(tmp):
            os.remove(tmp)
    fsync_directory(directory)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to `path` atomically.

    Args:
        path: the final path (its directory is created if needed).
        data: the file content.
    """
    with replacing(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Writes `text` to `path` atomically (no newline translation).

    Args:
        path: the final path.
        text: the file content.
        encoding: text encoding.
    """
    write_bytes(path, text.encode(encoding))


def write_json(path: str | os.PathLike, value: Any, *, indent: int | None = 2, sort_keys: bool = False,
               default: Callable[[Any], Any] | None = None) -> None:
    """Writes `value` as JSON (with a final newline) to `path` atomically.

    Args:
        path: the final path.
        value: a JSON-serialisable value.
        indent: `json.dumps` indent.
        sort_keys: `json.dumps` sort_keys.
        default: `json.dumps` default (e.g. `str` for values JSON cannot hold).
    """
    write_text(path, json.dumps(value, indent=indent, sort_keys=sort_keys, default=default) + "\n")
