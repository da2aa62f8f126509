"""Tests of serving/: configs, the gRPC/REST/local clients (against TF Serving TEST DOUBLES), `hourglass predict`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from keras_hourglass.cli.main import main  # noqa: E402
from export.signatures import decode_png_image  # noqa: E402
from keras_hourglass.data.dicom import read_mammogram  # noqa: E402
from serving import client as sc  # noqa: E402
from serving_doubles import (  # noqa: E402
    TFServingPredictionServiceDouble,
    TFServingRestDouble,
    breast_pixels,
    shared_export,
    write_mammogram_dicom,
)

SERVING_DIR = Path(__file__).resolve().parents[1] / "serving"
LONG_SIDE, MAX_MARKS = 64, 6


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    """The session's shared export of a real tiny Hourglass (threshold -1e9: every maximum is a mark)."""
    detector, result = shared_export(tmp_path_factory)
    assert (detector.long_side, detector.max_marks) == (LONG_SIDE, MAX_MARKS)
    return result.path


@pytest.fixture(scope="module")
def dicoms(tmp_path_factory):
    d = tmp_path_factory.mktemp("dicom")
    left = write_mammogram_dicom(d / "left.dcm", breast_pixels(seed=1), laterality="L")
    right = write_mammogram_dicom(d / "right.dcm", breast_pixels(seed=2)[:, ::-1], laterality="R")
    bad = d / "bad.dcm"
    bad.write_bytes(b"not a dicom file at all")
    return left, right, str(bad)


@pytest.fixture(scope="module")
def local(export_dir):
    return sc.LocalClient(export_dir)


@pytest.fixture(scope="module")
def grpc_double(export_dir):
    double = TFServingPredictionServiceDouble(export_dir)
    server, address = double.start()
    yield double, address
    server.stop(None)


@pytest.fixture(scope="module")
def rest_double(export_dir):
    double = TFServingRestDouble(export_dir)
    server, url = double.start()
    yield double, url
    server.shutdown()
    server.server_close()


# -------------------------------------------------------------------------------------- configs
def test_models_config_parses_as_model_server_config():
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = text_format.Parse((SERVING_DIR / "models.config").read_text(), model_server_config_pb2.ModelServerConfig())
    (model,) = config.model_config_list.config
    assert model.name == "hourglass" and model.base_path == "/models/hourglass"
    assert model.model_platform == "tensorflow"
    assert model.model_version_policy.WhichOneof("policy_choice") == "latest"
    assert model.model_version_policy.latest.num_versions == 2


def test_batching_parameters_parse_and_are_consistent():
    from google.protobuf import text_format

    from serving.batching import batching_parameters_class

    params = text_format.Parse((SERVING_DIR / "batching_parameters.txt").read_text(), batching_parameters_class()())
    sizes = list(params.allowed_batch_sizes)
    assert sizes == sorted(sizes) and sizes[-1] == params.max_batch_size.value  # TF Serving's rules
    assert params.num_batch_threads.value >= 1 and params.batch_timeout_micros.value > 0
    assert params.pad_variable_length_inputs is False


def test_docker_compose_mounts_export_and_configs():
    text = (SERVING_DIR / "docker-compose.yml").read_text()
    for needle in ("tensorflow/serving", "8500:8500", "8501:8501", "--model_config_file=/config/models.config",
                   "--batching_parameters_file=/config/batching_parameters.txt", "--enable_model_warmup=true",
                   "/models/hourglass"):
        assert needle in text, needle


