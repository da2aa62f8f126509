"""Tuned against tuned (`python benchmarks/quality.py tuned`, `make quality-tuned`).

The comparison a user makes: every loss tuned over its own settings with the same trial budget, then
its best values trained and tested like the main table. For each loss (hypersensitive: omega, top_k,
sigmas, learning rate; L2 and focal: target sigma, learning rate; `hourglass tune --loss`):

1. `hourglass tune --loss X` on the main table's data: `--max-trials` random trials (default 6), each
   trained with the main table's budget (--patch-epochs, --full-epochs, --steps-per-epoch, --batch-size)
   and scored on the val split (val sensitivity at 4.8 FPI on --val-images images); search seed 0.
2. The best trial's values (`best_hyperparameters.json`, chosen on validation only) trained again with
   `hourglass train --hparams` for each seed and evaluated once on the test split (`quality.run_one`:
   the main table's evaluation and records; the same values, budget and seed give the trial's weights).
   Scored with best.keras: a trial is ranked by its best epoch on validation (`tuning.objective`), so
   its values are tested with the epoch chosen the same way; the last epoch's weights are scored
   beside it (`final_summary`), which separates the tuned values' gain from the checkpoint choice's.

Resumable: `hourglass tune` keeps its finished trials; a search is keyed by its flags (all but
`--max-trials`: a larger one extends the search, whose seeded random sequence begins with the same trials), the data and the
loss's behaviour fingerprint (`quality.behaviour_fingerprint`; another behaviour starts it over) at its
TensorFlow thread count (`--threads` when it started; a search resumes with its own). `--jobs` processes
run at a time: the searches first, and a loss's seeds as soon as its own search has ended. The
best values are copied to `runs/tuned/<loss>-best-<hash>.json`, named by their content, so a search that
grows past a new best retrains the seeds. Outputs: runs/tuned/<loss>-search/ (the tune directory),
the seeds' runs and records, quality-tuned.{json,md}.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time

import quality

TABLE = "tuned"
LOSSES = ("hypersensitive", "l2", "focal")
#: 6 trials per loss: three searches and nine retrains fit one 3-hour session on our 2-core machines
#: (about 10 min a trial with two at a time); `--max-trials 12` extends a finished search.
DEFAULT_TRIALS = 6


def tune_flags(args, loss: str) -> list[str]:
    """Returns: the `hourglass tune` flags of a loss's search (after --data / --out).

    --quick validates on every val image: its 8 would hold no malignant finding, and the objective would
    be undefined.
    """
    return ["--loss", loss, "--tuner", "random", "--max-trials", str(args.max_trials), "--patch-epochs",
            str(args.patch_epochs), "--full-epochs", str(args.full_epochs), "--steps-per-epoch",
            str(args.steps_per_epoch), "--batch-size", str(args.batch_size),
            *([] if args.quick else ["--val-images", str(args.val_images)]), "--seed", "0"]


def search_key(flags: list[str]) -> list[str]:
    """Returns: a search's flags without `--max-trials N`, which extends a search rather than changing it."""
    key = list(flags)
    if "--max-trials" in key:
        at = key.index("--max-trials")
        del key[at:at + 2]
    return key


def comparable_stamp(stamp: dict) -> dict:
    """Returns: a search's stamp as it is compared (its flags through `search_key`)."""
    return {**stamp, "tune_flags": search_key(stamp.get("tune_flags", []))}


def best_values_file(base: str, loss: str, best_path: str) -> str:
    """Copies a search's best_hyperparameters.json to `<loss>-best-<hash of its content>.json`.

    Returns:
        The copy's path (the `--hparams` of the seeds' training runs).
    """
    with open(best_path, encoding="utf-8") as handle:
        best = json.load(handle)
    digest = hashlib.sha256(json.dumps(best, sort_keys=True).encode()).hexdigest()[:8]
    path = os.path.join(base, f"{loss}-best-{digest}.json")
    if not os.path.exists(path):
        quality.write_json(path, best)
    return path


