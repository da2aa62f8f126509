"""Test doubles for the export and serving tests.

- `tiny_hourglass`: the smallest real Hourglass, for fast export tests.
- `shared_export`: one verified export of it, shared by the test modules of a session.
- `conv_model`: a 2-layer conv heatmap model where the network does not matter.
- `random_image`: a float32 image with a few bright blobs.
- `write_mammogram_dicom`, `breast_pixels`: tiny valid MG DICOM files.
- `TFServingPredictionServiceDouble`, `TFServingRestDouble`: TEST DOUBLES of TF Serving
  (gRPC PredictionService and REST predict) over one exported SavedModel.
- `HostileRestServer`, `HostileGrpcServicer`: TEST DOUBLES of a misbehaving server (garbage, wrong
  types, huge, slow and dripping replies, escapes in error messages) for the hostile-input suite.
"""

from __future__ import annotations

import http.server
import json
import threading

import numpy as np


def tiny_hourglass(seed: int = 0):
    """The smallest real Hourglass: 1 stack, depth 2, stride 4 (input multiple 16), ~3k weights."""
    import keras

    from keras_hourglass.model import build_hourglass

    keras.utils.set_random_seed(seed)
    return build_hourglass("tiny", num_stacks=1, depth=2, num_features=8, stem_features=4,
                           head_initializer="glorot_uniform")  # an untrained model that still marks


_SHARED_EXPORTS: dict = {}


def shared_export(tmp_path_factory):
    """One verified export of `tiny_hourglass(seed=3)`, shared by every test module of the session.

    Settings: stride 4, input multiple 16, max_marks 6, threshold -1e9 (every local maximum is a
    mark), long side 64; `verify="full"` (op check, saved_model_cli show/run, warmup replay).

    Returns:
        `(detector, ExportResult)`.
    """
    if "tiny" not in _SHARED_EXPORTS:
        from export.saved_model import export_detector
        from export.signatures import HourglassDetector

        detector = HourglassDetector(tiny_hourglass(seed=3), stride=4, input_multiple=16, max_marks=6,
                                     threshold=-1e9, long_side=64)
        base = tmp_path_factory.mktemp("shared_serving") / "hourglass"
        _SHARED_EXPORTS["tiny"] = (detector, export_detector(detector, base, verify="full", verify_image_hw=(30, 21)))
    return _SHARED_EXPORTS["tiny"]


def conv_model(stride: int = 2, seed: int = 0):
    """A 2-layer conv heatmap model (image -> heatmap at `stride`): for tests where the network is
    irrelevant (atomic publication, verification failures) and tracing a real Hourglass 4 times
    would only cost time."""
    import keras

    keras.utils.set_random_seed(seed)
    image = keras.Input((None, None, 1), name="image")
    x = keras.layers.Conv2D(4, 3, strides=stride, padding="same", activation="relu")(image)
    heatmap = keras.layers.Conv2D(1, 3, padding="same", name="heatmap")(x)
    return keras.Model(image, heatmap, name="conv_heatmap")


def random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth-ish float32 [H, W] image in [0, 1] with a few bright blobs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    image = 0.1 * rng.random((h, w), dtype=np.float32)
    for _ in range(3):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        image += 0.8 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 4.0**2))
    return np.clip(image, 0.0, 1.0).astype(np.float32)


# ------------------------------------------------------------------------------------ DICOM files
def write_mammogram_dicom(path, pixels: np.ndarray, *, laterality: str = "L") -> str:
    """Writes a minimal valid MG 'For Presentation' DICOM (uint16 pixels, explicit VR little endian)."""
    from dicom_factory import write_mammogram_file

    return write_mammogram_file(path, pixels, laterality=laterality, view="CC", PatientID="TEST-PATIENT")


