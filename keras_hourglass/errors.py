"""Errors that the CLI turns into a one-line message and exit code 2."""

from __future__ import annotations

import os
import re


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


_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def escape_controls(text: str) -> str:
    """Returns: `text` with control characters escaped (``\\n``, ``\\x1b``, ``\\u202e``).

    Terminal escapes, carriage returns, newlines and bidirectional overrides from tables, file names
    or servers would otherwise rewrite the user's terminal or split a one-line error.
    """
    def escape(match: re.Match) -> str:
        char = match.group(0)
        named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
        if char in named:
            return named[char]
        return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"

    return _CONTROLS.sub(escape, str(text))
