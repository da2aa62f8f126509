"""Choosing a `tf.distribute` strategy, and what the global batch means under it.

Strategies (`hourglass train --strategy`):

- `default`: one device (`tf.distribute.get_strategy()`).
- `mirrored`: `tf.distribute.MirroredStrategy` over the visible GPUs; on a
  machine without GPUs, over the visible logical CPU devices (see
  `configure_cpu_replicas`; with one CPU device this is a one-replica mirror).
- `multi-worker`: `tf.distribute.MultiWorkerMirroredStrategy` configured from
  the `TF_CONFIG` environment variable (every worker runs the same command).
- `auto`: `multi-worker` when `TF_CONFIG` names a cluster with more than one
  task, else `mirrored` when more than one GPU is visible, else `default`.

Batch size and learning rate: `--batch-size` is the *global* batch: each step
consumes `batch_size` images in total, split evenly over
`num_replicas_in_sync` replicas (it must be divisible by that number), and the
gradient is the mean over the global batch. The learning rate is *not* scaled
with the number of replicas: the same `--batch-size` and `--learning-rate` give
the same optimisation on 1 or N replicas (up to float rounding); if you grow the
global batch to use more replicas, scale the learning rate yourself.
One caveat: BatchNormalization (in both presets) normalises with the
statistics of each replica's share of the batch, as usual under
`tf.distribute`; with small per-replica batches prefer fewer, larger replicas.
(tests/test_distribution.py checks the 1-vs-2-replica equivalence on a
BatchNorm-free model, where it is exact up to float rounding.)

Input data: `train` feeds `fit` through `strategy.distribute_datasets_from_function`:
one input pipeline per worker, seeded `seed + input_pipeline_id` (workers draw
different, equally balanced streams; no tf.data auto-sharding), batched per
replica.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass

from keras_hourglass import storage
from keras_hourglass.errors import ArgumentError, InputError

STRATEGIES = ("auto", "default", "mirrored", "multi-worker")


@dataclass(frozen=True)
class StrategyInfo:
    """What was chosen, for logs and RUN/config.json."""

    name: str
    num_replicas: int
    num_workers: int
    task_type: str | None
    task_id: int | None
    is_chief: bool
    devices: tuple[str, ...]

    def to_json(self) -> dict:
        return asdict(self)


def read_tf_config(environ: dict | None = None) -> dict | None:
    """Parses `TF_CONFIG`.

    Args:
        environ: the environment (default `os.environ`).

    Returns:
        The parsed dict, or None when TF_CONFIG is unset or empty.

    Raises:
        InputError: TF_CONFIG is not a JSON object with a `cluster` dict.
    """
    environ = os.environ if environ is None else environ
    raw = environ.get("TF_CONFIG", "").strip()
    if not raw:
        return None
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as err:
        raise InputError("TF_CONFIG", f"not valid JSON ({err.msg} at char {err.pos})") from None
    if not isinstance(config, dict) or not isinstance(config.get("cluster", {}), dict):
        raise InputError("TF_CONFIG", "must be a JSON object with a 'cluster' object")
    return config


def cluster_size(tf_config: dict | None) -> int:
    """Number of tasks (chief + workers) named in a parsed TF_CONFIG (0 if none)."""
    if not tf_config:
        return 0
    cluster = tf_config.get("cluster") or {}
    return sum(len(cluster.get(kind) or []) for kind in ("chief", "worker"))


def resolve_strategy_name(strategy: str = "auto", *, num_gpus: int | None = None,
                          environ: dict | None = None) -> str:
    """Resolves `auto` to a concrete strategy name.

    Args:
        strategy: one of `STRATEGIES`.
        num_gpus: visible GPUs (default: asks TensorFlow).
        environ: the environment (default `os.environ`), for TF_CONFIG.

    Returns:
        `default`, `mirrored` or `multi-worker`.
    """
    if strategy not in STRATEGIES:
        raise ArgumentError("strategy", f"unknown strategy {strategy!r} (choose from {', '.join(STRATEGIES)})")
    tf_config = read_tf_config(environ)
    if strategy == "multi-worker" and cluster_size(tf_config) == 0:
        raise InputError("TF_CONFIG", "strategy=multi-worker needs TF_CONFIG naming the cluster")
    if strategy != "auto":
        return strategy
    if cluster_size(tf_config) > 1:
        return "multi-worker"
    if num_gpus is None:
        import tensorflow as tf

        num_gpus = len(tf.config.list_physical_devices("GPU"))
    return "mirrored" if num_gpus > 1 else "default"


def configure_cpu_replicas(cpu_replicas: int) -> None:
    """Splits the host CPU into `cpu_replicas` logical devices (for multi-replica runs without GPUs).

    Must run before TensorFlow initialises its devices (before any op runs).

    Raises:
        ArgumentError: (`cpu_replicas`) < 1, or TensorFlow is already initialised with another layout.
    """
    import tensorflow as tf

    if cpu_replicas < 1:
        raise ArgumentError("cpu_replicas", f"must be >= 1, got {cpu_replicas}")
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(cpu_replicas)])
    except RuntimeError as err:
        if len(tf.config.list_logical_devices("CPU")) != cpu_replicas:
            raise ArgumentError("cpu_replicas", f"TensorFlow is already initialised ({err})") from None


def make_strategy(strategy: str = "auto"):
    """Builds the strategy named `strategy` (see the module docstring).

    Returns:
        `(strategy, StrategyInfo)`.
    """
    import tensorflow as tf

    resolved = resolve_strategy_name(strategy)
    task_type, task_id, num_workers = None, None, 1
    if resolved == "multi-worker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        resolver = strategy.cluster_resolver
        task_type, task_id = resolver.task_type, resolver.task_id
        num_workers = cluster_size(read_tf_config())
        devices = tuple(strategy.extended.worker_devices)
    elif resolved == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = tuple(d.name for d in (gpus or tf.config.list_logical_devices("CPU")))
        strategy = tf.distribute.MirroredStrategy(devices=list(devices))
    else:
        strategy = tf.distribute.get_strategy()
        devices = tuple(d.name for d in tf.config.list_logical_devices()[:1])
    info = StrategyInfo(
        name=resolved,
        num_replicas=int(strategy.num_replicas_in_sync),
        num_workers=num_workers,
        task_type=task_type,
        task_id=task_id,
        is_chief=is_chief_task(task_type, task_id, read_tf_config() if resolved == "multi-worker" else None),
        devices=devices,
    )
    return strategy, info


def is_chief_task(task_type: str | None, task_id: int | None, tf_config: dict | None) -> bool:
    """The chief is task `chief`, or worker 0 when the cluster has no `chief` task."""
    if task_type is None:
        return True
    if task_type == "chief":
        return True
    has_chief = bool(((tf_config or {}).get("cluster") or {}).get("chief"))
    return task_type == "worker" and task_id == 0 and not has_chief


def per_replica_batch_size(batch_size: int, num_replicas: int) -> int:
    """The global batch split over the replicas.

    Args:
        batch_size: the global batch.
        num_replicas: replicas in sync.

    Returns:
        The batch of one replica.

    Raises:
        ArgumentError: (`batch_size`) not a positive multiple of the replica count.
    """
    if batch_size < 1 or batch_size % num_replicas:
        raise ArgumentError("batch_size", f"global batch {batch_size} must be a positive multiple "
                                          f"of the {num_replicas} replicas in sync")
    return batch_size // num_replicas


class WriteDir:
    """Where this task writes: the real directory on the chief, a temporary one elsewhere.

    Every worker must take part in saving (saving can involve collectives), but
    only the chief's files are kept, as in the TensorFlow multi-worker guide.
    Call `cleanup()` when done: it deletes a non-chief's temporary directory.
    """

    def __init__(self, path: str, info: StrategyInfo):
        self.real = os.fspath(path)
        self.is_chief = info.is_chief
        if self.is_chief:
            self.path = self.real
        else:
            self.path = tempfile.mkdtemp(prefix=f"hourglass-{info.task_type}{info.task_id}-")
        storage.makedirs(self.path)

    def join(self, *parts: str) -> str:
        return storage.join(self.path, *parts)

    def cleanup(self) -> None:
        if not self.is_chief:
            storage.remove_tree(self.path)
