"""The model contract: what one exported version promises its clients (no TensorFlow).

Every export carries the contract twice, with the same bytes: as the `metadata` signature (plain TF
ops: constant string tensors; the only way a remote client can read it, since TF Serving's
GetModelMetadata returns signature defs only, tensorflow/serving#1248) and as
`assets.extra/keras_hourglass.json`. The JSON object has (format "keras-hourglass-export/2"):

- `preprocessing`: `long_side`, `windowing` (read_mammogram `voi`), `orientation` (read_mammogram
  `orient`), `scale_rule`, ...: the arguments of `keras_hourglass.data.dicom.read_mammogram` that
  reproduce the training pixels;
- `stride`, `input_multiple`, `max_marks`, `threshold` (the export's default), `pool_size`;
- `operating_points`: None, or `{"points": {"4.8": {"threshold", "fpi", "sensitivity"}, ...},
  "split", "data_manifest_sha256", "froc_sha256", "num_images"}` as measured by `hourglass evaluate`;
- `lineage`: manifest / training config hashes, tuning trial id, package and TensorFlow versions;
- `two_stage` (only in a two-stage export, `hourglass export --classifier`): `stages` 2, the
  `combination` (name, stage-two weight, rule), the `proposals` (stage one's threshold and marks per
  image), the `patch` geometry and the classifier's lineage. The image signatures then return the
  rescored marks (their score and every threshold are the combined score) under the same names,
  plus `STAGE_ONE_SCORE_OUTPUT` and `PROBABILITY_OUTPUT` per mark row.

`METADATA_SIGNATURE` takes `request` int32 `[B]` (any values) and returns `metadata` and
`metadata_sha256` string `[B]` (the same JSON repeated, so the reply works in REST's row and
columnar forms). Clients read it once per model version (`ModelContract.from_outputs`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os

import numpy as np

from keras_hourglass import storage
from keras_hourglass.errors import ArgumentError, InputError

SERVING_DEFAULT = "serving_default"
"""Signature: float32 image `[B, H, W, 1]` in [0, 1] -> marks, num_marks, heatmap, long_side."""
DETECT_PNG = "detect_png"
"""Signature: 16-bit grayscale PNGs `[B]` + per-image threshold -> marks, num_marks, long_side."""
METADATA_SIGNATURE = "metadata"
IMAGE_SIGNATURES = (SERVING_DEFAULT, DETECT_PNG)
"""The signatures that take images (what a client may send a mammogram to)."""
SIGNATURE_NAMES = (*IMAGE_SIGNATURES, METADATA_SIGNATURE)
"""Every signature an export has, in the order the contract lists them."""
METADATA_FILE = "keras_hourglass.json"
"""The contract's second copy: `<version>/assets.extra/keras_hourglass.json`."""
STAGE_ONE_SCORE_OUTPUT = "stage_one_score"
"""Two-stage exports only: float32 `[B, max_marks]`, stage one's score of each mark row (0 on padding)."""
PROBABILITY_OUTPUT = "probability"
"""Two-stage exports only: float32 `[B, max_marks]`, stage two's probability of each mark row (0 on padding)."""
METADATA_INPUT = "request"
METADATA_OUTPUT = "metadata"
METADATA_DIGEST_OUTPUT = "metadata_sha256"
CONTRACT_FORMAT = "keras-hourglass-export/2"
# Keys of `preprocessing` -> read_mammogram keyword.
READ_OPTIONS = {"windowing": "voi", "orientation": "orient"}


class ContractError(ValueError):
    """A contract that is not a keras-hourglass model contract (one line)."""


def contract_text(contract: dict) -> str:
    """Returns: the canonical JSON text of a contract (sorted keys; what the signature returns)."""
    return json.dumps(contract, sort_keys=True, allow_nan=False)


