"""Atomic, versioned SavedModel export for TensorFlow Serving.

TF Serving watches `BASE/` and loads every directory whose name is an
integer as a version; it has loaded half-copied versions before
(tensorflow/serving#1086). So the export is written under a non-numeric
temporary directory inside BASE (`BASE/.tmp-<uuid>`, same filesystem),
completed (SavedModel, warmup, metadata), verified, and only then renamed
to `BASE/<version>` with one `os.rename`: a watcher sees either nothing or
a complete version.

Layout of one version:

```
BASE/<version>/saved_model.pb, variables/, fingerprint.pb
BASE/<version>/assets.extra/tf_serving_warmup_requests   # PredictionLog TFRecord
BASE/<version>/assets.extra/keras_hourglass.json         # the model contract (serving.contract),
                                                         # the same JSON as the `metadata` signature
```
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import shutil
import uuid
from pathlib import Path

from keras_hourglass.atomic import fsync_directory, fsync_tree
from keras_hourglass.errors import InputError, escape_controls
from serving.contract import METADATA_FILE, list_versions, metadata_path, read_export_metadata  # noqa: F401

log = logging.getLogger(__name__)
TMP_PREFIX = ".tmp-"


@dataclasses.dataclass
class ExportResult:
    """Result of an export.

    Attributes:
        path: the version directory, `BASE/<version>`.
        version: the integer version.
        metadata: the content of `assets.extra/keras_hourglass.json`.
        verification: `VerificationReport.to_json()` (None if not verified).
    """

    path: str
    version: int
    metadata: dict
    verification: dict | None

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def version_problem(version_dir: str | os.PathLike) -> str | None:
    """Returns: why a published version directory cannot be loaded by TF Serving, or None if it looks whole.

    Checks what a half-copied or damaged version lacks: a parseable ``saved_model.pb`` and, when
    there is a ``variables/`` directory, its ``variables.index``.
    """
    from tensorflow.core.protobuf import saved_model_pb2

    pb = os.path.join(version_dir, "saved_model.pb")
    if not os.path.isfile(pb):
        return "no saved_model.pb"
    try:
        with open(pb, "rb") as handle:
            saved_model_pb2.SavedModel().ParseFromString(handle.read())
    except Exception:  # noqa: BLE001 - protobuf raises DecodeError and others on garbage
        return "saved_model.pb is not a SavedModel protocol buffer"
    variables = os.path.join(version_dir, "variables")
    if os.path.isdir(variables) and not os.path.isfile(os.path.join(variables, "variables.index")):
        return "variables/ has no variables.index"
    return None


def next_version(base_path: str | os.PathLike) -> int:
    """Returns: one more than the largest version under `base_path`, or 1."""
    versions = list_versions(base_path)
    return versions[-1] + 1 if versions else 1


def export_detector(
    detector,
    base_path: str | os.PathLike,
    *,
    version: int | None = None,
    model_name: str = "hourglass",
    metadata: dict | None = None,
    verify: str = "full",
    verify_image_hw: tuple[int, int] | None = None,
    batch_sizes: tuple[int, ...] = (1,),
    _atomic: bool = True,
) -> ExportResult:
    """Writes `detector`'s signatures as a new version under `base_path`.

    Args:
        detector: an `export.signatures.HourglassDetector`.
        base_path: the model's base path (the directory TF Serving watches).
        version: the version number; default: the next integer. An existing
            version is never overwritten.
        model_name: model name written into the warmup requests.
        metadata: extra entries of the model contract (`build_contract`): `preprocessing`,
            `operating_points`, `source_model` (RUN/model.keras: lineage hashes), ...
        verify: "full" (op check + saved_model_cli subprocesses + warmup
            replay), "ops" (op check only) or "none".
        verify_image_hw: image size for the saved_model_cli run check (default: `2 * multiple + 3` x
            `multiple + 5` for the detector's input multiple, a multiple of neither it nor the stride, so
            the check covers the padding and the heatmap crop to `ceil(H / stride) x ceil(W / stride)`).
        batch_sizes: batch sizes to warm up (`allowed_batch_sizes` when TF Serving batches).
        _atomic: testing only: False writes straight into `BASE/<version>`
            (the unsafe way), so the atomicity test can show it fails.

    Returns:
        An `ExportResult`.

    Raises:
        InputError: the version exists, or the version is not positive.
        export.verify.VerificationError: the SavedModel failed verification
            (nothing is published).
    """
    from export.signatures import build_export_archive
    from export.verify import verify_saved_model
    from export.warmup import build_warmup_requests, write_warmup_requests
    from serving.contract import ModelContract, contract_text

    if verify not in ("full", "ops", "none"):
        raise ValueError(f"verify must be 'full', 'ops' or 'none', got {verify!r}")
    base = Path(base_path)
    if version is not None:
        if version < 1:
            raise InputError(base, f"version must be a positive integer, got {version}")
        if (base / str(version)).exists():
            raise InputError(base / str(version), "version already exists; refusing to overwrite it")
    base.mkdir(parents=True, exist_ok=True)

    from export.warmup import warmup_shapes

    warm_side = detector.long_side or 512
    warmup = {"long_side": warm_side, "shapes": [list(shape) for shape in warmup_shapes(warm_side)],
              "batch_sizes": sorted({int(b) for b in batch_sizes})}
    meta = build_contract(detector, {"warmup": warmup, **(metadata or {})})
    text = contract_text(meta)
    ModelContract.from_text(text, source="export")  # what the clients will parse
    staging = str(base / f"{TMP_PREFIX}{uuid.uuid4().hex}") if _atomic else str(base / str(version or next_version(base)))
    try:
        build_export_archive(detector, text).write_out(staging, verbose=False)
        write_warmup_requests(
            staging,
            build_warmup_requests(model_name=model_name, long_side=warm_side, batch_sizes=batch_sizes),
        )
        with open(metadata_path(staging), "w", encoding="utf-8") as f:
            f.write(text)
        report = None
        if verify != "none":
            report = verify_saved_model(
                staging,
                stride=detector.stride,
                max_marks=detector.max_marks,
                image_hw=verify_image_hw or (2 * detector.input_multiple + 3, detector.input_multiple + 5),
                run_cli=verify == "full",
                warmup=verify == "full",
            ).to_json()
        if not _atomic:
            return ExportResult(staging, int(os.path.basename(staging)), meta, report)
        fsync_tree(staging)
        final = _publish(staging, base, version)
        fsync_directory(base)  # the rename itself
    except BaseException:
        if _atomic:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportResult(str(final), int(final.name), meta, report)


def build_contract(detector, metadata: dict | None = None) -> dict:
    """The model contract of an export (`serving.contract`): the detector's settings, preprocessing
    (read_mammogram's defaults unless `metadata["preprocessing"]` says otherwise), operating points
    and lineage.

    Args:
        detector: an `export.signatures.HourglassDetector`.
        metadata: entries to add or override (`preprocessing` is merged into the defaults).

    Returns:
        The contract as a JSON-safe dict.
    """
    from export.contract import SCALE_RULE, lineage
    from keras_hourglass.data.dicom import DEFAULT_MAX_PIXELS
    from serving.contract import CONTRACT_FORMAT, SIGNATURE_NAMES

    extra = dict(metadata or {})
    trace = lineage(extra.get("source_model"))
    preprocessing = {"long_side": detector.long_side, "windowing": "auto", "orientation": "left",
                     "max_pixels": DEFAULT_MAX_PIXELS, "scale_rule": SCALE_RULE,
                     **(extra.pop("preprocessing", None) or {})}
    preprocessing["long_side"] = detector.long_side
    return {
        "format": CONTRACT_FORMAT,
        "keras_hourglass_version": trace["keras_hourglass_version"],
        "tensorflow_version": trace["tensorflow_version"],
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "signatures": list(SIGNATURE_NAMES),
        "stride": detector.stride,
        "input_multiple": detector.input_multiple,
        "max_marks": detector.max_marks,
        "threshold": detector.threshold,
        "pool_size": detector.pool_size,
        "breast_only": detector.breast_only,
        "long_side": detector.long_side,
        "preprocessing": preprocessing,
        "operating_points": extra.pop("operating_points", None),
        "lineage": trace,
        **extra,
    }


def _publish(staging: str, base: Path, version: int | None) -> Path:
    """Renames `staging` to `base/<version>` (the next free one if None)."""
    for _ in range(100):
        target = base / str(version if version is not None else next_version(base))
        if not target.exists():
            try:
                os.rename(staging, target)  # atomic on one filesystem; fails if target is non-empty
                return target
            except OSError:
                if not target.exists():
                    raise
        if version is not None:
            raise InputError(target, "version already exists; refusing to overwrite it")
    raise RuntimeError(f"{base}: could not find a free version number")


def load_inference_model(model_path: str | os.PathLike):
    """Loads `RUN/model.keras` (compile=False) and returns `(inference_model, stride, input_multiple)`.

    Raises:
        InputError: the file is missing or is not a loadable Keras model.
    """
    from keras_hourglass.model import hourglass
    from keras_hourglass.modelfile import load_heatmap_model

    path = os.fspath(model_path)
    model = load_heatmap_model(path)
    try:
        model = hourglass.inference_model(model)
        stride = int(hourglass.model_stride(model))
        multiple = int(hourglass.model_input_multiple(model))
    except (ValueError, TypeError) as err:
        raise InputError(path, f"not a fully convolutional heatmap model ({type(err).__name__})") from None
    return model, stride, multiple


def export_keras_model(
    model_path: str | os.PathLike,
    base_path: str | os.PathLike,
    *,
    version: int | None = None,
    max_marks: int = 100,
    threshold: float = 0.0,
    long_side: int | None = None,
    model_name: str = "hourglass",
    verify: str = "full",
    evaluation: str | os.PathLike | None = None,
    batch_sizes: tuple[int, ...] = (1,),
) -> ExportResult:
    """`hourglass export`: loads `RUN/model.keras` and exports it under `base_path`.

    Args:
        model_path: a Keras model file saved by `hourglass train`.
        base_path: TF Serving base path of the model.
        version: version to write; default: the next integer.
        max_marks: mark rows per image in the outputs.
        threshold: default score threshold.
        long_side: training long side; default: the preprocessing the model carries
            (`training_preprocessing`: model.keras, else its run's config.json, else, for old
            models only, its prepared data's manifest); 0 when none is known (clients then
            need an explicit long side).
        model_name: model name written into the warmup requests.
        verify: see `export_detector`.
        evaluation: `EVAL/froc.json` (or `EVAL`) of `hourglass evaluate` on this model: its
            operating points go into the contract.
        batch_sizes: batch sizes to warm up (`serving.batching.allowed_batch_sizes`).

    Returns:
        An `ExportResult`.
    """
    from export.contract import operating_points_from_froc
    from export.signatures import HourglassDetector

    operating_points = operating_points_from_froc(evaluation) if evaluation is not None else None

    model, stride, multiple = load_inference_model(model_path)
    preprocessing = training_preprocessing(model_path)
    if long_side is None:
        long_side = int(preprocessing.get("long_side", 0))
        if not long_side:
            log.warning("%s: no training preprocessing found (not in the model, its config.json or its prepared "
                        "data): the export records long side 0 and clients must give long_side",
                        escape_controls(str(model_path)))
    detector = HourglassDetector(
        model,
        stride=stride,
        input_multiple=multiple,
        max_marks=max_marks,
        threshold=threshold,
        long_side=long_side,
    )
    return export_detector(
        detector,
        base_path,
        version=version,
        model_name=model_name,
        metadata={"source_model": os.path.abspath(model_path),
                  "preprocessing": {**preprocessing, "long_side": long_side},
                  "operating_points": operating_points},
        verify=verify,
        batch_sizes=batch_sizes,
    )


def training_preprocessing(model_path: str | os.PathLike) -> dict:
    """The preprocessing the model was trained with, read from what travels with the model.

    In order: the block model.keras carries (`keras_hourglass.modelfile.read_preprocessing`, written
    by `hourglass train`); the ``preprocessing`` entry of the run's config.json; for models trained
    before either existed, the run's prepared data (config.json ``data.prep_dir``/manifest.json) with
    a warning, since that directory may be gone or changed.

    Returns:
        The manifest's ``preprocessing`` block (`keras_hourglass.contract.PREPROCESSING_KEYS`; at
        least ``long_side`` when known), plus ``source`` ("model", "config" or "prep_dir"); {} if
        nothing is found.
    """
    from keras_hourglass.contract import PREPROCESSING_KEYS
    from keras_hourglass.modelfile import read_preprocessing

    def usable(block) -> dict | None:
        if not isinstance(block, dict):
            return None
        side = block.get("long_side", block.get("size"))
        if not isinstance(side, int) or isinstance(side, bool) or side <= 0:
            return None
        return {**{k: block[k] for k in PREPROCESSING_KEYS if k in block}, "long_side": side}

    found = usable(read_preprocessing(model_path))
    if found:
        return {**found, "source": "model"}
    try:
        config = json.loads(Path(model_path).with_name("config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = None
    if not isinstance(config, dict):
        return {}
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    found = usable(config.get("preprocessing")) or usable(config) or usable(data)  # older runs: a bare long_side
    if found:
        return {**found, "source": "config"}
    prep_dir = data.get("prep_dir")
    if not prep_dir:
        return {}
    log.warning("%s carries no preprocessing (trained before the contract travelled with the model): reading it "
                "from its prepared data %s, which must be unchanged since training", escape_controls(str(model_path)),
                escape_controls(str(prep_dir)))
    try:
        manifest = json.loads((Path(prep_dir) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = None
    found = usable(manifest.get("preprocessing")) if isinstance(manifest, dict) else None
    if not found:
        log.warning("%s: no readable manifest with a preprocessing block: the export's long side is unknown "
                    "(give long_side)", escape_controls(str(prep_dir)))
        return {}
    return {**found, "source": "prep_dir"}
