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

import glob
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import quality  # noqa: E402
import val_probe  # noqa: E402

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


def main(argv=None) -> int:
    args = val_probe.probe_parser(__doc__.split("\n\n")[0], "tuned_defaults_probe").parse_args(argv)
    seeds = args.seeds
    prep = quality.prepare_data(args.quality_out, quality.data_settings({}, False), create=False)
    found = sorted(glob.glob(os.path.join(args.quality_out, "runs", "tuned", "hypersensitive-best-*.json")))
    if prep is None or not found:
        print("tuned_defaults_probe: run `python benchmarks/quality.py tuned` first", file=sys.stderr)
        return 2
    best = {"path": found[-1], "values": quality.read_json(found[-1])["values"]}
    table = val_probe.selected(variants(best), args.variants)

    def tuned_retrain(name: str, seed: int) -> str | None:
        if name != TUNED:
            return None
        return os.path.join(args.quality_out, "runs", "tuned", f"hypersensitive-s{seed}", "model.keras")

    results = val_probe.run_probe(prep, args.out, table, seeds, args.jobs, model_of=tuned_retrain)
    text = val_probe.render(
        "## Should the tuned values become the defaults? (`python benchmarks/tuned_defaults_probe.py`)",
        "Hypersensitive loss, val split ({images} images, {findings} malignant findings), last epoch, seeds "
        "{seeds}, the main quality table's budget, one TensorFlow thread per run; tuned values from "
        f"`{os.path.basename(best['path'])}`. Mean over seeds, per seed in brackets.",
        table, seeds, results)
    val_probe.write_outputs("tuned-defaults-probe.md", text, args.out, results, best=best, seeds=seeds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