def search_threads(args, out: str, prep: str, loss: str, stamp: dict | None, flags: list[str],
                   data_hash: str | None) -> int | None:
    """Returns: the TensorFlow threads a search runs with: a current search's own (a search never mixes
    thread counts, which change floating-point sums), else `args.threads` (a new search)."""
    if stamp and search_key(stamp.get("tune_flags", [])) == search_key(flags) and stamp.get("data_hash") == data_hash:
        threads = stamp.get("threads")  # absent: TensorFlow's default (searches made before the setting)
        if stamp.get("behaviour") == quality.behaviour_fingerprint(out, prep, ["--loss", loss], threads=threads):
            return threads
    return args.threads


def run_search(args, out: str, prep: str, loss: str) -> dict | None:
    """Runs (or resumes) one loss's search.

    Returns:
        {"hparams": the best values' file, "values", "trials": completed trials, "objective", "threads"},
        or None (not searched yet and render-only, or no trial completed).
    """
    base = os.path.join(out, "runs", TABLE)
    search_dir = os.path.join(base, f"{loss}-search")
    flags = tune_flags(args, loss)
    stamp_path = os.path.join(base, f"{loss}-search.stamp.json")
    stamp = quality.read_json(stamp_path) if os.path.exists(stamp_path) else None
    threads = (stamp or {}).get("threads")
    if not args.render_only:
        data_hash = quality.read_json(os.path.join(prep, "manifest.json")).get("content_hash")
        threads = search_threads(args, out, prep, loss, stamp, flags, data_hash)
        key = {"tune_flags": flags, "data_hash": data_hash,
               "behaviour": quality.behaviour_fingerprint(out, prep, ["--loss", loss], threads=threads),
               **({"threads": threads} if threads else {})}
        if stamp is None or comparable_stamp(stamp) != comparable_stamp(key):  # stale: start over
            shutil.rmtree(search_dir, ignore_errors=True)
        if stamp != key:
            os.makedirs(base, exist_ok=True)
            quality.write_json(stamp_path, key)
        os.makedirs(os.path.join(base, "logs"), exist_ok=True)
        print(f"quality {TABLE}: {loss}: search ({args.max_trials} trials, threads {threads or 'default'})",
              file=sys.stderr, flush=True)
        quality.run([*quality.hourglass(), "tune", "--data", prep, "--out", search_dir, *flags],
                    os.path.join(base, "logs", f"{loss}-search.log"),
                    args.timeout_minutes * 60 * (args.max_trials + 1), threads)
    best_path = os.path.join(search_dir, "best_hyperparameters.json")
    if not os.path.exists(best_path):
        return None
    best = quality.read_json(best_path)["values"]
    trials = search_summary(search_dir)
    return {"hparams": best_values_file(base, loss, best_path), "threads": threads,
            "values": {k: v for k, v in best.items() if not k.startswith("tuner/")}, **trials}


def search_summary(search_dir: str) -> dict:
    """Returns: {"trials": completed trials, "objective": the best val objective} from trials.csv."""
    import csv

    path = os.path.join(search_dir, "trials.csv")
    if not os.path.exists(path):
        return {"trials": 0, "objective": None}
    with open(path, newline="", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("status") == "COMPLETED"]
    best = [float(r["objective"]) for r in rows if r.get("is_best") == "1" and r.get("objective")]
    return {"trials": len(rows), "objective": best[0] if best else None}


def describe(values: dict) -> str:
    """Returns: the tuned values of a best trial, short (the loss's own settings only)."""
    from tuning.search_space import LOSS_PARAMS

    names = LOSS_PARAMS.get(values.get("loss", "hypersensitive"), ())
    parts = []
    for name in names:
        if name in values:
            value = values[name]
            parts.append(f"{name} {value:.3g}" if isinstance(value, float) else f"{name} {value}")
    return ", ".join(parts)


