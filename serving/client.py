"""Clients of the exported Hourglass detector: TF Serving gRPC, TF Serving REST, local SavedModel.

All three share one flow (`PredictionClient.detect_file`):

1. read the DICOM with `keras_hourglass.data.dicom.read_mammogram` (the same
   preprocessing as training: VOI, orientation, resize to the long side);
2. send the preprocessed image to a signature of the export:
   - `serving_default`: the float32 image `[1, H, W, 1]` (the signature pads to
     the model's input multiple itself; no client-side padding);
   - `detect_png`: a 16-bit grayscale PNG of the image plus a per-image
     `threshold` (NaN = the export's default);
3. map the marks (image pixels, `(y, x, score)`) back to ORIGINAL DICOM pixel
   coordinates with the transform's `inverse_points`.

Model contract: before the first image, a client reads the `metadata` signature of the version it
will use (`serving.contract.ModelContract`: long side, windowing, orientation, thresholds, operating
points) and pins that version for every later request, so the contract and the answers come from the
same version; `Detection.model_version` reports it. It then preprocesses exactly as the contract says
(`read_mammogram(long_side=, voi=, orient=, max_pixels=)`); there is no guessing: a reply whose
`long_side` differs from the contract is an error. Version choice: `version=N`, `label="canary"`
(TF Serving version labels), or the latest (gRPC: the version that answered the metadata call; REST:
the highest AVAILABLE version in GET /v1/models/NAME). An export without the `metadata` signature
(made before the contract) needs `long_side=` and gets `read_mammogram`'s defaults.

Thresholds: `detect_png` takes the threshold per request. `serving_default` applies the export's
threshold; a higher `threshold=` filters its marks client-side (a lower one cannot bring back marks the
server dropped). `operating_point=FPI` takes the threshold the contract records at that FPI (marks
with `score >=` it are kept, as in FROC).

Imports: this module and `RestClient` need no TensorFlow (numpy, Pillow,
urllib). `GrpcClient` needs `tensorflow-serving-api`, whose generated
protos import `tensorflow.core.framework` and so the whole `tensorflow`
package (about 2-5 s), so its TensorProtos go through `tf.make_tensor_proto` /
`tf.make_ndarray`; a small proto-only codec remains for clients without TensorFlow
(`to_tensor_proto(use_tf=False)`). `LocalClient` uses TensorFlow.

Errors: `ModelNotFoundError`, `SignatureNotFoundError` and
`RequestTooLargeError` are `keras_hourglass.errors.ArgumentError`s naming the Python argument
(`model_name`, `signature`, `max_message_bytes`; reasons refer to arguments as ``name=``), as are the
other argument errors; `serving.cli` maps them to its flags in one place (`PREDICT_FLAGS`), and the CLI
exits 2 with one line;
`ServerUnavailableError` after bounded retries with exponential backoff
(gRPC UNAVAILABLE; REST connection errors and HTTP 503) and
`ServingError` for anything else (exit 1).
"""

from __future__ import annotations

import abc
import base64
import dataclasses
import json
import os
import random
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request

import numpy as np

from keras_hourglass import storage
from keras_hourglass.errors import ArgumentError, InputError, escape_controls
from serving.dicom_outputs import image_identifiers, overlay_radius
from serving.tls import TlsOptions, grpc_credentials, is_tls_failure, ssl_context
from keras_hourglass.data.png16 import encode_png16
from serving.contract import (
    DETECT_PNG,
    IMAGE_SIGNATURES,
    METADATA_SIGNATURE,
    SERVING_DEFAULT,
    ContractError,
    ModelContract,
    inclusive_threshold,
    list_versions,
    metadata_request,
    read_export_metadata,
)

SIGNATURES = IMAGE_SIGNATURES  # the client's name for serving.contract.IMAGE_SIGNATURES
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


# ------------------------------------------------------------------------------------------ errors
class ServingError(Exception):
    """A prediction failed on the server side or in transport (one line)."""


class ServerUnavailableError(ServingError):
    """The server stayed unavailable (or timed out) through every retry."""


class ModelNotFoundError(ArgumentError, ServingError):
    """The server has no such model (or version)."""


class SignatureNotFoundError(ArgumentError, ServingError):
    """The model has no such signature."""


class RequestTooLargeError(ArgumentError, ServingError):
    """The request would exceed the maximum message size."""


# ------------------------------------------------------------------------------------------ result
@dataclasses.dataclass
class Detection:
    """The marks of one file.

    Attributes:
        file: the input file.
        signature: signature used.
        image_shape: (H, W) of the preprocessed image sent to the model.
        original_shape: (rows, columns) of the DICOM pixel data.
        long_side: long side the image was preprocessed to.
        marks: float64 `[N, 3]` (y, x, score) in image pixels (valid marks only).
        original_marks: float64 `[N, 2]` (y, x) in original DICOM pixels.
        model_version: the model version that answered (None when unknown).
        identifiers: the source's StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID, laterality and
            view (`serving.dicom_outputs.image_identifiers`; never patient identity).
    """

    file: str
    signature: str
    image_shape: tuple[int, int]
    original_shape: tuple[int, int]
    long_side: int
    marks: np.ndarray
    original_marks: np.ndarray
    model_version: int | None = None
    identifiers: dict = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict:
        """Returns: the JSON form (x = column, y = row; original and image coordinates)."""
        return {
            "file": self.file,
            **self.identifiers,
            "signature": self.signature,
            "original_shape": list(self.original_shape),
            "image_shape": list(self.image_shape),
            "long_side": self.long_side,
            "model_version": self.model_version,
            "num_marks": int(len(self.marks)),
            "marks": [
                {
                    "x": round(float(o[1]), 2),
                    "y": round(float(o[0]), 2),
                    "score": round(float(m[2]), 6),
                    "image_x": round(float(m[1]), 2),
                    "image_y": round(float(m[0]), 2),
                }
                for m, o in zip(self.marks, self.original_marks)
            ],
        }


