"""Peak memory (RSS) of training the tiny preset on 1536-px images, batch 1 and 2.

Each measurement runs in a fresh subprocess (`--child BATCH`): build the tiny Hourglass (2 stacks,
HypersensitiveLoss per output, jit_compile "auto" as `hourglass train`), run `train_on_batch` a few
times on random 1536 x 1216 images with boxes, and report `ru_maxrss` of the child itself
(RUSAGE_SELF, so neither the parent nor an earlier child counts), plus the RSS before the first
step (imports + model). Figure: peak(batch 2) / peak(batch 1) (report; no target), absolute MB beside.

Usage: .venv/bin/python benchmarks/bench_memory.py [--quick]
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


def child(batch: int, size: int, steps: int) -> None:
    """Runs the training steps and prints one JSON line."""
    import keras
    import numpy as np

    from keras_hourglass.losses import HypersensitiveLoss
    from keras_hourglass.model import build_hourglass

    keras.utils.set_random_seed(0)
    width = int(round(size * 0.8 / 32)) * 32
    model = build_hourglass("tiny")
    outputs = len(model.outputs)
    model.compile(optimizer="adam", loss=[HypersensitiveLoss() for _ in range(outputs)], jit_compile="auto")
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
    print(json.dumps({"batch": batch, "shape": [batch, size, width, 1], "rss_before_mb": before,
                      "peak_rss_mb": peak, "step_s": times}))


def main(argv=None) -> dict:
    p = common.parser(__doc__.splitlines()[0], "memory")
    p.add_argument("--child", type=int, default=None, help=argparse_suppress())
    p.add_argument("--size", type=int, default=None)
    args = p.parse_args(argv)
    size = args.size or (512 if args.quick else 1536)
    steps = 2 if args.quick else 3
    if args.child is not None:
        child(args.child, size, steps)
        return {}
    started = time.perf_counter()
    runs = {}
    for batch in (1, 2):
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", str(batch), "--size", str(size)],
                              capture_output=True, text=True, timeout=900,
                              env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
        if proc.returncode != 0:
            raise SystemExit(f"child batch {batch} failed ({proc.returncode}): {proc.stderr[-2000:]}")
        runs[batch] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"  batch {batch}: peak {runs[batch]['peak_rss_mb']:.0f} MB "
              f"(before training {runs[batch]['rss_before_mb']:.0f} MB)", flush=True)
    a, b = runs[1], runs[2]
    width = a["shape"][2]
    figures = [common.figure(
        f"peak RSS training tiny at {size}x{width}, batch 2 / batch 1", b["peak_rss_mb"] / a["peak_rss_mb"],
        target=None, op="", numerator=f"batch 2: {b['peak_rss_mb']:.0f} MB", denominator=f"batch 1: "
        f"{a['peak_rss_mb']:.0f} MB", command=CMD,
        note=f"RSS before the first step: {a['rss_before_mb']:.0f} / {b['rss_before_mb']:.0f} MB; "
             f"median step {sorted(a['step_s'])[len(a['step_s']) // 2]:.1f} s / "
             f"{sorted(b['step_s'])[len(b['step_s']) // 2]:.1f} s",
        peak_rss_mb={1: a["peak_rss_mb"], 2: b["peak_rss_mb"]})]
    return common.write(args.out, "memory", figures, {"runs": runs, "size": size}, args.quick, started)


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
