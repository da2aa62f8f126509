"""Peak memory (RSS) of training the tiny preset on 1536-px images: batch 1 vs 2, float32 vs bfloat16.

Each measurement runs in a fresh subprocess (`--child BATCH`): build the tiny Hourglass (2 stacks,
HypersensitiveLoss per output, jit_compile "auto" as `hourglass train`), run `train_on_batch` a few
times on random 1536 x 1216 images with boxes, and report `ru_maxrss` of the child itself
(RUSAGE_SELF, so neither the parent nor an earlier child counts), plus the RSS before the first
step (imports + model). Figures (report; no target), absolute MB beside:

- peak(batch 2) / peak(batch 1), float32;
- peak(bfloat16) / peak(float32), batch 1, ONE training step each (`--precision`: the model built
  and compiled by `keras_hourglass.training.fit` under the `--mixed-precision` dtype policy).

Usage: .venv/bin/python benchmarks/bench_memory.py [--quick] [--only batch|precision]
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

import common

CMD = ".venv/bin/python benchmarks/bench_memory.py"


def _rss_mb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(batch: int, size: int, steps: int, precision: str | None = None) -> None:
    """Runs the training steps and prints one JSON line.

    Args:
        batch: images per step.
        size: image height (width 0.8 x size, a multiple of 32).
        steps: training steps.
        precision: None (the batch row: `build_hourglass` + compile, as before), or "float32" /
            "bfloat16" (the precision row: `training.fit.build_model` + `compile_model`).
    """
    import keras
    import numpy as np

    from keras_hourglass.losses import HypersensitiveLoss
    from keras_hourglass.model import build_hourglass

    keras.utils.set_random_seed(0)
    width = int(round(size * 0.8 / 32)) * 32
    if precision is None:
        model = build_hourglass("tiny")
        outputs = len(model.outputs)
        model.compile(optimizer="adam", loss=[HypersensitiveLoss() for _ in range(outputs)], jit_compile="auto")
    else:
        from keras_hourglass.model.hourglass import model_input_multiple, model_stride
        from keras_hourglass.training.config import TrainConfig
        from keras_hourglass.training.fit import build_model, compile_model, run_geometry

        config = TrainConfig(mixed_precision=precision, steps_per_epoch=steps, patch_epochs=1, full_epochs=0,
                             lr_schedule="constant").validate()
        model = build_model(config)
        geometry = run_geometry(config, None, model_stride(model), model_input_multiple(model), long_side=size)
        compile_model(model, config, geometry)
        outputs = len(model.outputs)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (batch, size, width, 1)).astype("float32")
    boxes = np.full((batch, 16, 4), -1.0, "float32")
    boxes[:, 0] = [100, 100, 120, 120]
    before = _rss_mb()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        model.train_on_batch(x, [boxes] * outputs)
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"batch": batch, "precision": precision or "float32", "shape": [batch, size, width, 1],
                      "rss_before_mb": before, "peak_rss_mb": peak, "step_s": times}))


def _run_child(batch: int, size: int, precision: str | None = None, steps: int | None = None) -> dict:
    """One measurement in a fresh subprocess. Returns: the child's JSON line."""
    command = [sys.executable, os.path.abspath(__file__), "--child", str(batch), "--size", str(size)]
    if precision:
        command += ["--precision", precision]
    if steps:
        command += ["--steps", str(steps)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    if proc.returncode != 0:
        raise SystemExit(f"child batch {batch} {precision or ''} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    run = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"  batch {batch} {run['precision']}: peak {run['peak_rss_mb']:.0f} MB "
          f"(before training {run['rss_before_mb']:.0f} MB)", flush=True)
    return run


def _median(values: list) -> float:
    return sorted(values)[len(values) // 2]


def batch_figure(size: int) -> tuple[dict, dict]:
    """peak(batch 2) / peak(batch 1), float32. Returns: (figure, runs)."""
    runs = {batch: _run_child(batch, size) for batch in (1, 2)}
    a, b = runs[1], runs[2]
    width = a["shape"][2]
    return common.figure(
        f"peak RSS training tiny at {size}x{width}, batch 2 / batch 1", b["peak_rss_mb"] / a["peak_rss_mb"],
        target=None, op="", numerator=f"batch 2: {b['peak_rss_mb']:.0f} MB", denominator=f"batch 1: "
        f"{a['peak_rss_mb']:.0f} MB", command=CMD,
        note=f"RSS before the first step: {a['rss_before_mb']:.0f} / {b['rss_before_mb']:.0f} MB; "
             f"median step {_median(a['step_s']):.1f} s / {_median(b['step_s']):.1f} s",
        peak_rss_mb={1: a["peak_rss_mb"], 2: b["peak_rss_mb"]}), runs


def precision_figure(size: int) -> tuple[dict, dict]:
    """peak(bfloat16) / peak(float32), batch 1, one training step each. Returns: (figure, runs)."""
    runs = {p: _run_child(1, size, precision=p, steps=1) for p in ("float32", "bfloat16")}
    low, full = runs["bfloat16"], runs["float32"]
    width = full["shape"][2]
    return common.figure(
        f"peak RSS of one training step, tiny at {size}x{width}, batch 1: bfloat16 / float32",
        low["peak_rss_mb"] / full["peak_rss_mb"], target=None, op="",
        numerator=f"bfloat16: {low['peak_rss_mb']:.0f} MB", denominator=f"float32: {full['peak_rss_mb']:.0f} MB",
        command=f"{CMD} --only precision",
        note=f"RSS before the step: {low['rss_before_mb']:.0f} / {full['rss_before_mb']:.0f} MB; the step "
             f"(tracing included) {low['step_s'][0]:.1f} s / {full['step_s'][0]:.1f} s; CPU, mixed_bfloat16 policy "
             "(float32 variables, heads and losses)",
        peak_rss_mb={"float32": full["peak_rss_mb"], "bfloat16": low["peak_rss_mb"]}), runs


def main(argv=None) -> dict:
    p = common.parser(__doc__.splitlines()[0], "memory")
    p.add_argument("--child", type=int, default=None, help=argparse_suppress())
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--precision", choices=("float32", "bfloat16"), default=None, help=argparse_suppress())
    p.add_argument("--steps", type=int, default=None, help=argparse_suppress())
    p.add_argument("--only", choices=("batch", "precision"), default=None, help="run one row only")
    args = p.parse_args(argv)
    size = args.size or (512 if args.quick else 1536)
    steps = 2 if args.quick else 3
    if args.child is not None:
        child(args.child, size, args.steps or steps, args.precision)
        return {}
    started = time.perf_counter()
    figures, runs = [], {}
    if args.only in (None, "batch"):
        figure, runs["batch"] = batch_figure(size)
        figures.append(figure)
    if args.only in (None, "precision"):
        figure, runs["precision"] = precision_figure(size)
        figures.append(figure)
    return common.write(args.out, "memory", figures, {"runs": runs, "size": size}, args.quick, started)


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