# -------------------------------------------------------------------------------------- clients
def test_client_module_and_rest_path_import_no_tensorflow(tmp_path):
    code = (
        "import sys, numpy as np\n"
        "import serving.client as c, serving.cli\n"
        "r = c.RestClient('http://127.0.0.1:9', retries=0)\n"
        "body = r.build_body(r.signature_inputs(np.zeros((20, 16), np.float32), 'detect_png', None), 'detect_png')\n"
        "assert b'b64' in body and b'NaN' in body\n"
        "print('tensorflow' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "False"


def test_tensor_proto_codecs_tf_and_small_agree():
    """TensorFlow's codec (used where TF imports) and the small TF-less one read and write the same tensors."""
    for value in (np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, -2], np.int32),
                  np.array([b"\x89PNG", b"ab"], dtype=object), np.array([["a", "b"]], dtype=object)):
        by_tf, small = sc.to_tensor_proto(value, use_tf=True), sc.to_tensor_proto(value, use_tf=False)
        assert sc.to_tensor_proto(value) == by_tf  # the default where TensorFlow is importable
        expected = value if value.dtype != object else np.vectorize(
            lambda v: v.encode() if isinstance(v, str) else v, otypes=[object])(value)
        for proto in (by_tf, small):
            assert proto.dtype == by_tf.dtype
            for use_tf in (True, False):
                back = sc.from_tensor_proto(proto, use_tf=use_tf)
                assert back.shape == value.shape and back.dtype == expected.dtype
                assert back.tolist() == expected.tolist()
    typed = tf.make_tensor_proto(np.full([2, 2], 0.5, np.float32))
    typed.ClearField("tensor_content")
    typed.float_val.append(0.5)  # TF's compact form of a constant tensor: one value for all
    for use_tf in (True, False):
        np.testing.assert_array_equal(sc.from_tensor_proto(typed, use_tf=use_tf), np.full([2, 2], 0.5, np.float32))
    with pytest.raises(TypeError):
        sc.to_tensor_proto(np.array([1 + 2j]), use_tf=False)
    with pytest.raises(TypeError):
        sc.to_tensor_proto(np.array([1 + 2j]), use_tf=True)


def _reference(loaded, path):
    """Preprocess + the signature called directly."""
    mammogram = read_mammogram(path, long_side=LONG_SIDE)
    fn = loaded.signatures["serving_default"]
    out = fn(image=tf.constant(mammogram.image[None, :, :, None]))
    marks = out["marks"].numpy()[0][: int(out["num_marks"][0])]
    return mammogram, marks


def test_local_client_maps_marks_to_original_pixels(export_dir, local, dicoms):
    loaded = tf.saved_model.load(export_dir)  # reference: the signature called directly
    for path in dicoms[:2]:
        detection = local.detect_file(path)
        mammogram, marks = _reference(loaded, path)
        assert detection.long_side == LONG_SIDE and detection.image_shape == mammogram.image.shape
        assert detection.original_shape == (96, 72) and len(detection.marks) == MAX_MARKS
        np.testing.assert_allclose(detection.marks, marks, atol=1e-5)
        # original -> image reproduces the marks (the flip of right.dcm included)
        np.testing.assert_allclose(mammogram.transform.forward_points(detection.original_marks), marks[:, :2], atol=1e-6)
        assert (detection.original_marks >= 0).all() and (detection.original_marks[:, 0] <= 96).all()
    assert read_mammogram(dicoms[1], long_side=LONG_SIDE).transform.flipped


def test_grpc_client_matches_local_for_both_signatures(local, grpc_double, dicoms):
    _, address = grpc_double
    expected = local.detect_file(dicoms[0])
    for signature in ("serving_default", "detect_png"):
        with sc.GrpcClient(address, signature=signature) as client:
            got = client.detect_file(dicoms[0])
        tol = 1e-5 if signature == "serving_default" else 1e-3  # detect_png: 16-bit PNG quantisation
        np.testing.assert_allclose(got.marks, expected.marks, atol=tol)
        np.testing.assert_allclose(got.original_marks, expected.original_marks, atol=tol * 2)
        assert got.to_json()["marks"][0].keys() == {"x", "y", "score", "image_x", "image_y"}


def test_grpc_retries_unavailable_then_gives_up(export_dir, dicoms):
    image = read_mammogram(dicoms[0], long_side=LONG_SIDE).image
    double = TFServingPredictionServiceDouble(export_dir, unavailable_first=2)
    server, address = double.start()
    try:
        with sc.GrpcClient(address, retries=2, backoff=0.01) as client:
            marks, long_side = client.detect_image(image)
        assert double.calls == 3 and len(marks) == MAX_MARKS and long_side == LONG_SIDE
        double.calls, double.unavailable_first = 0, 10
        with sc.GrpcClient(address, retries=1, backoff=0.01) as client, pytest.raises(
            sc.ServerUnavailableError, match="unavailable after 2 attempts"
        ):
            client.detect_image(image)
        assert double.calls == 2  # bounded
    finally:
        server.stop(None)