def main(args, out: str) -> int:
    """Runs (or resumes, or renders) the tuned-against-tuned table. Returns: 0."""
    started = time.time()
    prep = quality.prepare_data(out, quality.data_settings({}, args.quick), create=not args.render_only)
    if prep is None:
        print("quality tuned: no data yet", file=sys.stderr)
        return 0
    group = f"tuned against tuned (best of {args.max_trials} trials per loss, chosen on val)"
    # the searches and every loss's seeds `--jobs` at a time: a loss's seeds as soon as its own search has
    # ended (with that search's thread count, so seed 0 retrains the search's own trial), searches first
    searches: dict[str, dict | None] = {}

    def search_task(loss: str):
        searches[loss] = run_search(args, out, prep, loss)
        return searches[loss]

    def seed_task(loss: str, seed: int):
        search = searches[loss]
        if search is None:
            return None
        return quality.run_one(args, out, TABLE, loss, prep, ["--hparams", search["hparams"]], seed,
                               f"{loss}, tuned: {describe(search['values'])}",
                               checkpoint=quality.BEST_CHECKPOINT, threads=search["threads"])

    tasks, after, owners = [], {}, []
    for loss in args.variants:
        tasks.append(lambda loss=loss: search_task(loss))
        owners.append(None)
    for position, loss in enumerate(args.variants):
        for seed in args.seeds:
            after[len(tasks)] = [position]
            tasks.append(lambda loss=loss, seed=seed: seed_task(loss, seed))
            owners.append(loss)
    results = quality.in_parallel_after(tasks, after, args.jobs)
    records: dict[str, list[dict]] = {loss: [] for loss in args.variants}
    for loss, record in zip(owners, results):
        if loss is not None and record:
            records[loss].append(record)
    searches = {loss: searches.get(loss) for loss in args.variants}
    groups = {group: records}
    text = quality.markdown(TABLE, groups, args)
    lines = ["", "Best trial per loss (values; completed trials; val sensitivity at 4.8 FPI of the best trial):", ""]
    for loss, search in searches.items():
        if search:
            lines.append(f"- {loss}: {describe(search['values'])}; {search['trials']} trials; val "
                         f"{quality.fmt(search['objective'])}")
        else:
            lines.append(f"- {loss}: no finished trial yet")
    lines += ["", "The same runs scored with their last epoch's weights instead of best.keras (sensitivity at 4.8 "
              "FPI per seed; best.keras's epoch in brackets):", ""]
    for loss, recs in records.items():
        cells = [f"s{r['seed']}: {quality.fmt(r['final_summary']['sensitivity_at_fpi']['4.8'])} "
                 f"(best.keras: epoch {r.get('best_epoch')}, {quality.fmt(r['summary']['sensitivity_at_fpi']['4.8'])})"
                 for r in sorted(recs, key=lambda r: r["seed"]) if r.get("final_summary")]
        if cells:
            lines.append(f"- {loss}: " + "; ".join(cells))
    text += "\n".join(lines) + "\n"
    payload = {"table": TABLE, "command": "python benchmarks/quality.py " + " ".join(sys.argv[1:]),
               "settings": {k: v for k, v in vars(args).items() if k != "out"},
               "searches": searches,
               "groups": {group: {name: quality.variant_rows(recs, records.get("l2") if name != "l2" else None)
                                  for name, recs in records.items() if recs}},
               "wall_seconds": round(time.time() - started, 1)}
    quality.write_json(os.path.join(out, f"quality-{TABLE}.json"), payload)
    with open(os.path.join(out, f"quality-{TABLE}.md"), "w", encoding="utf-8") as handle:
        handle.write(text)
    if not args.quick and any(records.values()):  # the committed copy that BENCHMARKS.md carries
        quality.write_committed_table(TABLE, "tuned against tuned", text)
    print(text)
    return 0
