"""Ingest throughput: `hourglass prepare` with 1 and 2 workers beside pydicom's raw decode.

Generates N synthetic mammograms (keras_hourglass.data.synthetic: MONOCHROME1/2, raw, RLE and
JPEG 2000 files), then times on the SAME files:

- ``pydicom_raw``: ``dcmread`` + ``pixel_array`` in this process (the floor: decoding only);
- ``read_mammogram``: the full preprocessing (VOI, orientation, resize) in this process;
- ``prepare_w1`` / ``prepare_w2``: ``prepare()`` end to end (import, split, decode + preprocess,
  16-bit PNG, TFRecord, manifest) with 1 worker (in process) and 2 worker processes (spawn
  start-up included).

Writes benchmarks/out/ingest.json and prints a markdown table. The machine's load average is
recorded: on a shared machine the figures are indicative only.

Usage: .venv/bin/python benchmarks/ingest.py [--images 32] [--height 1280 --width 1024] [--size 512]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _rate(images: int, seconds: float) -> float:
    return round(images / seconds, 2) if seconds > 0 else float("inf")


def main(argv: list[str] | None = None) -> dict:
    """Runs the benchmark. Returns: the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--height", type=int, default=1280)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--size", type=int, default=512, help="training-scale long side")
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

        started = time.perf_counter()
        for path in files:
            pydicom.dcmread(path).pixel_array  # noqa: B018  decoding is the point
        results["pydicom_raw"] = time.perf_counter() - started

        started = time.perf_counter()
        for path in files:
            read_mammogram(path, long_side=args.size)
        results["read_mammogram"] = time.perf_counter() - started

        written = {}
        for workers in (1, 2):
            out = os.path.join(work, f"prep_w{workers}")
            started = time.perf_counter()
            summary = prepare(PrepareConfig(annotations=[os.path.join(synth, "annotations.csv")],
                                            images_root=synth, out=out, size=args.size, workers=workers,
                                            salt="bench", quiet=True))
            results[f"prepare_w{workers}"] = time.perf_counter() - started
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
        row["seconds"] = round(results[key], 3)
        row["images_per_second"] = _rate(row["images"], results[key])
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
    print("| stage | images | seconds | images/s |")
    print("|---|---:|---:|---:|")
    for row in table.values():
        print(f"| {row['what']} | {row['images']} | {row['seconds']} | {row['images_per_second']} |")
    print(f"\nsame records with 1 and 2 workers: {result['same_records_w1_w2']}; written to {args.out}")
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
