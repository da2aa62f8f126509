"""The parts of the model contract that come from the run: operating points and lineage (no TensorFlow).

The contract's format and its reader are in `serving.contract` (clients import that side only);
`export.saved_model.export_detector` assembles the whole object.
"""

from __future__ import annotations

import json
import os

from keras_hourglass import storage
from keras_hourglass.data.manifest import file_sha256
from keras_hourglass.errors import InputError

SCALE_RULE = ("resize so the long side is long_side, aspect ratio kept (area averaging when shrinking), "
              "then orient; keras_hourglass.data.dicom.read_mammogram")


def operating_points_from_froc(path: str | os.PathLike, *, system: str | None = None) -> dict:
    """Reads the operating points `hourglass evaluate` measured (its froc.json, or the EVAL directory).

    Args:
        path: `EVAL/froc.json` or `EVAL`.
        system: None for stage one's; "two_stage" for the two-stage system's (`evaluate --classifier`).

    Returns:
        `{"points": {"4.8": {"threshold", "fpi", "sensitivity"}, ...}, "split", "num_images",
        "num_malignant_findings", "froc_sha256", "data_manifest_sha256"}` (the data hash is that of
        the evaluated PREP's manifest.json, None when it is not readable any more); with `system`,
        also `"system"` and `"combination"` (the name the evaluation combined the scores with).

    Raises:
        InputError: the file is missing, not JSON, or has no `operating_points`.
    """
    path = os.fspath(path)
    if storage.isdir(path):
        path = storage.join(path, "froc.json")
    try:
        froc = json.loads(storage.read_text(path))
    except OSError:
        raise InputError(path, "no such froc.json (run hourglass evaluate first)") from None
    except ValueError:
        raise InputError(path, "not a JSON file") from None
    if system is not None:
        block = froc.get(system) if isinstance(froc, dict) else None
        if not isinstance(block, dict):
            raise InputError(path, f"has no {system} results (run hourglass evaluate --classifier)")
        froc = {**froc, **block, "data": froc.get("data")}
    points = froc.get("operating_points") if isinstance(froc, dict) else None
    if not isinstance(points, dict) or not points:
        raise InputError(path, "has no operating_points (not a froc.json of hourglass evaluate)")
    clean = {}
    for key, point in points.items():
        if not isinstance(point, dict) or "threshold" not in point:
            raise InputError(path, f"operating point {str(key)[:20]!r} has no threshold")
        clean[str(key)] = {k: point.get(k) for k in ("threshold", "fpi", "sensitivity")}
    manifest = storage.join(str(froc.get("data", "")), "manifest.json")
    which = {} if system is None else {"system": system, "combination": (froc.get("combination") or {}).get("name")}
    return {
        **which,
        "points": clean,
        "split": froc.get("split"),
        "num_images": froc.get("num_images"),
        "num_malignant_findings": froc.get("num_malignant_findings"),
        "froc_sha256": file_sha256(str(path)),
        "data_manifest_sha256": file_sha256(manifest) if froc.get("data") and storage.isfile(manifest) else None,
    }


def lineage(model_path: str | os.PathLike | None) -> dict:
    """Where the exported model came from: hashes of its run's config.json and PREP manifest.

    Args:
        model_path: `RUN/model.keras` (None for an in-memory model).

    Returns:
        `{"model_sha256", "training_config_sha256", "manifest_sha256", "tuning_trial_id",
        "training_versions", "keras_hourglass_version", "tensorflow_version", "keras_version"}`
        (None where unknown).
    """
    import keras
    import tensorflow as tf

    from keras_hourglass.version import __version__

    found = {"model_sha256": None, "training_config_sha256": None, "manifest_sha256": None,
             "tuning_trial_id": None, "training_versions": None}
    if model_path is not None and storage.isfile(model_path):
        found["model_sha256"] = file_sha256(os.fspath(model_path))
        config_path = storage.join(storage.dirname(model_path), "config.json")
        if storage.isfile(config_path):
            found["training_config_sha256"] = file_sha256(config_path)
            try:
                config = json.loads(storage.read_text(config_path))
            except ValueError:
                config = {}
            config = config if isinstance(config, dict) else {}
            data = config.get("data") if isinstance(config.get("data"), dict) else {}
            found["manifest_sha256"] = data.get("manifest_sha256")
            if found["manifest_sha256"] is None and data.get("prep_dir"):
                manifest = storage.join(data["prep_dir"], "manifest.json")
                found["manifest_sha256"] = file_sha256(manifest) if storage.isfile(manifest) else None
            tuning = config.get("tuning") if isinstance(config.get("tuning"), dict) else {}
            found["tuning_trial_id"] = tuning.get("trial_id", config.get("trial_id"))
            found["training_versions"] = config.get("versions")
    return {**found, "keras_hourglass_version": __version__, "tensorflow_version": tf.__version__,
            "keras_version": keras.__version__}
