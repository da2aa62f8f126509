"""Atomic, versioned SavedModel export for TensorFlow Serving.

TF Serving watches `BASE/` and loads every directory whose name is an
integer as a version; it has loaded half-copied versions before
(tensorflow/serving#1086). So the export is written under a non-numeric
staging directory (`keras_hourglass.storage.local_staging`: `BASE/.tmp-<uuid>`
when BASE is local, a local temporary directory when BASE is a URL),
completed (SavedModel, warmup, metadata), verified there, and only then
published by `storage.publish_directory`: locally one `os.rename` (a watcher
sees either nothing or a complete version); on an object store without atomic
rename (gs://, s3://) the complete version is uploaded under the non-numeric
`BASE/.tmp-*` first, then moved file by file into `BASE/<version>` with
`saved_model.pb` LAST, so a version is never loadable before it is whole.

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
from typing import Callable

from keras_hourglass import storage
from keras_hourglass.errors import InputError, escape_controls
from serving.contract import METADATA_FILE, list_versions, metadata_path, read_export_metadata  # noqa: F401

log = logging.getLogger(__name__)
TMP_PREFIX = storage.STAGING_PREFIX
MARKER = "saved_model.pb"
"""The file whose presence makes a version directory a SavedModel: published last on object stores."""


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

    pb = storage.join(os.fspath(version_dir), MARKER)
    if not storage.isfile(pb):
        return "no saved_model.pb"
    try:
        saved_model_pb2.SavedModel().ParseFromString(storage.read_bytes(pb))
    except Exception:  # noqa: BLE001 - protobuf raises DecodeError and others on garbage
        return "saved_model.pb is not a SavedModel protocol buffer"
    variables = storage.join(os.fspath(version_dir), "variables")
    if storage.isdir(variables) and not storage.isfile(storage.join(variables, "variables.index")):
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
    checks: tuple[Callable[[str], dict], ...] = (),
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
        checks: with verify="full", more checks of the staged SavedModel: `check(path) -> dict` (added
            to the verification report) raising `VerificationError` (e.g. `export.verify_two_stage`).
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
    base = os.fspath(base_path)
    if version is not None:
        if version < 1:
            raise InputError(base, f"version must be a positive integer, got {version}")
        if storage.exists(storage.join(base, str(version))):
            raise InputError(storage.join(base, str(version)), "version already exists; refusing to overwrite it")
    storage.makedirs(base)

    from export.warmup import warmup_shapes

    warm_side = detector.long_side or 512
    warmup = {"long_side": warm_side, "shapes": [list(shape) for shape in warmup_shapes(warm_side)],
              "batch_sizes": sorted({int(b) for b in batch_sizes})}
    meta = build_contract(detector, {"warmup": warmup, **(metadata or {})})
    text = contract_text(meta)
    ModelContract.from_text(text, source="export")  # what the clients will parse
    staging = storage.local_staging(base) if _atomic else storage.join(base, str(version or next_version(base)))
    try:
        build_export_archive(detector, text).write_out(staging, verbose=False)
        write_warmup_requests(
            staging,
            build_warmup_requests(model_name=model_name, long_side=warm_side, batch_sizes=batch_sizes),
        )
        storage.write_text(metadata_path(staging), text)
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
            for check in checks if verify == "full" else ():
                report.update(check(staging))
        if not _atomic:
            return ExportResult(staging, int(storage.basename(staging)), meta, report)
        final = _publish(staging, base, version)
    except BaseException:
        if _atomic:
            storage.remove_tree(staging)
        raise
    return ExportResult(final, int(storage.basename(final)), meta, report)


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


def _publish(staging: str, base: str, version: int | None) -> str:
    """Publishes `staging` as `base/<version>` (the next free one if None) with
    `storage.publish_directory` (`saved_model.pb` last on object stores). Returns: the version path."""
    for _ in range(100):
        target = storage.join(base, str(version if version is not None else next_version(base)))
        if not storage.exists(target):
            try:
                storage.publish_directory(staging, target, marker=MARKER)
                return target
            except OSError:  # FileExistsError on an object store, ENOTEMPTY locally: taken meanwhile
                if not storage.exists(target):
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
    classifier: str | os.PathLike | None = None,
    combination: str = "auto",
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
        classifier: RUN2/model.keras of `hourglass train --stage 2`: export both stages as one
            SavedModel (`export.two_stage`; `threshold` and the operating points are then on the
            combined score).
        combination: with `classifier`: "auto" (RUN2/config.json's) or a combination name.

    Returns:
        An `ExportResult`.
    """
    from export.contract import operating_points_from_froc
    from export.signatures import HourglassDetector

    stage_two = None
    if classifier is not None:
        from keras_hourglass.two_stage.system import load_stage_two

        stage_two = load_stage_two(classifier, combination=combination, require_config=True)
    system = None if stage_two is None else "two_stage"
    operating_points = operating_points_from_froc(evaluation, system=system) if evaluation is not None else None

    model, stride, multiple = load_inference_model(model_path)
    preprocessing = training_preprocessing(model_path)
    if long_side is None:
        long_side = int(preprocessing.get("long_side", 0))
        if not long_side and (stage_two is None or stage_two.long_side is None):
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
    extra, checks = {}, ()
    if stage_two is not None:
        from export import two_stage

        two_stage.check_evaluation(operating_points, stage_two, evaluation)
        detector = two_stage.two_stage_detector(detector, stage_two)
        long_side = detector.long_side
        extra = {"two_stage": two_stage.two_stage_contract(detector, stage_two, model_path)}
        checks = (two_stage.verification(detector, stage_two),)
    return export_detector(
        detector,
        base_path,
        version=version,
        model_name=model_name,
        metadata={"source_model": storage.abspath(model_path),
                  "preprocessing": {**preprocessing, "long_side": long_side},
                  "operating_points": operating_points, **extra},
        verify=verify,
        batch_sizes=batch_sizes,
        checks=checks,
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
        config = json.loads(storage.read_text(storage.join(storage.dirname(model_path), "config.json")))
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
        manifest = json.loads(storage.read_text(storage.join(prep_dir, "manifest.json")))
    except (OSError, ValueError):
        manifest = None
    found = usable(manifest.get("preprocessing")) if isinstance(manifest, dict) else None
    if not found:
        log.warning("%s: no readable manifest with a preprocessing block: the export's long side is unknown "
                    "(give long_side)", escape_controls(str(prep_dir)))
        return {}
    return {**found, "source": "prep_dir"}
