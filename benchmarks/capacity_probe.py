"""Which model at our CPU budget? Capacity, depth and resolution of the Hourglass, decided on val.

The hypersensitive loss with `hourglass train` defaults on the main quality table's data and budget,
with one model option changed at a time (features, stem features, depth, output stride), and the
default tiny model with twice and four times the steps (the same CPU minutes as a model twice as
costly: the fair reference for a bigger model; and how far more budget goes), and the default model on
the same images prepared at `--size 512` (twice the resolution; the same seed, salt and split); at
1.5x the steps (2,400: the budget issue #10 sets for the main table) on the main data and on three
times the images (2,400; the main data's images are its first 800, with the same patients and
splits, so every row is scored on the same val images), and on those with 4x the steps; and nine
times the images (7,200, likewise) at 4x the steps, the learning curve's third point.
Seeds 0-2 (`--seeds`), one TensorFlow thread per run; each final model.keras is evaluated on the
whole val split; the table gives the training minutes of every run. Backs README's *Capacity,
budget, resolution and data size do not close the gap either*.

Outputs: OUT/<variant>-s<seed>/ (runs), OUT/eval-<variant>-s<seed>/ (val FROC),
benchmarks/capacity-probe.md. A finished evaluation is kept.

Usage:
    python benchmarks/capacity_probe.py            # ~90 min on 2 cores
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import quality  # noqa: E402
import val_probe  # noqa: E402


#: The variant trained and evaluated on the same images prepared at twice the resolution.
HIGH_RESOLUTION = "tiny, images at --size 512"
#: The variant trained on three times the images (the main data's 800 are its first 800, so its val
#: patients include the main val split's) and scored on the main val split like every other row.
MORE_DATA = "tiny, 1.5x the steps, 3x the images"
#: The same three times the images with four times the steps (the direction the fit gap points to).
MORE_DATA_LONGER = "tiny, 4x the steps, 3x the images"
#: Nine times the images (7,200; again the main data's 800 first) at four times the steps: the third
#: point of the learning curve (1x, 3x, 9x the training findings at the same steps).
MOST_DATA_LONGER = "tiny, 4x the steps, 9x the images"
#: Row -> the number of synthetic images of its training PREP (the main data has 800).
LARGER_DATA = {MORE_DATA: 2400, MORE_DATA_LONGER: 2400, MOST_DATA_LONGER: 7200}


#: Rows whose first seed is also scored on the main data's training split (fit against generalisation).
FIT_GAP_ROWS = ("tiny (default)", "tiny, 1.5x the steps", "tiny, 2x the steps", "tiny, 4x the steps", MORE_DATA,
                MORE_DATA_LONGER, MOST_DATA_LONGER)


def fit_gap_table(prep: str, out: str, table: dict, seed: int, results: dict) -> str:
    """Returns: the markdown of the fit-against-generalisation rows (sensitivity at 4.8 FPI on the main
    data's training split and on val, seed `seed`)."""
    lines = ["", f"Fit against generalisation (seed {seed}; sensitivity at 4.8 FPI on the main data's training "
                 "split, which every row trained on, and on val):", "",
             "| variant | train split @4.8 (max) | val @4.8 (max) | train - val @4.8 |", "|---|---|---|---|"]
    fit = None
    for name in FIT_GAP_ROWS:
        if name not in table:
            continue
        fit, val = val_probe.training_split_froc(prep, out, name, seed), results[(name, seed)]
        a, b = fit["sensitivity_at_fpi"]["4.8"], val["sensitivity_at_fpi"]["4.8"]
        lines.append(f"| {name} | {a:.3f} ({fit['max_sensitivity']:.3f}) | {b:.3f} ({val['max_sensitivity']:.3f}) "
                     f"| {a - b:+.3f} |")
    if fit is None:
        return ""
    lines.append(f"\nTraining split: {fit['num_images']} images, {fit['num_malignant_findings']} malignant findings.")
    return "\n".join(lines) + "\n"


def variants() -> dict[str, list[str]]:
    """Returns: variant name -> its `hourglass train` flags (beside the budget and seed)."""
    def option(key: str, value) -> list[str]:
        return ["--model-option", f"{key}={value}"]
    return {"tiny (default)": [],
            "32 features": option("num_features", 32),
            "stem 16 features": option("stem_features", 16),
            "depth 4": option("depth", 4),
            "output stride 2": option("output_stride", 2),
            "tiny, 2x the steps": ["--steps-per-epoch", "200"],
            "tiny, 4x the steps": ["--steps-per-epoch", "400"],
            HIGH_RESOLUTION: [],
            "tiny, 1.5x the steps": ["--steps-per-epoch", "150"],
            MORE_DATA: ["--steps-per-epoch", "150"],
            MORE_DATA_LONGER: ["--steps-per-epoch", "400"],
            MOST_DATA_LONGER: ["--steps-per-epoch", "400"]}


def main(argv=None) -> int:
    parser = val_probe.probe_parser(__doc__.split("\n\n")[0], "capacity_probe")
    args = parser.parse_args(argv)
    seeds = args.seeds
    prep = quality.prepare_data(args.quality_out, quality.data_settings({}, False))
    table = val_probe.selected(variants(), args.variants)
    data_of = {}
    if HIGH_RESOLUTION in table:  # the same synthetic images and split (same seed and salt), 2x the pixels
        data_of[HIGH_RESOLUTION] = quality.prepare_data(args.quality_out, quality.data_settings({"size": 512}, False))
    train_data_of = {}
    scored = val_probe.image_hashes(prep, "val")
    for images in sorted({LARGER_DATA[name] for name in table if name in LARGER_DATA}):
        # The same generator and seed: the first 800 images are the main data's.
        larger = quality.prepare_data(args.quality_out, quality.data_settings({"images": images}, False))
        val_probe.check_scored_images_unseen(scored, val_probe.image_hashes(larger, "train"),
                                             val_probe.image_hashes(larger, "val"))
        train_data_of.update({name: larger for name in table if LARGER_DATA.get(name) == images})
    results = val_probe.run_probe(prep, args.out, table, seeds, args.jobs, data_of=data_of,
                                  train_data_of=train_data_of)
    text = val_probe.render(
        "## Capacity, budget, resolution and data size (`python benchmarks/capacity_probe.py`)",
        "Hypersensitive loss, `hourglass train` defaults, one thing changed per row (a model option, the "
        "steps, the PREP's `--size`, the number of training images); val split "
        "({images} images, {findings} malignant findings), last epoch, seeds {seeds}, the main quality table's "
        "budget (unless the row says otherwise), one TensorFlow thread per run, two runs side by side. Mean "
        "over seeds, per seed in brackets; training minutes per run (wall, shared machine).",
        table, seeds, results, minutes=True, paired=True)
    text += fit_gap_table(prep, args.out, table, seeds[0], results)
    val_probe.write_outputs("capacity-probe.md", text, args.out, results, seeds=seeds, variants=table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
