"""Loss overhead in a training step and the XLA choice.

For the "tiny" and "small" models (`build_hourglass("tiny", num_stacks=1)` and the same with
`num_features=64`; one stack so one loss call per step for every loss) and one batch of random
images with boxes, times `train_on_batch` (median after warm-up) for:

- ``mse_none`` / ``mse_step``: plain MSE to a precomputed Gaussian target, jit_compile off / on;
- ``hs_none``: HypersensitiveLoss(jit_compile=False), model jit_compile off (no XLA at all);
- ``hs_loss``: HypersensitiveLoss() (its default: XLA on the blob matching only), model jit off;
- ``hs_step``: the whole train step under jit_compile=True.

Figures: loss overhead = HypersensitiveLoss step / MSE step with the same jit setting (without
jit: hs_loss / mse_none, the shipped loss default; with jit: hs_step / mse_step), target <= 1.05;
XLA: hs_step and hs_none over hs_loss (report; the fastest becomes the recommended default).

Usage: .venv/bin/python benchmarks/bench_xla.py [--quick]
"""

from __future__ import annotations

import time

import common

CMD = ".venv/bin/python benchmarks/bench_xla.py"


def main(argv=None) -> dict:
    args = common.parser(__doc__.splitlines()[0], "xla").parse_args(argv)
    started = time.perf_counter()
    import keras
    import numpy as np
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    from keras_hourglass.losses import GaussianL2Loss, HypersensitiveLoss
    from keras_hourglass.model import build_hourglass

    size, batch, repeats = (128, 2, 3) if args.quick else (256, 2, 8)
    stride = 4
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (batch, size, size, 1)).astype("float32")
    boxes = np.full((batch, 8, 4), -1.0, "float32")
    h = size // stride
    for b in range(batch):
        for n in range(3):
            cy, cx = rng.uniform(4, h - 4, 2)
            boxes[b, n] = [cy - 3, cx - 3, cy + 3, cx + 3]
    target = GaussianL2Loss(sigma=2.0).target(boxes, np.zeros((batch, h, h, 1), "float32")).numpy()[..., None]

    presets = {"tiny": {}, "small": {"num_features": 64}}
    variants = {
        "mse_none": (lambda: keras.losses.MeanSquaredError(), False, "target"),
        "mse_step": (lambda: keras.losses.MeanSquaredError(), True, "target"),
        "hs_none": (lambda: HypersensitiveLoss(jit_compile=False), False, "boxes"),
        "hs_loss": (lambda: HypersensitiveLoss(), False, "boxes"),
        "hs_step": (lambda: HypersensitiveLoss(), True, "boxes"),
    }
    details: dict = {"size": size, "batch": batch, "repeats": repeats, "stride": stride, "timings": {}}
    figures = []
    for preset, overrides in presets.items():
        steps = {}
        for name, (make_loss, jit, y_kind) in variants.items():
            keras.utils.set_random_seed(0)
            model = build_hourglass("tiny", num_stacks=1, output_stride=stride, **overrides)
            model.compile(optimizer="adam", loss=make_loss(), jit_compile=jit)
            y = target if y_kind == "target" else boxes
            steps[name] = (lambda model=model, y=y: model.train_on_batch(images, y))
            print(f"  {preset} {name}: built and compiled", flush=True)
        # Interleaved: one step of each variant per round, so load changes hit every variant alike.
        timings = common.timed_round_robin(steps, repeats, warmup=2)
        for name, t in timings.items():
            print(f"  {preset} {name}: {common.ms(t['median_s'])}", flush=True)
        details["timings"][preset] = timings
        label = f"{preset} ({'16' if not overrides else '64'} features, 1 stack), {size} px, batch {batch}"
        m = lambda k: timings[k]["median_s"]  # noqa: E731
        figures.append(common.figure(
            f"loss overhead, no jit_compile: {label}", m("hs_loss") / m("mse_none"), target=1.05, op="<=",
            numerator=f"hypersensitive step {common.ms(m('hs_loss'))}",
            denominator=f"MSE step {common.ms(m('mse_none'))}", command=CMD,
            note="loss default (XLA on the matching only)"))
        figures.append(common.figure(
            f"loss overhead, jit_compile=True: {label}", m("hs_step") / m("mse_step"), target=1.05, op="<=",
            numerator=f"hypersensitive step {common.ms(m('hs_step'))}",
            denominator=f"MSE step {common.ms(m('mse_step'))}", command=CMD))
        fastest = min(("hs_step", "hs_loss", "hs_none"), key=m)
        figures.append(common.figure(
            f"XLA whole step / XLA loss only: {label}", m("hs_step") / m("hs_loss"), target=None, op="",
            numerator=f"whole step {common.ms(m('hs_step'))}", denominator=f"loss only {common.ms(m('hs_loss'))}",
            command=CMD, note=f"no XLA: {common.ms(m('hs_none'))}; fastest: {fastest}", fastest=fastest))
        figures.append(common.figure(
            f"no XLA / XLA loss only: {label}", m("hs_none") / m("hs_loss"), target=None, op="",
            numerator=f"no XLA {common.ms(m('hs_none'))}", denominator=f"loss only {common.ms(m('hs_loss'))}",
            command=CMD))
    return common.write(args.out, "xla", figures, details, args.quick, started)


if __name__ == "__main__":
    main()