# ------------------------------------------------------------------------------------------ helpers
MAX_LONG_SIDE = 65536


def checked_outputs(outputs, target: str) -> tuple[np.ndarray, int]:
    """Validates a server's outputs for one image; a reply of the wrong form is a server-side failure.

    Args:
        outputs: the outputs by name, as decoded from the reply.
        target: the server (named in the message).

    Returns:
        `(marks, long_side)`: float64 `[N, 3]` (y, x, score), the `num_marks` valid rows; the
        model's long side (0 if the reply has none).

    Raises:
        ServingError: outputs missing, of the wrong type or shape, not finite, or out of range.
    """
    def fail(what: str) -> ServingError:
        return ServingError(f"{target}: malformed reply: {what}")

    if not isinstance(outputs, dict):
        raise fail("the outputs are not a mapping")
    missing = [key for key in ("marks", "num_marks") if key not in outputs]
    if missing:
        raise fail(f"no {' or '.join(missing)} output (is this a keras-hourglass export?)")
    try:
        marks = np.asarray(outputs["marks"], dtype=np.float64)
        counts = np.asarray(outputs["num_marks"], dtype=np.float64).reshape(-1)
        sides = np.asarray(outputs.get("long_side", [0]), dtype=np.float64).reshape(-1)
    except (TypeError, ValueError, OverflowError):
        raise fail("marks, num_marks or long_side are not numbers") from None
    if marks.ndim != 3 or marks.shape[0] < 1 or marks.shape[2] != 3:
        raise fail(f"marks have shape {marks.shape}, expected [1, max_marks, 3]")
    if counts.size < 1 or sides.size < 1:
        raise fail("num_marks or long_side is empty")
    count, side = counts[0], sides[0]
    if not (np.isfinite(count) and count == int(count) and 0 <= count <= marks.shape[1]):
        raise fail(f"num_marks is not an integer in [0, {marks.shape[1]}]")
    if not (np.isfinite(side) and side == int(side) and 0 <= side <= MAX_LONG_SIDE):
        raise fail(f"long_side is not an integer in [0, {MAX_LONG_SIDE}]")
    valid = marks[0, : int(count)]
    if not np.all(np.isfinite(valid)):
        raise fail("marks hold NaN or infinite values")
    return valid, int(side)


class Deadline:
    """One overall time budget for a request and all of its retries.

    Args:
        seconds: the budget.
    """

    def __init__(self, seconds: float):
        self.seconds = float(seconds)
        self.end = time.monotonic() + self.seconds

    def remaining(self) -> float:
        """Returns: seconds left (0 when spent)."""
        return max(0.0, self.end - time.monotonic())

    def sleep_backoff(self, attempt: int, backoff: float) -> bool:
        """Sleeps the jittered retry delay (`backoff_delay`, at most what is left).

        Returns: whether time is left afterwards.
        """
        time.sleep(min(backoff_delay(attempt, backoff), self.remaining()))
        return self.remaining() > 0


MAX_BACKOFF = 8.0


def backoff_delay(attempt: int, backoff: float, rng: random.Random | None = None) -> float:
    """The delay before retry `attempt` (0-based): exponential, capped, with "equal jitter".

    `base = min(backoff * 2**attempt, MAX_BACKOFF)`, delay uniform in `[base / 2, base]`: clients that
    failed together (a server restart) do not retry in lockstep, and none retries at once.
    """
    base = min(backoff * 2**attempt, MAX_BACKOFF)
    return base * (0.5 + 0.5 * (rng or random).random())


