"""Ingest throughput: `hourglass prepare` with 1 and 2 workers beside pydicom's raw decode.

Generates N synthetic mammograms (keras_hourglass.data.synthetic: MONOCHROME1/2, raw, RLE and
JPEG 2000 files), then times on the SAME files:

- ``pydicom_raw``: ``dcmread`` + ``pixel_array`` in this process (the floor: decoding only; after
  one untimed pass over the files, so that first-use costs do not slow the baseline down);
- ``read_mammogram``: the full preprocessing (VOI, orientation, resize) in this process;
- ``prepare_w1`` / ``prepare_w2``: ``prepare()`` end to end (import, split, decode + preprocess,
  16-bit PNG, TFRecord, manifest) with 1 worker (in process) and 2 worker processes (worker
  start-up included: every prepare run starts its own fork server / processes).

Then, because a one-off start-up weighs heavily on a few dozen images, a larger run on the same
files linked ``--scale`` times under new patient ids (``*_x<scale>`` rows: raw decode, prepare with
1 and 2 workers on N * scale images), the marginal rate between the two sizes (``*_marginal``:
(N * scale - N) / (T_large - T_small), i.e. images/s once start-up and per-run fixed costs are
paid), and the worker start-up alone (``worker_startup``: a fresh interpreter starting prepare's
2-process pool and running one empty task per worker).

Writes benchmarks/out/ingest.json and prints a markdown table with wall-clock and CPU seconds
(this process plus its worker processes, and this process alone: with 2 workers it only writes
the TFRecords, so its share shows whether the parent is the bottleneck); the machine's load average
is recorded: on a shared machine wall-clock rates are indicative only, images per CPU-second less
so, and 2 workers can only beat 1 when a second core is actually free.

Usage: .venv/bin/python benchmarks/ingest.py [--images 24] [--height 2048 --width 1664] [--size 1536]
       [--scale 4]
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import platform
import resource
import shutil
import subprocess
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
        self.wall, self.cpu, self.parent_cpu = time.perf_counter(), _cpu(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, _cpu() - self.cpu
        self.parent_cpu = time.process_time() - self.parent_cpu


def _replicate(synth: str, dest: str, copies: int) -> tuple[str, list[str]]:
    """Links the synthetic files `copies` times under new paths and patient/study ids.

    Returns: (annotation table, DICOM files) of the replicated set.
    """
    with open(os.path.join(synth, "annotations.csv"), newline="") as handle:
        rows = list(csv.DictReader(handle))
    fields = list(rows[0].keys())
    files = []
    table = os.path.join(dest, "annotations.csv")
    os.makedirs(dest, exist_ok=True)
    with open(table, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        linked = set()
        for copy in range(copies):
            for row in rows:
                new = dict(row, image_path=f"rep{copy}/{row['image_path']}", patient_id=f"{row['patient_id']}-r{copy}",
                           study_id=f"{row['study_id']}.{copy}")
                writer.writerow(new)
                target = os.path.join(dest, new["image_path"])
                if target not in linked:
                    linked.add(target)
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    try:
                        os.link(os.path.join(synth, row["image_path"]), target)
                    except OSError:
                        shutil.copyfile(os.path.join(synth, row["image_path"]), target)
                    files.append(target)
    return table, sorted(files)


def _fresh_workers() -> None:
    """Stops (and reaps) this process's multiprocessing fork server, if one runs.

    Called after each prepare run, inside its timer: the next run pays its own worker start-up, and
    the CPU time of the worker processes (children of the fork server, reaped by it) reaches this
    process's RUSAGE_CHILDREN once the server itself is reaped.
    """
    try:
        from multiprocessing import forkserver

        server = getattr(forkserver, "_forkserver", None)
        if server is not None and hasattr(server, "_stop"):
            server._stop()
    except Exception:  # noqa: BLE001 - best effort (private API); the start-up row measures it anyway
        pass


def _worker_startup(workers: int = 2) -> float | None:
    """Seconds for a FRESH interpreter to start prepare's worker pool and run one empty task per worker."""
    code = (
        "import concurrent.futures, time, sys\n"
        "from keras_hourglass.data import prepare\n"
        "def main():\n"
        "    t = time.perf_counter()\n"
        f"    with concurrent.futures.ProcessPoolExecutor({workers}, mp_context=prepare.worker_context()) as pool:\n"
        f"        list(pool.map(abs, range({workers})))\n"
        "    print(time.perf_counter() - t)\n"
        "if __name__ == '__main__':\n"
        "    main()\n"
    )
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as handle:
        handle.write(code)
    try:
        out = subprocess.run([sys.executable, handle.name], capture_output=True, text=True, timeout=120)
        return float(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else None
    except (subprocess.TimeoutExpired, ValueError, IndexError):
        return None
    finally:
        os.remove(handle.name)


def main(argv: list[str] | None = None) -> dict:
    """Runs the benchmark. Returns: the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--height", type=int, default=2048)
    parser.add_argument("--width", type=int, default=1664)
    parser.add_argument("--size", type=int, default=1536, help="training-scale long side")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--scale", type=int, default=4,
                        help="the larger run uses the N files linked this many times (1: no larger run)")
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

        for path in files:  # untimed warm-up: page cache, pydicom's decoder plugins (prepare gets them warm too)
            pydicom.dcmread(path).pixel_array  # noqa: B018
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
                _fresh_workers()
            results[f"prepare_w{workers}"] = timer
            written[workers] = summary["images_written_here"]
            results[f"content_hash_w{workers}"] = summary["content_hash"]

        if args.scale > 1:
            big_table, big_files = _replicate(synth, os.path.join(work, "big"), args.scale)
            with _Timer() as timer:
                for path in big_files:
                    pydicom.dcmread(path).pixel_array  # noqa: B018
            results["pydicom_raw_big"] = timer
            for workers in (1, 2):
                with _Timer() as timer:
                    summary = prepare(PrepareConfig(annotations=[big_table], images_root=os.path.join(work, "big"),
                                                    out=os.path.join(work, f"prep_big_w{workers}"), size=args.size,
                                                    workers=workers, salt="bench", quiet=True))
                    _fresh_workers()
                results[f"prepare_w{workers}_big"] = timer
                written[f"big{workers}"] = summary["images_written_here"]
                results[f"content_hash_big_w{workers}"] = summary["content_hash"]
        startup = _worker_startup(2)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    n = len(files)
    table = {
        "pydicom_raw": {"what": "pydicom dcmread + pixel_array (1 process)", "images": n},
        "read_mammogram": {"what": "read_mammogram: decode + VOI + orient + resize (1 process)", "images": n},
        "prepare_w1": {"what": "hourglass prepare, --workers 1 (end to end)", "images": written[1]},
        "prepare_w2": {"what": "hourglass prepare, --workers 2 (end to end, worker start-up included)",
                       "images": written[2]},
    }
    big = n * args.scale if args.scale > 1 else 0
    if big:
        table[f"pydicom_raw_x{args.scale}"] = {"what": f"pydicom dcmread + pixel_array, {args.scale}x the files",
                                               "images": len(big_files), "key": "pydicom_raw_big"}
        for workers in (1, 2):
            table[f"prepare_w{workers}_x{args.scale}"] = {
                "what": f"hourglass prepare, --workers {workers}, {args.scale}x the files (start-up included)",
                "images": written[f"big{workers}"], "key": f"prepare_w{workers}_big"}
    for key, row in table.items():
        timer = results[row.pop("key", key)]
        row["seconds"] = round(timer.wall, 3)
        row["images_per_second"] = _rate(row["images"], timer.wall)
        row["cpu_seconds"] = round(timer.cpu, 3)
        row["images_per_cpu_second"] = _rate(row["images"], timer.cpu)
        row["parent_cpu_seconds"] = round(timer.parent_cpu, 3)  # this process alone (with 2 workers: the writer)
    if big:
        for workers in (1, 2):
            small, large = table[f"prepare_w{workers}"], table[f"prepare_w{workers}_x{args.scale}"]
            extra, dt = large["images"] - small["images"], large["seconds"] - small["seconds"]
            table[f"prepare_w{workers}_marginal"] = {
                "what": f"hourglass prepare, --workers {workers}, marginal rate ({small['images']} -> "
                        f"{large['images']} images: start-up and fixed costs excluded)",
                "images": extra, "seconds": round(dt, 3), "images_per_second": _rate(extra, dt),
                "cpu_seconds": round(large["cpu_seconds"] - small["cpu_seconds"], 3),
                "images_per_cpu_second": _rate(extra, large["cpu_seconds"] - small["cpu_seconds"])}
    raw_rate = table["pydicom_raw"]["images_per_second"]
    ratios = {key: round(row["images_per_second"] / raw_rate, 3) for key, row in table.items()
              if key.startswith("prepare") and not key.endswith(f"_x{args.scale}")}
    if big:
        raw_big = table[f"pydicom_raw_x{args.scale}"]["images_per_second"]
        for workers in (1, 2):
            ratios[f"prepare_w{workers}_x{args.scale}"] = round(
                table[f"prepare_w{workers}_x{args.scale}"]["images_per_second"] / raw_big, 3)
    result = {
        "benchmark": "ingest",
        "images": n,
        "original_size": [args.height, args.width],
        "training_long_side": args.size,
        "synth_seconds": round(synth_seconds, 2),
        "results": table,
        "scale": args.scale,
        "ratios_to_raw_decode": ratios,
        "worker_startup_seconds_2_workers": None if startup is None else round(startup, 3),
        "same_records_w1_w2": results["content_hash_w1"] == results["content_hash_w2"],
        "same_records_w1_w2_large": (results["content_hash_big_w1"] == results["content_hash_big_w2"]) if big else None,
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
    print("| stage | images | wall s | images/s | CPU s | images/CPU-s | CPU s of this process |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in table.values():
        print(f"| {row['what']} | {row['images']} | {row['seconds']} | {row['images_per_second']} | "
              f"{row['cpu_seconds']} | {row['images_per_cpu_second']} | {row.get('parent_cpu_seconds', '')} |")
    print(f"\nratios to raw decode (the {args.scale}x rows against raw decode of the {args.scale}x files): "
          + ", ".join(f"{k} {v}" for k, v in ratios.items()))
    print(f"worker start-up (fresh interpreter, 2 workers, one empty task each): "
          f"{result['worker_startup_seconds_2_workers']} s")
    print(f"same records with 1 and 2 workers: {result['same_records_w1_w2']} "
          f"(larger run: {result['same_records_w1_w2_large']}); written to {args.out}")
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
