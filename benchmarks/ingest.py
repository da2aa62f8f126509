"""Ingest throughput: `hourglass prepare` (local processes and the Beam DirectRunner) beside pydicom's raw decode.

Generates N synthetic mammograms (keras_hourglass.data.synthetic: MONOCHROME1/2, raw, RLE and
JPEG 2000 files), then times on the SAME files:

- ``pydicom_raw``: ``dcmread`` + ``pixel_array`` in this process (the floor: decoding only; after
  one untimed pass over the files, so that first-use costs do not slow the baseline down);
- ``read_mammogram``: the full preprocessing (VOI, orientation, resize) in this process;
- ``prepare_w1`` / ``prepare_w2``: ``prepare()`` end to end (import, split, decode + preprocess,
  16-bit PNG, TFRecord, manifest) with 1 worker (in process) and 2 worker processes (worker
  start-up included: every prepare run starts its own fork server / processes);
- ``beam_w1`` / ``beam_w2``: the same through ``--runner DirectRunner`` (issue 14): one worker (the
  DirectRunner in this process) and two (``--direct_num_workers 2 --direct_running_mode
  multi_processing``: two SDK worker processes, each importing TensorFlow, pydicom and the table).

Then, because a one-off start-up weighs heavily on a few dozen images, a larger run on the same
files linked ``--scale`` times under new patient ids (``*_x<scale>`` rows), the marginal rate
between the two sizes (``*_marginal``: (N * scale - N) / (T_large - T_small), i.e. images/s once
start-up and per-run fixed costs are paid), and the worker start-up alone (``worker_startup``).

Full-field rows (``--full-field K``, default 4; 0: none): K images of 4096 x 3328 pixels, 14 bits
stored, half JPEG 2000 Lossless and half uncompressed (made from synthetic mammograms), at
``--full-field-size`` (default 1536): raw decode per codec, read_mammogram, prepare --workers 1, the
Beam DirectRunner with 1 worker on K and 2K images (its marginal rate is the per-worker rate) and
with 2 workers; and the PROJECTED wall time for 832,390 such images (the paper's data set) on 1, 8
and 64 workers: images / (per-worker rate x workers), i.e. assuming linear scaling and the same
JPEG 2000 / uncompressed mix, no I/O or shuffle limit: a projection, not a measurement.

Writes benchmarks/out/ingest.json and prints a markdown table with wall-clock and CPU seconds
(this process plus its worker processes, and this process alone: with 2 workers it only writes
the TFRecords, so its share shows whether the parent is the bottleneck); the machine's load average
is recorded: on a shared machine wall-clock rates are indicative only, images per CPU-second less
so, and 2 workers can only beat 1 when a second core is actually free. (The Beam DirectRunner's
worker processes are not children reaped by this process: their CPU is not in the CPU columns.)

Usage: .venv/bin/python benchmarks/ingest.py [--images 24] [--height 2048 --width 1664] [--size 1536]
       [--scale 4] [--full-field 4] [--no-beam]
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


PAPER_IMAGES = 832_390
BEAM_OPTIONS = {1: ["--direct_num_workers", "1"],
                2: ["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"]}


def _written(summary: dict) -> int:
    return sum(n for split in summary["images_written"].values() for n in split.values())


def _prepare(table: str, root: str, out: str, size: int, workers: int, beam: bool) -> tuple[_Timer, dict]:
    """Times one prepare: local processes (`workers`) or the Beam DirectRunner with `workers` workers."""
    from keras_hourglass.data.prepare import PrepareConfig, prepare

    config = PrepareConfig(annotations=[table], images_root=root, out=out, size=size, salt="bench", quiet=True,
                           workers=1 if beam else workers, runner="DirectRunner" if beam else None,
                           beam_options=BEAM_OPTIONS[workers] if beam else [])
    with _Timer() as timer:
        summary = prepare(config)
        _fresh_workers()
    return timer, summary


def _full_field(work: str, count: int, seed: int) -> tuple[str, str, dict[str, list[str]]]:
    """Writes `count` 4096 x 3328, 14-bit mammograms (half JPEG 2000 Lossless, half uncompressed).

    Returns: (annotation table, images root, {"jpeg2000": files, "uncompressed": files}).
    """
    import numpy as np
    import pydicom
    from pydicom.uid import JPEG2000Lossless

    from keras_hourglass.data.synthetic import SynthConfig, generate_dataset

    source = os.path.join(work, "ff_source")
    generate_dataset(source, SynthConfig(num_images=max(1, (count + 1) // 2), seed=seed, height=4096, width=3328,
                                         malignant_rate=0.3, benign_rate=0.3))
    with open(os.path.join(source, "annotations.csv"), newline="") as handle:
        rows = list(csv.DictReader(handle))
    root = os.path.join(work, "ff")
    files: dict[str, list[str]] = {"jpeg2000": [], "uncompressed": []}
    out_rows = []
    by_image: dict[str, list[dict]] = {}
    for row in rows:
        by_image.setdefault(row["image_path"], []).append(row)
    for number in range(count):
        image_path = sorted(by_image)[(number // 2) % len(by_image)]
        codec = "jpeg2000" if number % 2 == 0 else "uncompressed"
        ds = pydicom.dcmread(os.path.join(source, image_path))
        stored = ds.pixel_array.astype(np.float64)
        stored = np.round(stored / max(1.0, stored.max()) * (2**14 - 1)).astype(np.uint16)
        for keyword in ("WindowCenter", "WindowWidth", "VOILUTSequence", "VOILUTFunction",
                        "WindowCenterWidthExplanation"):
            if keyword in ds:
                delattr(ds, keyword)
        ds.set_pixel_data(stored, ds.PhotometricInterpretation, 14)
        if codec == "jpeg2000":
            ds.compress(JPEG2000Lossless, generate_instance_uid=False)
        relative = f"{codec}/ff{number:03d}.dcm"
        os.makedirs(os.path.join(root, codec), exist_ok=True)
        ds.save_as(os.path.join(root, relative), enforce_file_format=True)
        files[codec].append(os.path.join(root, relative))
        for row in by_image[image_path]:
            out_rows.append(dict(row, image_path=relative, patient_id=f"{row['patient_id']}-ff{number}",
                                 study_id=f"{row['study_id']}.ff{number}"))
    table = os.path.join(root, "annotations.csv")
    with open(table, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(out_rows)
    return table, root, files


def _full_field_rows(work: str, count: int, size: int, seed: int, beam: bool) -> dict:
    """The full-field rows, their ratios and the projection (see the module docstring)."""
    import pydicom

    from keras_hourglass.data.dicom import read_mammogram

    table, root, files = _full_field(work, count, seed)
    every = sorted(files["jpeg2000"] + files["uncompressed"])
    rows: dict[str, dict] = {}

    def row(key: str, what: str, images: int, timer: _Timer) -> None:
        rows[key] = {"what": what, "images": images, "seconds": round(timer.wall, 3),
                     "images_per_second": _rate(images, timer.wall), "cpu_seconds": round(timer.cpu, 3),
                     "images_per_cpu_second": _rate(images, timer.cpu)}

    for path in every:  # untimed warm-up, as for the small rows
        pydicom.dcmread(path).pixel_array  # noqa: B018
    with _Timer() as timer:
        for path in every:
            pydicom.dcmread(path).pixel_array  # noqa: B018
    row("ff_pydicom_raw", "full field: pydicom dcmread + pixel_array (mix)", len(every), timer)
    for codec, paths in files.items():
        with _Timer() as timer:
            for path in paths:
                pydicom.dcmread(path).pixel_array  # noqa: B018
        row(f"ff_pydicom_raw_{codec}", f"full field: pydicom decode, {codec} only", len(paths), timer)
    with _Timer() as timer:
        for path in every:
            read_mammogram(path, long_side=size)
    row("ff_read_mammogram", f"full field: read_mammogram -> {size} px (mix)", len(every), timer)
    timer, summary = _prepare(table, root, os.path.join(work, "ff_prep_w1"), size, 1, beam=False)
    row("ff_prepare_w1", "full field: hourglass prepare --workers 1", _written(summary), timer)
    if beam:
        timer, summary = _prepare(table, root, os.path.join(work, "ff_beam_w1"), size, 1, beam=True)
        row("ff_beam_w1", "full field: prepare --runner DirectRunner, 1 worker", _written(summary), timer)
        timer, summary = _prepare(table, root, os.path.join(work, "ff_beam_w2"), size, 2, beam=True)
        row("ff_beam_w2", "full field: prepare --runner DirectRunner, 2 workers", _written(summary), timer)
        big_table, _ = _replicate(root, os.path.join(work, "ff_big"), 2)
        timer, summary = _prepare(big_table, os.path.join(work, "ff_big"), os.path.join(work, "ff_beam_w1_x2"), size,
                                  1, beam=True)
        row("ff_beam_w1_x2", "full field: prepare --runner DirectRunner, 1 worker, 2x the files",
            _written(summary), timer)
        small, large = rows["ff_beam_w1"], rows["ff_beam_w1_x2"]
        extra, dt = large["images"] - small["images"], large["seconds"] - small["seconds"]
        rows["ff_beam_w1_marginal"] = {
            "what": f"full field: DirectRunner 1 worker, marginal rate ({small['images']} -> {large['images']})",
            "images": extra, "seconds": round(dt, 3), "images_per_second": _rate(extra, dt),
            "cpu_seconds": round(large["cpu_seconds"] - small["cpu_seconds"], 3),
            "images_per_cpu_second": _rate(extra, large["cpu_seconds"] - small["cpu_seconds"])}
    raw = rows["ff_pydicom_raw"]["images_per_second"]
    ratios = {key: round(r["images_per_second"] / raw, 3) for key, r in rows.items()
              if key.startswith(("ff_prepare", "ff_beam", "ff_read")) and not key.endswith("_x2")}
    raw_cpu = rows["ff_pydicom_raw"]["images_per_cpu_second"]
    cpu_ratios = {key: round(r["images_per_cpu_second"] / raw_cpu, 3) for key, r in rows.items()
                  if key in ratios}
    projection = None
    if beam:
        # One worker = one core: the per-worker rate is images per CPU-second (the in-process DirectRunner
        # may overlap two bundles on two cores, so its wall-clock rate would overstate one worker).
        marginal = rows["ff_beam_w1_marginal"]["images_per_cpu_second"]
        per_worker = marginal if 0 < marginal < float("inf") else rows["ff_beam_w1"]["images_per_cpu_second"]
        projection = {
            "what": f"PROJECTION for {PAPER_IMAGES:,} full-field images: images / (per-worker rate x workers); "
                    "one worker = one core at the measured images per CPU-second; assumes linear scaling, this "
                    "JPEG 2000 / uncompressed mix, no I/O or shuffle limit",
            "per_worker_images_per_second": per_worker,
            "source": ("ff_beam_w1_marginal" if per_worker == marginal else "ff_beam_w1") + " (images/CPU-s)",
            "hours": {str(w): round(PAPER_IMAGES / (per_worker * w) / 3600, 1) for w in (1, 8, 64)}}
    return {"rows": rows, "ratios_to_raw_decode": ratios, "cpu_ratios_to_raw_decode": cpu_ratios,
            "projection": projection,
            "size": [4096, 3328], "bits_stored": 14, "long_side": size}


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
    parser.add_argument("--full-field", type=int, default=4, metavar="K",
                        help="full-field 4096x3328 14-bit images (half JPEG 2000; 0: no full-field rows)")
    parser.add_argument("--full-field-size", type=int, default=1536)
    parser.add_argument("--no-beam", action="store_true", help="skip the Beam DirectRunner rows")
    parser.add_argument("--out", default=os.path.join(HERE, "out", "ingest.json"))
    parser.add_argument("--keep", action="store_true", help="keep the temporary data")
    args = parser.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import pydicom
    import tensorflow  # noqa: F401  imported before timing (prepare's parent needs it)

    from keras_hourglass.data.dicom import read_mammogram
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
        beam = not args.no_beam
        table_small = os.path.join(synth, "annotations.csv")
        for workers in (1, 2):
            for kind in ("prepare", "beam") if beam else ("prepare",):
                timer, summary = _prepare(table_small, synth, os.path.join(work, f"{kind}_w{workers}"), args.size,
                                          workers, beam=kind == "beam")
                results[f"{kind}_w{workers}"] = timer
                written[f"{kind}{workers}"] = _written(summary)
                results[f"examples_hash_{kind}_w{workers}"] = summary["examples_hash"]

        if args.scale > 1:
            big_table, big_files = _replicate(synth, os.path.join(work, "big"), args.scale)
            with _Timer() as timer:
                for path in big_files:
                    pydicom.dcmread(path).pixel_array  # noqa: B018
            results["pydicom_raw_big"] = timer
            for workers in (1, 2):
                for kind in ("prepare", "beam") if beam else ("prepare",):
                    timer, summary = _prepare(big_table, os.path.join(work, "big"),
                                              os.path.join(work, f"{kind}_big_w{workers}"), args.size, workers,
                                              beam=kind == "beam")
                    results[f"{kind}_w{workers}_big"] = timer
                    written[f"big{kind}{workers}"] = _written(summary)
                    results[f"examples_hash_big_{kind}_w{workers}"] = summary["examples_hash"]
        full_field = (_full_field_rows(work, args.full_field, args.full_field_size, args.seed, beam)
                      if args.full_field > 0 else None)
        startup = _worker_startup(2)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    n = len(files)
    table = {
        "pydicom_raw": {"what": "pydicom dcmread + pixel_array (1 process)", "images": n},
        "read_mammogram": {"what": "read_mammogram: decode + VOI + orient + resize (1 process)", "images": n},
    }
    kinds = ("prepare", "beam") if beam else ("prepare",)
    labels = {("prepare", 1): "hourglass prepare, --workers 1 (end to end)",
              ("prepare", 2): "hourglass prepare, --workers 2 (end to end, worker start-up included)",
              ("beam", 1): "prepare --runner DirectRunner, 1 worker (in process)",
              ("beam", 2): "prepare --runner DirectRunner, 2 workers (multi_processing, start-up included)"}
    for workers in (1, 2):
        for kind in kinds:
            table[f"{kind}_w{workers}"] = {"what": labels[(kind, workers)], "images": written[f"{kind}{workers}"]}
    big = n * args.scale if args.scale > 1 else 0
    if big:
        table[f"pydicom_raw_x{args.scale}"] = {"what": f"pydicom dcmread + pixel_array, {args.scale}x the files",
                                               "images": len(big_files), "key": "pydicom_raw_big"}
        for workers in (1, 2):
            for kind in kinds:
                table[f"{kind}_w{workers}_x{args.scale}"] = {
                    "what": f"{labels[(kind, workers)].split(' (')[0]}, {args.scale}x the files (start-up included)",
                    "images": written[f"big{kind}{workers}"], "key": f"{kind}_w{workers}_big"}
    for key, row in table.items():
        timer = results[row.pop("key", key)]
        row["seconds"] = round(timer.wall, 3)
        row["images_per_second"] = _rate(row["images"], timer.wall)
        row["cpu_seconds"] = round(timer.cpu, 3)
        row["images_per_cpu_second"] = _rate(row["images"], timer.cpu)
        row["parent_cpu_seconds"] = round(timer.parent_cpu, 3)  # this process alone (with 2 workers: the writer)
    if big:
        for workers in (1, 2):
            for kind in kinds:
                small, large = table[f"{kind}_w{workers}"], table[f"{kind}_w{workers}_x{args.scale}"]
                extra, dt = large["images"] - small["images"], large["seconds"] - small["seconds"]
                table[f"{kind}_w{workers}_marginal"] = {
                    "what": f"{labels[(kind, workers)].split(' (')[0]}, marginal rate ({small['images']} -> "
                            f"{large['images']} images: start-up and fixed costs excluded)",
                    "images": extra, "seconds": round(dt, 3), "images_per_second": _rate(extra, dt),
                    "cpu_seconds": round(large["cpu_seconds"] - small["cpu_seconds"], 3),
                    "images_per_cpu_second": _rate(extra, large["cpu_seconds"] - small["cpu_seconds"])}
    raw_rate = table["pydicom_raw"]["images_per_second"]
    ratios = {key: round(row["images_per_second"] / raw_rate, 3) for key, row in table.items()
              if key.startswith(("prepare", "beam")) and not key.endswith(f"_x{args.scale}")}
    if big:
        raw_big = table[f"pydicom_raw_x{args.scale}"]["images_per_second"]
        for workers in (1, 2):
            for kind in kinds:
                ratios[f"{kind}_w{workers}_x{args.scale}"] = round(
                    table[f"{kind}_w{workers}_x{args.scale}"]["images_per_second"] / raw_big, 3)
    raw_cpu = table["pydicom_raw"]["images_per_cpu_second"]
    cpu_ratios = {key: round(row["images_per_cpu_second"] / raw_cpu, 3) for key, row in table.items()
                  if key.startswith(("prepare", "beam")) and not key.endswith(f"_x{args.scale}")}
    if big:
        raw_big_cpu = table[f"pydicom_raw_x{args.scale}"]["images_per_cpu_second"]
        for key in list(cpu_ratios):
            if key.endswith("_marginal"):
                cpu_ratios[key] = round(table[key]["images_per_cpu_second"] / raw_big_cpu, 3)
    hashes = {k: v for k, v in results.items() if k.startswith("examples_hash")}
    result = {
        "benchmark": "ingest",
        "images": n,
        "original_size": [args.height, args.width],
        "training_long_side": args.size,
        "synth_seconds": round(synth_seconds, 2),
        "results": table,
        "scale": args.scale,
        "ratios_to_raw_decode": ratios,
        "cpu_ratios_to_raw_decode": cpu_ratios,
        "worker_startup_seconds_2_workers": None if startup is None else round(startup, 3),
        "same_records_all_runs": len({v for k, v in hashes.items() if "_big_" not in k}) == 1,
        "same_records_all_runs_large": len({v for k, v in hashes.items() if "_big_" in k}) == 1 if big else None,
        "full_field": full_field,
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
    print("per CPU-second (images/CPU-s over raw decode's; marginal rows against the larger run's raw decode): "
          + ", ".join(f"{k} {v}" for k, v in cpu_ratios.items()))
    print(f"worker start-up (fresh interpreter, 2 workers, one empty task each): "
          f"{result['worker_startup_seconds_2_workers']} s")
    print(f"same records (examples_hash) on every path and worker count: {result['same_records_all_runs']} "
          f"(larger run: {result['same_records_all_runs_large']}); written to {args.out}")
    if full_field:
        print(f"\nfull field: {full_field['size'][0]}x{full_field['size'][1]}, {full_field['bits_stored']} bits -> "
              f"{full_field['long_side']} px\n")
        print("| stage | images | wall s | images/s | CPU s | images/CPU-s |")
        print("|---|---:|---:|---:|---:|---:|")
        for row in full_field["rows"].values():
            print(f"| {row['what']} | {row['images']} | {row['seconds']} | {row['images_per_second']} | "
                  f"{row['cpu_seconds']} | {row['images_per_cpu_second']} |")
        print("\nfull-field ratios to raw decode (mix): "
              + ", ".join(f"{k} {v}" for k, v in full_field["ratios_to_raw_decode"].items()))
        print("full-field per CPU-second: " + ", ".join(f"{k} {v}" for k, v in full_field["cpu_ratios_to_raw_decode"].items()))
        if full_field["projection"]:
            projection = full_field["projection"]
            print(f"{projection['what']}: per worker {projection['per_worker_images_per_second']} img/s -> "
                  + ", ".join(f"{w} workers {h} h" for w, h in projection["hours"].items()))
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
