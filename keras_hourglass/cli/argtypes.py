"""Argument types shared by the subcommands: each rejects a bad value with a one-line reason."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Iterable

from keras_hourglass.errors import InputError


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def number(text: str) -> float:
    """Returns: `text` as a float (argparse type)."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def finite(text: str) -> float:
    """Returns: `text` as a finite float (argparse type; NaN and infinities are refused)."""
    value = number(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_number(text: str) -> float:
    """Returns: `text` as a finite float > 0 (argparse type)."""
    value = finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value:g}")
    return value


def positive(text: str) -> int:
    """Returns: `text` as an int >= 1 (argparse type)."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative(text: str) -> int:
    """Returns: `text` as an int >= 0 (argparse type)."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def rate(text: str) -> float:
    """Returns: `text` as a float in [0, 1] (argparse type)."""
    value = number(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


def flags_of(names: Iterable[str], **renamed: str) -> dict[str, str]:
    """A subcommand's table of the flags of the library's Python arguments, for `errors.with_flags`.

    Args:
        names: arguments whose flag is the name spelled with dashes (``crop_size`` -> ``--crop-size``).
        **renamed: arguments whose flag is another name (``prep_dir="--data"``).

    Returns:
        Python argument name -> flag.
    """
    return {**{name: f"--{name.replace('_', '-')}" for name in names}, **renamed}


def check_output_dir(path: str, flag: str) -> None:
    """Checks that an output directory can be used before any work starts.

    Args:
        path: the directory given by the user (it may not exist yet).
        flag: the flag that named it, e.g. "--out" (named in the message).

    Raises:
        InputError: the path is empty, holds a NUL character, is a file (or a broken symlink),
            or lies under a file, so that it could never be created.
    """
    if not path or not str(path).strip():
        raise InputError(flag, "is empty")
    if "\x00" in str(path):
        raise InputError(flag, "contains a NUL character")
    from keras_hourglass import storage

    if storage.is_url(path):
        if storage.exists(path) and not storage.isdir(path):
            raise InputError(path, f"{flag} exists and is not a directory")
        return
    target = os.path.abspath(os.fspath(path))
    if os.path.lexists(target):
        if not os.path.isdir(target):
            raise InputError(path, f"{flag} exists and is not a directory")
        return
    parent = os.path.dirname(target)
    while not os.path.lexists(parent) and parent != os.path.dirname(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise InputError(path, f"{flag} cannot be created: {parent} is a file, not a directory")
