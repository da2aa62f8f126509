"""The paper's loss ablation (its Figure 5) as a benchmark anyone can rerun.

On synthetic data (`hourglass synth` + `hourglass prepare`), trains the same tiny
Hourglass with the Gaussian L2 baseline, the full hypersensitive loss, and the
hypersensitive loss with each principle switched off:

    l2             GaussianL2Loss (Newell et al.), sigma = --l2-sigma
    hypersensitive L_DET + omega L_BG with all four principles
    (a) no-recenter  reference blob centred on the box, not on the predicted blob
    (b) one-sigma    a single reference sigma instead of the bank
    (c) no-top-k     top_k = 0: no predicted blob excused from the background loss
    (d) omega-1      omega = 1.0: background weighs as much as detection

Every variant gets the same data, seed, step budget and learning rate, runs as
its own `hourglass train` process (no validation-based checkpoint selection:
the final weights are evaluated), and is evaluated by `hourglass evaluate` on
the same held-out test split (bootstrap CIs over patients).

Outputs (under --out, default benchmarks/out):
    ablation_data/{synth,prepared}/     the data (reused when the settings match)
    ablation/runs/<variant>/            hourglass train run directories
    ablation/eval/<variant>/            hourglass evaluate outputs (froc.json, froc.png, marks.csv)
    ablation.json                       settings, timings and the FROC summary of every variant
    ablation.md                         the table (sensitivity at 1, 2, 4.8 FPI and max, 95% CIs)
    ablation.png                        every FROC curve in one plot

Sized to finish in about 30 minutes on 2 CPU cores (about 4 minutes per
variant). Rerunning continues where it stopped: finished variants are skipped,
an interrupted training resumes from its last epoch.

Usage:
    python benchmarks/ablation.py                 # full budget, ~30 min on 2 cores
    python benchmarks/ablation.py --quick         # a smoke run, a few minutes
    python benchmarks/ablation.py --variants l2,hypersensitive --steps-per-epoch 300
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from common import hourglass_cli, run_step  # noqa: E402

#: name -> (description, extra `hourglass train` flags)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "l2": ("Gaussian L2 baseline", ["--loss", "l2"]),
    "hypersensitive": ("full hypersensitive loss", ["--loss", "hypersensitive", "--recenter"]),
    "no-recenter": ("(a) off: reference centred on the box", ["--loss", "hypersensitive", "--no-recenter"]),
    "one-sigma": ("(b) off: single sigma", ["--loss", "hypersensitive", "--recenter", "--sigmas", "SINGLE"]),
    "no-top-k": ("(c) off: top_k = 0", ["--loss", "hypersensitive", "--recenter", "--top-k", "0"]),
    "omega-1": ("(d) off: omega = 1", ["--loss", "hypersensitive", "--recenter", "--omega", "1.0"]),
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="See the module docstring for the variants and outputs.")
    parser.add_argument("--out", default=os.path.join(HERE, "out"), help="output root (default benchmarks/out)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of: "
                        + ", ".join(VARIANTS))
    parser.add_argument("--quick", action="store_true", help="a smoke run: little data, few steps")
    data = parser.add_argument_group("data")
    data.add_argument("--images", type=int, default=400)
    data.add_argument("--height", type=int, default=256)
    data.add_argument("--width", type=int, default=192)
    data.add_argument("--malignant-rate", type=float, default=0.3)
    data.add_argument("--high-risk-rate", type=float, default=0.1)
    data.add_argument("--benign-rate", type=float, default=0.2)
    data.add_argument("--test-fraction", type=float, default=0.3)
    train = parser.add_argument_group("training (the same for every variant)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--patch-epochs", type=int, default=5)
    train.add_argument("--full-epochs", type=int, default=1)
    train.add_argument("--steps-per-epoch", type=int, default=120)
    train.add_argument("--batch-size", type=int, default=8)
    # Geometry in reference pixels (`hourglass train --help`); None = the training default.
    train.add_argument("--crop-size", type=int, default=None)
    train.add_argument("--learning-rate", type=float, default=1e-3)
    train.add_argument("--patch-size", type=int, default=None, help="loss detector patch, reference heatmap px")
    train.add_argument("--sigmas", default=None)
    train.add_argument("--single-sigma", default="12", help="the sigma of variant (b), reference heatmap px")
    train.add_argument("--l2-sigma", type=float, default=None)
    train.add_argument("--preset", default="tiny")
    train.add_argument("--timeout-minutes", type=float, default=15.0, help="per train/evaluate process")
    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.patch_epochs, args.full_epochs, args.steps_per_epoch = 80, 2, 1, 10
        args.bootstrap = 200
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    return args


def read_json(path: str):
    """Returns: the parsed JSON file (the handle closed)."""
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def hourglass() -> list[str]:
    return hourglass_cli()


def run(cmd: list[str], log_path: str, timeout: float) -> tuple[str, float]:
    """Runs one step; returns (stdout, seconds). stderr goes to `log_path`."""
    return run_step(cmd, log_path, timeout, "ablation")


def prepare_data(args, out: str) -> str:
    data_root = os.path.join(out, "ablation_data")
    synth, prep = os.path.join(data_root, "synth"), os.path.join(data_root, "prepared")
    # A fixed salt: the patient split (and so the test set) is the same on every machine.
    settings = {k: getattr(args, k) for k in ("images", "height", "width", "malignant_rate", "high_risk_rate",
                                              "benign_rate", "test_fraction", "seed")}
    settings["salt"] = f"ablation-{args.seed}"
    stamp = os.path.join(data_root, "settings.json")
    if os.path.exists(stamp) and read_json(stamp) == settings and os.path.exists(
            os.path.join(prep, "manifest.json")):
        return prep
    os.makedirs(data_root, exist_ok=True)
    for path in (synth, prep):
        if os.path.exists(path):
            import shutil

            shutil.rmtree(path)
    log = os.path.join(data_root, "data.log")
    run([*hourglass(), "synth", "--out", synth, "--images", str(args.images), "--seed", str(args.seed),
         "--height", str(args.height), "--width", str(args.width), "--malignant-rate", str(args.malignant_rate),
         "--high-risk-rate", str(args.high_risk_rate), "--benign-rate", str(args.benign_rate), "--no-progress"],
        log, 600)
    run([*hourglass(), "prepare", "--annotations", os.path.join(synth, "annotations.csv"), "--images-root", synth,
         "--out", prep, "--size", str(max(args.height, args.width)), "--val-fraction", "0.1",
         "--test-fraction", str(args.test_fraction), "--salt", f"ablation-{args.seed}", "--quiet"],
        log + ".prepare", 900)
    with open(stamp, "w") as handle:
        json.dump(settings, handle)
    return prep


def data_hash(prep: str) -> str | None:
    """The prepared data's content hash (from its manifest)."""
    with open(os.path.join(prep, "manifest.json")) as handle:
        return json.load(handle).get("content_hash")


