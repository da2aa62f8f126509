"""`make demo-two-stage` at toy size: scripts/demo_two_stage.sh on test_two_stage's hand-built PREP and stand-in model.

The same commands as the demo (proposals -> train --stage 2 -> evaluate --classifier -> export --classifier
-> predict), each a fresh `hourglass` process, with a one-epoch budget; the script's table and timing line
are checked (~1-5 min: five fresh processes, each importing TensorFlow). (The full demo, ~10 min of CPU after `make demo`, is not run by the tests.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("keras")

from test_two_stage import standin_model, write_prep  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_demo_two_stage_script_runs_end_to_end_at_toy_size(tmp_path):
    from serving_doubles import breast_pixels, write_mammogram_dicom

    out = tmp_path / "demo"
    write_prep(out / "prepared")
    os.makedirs(out / "run")
    standin_model().save(str(out / "run" / "model.keras"))
    dicom = write_mammogram_dicom(tmp_path / "l_cc.dcm", breast_pixels(64, 64, seed=1))
    hourglass = tmp_path / "hourglass"
    hourglass.write_text(f'#!/bin/sh\nexec "{sys.executable}" -c "import sys; from keras_hourglass.cli.main import '
                         f'main; sys.exit(main())" "$@"\n')
    hourglass.chmod(0o755)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
           "STAGE2_EPOCHS": "1", "STAGE2_STEPS": "2", "STAGE2_BATCH": "8", "DEMO_DICOM": str(dicom),
           "PROPOSAL_FLAGS": "--threshold 0.1",
           # as test_two_stage_export: with the stand-in's many near-equal marks, more than 8 per image
           # differ between the float and the PNG path at the default threshold (export verification fails)
           "EXPORT_FLAGS": "--max-marks 8", "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(["bash", os.path.join(ROOT, "scripts", "demo_two_stage.sh"), str(hourglass), str(out),
                           sys.executable], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert any(line.startswith("stage one ") for line in lines) and any(line.startswith("two stage ") for line in lines)
    assert any("elapsed:" in line and "min" in line for line in lines)
    froc = json.load(open(out / "eval-two-stage" / "froc.json"))
    assert set(froc["comparison"]["systems"]) == {"stage_one", "two_stage"}
    assert os.path.isdir(out / "serving" / "hourglass-two-stage" / "1")


def test_demo_two_stage_needs_the_demo_first(tmp_path):
    done = subprocess.run(["bash", os.path.join(ROOT, "scripts", "demo_two_stage.sh"), "hourglass", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "run `make demo` first" in done.stderr
