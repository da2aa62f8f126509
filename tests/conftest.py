"""Fixtures shared by several test files.

- `imports_tensorflow`: whether importing some modules in a fresh interpreter loads TensorFlow
  (the TensorFlow-free modules: dicom, the ingest side, contract, atomic).
- `subprocess_env`: the environment of a training subprocess (CPU only, quiet TF, no TF_CONFIG).

Collection order: the files that hold a `slow` test run first (`pytest_collection_modifyitems`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Callable

import pytest


def _imports_tensorflow(*modules: str) -> bool:
    code = f"import sys; import {', '.join(modules)}; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return {"True": True, "False": False}[out.strip()]


@pytest.fixture
def imports_tensorflow() -> Callable[..., bool]:
    """Returns `f(*module_names) -> bool`: True if importing them (in a new interpreter) imports TensorFlow."""
    return _imports_tensorflow


def _subprocess_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", **extra)
    return env


@pytest.fixture
def subprocess_env() -> Callable[..., dict]:
    """Returns `f(**extra) -> dict`: this environment without TF_CONFIG, CPU only, quiet TF, plus `extra`."""
    return _subprocess_env


def pytest_collection_modifyitems(config, items) -> None:
    """Moves the files that hold a `slow` test to the front, keeping every file's own order.

    `make test` runs pytest-xdist with `--dist loadfile`, which hands out whole files in collection order:
    a long file handed out last keeps one worker busy while the other has nothing left to do.
    """
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # a stable sort
