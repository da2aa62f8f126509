"""Ingest throughput: `hourglass prepare` with 1 and 2 workers beside pydicom's raw decode.

Generates N synthetic mammograms (keras_hourglass.data.synthetic: MONOCHROME1/2, raw, RLE and
JPEG 2000 files), then times on the SAME files:

- ``pydicom_raw``: ``dcmread`` + ``pixel_array`` in this process (the floor: decoding only);
- ``read_mammogram``: the full preprocessing (VOI, orientation, resize) in this process;
- ``prepare_w1`` / ``prepare_w2``: ``prepare()`` end to end (import, split, decode + preprocess,
  16-bit PNG, TFRecord, manifest) with 1 worker (in process) and 2 worker processes (spawn
  start-up included).

Writes benchmarks/out/ingest.json and prints a markdown table with wall-clock and CPU seconds
(this process plus its worker processes); the machine's load average is recorded: on a shared
machine wall-clock rates are indicative only, images per CPU-second less so.

Usage: .venv/bin/python benchmarks/ingest.py [--images 24] [--height 2048 --width 1664] [--size 1536]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _rate(images: int, seconds: float) -> float:
    return round(images / seconds, 2) if seconds > 0 else float("inf")


def _cpu() -> float:
    """CPU seconds of this process and its finished children (worker processes)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


class _Timer:
    """Wall and CPU seconds of a block (CPU shows the cost on a shared, loaded machine)."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), _cpu()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, _cpu() - self.cpu


def main(argv: list[str] | None = None) -> dict:
    """Runs the benchmark. Returns: the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--height", type=int, default=2048)
    parser.add_argument("--width", type=int, default=1664)
    parser.add_argument("--size", type=int, default=1536, help="training-scale long side")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--out", default=os.path.join(HERE, "out", "ingest.json"))
    parser.add_argument("--keep", action="store_true", help="keep the temporary data")
    args = parser.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import pydicom
    import tensorflow  # noqa: F401  imported before timing (prepare's parent needs it)

    from keras_hourglass.data.dicom import read_mammogram
    from keras_hourglass.data.prepare import PrepareConfig, prepare
    from keras_hourglass.data.synthetic import SynthConfig, generate_dataset

    work = tempfile.mkdtemp(prefix="hourglass-bench-")
    try:
        synth = os.path.join(work, "synth")
        started = time.perf_counter()
        generate_dataset(synth, SynthConfig(num_images=args.images, seed=args.seed, height=args.height,
                                            width=args.width, malignant_rate=0.2, high_risk_rate=0.1,
                                            benign_rate=0.2))
        synth_seconds = time.perf_counter() - started
        files = sorted(glob.glob(os.path.join(synth, "images", "**", "*.dcm"), recursive=True))
        results = {}

        with _Timer() as timer:
            for path in files:
                pydicom.dcmread(path).pixel_array  # noqa: B018  decoding is the point
        results["pydicom_raw"] = timer

        with _Timer() as timer:
            for path in files:
                read_mammogram(path, long_side=args.size)
        results["read_mammogram"] = timer

        written = {}
        for workers in (1, 2):
            out = os.path.join(work, f"prep_w{workers}")
            with _Timer() as timer:
                summary = prepare(PrepareConfig(annotations=[os.path.join(synth, "annotations.csv")],
                                                images_root=synth, out=out, size=args.size, workers=workers,
                                                salt="bench", quiet=True))
            results[f"prepare_w{workers}"] = timer
            written[workers] = summary["images_written_here"]
            results[f"content_hash_w{workers}"] = summary["content_hash"]
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    n = len(files)
    table = {
        "pydicom_raw": {"what": "pydicom dcmread + pixel_array (1 process)", "images": n},
        "read_mammogram": {"what": "read_mammogram: decode + VOI + orient + resize (1 process)", "images": n},
        "prepare_w1": {"what": "hourglass prepare, --workers 1 (end to end)", "images": written[1]},
        "prepare_w2": {"what": "hourglass prepare, --workers 2 (end to end, spawn included)",
                       "images": written[2]},
    }
    for key, row in table.items():
        row["seconds"] = round(results[key].wall, 3)
        row["images_per_second"] = _rate(row["images"], results[key].wall)
        row["cpu_seconds"] = round(results[key].cpu, 3)
        row["images_per_cpu_second"] = _rate(row["images"], results[key].cpu)
    result = {
        "benchmark": "ingest",
        "images": n,
        "original_size": [args.height, args.width],
        "training_long_side": args.size,
        "synth_seconds": round(synth_seconds, 2),
        "results": table,
        "same_records_w1_w2": results["content_hash_w1"] == results["content_hash_w2"],
        "cpu_count": os.cpu_count(),
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "pydicom": pydicom.__version__,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=2)
    print(f"\n{n} synthetic mammograms {args.height}x{args.width} -> long side {args.size}; "
          f"{os.cpu_count()} CPUs, load {result['load_average_1m_at_end']}\n")
    print("| stage | images | wall s | images/s | CPU s | images/CPU-s |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in table.values():
        print(f"| {row['what']} | {row['images']} | {row['seconds']} | {row['images_per_second']} | "
              f"{row['cpu_seconds']} | {row['images_per_cpu_second']} |")
    print(f"\nsame records with 1 and 2 workers: {result['same_records_w1_w2']}; written to {args.out}")
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