def train_flags(args, variant: str) -> list[str]:
    flags = [("SINGLE" if f == "SINGLE" else f) for f in VARIANTS[variant][1]]
    flags = [args.single_sigma if f == "SINGLE" else f for f in flags]
    if "--sigmas" not in flags and variant != "l2" and args.sigmas:
        flags += ["--sigmas", args.sigmas]
    common = ["--preset", args.preset, "--seed", str(args.seed), "--patch-epochs", str(args.patch_epochs),
              "--full-epochs", str(args.full_epochs), "--steps-per-epoch", str(args.steps_per_epoch),
              "--batch-size", str(args.batch_size), "--learning-rate", str(args.learning_rate),
              "--val-images", "0", "--strategy", "default", "--quiet"]
    for flag, value in (("--crop-size", args.crop_size), ("--patch-size", args.patch_size),
                        ("--target-sigma", args.l2_sigma)):
        if value is not None:
            common += [flag, str(value)]
    return common + flags


def run_variant(args, prep: str, out: str, variant: str) -> dict:
    base = os.path.join(out, "ablation")
    run_dir, eval_dir = os.path.join(base, "runs", variant), os.path.join(base, "eval", variant)
    logs = os.path.join(base, "logs")
    os.makedirs(logs, exist_ok=True)
    record_path = os.path.join(base, "eval", f"{variant}.record.json")
    flags = train_flags(args, variant)
    if os.path.exists(record_path):
        record = read_json(record_path)
        if record.get("train_flags") == flags and record.get("data_hash") == data_hash(prep):
            print(f"ablation: {variant}: done before, reusing {eval_dir}", file=sys.stderr)
            return record
    # A run directory from other settings or data is stale: start that variant over. One from the same
    # settings (an interrupted earlier invocation) is resumed by `hourglass train` itself.
    stamp_path = os.path.join(base, "runs", f"{variant}.stamp.json")
    stamp = {"train_flags": flags, "data_hash": data_hash(prep)}
    if not os.path.exists(stamp_path) or read_json(stamp_path) != stamp:
        import shutil

        for path in (run_dir, eval_dir):
            shutil.rmtree(path, ignore_errors=True)
        os.makedirs(os.path.dirname(stamp_path), exist_ok=True)
        with open(stamp_path, "w") as handle:
            json.dump(stamp, handle)
    timeout = args.timeout_minutes * 60
    print(f"ablation: {variant}: training ({VARIANTS[variant][0]})", file=sys.stderr, flush=True)
    stdout, train_seconds = run([*hourglass(), "train", "--data", prep, "--out", run_dir, *flags],
                                os.path.join(logs, f"{variant}.train.log"), timeout)
    train_summary = json.loads(stdout.strip().splitlines()[-1])
    print(f"ablation: {variant}: trained in {train_seconds:.0f} s, evaluating", file=sys.stderr, flush=True)
    _, eval_seconds = run([*hourglass(), "evaluate", "--model", os.path.join(run_dir, "model.keras"),
                           "--data", prep, "--split", "test", "--out", eval_dir, "--bootstrap", str(args.bootstrap),
                           "--seed", str(args.seed), "--overlays", "2", "--quiet"],
                          os.path.join(logs, f"{variant}.evaluate.log"), timeout)
    froc = read_json(os.path.join(eval_dir, "froc.json"))
    record = {"variant": variant, "description": VARIANTS[variant][0], "train_flags": flags, "prep": prep,
              "data_hash": data_hash(prep),
              "train_seconds": round(train_seconds, 1), "eval_seconds": round(eval_seconds, 1),
              "final_train_logs": train_summary.get("final_logs"), "froc": froc}
    with open(record_path, "w") as handle:
        json.dump(record, handle, indent=2)
    return record


