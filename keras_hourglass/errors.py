"""Errors that the CLI turns into a one-line message and exit code 2."""

from __future__ import annotations

import os


class InputError(Exception):
    """Bad user input: a file or an argument that cannot be used.

    Args:
        path: the offending file (or argument name); may be None.
        reason: one line saying what is wrong.
    """

    def __init__(self, path: str | os.PathLike | None, reason: str):
        self.path = None if path is None else os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}" if self.path else reason)