def contract_digest(text: str) -> str:
    """Returns: the hex SHA-256 of the contract text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def metadata_path(saved_model_dir: str | os.PathLike) -> str:
    """Returns: `DIR/assets.extra/keras_hourglass.json`."""
    return storage.join(os.fspath(saved_model_dir), "assets.extra", METADATA_FILE)


def read_export_metadata(saved_model_dir: str | os.PathLike) -> dict:
    """Returns: the contract JSON of a version directory (`metadata_path`), {} if absent or unreadable."""
    try:
        data = json.loads(storage.read_text(metadata_path(saved_model_dir)))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def list_versions(base_path: str | os.PathLike) -> list[int]:
    """Returns: the sorted integer versions under `base_path`, as TF Serving sees them (numeric
    directories; `.tmp-*` staging directories and files are ignored); the last one is the latest."""
    if not storage.isdir(base_path):
        return []
    return sorted(int(name) for name in storage.listdir(base_path)
                  if name.isdigit() and storage.isdir(storage.join(os.fspath(base_path), name)))


def metadata_request() -> dict[str, np.ndarray]:
    """Returns: the inputs of one `metadata` signature call."""
    return {METADATA_INPUT: np.zeros([1], np.int32)}


def inclusive_threshold(threshold: float) -> float:
    """The threshold to send so that `score > sent` keeps exactly the marks with `score >= threshold`.

    FROC operating points keep marks with `score >= threshold` (`keras_hourglass.evaluation.froc`);
    the signatures and `find_peaks` keep `score > threshold`. The scores are float32, so the next
    float32 below the threshold turns one rule into the other.
    """
    return float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))


@dataclasses.dataclass(frozen=True)
class ModelContract:
    """One version's contract, as its clients read it.

    Attributes:
        data: the contract JSON object.
        version: the model version that answered (None when unknown, e.g. a local directory).
    """

    data: dict
    version: int | None = None

    @classmethod
    def from_text(cls, text: str | bytes, *, version: int | None = None, source: str = "model") -> "ModelContract":
        """Parses and checks a contract's JSON text.

        Raises:
            ContractError: not JSON, not an object, or without a usable `long_side`.
        """
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        try:
            data = json.loads(text)
        except ValueError:
            raise ContractError(f"{source}: metadata is not JSON") from None
        if not isinstance(data, dict):
            raise ContractError(f"{source}: metadata is a JSON {type(data).__name__}, not an object")
        fmt = str(data.get("format", ""))
        if not fmt.startswith("keras-hourglass-export/"):
            raise ContractError(f"{source}: metadata format {fmt[:60]!r} is not a keras-hourglass export")
        side = data.get("preprocessing", {}).get("long_side", data.get("long_side")) if isinstance(
            data.get("preprocessing", {}), dict) else None
        if not isinstance(side, int) or isinstance(side, bool) or not 0 <= side <= 65536:
            raise ContractError(f"{source}: metadata has no integer preprocessing.long_side")
        return cls(data, version)

    @classmethod
    def from_outputs(cls, outputs: dict, *, version: int | None = None, source: str = "model") -> "ModelContract":
        """Parses the outputs of the `metadata` signature (REST or gRPC, row or columnar form).

        Raises:
            ContractError: no `metadata` output, or a digest that does not match the text.
        """
        value = outputs.get(METADATA_OUTPUT) if isinstance(outputs, dict) else None
        text = _first(value)
        if not isinstance(text, (str, bytes)):
            raise ContractError(f"{source}: malformed metadata reply (no {METADATA_OUTPUT!r} string)")
        text = text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text
        digest = _first(outputs.get(METADATA_DIGEST_OUTPUT))
        if digest is not None:
            digest = digest.decode("ascii", errors="replace") if isinstance(digest, bytes) else str(digest)
            if digest != contract_digest(text):
                raise ContractError(f"{source}: metadata does not match its {METADATA_DIGEST_OUTPUT}")
        return cls.from_text(text, version=version, source=source)

    @property
    def preprocessing(self) -> dict:
        pre = self.data.get("preprocessing")
        return pre if isinstance(pre, dict) else {}

    @property
    def long_side(self) -> int | None:
        """Returns: the training long side (None when the export does not know it)."""
        side = self.preprocessing.get("long_side", self.data.get("long_side"))
        return int(side) if side else None

    @property
    def default_threshold(self) -> float:
        return float(self.data.get("threshold", 0.0))

    def read_options(self) -> dict:
        """Returns: the `read_mammogram` keywords (`voi`, `orient`, `max_pixels`) the contract records.

        Raises:
            ContractError: a value `read_mammogram` does not accept.
        """
        from keras_hourglass.data.dicom import validate_options

        options = {READ_OPTIONS[k]: v for k, v in self.preprocessing.items() if k in READ_OPTIONS}
        try:
            validate_options(long_side=self.long_side, **{"voi": "auto", "orient": "left", **options})
        except ValueError as err:
            raise ContractError(f"model contract: unusable preprocessing ({err})") from None
        max_pixels = self.preprocessing.get("max_pixels")
        if isinstance(max_pixels, int) and not isinstance(max_pixels, bool) and max_pixels > 0:
            options["max_pixels"] = max_pixels
        return options

    def operating_points(self) -> dict[str, dict]:
        """Returns: FPI key ("4.8") -> {"threshold", "fpi", "sensitivity"} ({} if none recorded)."""
        block = self.data.get("operating_points")
        points = block.get("points") if isinstance(block, dict) else None
        return {str(k): v for k, v in points.items() if isinstance(v, dict)} if isinstance(points, dict) else {}

    def operating_point(self, fpi: float) -> dict:
        """The operating point recorded at `fpi` false marks per image.

        Returns:
            `{"target_fpi", "threshold", "fpi", "sensitivity", "split"}` (threshold: keep `score >= it`).

        Raises:
            InputError: (`--operating-point`) nothing recorded at that FPI, or no threshold fits it.
        """
        points = self.operating_points()
        where = f"model version {self.version}" if self.version is not None else "the model"
        if not points:
            raise ArgumentError("operating_point", f"{where} records no operating points (export it with "
                                                     "`hourglass export --evaluation EVAL/froc.json`)")
        for key, point in points.items():
            try:
                match = math.isclose(float(key), float(fpi), rel_tol=1e-9, abs_tol=1e-12)
            except ValueError:
                continue
            if match:
                if point.get("threshold") is None:
                    raise ArgumentError("operating_point", f"{where}: no threshold keeps FPI <= {fpi:g} "
                                                          "on the evaluation data")
                block = self.data.get("operating_points") or {}
                return {"target_fpi": float(fpi), "threshold": float(point["threshold"]),
                        "fpi": point.get("fpi"), "sensitivity": point.get("sensitivity"), "split": block.get("split")}
        listed = ", ".join(sorted(points, key=lambda k: float(k) if _is_number(k) else math.inf))
        raise ArgumentError("operating_point", f"{where} has no operating point at FPI {fpi:g} (recorded: {listed})")


def _first(value):
    """The first element of a reply value (a list, a numpy array or a scalar)."""
    if isinstance(value, np.ndarray):
        value = value.reshape(-1).tolist()
    while isinstance(value, (list, tuple)):
        if not value:
            return None
        value = value[0]
    return value


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


__all__ = [
    "CONTRACT_FORMAT", "ContractError", "METADATA_DIGEST_OUTPUT", "METADATA_INPUT", "METADATA_OUTPUT",
    "METADATA_SIGNATURE", "ModelContract", "PROBABILITY_OUTPUT", "STAGE_ONE_SCORE_OUTPUT", "contract_digest", "contract_text", "inclusive_threshold",
    "metadata_request",
]
