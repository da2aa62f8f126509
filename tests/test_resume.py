"""Preemption: SIGKILL a training process mid-run, start the same command, check it resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from keras_hourglass.training import callbacks as cb

WORKER = os.path.join(os.path.dirname(__file__), "workers", "train_worker.py")


def _command(run) -> list[str]:
    # 3 patch epochs + 2 full-image epochs of 3 steps; a short pause after each epoch gives the kill a window.
    return [sys.executable, WORKER, "--run", str(run), "--strategy", "default", "--model", "conv",
            "--patch-epochs", "3", "--full-epochs", "2", "--steps", "3", "--batch-size", "4", "--size", "32",
            "--epoch-delay", "1.5"]


@pytest.mark.slow
def test_sigkill_then_rerun_resumes_from_last_saved_epoch(tmp_path, subprocess_env):
    run = tmp_path / "run"
    backup = run / "backup"
    first = subprocess.Popen(_command(run), env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    deadline = time.time() + 240
    state = None
    try:
        while time.time() < deadline and first.poll() is None:
            state = cb.read_backup_state(str(backup))
            if state and state["completed_epochs"] >= 2:
                break
            time.sleep(0.1)
        assert first.poll() is None, "the first run ended before it could be killed:\n" + first.stdout.read()[-2000:]
        assert state and state["completed_epochs"] >= 2, "no epoch-2 backup within the time limit"
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == -signal.SIGKILL
    killed_at = cb.read_backup_state(str(backup))["completed_epochs"]
    assert 2 <= killed_at < 5
    assert not (run / "model.keras").exists()  # it really did not finish

    second = subprocess.run(_command(run), env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, timeout=240)
    assert second.returncode == 0, second.stdout[-3000:]
    result = json.loads([ln for ln in second.stdout.splitlines() if ln.startswith("RESULT ")][-1][7:])
    summary = result["summary"]["result"]
    assert summary["resumed_from_epoch"] == killed_at
    assert summary["epochs_completed"] == 5
    # The history continues: each epoch once, 1..5, phases in order, nothing re-run from scratch.
    history = cb.read_history(str(run / "history.csv"))
    assert [int(r["epoch"]) for r in history] == [1, 2, 3, 4, 5]
    assert [r["phase"] for r in history] == ["patch"] * 3 + ["full"] * 2
    # The optimizer state came back too: its step counter counts all 5 epochs of 3 steps.
    assert result["optimizer_iterations"] == 5 * 3
    assert (run / "model.keras").exists()
    assert cb.read_backup_state(str(backup))["completed_epochs"] == 5


    # The same RUN with other hyper-parameters is refused, not silently mixed.
    other = subprocess.run(_command(run) + ["--batch-size", "8"], env=subprocess_env(), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=240)
    assert other.returncode != 0
    assert "backup: was written by a run with other hyper-parameters" in other.stdout
