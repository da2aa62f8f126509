"""Distributed tuning through KerasTuner's own mechanism: a chief oracle and two workers on loopback."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import time

import pytest

from test_tuning import _hparam_value, _read_hparams, clean_env, make_prepared, tune_command

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_line(path, text, procs, timeout):
    deadline = time.monotonic() + timeout
    while True:
        with open(path) as handle:
            if text in handle.read():
                return
        for proc in procs:
            assert proc.poll() is None, f"a tuner exited early: {open(path).read()[-2000:]}"
        assert time.monotonic() < deadline, f"{text!r} not seen in {path}"
        time.sleep(0.1)


def test_chief_and_two_workers_split_the_trials(tmp_path):
    prep = make_prepared(str(tmp_path))
    out = str(tmp_path / "tune")  # one directory for all three (a shared filesystem on a cluster)
    command = tune_command(prep, out, "--max-trials", "2")
    port = str(free_port())
    procs, logs = {}, {}
    try:
        # Workers first: they block on the chief's gRPC server, so both are waiting when it starts
        # and each receives a trial (a worker that started later might otherwise find none left).
        for tuner_id in ("tuner0", "tuner1", "chief"):
            env = clean_env()
            env.update(KERASTUNER_TUNER_ID=tuner_id, KERASTUNER_ORACLE_IP="127.0.0.1", KERASTUNER_ORACLE_PORT=port)
            logs[tuner_id] = str(tmp_path / f"{tuner_id}.err")
            with open(logs[tuner_id], "w") as err, open(tmp_path / f"{tuner_id}.out", "w") as stdout:
                procs[tuner_id] = subprocess.Popen(command, stdout=stdout, stderr=err, env=env)
            if tuner_id == "tuner1":
                for worker in ("tuner0", "tuner1"):
                    wait_for_line(logs[worker], "worker: searching", procs.values(), timeout=120)
        for tuner_id, proc in procs.items():
            assert proc.wait(timeout=180) == 0, f"{tuner_id}: " + open(logs[tuner_id]).read()[-3000:]
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    summaries = {t: json.loads((tmp_path / f"{t}.out").read_text()) for t in procs}
    ran = {t: summaries[t]["trials_run"] for t in ("tuner0", "tuner1")}
    assert all(len(ids) >= 1 for ids in ran.values()), ran  # both workers trained
    assert sorted(ran["tuner0"] + ran["tuner1"]) == ["0", "1"]  # each trial exactly once
    for worker in ("tuner0", "tuner1"):
        assert summaries[worker]["role"] == "worker" and "trials_csv" not in summaries[worker]

    chief = summaries["chief"]
    assert chief["role"] == "chief" and chief["trials_run"] == []  # the chief only serves the oracle
    assert chief["trials"] == 2 and chief["status_counts"] == {"COMPLETED": 2}
    project = os.path.join(out, "hourglass_tune")
    oracle = json.loads(open(os.path.join(project, "oracle.json")).read())
    assert sorted(oracle["end_order"]) == ["0", "1"] and oracle["ongoing_trials"] == {}
    with open(os.path.join(out, "trials.csv"), newline="") as handle:
        assert [r["status"] for r in csv.DictReader(handle)] == ["COMPLETED", "COMPLETED"]
    assert os.path.exists(os.path.join(out, "best_hyperparameters.json"))
    # The HParams dashboard holds both trials, whichever worker ran them (the chief writes it).
    from tuning import hparams, outputs

    infos, scalars = _read_hparams(os.path.join(out, "logs"))
    for record in outputs.load_trials(project):
        run = f"trial_{record.trial_id}"
        assert {k: _hparam_value(v) for k, v in infos[run].hparams.items()} == pytest.approx(
            {k: record.values[k] for k in ("omega", "top_k", "sigmas", "learning_rate")})
        assert scalars[run] == pytest.approx({tag: record.metrics[tag] for tag, _ in hparams.METRICS})
