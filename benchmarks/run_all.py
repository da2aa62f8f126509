"""`make bench`: runs every benchmark in its own subprocess (with a timeout, so one failure or hang
does not stop the rest), collects their JSON into benchmarks/results.json and writes BENCHMARKS.md.

Benchmarks (each writes benchmarks/out/<name>.json):

- loss_step.py (the loss engineer's): the loss alone vs the naive per-box loop (vectorisation);
- bench_serving.py: serving_default signature / raw model call at 512 and 1536 px;
- bench_memory.py: peak RSS of tiny training at 1536 px, batch 1 and 2, and float32 vs bfloat16;
- ingest.py (the data engineer's): prepare (local, and Beam's DirectRunner) with 1 and 2 workers / pydicom
  decode alone; full-field 4096x3328 14-bit rows and the projected wall time for the paper's 832,390 images;
- bench_pipeline.py: tf.data images/s / train-step images/s, patch and full phase;
- bench_xla.py: loss overhead over MSE (tiny, small; jit on/off) and the XLA modes.

BENCHMARKS.md is rewritten after each benchmark, so an interrupted run still leaves a table.

Usage: .venv/bin/python benchmarks/run_all.py [--quick] [--only NAME ...]
(--only reruns those benchmarks and keeps the other entries of the previous results.json)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
OUT = os.path.join(HERE, "out")
PY = ".venv/bin/python"

# name -> (script, full args, quick args, timeout full s, timeout quick s)
BENCHMARKS = {
    "loss_step": ("loss_step.py", ["--skip-train", "--sizes", "256", "512", "--repeats", "10"],
                  ["--skip-train", "--sizes", "128", "--repeats", "3"], 180, 120),
    "serving": ("bench_serving.py", [], ["--quick"], 240, 180),
    "memory": ("bench_memory.py", [], ["--quick"], 600, 420),
    "ingest": ("ingest.py", ["--images", "32", "--height", "1280", "--width", "1024", "--size", "768",
                             "--full-field", "4"],
               ["--images", "4", "--height", "640", "--width", "512", "--size", "256", "--full-field", "2",
                "--full-field-size", "512"], 1200, 600),
    "pipeline": ("bench_pipeline.py", [], ["--quick"], 360, 300),
    "xla": ("bench_xla.py", [], ["--quick"], 480, 420),
    "threads": ("bench_threads.py", [], ["--quick"], 600, 420),
}


# ------------------------------------------------------------------ adapters for others' JSON
def _figure(**kw) -> dict:
    sys.path.insert(0, HERE)
    import common

    return common.figure(**kw)


def figures_from_loss_step(data: dict, command: str) -> list[dict]:
    """Vectorisation: naive per-box reference (value only) / the loss (value + gradient)."""
    rows = [r for r in data.get("results", []) if r.get("kind") == "loss_alone"]
    figures = []
    for size in sorted({r["size"] for r in rows}):
        at = {r["loss"]: r for r in rows if r["size"] == size}
        naive = next((r for name, r in at.items() if name.startswith("naive")), None)
        ours = at.get("hypersensitive (XLA matching)")
        if naive and ours:
            batch = ours["batch"]
            figures.append(_figure(
                name=f"loss vectorisation, {size} px input (heatmap {ours['heatmap']}), batch {batch}",
                ratio=naive["seconds"] / ours["seconds"], target=20.0, op=">=",
                numerator=f"naive per-box loop {naive['seconds'] * 1e3:.1f} ms (value only)",
                denominator=f"HypersensitiveLoss {ours['seconds'] * 1e3:.2f} ms (value + gradient)",
                command=command, note="loss default (XLA matching); the naive figure is a lower bound"))
    return figures


def figures_from_ingest(data: dict, command: str) -> list[dict]:
    """Ingest: prepare images/s (local and Beam DirectRunner, 1 and 2 workers) / pydicom decode-only images/s
    on the same files; the full-field rows; the projection for the paper's data set (report only)."""
    results = data.get("results", {})
    raw = results.get("pydicom_raw")
    scale = data.get("scale")
    figures = []
    what = f"({data.get('images')} images {data.get('original_size')} -> {data.get('training_long_side')} px)"
    for kind, label in (("prepare", "prepare --workers {w}"), ("beam", "prepare --runner DirectRunner, {w} worker(s)")):
        for workers in (1, 2):
            ours = results.get(f"{kind}_w{workers}")
            if not (raw and ours and raw.get("images_per_second")):
                continue
            marginal = results.get(f"{kind}_w{workers}_marginal")
            big_raw = results.get(f"pydicom_raw_x{scale}")
            note = "prepare also resizes, encodes PNG16, writes TFRecords"
            cpu = data.get("cpu_ratios_to_raw_decode", {})
            if f"{kind}_w{workers}" in cpu:
                note += (f"; per CPU-second {cpu[f'{kind}_w{workers}']}"
                         + (f", marginal {cpu[f'{kind}_w{workers}_marginal']}" if f"{kind}_w{workers}_marginal" in cpu
                            else ""))
            note += "; worker start-up included" if workers == 2 or kind == "beam" else ""
            if marginal and big_raw and big_raw.get("images_per_second"):
                note += (f"; marginal rate (start-up excluded) {marginal['images_per_second']} img/s = "
                         f"{marginal['images_per_second'] / big_raw['images_per_second']:.3f} of raw decode")
            figures.append(_figure(
                name=f"ingest, {label.format(w=workers)} / pydicom decode alone {what}",
                ratio=ours["images_per_second"] / raw["images_per_second"],
                target=0.8 * (workers if kind == "beam" else 1), op=">=",
                numerator=f"{kind} {ours['images_per_second']} img/s ({ours['seconds']} s)",
                denominator=f"dcmread+pixel_array {raw['images_per_second']} img/s ({raw['seconds']} s)",
                command=command, note=note))
    full = data.get("full_field") or {}
    rows = full.get("rows", {})
    ff_raw = rows.get("ff_pydicom_raw")
    for key in ("ff_prepare_w1", "ff_beam_w1", "ff_beam_w2"):
        ours = rows.get(key)
        if not (ours and ff_raw and ff_raw.get("images_per_second")):
            continue
        codecs = ", ".join(f"{c} {rows[f'ff_pydicom_raw_{c}']['images_per_second']} img/s"
                           for c in ("jpeg2000", "uncompressed") if f"ff_pydicom_raw_{c}" in rows)
        figures.append(_figure(
            name=f"ingest full field ({ff_raw['images']} images 4096x3328, 14 bit, half JPEG 2000 -> "
                 f"{full.get('long_side')} px), {ours['what'].split(': ', 1)[1]} / pydicom decode alone",
            ratio=ours["images_per_second"] / ff_raw["images_per_second"],
            target=0.8 * (2 if key.endswith("w2") else 1), op=">=",
            numerator=f"{ours['images_per_second']} img/s ({ours['seconds']} s)",
            denominator=f"dcmread+pixel_array {ff_raw['images_per_second']} img/s ({codecs})",
            command=command, note="start-up included" + (
                f"; per CPU-second {full['cpu_ratios_to_raw_decode'][key]}"
                if key in full.get("cpu_ratios_to_raw_decode", {}) else "")))
    projection = full.get("projection")
    if projection:
        hours = projection["hours"]
        figures.append(_figure(
            name="PROJECTION: wall time for the paper's 832,390 full-field images, 1 / 8 / 64 workers",
            ratio=None, target=None, op="",
            numerator=f"{hours['1']} h / {hours['8']} h / {hours['64']} h",
            denominator=f"per-worker rate {projection['per_worker_images_per_second']} img/s ({projection['source']})",
            command=command, note="a projection, not a measurement: linear scaling, same codec mix, no I/O limit"))
    return figures


