"""Does stronger augmentation let the detector use more steps? Zoom and 90-degree turns, decided on val.

The capacity probe (`capacity_probe.py`) found that more steps on the main data are memorised (the
training split's sensitivity rises, val's does not) while three times the images close that gap. Data
augmentation is the standard way to get more images out of the same findings: this probe adds
patch-phase zoom (`--zoom 1.5`: crops scaled by a factor in [1/1.5, 1.5]) and random 90-degree turns
(`--rotate`, with the default flips: all 8 orientations) to the hypersensitive loss with
`hourglass train` defaults, at the main quality table's budget and at 4x its steps, on the main data.
Seeds 0-2 (`--seeds`), one TensorFlow thread per run; each final model.keras is evaluated on the
whole val split (the test split is never read).

The rows without the new flags are the capacity probe's runs (the same flags; with the new options
off the training batches are bit-identical to before they existed, so its model.keras files are
reused when present and trained again otherwise).

Outputs: OUT/<variant>-s<seed>/ (runs), OUT/eval-<variant>-s<seed>/ (val FROC),
benchmarks/augment-probe.md. A finished evaluation is kept.

Usage:
    python benchmarks/augment_probe.py            # ~60 min on 2 cores
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import quality  # noqa: E402
import val_probe  # noqa: E402

STRONG = ["--zoom", "1.5", "--rotate"]
LONGER = ["--steps-per-epoch", "400"]

#: Rows that are capacity-probe rows (same flags): name here -> name there.
CAPACITY_ROWS = {"defaults (flips, intensity jitter)": "tiny (default)", "4x the steps": "tiny, 4x the steps"}

#: Rows whose first seed is also scored on the training split (fit against generalisation).
FIT_GAP_ROWS = ("defaults (flips, intensity jitter)", "zoom 1.5 + turns", "4x the steps", "4x the steps, zoom 1.5 + turns")


def variants() -> dict[str, list[str]]:
    """Returns: variant name -> its `hourglass train` flags (beside the budget and seed)."""
    return {"defaults (flips, intensity jitter)": [],
            "zoom 1.5 + turns": STRONG,
            "4x the steps": LONGER,
            "4x the steps, zoom 1.5 + turns": LONGER + STRONG,
            "zoom 1.5": ["--zoom", "1.5"],
            "turns": ["--rotate"]}


def capacity_model(capacity_out: str):
    """Returns: (name, seed) -> the capacity probe's model.keras for the rows it shares, else None."""
    def model_of(name: str, seed: int) -> str | None:
        if name not in CAPACITY_ROWS:
            return None
        return os.path.join(capacity_out, f"{val_probe.slug(CAPACITY_ROWS[name])}-s{seed}", "model.keras")
    return model_of


def fit_gap_table(prep: str, out: str, table: dict, seed: int, results: dict, model_of) -> str:
    """Returns: the markdown of the fit-against-generalisation rows (seed `seed`, 4.8 FPI)."""
    lines = ["", f"Fit against generalisation (seed {seed}; sensitivity at 4.8 FPI on the training split, "
                 "which every row trained on, and on val):", "",
             "| variant | train split @4.8 (max) | val @4.8 (max) | train - val @4.8 |", "|---|---|---|---|"]
    fit = None
    for name in FIT_GAP_ROWS:
        if name not in table:
            continue
        fit = val_probe.training_split_froc(prep, out, name, seed, model=model_of(name, seed))
        val = results[(name, seed)]
        a, b = fit["sensitivity_at_fpi"]["4.8"], val["sensitivity_at_fpi"]["4.8"]
        lines.append(f"| {name} | {a:.3f} ({fit['max_sensitivity']:.3f}) | {b:.3f} ({val['max_sensitivity']:.3f}) "
                     f"| {a - b:+.3f} |")
    if fit is None:
        return ""
    lines.append(f"\nTraining split: {fit['num_images']} images, {fit['num_malignant_findings']} malignant findings.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = val_probe.probe_parser(__doc__.split("\n\n")[0], "augment_probe")
    parser.add_argument("--capacity-out", default=os.path.join(HERE, "out", "capacity_probe"),
                        help="the capacity probe's runs, reused for the rows it shares")
    args = parser.parse_args(argv)
    seeds = args.seeds
    prep = quality.prepare_data(args.quality_out, quality.data_settings({}, False))
    table = val_probe.selected(variants(), args.variants)
    model_of = capacity_model(args.capacity_out)
    results = val_probe.run_probe(prep, args.out, table, seeds, args.jobs, model_of=model_of)
    text = val_probe.render(
        "## Augmentation: zoom and 90-degree turns (`python benchmarks/augment_probe.py`)",
        "Hypersensitive loss, `hourglass train` defaults plus the row's augmentation and steps; val split "
        "({images} images, {findings} malignant findings), last epoch, seeds {seeds}, the main quality table's "
        "budget (4x its steps where the row says so), one TensorFlow thread per run, two runs side by side. "
        "Mean over seeds, per seed in brackets; training minutes per run (wall, shared machine; '-' = the "
        "capacity probe's run, reused).",
        table, seeds, results, minutes=True, paired=True)
    text += fit_gap_table(prep, args.out, table, seeds[0], results, model_of)
    val_probe.write_outputs("augment-probe.md", text, args.out, results, seeds=seeds, variants=table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
