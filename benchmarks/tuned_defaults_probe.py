"""Should the tuned values become the defaults? Decided on the whole val split, never on test.

The hypersensitive loss with today's `hourglass train` defaults, with the values `make quality-tuned`
chose (its `hypersensitive-best-*.json`), with each of the two largest changes alone (omega, the
learning rate) and with the tuned values at the default learning rate (which every loss shares), on the main quality table's data and budget, seeds 0-2, one TensorFlow thread per run;
each final model (model.keras: what a user gets) is evaluated on the whole val split. The tuned
values' runs are the tuned table's own retrains when they exist (the same values, seed, budget and
thread count train the same weights). Backs README's "They do not become the defaults".

Outputs: OUT/<variant>-s<seed>/ (runs), OUT/eval-<variant>-s<seed>/ (val FROC),
benchmarks/tuned-defaults-probe.md. A finished evaluation is kept.

Usage:
    python benchmarks/quality.py tuned                # first: the tuned values
    python benchmarks/tuned_defaults_probe.py         # then this (~25 min on 2 cores)
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import quality  # noqa: E402

FPI_POINTS = ("1", "2", "4.8")
#: The row whose runs are the tuned table's own retrains (when they exist).
TUNED = "the tuned values"


def variants(best: dict) -> dict[str, list[str]]:
    """Returns: variant name -> its `hourglass train` flags (beside the budget and seed)."""
    return {"today's defaults": [],
            TUNED: ["--hparams", best["path"]],
            f"defaults with omega {best['values']['omega']:.2g} only": ["--omega", repr(best["values"]["omega"])],
            f"defaults with lr {best['values']['learning_rate']:.2g} only":
                ["--learning-rate", repr(best["values"]["learning_rate"])],
            "the tuned values at the default lr": ["--hparams", best["path"], "--learning-rate", repr(default_lr())]}


def default_lr() -> float:
    """Returns: `hourglass train`'s default (peak) learning rate."""
    from keras_hourglass.training.config import TrainConfig

    return TrainConfig().learning_rate


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quality-out", default=os.path.join(HERE, "out", "quality"))
    parser.add_argument("--out", default=os.path.join(HERE, "out", "tuned_defaults_probe"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    qargs = quality.parse_args(["tuned"])
    prep = quality.prepare_data(args.quality_out, quality.data_settings({}, False), create=False)
    found = sorted(glob.glob(os.path.join(args.quality_out, "runs", "tuned", "hypersensitive-best-*.json")))
    if prep is None or not found:
        print("tuned_defaults_probe: run `python benchmarks/quality.py tuned` first", file=sys.stderr)
        return 2
    best = {"path": found[-1], "values": quality.read_json(found[-1])["values"]}
    os.makedirs(args.out, exist_ok=True)
    table = variants(best)

    def task(name: str, flags: list[str], seed: int):
        def run() -> dict:
            tag = f"{slug(name)}-s{seed}"
            eval_dir = os.path.join(args.out, f"eval-{tag}")
            froc_path = os.path.join(eval_dir, "froc.json")
            if not os.path.exists(froc_path):
                model = os.path.join(args.quality_out, "runs", "tuned", f"hypersensitive-s{seed}", "model.keras")
                if name != TUNED or not os.path.exists(model):
                    run_dir = os.path.join(args.out, tag)
                    quality.run([*quality.hourglass(), "train", "--data", prep, "--out", run_dir,
                                 *quality.train_flags(qargs, flags, seed)],
                                os.path.join(args.out, f"{tag}.train.log"), 3600, 1)
                    model = os.path.join(run_dir, "model.keras")
                quality.run([*quality.hourglass(), "evaluate", "--model", model, "--data", prep, "--split", "val",
                             "--overlays", "0", "--bootstrap", "200", "--quiet", "--out", eval_dir],
                            os.path.join(args.out, f"{tag}.evaluate.log"), 1800, 1)
            return quality.read_json(froc_path)
        return run

    keys = [(name, seed) for name in table for seed in seeds]
    results = dict(zip(keys, quality.in_parallel([task(n, table[n], s) for n, s in keys], args.jobs)))
    any_froc = next(iter(results.values()))
    lines = ["## Should the tuned values become the defaults? (`python benchmarks/tuned_defaults_probe.py`)", "",
             f"Hypersensitive loss, val split ({any_froc['num_images']} images, {any_froc['num_malignant_findings']} "
             f"malignant findings), last epoch, seeds {args.seeds}, the main quality table's budget, one "
             f"TensorFlow thread per run; tuned values from `{os.path.basename(best['path'])}`. Mean over seeds, "
             "per seed in brackets.", "",
             "| variant | @1 | @2 | @4.8 | max sens | FPI at max |", "|---|---|---|---|---|---|"]
    for name in table:
        frocs = [results[(name, s)] for s in seeds]
        cells = []
        for point in FPI_POINTS:
            values = [f["sensitivity_at_fpi"][point] for f in frocs]
            cells.append(f"{sum(values) / len(values):.3f} ({' / '.join(f'{v:.3f}' for v in values)})")
        maxima = [f["max_sensitivity"] for f in frocs]
        fpis = [f["fpi_at_max_sensitivity"] for f in frocs]
        lines.append(f"| {name} | {' | '.join(cells)} | {sum(maxima) / len(maxima):.3f} "
                     f"({' / '.join(f'{v:.3f}' for v in maxima)}) | {' / '.join(f'{v:.0f}' for v in fpis)} |")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(HERE, "tuned-defaults-probe.md"), "w", encoding="utf-8") as handle:
        handle.write(text)
    with open(os.path.join(args.out, "tuned_defaults_probe.json"), "w", encoding="utf-8") as handle:
        json.dump({"best": best, "seeds": seeds, "results": {f"{n}|{s}": f for (n, s), f in results.items()}},
                  handle, indent=1, default=str)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