# ------------------------------------------------------------------------------------------ clients
class PredictionClient(abc.ABC):
    """Base of the three clients: model contract, preprocessing, signature inputs, coordinate mapping.

    Args:
        model_name: the model name on the server.
        version: a model version, or None (the latest, or `label`'s).
        label: a TF Serving version label ("stable", "canary"), or None.
        signature: `serving.contract.SERVING_DEFAULT` or `DETECT_PNG`.
        long_side: preprocessing long side; None: the contract's (see module docstring).
        threshold: score threshold; None: the export's default.
        operating_point: an FPI whose recorded threshold to use instead of `threshold`.
        timeout: seconds per request, retries included.
        retries: retries on UNAVAILABLE / connection errors / HTTP 503.
        backoff: first retry delay in seconds (doubles each retry, jittered, at most 8 s).
        max_message_bytes: refuse requests larger than this (checked before sending).
    """

    transport = "abstract"

    def __init__(
        self,
        *,
        model_name: str = "hourglass",
        version: int | None = None,
        label: str | None = None,
        signature: str = SERVING_DEFAULT,
        long_side: int | None = None,
        threshold: float | None = None,
        operating_point: float | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ):
        if version is not None and label is not None:
            raise ArgumentError("label", "give version= or label=, not both")
        if threshold is not None and operating_point is not None:
            raise ArgumentError("operating_point", "give threshold= or operating_point=, not both")
        self.model_name = model_name
        self.version = version
        self.label = label
        self.signature = signature
        self.long_side = long_side
        self.threshold = threshold
        self.operating_point = operating_point
        self.timeout = float(timeout)
        self.retries = max(0, int(retries))
        self.backoff = float(backoff)
        self.max_message_bytes = int(max_message_bytes)
        self._pinned: int | None = None  # the version every request goes to, once the contract is read
        self._answered: int | None = None  # the version that answered the last request (when the reply says)
        self._contract: ModelContract | None = None

    # -- transport
    @abc.abstractmethod
    def predict(self, inputs: dict[str, np.ndarray], signature: str) -> dict[str, np.ndarray]:
        """Runs `signature` on `inputs` (numpy arrays). Returns: the outputs as numpy arrays."""

    def resolve_version(self) -> int | None:
        """The version the requested one (`version`, `label` or latest) stands for, if the transport can
        tell before a prediction (REST: model status; local: the directory). None: learn it from a reply."""
        return self.version

    @property
    def target(self) -> str:
        return self.transport

    def close(self) -> None:
        """Releases the connection (if any)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _spec(self) -> tuple[int | None, str | None]:
        """Returns: `(version, label)` to put in a request (the pinned version once known)."""
        if self._pinned is not None:
            return self._pinned, None
        return self.version, self.label

    def _where(self) -> str:
        version, label = self._spec()
        return (f"{self.target} model {self.model_name!r}" + (f" version {version}" if version is not None else "")
                + (f" label {label!r}" if label else ""))

    # -- the model contract
    @property
    def model_version(self) -> int | None:
        """Returns: the version the client is pinned to (None before the contract is read, or unknown)."""
        return self._pinned

    def contract(self) -> ModelContract:
        """Reads the `metadata` signature once per client and pins the version that answered it.

        Raises:
            ArgumentError: (`long_side`) the export has no metadata signature and no `long_side` was given.
            ServingError: a malformed contract.
        """
        if self._contract is not None:
            return self._contract
        self._pinned = self.resolve_version()
        self._answered = None
        try:
            outputs = self.predict(metadata_request(), METADATA_SIGNATURE)
        except SignatureNotFoundError:
            self._contract = self._contract_without_metadata()
            return self._contract
        if self._answered is not None:
            self._pinned = self._answered
        try:
            self._contract = ModelContract.from_outputs(outputs, version=self._pinned, source=self.target)
        except ContractError as err:
            raise ServingError(str(err)) from None
        return self._contract

    def _contract_without_metadata(self) -> ModelContract:
        """An export from before the contract: only an explicit `long_side` makes it usable."""
        if not self.long_side:
            raise ArgumentError("long_side", f"{self._where()} has no {METADATA_SIGNATURE!r} signature (exported "
                                               "before the model contract): re-export it, or pass long_side=")
        return ModelContract({"format": "keras-hourglass-export/1", "long_side": int(self.long_side)},
                             version=self._pinned)

    def effective_threshold(self) -> float | None:
        """The threshold to send: `threshold`, or the one recorded at `operating_point` (made inclusive).

        Raises:
            ArgumentError: (`operating_point`) not recorded, or below what serving_default returns.
        """
        if self.operating_point is None:
            return self.threshold
        contract = self.contract()
        point = contract.operating_point(self.operating_point)
        threshold = inclusive_threshold(point["threshold"])
        if self.signature == SERVING_DEFAULT and threshold < contract.default_threshold:
            raise ArgumentError("operating_point", f"threshold {point['threshold']:.6g} at FPI "
                                                  f"{self.operating_point:g} is below the export's threshold "
                                                  f"{contract.default_threshold:g}, so serving_default cannot "
                                                  "return those marks: use signature=detect_png")
        return threshold

    # -- one image
    def signature_inputs(self, image: np.ndarray, signature: str, threshold: float | None) -> dict[str, np.ndarray]:
        """The signature's inputs for one preprocessed image `[H, W]` in [0, 1]."""
        image = np.asarray(image, np.float32)
        if image.ndim != 2:
            raise ValueError(f"expected a [H, W] image, got shape {image.shape}")
        if signature == SERVING_DEFAULT:
            return {"image": image[None, :, :, None]}
        if signature == DETECT_PNG:
            value = float("nan") if threshold is None else float(threshold)
            return {
                "image_bytes": np.array([encode_png16(image)], dtype=object),
                "threshold": np.array([value], np.float32),
            }
        raise SignatureNotFoundError("signature", f"unknown signature {signature!r}; choose one of {', '.join(SIGNATURES)}")

    def detect_image(
        self, image: np.ndarray, *, signature: str | None = None, threshold: float | None = None
    ) -> tuple[np.ndarray, int]:
        """Detects on one preprocessed image `[H, W]`.

        Returns:
            `(marks, model_long_side)`: float64 `[N, 3]` (y, x, score) in image
            pixels, valid marks only, sorted by score; the model's training
            long side (0 if the export does not know it).
        """
        signature = signature or self.signature
        threshold = self.threshold if threshold is None else threshold
        outputs = self.predict(self.signature_inputs(image, signature, threshold), signature)
        marks, long_side = checked_outputs(outputs, self.target)
        if signature == SERVING_DEFAULT and threshold is not None:
            marks = marks[marks[:, 2] > threshold]
        return marks, long_side

    # -- one file
    def read_file(self, path: str | os.PathLike):
        """Reads a DICOM exactly as the model's contract says. Returns: the `Mammogram`.

        Raises:
            keras_hourglass.data.dicom.DicomError: a bad DICOM (names the file).
        """
        from keras_hourglass.data.dicom import read_mammogram

        contract = self.contract()
        long_side = int(self.long_side or contract.long_side or 0)
        if not long_side:
            raise ArgumentError("long_side", f"{self._where()}: its contract records no long side; pass long_side=")
        try:
            options = contract.read_options()
        except ContractError as err:
            raise ServingError(str(err)) from None
        return read_mammogram(path, long_side=long_side, **options)

    def detect_file(self, path: str | os.PathLike, *, overlay_dir: str | os.PathLike | None = None) -> Detection:
        """Reads a DICOM, detects, maps marks to original pixels; optionally writes an overlay PNG.

        Raises:
            keras_hourglass.data.dicom.DicomError: a bad DICOM (names the file).
            ServingError and subclasses: see the module docstring.
        """
        path = os.fspath(path)
        threshold = self.effective_threshold()
        mammogram = self.read_file(path)
        long_side = max(mammogram.image.shape)
        try:
            marks, model_long_side = self.detect_image(mammogram.image, threshold=threshold)
        except RequestTooLargeError as err:
            raise RequestTooLargeError(path, err.reason) from None
        expected = self.contract().long_side
        if model_long_side and expected and model_long_side != expected:
            raise ServingError(f"{self._where()} answered with long side {model_long_side}, but its contract says "
                               f"{expected} (a different version answered?)")
        original = mammogram.transform.inverse_points(marks[:, :2]) if len(marks) else np.zeros((0, 2))
        detection = Detection(
            file=path,
            signature=self.signature,
            image_shape=tuple(int(v) for v in mammogram.image.shape),
            original_shape=tuple(int(v) for v in mammogram.transform.original_shape),
            long_side=long_side,
            marks=marks,
            original_marks=np.asarray(original, np.float64).reshape(-1, 2),
            model_version=self._pinned,
            identifiers=image_identifiers(path, mammogram.header),
        )
        if overlay_dir is not None:
            write_overlay(mammogram.image, marks, os.path.join(overlay_dir, os.path.basename(path) + ".png"))
        return detection


