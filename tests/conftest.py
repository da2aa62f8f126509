"""Fixtures shared by several test files.

- `imports_tensorflow`: whether importing some modules in a fresh interpreter loads TensorFlow
  (the TensorFlow-free modules: dicom, the ingest side, contract, atomic).
- `subprocess_env`: the environment of a training subprocess (CPU only, quiet TF, no TF_CONFIG).
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
