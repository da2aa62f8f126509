"""The real TFX pipeline (examples/tfx_pipeline.py) with LocalDagRunner: `make test-tfx`.

ImportExampleGen over a small prepared set -> Tuner (2 trials) -> Trainer (the best
hyper-parameters) -> Pusher to a filesystem serving base; then `export.verify` and
`hourglass predict --saved-model` on the version Pusher published. Needs tfx (its own venv,
.venv-tfx); skipped without it unless HOURGLASS_REQUIRE_TFX=1.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os

import pytest

from test_tfx_module import TUNE
from test_tuning import make_prepared

pytestmark = [pytest.mark.tfx, pytest.mark.slow]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tfx():
    try:
        import tfx  # noqa: F401
    except ImportError:
        if os.environ.get("HOURGLASS_REQUIRE_TFX") == "1":
            raise
        pytest.skip("tfx is not installed (make test-tfx)")


def _example_module():
    spec = importlib.util.spec_from_file_location("tfx_pipeline", os.path.join(ROOT, "examples", "tfx_pipeline.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_local_dag_runner_pipeline_pushes_a_verified_servable_version(tmp_path, capsys):
    _tfx()
    from tfx import v1 as tfx

    from export.verify import verify_saved_model
    from keras_hourglass.cli.main import main

    prep = make_prepared(str(tmp_path))
    serving_base = tmp_path / "serving" / "hourglass"
    custom_config = {"tune": TUNE,
                     "train": {"patch_epochs": 1, "full_epochs": 0, "steps_per_epoch": 1, "val_images": 2},
                     "export": {"max_marks": 4, "verify": "ops"}}
    pipeline = _example_module().create_pipeline(prep, str(tmp_path / "tfx_root"), str(serving_base),
                                                 custom_config=custom_config, train_steps=1)
    tfx.orchestration.LocalDagRunner().run(pipeline)

    best_files = glob.glob(str(tmp_path / "tfx_root" / "**" / "best_hyperparameters.txt"), recursive=True)
    assert len(best_files) == 1
    best = json.loads(open(best_files[0]).read())
    assert {"omega", "top_k", "sigmas", "learning_rate"} <= set(best["values"])
    results_files = glob.glob(str(tmp_path / "tfx_root" / "**" / "tuner_results.json"), recursive=True)
    results = json.loads(open(results_files[0]).read())  # the Tuner's COMPLETED trials, best first
    assert len(results) == 2 and all(0.0 <= r["score"] <= 1.0 for r in results)
    assert best["values"]["omega"] == pytest.approx(results[0]["omega"])
    versions = [p for p in serving_base.iterdir() if p.name.isdigit()]
    assert len(versions) == 1, list(serving_base.iterdir())
    version = versions[0]
    assert not any(p.name.isdigit() for p in version.iterdir())  # no <n>/ of our own inside Pusher's
    config = json.loads(open(glob.glob(str(tmp_path / "tfx_root" / "**" / "model_run" / "**" / "config.json"),
                                       recursive=True)[0]).read())
    assert config["hyperparameters"]["omega"] == pytest.approx(best["values"]["omega"])
    report = verify_saved_model(str(version), stride=config["model"]["output_stride"], max_marks=4, image_hw=(24, 16))
    assert report.warmup_records > 0
    dicom = sorted(glob.glob(str(tmp_path / "synth" / "**" / "*.dcm"), recursive=True))[0]
    capsys.readouterr()
    assert main(["predict", "--saved-model", str(serving_base), dicom]) == 0
    assert json.loads(capsys.readouterr().out)["model_version"] == int(version.name)