def write_overlay(image: np.ndarray, marks: np.ndarray, path: str, *, radius: float | None = None) -> str:
    """Writes the preprocessed image with one circle + score per mark (image pixels).

    Args:
        image: the preprocessed image `[H, W]` in [0, 1].
        marks: `[N, 3]` (y, x, score) in image pixels, by descending score.
        path: the PNG to write.
        radius: circle radius in image pixels (default `overlay_radius`, as the GSPS uses).

    Returns:
        The path.
    """
    from PIL import Image, ImageDraw

    gray = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
    canvas = Image.fromarray(gray).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    radius = overlay_radius(gray.shape) if radius is None else radius
    for rank, (y, x, score) in enumerate(np.asarray(marks).reshape(-1, 3)):
        color = (255, 64, 64) if rank < 3 else (255, 200, 0)
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], outline=color, width=2)
        draw.text((x + radius + 2, y - radius), f"{score:.2f}", fill=color)
    import io

    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    storage.write_bytes(path, buffer.getvalue())  # atomic; a URL works as a local path does
    return path


class GrpcClient(PredictionClient):
    """TF Serving gRPC `PredictionService.Predict` (tensorflow-serving-api stubs).

    Args:
        address: "host:port" of TF Serving's gRPC port (8500 by default).
        **kwargs: see `PredictionClient`.
    """

    transport = "grpc"

    def __init__(self, address: str, *, tls: TlsOptions | None = None, **kwargs):
        super().__init__(**kwargs)
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        self.address = address
        self.tls = tls or TlsOptions()
        options = [
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
        ]
        self._grpc = grpc
        if self.tls.enabled:
            if self.tls.server_name:
                options.append(("grpc.ssl_target_name_override", self.tls.server_name))
            self._channel = grpc.secure_channel(address, grpc_credentials(self.tls), options=options)
        else:
            self._channel = grpc.insecure_channel(address, options=options)
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    @property
    def target(self) -> str:
        return f"grpcs://{self.address}" if self.tls.enabled else f"grpc://{self.address}"

    def close(self) -> None:
        self._channel.close()

    def build_request(self, inputs: dict[str, np.ndarray], signature: str):
        """Returns: a `predict_pb2.PredictRequest`."""
        from tensorflow_serving.apis import model_pb2, predict_pb2

        spec = model_pb2.ModelSpec(name=self.model_name, signature_name=signature)
        version, label = self._spec()
        if version is not None:
            spec.version.value = int(version)
        elif label:
            spec.version_label = label
        request = predict_pb2.PredictRequest(model_spec=spec)
        for key, value in inputs.items():
            request.inputs[key].CopyFrom(to_tensor_proto(value))
        return request

    def predict(self, inputs: dict[str, np.ndarray], signature: str) -> dict[str, np.ndarray]:
        request = self.build_request(inputs, signature)
        size = request.ByteSize()
        if size > self.max_message_bytes:
            raise RequestTooLargeError(
                "max_message_bytes",
                f"request is {size / 2**20:.1f} MiB, above the {self.max_message_bytes / 2**20:.0f} MiB gRPC limit "
                "(use signature=detect_png, which sends a PNG, or raise max_message_bytes= on client and server)",
            )
        status = self._grpc.StatusCode
        deadline = Deadline(self.timeout)
        for attempt in range(self.retries + 1):
            try:
                response = self._stub.Predict(request, timeout=max(deadline.remaining(), 0.001))
            except self._grpc.RpcError as err:
                code = err.code()
                details = escape_controls(((err.details() or "").splitlines() or [""])[0][:300])
                if code == status.UNAVAILABLE and self.tls.enabled and is_tls_failure(details):
                    raise ServingError(f"{self.target}: TLS failed, not retried ({details})") from None
                if code == status.UNAVAILABLE and attempt < self.retries and deadline.sleep_backoff(attempt, self.backoff):
                    continue
                raise self._map_error(code, details, signature) from None
            if response.model_spec.HasField("version"):
                self._answered = int(response.model_spec.version.value)
            try:
                return {key: from_tensor_proto(proto) for key, proto in response.outputs.items()}
            except (ValueError, TypeError) as err:
                raise ServingError(f"{self.target}: malformed reply: {type(err).__name__} decoding the outputs") from None
        raise AssertionError("unreachable")

    def _map_error(self, code, details: str, signature: str) -> Exception:
        status = self._grpc.StatusCode
        where = self._where()
        if self._spec()[1] and "label" in details.lower():
            return ModelNotFoundError("label", f"{where}: no such version label ({details})")
        if code == status.NOT_FOUND:
            return ModelNotFoundError("model_name", f"{where} not found ({details})")
        if "signature" in details.lower() and "not found" in details.lower():
            return SignatureNotFoundError("signature", f"{where} has no signature {signature!r} ({details})")
        if code == status.RESOURCE_EXHAUSTED:
            return RequestTooLargeError("max_message_bytes", f"{where}: message too large, above max_message_bytes= "
                                                            f"({details})")
        if code == status.UNAVAILABLE:
            return ServerUnavailableError(f"{self.target} unavailable after {self.retries + 1} attempts ({details})")
        if code == status.DEADLINE_EXCEEDED:
            return ServerUnavailableError(f"{self.target}: no answer within {self.timeout:g} s, retries included "
                                          f"(--timeout; {details})")
        return ServingError(f"{where}: {code.name}: {details}")


