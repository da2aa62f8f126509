"""The two-stage row of the quality benchmark (`python benchmarks/quality.py two-stage`, `make quality-two-stage`).

For each seed, the main table's hypersensitive run (`quality.run_one`, the same key: reused when it is
done, trained when it is not) is stage one; on it: `hourglass proposals` (defaults: every mark, <= 100 per
image, 384-reference-px patches), `hourglass train --stage 2` (`STAGE2_FLAGS`, seeded with the seed) and
`hourglass evaluate --classifier` on the same test split with the same bootstrap (`--bootstrap`, seed 0).
Reported per system (stage one alone: froc.json's top level; the two-stage system: its `two_stage` block):
sensitivity at 0.5, 1, 2 and 4.8 FPI with the main table's seeds and 95% t-intervals across seeds, the
bootstrap CI at 4.8 FPI per seed, max sensitivity; the issue's target per seed (the two-stage system
reaches stage one's 4.8-FPI sensitivity at <= 2 FPI and loses <= 0.02 of max sensitivity); and the
minutes: stage one's training (wall, from its record) + stage two's proposals and training (wall; their
CPU seconds, children's user + system, are in the JSON).

Resumable: a seed's stage two is keyed by its stage-one record (train flags, data, behaviour fingerprint),
`STAGE2_FLAGS` and the fingerprint of the two-stage code (`STAGE2_SOURCES`); a finished seed is kept, a stale one redone;
`train --stage 2` resumes its own epochs. Outputs: runs/two-stage/hypersensitive-s<seed>/{proposals,run2,
eval}, *.record.json, quality-two-stage.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import time

import quality

FPI = ("0.5", "1", "2", "4.8")
TABLE = "two-stage"
STAGE_ONE = "hypersensitive"
#: `hourglass train --stage 2` budget (its defaults spelled out) and the --quick one.
STAGE2_FLAGS = ["--epochs", "10", "--steps-per-epoch", "100", "--batch-size", "64"]
QUICK_STAGE2_FLAGS = ["--epochs", "1", "--steps-per-epoch", "3", "--batch-size", "16"]
#: Stage one alone at the two-stage system's total budget: the main table's recipe with this many times
#: its steps per epoch (stage two's proposals and training take about as long as stage one's training).
SAME_BUDGET_STEPS_FACTOR = 2
SAME_BUDGET = "stage_one_same_budget"
#: The systems of the table: (record key, row label).
SYSTEMS = (("stage_one", "stage one alone"),
           (SAME_BUDGET, f"stage one alone, {SAME_BUDGET_STEPS_FACTOR}x steps (the two-stage total budget)"),
           ("two_stage", "two-stage"))
#: The code that decides stage two's data, training and scoring (with quality.RECIPE_SOURCES).
STAGE2_SOURCES = ("keras_hourglass/two_stage", "keras_hourglass/cli/proposals.py",
                  "keras_hourglass/cli/train_stage2.py", "keras_hourglass/cli/evaluate.py")


def stage2_flags(args, seed: int) -> list[str]:
    """Returns: the `hourglass train --stage 2` flags of a seed (after --data / --out)."""
    return [*(QUICK_STAGE2_FLAGS if args.quick else STAGE2_FLAGS), "--seed", str(seed), "--strategy", "default",
            "--quiet"]


def stage2_fingerprint(root: str = quality.ROOT) -> str:
    """Returns: 12 hex digits over the two-stage code (docstrings ignored; stage one's code is in its behaviour)."""
    import hashlib

    digest = hashlib.sha256()
    for source in STAGE2_SOURCES:
        path = os.path.join(root, source)
        files = [path] if path.endswith(".py") else sorted(
            os.path.join(d, f) for d, _, names in os.walk(path) for f in names if f.endswith(".py"))
        for file in files:
            digest.update(os.path.relpath(file, root).encode())
            digest.update(quality._code_without_docstrings(file).encode())
    return digest.hexdigest()[:12]


def _timed(cmd: list[str], log: str, timeout: float) -> tuple[float, float]:
    """Runs one step. Returns: (wall seconds, CPU seconds of the child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    _, wall = quality.run(cmd, log, timeout)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def run_seed(args, out: str, prep: str, stage_one: dict) -> dict | None:
    """Stage two on one seed's stage-one run (or its finished record).

    Args:
        args: `quality.parse_args` of the two-stage table.
        out: the benchmark's output root.
        prep: PREP (the main table's data).
        stage_one: the seed's main-table record (`quality.run_one`).

    Returns:
        The record (`stage_one` and `two_stage` summaries, minutes), or None (render-only, not done).
    """
    seed = stage_one["seed"]
    base = os.path.join(out, "runs", TABLE)
    tag = f"{STAGE_ONE}-s{seed}"
    work, record_path = os.path.join(base, tag), os.path.join(base, f"{tag}.record.json")
    key = {"stage_one": {k: stage_one.get(k) for k in ("train_flags", "data_hash", "behaviour")},
           "stage2_flags": stage2_flags(args, seed), "bootstrap": args.bootstrap, "stage2_recipe": stage2_fingerprint()}
    if os.path.exists(record_path):
        record = quality.read_json(record_path)
        if args.render_only or record.get("key") == key:
            froc_path = os.path.join(record.get("eval_dir", ""), "froc.json")
            if os.path.exists(froc_path):  # the check as this code states it
                record["target"] = target_check(quality.read_json(froc_path))
            return record
    if args.render_only:
        return None
    stamp_path = os.path.join(base, f"{tag}.stamp.json")
    if not os.path.exists(stamp_path) or quality.read_json(stamp_path) != key:  # stale: start over
        shutil.rmtree(work, ignore_errors=True)
        os.makedirs(work)
        quality.write_json(stamp_path, key)
    model = os.path.join(out, "runs", "main", tag, "model.keras")  # quality.run_one's run directory
    proposals, run2, eval_dir = (os.path.join(work, name) for name in ("proposals", "run2", "eval"))
    logs, timeout = os.path.join(base, "logs"), args.timeout_minutes * 60
    os.makedirs(logs, exist_ok=True)
    hg = quality.hourglass()
    print(f"quality {TABLE}: {tag}: proposals, stage two, evaluation", file=sys.stderr, flush=True)
    if not os.path.exists(os.path.join(proposals, "manifest.json")):
        shutil.rmtree(proposals, ignore_errors=True)
        proposals_wall, proposals_cpu = _timed([*hg, "proposals", "--model", model, "--data", prep, "--out", proposals,
                                                "--quiet"], os.path.join(logs, f"{tag}.proposals.log"), timeout)
        quality.write_json(os.path.join(work, "proposals.time.json"), [proposals_wall, proposals_cpu])
    proposals_wall, proposals_cpu = quality.read_json(os.path.join(work, "proposals.time.json"))
    train_wall, train_cpu = _timed([*hg, "train", "--stage", "2", "--data", proposals, "--out", run2,
                                    *stage2_flags(args, seed)], os.path.join(logs, f"{tag}.train.log"), timeout)
    eval_wall, _ = _timed([*hg, "evaluate", "--model", model, "--classifier", os.path.join(run2, "model.keras"),
                           "--data", prep, "--split", "test", "--out", eval_dir, "--bootstrap", str(args.bootstrap),
                           "--seed", "0", "--quiet"], os.path.join(logs, f"{tag}.evaluate.log"), timeout)
    froc = quality.read_json(os.path.join(eval_dir, "froc.json"))
    record = {"table": TABLE, "seed": seed, "key": key, "commit": quality.git_commit(), "eval_dir": eval_dir,
              "combination": froc["two_stage"]["combination"]["name"],
              "stage_one": quality.summarise_froc(froc), "two_stage": quality.summarise_froc(froc["two_stage"]),
              "minutes": {"stage_one_train": round(stage_one["train_seconds"] / 60, 2),
                          "proposals": round(proposals_wall / 60, 2), "stage_two_train": round(train_wall / 60, 2),
                          "evaluate": round(eval_wall / 60, 2)},
              "stage_two_cpu_seconds": {"proposals": round(proposals_cpu, 1), "train": round(train_cpu, 1)}}
    record["minutes"]["total"] = round(sum(record["minutes"][k] for k in ("stage_one_train", "proposals",
                                                                          "stage_two_train")), 2)
    record["target"] = target_check(froc)
    quality.write_json(record_path, record)
    return record


def same_budget_stage_one(args, out: str, prep: str | None, seed: int) -> dict | None:
    """Stage one alone trained with `SAME_BUDGET_STEPS_FACTOR` x the main table's steps (`quality.run_one`).

    Returns:
        Its record (trained, reused, or found by name when `prep` is None), or None.
    """
    name = f"{STAGE_ONE}-{SAME_BUDGET_STEPS_FACTOR}x-steps"
    if prep is None:
        path = os.path.join(out, "runs", TABLE, f"{name}-s{seed}.record.json")
        return quality.read_json(path) if os.path.exists(path) else None
    longer = argparse.Namespace(**{**vars(args), "steps_per_epoch": args.steps_per_epoch * SAME_BUDGET_STEPS_FACTOR})
    description, flags = quality.TABLES["main"][STAGE_ONE]
    return quality.run_one(longer, out, TABLE, name, prep, flags, seed,
                           f"{description}, {SAME_BUDGET_STEPS_FACTOR}x steps")


def target_check(froc: dict) -> dict:
    """The issue's target on one evaluation: stage one's 4.8-FPI sensitivity reached at <= 2 FPI, max loss <= 0.02.

    Args:
        froc: an `evaluate --classifier` froc.json.

    Returns:
        {"fpi_to_stage_one_4.8", "met_at_2_fpi", "max_loss", "met_max", "met"}; `met` is None when stage
        one finds nothing at 4.8 FPI (every curve reaches 0: the target says nothing).
    """
    goal = froc["sensitivity_at_fpi"].get("4.8")
    fpi = None if goal is None else quality.fpi_to_reach(froc["two_stage"].get("curve", []), goal)
    loss = None
    if froc.get("max_sensitivity") is not None and froc["two_stage"].get("max_sensitivity") is not None:
        loss = round(froc["max_sensitivity"] - froc["two_stage"]["max_sensitivity"], 6)
    at_2 = fpi is not None and fpi <= 2.0
    max_ok = loss is not None and loss <= 0.02
    return {"fpi_to_stage_one_4.8": fpi, "met_at_2_fpi": at_2, "max_loss": loss, "met_max": max_ok,
            "met": (at_2 and max_ok) if goal else None}


def aggregate(records: list[dict]) -> dict:
    """Per system: mean and 95% t-interval across seeds of the sensitivity at `FPI` and of max sensitivity."""
    out = {}
    for system, _ in SYSTEMS:
        if not all(r.get(system) for r in records):
            continue
        out[system] = {k: quality.mean_ci([r[system]["sensitivity_at_fpi"].get(k) for r in records]) for k in FPI}
        out[system]["max"] = quality.mean_ci([r[system]["max_sensitivity"] for r in records])
        if system != "two_stage":  # paired: the two-stage system minus this one, per seed
            out[f"two_stage_minus_{system}"] = {k: quality.mean_ci(paired(records, system, k)) for k in (*FPI, "max")}
    out["minutes_total"] = quality.mean_ci([r["minutes"]["total"] for r in records])
    return out


def paired(records: list[dict], system: str, key: str) -> list[float]:
    """Returns: per seed, the two-stage system's sensitivity at `key` FPI ("max": max sensitivity) minus `system`'s."""
    def value(summary):
        return summary["max_sensitivity"] if key == "max" else summary["sensitivity_at_fpi"].get(key)

    return [value(r["two_stage"]) - value(r[system]) for r in records
            if value(r["two_stage"]) is not None and value(r[system]) is not None]


def markdown(records: list[dict], args) -> str:
    """The two-stage table (means ± t-interval half-widths across seeds) and the per-seed lines."""
    if not records:
        return "No finished two-stage run.\n"
    s = records[0]["stage_one"]
    budget = " ".join(QUICK_STAGE2_FLAGS if args.quick else STAGE2_FLAGS)
    lines = [f"**two-stage system**: {s['num_images']} test images, {s['num_malignant_findings']} malignant "
             f"findings; seeds {','.join(str(r['seed']) for r in records)}; stage one = the main table's "
             f"`hypersensitive` runs; stage two = `hourglass proposals` defaults + `train --stage 2 {budget}`.\n",
             "| system | " + " | ".join(f"sens @{k}" for k in FPI) + " | max sens | minutes (total) |",
             "|---" * (len(FPI) + 3) + "|"]
    minutes_of = {"stage_one": "stage_one_train", SAME_BUDGET: "same_budget_train", "two_stage": "total"}
    for system, label in SYSTEMS:
        if not all(r.get(system) for r in records):
            continue
        minutes = [r["minutes"].get(minutes_of[system]) for r in records]
        lines.append(f"| {label} | " + " | ".join(quality.fmt_mean([r[system]["sensitivity_at_fpi"].get(k)
                                                                     for r in records]) for k in FPI)
                     + f" | {quality.fmt_mean([r[system]['max_sensitivity'] for r in records])}"
                     + f" | {quality.fmt_mean(minutes)} |")
    for system, label in SYSTEMS[:2]:
        if all(r.get(system) for r in records):
            lines.append(f"| Δ two-stage − {label} (paired) | "
                         + " | ".join(quality.fmt_mean(paired(records, system, k)) for k in (*FPI, "max")) + " | |")
    lines += ["", "Per seed (sensitivity at 4.8 FPI [bootstrap 95% CI over patients], stage one -> two-stage; "
                  "combination; target):\n"]
    for r in sorted(records, key=lambda r: r["seed"]):
        cells = []
        for system in ("stage_one", "two_stage"):
            ci = r[system]["ci95"].get("4.8")
            cells.append(quality.fmt(r[system]["sensitivity_at_fpi"].get("4.8"))
                         + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""))
        t = r["target"]
        lines.append(f"- s{r['seed']}: {cells[0]} -> {cells[1]}; {r['combination']}; stage one's 4.8-FPI sensitivity "
                     f"reached at {t['fpi_to_stage_one_4.8'] if t['fpi_to_stage_one_4.8'] is not None else 'never'} FPI, "
                     f"max sensitivity loss {quality.fmt(t['max_loss'])}: target "
                     f"{'n/a (stage one: 0 at 4.8 FPI)' if t['met'] is None else 'met' if t['met'] else 'missed'} "
                     f"({r.get('commit')}); minutes: {r['minutes']}")
    lines += ["", "Means ± half-width of the 95% t-interval across seeds. Minutes: wall, this machine; stage one "
                  "alone = its training; two-stage total = stage one's training + proposals + stage two's training "
                  "(evaluation not counted)."]
    return "\n".join(lines) + "\n"


def main(args, out: str) -> int:
    """Runs (or resumes, or renders) the two-stage table. Returns: 0."""
    started = time.time()
    prep = quality.prepare_data(out, quality.data_settings({}, args.quick), create=not args.render_only)
    description, flags = quality.TABLES["main"][STAGE_ONE]
    records = []
    for seed in args.seeds:
        if prep is None:
            path = os.path.join(out, "runs", "main", f"{STAGE_ONE}-s{seed}.record.json")
            stage_one = quality.read_json(path) if os.path.exists(path) else None
        else:
            stage_one = quality.run_one(args, out, "main", STAGE_ONE, prep, flags, seed, description)
        record = run_seed(args, out, prep, stage_one) if stage_one else None
        if record:
            same = same_budget_stage_one(args, out, prep, seed)
            if same:
                record[SAME_BUDGET] = same["summary"]
                record["minutes"]["same_budget_train"] = round(same["train_seconds"] / 60, 2)
            records.append(record)
    text = markdown(records, args)
    payload = {"table": TABLE, "command": "python benchmarks/quality.py " + " ".join(sys.argv[1:]),
               "settings": {k: v for k, v in vars(args).items() if k != "out"}, "stage2_flags": STAGE2_FLAGS,
               "aggregate": aggregate(records) if records else None, "runs": records,
               "wall_seconds": round(time.time() - started, 1)}
    quality.write_json(os.path.join(out, f"quality-{TABLE}.json"), payload)
    with open(os.path.join(out, f"quality-{TABLE}.md"), "w", encoding="utf-8") as handle:
        handle.write(text)
    if not args.quick and records:  # the committed copy that BENCHMARKS.md carries
        quality.write_committed_table(TABLE, "the two-stage system", text)
    print(text)
    return 0