def breast_pixels(rows: int = 96, cols: int = 72, seed: int = 0) -> np.ndarray:
    """12-bit pixels: a bright half-ellipse 'breast' on the left edge with two dense blobs."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float64)
    inside = ((y + 0.5 - rows / 2) / (rows * 0.48)) ** 2 + ((x + 0.5) / (cols * 0.75)) ** 2 <= 1
    img = np.where(inside, 1500 + 200 * rng.random((rows, cols)), 50)
    for cy, cx in ((rows * 0.35, cols * 0.3), (rows * 0.7, cols * 0.45)):
        img += 2000 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * 3.0**2)) * inside
    return np.clip(img, 0, 4095).astype(np.uint16)


# ------------------------------------------------------------------ TF Serving test doubles (shared)
class _Versions:
    """The servables of one model in a TF Serving TEST DOUBLE: versions (each a loaded SavedModel) and
    version labels, resolved the way TF Serving does (latest = highest version; an unknown label is
    'Unrecognized servable version label')."""

    def __init__(self, saved_model_dir: str | None, version: int, versions: dict | None, labels: dict | None):
        import tensorflow as tf

        paths = dict(versions) if versions else {version: saved_model_dir}
        self.loaded = {int(v): tf.saved_model.load(str(path)) for v, path in paths.items()}
        self.labels = dict(labels or {})

    def resolve(self, version: int | None, label: str | None) -> tuple[int | None, str]:
        """Returns: (version or None, error message if none)."""
        if label:
            if label not in self.labels:
                return None, f"Unrecognized servable version label: {label}"
            version = self.labels[label]
        if version is None:
            return max(self.loaded), ""
        if int(version) not in self.loaded:
            return None, f"Servable not found for request: Specific(hourglass, {version})"
        return int(version), ""


# ------------------------------------------------------------------ TF Serving test doubles (gRPC)
class TFServingPredictionServiceDouble:
    """TEST DOUBLE of TensorFlow Serving's gRPC PredictionService over SavedModel versions.

    Not TF Serving: it implements `Predict` with tensorflow-serving-api's generated
    servicer base class, the way TF Serving answers (NOT_FOUND "Servable not found
    for request: ..." for an unknown model/version, INVALID_ARGUMENT "Unrecognized servable
    version label" for an unknown label, FAILED_PRECONDITION 'Serving signature key "x"
    not found.', INVALID_ARGUMENT when the inputs do not match the signature; the reply's
    model_spec names the version that answered), and returns UNAVAILABLE for the first
    `unavailable_first` calls; `delay` seconds of sleep before answering simulate a slow
    server. `versions={1: dir1, 2: dir2}` and `labels={"canary": 2}` serve several versions.
    """

    def __init__(self, saved_model_dir: str | None = None, *, model_name: str = "hourglass", version: int = 1,
                 unavailable_first: int = 0, delay: float = 0.0, versions: dict | None = None,
                 labels: dict | None = None):
        import threading

        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        self.model_name, self.unavailable_first = model_name, unavailable_first
        self.delay = delay
        self.calls = 0
        self.requests: list = []  # (signature, version or None, label or "")
        self._lock = threading.Lock()
        self.servables = _Versions(saved_model_dir, version, versions, labels)
        double = self

        class Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):
            def Predict(self, request, context):  # noqa: N802 - gRPC method name
                return double.predict(request, context, grpc)

        self.servicer = Servicer()

    def predict(self, request, context, grpc):
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        with self._lock:
            self.calls += 1
            unavailable = self.calls <= self.unavailable_first
        if unavailable:
            context.abort(grpc.StatusCode.UNAVAILABLE, "test double: server starting")
        if self.delay:
            import time

            time.sleep(self.delay)
        spec = request.model_spec
        asked = spec.version.value if spec.HasField("version") else None
        self.requests.append((spec.signature_name, asked, spec.version_label))
        self.last_inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        if spec.name != self.model_name:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({spec.name})")
        version, problem = self.servables.resolve(asked, spec.version_label or None)
        if version is None:
            code = grpc.StatusCode.INVALID_ARGUMENT if "label" in problem else grpc.StatusCode.NOT_FOUND
            context.abort(code, problem)
        loaded = self.servables.loaded[version]
        name = spec.signature_name or "serving_default"
        if name not in loaded.signatures:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f'Serving signature key "{name}" not found.')
        fn = loaded.signatures[name]
        expected = set(fn.structured_input_signature[1])
        if set(request.inputs) != expected:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"input size does not match signature: {len(request.inputs)}!={len(expected)}")
        outputs = fn(**{k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()})
        response = predict_pb2.PredictResponse()
        response.model_spec.name = self.model_name
        response.model_spec.version.value = version
        response.model_spec.signature_name = name
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(tf.make_tensor_proto(value.numpy()))
        return response

    def start(self, credentials=None):
        """Starts a gRPC server on 127.0.0.1 (free port); `credentials`: `grpc.ssl_server_credentials` for TLS.

        Returns: (server, "127.0.0.1:PORT").
        """
        from concurrent import futures

        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        options = [("grpc.max_receive_message_length", 256 * 2**20), ("grpc.max_send_message_length", 256 * 2**20)]
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=options)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(self.servicer, server)
        if credentials is None:
            port = server.add_insecure_port("127.0.0.1:0")
        else:
            port = server.add_secure_port("127.0.0.1:0", credentials)
        server.start()
        return server, f"127.0.0.1:{port}"


# ------------------------------------------------------------------ TF Serving test doubles (REST)
class TFServingRestDouble:
    """TEST DOUBLE of TensorFlow Serving's REST API over SavedModel versions (http.server).

    Speaks `POST /v1/models/NAME[/versions/N | /labels/L]:predict` with the "instances" (row) and
    "inputs" (columnar) forms, `{"b64": ...}` binary values and NaN in JSON, answers
    {"predictions": [...]} / {"outputs": {...}} (string outputs as JSON strings, as TF Serving does
    for names not ending in "_bytes"), `GET /v1/models/NAME[/versions/N | /labels/L]` with the model
    status, and errors as {"error": msg} with 404 (unknown model or version), 400 (unknown label or
    signature, bad inputs) and 503 for the first `unavailable_first` calls.
    """

    def __init__(self, saved_model_dir: str | None = None, *, model_name: str = "hourglass", version: int = 1,
                 unavailable_first: int = 0, versions: dict | None = None, labels: dict | None = None):
        self.model_name, self.unavailable_first = model_name, unavailable_first
        self.calls = 0
        self.requests: list = []  # (method, path)
        self.servables = _Versions(saved_model_dir, version, versions, labels)

    def _route(self, path: str, suffix: str):
        """Returns: (version, None) or (None, (status, payload))."""
        import re

        match = re.fullmatch(r"/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?" + suffix, path)
        if not match:
            return None, (404, {"error": f"Malformed request: {path}"})
        name, version, label = match.group(1), match.group(2), match.group(3)
        if name != self.model_name:
            return None, (404, {"error": f"Servable not found for request: Latest({name})"})
        resolved, problem = self.servables.resolve(int(version) if version else None, label)
        if resolved is None:
            return None, (400 if "label" in problem else 404, {"error": problem})
        return resolved, None

    def status(self, path: str) -> tuple[int, dict]:
        import re

        if re.fullmatch(r"/v1/models/[^/:]+", path):  # every loaded version, as TF Serving lists them
            if path.rsplit("/", 1)[1] != self.model_name:
                return 404, {"error": f"Could not find any versions of model {path.rsplit('/', 1)[1]}"}
            versions = sorted(self.servables.loaded)
        else:
            version, error = self._route(path, "")
            if error:
                return error
            versions = [version]
        return 200, {"model_version_status": [{"version": str(v), "state": "AVAILABLE",
                                               "status": {"error_code": "OK", "error_message": ""}}
                                              for v in versions]}

    def handle(self, path: str, body: bytes) -> tuple[int, dict]:
        import base64
        import json

        import tensorflow as tf

        self.calls += 1
        self.requests.append(("POST", path))
        if self.calls <= self.unavailable_first:
            return 503, {"error": "test double: server starting"}
        version, error = self._route(path, ":predict")
        if error:
            return error
        loaded = self.servables.loaded[version]
        request = json.loads(body)
        self.last_body = request
        signature = request.get("signature_name", "serving_default")
        if signature not in loaded.signatures:
            return 400, {"error": f'Serving signature name: "{signature}" not found in signature def'}
        fn = loaded.signatures[signature]
        specs = fn.structured_input_signature[1]

        def decode(value):
            if isinstance(value, dict) and set(value) == {"b64"}:
                return base64.b64decode(value["b64"])
            if isinstance(value, list):
                return [decode(v) for v in value]
            return value

        if "instances" in request:
            rows = request["instances"]
            rows = rows if isinstance(rows[0], dict) else [{next(iter(specs)): r} for r in rows]
            columns = {k: [decode(row[k]) for row in rows] for k in rows[0]}
        else:
            inputs = request["inputs"]
            columns = {k: decode(v) for k, v in inputs.items()} if isinstance(inputs, dict) else {next(iter(specs)): decode(inputs)}
        if set(columns) != set(specs):
            return 400, {"error": f"input size does not match signature: {len(columns)}!={len(specs)}"}
        tensors = {
            k: tf.constant(np.array(v, dtype=object) if specs[k].dtype == tf.string else np.array(v, specs[k].dtype.as_numpy_dtype))
            for k, v in columns.items()
        }

        def jsonable(key, value):
            if value.dtype == object:
                items = [base64.b64encode(b).decode() if key.endswith("_bytes") else b.decode("utf-8")
                         for b in value.reshape(-1)]
                return np.array(items, dtype=object).reshape(value.shape).tolist()
            return value.tolist()

        outputs = {k: jsonable(k, v.numpy()) for k, v in fn(**tensors).items()}
        if "instances" in request:
            batch = len(next(iter(outputs.values())))
            return 200, {"predictions": [{k: v[i] for k, v in outputs.items()} for i in range(batch)]}
        return 200, {"outputs": outputs}

    def start(self, ssl_context=None):
        """Starts an HTTP server on 127.0.0.1 (free port) in a thread; `ssl_context` (server side) for https.

        Returns: (server, "http[s]://127.0.0.1:PORT").
        """
        import http.server
        import json
        import threading

        double = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self, status, payload):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):  # noqa: N802 - http.server method name
                length = int(self.headers.get("Content-Length", 0))
                self._answer(*double.handle(self.path, self.rfile.read(length)))

            def do_GET(self):  # noqa: N802 - http.server method name
                double.requests.append(("GET", self.path))
                self._answer(*double.status(self.path))

            def log_message(self, *args):
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if ssl_context is not None:
            server.socket = ssl_context.wrap_socket(server.socket, server_side=True)
            scheme = "https"
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server, f"{scheme}://127.0.0.1:{server.server_address[1]}"


# ------------------------------------------------------------------ hostile servers (test doubles)
HOSTILE_REST_MODES = {
    # mode -> (HTTP status, body bytes or callable(handler)); the good reply is a valid one-mark answer.
    "good": (200, json.dumps({"predictions": [{"marks": [[5.0, 6.0, 0.9]], "num_marks": 1, "long_side": 64}]})),
    "html": (200, "<html><body>502 Bad Gateway</body></html>"),
    "array": (200, "[1, 2, 3]"),
    "string": (200, '"predictions"'),
    "no_predictions": (200, json.dumps({"result": "ok"})),
    "predictions_string": (200, json.dumps({"predictions": "marks"})),
    "no_marks": (200, json.dumps({"predictions": [{"num_marks": 1}]})),
    "marks_string": (200, json.dumps({"predictions": [{"marks": "a lot", "num_marks": 1}]})),
    "marks_shape": (200, json.dumps({"predictions": [{"marks": [1.0, 2.0], "num_marks": 1}]})),
    "marks_nan": (200, '{"predictions": [{"marks": [[NaN, 1.0, 0.5]], "num_marks": 1}]}'),
    "num_marks_big": (200, json.dumps({"predictions": [{"marks": [[1.0, 1.0, 0.5]], "num_marks": 7}]})),
    "num_marks_negative": (200, json.dumps({"predictions": [{"marks": [[1.0, 1.0, 0.5]], "num_marks": -1}]})),
    "num_marks_float": (200, json.dumps({"predictions": [{"marks": [[1.0, 1.0, 0.5]], "num_marks": 0.5}]})),
    "long_side_huge": (200, json.dumps({"predictions": [{"marks": [[1.0, 1.0, 0.5]], "num_marks": 1,
                                                         "long_side": 10**12}]})),
    "ragged": (200, json.dumps({"predictions": [{"marks": [[1.0, 1.0, 0.5], [1.0]], "num_marks": 1}]})),
    "not_utf8": (200, b"\xff\xfe\x00garbage"),
    "error_escape": (500, json.dumps({"error": "boom \x1b[2J\x1b[31mred\rover\nsecond line"})),
    "not_found_escape": (404, json.dumps({"error": "Servable not found \x1b]0;pwned\x07 for request"})),
    "bad_gateway_html": (502, "<html>bad gateway</html>"),
    "unavailable": (503, json.dumps({"error": "starting"})),
}


def hostile_contract_outputs() -> dict:
    """The `metadata` outputs the hostile doubles answer honestly (long side 64), so that their misbehaviour
    reaches the predict call under test."""
    from serving.contract import contract_digest, contract_text

    text = contract_text({"format": "keras-hourglass-export/2", "long_side": 64, "threshold": 0.0,
                          "preprocessing": {"long_side": 64, "windowing": "auto", "orientation": "left"}})
    return {"metadata": [text], "metadata_sha256": [contract_digest(text)]}


class HostileRestServer:
    """A TEST DOUBLE of a misbehaving TF Serving REST endpoint: `http://127.0.0.1:PORT/<mode>` answers
    model status (GET) and the `metadata` signature honestly, and predictions
    with `HOSTILE_REST_MODES[mode]`, or one of the special modes: ``huge_declared`` (a Content-Length of
    1 GiB), ``huge`` (3 MiB without Content-Length), ``slow`` (answers after 5 s), ``drip`` (a byte every
    0.2 s, forever), ``redirect_file`` (302 to file:///etc/passwd), ``close`` (drops the connection)."""

    def start(self):
        double = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_POST(self):  # noqa: N802 - http.server method name
                length = int(self.headers.get("Content-Length", 0) or 0)
                body = self.rfile.read(length)
                mode = self.path.strip("/").split("/", 1)[0]
                if b'"signature_name": "metadata"' in body:
                    mode = "metadata"
                try:
                    double.answer(self, mode)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_GET(self):  # noqa: N802 - http.server method name
                double.answer(self, "status")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self.server, f"http://127.0.0.1:{self.server.server_address[1]}"

    @staticmethod
    def answer(handler, mode: str) -> None:
        import time

        if mode == "close":
            handler.connection.close()
            return
        if mode == "redirect_file":
            handler.send_response(302)
            handler.send_header("Location", "file:///etc/passwd")
            handler.end_headers()
            return
        if mode == "huge_declared":
            handler.send_response(200)
            handler.send_header("Content-Length", str(2**30))
            handler.end_headers()
            handler.wfile.write(b"[" * 1000)
            return
        if mode == "huge":
            handler.send_response(200)
            handler.end_headers()
            chunk = b"[" * 65536
            for _ in range(48):
                handler.wfile.write(chunk)
            return
        if mode == "slow":
            time.sleep(5)
        if mode == "drip":
            handler.send_response(200)
            handler.end_headers()
            for _ in range(600):
                handler.wfile.write(b" ")
                handler.wfile.flush()
                time.sleep(0.2)
            return
        if mode == "metadata":
            status, body = 200, json.dumps({"outputs": hostile_contract_outputs()})
        elif mode == "status":
            status, body = 200, json.dumps({"model_version_status": [{"version": "1", "state": "AVAILABLE"}]})
        else:
            status, body = HOSTILE_REST_MODES.get(mode, HOSTILE_REST_MODES["good"])
        data = body if isinstance(body, bytes) else body.encode("utf-8")
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)


