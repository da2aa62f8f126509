"""A narrow, version-guarded fix for Keras 3 `fit` under MultiWorkerMirroredStrategy.

Keras 3 (checked: 3.5 to 3.15.1, the versions TensorFlow 2.16 to 2.21 ship with;
keras-team/keras#20585, tensorflow/tensorflow#72388) cannot `fit` a model under a
`tf.distribute.MultiWorkerMirroredStrategy` that spans more than one worker.
Two places in `keras/src/backend/tensorflow/trainer.py` fail:

1. `TensorFlowTrainer._maybe_symbolic_build` takes the first distributed batch
   and calls `strategy.reduce("MEAN", batch, axis=None)` on it, eagerly, only to
   get a batch of the right shapes. Under a multi-worker strategy that reduce is
   a cross-worker collective on a `PerReplica` and raises
   `ValueError: Attempt to convert a value (PerReplica:...) ... to a Tensor`.
   The fix builds from the first *local* replica's batch instead (the same
   shapes, no collective).
2. `reduce_per_replica` (the step function's reduction of the per-replica
   metric results) calls `strategy.reduce("MEAN", v, axis=0)` on every value
   when the strategy is in multi-worker mode, which fails on the scalar
   metric values ("axis 0 out of range" for rank 0). The fix reduces rank-0
   values with `axis=None` (the mean over replicas) and keeps `axis=0` for
   everything else, i.e. the Keras behaviour.

`multiworker_fit_fix(strategy)` applies both replacements for the duration of a
`with` block and restores the originals afterwards. Each replacement delegates
to the original unless the strategy in use is a MultiWorkerMirroredStrategy in
multi-worker mode, so single-worker training is untouched even inside the block.
Outside the known-broken Keras range the context manager changes nothing and
logs why (set `KERAS_HOURGLASS_FORCE_MWMS_FIX=1` to apply it to a newer Keras
whose trainer still has the same two functions).
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

log = logging.getLogger(__name__)

#: Keras versions whose TensorFlow trainer is known to fail as described above
#: (lower bound inclusive, upper bound exclusive). 3.15.1 was verified here.
KNOWN_BROKEN = ((3, 0, 0), (3, 16, 0))
FORCE_ENV = "KERAS_HOURGLASS_FORCE_MWMS_FIX"


def _version_tuple(version: str) -> tuple[int, int, int]:
    parts = []
    for piece in version.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit()) or "0"
        parts.append(int(digits))
    while len(parts) < 3:
        parts.append(0)
    return tuple(parts)  # type: ignore[return-value]


def keras_needs_fix(version: str | None = None) -> bool:
    """Whether a Keras version is in the known-broken range.

    Args:
        version: a Keras version string; defaults to the installed `keras.__version__`.

    Returns:
        True if `KNOWN_BROKEN[0] <= version < KNOWN_BROKEN[1]`.
    """
    if version is None:
        import keras

        version = keras.__version__
    low, high = KNOWN_BROKEN
    return low <= _version_tuple(version) < high


def in_multi_worker_mode(strategy) -> bool:
    """True for a MultiWorkerMirroredStrategy whose cluster has more than one worker."""
    import tensorflow as tf

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    return bool(strategy.extended._in_multi_worker_mode())


def _fixed_maybe_symbolic_build(original):
    import tensorflow as tf
    from keras import tree

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if strategy is None or iterator is None or not in_multi_worker_mode(strategy):
            return original(self, iterator=iterator, data_batch=data_batch)

        def local_first(value):
            if isinstance(value, tf.distribute.DistributedValues):
                return strategy.experimental_local_results(value)[0]
            return value

        for _, _, it in iterator:
            data_batch = tree.map_structure(local_first, next(it))
            break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    _maybe_symbolic_build.__wrapped__ = original
    return _maybe_symbolic_build


def _fixed_reduce_per_replica(original):
    import tensorflow as tf
    from keras import tree

    def rank(value, strategy) -> int | None:
        if isinstance(value, tf.distribute.DistributedValues):
            value = strategy.experimental_local_results(value)[0]
        shape = getattr(value, "shape", None)
        return None if shape is None else shape.rank

    def reduce_per_replica(values, strategy, reduction):
        if reduction not in ("auto", "mean") or not in_multi_worker_mode(strategy):
            return original(values, strategy, reduction)

        def _reduce(value):
            axis = None if rank(value, strategy) == 0 else 0
            return strategy.reduce("MEAN", value, axis=axis)

        return tree.map_structure(_reduce, values)

    reduce_per_replica.__wrapped__ = original
    return reduce_per_replica


@contextlib.contextmanager
def multiworker_fit_fix(strategy) -> Iterator[bool]:
    """Makes `model.fit` / `evaluate` work under a multi-worker strategy, for a `with` block.

    Example:

    ```python
    with multiworker_fit_fix(strategy):
        model.fit(dataset, epochs=2, steps_per_epoch=10)
    ```

    Args:
        strategy: the `tf.distribute.Strategy` the model was built under.

    Yields:
        True if the two trainer functions were replaced for the block, False if
        nothing was needed (not multi-worker) or possible (Keras outside the
        known-broken range and the override variable unset, or the trainer no
        longer has the functions).
    """
    if not in_multi_worker_mode(strategy):
        yield False
        return
    import keras

    forced = os.environ.get(FORCE_ENV, "") == "1"
    if not keras_needs_fix() and not forced:
        log.warning(
            "keras %s is outside the range %s..%s known to break fit under "
            "MultiWorkerMirroredStrategy: not patching (set %s=1 to force).",
            keras.__version__, KNOWN_BROKEN[0], KNOWN_BROKEN[1], FORCE_ENV,
        )
        yield False
        return
    from keras.src.backend.tensorflow import trainer as tf_trainer

    cls = tf_trainer.TensorFlowTrainer
    if not hasattr(cls, "_maybe_symbolic_build") or not hasattr(tf_trainer, "reduce_per_replica"):
        log.warning("keras %s trainer has changed: MultiWorkerMirroredStrategy fix not applied.",
                    keras.__version__)
        yield False
        return
    original_build = cls.__dict__["_maybe_symbolic_build"]
    original_reduce = tf_trainer.reduce_per_replica
    cls._maybe_symbolic_build = _fixed_maybe_symbolic_build(original_build)
    tf_trainer.reduce_per_replica = _fixed_reduce_per_replica(original_reduce)
    try:
        yield True
    finally:
        cls._maybe_symbolic_build = original_build
        tf_trainer.reduce_per_replica = original_reduce