class RestClient(PredictionClient):
    """TF Serving REST `POST /v1/models/NAME[/versions/N]:predict` (urllib; no TensorFlow).

    `serving_default` is sent in the columnar "inputs" form (a nested JSON list
    of floats: large for big images, ~10 bytes per pixel; prefer
    `detect_png`); `detect_png` in the row "instances" form with the PNG as
    `{"b64": ...}` and the threshold (NaN = export default).

    Args:
        url: base URL of TF Serving's REST port, e.g. "http://host:8501".
        **kwargs: see `PredictionClient`.
    """

    transport = "rest"

    def __init__(self, url: str, *, tls: TlsOptions | None = None, **kwargs):
        super().__init__(**kwargs)
        parts = urllib.parse.urlsplit(url)
        if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
            raise ArgumentError("url", f"must be an http:// or https:// URL with a host (got scheme "
                                          f"{parts.scheme or 'none'!r})")
        self.url = url.rstrip("/")
        self.tls = tls or TlsOptions()
        handlers = [_NoRedirect]  # TF Serving never redirects (urllib would follow them to ftp:// too)
        if parts.scheme.lower() == "https":
            handlers.append(urllib.request.HTTPSHandler(context=ssl_context(self.tls)))
        elif self.tls.enabled:
            raise ArgumentError("url", "TLS settings need an https:// URL")
        self._opener = urllib.request.build_opener(*handlers)

    @property
    def target(self) -> str:
        return self.url

    def model_url(self) -> str:
        """Returns: `URL/v1/models/NAME[/versions/N | /labels/L]` for the current spec."""
        version, label = self._spec()
        suffix = (f"/versions/{int(version)}" if version is not None
                  else f"/labels/{urllib.parse.quote(label, safe='')}" if label else "")
        return f"{self.url}/v1/models/{urllib.parse.quote(self.model_name, safe='')}{suffix}"

    def predict_url(self) -> str:
        return f"{self.model_url()}:predict"

    def resolve_version(self) -> int | None:
        """GET the model status (`/v1/models/NAME[/labels/L]`): the highest AVAILABLE version.

        Raises:
            ModelNotFoundError: no such model or label, or no AVAILABLE version.
        """
        if self.version is not None:
            return self.version
        payload = self._request_json(urllib.request.Request(self.model_url(), method="GET"), "status")
        statuses = payload.get("model_version_status") if isinstance(payload, dict) else None
        if not isinstance(statuses, list):
            raise ServingError(f"{self.url}: malformed model status reply (no model_version_status list)")
        available = []
        for entry in statuses:
            if isinstance(entry, dict) and entry.get("state") == "AVAILABLE" and str(entry.get("version", "")).isdigit():
                available.append(int(entry["version"]))
        if not available:
            raise ModelNotFoundError("label" if self.label else "model_name",
                                     f"{self._where()} has no AVAILABLE version")
        return max(available)

    def build_body(self, inputs: dict[str, np.ndarray], signature: str) -> bytes:
        """Returns: the JSON request body."""
        if signature == DETECT_PNG:
            instances = []
            for png, threshold in zip(inputs["image_bytes"], inputs["threshold"]):
                instances.append(
                    {"image_bytes": {"b64": base64.b64encode(png).decode("ascii")}, "threshold": float(threshold)}
                )
            body = {"signature_name": signature, "instances": instances}
        else:
            body = {"signature_name": signature, "inputs": {k: np.asarray(v).tolist() for k, v in inputs.items()}}
        return json.dumps(body, allow_nan=True).encode("utf-8")

    def predict(self, inputs: dict[str, np.ndarray], signature: str) -> dict[str, np.ndarray]:
        body = self.build_body(inputs, signature)
        if len(body) > self.max_message_bytes:
            raise RequestTooLargeError(
                "max_message_bytes",
                f"request body is {len(body) / 2**20:.1f} MiB, above the {self.max_message_bytes / 2**20:.0f} MiB "
                "limit (use signature=detect_png, which sends a PNG)",
            )
        request = urllib.request.Request(self.predict_url(), data=body,
                                         headers={"Content-Type": "application/json"}, method="POST")
        return _rest_outputs(self._request_json(request, signature), self.url)

    def _request_json(self, request: urllib.request.Request, signature: str):
        """Sends `request` with retries (503, connection errors) within one deadline. Returns: the JSON reply.

        Raises:
            ServingError and subclasses: see the module docstring.
        """
        deadline = Deadline(self.timeout)
        for attempt in range(self.retries + 1):
            try:
                data = self._post(request, deadline)
            except urllib.error.HTTPError as err:
                message = _rest_error_message(err)
                if err.code == 503 and attempt < self.retries and deadline.sleep_backoff(attempt, self.backoff):
                    continue
                raise self._map_error(err.code, message, signature) from None
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as err:
                reason = escape_controls(str(getattr(err, "reason", err)))[:200]
                cause = err.reason if isinstance(err, urllib.error.URLError) else err
                if isinstance(cause, ssl.SSLError):
                    raise ServingError(f"{self.url}: TLS failed, not retried ({reason})") from None
                if attempt < self.retries and deadline.sleep_backoff(attempt, self.backoff):
                    continue
                raise ServerUnavailableError(
                    f"{self.url} unavailable after {attempt + 1} attempts within {self.timeout:g} s ({reason})"
                ) from None
            try:
                return json.loads(data.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                raise ServingError(f"{self.url}: malformed reply: not JSON ({len(data)} bytes)") from None
        raise AssertionError("unreachable")

    def _post(self, request, deadline: Deadline) -> bytes:
        """Sends `request` and reads the whole reply within the deadline (a thread: a server that drips
        its reply cannot hold the client longer than `timeout`). Returns: the body.

        Raises:
            urllib.error.HTTPError, URLError, OSError: transport errors; TimeoutError: the deadline passed;
            ServingError: the reply is larger than `max_message_bytes`.
        """
        import threading

        outcome: dict = {}

        def work():
            try:
                with self._opener.open(request, timeout=max(deadline.remaining(), 0.001)) as response:
                    outcome["response"] = response  # closed by the caller if the deadline passes first
                    length = response.headers.get("Content-Length")
                    if length and length.strip().isdigit() and int(length) > self.max_message_bytes:
                        raise ServingError(f"{self.url}: reply of {int(length) / 2**20:.1f} MiB is above the "
                                           f"{self.max_message_bytes / 2**20:.0f} MiB limit (--max-message-mb)")
                    chunks, size = [], 0
                    while True:
                        chunk = response.read1(1 << 16)
                        if not chunk:
                            break
                        size += len(chunk)
                        if size > self.max_message_bytes:
                            raise ServingError(f"{self.url}: reply is above the {self.max_message_bytes / 2**20:.0f} "
                                               "MiB limit (--max-message-mb)")
                        if deadline.remaining() <= 0:
                            raise TimeoutError("reply not complete within the deadline")
                        chunks.append(chunk)
                    outcome["data"] = b"".join(chunks)
            except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
                outcome["error"] = err

        thread = threading.Thread(target=work, name="hourglass-rest", daemon=True)
        thread.start()
        thread.join(deadline.remaining() + 0.05)
        if thread.is_alive():
            response = outcome.get("response")
            if response is not None:  # do not leave the connection open behind a timed-out request
                try:
                    response.close()
                except OSError:
                    pass
            raise TimeoutError(f"no complete reply within {self.timeout:g} s")
        if "error" in outcome:
            raise outcome["error"]
        return outcome["data"]

    def _map_error(self, http_status: int, message: str, signature: str) -> Exception:
        where = self._where()
        if self._spec()[1] and "label" in message.lower():
            return ModelNotFoundError("label", f"{where}: no such version label ({message})")
        if "signature" in message.lower() and "not found" in message.lower():
            return SignatureNotFoundError("signature", f"{where} has no signature {signature!r} ({message})")
        if http_status == 404:
            return ModelNotFoundError("model_name", f"{where} not found ({message})")
        if http_status == 413:
            return RequestTooLargeError("max_message_bytes", f"{where}: request too large ({message})")
        if http_status == 503:
            return ServerUnavailableError(f"{self.url} unavailable after {self.retries + 1} attempts ({message})")
        return ServingError(f"{where}: HTTP {http_status}: {message}")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # the 30x surfaces as an HTTPError


def _rest_error_message(err) -> str:
    """The first line of a REST error body's "error" (control characters escaped, at most 300 characters)."""
    try:
        body = err.read(1 << 16)
        text = str(json.loads(body.decode("utf-8")).get("error", ""))
    except Exception:  # noqa: BLE001 - a non-JSON (or non-object) error body
        text = str(err.reason)
    return escape_controls((text.splitlines() or [""])[0][:300])


def _rest_outputs(payload, url: str = "REST") -> dict:
    """TF Serving REST response -> columnar outputs (row or columnar form); `checked_outputs` checks them.

    Raises:
        ServingError: the reply is not a TF Serving predict response.
    """
    if not isinstance(payload, dict):
        raise ServingError(f"{url}: malformed reply: a JSON {type(payload).__name__}, not an object")
    if "outputs" in payload:
        outputs = payload["outputs"]
        return outputs if isinstance(outputs, dict) else {"output": outputs}
    predictions = payload.get("predictions")
    if not isinstance(predictions, list):
        keys = ", ".join(escape_controls(str(k))[:40] for k in sorted(payload)[:10])
        raise ServingError(f"{url}: malformed reply: no 'predictions' list (keys: {keys or 'none'})")
    if predictions and all(isinstance(row, dict) for row in predictions):
        keys = set(predictions[0])
        if any(set(row) != keys for row in predictions):
            raise ServingError(f"{url}: malformed reply: the predictions have different keys")
        return {k: [row[k] for row in predictions] for k in predictions[0]}
    return {"output": predictions}


class LocalClient(PredictionClient):
    """Runs a SavedModel in this process (TensorFlow; no server).

    Args:
        saved_model_dir: a version directory (`BASE/<n>`) or a base path (its
            largest numeric version is used).
        **kwargs: see `PredictionClient`.
    """

    transport = "local"

    def __init__(self, saved_model_dir: str | os.PathLike, **kwargs):
        super().__init__(**kwargs)
        import tensorflow as tf

        if self.label:
            raise ArgumentError("label", "version labels are TF Serving's (models.config); with saved_model= "
                                           "give version=")
        path = select_version(os.fspath(saved_model_dir), self.version)
        self.path = path
        self._tf = tf
        try:
            self._loaded = tf.saved_model.load(path)
        except Exception as err:  # noqa: BLE001 - a broken export is a bad input
            raise InputError(path, f"cannot load SavedModel: {str(err).splitlines()[0]}") from None

    @property
    def target(self) -> str:
        return self.path

    def resolve_version(self) -> int | None:
        name = storage.basename(self.path if storage.is_url(self.path) else os.path.normpath(self.path))
        return int(name) if name.isdigit() else None

    def _contract_without_metadata(self) -> ModelContract:
        """An export from before the `metadata` signature: its assets.extra JSON, if any."""
        metadata = read_export_metadata(self.path)
        if metadata and not self.long_side:
            try:
                return ModelContract.from_text(json.dumps(metadata), version=self._pinned, source=self.path)
            except ContractError as err:
                raise InputError(self.path, str(err)) from None
        return super()._contract_without_metadata()

    def predict(self, inputs: dict[str, np.ndarray], signature: str) -> dict[str, np.ndarray]:
        signatures = self._loaded.signatures
        if signature not in signatures:
            raise SignatureNotFoundError(
                "signature", f"{self.path} has no signature {signature!r} (it has {', '.join(sorted(signatures))})"
            )
        tf = self._tf
        outputs = signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
        return {k: v.numpy() for k, v in outputs.items()}


def select_version(path: str, version: int | None) -> str:
    """The SavedModel directory to load: `path` itself when it is one, else its version `version`
    (default: the largest numeric version, as TF Serving serves by default).

    Raises:
        InputError: no SavedModel there, no such version, or a version directory that is not `version`.
    """
    if storage.isfile(storage.join(path, "saved_model.pb")):
        name = storage.basename(os.path.normpath(path) if not storage.is_url(path) else path)
        if version is not None and name != str(version):
            raise ArgumentError("version", f"{path} is a SavedModel directory named {name!r}, not version {version}; "
                                          "give the base path to choose a version")
        return path
    versions = list_versions(path)
    if not versions:
        raise InputError(path, "not a SavedModel directory (no saved_model.pb, no numeric version)")
    if version is None:
        return storage.join(path, str(versions[-1]))
    if version not in versions:
        listed = ", ".join(map(str, versions[-10:]))
        raise ArgumentError("version", f"{path} has no version {version} (it has {listed})")
    return storage.join(path, str(version))


# --------------------------------------------------------------------------- TensorProto
# With TensorFlow importable (always for gRPC: tensorflow-serving-api's protos import it) the client
# uses TensorFlow's own codec, `tf.make_tensor_proto` / `tf.make_ndarray`; the small codec below is
# kept for TF-less clients (a protobuf-only install) and is tested to agree with TensorFlow's.
_TF = []


def _tensorflow():
    """Returns: the `tensorflow` module, or None where it cannot be imported (cached)."""
    if not _TF:
        try:
            import tensorflow
        except ImportError:
            tensorflow = None
        _TF.append(tensorflow)
    return _TF[0]


def to_tensor_proto(value: np.ndarray, *, use_tf: bool | None = None):
    """numpy array -> `TensorProto` (`tf.make_tensor_proto` when TensorFlow is importable).

    Args:
        value: a numeric array, or an object/bytes/str array (DT_STRING).
        use_tf: force (True) or avoid (False) TensorFlow's codec; None: TensorFlow's when importable.
    """
    array = np.asarray(value)
    tf = _tensorflow() if use_tf is not False else None
    if tf is not None:
        if array.dtype.kind == "U" or (array.dtype == object and any(isinstance(v, str) for v in array.reshape(-1))):
            array = np.array([v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in array.reshape(-1)],
                             dtype=object).reshape(array.shape)
        if array.dtype != object and array.dtype.kind != "S" and array.dtype not in _NP_TO_DT:
            raise TypeError(f"unsupported dtype {array.dtype}")
        return tf.make_tensor_proto(array)
    if use_tf:
        raise ImportError("use_tf=True but TensorFlow cannot be imported")
    return _small_to_tensor_proto(array)


def from_tensor_proto(proto, *, use_tf: bool | None = None) -> np.ndarray:
    """`TensorProto` -> numpy array (`tf.make_ndarray` when TensorFlow is importable).

    Raises:
        ServingError: a dtype the client does not read.
    """
    tf = _tensorflow() if use_tf is not False else None
    if tf is not None:
        if proto.dtype != _DT_STRING and proto.dtype not in _DT_TO_NP:
            raise ServingError(f"unsupported output dtype {proto.dtype}")
        return tf.make_ndarray(proto)
    if use_tf:
        raise ImportError("use_tf=True but TensorFlow cannot be imported")
    return _small_from_tensor_proto(proto)


# The small codec (no TensorFlow): DataType numbers of tensorflow/core/framework/types.proto.
_DT_STRING = 7
_NP_TO_DT = {
    np.dtype(np.float32): 1,  # DT_FLOAT
    np.dtype(np.float64): 2,  # DT_DOUBLE
    np.dtype(np.int32): 3,  # DT_INT32
    np.dtype(np.uint8): 4,  # DT_UINT8
    np.dtype(np.int64): 9,  # DT_INT64
    np.dtype(np.uint16): 17,  # DT_UINT16
}
_DT_TO_NP = {v: k for k, v in _NP_TO_DT.items()}


def _small_to_tensor_proto(array: np.ndarray):
    """numpy -> TensorProto from the proto classes: numbers in `tensor_content` (little-endian),
    object/bytes arrays in `string_val`."""
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2

    shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in array.shape])
    if array.dtype == object or array.dtype.kind in ("S", "U"):
        items = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in array.reshape(-1)]
        return tensor_pb2.TensorProto(dtype=_DT_STRING, tensor_shape=shape, string_val=items)
    if array.dtype not in _NP_TO_DT:
        raise TypeError(f"unsupported dtype {array.dtype}")
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return tensor_pb2.TensorProto(dtype=_NP_TO_DT[array.dtype], tensor_shape=shape, tensor_content=little.tobytes())