def test_grpc_timeout_is_one_clear_error(export_dir, dicoms):
    image = read_mammogram(dicoms[0], long_side=LONG_SIDE).image
    double = TFServingPredictionServiceDouble(export_dir, delay=1.0)
    server, address = double.start()
    try:
        with sc.GrpcClient(address, timeout=0.2, retries=3) as client, pytest.raises(
            sc.ServerUnavailableError, match=r"no answer within 0.2 s"
        ):
            client.detect_image(image)
        assert double.calls == 1  # a timeout is not retried (it would pile load on a slow server)
    finally:
        server.stop(None)


def test_grpc_unknown_model_signature_and_oversized(grpc_double, dicoms):
    double, address = grpc_double
    image = read_mammogram(dicoms[0], long_side=LONG_SIDE).image
    with sc.GrpcClient(address, model_name="nope", retries=0) as client, pytest.raises(
        sc.ModelNotFoundError, match=r"model_name: .*'nope' not found \(Servable not found"
    ):
        client.detect_image(image)
    with sc.GrpcClient(address, version=7, retries=0) as client, pytest.raises(sc.ModelNotFoundError, match="version 7"):
        client.detect_image(image)
    with sc.GrpcClient(address, retries=0) as client, pytest.raises(sc.SignatureNotFoundError, match="'classify'"):
        client.predict({"image": image[None, :, :, None]}, "classify")
    calls = double.calls
    with sc.GrpcClient(address, max_message_bytes=4096) as client, pytest.raises(
        sc.RequestTooLargeError, match="above the 0 MiB gRPC limit"
    ):
        client.detect_image(image)  # 64 x 48 float32 = 12 KiB > 4 KiB
    assert double.calls == calls  # refused before sending


def test_rest_client_both_forms_match_local(local, rest_double, dicoms):
    _, url = rest_double
    expected = local.detect_file(dicoms[1])
    for signature in ("detect_png", "serving_default"):
        client = sc.RestClient(url, signature=signature, long_side=LONG_SIDE)
        got = client.detect_file(dicoms[1])
        np.testing.assert_allclose(got.marks, expected.marks, atol=1e-3)
    # A per-request threshold above every score: no marks.
    client = sc.RestClient(url, signature="detect_png", long_side=LONG_SIDE, threshold=1e9)
    assert len(client.detect_file(dicoms[1]).marks) == 0


def test_clients_read_the_contract_once_and_pin_the_version(export_dir, rest_double, grpc_double, dicoms):
    _, url = rest_double
    client = sc.RestClient(url, signature="detect_png")  # no long side given: the contract's
    detection = client.detect_file(dicoms[0])
    assert detection.long_side == LONG_SIDE and max(detection.image_shape) == LONG_SIDE
    assert detection.model_version == 1 and client.contract().long_side == LONG_SIDE
    double, address = grpc_double
    double.requests.clear()
    with sc.GrpcClient(address) as grpc_client:
        grpc_client.detect_file(dicoms[0])
        grpc_client.detect_file(dicoms[1])
    # One metadata call (latest), then every prediction pinned to the version that answered it.
    assert double.requests == [("metadata", None, ""), ("serving_default", 1, ""), ("serving_default", 1, "")]


def test_rest_errors_and_retries(export_dir, rest_double, dicoms):
    _, url = rest_double
    image = read_mammogram(dicoms[0], long_side=LONG_SIDE).image
    with pytest.raises(sc.ModelNotFoundError, match=r"'nope' not found \(Servable not found for request: Latest\(nope\)"):
        sc.RestClient(url, model_name="nope", retries=0).detect_image(image, signature="detect_png")
    with pytest.raises(sc.SignatureNotFoundError, match="'classify'"):
        sc.RestClient(url, retries=0).predict({"image": image[None, :, :, None]}, "classify")
    with pytest.raises(sc.RequestTooLargeError, match="request body is"):
        sc.RestClient(url, max_message_bytes=1000).detect_image(image, signature="serving_default")
    double = TFServingRestDouble(export_dir, unavailable_first=2)
    server, flaky_url = double.start()
    try:
        marks, _ = sc.RestClient(flaky_url, retries=2, backoff=0.01).detect_image(image, signature="detect_png")
        assert double.calls == 3 and len(marks) == MAX_MARKS
    finally:
        server.shutdown()
        server.server_close()
    # Nobody listening any more: connection refused, retried, then one clear error.
    with pytest.raises(sc.ServerUnavailableError, match="unavailable after 2 attempts"):
        sc.RestClient(flaky_url, retries=1, backoff=0.01).detect_image(image, signature="detect_png")


