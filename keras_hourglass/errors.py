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


class ArgumentError(InputError):
    """A bad value of a Python argument of the library: `argument` is its name (``signature``,
    ``max_message_bytes``), and the reason refers to arguments as ``name=``. A CLI turns both into its
    flags with `with_flags`, in one place per subcommand.
    """

    def __init__(self, argument: str, reason: str):
        super().__init__(argument, reason)
        self.argument = argument


def with_flags(err: InputError, flags: dict[str, str]) -> InputError:
    """The CLI's form of a library error: `ArgumentError`'s argument and every ``name=`` in the reason
    of any `InputError` replaced by the flag `flags[name]` (``signature=detect_png`` ->
    ``--signature detect_png``, ``patch_epochs=-1`` -> ``--patch-epochs -1``; ``max_message_bytes=,`` ->
    ``--max-message-mb,``).

    Args:
        err: the library's error.
        flags: Python argument name -> CLI flag.

    Returns:
        An `InputError` naming the flag (or the file) for the CLI to print.
    """
    if not flags:
        return err
    names = "|".join(sorted(map(re.escape, flags), key=len, reverse=True))
    reason = re.sub(rf"\b({names})=(?=[-+]?\w)", lambda m: flags[m.group(1)] + " ", err.reason)
    reason = re.sub(rf"\b({names})=", lambda m: flags[m.group(1)], reason)
    if isinstance(err, ArgumentError):
        return InputError(flags.get(err.argument, err.argument), reason)
    return InputError(err.path, reason)
