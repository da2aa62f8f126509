"""One training process for the distribution and resume tests.

Runs `keras_hourglass.training.train.train` on a small in-memory data set
(random images with one box each), so it needs no prepared data. The cluster
comes from TF_CONFIG (multi-worker) or `--cpu-replicas` (mirrored on logical
CPUs). Prints one JSON line: the summary, a digest of the final weights and
this task's write directory.

Usage: python train_worker.py --run RUN --strategy multi-worker --model hourglass
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

import numpy as np


def tiny_conv():
    """A BatchNorm-free fully convolutional model (per-replica BN would break exact equivalence)."""
    import keras

    image = keras.Input((None, None, 1), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(image)
    x = keras.layers.Conv2D(1, 3, padding="same", name="heatmap")(x)
    return keras.Model(image, x)


def EpochDelay(seconds: float):
    import time

    import keras

    class _Delay(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            time.sleep(seconds)

    return _Delay()


def run_canary(strategy) -> dict:
    """Keras `fit` under the strategy *without* the fix: documents that the fix is needed."""
    import keras
    import tensorflow as tf

    with strategy.scope():
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        model.compile("sgd", "mse")
    data = tf.data.Dataset.from_tensors((tf.ones((4, 4)), tf.ones((4, 1)))).repeat()
    try:
        model.fit(data, epochs=1, steps_per_epoch=1, verbose=0)
    except Exception as err:  # noqa: BLE001 - we report whatever Keras raises
        return {"failed": True, "error": f"{type(err).__name__}: {str(err)[:300]}"}
    return {"failed": False, "error": None}


def validation_set(size: int) -> list[dict]:
    """Two images with a malignant box (a bright square) and two normal ones, as evaluation dicts."""
    rng = np.random.RandomState(11)
    items = []
    for i in range(4):
        image = rng.rand(1, size, size, 1).astype("float32") * 0.1
        boxes, labels = np.zeros((1, 0, 4), "float32"), np.zeros((1, 0), object)
        if i < 2:
            image[0, 8:16, 8:16] = 1.0
            boxes, labels = np.array([[[8, 8, 16, 16]]], "float32"), np.array([[b"malignant"]], object)
        items.append({"image": image, "boxes": boxes, "box_labels": labels,
                      "image_hash": np.array([f"v{i}".encode()]), "patient_hash": np.array([f"p{i}".encode()])})
    return items


def make_dataset_fn(size: int, stride: int):
    import tensorflow as tf

    rng = np.random.RandomState(7)
    count = 64
    images = rng.rand(count, size, size, 1).astype("float32")
    boxes = -np.ones((count, 4, 4), "float32")
    h = size // stride
    for i in range(count):
        y, x = rng.randint(1, h - 3, size=2)
        boxes[i, 0] = (y, x, y + 2, x + 2)
        images[i, y * stride:(y + 2) * stride, x * stride:(x + 2) * stride] += 1.0

    def dataset_fn(phase, batch_size, seed, stride_, multiple):
        ds = tf.data.Dataset.from_tensor_slices((images, boxes)).repeat()
        return ds.batch(batch_size, drop_remainder=True)

    return dataset_fn


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", required=True)
    parser.add_argument("--strategy", default="auto")
    parser.add_argument("--cpu-replicas", type=int, default=0)
    parser.add_argument("--model", choices=["hourglass", "conv"], default="hourglass")
    parser.add_argument("--patch-epochs", type=int, default=1)
    parser.add_argument("--full-epochs", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--loss", default="hypersensitive")
    parser.add_argument("--val", action="store_true", help="validate on 4 in-memory images (FROC callback)")
    parser.add_argument("--epoch-delay", type=float, default=0.0,
                        help="sleep this long after each epoch (gives a kill test a window)")
    parser.add_argument("--canary", action="store_true",
                        help="first try a plain Keras fit without the fix and report how it fails")
    args = parser.parse_args()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from keras_hourglass.training.distribution import configure_cpu_replicas, make_strategy

    if args.cpu_replicas:
        configure_cpu_replicas(args.cpu_replicas)
    strategy, info = make_strategy(args.strategy)  # first TF work, as MWMS requires

    canary = run_canary(strategy) if args.canary else None

    from keras_hourglass.training.config import TrainConfig
    from keras_hourglass.training.train import train

    config = TrainConfig(loss=args.loss, patch_size=8, sigmas=(1.0, 2.0), patch_epochs=args.patch_epochs,
                         full_epochs=args.full_epochs, steps_per_epoch=args.steps,
                         batch_size=args.batch_size, learning_rate=1e-2, seed=3,
                         val_images=None if args.val else 0,
                         jit_compile=False,
                         # the tiny preset, made smaller still so the test fits the CI budget
                         model={"num_stacks": 1, "depth": 1, "num_features": 8, "stem_features": 4} if args.model == "hourglass" else {})
    model_fn = tiny_conv if args.model == "conv" else None
    stride = 1 if args.model == "conv" else 4
    summary, model = train(config, args.run, strategy=strategy, strategy_info=info,
                           dataset_fn=make_dataset_fn(args.size, stride), model_fn=model_fn, verbose=2,
                           validation=validation_set(args.size) if args.val else None,
                           callbacks=[EpochDelay(args.epoch_delay)] if args.epoch_delay else None,
                           return_model=True)
    weights = [np.asarray(w) for w in model.get_weights()]
    digest = hashlib.sha256(b"".join(np.ascontiguousarray(w).tobytes() for w in weights)).hexdigest()
    print("RESULT " + json.dumps({"summary": summary, "digest": digest,
                                  "weights": [np.asarray(w).tolist() for w in weights] if args.model == "conv" else None,
                                  "info": info.to_json(), "canary": canary,
                                  "optimizer_iterations": int(model.optimizer.iterations.numpy())}, default=str))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