# --------------------------------------------------------------------------------- running
def run_one(name: str, quick: bool) -> dict:
    script, full, quick_args, timeout_full, timeout_quick = BENCHMARKS[name]
    out = os.path.join(OUT, f"{name}.json")
    flags = list(quick_args if quick else full)
    argv = [*flags, "--out", out]
    command = " ".join([PY, f"benchmarks/{script}", *flags])
    timeout = timeout_quick if quick else timeout_full
    if os.path.exists(out):
        os.remove(out)
    started = time.perf_counter()
    entry = {"name": name, "command": command, "timeout_s": timeout}
    try:
        proc = subprocess.run([sys.executable, os.path.join(HERE, script), *argv], cwd=REPO, capture_output=True,
                              text=True, timeout=timeout, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        entry["exit"] = proc.returncode
        entry["stderr_tail"] = proc.stderr[-1500:] if proc.returncode else ""
    except subprocess.TimeoutExpired:
        entry["exit"] = "timeout"
    entry["seconds"] = round(time.perf_counter() - started, 1)
    data = None
    if os.path.exists(out):
        with open(out) as handle:
            data = json.load(handle)
    if data is None:
        entry["status"] = f"no result ({'timeout after %d s' % timeout if entry['exit'] == 'timeout' else 'exit %s' % entry['exit']})"
        entry["figures"] = []
        return entry
    entry["status"] = "ok" if entry["exit"] == 0 else f"exit {entry['exit']} (partial)"
    if name == "loss_step":
        entry["figures"] = figures_from_loss_step(data, command)
    elif name == "ingest":
        entry["figures"] = figures_from_ingest(data, command)
    else:
        entry["figures"] = data.get("figures", [])
        for f in entry["figures"]:
            f["command"] = command
    entry["result"] = data
    return entry


def xla_decision(entries: list[dict]) -> str:
    """The recommended XLA mode from bench_xla's timings, with the reason.

    Rule: the mode with the lowest geometric mean, over the model sizes, of its step time relative to
    the fastest mode at that size; a mode within 5 % of the best counts as a tie, and a tie keeps the
    shipped CPU default (loss-only XLA: Keras' jit_compile="auto" is off on CPU-only machines and
    under tf.distribute, and HypersensitiveLoss runs its matching under XLA by default).
    """
    import math

    xla = next((e for e in entries if e["name"] == "xla" and e["figures"]), None)
    if xla is None:
        return "Not measured in this run (bench_xla did not finish): no change to the default."
    timings = xla["result"]["details"]["timings"]
    names = {"hs_step": "whole step (model jit_compile=True)",
             "hs_loss": "loss only (model jit off, HypersensitiveLoss XLA matching: the shipped CPU default)",
             "hs_none": "none (model jit off, HypersensitiveLoss(jit_compile=False))"}
    lines, scores = [], {k: [] for k in names}
    for preset, t in timings.items():
        med = {k: t[k]["median_s"] for k in names}
        best = min(med.values())
        for k in names:
            scores[k].append(med[k] / best)
        short = {"hs_step": "whole step", "hs_loss": "loss only", "hs_none": "none"}
        lines.append(f"- {preset}: " + "; ".join(f"{short[k]} {med[k] * 1e3:.1f} ms" for k in names)
                     + f" -> fastest: {short[min(med, key=med.get)]}")
    geo = {k: math.exp(sum(math.log(v) for v in vs) / len(vs)) for k, vs in scores.items()}
    best = min(geo, key=geo.get)
    choice = "hs_loss" if geo["hs_loss"] <= geo[best] * 1.05 else best
    lines.append("")
    lines.append("Geometric mean of step time / fastest mode over the model sizes: "
                 + ", ".join(f"{names[k].split(' (')[0]} {v:.3f}" for k, v in geo.items()) + ".")
    lines.append("")
    lines.append(f"**Default: {names[choice]}.** " + (
        "It is the fastest overall or within 5 % of it, so the shipped default stays. Whole-step XLA helps "
        "where the loss is a larger share of the step (tiny model) and costs where convolutions dominate "
        "(XLA's CPU convolutions vs oneDNN's), so it is not worth forcing on CPU; "
        if choice == "hs_loss" else "It beats the shipped loss-only default by more than 5 %: change the default; ")
        + "Keras' jit_compile='auto' (what `hourglass train` uses unless told) turns whole-step XLA on only on "
        "GPU machines without tf.distribute, which this CPU-only run cannot measure. The exported SavedModel "
        "never uses XLA (TF Serving disables it). This machine is shared: differences under ~10 % are noise.")
    return "\n".join(lines)


def write_markdown(entries: list[dict], quick: bool, started_at: str, path: str) -> None:
    sys.path.insert(0, HERE)
    import common

    lines = ["# Benchmarks", "",
             f"Generated by `make bench` (`benchmarks/run_all.py{' --quick' if quick else ''}`) at {started_at} UTC "
             f"on {json.dumps({k: v for k, v in common.machine().items() if k != 'load_average_1m'})} "
             "(the 1-minute load average at the end of each benchmark is in the Runs table).", "",
             "Every figure is a ratio of two timings taken in the same process run (medians after warm-up; "
             "interleaved where marked in results.json), with both absolute values beside it. The machine is a "
             "shared 2-core CPU box with other jobs running: absolute times are noisy, ratios less so. "
             "Targets are ours, to beat.", "",
             "| figure | ratio | target | met | numerator | denominator | reproduce |",
             "|---|---:|---:|:---:|---|---|---|"]
    for e in entries:
        if not e["figures"]:
            lines.append(f"| {e['name']}: {e['status']} | - | - | - | - | - | `{e['command']}` |")
        for f in e["figures"]:
            met = {True: "yes", False: "**no**", None: "n/a"}[f["met"]]
            target = f"{f['op']} {f['target']}" if f["target"] is not None else "report"
            note = f" ({f['note']})" if f.get("note") else ""
            lines.append(f"| {f['name']}{note} | {f['ratio']} | {target} | {met} | {f['numerator']} | "
                         f"{f['denominator']} | `{f['command']}` |")
    targeted = [f for e in entries for f in e["figures"] if f["met"] is not None]
    missed = [f["name"] for f in targeted if not f["met"]]
    lines += ["", f"Targets met: {len(targeted) - len(missed)} of {len(targeted)}."
              + (" Not met: " + "; ".join(missed) + "." if missed else "")]
    lines += ["", "## XLA: whole-step jit_compile vs XLA on the loss only vs none", "", xla_decision(entries), "",
              "## Runs", "", "| benchmark | status | seconds | load average (1 min) |", "|---|---|---:|---:|"]
    for e in entries:
        result = e.get("result") or {}
        load = (result.get("machine") or {}).get("load_average_1m", result.get("load_average_1m_at_end", ""))
        lines.append(f"| {e['name']} | {e['status']} | {e['seconds']} | {load} |")
    lines += ["", "Raw results: benchmarks/results.json (per-benchmark JSON in benchmarks/out/)."]
    # The detection-quality tables (`make quality*`) and the head-initialisation diagnosis
    # (`benchmarks/init_diagnosis.py`) and the re-centring diagnosis (`benchmarks/recenter_diagnosis.py`)
    # are kept beside this file and carried over verbatim.
    import glob

    tables = (sorted(glob.glob(os.path.join(HERE, "quality-*.md"))) + sorted(glob.glob(os.path.join(HERE, "init-*.md")))
              + sorted(glob.glob(os.path.join(HERE, "recenter-*.md"))))
    for table in tables:
        with open(table, encoding="utf-8") as handle:
            lines += ["", handle.read().rstrip()]
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (smaller sizes, fewer repetitions)")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), default=None)
    parser.add_argument("--results", default=os.path.join(HERE, "results.json"))
    parser.add_argument("--markdown", default=os.path.join(REPO, "BENCHMARKS.md"))
    parser.add_argument("--render-only", action="store_true", help="rewrite BENCHMARKS.md from results.json")
    args = parser.parse_args(argv)
    if args.render_only:
        with open(args.results) as handle:
            previous = json.load(handle)
        write_markdown(previous["benchmarks"], previous["quick"], previous["started_at_utc"], args.markdown)
        print(f"wrote {args.markdown}")
        return 0
    os.makedirs(OUT, exist_ok=True)
    started_at = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    entries = []
    if args.only and os.path.exists(args.results):
        # Rerunning some benchmarks: keep the other entries of the previous run (same mode only).
        with open(args.results) as handle:
            previous = json.load(handle)
        if previous.get("quick") == args.quick:
            entries = [e for e in previous["benchmarks"] if e["name"] in BENCHMARKS]
            started_at = previous.get("started_at_utc", started_at) + f" (rerun of {', '.join(args.only)} at " \
                f"{datetime.datetime.now(datetime.timezone.utc).strftime('%H:%M')})"
    for name in args.only or list(BENCHMARKS):
        print(f"== {name}", flush=True)
        entry = run_one(name, args.quick)
        entries = [e for e in entries if e["name"] != name]
        entries.append(entry)
        entries.sort(key=lambda e: list(BENCHMARKS).index(e["name"]))
        print(f"   {entry['status']} in {entry['seconds']} s", flush=True)
        for f in entry["figures"]:
            print(f"   {f['name']}: {f['ratio']} (target {f['op']} {f['target']}, met {f['met']})", flush=True)
        with open(args.results, "w") as handle:
            json.dump({"quick": args.quick, "started_at_utc": started_at, "benchmarks": entries}, handle, indent=2,
                      default=float)
        write_markdown(entries, args.quick, started_at, args.markdown)
    failed = [e["name"] for e in entries if e["status"] != "ok"]
    print(f"wrote {args.results} and {args.markdown}; not ok: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
