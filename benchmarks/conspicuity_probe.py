"""Is the detector held back by the data's subtlety? The same images with brighter lesions, decided on val.

Every probe so far (loss geometry, learning rate, capacity, budget, data size, augmentation,
post-processing) leaves the hypersensitive loss at 0.5-0.63 sensitivity at 4.8 FPI on the main data's
val split, and the miss diagnosis puts 93 % of the false marks on normal tissue whose heatmap peaks
(p99.9 0.29) outrank a typical malignant mass (median 0.20). This probe asks whether that ceiling is
the pipeline's or the data's: the main quality table's data (`hourglass synth` defaults) is drawn
again with every lesion's contrast multiplied by 1.5 and 2 (`hourglass synth --contrast`; the same
seed, so the same patients, images, findings, boxes and split, only the lesions brighter), and the
hypersensitive loss and the L2 baseline are trained with `hourglass train` defaults and the main
table's budget on each and scored on each setting's own val split. The stress table's subtlety axis
goes the other way (x0.7, x0.5, on test).

Seeds 0-2 (`--seeds`), one TensorFlow thread per run, two runs side by side; the test split is never
read. Backs README's *The data's subtlety sets the ceiling*.

Outputs: OUT/<variant>-s<seed>/ (runs), OUT/eval-<variant>-s<seed>/ (val FROC),
benchmarks/conspicuity-probe.md. A finished evaluation is kept.

Usage:
    python benchmarks/conspicuity_probe.py            # ~65 min on 2 cores
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import quality  # noqa: E402
import val_probe  # noqa: E402

#: Lesion contrast multipliers (`hourglass synth --contrast`); 1.0 is the main data.
CONTRASTS = (1.0, 1.5, 2.0)
#: Loss name -> its `hourglass train` flags.
LOSSES = {"hypersensitive": ["--loss", "hypersensitive"], "L2": ["--loss", "l2"]}


def row_name(loss: str, contrast: float) -> str:
    """Returns: the table row of `loss` trained and scored on lesions at `contrast` times the default."""
    return f"{loss}, lesion contrast x{contrast:g}" + (" (main data)" if contrast == 1.0 else "")


def variants() -> dict[str, list[str]]:
    """Returns: variant name -> its `hourglass train` flags (beside the budget and seed), contrast-major."""
    return {row_name(loss, c): flags for c in CONTRASTS for loss, flags in LOSSES.items()}


def contrast_of(name: str) -> float:
    """Returns: the lesion contrast multiplier of a `variants()` row."""
    return next(c for c in CONTRASTS for loss in LOSSES if row_name(loss, c) == name)


def loss_gap_table(table: dict, seeds: list[int], results: dict) -> str:
    """Returns: the markdown of hypersensitive minus L2 at each contrast (paired by seed, 4.8 FPI and max)."""
    lines = ["", "Hypersensitive minus L2 at each contrast (paired by seed; mean ± half-width of the 95 % "
                 "t-interval):", "", "| lesion contrast | Δ @4.8 | Δ max sens |", "|---|---|---|"]
    for c in CONTRASTS:
        ours, l2 = row_name("hypersensitive", c), row_name("L2", c)
        if ours not in table or l2 not in table:
            continue
        cells = []
        for key in (lambda f: f["sensitivity_at_fpi"]["4.8"], lambda f: f["max_sensitivity"]):
            mean, half = quality.mean_ci([key(results[(ours, s)]) - key(results[(l2, s)]) for s in seeds])
            cells.append(f"{mean:+.3f} ± {quality.fmt(half)}")
        lines.append(f"| x{c:g} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n" if len(lines) > 5 else ""


def main(argv=None) -> int:
    parser = val_probe.probe_parser(__doc__.split("\n\n")[0], "conspicuity_probe")
    args = parser.parse_args(argv)
    seeds = args.seeds
    table = val_probe.selected(variants(), args.variants)
    preps = {c: quality.prepare_data(args.quality_out, quality.data_settings({"contrast": c}, False))
             for c in sorted({contrast_of(name) for name in table})}
    data_of = {name: preps[contrast_of(name)] for name in table}
    results = val_probe.run_probe(data_of[next(iter(table))], args.out, table, seeds, args.jobs, data_of=data_of)
    text = val_probe.render(
        "## Lesion conspicuity: the same images with brighter lesions (`python benchmarks/conspicuity_probe.py`)",
        "`hourglass train` defaults (the row's loss), the main quality table's budget, trained and scored on "
        "the row's data: the main data with every lesion's contrast multiplied as the row says (same seed: "
        "same patients, images, findings and split); val split ({images} images, {findings} malignant "
        "findings), last epoch, seeds {seeds}, one TensorFlow thread per run, two runs side by side. Mean over "
        "seeds, per seed in brackets; training minutes per run (wall, shared machine); Δ against the first row.",
        table, seeds, results, minutes=True, paired=True)
    text += loss_gap_table(table, seeds, results)
    val_probe.write_outputs("conspicuity-probe.md", text, args.out, results, seeds=seeds, variants=table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
