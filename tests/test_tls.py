"""TLS (gRPC ssl_channel_credentials, REST https with a CA bundle) and jittered backoff within one deadline,
against the TF Serving test doubles on 127.0.0.1 with a self-signed CA made here."""

from __future__ import annotations

import json
import random
import shutil
import ssl
import subprocess
import time

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from keras_hourglass.cli.main import main  # noqa: E402
from serving import client as sc  # noqa: E402
from serving.tls import TlsOptions  # noqa: E402
from serving_doubles import (  # noqa: E402
    TFServingPredictionServiceDouble,
    TFServingRestDouble,
    breast_pixels,
    conv_model,
    write_mammogram_dicom,
)


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_pki(directory, name: str) -> dict:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate (EC P-256, 1 day)."""
    d = directory / name
    d.mkdir()
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", f"/CN={name} test CA",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    for who, usage, san in (("server", "serverAuth", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"),
                            ("client", "clientAuth", "")):
        _openssl("req", "-new", *ec, "-keyout", f"{who}.key", "-out", f"{who}.csr", "-subj", f"/CN={who}", cwd=d)
        (d / f"{who}.ext").write_text(f"{san}basicConstraints=CA:FALSE\nextendedKeyUsage={usage}\n")
        _openssl("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{who}.pem", "-days", "1", "-extfile", f"{who}.ext", cwd=d)
    return {k: str(d / f) for k, f in (("ca", "ca.pem"), ("cert", "server.pem"), ("key", "server.key"),
                                         ("client_cert", "client.pem"), ("client_key", "client.key"))}


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not found")
    root = tmp_path_factory.mktemp("pki")
    return _make_pki(root, "good"), _make_pki(root, "other")


@pytest.fixture(scope="module")
def export_and_dicom(tmp_path_factory):
    from export.saved_model import export_detector
    from export.signatures import HourglassDetector

    detector = HourglassDetector(conv_model(stride=2), stride=2, input_multiple=4, max_marks=3, threshold=-1e9,
                                 long_side=64)
    result = export_detector(detector, tmp_path_factory.mktemp("serving") / "hourglass", verify="none")
    dicom = write_mammogram_dicom(tmp_path_factory.mktemp("dicom") / "l.dcm", breast_pixels(seed=5))
    return result.path, dicom


def test_grpc_mutual_tls_with_a_private_ca(pki, export_and_dicom, capsys):
    import grpc

    good, other = pki
    path, dicom = export_and_dicom
    read = lambda p: open(p, "rb").read()  # noqa: E731
    credentials = grpc.ssl_server_credentials([(read(good["key"]), read(good["cert"]))],
                                              root_certificates=read(good["ca"]), require_client_auth=True)
    double = TFServingPredictionServiceDouble(path)
    server, address = double.start(credentials)
    try:
        flags = ["--grpc", address, "--ca-cert", good["ca"], "--client-cert", good["client_cert"],
                 "--client-key", good["client_key"], "--timeout", "5"]
        assert main(["predict", *flags, dicom]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["target"].startswith("grpcs://") and out["model_version"] == 1
        assert out["results"][0]["num_marks"] == 3
        # A server certificate from another CA: one line, exit 1, not retried until the deadline.
        start = time.monotonic()
        assert main(["predict", "--grpc", address, "--ca-cert", other["ca"], "--client-cert", good["client_cert"],
                     "--client-key", good["client_key"], "--timeout", "20", "--retries", "10", dicom]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and address in err and time.monotonic() - start < 15
        assert "TLS failed, not retried" in err and "CERTIFICATE_VERIFY_FAILED" in err
        # Half a client identity, or a key file that is not PEM: one line, exit 2, naming the flag/file.
        assert main(["predict", "--grpc", address, "--client-cert", good["client_cert"], dicom]) == 2
        assert "--client-key" in capsys.readouterr().err
        assert main(["predict", "--grpc", address, "--ca-cert", dicom, dicom]) == 2
        assert "l.dcm: --ca-cert: not a PEM file" in capsys.readouterr().err
    finally:
        server.stop(None)


def test_rest_https_with_a_ca_bundle(pki, export_and_dicom, capsys):
    good, other = pki
    path, dicom = export_and_dicom
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(good["cert"], good["key"])
    double = TFServingRestDouble(path)
    server, url = double.start(ssl_context=context)
    try:
        assert url.startswith("https://")
        assert main(["predict", "--rest", url, "--ca-cert", good["ca"], dicom]) == 0
        assert json.loads(capsys.readouterr().out)["results"][0]["num_marks"] == 3
        calls = double.calls
        assert main(["predict", "--rest", url, "--ca-cert", other["ca"], "--retries", "5", dicom]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "TLS failed, not retried" in err and "CERTIFICATE_VERIFY_FAILED" in err
        assert double.calls == calls  # never reached the handler
        assert main(["predict", "--rest", url.replace("https", "http"), "--ca-cert", good["ca"], dicom]) == 2
        assert "--rest: TLS settings need an https:// URL" in capsys.readouterr().err
    finally:
        server.shutdown()
        server.server_close()


def test_backoff_is_jittered_and_bounded():
    rng = random.Random(0)
    delays = [sc.backoff_delay(attempt, 0.5, rng) for attempt in range(8) for _ in range(20)]
    bases = [min(0.5 * 2**attempt, sc.MAX_BACKOFF) for attempt in range(8) for _ in range(20)]
    assert all(b / 2 <= d <= b for d, b in zip(delays, bases))
    assert len({round(d, 6) for d in delays[:20]}) == 20  # no lockstep


def test_retries_stay_within_one_overall_deadline(export_and_dicom):
    path, dicom = export_and_dicom
    double = TFServingRestDouble(path, unavailable_first=10**6)
    server, url = double.start()
    try:
        client = sc.RestClient(url, retries=1000, backoff=0.05, timeout=1.0, long_side=64)
        image = np.zeros((64, 48), np.float32)
        start = time.monotonic()
        with pytest.raises(sc.ServerUnavailableError):
            client.detect_image(image, signature="detect_png")
        elapsed = time.monotonic() - start
        assert 0.9 < elapsed < 1.6 and 3 <= double.calls < 1000  # retried with backoff, then the deadline ended it
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(Exception, match="client_key"):
        TlsOptions(client_cert="x.pem")
