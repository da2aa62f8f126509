"""Reliability: every file of pydicom's bundled test data through `read_mammogram`.

pydicom ships ~180 deliberately varied files (every transfer syntax it knows, big endian, no file
meta, truncated pixel data, bad VRs, RGB/palette/YBR, multi-frame, JSON and text files...). pydicom 3
downloads some more on demand: only the files present on disk in the installed package are used
(offline). Two passes:

1. as-is: each file is decoded or rejected with a typed `DicomError` carrying a code and a reason;
   nothing else may escape (most are rejected as not MG);
2. as if it were a mammogram (Modality forced to MG, re-serialised in memory): exercises the decode
   path over the corpus's transfer syntaxes, bit depths and LUTs. Decoded images must be valid
   (float32, finite, in [0, 1], long side as asked, the stored aspect ratio); an "unreadable" reject
   must be one that pydicom itself cannot decode (no false rejects of decodable files).

Counts by outcome are printed (pytest -s) for the report.
"""

from __future__ import annotations

import collections
import glob
import io
import json
import os
import warnings

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from keras_hourglass.data.dicom import DicomError, read_mammogram  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
LONG_SIDE = 64


def bundled_files() -> list[str]:
    """Every regular file under the installed pydicom/data/test_files (no network)."""
    root = os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files")
    files = sorted(p for p in glob.glob(os.path.join(root, "**", "*"), recursive=True) if os.path.isfile(p))
    if len(files) < 50:
        pytest.skip(f"only {len(files)} bundled pydicom test files under {root}")
    return files


def _outcome(source, name: str) -> tuple[str, object]:
    """('decoded', Mammogram) or (code, DicomError); any other exception propagates to the caller."""
    try:
        return "decoded", read_mammogram(source, long_side=LONG_SIDE)
    except DicomError as err:
        assert err.code and err.code == type(err).code, f"{name}: DicomError without a code"
        assert err.detail.strip(), f"{name}: DicomError without a reason"
        if isinstance(source, str):
            assert err.path == source, f"{name}: the DicomError does not name the file ({err.path})"
        return err.code, err


def _check_image(mammogram, shape: tuple[int, int], name: str) -> None:
    image = mammogram.image
    assert image.dtype == np.float32 and image.ndim == 2, name
    assert np.isfinite(image).all() and image.min() >= 0.0 and image.max() <= 1.0, name
    assert max(image.shape) == LONG_SIDE, f"{name}: {image.shape}"
    rows, cols = shape
    expected = rows / cols
    assert abs(image.shape[0] / image.shape[1] - expected) <= 2.0 / min(image.shape) * expected + 1e-6, \
        f"{name}: aspect {image.shape} vs stored {shape}"


def test_bundled_files_as_is_are_decoded_or_rejected_with_a_reason():
    counts: collections.Counter = collections.Counter()
    unexpected = []
    for path in bundled_files():
        name = os.path.relpath(path, os.path.dirname(pydicom.__file__))
        try:
            outcome, value = _outcome(path, name)
        except Exception as err:  # noqa: BLE001 - the point of the test
            unexpected.append(f"{name}: {type(err).__name__}: {err}"[:300])
            continue
        counts[outcome] += 1
        if outcome == "decoded":
            _check_image(value, value.transform.original_shape, name)
    print(f"\npydicom corpus as-is ({sum(counts.values())} files): {json.dumps(dict(counts.most_common()))}")
    assert not unexpected, "exceptions other than DicomError:\n" + "\n".join(unexpected)
    assert counts["not_mammography"] > 50  # the corpus is mostly CT/MR: the modality check must fire


def _as_mammogram(path: str) -> bytes | None:
    """The file with Modality MG, re-serialised (None when pydicom cannot even parse/write it)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, force=True)
            ds.Modality = "MG"
            buffer = io.BytesIO()
            ds.save_as(buffer)
            return buffer.getvalue()
    except Exception:  # noqa: BLE001 - JSON/ICC/text files and unwritable oddities
        return None


def _pydicom_decodes(data: bytes) -> bool:
    try:
        array = pydicom.dcmread(io.BytesIO(data)).pixel_array
        return array.size > 0
    except Exception:  # noqa: BLE001
        return False


def test_bundled_files_forced_to_mg_decode_cleanly():
    counts: collections.Counter = collections.Counter()
    unexpected, false_rejects = [], []
    for path in bundled_files():
        name = os.path.relpath(path, os.path.dirname(pydicom.__file__))
        data = _as_mammogram(path)
        if data is None:
            counts["not re-serialisable (skipped)"] += 1
            continue
        try:
            outcome, value = _outcome(data, name)
        except Exception as err:  # noqa: BLE001
            unexpected.append(f"{name}: {type(err).__name__}: {err}"[:300])
            continue
        counts[outcome] += 1
        if outcome == "decoded":
            _check_image(value, value.transform.original_shape, name)
        elif outcome == "unreadable" and _pydicom_decodes(data):
            false_rejects.append(f"{name}: rejected as unreadable but pydicom decodes it ({value.detail})")
    print(f"\npydicom corpus forced to MG: {json.dumps(dict(counts.most_common()))}")
    assert not unexpected, "exceptions other than DicomError:\n" + "\n".join(unexpected)
    assert not false_rejects, "\n".join(false_rejects)
    assert counts["decoded"] >= 30, f"too few decoded: {dict(counts)}"
