"""Strategy choice, the MultiWorkerMirroredStrategy fix, and multi-replica equivalence."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from keras_hourglass.errors import InputError
from keras_hourglass.training import distribution as dist
from keras_hourglass.training import multiworker_fix as fix

WORKER = os.path.join(os.path.dirname(__file__), "workers", "train_worker.py")


def _tf_config(n: int, index: int = 0, chief: bool = False) -> str:
    cluster = {"worker": [f"localhost:{2000 + i}" for i in range(n)]}
    if chief:
        cluster["chief"] = ["localhost:1999"]
    return json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})


@pytest.mark.parametrize("name, gpus, env, expected", [
    ("auto", 0, {}, "default"),
    ("auto", 1, {}, "default"),
    ("auto", 2, {}, "mirrored"),
    ("auto", 0, {"TF_CONFIG": _tf_config(2)}, "multi-worker"),
    ("auto", 4, {"TF_CONFIG": _tf_config(2)}, "multi-worker"),
    ("auto", 2, {"TF_CONFIG": _tf_config(1)}, "mirrored"),  # a one-task cluster is not multi-worker
    ("mirrored", 0, {}, "mirrored"),
    ("default", 8, {"TF_CONFIG": _tf_config(2)}, "default"),
    ("multi-worker", 0, {"TF_CONFIG": _tf_config(1)}, "multi-worker"),
])
def test_resolve_strategy_name(name, gpus, env, expected):
    assert dist.resolve_strategy_name(name, num_gpus=gpus, environ=env) == expected


def test_bad_strategy_inputs_name_the_culprit():
    with pytest.raises(InputError, match="TF_CONFIG: not valid JSON"):
        dist.resolve_strategy_name("auto", num_gpus=0, environ={"TF_CONFIG": "{oops"})
    with pytest.raises(InputError, match="TF_CONFIG: strategy=multi-worker needs"):
        dist.resolve_strategy_name("multi-worker", num_gpus=0, environ={})
    with pytest.raises(InputError, match="^strategy: unknown strategy"):
        dist.resolve_strategy_name("tpu", num_gpus=0, environ={})


def test_chief_and_batch_split():
    assert dist.is_chief_task(None, None, None)
    assert dist.is_chief_task("worker", 0, json.loads(_tf_config(2)))
    assert not dist.is_chief_task("worker", 1, json.loads(_tf_config(2)))
    assert not dist.is_chief_task("worker", 0, json.loads(_tf_config(2, chief=True)))
    assert dist.is_chief_task("chief", 0, json.loads(_tf_config(2, chief=True)))
    assert dist.per_replica_batch_size(8, 2) == 4
    with pytest.raises(InputError, match="^batch_size: global batch 6 must be a positive multiple of the 4"):
        dist.per_replica_batch_size(6, 4)


def test_fix_version_guard():
    assert fix.keras_needs_fix("3.15.1")
    assert fix.keras_needs_fix("3.5.0")
    assert fix.keras_needs_fix("3.15.0.dev2025")
    assert not fix.keras_needs_fix("3.16.0")
    assert not fix.keras_needs_fix("2.15.0")


def test_fix_is_a_no_op_without_multi_worker_and_restores_originals():
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer as tf_trainer

    before = (tf_trainer.TensorFlowTrainer.__dict__["_maybe_symbolic_build"], tf_trainer.reduce_per_replica)
    with fix.multiworker_fit_fix(tf.distribute.get_strategy()) as applied:
        assert applied is False
        assert tf_trainer.reduce_per_replica is before[1]
    # A one-worker MultiWorkerMirroredStrategy is not multi-worker mode either.
    assert not fix.in_multi_worker_mode(tf.distribute.get_strategy())
    after = (tf_trainer.TensorFlowTrainer.__dict__["_maybe_symbolic_build"], tf_trainer.reduce_per_replica)
    assert after == before


def _free_ports(n: int) -> list[int]:
    sockets = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("localhost", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _run_workers(commands: list[tuple[list[str], dict]], timeout: float) -> list[dict]:
    """Runs processes in parallel; returns the RESULT json of each; kills all on timeout."""
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for cmd, env in commands]
    outputs = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=timeout)
            outputs.append(out)
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        pytest.fail(f"worker processes did not finish within {timeout} s (hang?)")
    results = []
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, out[-3000:]
        line = [ln for ln in out.splitlines() if ln.startswith("RESULT ")][-1]
        results.append(json.loads(line[len("RESULT "):]))
    return results


@pytest.mark.slow
def test_two_workers_train_identically_and_only_the_chief_writes(tmp_path, subprocess_env):
    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    run = tmp_path / "run"  # the same RUN for both, as on a shared filesystem
    commands = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        cmd = [sys.executable, WORKER, "--run", str(run), "--strategy", "auto", "--model", "hourglass",
               "--patch-epochs", "1", "--full-epochs", "1", "--steps", "2", "--batch-size", "4", "--canary", "--val"]
        commands.append((cmd, subprocess_env(TF_CONFIG=tf_config)))
    chief, other = _run_workers(commands, timeout=560)

    # Both really ran multi-worker, with the fix, and the fix was needed.
    for result, index in ((chief, 0), (other, 1)):
        assert result["info"]["name"] == "multi-worker"
        assert result["info"]["num_replicas"] == 2 and result["info"]["task_id"] == index
        assert result["summary"]["strategy"]["multiworker_fit_fix"] is fix.keras_needs_fix()
        if fix.keras_needs_fix():
            assert result["canary"]["failed"], "Keras fit now works unfixed: narrow KNOWN_BROKEN"
            assert "PerReplica" in result["canary"]["error"]
    assert chief["info"]["is_chief"] and not other["info"]["is_chief"]

    # Synchronous data parallelism: identical final weights.
    assert chief["digest"] == other["digest"]

    # Only the chief's files exist; the other worker wrote to a temporary dir that is gone.
    assert chief["summary"]["result"]["write_dir"] == str(run)
    assert other["summary"]["result"]["write_dir"] != str(run)
    assert not os.path.exists(other["summary"]["result"]["write_dir"])
    assert {"model.keras", "best.keras", "best.json", "config.json", "history.csv", "backup", "logs"} <= set(
        os.listdir(run))
    config = json.loads((run / "config.json").read_text())
    assert config["strategy"]["task_id"] == 0 and config["strategy"]["num_replicas"] == 2
    rows = (run / "history.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 2  # header + one row per epoch: one writer, not two
    assert "val_sensitivity" in rows[0]  # the FROC callback ran under the multi-worker strategy
    state = json.loads((run / "backup" / "state.json").read_text())
    assert state["completed_epochs"] == 2


@pytest.mark.slow
def test_mirrored_two_cpu_replicas_matches_one_device(tmp_path, subprocess_env):
    common = ["--model", "conv", "--patch-epochs", "1", "--full-epochs", "1", "--steps", "3",
              "--batch-size", "4", "--size", "32"]
    one, two = _run_workers([
        ([sys.executable, WORKER, "--run", str(tmp_path / "one"), "--strategy", "default", *common], subprocess_env()),
        ([sys.executable, WORKER, "--run", str(tmp_path / "two"), "--strategy", "mirrored",
          "--cpu-replicas", "2", *common], subprocess_env()),
    ], timeout=560)
    assert one["info"]["num_replicas"] == 1
    assert two["info"]["name"] == "mirrored" and two["info"]["num_replicas"] == 2
    assert two["summary"]["strategy"]["per_replica_batch_size"] == 2
    for w1, w2 in zip(one["weights"], two["weights"], strict=True):
        np.testing.assert_allclose(np.array(w1), np.array(w2), rtol=1e-4, atol=1e-5)
    # Same loss curve too, and training did move: the loss changed between the epochs.
    l1 = [float(r["loss"]) for r in one["summary"]["result"]["history"]]
    l2 = [float(r["loss"]) for r in two["summary"]["result"]["history"]]
    np.testing.assert_allclose(l1, l2, rtol=1e-4)
    assert abs(l1[0] - l1[1]) > 1e-3 * abs(l1[0])


class _FakeStrategy:
    """Records the reductions asked for (stands in for a multi-worker strategy)."""

    def __init__(self):
        self.calls = []

    def reduce(self, op, value, axis):
        self.calls.append((op, tuple(value.shape), axis))
        return value

    def experimental_local_results(self, value):
        return (value,)


def test_fixed_reduction_uses_axis_none_for_scalars_only(monkeypatch):
    import tensorflow as tf

    monkeypatch.setattr(fix, "in_multi_worker_mode", lambda strategy: isinstance(strategy, _FakeStrategy))
    delegated = []
    reduce = fix._fixed_reduce_per_replica(lambda values, strategy, reduction: delegated.append(reduction))
    strategy = _FakeStrategy()
    reduce({"loss": tf.constant(1.0), "per_image": tf.ones((3,))}, strategy, "auto")
    assert sorted(strategy.calls) == [("MEAN", (), None), ("MEAN", (3,), 0)]
    reduce({"x": tf.ones((2,))}, strategy, "concat")  # predict: not ours, Keras' own code
    reduce({"x": tf.constant(1.0)}, tf.distribute.get_strategy(), "auto")  # not multi-worker
    assert delegated == ["concat", "auto"]


def test_fix_outside_the_known_range_is_a_no_op_unless_forced(monkeypatch):
    from keras.src.backend.tensorflow import trainer as tf_trainer

    original = tf_trainer.reduce_per_replica
    monkeypatch.setattr(fix, "in_multi_worker_mode", lambda strategy: True)
    monkeypatch.setattr(fix, "keras_needs_fix", lambda version=None: False)
    monkeypatch.delenv(fix.FORCE_ENV, raising=False)
    with fix.multiworker_fit_fix(object()) as applied:
        assert applied is False and tf_trainer.reduce_per_replica is original
    monkeypatch.setenv(fix.FORCE_ENV, "1")
    with fix.multiworker_fit_fix(object()) as applied:
        assert applied is True and tf_trainer.reduce_per_replica.__wrapped__ is original
    assert tf_trainer.reduce_per_replica is original
