"""Loading a user-named `.keras` file as a heatmap model, with one-line errors (used by evaluate and export).

`keras.saving.load_model` fails on a bad file with messages that mislead ("File not found" for a
corrupt archive) or with a traceback deep in deserialisation, and happily loads models that are no
heatmap detector at all (a classifier, a 3-channel segmenter), which then fail later with a shape
error. `load_heatmap_model` checks the file's form first, loads it, then checks the contract every
consumer relies on: one image input ``[B, H, W, 1]`` and every output a one-channel heatmap
``[B, h, w, 1]``.

The model file also carries its preprocessing (`embed_preprocessing` / `read_preprocessing`): the
manifest's ``preprocessing`` block that `hourglass train` read from PREP, stored as one more entry of
the ``.keras`` zip, `PREPROCESSING_ENTRY`. Keras's loader reads only the entries it knows
(config.json, metadata.json, model.weights.h5, assets/), so the file stays a plain Keras model for
`keras.saving.load_model`, and the block is readable without TensorFlow or Keras (zipfile only), which
is what export and the TF-free tools need. A model re-saved by Keras itself drops the entry (export
then falls back to RUN/config.json, which records the same block).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import zipfile

from keras_hourglass import storage
from keras_hourglass.errors import InputError, escape_controls

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
PREPROCESSING_ENTRY = "keras_hourglass/preprocessing.json"
"""The ``.keras`` zip entry holding the training preprocessing (`contract.PREPROCESSING_KEYS`)."""


def embed_preprocessing(path: str | os.PathLike, preprocessing: dict) -> None:
    """Adds the training preprocessing block to a `.keras` file Keras just wrote (before it is published).

    Args:
        path: the `.keras` zip (written by `model.save`; call this on the temporary file).
        preprocessing: the manifest's ``preprocessing`` block (JSON-safe).

    Raises:
        ValueError: `path` is not a zip archive, or already carries a preprocessing entry.
    """
    path = os.fspath(path)
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a .keras zip archive")
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        if PREPROCESSING_ENTRY in archive.namelist():
            raise ValueError(f"{path} already carries {PREPROCESSING_ENTRY}")
        archive.writestr(PREPROCESSING_ENTRY, json.dumps(dict(preprocessing), sort_keys=True))


def _archive(path: str):
    """Returns: what `zipfile` reads for `path`: the path itself, or a URL's bytes in memory."""
    return io.BytesIO(storage.read_bytes(path)) if storage.is_url(path) else path


def read_preprocessing(path: str | os.PathLike) -> dict | None:
    """Returns: the preprocessing block a `.keras` file carries, or None (an older model, an .h5 file, a
    model re-saved by Keras, an unreadable entry)."""
    path = os.fspath(path)
    try:
        with zipfile.ZipFile(_archive(path)) as archive:
            if PREPROCESSING_ENTRY not in archive.namelist():
                return None
            block = json.loads(archive.read(PREPROCESSING_ENTRY).decode("utf-8"))
    except (OSError, zipfile.BadZipFile, ValueError, KeyError):
        return None
    return block if isinstance(block, dict) else None


def check_archive(path: str) -> None:
    """Raises InputError unless `path` is a file that looks like a Keras model (a zip with config.json, or HDF5)."""
    if storage.isdir(path):
        raise InputError(path, "is a directory, not a .keras model file (give RUN/model.keras)")
    if not storage.isfile(path):
        raise InputError(path, "no such model file")
    source = _archive(path)
    with storage.open(path, "rb") if isinstance(source, str) else contextlib.nullcontext(source) as handle:
        head = handle.read(8)
    if head == HDF5_MAGIC:
        return  # a legacy .h5 model: Keras reads it
    if not zipfile.is_zipfile(source):
        raise InputError(path, "not a Keras model archive (a .keras file is a zip holding config.json)")
    try:
        with zipfile.ZipFile(source) as archive:
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        raise InputError(path, "not a Keras model archive (corrupt zip)") from None
    if "config.json" not in names:
        raise InputError(path, "not a Keras model archive (the zip holds no config.json)")


def check_heatmap_model(model, path: str) -> None:
    """Raises InputError unless `model` has one image input [B, H, W, 1] and one-channel 4-D outputs.

    Args:
        model: a loaded Keras model.
        path: its file (named in the message).
    """
    try:
        inputs, outputs = list(model.inputs), list(model.outputs)
    except (AttributeError, ValueError):
        raise InputError(path, "not a heatmap model: it has no defined inputs/outputs (a subclassed model?)") from None
    if len(inputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].shape[-1] not in (1, None):
        shapes = ", ".join(str(tuple(t.shape)) for t in inputs)
        raise InputError(path, f"not a one-channel heatmap model: expected one image input [B, H, W, 1], "
                               f"it takes {shapes or 'no input'}")
    bad = [t for t in outputs if len(t.shape) != 4 or t.shape[-1] != 1]
    if not outputs or bad:
        shapes = ", ".join(str(tuple(t.shape)) for t in outputs)
        raise InputError(path, f"not a one-channel heatmap model: expected heatmap outputs [B, h, w, 1], "
                               f"it returns {shapes or 'nothing'}")


def load_model_file(path: str | os.PathLike):
    """Loads a `.keras` model file (compile=False) with one-line errors; checks nothing else.

    Args:
        path: the model file given by the user.

    Returns:
        The `keras.Model`.

    Raises:
        InputError: no such file, a directory, not a Keras archive, or not loadable.
    """
    import keras

    path = os.fspath(path)
    check_archive(path)
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as err:  # noqa: BLE001 - any load failure is a bad input file
        lines = str(err).strip().splitlines()
        detail = escape_controls(" ".join(lines[0].split()))[:200] if lines else type(err).__name__
        raise InputError(path, f"cannot load the Keras model ({type(err).__name__}: {detail})") from None


def load_heatmap_model(path: str | os.PathLike):
    """Loads a `.keras` model file (compile=False) and checks that it is a one-channel heatmap model.

    Args:
        path: the model file given by the user.

    Returns:
        The `keras.Model`.

    Raises:
        InputError: no such file, a directory, not a Keras archive, not loadable, or not a heatmap model.
    """
    import keras_hourglass.losses  # noqa: F401 - registers the losses
    import keras_hourglass.model  # noqa: F401 - registers the custom layers

    path = os.fspath(path)
    model = load_model_file(path)
    check_heatmap_model(model, path)
    return model
