"""Benchmark: the hypersensitive loss in a training step and on its own.

Not a test (timings depend on the machine); run it by hand:

    TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python benchmarks/loss_step.py

It measures, at each input size (default 256 and 512 px, heatmap = input / 4):

1. time per training step (`model.train_on_batch`) of a one-stack tiny
   Hourglass (`build_hourglass("tiny", num_stacks=1)`; a small conv net if the
   model package is missing) with HypersensitiveLoss, GaussianL2Loss and plain
   MSE to a precomputed Gaussian target, with `jit_compile` off and on;
2. the loss alone (value + gradient w.r.t. the heatmap, in a `tf.function`)
   for both losses, with the loss's XLA matching on and off and the whole
   loss function under `jit_compile=True`, against the naive per-box
   Python-loop NumPy reference (value only, so its figure is a lower bound).

Writes `benchmarks/out/loss_step.json` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.get_logger().setLevel("ERROR")  # retracing notices from building many models

from keras_hourglass.losses import GaussianL2Loss, HypersensitiveLoss  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the NumPy reference is a test helper
from loss_reference import reference_hypersensitive  # noqa: E402

STRIDE = 4


def build_model() -> tuple[keras.Model, str]:
    """A one-output heatmap model: the tiny Hourglass if available."""
    try:
        from keras_hourglass.model.hourglass import build_hourglass

        model = build_hourglass("tiny", num_stacks=1, output_stride=STRIDE)
        if isinstance(model.output, (list, tuple)):
            raise TypeError("expected one output")
        return model, "hourglass tiny, 1 stack"
    except Exception as error:  # the model package may not exist yet
        print(f"(tiny Hourglass unavailable: {error}; using a conv net)", file=sys.stderr)
    inputs = keras.Input((None, None, 1))
    x = keras.layers.Conv2D(16, 7, strides=2, padding="same", activation="relu")(inputs)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(x)
    outputs = keras.layers.Conv2D(1, 1)(x)
    return keras.Model(inputs, outputs), "conv net"


def make_batch(batch: int, size: int, max_boxes: int, seed: int = 0):
    """Random images and boxes (heatmap frame; half the rows used)."""
    rng = np.random.default_rng(seed)
    h = size // STRIDE
    images = rng.uniform(0, 1, (batch, size, size, 1)).astype("float32")
    boxes = np.full((batch, max_boxes, 4), -1.0, "float32")
    for b in range(batch):
        for n in range(max_boxes // 2):
            cy, cx = rng.uniform(0, h, 2)
            half = rng.uniform(1, 6, 2)
            boxes[b, n] = [cy - half[0], cx - half[1], cy + half[0], cx + half[1]]
    return images, boxes


def interleaved(fns: dict, repeats: int) -> dict:
    """Median seconds per call of each function, timed round-robin.

    Each function is called once first (tracing/compilation). The timed calls
    alternate between the functions so that load from other processes on a
    shared machine affects every configuration alike.
    """
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def bench_train_step(size, batch, max_boxes, steps):
    images, boxes = make_batch(batch, size, max_boxes)
    h = size // STRIDE
    target = GaussianL2Loss(sigma=2.0).target(boxes, np.zeros((batch, h, h, 1), "float32"))
    target = target.numpy()[..., None]
    fns, model_name = {}, None
    for loss_name in ("hypersensitive", "gaussian_l2", "mse"):
        for jit in (False, True):
            model, model_name = build_model()
            if loss_name == "hypersensitive":
                loss, y = HypersensitiveLoss(), boxes
            elif loss_name == "gaussian_l2":
                loss, y = GaussianL2Loss(sigma=2.0), boxes
            else:
                loss, y = keras.losses.MeanSquaredError(), target
            model.compile(optimizer="adam", loss=loss, jit_compile=jit)
            fns[(loss_name, jit)] = lambda model=model, y=y: model.train_on_batch(images, y)
    rows = []
    for (loss_name, jit), seconds in interleaved(fns, steps).items():
        rows.append(
            dict(kind="train_step", size=size, heatmap=h, batch=batch, loss=loss_name,
                 jit_compile=jit, model=model_name, seconds=seconds)
        )
        print(f"  train {size}px {loss_name:15s} jit={jit!s:5s} {seconds * 1e3:8.1f} ms", flush=True)
    return rows


def bench_loss_alone(size, batch, max_boxes, repeats):
    h = size // STRIDE
    rng = np.random.default_rng(1)
    _, boxes = make_batch(batch, size, max_boxes)
    heatmap = rng.normal(0, 0.2, (batch, h, h, 1)).astype("float32")
    boxes_t, heatmap_t = tf.constant(boxes), tf.constant(heatmap)
    variants = {
        "hypersensitive (XLA matching)": (HypersensitiveLoss(jit_compile=True), False),
        "hypersensitive (no XLA)": (HypersensitiveLoss(jit_compile=False), False),
        "hypersensitive (whole loss XLA)": (HypersensitiveLoss(jit_compile=True), True),
        "gaussian_l2": (GaussianL2Loss(sigma=2.0), False),
        "gaussian_l2 (whole loss XLA)": (GaussianL2Loss(sigma=2.0), True),
    }
    fns = {}
    for name, (loss, outer_jit) in variants.items():

        @tf.function(jit_compile=outer_jit)
        def value_and_grad(y_true, y_pred, loss=loss):
            with tf.GradientTape() as tape:
                tape.watch(y_pred)
                value = loss(y_true, y_pred)
            return value, tape.gradient(value, y_pred)

        fns[name] = lambda f=value_and_grad: [t.numpy() for t in f(boxes_t, heatmap_t)]
    naive = "naive per-box NumPy reference (value only)"
    medians = interleaved(fns, repeats)
    medians |= interleaved({naive: lambda: reference_hypersensitive(boxes, heatmap)}, max(2, repeats // 5))
    rows = []
    for name, seconds in medians.items():
        rows.append(dict(kind="loss_alone", size=size, heatmap=h, batch=batch, loss=name, seconds=seconds))
        print(f"  loss  {size}px {name:44s} {seconds * 1e3:8.2f} ms", flush=True)
    return rows


def markdown(rows) -> str:
    lines = []
    train = [r for r in rows if r["kind"] == "train_step"]
    if train:
        lines += [
            f"Training step ({train[0]['model']}, batch {train[0]['batch']}), median ms; "
            "ratio = vs MSE at the same size and jit setting",
            "",
            "| input px | heatmap | loss | jit_compile | ms/step | x MSE |",
            "|---|---|---|---|---|---|",
        ]
        for r in train:
            mse = next(m for m in train if m["loss"] == "mse" and m["size"] == r["size"]
                       and m["jit_compile"] == r["jit_compile"])
            lines.append(
                f"| {r['size']} | {r['heatmap']} | {r['loss']} | {r['jit_compile']} | "
                f"{r['seconds'] * 1e3:.1f} | {r['seconds'] / mse['seconds']:.2f} |"
            )
        lines.append("")
    alone = [r for r in rows if r["kind"] == "loss_alone"]
    if alone:
        lines += [
            "Loss alone (value + gradient; the naive reference: value only), median ms; "
            "ratio = naive reference / this",
            "",
            "| input px | heatmap | variant | ms | naive / this |",
            "|---|---|---|---|---|",
        ]
        for r in alone:
            naive = next(n for n in alone if n["size"] == r["size"] and n["loss"].startswith("naive"))
            lines.append(
                f"| {r['size']} | {r['heatmap']} | {r['loss']} | {r['seconds'] * 1e3:.2f} | "
                f"{naive['seconds'] / r['seconds']:.0f} |"
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-boxes", type=int, default=8)
    parser.add_argument("--steps", type=int, default=7, help="timed training steps per setting")
    parser.add_argument("--repeats", type=int, default=20, help="timed loss-alone calls")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "loss_step.json")
    args = parser.parse_args(argv)
    rows = []
    for size in args.sizes:
        rows += bench_loss_alone(size, args.batch, args.max_boxes, args.repeats)
        if not args.skip_train:
            rows += bench_train_step(size, args.batch, args.max_boxes, args.steps)
    table = markdown(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = dict(
        benchmark="loss_step",
        settings=vars(args) | {"out": str(args.out)},
        loss_defaults=HypersensitiveLoss().get_config(),
        machine=dict(platform=platform.platform(), cpus=os.cpu_count(), tensorflow=tf.__version__,
                     keras=keras.__version__),
        results=rows,
        table=table,
    )
    args.out.write_text(json.dumps(result, indent=2))
    print()
    print(table)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
