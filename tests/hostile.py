"""Helpers of the hostile-input tests: who opened what, what changed on disk, how a run ended.

- `OpenRecorder`: records every file this process opens (a `sys.addaudithook` on the ``open``
  event, which `open()`, `os.open` and `io.open` raise), so a test can prove that no file outside
  the allowed directories was read. Audit hooks cannot be removed; the hook is installed once and
  records only while a recorder is active.
- `snapshot` / `changed_outside`: what was created, modified or removed under a directory,
  outside the directories a run may write.
- `run_cli`: the CLI in-process with stdout/stderr captured; an uncaught exception becomes a
  "traceback" outcome instead of failing the test at once, so a table of cases reports all of them.
  It freezes the objects alive before each command (see there); `unfreeze_gc` releases them.
- `escaping_paths`: every spelling of an image path that leaves the images root that we try.
"""

from __future__ import annotations

import contextlib
import gc
import io
import os
import sys
import threading
import traceback
import warnings

_ACTIVE: list["OpenRecorder"] = []
_LOCK = threading.Lock()
_INSTALLED = False


def _hook(event: str, args: tuple) -> None:
    if event != "open" or not _ACTIVE:
        return
    path = args[0]
    if isinstance(path, int):
        return  # os.fdopen of a descriptor opened before
    try:
        name = os.fsdecode(path)
    except (TypeError, ValueError):
        return
    with _LOCK:
        for recorder in _ACTIVE:
            recorder.opened.append(name)


class OpenRecorder:
    """Context manager: `opened` lists every path opened in this process while active."""

    def __init__(self):
        self.opened: list[str] = []

    def __enter__(self) -> "OpenRecorder":
        global _INSTALLED
        if not _INSTALLED:
            sys.addaudithook(_hook)
            _INSTALLED = True
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc) -> None:
        _ACTIVE.remove(self)

    def under(self, directory: str | os.PathLike) -> list[str]:
        """Returns: the opened paths whose real path lies in `directory` (real path compared)."""
        base = os.path.realpath(os.fspath(directory))
        found = []
        for name in self.opened:
            real = os.path.realpath(name)
            if real == base or real.startswith(base + os.sep):
                found.append(name)
        return found


def snapshot(root: str | os.PathLike, skip: tuple[str | os.PathLike, ...] = ()) -> dict[str, tuple]:
    """Returns: relative path -> (size, mtime_ns, kind) of everything under `root` except `skip` dirs."""
    root = os.fspath(root)
    skipped = {os.path.realpath(os.fspath(s)) for s in skip}
    state = {}
    for directory, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if os.path.realpath(os.path.join(directory, d)) not in skipped]
        for name in dirnames + filenames:
            path = os.path.join(directory, name)
            info = os.lstat(path)
            kind = "link" if os.path.islink(path) else ("dir" if os.path.isdir(path) else "file")
            state[os.path.relpath(path, root)] = (info.st_size if kind == "file" else 0,
                                                  info.st_mtime_ns if kind == "file" else 0, kind)
    return state


def changed_outside(before: dict, after: dict) -> list[str]:
    """Returns: the relative paths created, removed or modified between two snapshots."""
    return sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))


class Outcome:
    """How one CLI run ended.

    Attributes:
        code: the exit code (None when an exception escaped: a traceback).
        out, err: captured stdout and stderr.
        traceback: the formatted exception that escaped, or "".
    """

    def __init__(self, code, out: str, err: str, tb: str = ""):
        self.code, self.out, self.err, self.traceback = code, out, err, tb

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]

    def __repr__(self) -> str:
        return f"Outcome(code={self.code}, err={self.err[-400:]!r}, traceback={self.traceback[-600:]!r})"


@contextlib.contextmanager
def unfreeze_gc():
    """Yields; then returns what `run_cli` froze to the collector (`gc.unfreeze`)."""
    try:
        yield
    finally:
        gc.unfreeze()


def run_cli(argv: list) -> Outcome:
    """Runs `hourglass ARGV` in this process, capturing Python-level stdout/stderr.

    Returns:
        The `Outcome`; SystemExit (argparse) gives its code; any other exception is recorded as a
        traceback (code None).
    """
    from keras_hourglass.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    code, tb = None, ""
    # Objects earlier tests left for the garbage collector (e.g. a test double's socket) would warn
    # inside the window below and pass for this command's output: collect them first, then freeze
    # what survives (`gc.freeze`: never collected, so it cannot warn inside any later window), so the
    # next command's collection scans only what was made since (a full collection of the suite's heap
    # takes seconds: 45 of them were most of a 7-minute test). `unfreeze_gc` ends it per module.
    gc.collect()
    gc.freeze()
    # Python warnings reach a user's terminal as stderr lines: record them (whatever pytest's filters
    # say) and count them as stderr, so the PHI scan and the one-line rule see them.
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
            warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            code = main([os.fspath(a) if isinstance(a, os.PathLike) else str(a) for a in argv])
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
        except BaseException:  # noqa: BLE001 - exactly what the suite looks for
            tb = traceback.format_exc()
    shown = "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno) for w in caught
                    if not issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning)))
    return Outcome(code, out.getvalue(), err.getvalue() + shown, tb)


def escaping_paths(outside_rel: str, outside_abs: str) -> dict[str, str]:
    """Every spelling of a path leaving the images root that the suite tries.

    Args:
        outside_rel: the target relative to the images root, e.g. "../outside/canary.dcm".
        outside_abs: the same target as an absolute path.

    Returns:
        name -> image_path cell.
    """
    name = os.path.basename(outside_rel)
    parent = os.path.dirname(outside_rel)
    return {
        "dotdot": outside_rel,
        "dot_dotdot": "./" + outside_rel,
        "deep_dotdot": "a/b/../../" + outside_rel,
        "missing_dir_dotdot": "no_such_dir/../" + outside_rel,
        "double_slash": outside_rel.replace("/", "//"),
        "absolute": outside_abs,
        "absolute_dotdot": os.path.join(os.path.dirname(outside_abs), "..", os.path.basename(os.path.dirname(outside_abs)),
                                        name),
        "etc_passwd": "/etc/passwd",
        "etc_shadow": "/etc/shadow",
        "dotdot_etc_shadow": "../" * 12 + "etc/shadow",
        "absolute_missing": os.path.join(os.path.dirname(outside_abs), "does_not_exist.dcm"),
        "dotdot_missing": os.path.join(parent, "does_not_exist.dcm"),
        "proc_self": "/proc/self/environ",
        "dev_zero": "/dev/zero",
        "symlink_file": "links/canary_link.dcm",
        "symlink_dir": "links/outside_dir/" + name,
        "symlink_dir_dotdot": "links/outside_dir/../" + os.path.basename(os.path.dirname(outside_abs)) + "/" + name,
        "symlink_chain": "links/chain.dcm",
        "symlink_to_missing": "links/dangling.dcm",
    }


def plant_links(root: str | os.PathLike, outside_dir: str | os.PathLike, canary: str | os.PathLike) -> None:
    """Creates root/links/ with the symlinks `escaping_paths` names (all pointing outside the root)."""
    links = os.path.join(os.fspath(root), "links")
    os.makedirs(links, exist_ok=True)
    os.symlink(os.fspath(canary), os.path.join(links, "canary_link.dcm"))
    os.symlink(os.fspath(outside_dir), os.path.join(links, "outside_dir"))
    os.symlink(os.path.join(links, "canary_link.dcm"), os.path.join(links, "chain.dcm"))
    os.symlink(os.path.join(os.fspath(outside_dir), "nothing_here.dcm"), os.path.join(links, "dangling.dcm"))
