"""Shared helpers of the benchmarks: timing (warm-up + median), figures with targets, JSON output.

Every figure is a RATIO of two timings taken in the same process run (the machine is shared and
noisy), stored with both absolute times, the target and the command that reproduces it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_DIR = os.path.join(HERE, "out")
REPO = os.path.dirname(HERE)
if REPO not in sys.path:
    sys.path.insert(0, REPO)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def timed(fn: Callable[[], object], repeats: int, warmup: int = 2) -> dict:
    """Runs `fn` `warmup` times untimed (tracing, compilation), then `repeats` times.

    Returns:
        {"median_s", "min_s", "max_s", "repeats", "warmup"}.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "repeats": len(times), "warmup": warmup}


def timed_round_robin(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 2) -> dict[str, dict]:
    """Like `timed` for several functions, interleaved: each round runs every function once, so a
    change of machine load affects all of them alike (ratios stay meaningful on a shared machine)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(max(1, repeats)):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t), "repeats": len(t),
                   "warmup": warmup, "interleaved": True} for name, t in times.items()}


def figure(name: str, ratio: float | None, *, target: float | None, op: str, numerator: str, denominator: str,
           command: str, note: str = "", **extra) -> dict:
    """One row of BENCHMARKS.md.

    Args:
        name: what is measured.
        ratio: the measured ratio (None: not measured).
        target: our target for the ratio (None: no target, report only).
        op: "<=" or ">=" (how the ratio must compare with the target).
        numerator, denominator: the two measurements with their absolute values, as text.
        command: reproduces the figure.
        note: anything the reader must know.
        **extra: stored in the JSON only.
    """
    if op not in ("<=", ">=", ""):
        raise ValueError(op)
    met = None
    if ratio is not None and target is not None:
        met = ratio <= target if op == "<=" else ratio >= target
    return {"name": name, "ratio": None if ratio is None else round(float(ratio), 3), "target": target, "op": op,
            "met": met, "numerator": numerator, "denominator": denominator, "command": command, "note": note,
            **extra}


def ms(seconds: float) -> str:
    """Seconds as '12.3 ms' (or '1.23 s')."""
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def machine() -> dict:
    """The environment the numbers come from."""
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "load_average_1m": round(os.getloadavg()[0], 2)}
    try:
        import keras
        import tensorflow as tf

        info.update(tensorflow=tf.__version__, keras=keras.__version__)
    except ImportError:
        pass
    return info


def parser(description: str, name: str) -> argparse.ArgumentParser:
    """An argument parser with --quick and --out (default benchmarks/out/NAME.json)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="smoke run: fewer repetitions, smaller sizes")
    p.add_argument("--out", default=os.path.join(OUT_DIR, f"{name}.json"))
    return p


def write(path: str, name: str, figures: list[dict], details: dict, quick: bool, started: float) -> dict:
    """Writes the benchmark's JSON. Returns: the result dict."""
    result = {"benchmark": name, "quick": quick, "seconds": round(time.perf_counter() - started, 1),
              "machine": machine(), "figures": figures, "details": details}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as handle:
        json.dump(result, handle, indent=2, default=float)
    for f in figures:
        print(f"{f['name']}: ratio {f['ratio']} (target {f['op']} {f['target']}, met={f['met']}) "
              f"[{f['numerator']} / {f['denominator']}]", flush=True)
    print(f"wrote {path}", flush=True)
    return result


#: The environment variables that set a TensorFlow process's intra- and inter-op thread counts.
THREAD_VARIABLES = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")


def thread_env(threads: int | None, env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a TensorFlow process with `threads` intra- and inter-op threads.

    Args:
        threads: the thread count (None: TensorFlow's default, all cores).
        env: an environment to copy (its own thread variables dropped); None: only the variables.

    Returns:
        The variables for `threads` ({} for None), on top of `env` when given.
    """
    kept = {k: v for k, v in (env or {}).items() if k not in THREAD_VARIABLES}
    return {**kept, **({name: str(threads) for name in THREAD_VARIABLES} if threads else {})}


def named_paths(specs: list[str], flag: str = "--model") -> list[tuple[str, str]]:
    """Splits repeated `NAME=PATH` arguments.

    Args:
        specs: the arguments as given.
        flag: the option they came from (for the error).

    Returns:
        `(name, path)` per argument, in order.

    Raises:
        SystemExit: one line naming the argument that has no `=PATH`.
    """
    pairs = [spec.partition("=")[::2] for spec in specs]
    for spec, (_, path) in zip(specs, pairs):
        if not path:
            raise SystemExit(f"{flag} {spec!r}: expected NAME=PATH")
    return pairs


def hourglass_cli() -> list[str]:
    """The `hourglass` command of this checkout's interpreter (as a module: no console script needed)."""
    return [sys.executable, "-m", "keras_hourglass.cli.main"]


def run_step(cmd: list[str], log_path: str, timeout: float, who: str,
             extra_env: dict[str, str] | None = None, cwd: str = REPO) -> tuple[str, float]:
    """Runs one CLI step of a benchmark; returns (stdout, seconds). stderr goes to `log_path`.

    Args:
        extra_env: variables set for the step on top of this process's environment (e.g. PYTHONPATH).
        cwd: the step's working directory (`python -m` imports the package found there first).

    Raises:
        SystemExit: the step failed (naming `who`, the log and the command).
    """
    import subprocess

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(extra_env or {})}
    env.pop("TF_CONFIG", None)
    start = time.time()
    with open(log_path, "w") as log:
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, text=True, timeout=timeout, env=env, cwd=cwd)
    if done.returncode != 0:
        raise SystemExit(f"{who}: step failed (exit {done.returncode}), see {log_path}: {' '.join(cmd)}")
    return done.stdout, time.time() - start