class HostileGrpcServicer:
    """A TEST DOUBLE of a misbehaving TF Serving gRPC PredictionService (honest `metadata` answers): the
    model name of the request picks the behaviour of predictions: ``empty`` (no outputs), ``string_marks`` (marks as DT_STRING), ``bad_shape``,
    ``nan``, ``slow`` (sleeps 5 s), ``internal_escape`` (INTERNAL with terminal escapes), ``huge`` (a
    reply above the client's limit), ``good``."""

    def start(self):
        from concurrent import futures

        import grpc
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

        from serving.client import to_tensor_proto

        class Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):
            def Predict(self, request, context):  # noqa: N802 - gRPC method name
                import time

                mode = request.model_spec.name
                response = predict_pb2.PredictResponse()
                if request.model_spec.signature_name == "metadata":
                    for key, value in hostile_contract_outputs().items():
                        response.outputs[key].CopyFrom(to_tensor_proto(np.array(value, dtype=object)))
                    return response
                if mode == "slow":
                    time.sleep(5)
                if mode == "internal_escape":
                    context.abort(grpc.StatusCode.INTERNAL, "kernel \x1b[31mexploded\r\nsecond line")
                outputs = {"marks": np.array([[[5.0, 6.0, 0.9]]], np.float32), "num_marks": np.array([1], np.int32),
                           "long_side": np.array([64], np.int32)}
                if mode == "empty":
                    outputs = {}
                elif mode == "string_marks":
                    outputs["marks"] = np.array([b"abc"], dtype=object)
                elif mode == "bad_shape":
                    outputs["marks"] = np.zeros((1, 2, 2), np.float32)
                elif mode == "nan":
                    outputs["marks"] = np.full((1, 1, 3), np.nan, np.float32)
                elif mode == "huge":
                    outputs["heatmap"] = np.zeros((1, 1024, 1024, 1), np.float32)
                for key, value in outputs.items():
                    response.outputs[key].CopyFrom(to_tensor_proto(value))
                return response

        options = [("grpc.max_send_message_length", 64 * 2**20)]
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=options)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Servicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        return server, f"127.0.0.1:{port}"
