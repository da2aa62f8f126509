"""CPU training throughput: one run on all cores against one-thread runs side by side.

Why the quality benchmarks (benchmarks/quality.py) default to `--threads 1 --jobs <cores>`: the tiny
Hourglass's convolutions are small, and TensorFlow splits them across threads poorly. Synthesises a small
data set at `--size 256`, then trains the tiny model with `hourglass train` (patch phase, batch 8, the
quality benchmark's crop) as

- one run with TensorFlow's default threads (all cores), alone;
- `cores` runs side by side, each with TF_NUM_INTRAOP_THREADS = TF_NUM_INTEROP_THREADS = 1.

Steady-state speed: the training steps of the epochs after the first (the first holds graph building and
compilation) divided by their `epoch_seconds` (history.csv), summed over the runs side by side.

Figure: steps/min of the side-by-side one-thread runs / steps/min of the all-cores run, target >= 1.3.

Usage: .venv/bin/python benchmarks/bench_threads.py [--quick]
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import tempfile
import time

import common

CMD = ".venv/bin/python benchmarks/bench_threads.py"


def _train(prep: str, run_dir: str, steps: int, epochs: int, threads: int | None) -> subprocess.Popen:
    env = common.thread_env(threads, {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    return subprocess.Popen([*common.hourglass_cli(), "train", "--data", prep, "--out", run_dir, "--phase", "patch",
                             "--epochs", str(epochs), "--steps-per-epoch", str(steps), "--batch-size", "8",
                             "--val-images", "0", "--strategy", "default", "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=common.REPO)


def _steps_per_minute(run_dir: str, steps: int) -> float:
    with open(os.path.join(run_dir, "history.csv"), newline="", encoding="utf-8") as handle:
        seconds = [float(row["epoch_seconds"]) for row in csv.DictReader(handle)][1:]  # after the first epoch
    return 60.0 * steps * len(seconds) / sum(seconds)


def _run_all(prep: str, work: str, name: str, count: int, threads: int | None, steps: int, epochs: int) -> list[float]:
    runs = [os.path.join(work, f"{name}-{i}") for i in range(count)]
    procs = [_train(prep, run, steps, epochs, threads) for run in runs]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"bench_threads: hourglass train failed (exit {proc.returncode}): {err[-800:]}")
    return [_steps_per_minute(run, steps) for run in runs]


def main(argv=None) -> dict:
    args = common.parser(__doc__.splitlines()[0], "threads").parse_args(argv)
    started = time.perf_counter()
    from keras_hourglass.data.prepare import PrepareConfig, prepare
    from keras_hourglass.data.synthetic import SynthConfig, generate_dataset

    cores = os.cpu_count() or 1
    steps, epochs = (20, 3) if args.quick else (60, 4)
    work = tempfile.mkdtemp(prefix="bench-threads-")
    details: dict = {"cores": cores, "steps_per_epoch": steps, "epochs": epochs}
    try:
        synth, prep = os.path.join(work, "synth"), os.path.join(work, "prep")
        generate_dataset(synth, SynthConfig(num_images=24, seed=11, height=640, width=512, malignant_rate=0.3,
                                            high_risk_rate=0.1, benign_rate=0.2))
        prepare(PrepareConfig(annotations=[os.path.join(synth, "annotations.csv")], images_root=synth, out=prep,
                              size=256, workers=2, salt="bench-threads", val_fraction=0.0, test_fraction=0.0,
                              quiet=True))
        alone = _run_all(prep, work, "all-cores", 1, None, steps, epochs)[0]
        side_by_side = _run_all(prep, work, "one-thread", cores, 1, steps, epochs)
        details.update(all_cores_steps_per_min=alone, one_thread_steps_per_min=side_by_side)
        total = sum(side_by_side)
        print(f"  all cores: {alone:.0f} steps/min; {cores} one-thread runs: {total:.0f} steps/min", flush=True)
        figures = [common.figure(
            f"tiny train steps/min, {cores} one-thread runs side by side / one run on all {cores} cores",
            total / alone, target=1.3, op=">=",
            numerator=f"{cores} x 1 thread: {total:.0f} steps/min (" + ", ".join(f"{v:.0f}" for v in side_by_side)
            + ")", denominator=f"1 run, TensorFlow's default threads: {alone:.0f} steps/min",
            command=CMD, note="patch phase, batch 8, 128-px crops at --size 256 (the quality benchmark's)")]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return common.write(args.out, "threads", figures, details, args.quick, started)


if __name__ == "__main__":
    main()