def _small_from_tensor_proto(proto) -> np.ndarray:
    """TensorProto -> numpy: `tensor_content` or the typed `*_val` fields (a constant stored once)."""
    shape = [d.size for d in proto.tensor_shape.dim]
    if proto.dtype == _DT_STRING:
        return np.array(list(proto.string_val), dtype=object).reshape(shape)
    if proto.dtype not in _DT_TO_NP:
        raise ServingError(f"unsupported output dtype {proto.dtype}")
    dtype = _DT_TO_NP[proto.dtype]
    count = int(np.prod(shape)) if shape else 1
    if proto.tensor_content:
        return np.frombuffer(proto.tensor_content, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(shape)
    field = {1: proto.float_val, 2: proto.double_val, 3: proto.int_val, 4: proto.int_val,
             9: proto.int64_val, 17: proto.int_val}[proto.dtype]
    values = np.array(list(field), dtype=dtype)
    if values.size == 1 and count > 1:
        values = np.full(count, values[0], dtype)  # a constant tensor stores its value once
    return values.reshape(shape)


def make_client(
    *,
    saved_model: str | None = None,
    grpc: str | None = None,
    rest: str | None = None,
    **kwargs,
) -> PredictionClient:
    """Returns: a `LocalClient`, `GrpcClient` or `RestClient` (exactly one target must be given)."""
    given = [name for name, value in (("saved_model", saved_model), ("grpc", grpc), ("rest", rest)) if value]
    if len(given) != 1:
        raise ValueError(f"give exactly one of saved_model, grpc, rest; got {given or 'none'}")
    tls = kwargs.pop("tls", None)
    if saved_model:
        if tls is not None and tls.enabled:
            raise ArgumentError("tls", "TLS settings are for grpc= or rest=")
        return LocalClient(saved_model, **kwargs)
    kwargs["tls"] = tls
    if grpc:
        return GrpcClient(grpc, **kwargs)
    return RestClient(rest, **kwargs)


__all__ = [
    "Detection", "GrpcClient", "LocalClient", "ModelNotFoundError", "PredictionClient", "RequestTooLargeError",
    "RestClient", "SIGNATURES", "ServerUnavailableError", "ServingError", "SignatureNotFoundError",
    "encode_png16", "from_tensor_proto", "make_client", "read_export_metadata", "to_tensor_proto",
    "write_overlay",
]
