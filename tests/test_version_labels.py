"""Version labels (stable, canary): models.config updates by `hourglass export --label`, clients by label."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from keras_hourglass.cli.main import main  # noqa: E402
from serving import client as sc  # noqa: E402
from serving.model_config import read_model_config  # noqa: E402
from serving_doubles import (  # noqa: E402
    TFServingPredictionServiceDouble,
    TFServingRestDouble,
    breast_pixels,
    conv_model,
    write_mammogram_dicom,
)

SERVING_DIR = Path(__file__).resolve().parents[1] / "serving"


def _policy_and_labels(path):
    (model,) = read_model_config(path).model_config_list.config
    return list(model.model_version_policy.specific.versions), dict(model.version_labels)


def test_canary_config_example_keeps_its_labelled_versions_loaded():
    versions, labels = _policy_and_labels(SERVING_DIR / "models.canary.config")
    assert labels == {"stable": 1, "canary": 2} and sorted(set(labels.values())) == versions
    text = (SERVING_DIR / "docker-compose.yml").read_text()
    assert "--allow_version_labels_for_unavailable_models=true" in text
    assert "--model_config_file_poll_wait_seconds=" in text


def test_export_label_updates_models_config_atomically(tmp_path, capsys):
    import shutil

    model = tmp_path / "run" / "model.keras"
    model.parent.mkdir()
    conv_model(stride=2).save(model)
    config = tmp_path / "models.config"
    shutil.copy(SERVING_DIR / "models.config", config)
    base = tmp_path / "serving" / "hourglass"
    argv = ["export", "--model", str(model), "--base-path", str(base), "--verify", "ops", "--max-marks", "3",
            "--models-config", str(config)]
    assert main([*argv, "--label", "stable"]) == 0
    assert json.loads(capsys.readouterr().out)["version_label"]["labels"] == {"stable": 1}
    assert main([*argv, "--label", "canary"]) == 0
    assert _policy_and_labels(config) == ([1, 2], {"stable": 1, "canary": 2})
    assert main([*argv, "--label", "canary"]) == 0  # a newer canary; stable stays loaded
    assert _policy_and_labels(config) == ([1, 3], {"stable": 1, "canary": 3})
    assert config.read_text().startswith("# TensorFlow Serving model config")  # its comments kept
    assert sorted(os.listdir(tmp_path)) == ["models.config", "run", "serving"]  # no temp file left
    capsys.readouterr()
    # A bad label or a config without the model: one line, exit 2, and nothing published.
    assert main([*argv, "--label", "9lives"]) == 2
    assert "--label: '9lives' is not a version label" in capsys.readouterr().err
    assert main([*argv, "--label", "canary", "--model-name", "other"]) == 2
    assert "has no model 'other'" in capsys.readouterr().err
    assert sorted(os.listdir(base)) == ["1", "2", "3"]


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory):
    from export.saved_model import export_detector
    from export.signatures import HourglassDetector

    base = tmp_path_factory.mktemp("labels") / "hourglass"
    for seed in (1, 2):
        detector = HourglassDetector(conv_model(stride=2, seed=seed), stride=2, input_multiple=4, max_marks=3,
                                     threshold=-1e9, long_side=64)
        export_detector(detector, base, verify="none")
    dicom = write_mammogram_dicom(tmp_path_factory.mktemp("dicom") / "l.dcm", breast_pixels(seed=3))
    return {1: str(base / "1"), 2: str(base / "2")}, dicom


def test_clients_by_label_report_the_version_that_answered(two_versions, capsys):
    versions, dicom = two_versions
    expected = {v: sc.LocalClient(path).detect_file(dicom) for v, path in versions.items()}
    assert not np.allclose(expected[1].marks[:, 2], expected[2].marks[:, 2])  # two different models
    labels = {"stable": 1, "canary": 2}
    grpc_double = TFServingPredictionServiceDouble(versions=versions, labels=labels)
    server, address = grpc_double.start()
    rest_double = TFServingRestDouble(versions=versions, labels=labels)
    http, url = rest_double.start()
    try:
        for target in (["--grpc", address], ["--rest", url]):
            for which, version in ((["--label", "canary"], 2), (["--label", "stable"], 1), (["--version", "1"], 1),
                                   ([], 2)):
                assert main(["predict", *target, *which, dicom]) == 0
                out = json.loads(capsys.readouterr().out)
                assert out["model_version"] == version and out["results"][0]["model_version"] == version
                got = [m["score"] for m in out["results"][0]["marks"]]
                np.testing.assert_allclose(got, expected[version].marks[:, 2], atol=1e-3)
            assert main(["predict", *target, "--label", "nope", "--retries", "0", dicom]) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and "--label" in err and "nope" in err
        # REST: status by label, then every request pinned to the version it named.
        assert ("GET", "/v1/models/hourglass/labels/canary") in rest_double.requests
        assert ("POST", "/v1/models/hourglass/versions/2:predict") in rest_double.requests
        assert ("metadata", None, "canary") in grpc_double.requests and ("serving_default", 2, "") in grpc_double.requests
    finally:
        server.stop(None)
        http.shutdown()
        http.server_close()