def summarise(record: dict) -> dict:
    froc = record["froc"]
    keys = ("1", "2", "4.8")
    return {
        "description": record["description"],
        "sensitivity_at_fpi": {k: froc["sensitivity_at_fpi"].get(k) for k in keys},
        "ci95": {k: (froc.get("ci95") or {}).get(k) for k in keys},
        "max_sensitivity": froc.get("max_sensitivity"),
        "ci95_max_sensitivity": froc.get("ci95_max_sensitivity"),
        "fpi_at_max_sensitivity": froc.get("fpi_at_max_sensitivity"),
        "mean_sensitivity": froc.get("mean_sensitivity"),
        "num_images": froc.get("num_images"),
        "num_malignant_findings": froc.get("num_malignant_findings"),
        "train_seconds": record["train_seconds"],
        "final_train_loss": (record.get("final_train_logs") or {}).get("loss"),
    }


def comparison_note(frocs: dict) -> str:
    """One honest sentence on hypersensitive vs L2 at 4.8 FPI: which is higher, and whether the CIs overlap."""
    if "hypersensitive" not in frocs or "l2" not in frocs:
        return ""
    hs, l2 = (frocs[v]["sensitivity_at_fpi"].get("4.8") for v in ("hypersensitive", "l2"))
    ci_hs, ci_l2 = ((frocs[v].get("ci95") or {}).get("4.8") for v in ("hypersensitive", "l2"))
    if hs is None or l2 is None:
        return "\nAt 4.8 FPI the sensitivity is undefined (no malignant finding in the test split).\n"
    better = "higher than" if hs > l2 else "lower than" if hs < l2 else "equal to"
    note = f"\nAt 4.8 FPI the full hypersensitive loss is {better} the L2 baseline ({hs:.3f} vs {l2:.3f})"
    if ci_hs and ci_l2:
        overlap = ci_hs[0] <= ci_l2[1] and ci_l2[0] <= ci_hs[1]
        note += ("; the 95% CIs overlap, so this budget does not separate them" if overlap
                 else "; the 95% CIs do not overlap")
    return note + ".\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    started = time.time()
    prep = prepare_data(args, out)
    records = {v: run_variant(args, prep, out, v) for v in args.variants.split(",")}

    from keras_hourglass.evaluation.plots import plot_froc_curves
    from keras_hourglass.evaluation.report import format_markdown_table
    from keras_hourglass.training.train import package_versions

    frocs = {v: r["froc"] for v, r in records.items()}
    command = "python benchmarks/ablation.py " + " ".join(argv if argv is not None else sys.argv[1:])
    payload = {
        "command": command.strip(),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "data": {"prepared": prep, "manifest": read_json(os.path.join(prep, "manifest.json")).get(
            "images_written")},
        "variants": {v: summarise(r) for v, r in records.items()},
        "versions": package_versions(),
        "wall_seconds": round(time.time() - started, 1),  # this invocation (finished variants are reused)
        "compute_seconds": round(sum(r["train_seconds"] + r["eval_seconds"] for r in records.values()), 1),
    }
    with open(os.path.join(out, "ablation.json"), "w") as handle:
        json.dump(payload, handle, indent=2)
    plot_froc_curves(frocs, os.path.join(out, "ablation.png"), title="Loss ablation (synthetic test split)")
    table = format_markdown_table(frocs, fpi_points=(1.0, 2.0, 4.8))
    any_froc = next(iter(frocs.values()))
    text = (f"Loss ablation on synthetic data: {any_froc.get('num_images')} test images, "
            f"{any_froc.get('num_malignant_findings')} malignant findings; every variant trained "
            f"{args.patch_epochs} x {args.steps_per_epoch} patch steps + {args.full_epochs} x "
            f"{args.steps_per_epoch} whole-image steps, batch {args.batch_size}, Adam {args.learning_rate:g}, "
            f"seed {args.seed}; 95% CIs: bootstrap over patients.\n\n"
            f"Command: `{payload['command']}`\n\n{table}\n")
    text += comparison_note(frocs)
    with open(os.path.join(out, "ablation.md"), "w") as handle:
        handle.write(text)
    print(text)
    print(f"ablation: wrote {os.path.join(out, 'ablation.json')}, ablation.md, ablation.png "
          f"in {payload['wall_seconds']:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