# ------------------------------------------------------------------------------------------ CLI
def test_cli_predict_local_with_overlay_and_a_bad_file(export_dir, dicoms, tmp_path, capsys):
    overlays = tmp_path / "overlays"
    base = os.path.dirname(export_dir)  # a base path: the latest version is used
    code = main(["predict", "--saved-model", base, "--overlay-dir", str(overlays), dicoms[0], dicoms[2]])
    captured = capsys.readouterr()
    assert code == 2  # one bad input
    out = json.loads(captured.out)
    good, bad = out["results"]
    assert good["file"] == dicoms[0] and good["num_marks"] == MAX_MARKS and good["long_side"] == LONG_SIDE
    assert bad["file"] == dicoms[2] and "error" in bad
    assert captured.err.count("\n") == 1 and "bad.dcm" in captured.err
    assert (overlays / "left.dcm.png").is_file()


def test_cli_predict_grpc_unknown_model_is_one_line_exit_2(grpc_double, dicoms, capsys):
    _, address = grpc_double
    code = main(["predict", "--grpc", address, "--model-name", "nope", "--retries", "0", dicoms[0]])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "not found" in err


def test_cli_predict_rest_defaults_to_detect_png(rest_double, dicoms, capsys):
    _, url = rest_double
    assert main(["predict", "--rest", url, "--threshold=-1e9", dicoms[0]]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["signature"] == "detect_png" and out["results"][0]["num_marks"] == MAX_MARKS


def test_cli_predict_unreachable_server_exits_1_with_one_line(dicoms, capsys):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = main(["predict", "--rest", f"http://127.0.0.1:{port}", "--retries", "1", "--long-side", "64", dicoms[0]])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "unavailable after 2 attempts" in err


# ---------------------------------------------------------------------------------- real server
@pytest.mark.real_server
@pytest.mark.skipif(shutil.which("tensorflow_model_server") is None, reason="tensorflow_model_server not on PATH")
def test_real_tensorflow_model_server(export_dir, dicoms, tmp_path):
    import socket
    import time

    def free_port():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    grpc_port, rest_port = free_port(), free_port()
    base = os.path.dirname(export_dir)
    proc = subprocess.Popen(
        ["tensorflow_model_server", f"--port={grpc_port}", f"--rest_api_port={rest_port}", "--model_name=hourglass",
         f"--model_base_path={base}", "--enable_model_warmup=true", "--rest_api_timeout_in_ms=60000"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        client = sc.GrpcClient(f"127.0.0.1:{grpc_port}", retries=20, backoff=0.5, timeout=120, long_side=LONG_SIDE)
        expected = sc.LocalClient(export_dir, long_side=LONG_SIDE).detect_file(dicoms[0])
        np.testing.assert_allclose(client.detect_file(dicoms[0]).marks, expected.marks, atol=1e-4)
        rest = sc.RestClient(f"http://127.0.0.1:{rest_port}", signature="detect_png", retries=20, timeout=120,
                             long_side=LONG_SIDE)
        np.testing.assert_allclose(rest.detect_file(dicoms[0]).marks, expected.marks, atol=1e-3)
        with pytest.raises(sc.ModelNotFoundError):
            sc.RestClient(f"http://127.0.0.1:{rest_port}", model_name="nope", retries=0).detect_file(dicoms[0])
        client.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        time.sleep(0.1)


# ---------------------------------------------------------------------------- the model contract
def _canonical_table(root: Path, image_name: str) -> str:
    path = root / "annotations.csv"
    path.write_text("image_path,patient_id,study_id,laterality,view,label,finding_type,xmin,ymin,xmax,ymax\n"
                    f"{image_name},P-1,S-1,R,CC,normal,,,,,\n")
    return str(path)


def test_client_sends_exactly_the_training_pixels_of_prep(tmp_path):
    """An export whose PREP used non-default preprocessing (min-max instead of the file's window, no
    reorientation, long side 40): both remote clients send PREP's pixels, not read_mammogram's defaults."""
    from export.saved_model import export_keras_model
    from keras_hourglass.data import records
    from keras_hourglass.data.prepare import PrepareConfig, prepare
    from serving_doubles import conv_model

    images = tmp_path / "images"
    dicom = write_mammogram_dicom(images / "right.dcm", breast_pixels(seed=4)[:, ::-1], laterality="R")
    import pydicom

    ds = pydicom.dcmread(dicom)
    ds.WindowCenter, ds.WindowWidth = 1600, 600  # a narrow window: "auto" would use it
    ds.save_as(dicom)
    prep = tmp_path / "prep"
    prepare(PrepareConfig(annotations=[_canonical_table(images, "right.dcm")], images_root=str(images),
                          out=str(prep), size=40, voi="none", orient="none", salt="s", quiet=True,
                          val_fraction=0.0, test_fraction=0.0))
    (raw,) = [r for f in records.list_files(str(prep), "train") for r in tf.data.TFRecordDataset(f)]
    prep_pixels = records.parse_example(raw)["image"].numpy()[..., 0]
    run = tmp_path / "run"
    run.mkdir()
    conv_model(stride=2).save(run / "model.keras")
    (run / "config.json").write_text(json.dumps({"data": {"prep_dir": str(prep)}}))
    result = export_keras_model(run / "model.keras", tmp_path / "serving" / "hourglass", verify="none", max_marks=3)
    assert result.metadata["preprocessing"]["windowing"] == "none"
    defaults = read_mammogram(dicom, long_side=40).image
    assert defaults.shape == prep_pixels.shape and np.abs(defaults - prep_pixels).max() > 0.1  # they differ

    grpc_double = TFServingPredictionServiceDouble(result.path)
    server, address = grpc_double.start()
    try:
        with sc.GrpcClient(address) as client:
            client.detect_file(dicom)
        sent = grpc_double.last_inputs["image"][0, ..., 0]
        np.testing.assert_allclose(sent, prep_pixels, atol=1.0 / 65535 + 1e-7)
    finally:
        server.stop(None)
    rest_double = TFServingRestDouble(result.path)
    server, url = rest_double.start()
    try:
        sc.RestClient(url, signature="detect_png").detect_file(dicom)
        import base64

        png = base64.b64decode(rest_double.last_body["instances"][0]["image_bytes"]["b64"])
        sent = decode_png_image(png).numpy()[..., 0]
        np.testing.assert_allclose(sent, prep_pixels, atol=1.0 / 65535 + 1e-7)
    finally:
        server.shutdown()
        server.server_close()


def test_operating_point_picks_the_recorded_threshold(tmp_path, dicoms, capsys):
    from export.saved_model import export_detector
    from export.signatures import HourglassDetector
    from serving.contract import inclusive_threshold
    from serving_doubles import conv_model

    froc = tmp_path / "eval" / "froc.json"
    froc.parent.mkdir()
    froc.write_text(json.dumps({"split": "test", "num_images": 10, "operating_points": {
        "1": {"threshold": 0.75, "fpi": 0.9, "sensitivity": 0.5},
        "4.8": {"threshold": 0.25, "fpi": 4.7, "sensitivity": 0.8},
        "0.125": {"threshold": None, "fpi": None, "sensitivity": None}}}))
    from export.contract import operating_points_from_froc

    detector = HourglassDetector(conv_model(stride=2), stride=2, input_multiple=4, max_marks=4, threshold=-1e9,
                                 long_side=LONG_SIDE)
    base = tmp_path / "serving" / "hourglass"
    export_detector(detector, base, verify="none", metadata={"operating_points": operating_points_from_froc(froc)})
    assert main(["predict", "--saved-model", str(base), "--operating-point", "4.8", dicoms[0]]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["operating_point"]["threshold"] == 0.25 and out["threshold"] == inclusive_threshold(0.25)
    assert out["model_version"] == 1
    assert all(m["score"] >= 0.25 for m in out["results"][0]["marks"])
    assert main(["predict", "--saved-model", str(base), "--operating-point", "2", dicoms[0]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no operating point at FPI 2 (recorded: 0.125, 1, 4.8)" in err
    contract = sc.ModelContract.from_text((base / "1" / "assets.extra" / "keras_hourglass.json").read_text())
    with pytest.raises(sc.InputError, match="no threshold keeps FPI <= 0.125"):
        contract.operating_point(0.125)
    # An export without recorded operating points: one line, exit 2.
    none_base = tmp_path / "serving" / "plain"
    export_detector(detector, none_base, verify="none")
    assert main(["predict", "--saved-model", str(none_base), "--operating-point", "4.8", dicoms[0]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "records no operating points" in err


@pytest.mark.real_server
@pytest.mark.skipif(shutil.which("tensorflow_model_server") is None or shutil.which("openssl") is None,
                    reason="tensorflow_model_server or openssl not on PATH")
def test_real_server_metadata_labels_and_tls(export_dir, dicoms, tmp_path):
    """The real TF Serving: the metadata signature over REST and gRPC, version labels (stable, canary) from
    models.config, gRPC over TLS (--ssl_config_file) with a private CA."""
    import socket
    import time

    from serving.model_config import set_version_label
    from test_tls import _make_pki

    def free_port():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    base = tmp_path / "hourglass"
    for version in (1, 2):
        shutil.copytree(export_dir, base / str(version))
    config = tmp_path / "models.config"
    set_version_label(config, "hourglass", "stable", 1, base_path=str(base))
    set_version_label(config, "hourglass", "canary", 2)
    pki = _make_pki(tmp_path, "real")
    ssl_config = tmp_path / "ssl.config"
    ssl_config.write_text(f"server_key: {json.dumps(open(pki['key']).read())}\n"
                          f"server_cert: {json.dumps(open(pki['cert']).read())}\n"
                          f"custom_ca: {json.dumps(open(pki['ca']).read())}\nclient_verify: false\n")
    grpc_port, rest_port = free_port(), free_port()
    proc = subprocess.Popen(
        ["tensorflow_model_server", f"--port={grpc_port}", f"--rest_api_port={rest_port}",
         f"--model_config_file={config}", "--allow_version_labels_for_unavailable_models=true",
         f"--ssl_config_file={ssl_config}", "--enable_model_warmup=true", "--rest_api_timeout_in_ms=60000"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        import urllib.request

        from serving.tls import TlsOptions

        deadline = time.monotonic() + 120
        while True:  # both versions loaded and warmed up (a label of a loading version is NOT_FOUND)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{rest_port}/v1/models/hourglass", timeout=5) as reply:
                    states = [v["state"] for v in json.load(reply)["model_version_status"]]
                if states.count("AVAILABLE") == 2:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "TF Serving did not load both versions"
            time.sleep(0.5)
        tls = TlsOptions(ca_cert=pki["ca"])
        with sc.GrpcClient(f"127.0.0.1:{grpc_port}", label="canary", tls=tls, retries=30, backoff=0.5,
                           timeout=120) as client:
            detection = client.detect_file(dicoms[0])
            assert client.contract().long_side == LONG_SIDE and detection.model_version == 2
        rest = sc.RestClient(f"http://127.0.0.1:{rest_port}", label="stable", signature="detect_png", retries=30,
                             timeout=120)
        assert rest.detect_file(dicoms[0]).model_version == 1
        np.testing.assert_allclose(rest.detect_file(dicoms[0]).marks, detection.marks, atol=1e-3)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        time.sleep(0.1)


def test_library_errors_name_python_arguments_and_the_cli_maps_them_to_flags():
    from keras_hourglass.errors import ArgumentError, with_flags
    from serving.cli import PREDICT_FLAGS

    with pytest.raises(ArgumentError) as caught:
        sc.RestClient("http://localhost:1", version=1, label="stable")
    assert caught.value.argument == "label" and "--" not in str(caught.value)
    with pytest.raises(ArgumentError) as caught:
        sc.RestClient("ftp://x")
    assert caught.value.argument == "url"
    err = sc.RequestTooLargeError("max_message_bytes", "above 1 MiB (use signature=detect_png, or raise "
                                                       "max_message_bytes=)")
    flagged = with_flags(err, PREDICT_FLAGS)
    assert str(flagged) == "--max-message-mb: above 1 MiB (use --signature detect_png, or raise --max-message-mb)"
    assert str(with_flags(sc.InputError("a.pem", "ca_cert=: not a PEM file"), PREDICT_FLAGS)) == (
        "a.pem: --ca-cert: not a PEM file")
    assert set(PREDICT_FLAGS.values()) <= {a for action in _predict_parser()._actions for a in action.option_strings}


def _predict_parser():
    import argparse

    from serving import cli

    return cli.register(argparse.ArgumentParser().add_subparsers())
