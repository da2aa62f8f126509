"""Validation probes: train variants of `hourglass train` on the main quality table's data and budget,
evaluate each final model on the whole val split, and render one table. Decisions about defaults are
made here, on validation; the test split is never read.

Used by `tuned_defaults_probe.py` (should the tuned values become defaults?) and `capacity_probe.py`
(which model size at a fixed CPU budget?).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import quality  # noqa: E402

FPI_POINTS = ("1", "2", "4.8")


def slug(name: str) -> str:
    """Returns: `name` as a directory name (letters and digits, dashes for the rest)."""
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


def probe_parser(description: str, out_name: str) -> argparse.ArgumentParser:
    """The arguments every val probe takes: where the main data and its own runs go, seeds, a subset
    of its variants, parallel runs.

    Args:
        description: the probe's one-line description.
        out_name: its output directory under benchmarks/out.

    Returns:
        The parser (a probe adds its own arguments).
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quality-out", default=os.path.join(HERE, "out", "quality"))
    parser.add_argument("--out", default=os.path.join(HERE, "out", out_name))
    parser.add_argument("--seeds", default="0,1,2", type=lambda text: [int(s) for s in text.split(",")])
    parser.add_argument("--variants", default=None, help="semicolon-separated subset (names hold commas)")
    parser.add_argument("--jobs", type=int, default=2)
    return parser


def selected(table: dict, names: str | None) -> dict:
    """Returns: the rows of `table` named in `names` (semicolon-separated; None: all), in that order."""
    if not names:
        return table
    wanted = names.split(";")
    unknown = [name for name in wanted if name not in table]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; known: {list(table)}")
    return {name: table[name] for name in wanted}


def probe_task(prep: str, out: str, name: str, flags: list[str], seed: int, *, train_prep: str | None = None,
               model_of: Callable[[str, int], str | None] = lambda name, seed: None) -> Callable[[], dict]:
    """One variant and seed: train it (unless `model_of` names an existing model), evaluate on val.

    Args:
        prep: PREP whose val split scores the model (and that it trains on, unless `train_prep`).
        train_prep: PREP to train on instead, e.g. a larger set whose val patients include `prep`'s
            (so no `prep` val image is in its training split).
        out: the probe's output directory.
        name: variant name (its runs go to OUT/<slug>-s<seed>).
        flags: `hourglass train` flags of the variant; they come after the main quality table's budget
            and seed flags (`quality.train_flags`), so a variant can change the budget too.
        seed: training seed.
        model_of: (name, seed) -> an already trained model.keras to evaluate instead, or None.

    Returns:
        A callable that returns the val FROC (froc.json) with "train_minutes" added (None when the
        model was not trained by this probe). A finished evaluation is kept.
    """
    def run() -> dict:
        tag = f"{slug(name)}-s{seed}"
        eval_dir = os.path.join(out, f"eval-{tag}")
        froc_path = os.path.join(eval_dir, "froc.json")
        timing_path = os.path.join(out, f"{tag}.timing.json")
        if not os.path.exists(froc_path):
            model = model_of(name, seed)
            if model is None or not os.path.exists(model):
                run_dir = os.path.join(out, tag)
                cmd = [*quality.hourglass(), "train", "--data", train_prep or prep, "--out", run_dir,
                       *quality.train_flags(quality.parse_args(["main"]), [], seed), *flags]
                _, seconds = quality.run(cmd, os.path.join(out, f"{tag}.train.log"), 3600, 1)
                quality.write_json(timing_path, {"train_minutes": seconds / 60})
                model = os.path.join(run_dir, "model.keras")
            evaluate(model, prep, "val", eval_dir, os.path.join(out, f"{tag}.evaluate.log"))
        froc = quality.read_json(froc_path)
        timing = quality.read_json(timing_path) if os.path.exists(timing_path) else {}
        return {**froc, "train_minutes": timing.get("train_minutes")}
    return run


def evaluate(model: str, prep: str, split: str, eval_dir: str, log: str) -> dict:
    """`hourglass evaluate` of `model` on PREP's `split` (one thread, no overlays).

    Returns:
        Its FROC (eval_dir/froc.json).
    """
    quality.run([*quality.hourglass(), "evaluate", "--model", model, "--data", prep, "--split", split,
                 "--overlays", "0", "--bootstrap", "200", "--quiet", "--out", eval_dir], log, 1800, 1)
    return quality.read_json(os.path.join(eval_dir, "froc.json"))


def training_split_froc(prep: str, out: str, name: str, seed: int, model: str | None = None) -> dict:
    """The FROC of a probe run's model on PREP's *training* split (how well it fits what it saw: set
    beside its val FROC, the generalisation gap). A finished evaluation is kept.

    Args:
        model: the model.keras to score instead of the probe's own run (OUT/<variant>-s<seed>), when it
            exists (as in `probe_task`, a reused model that is absent was trained again as the probe's own).

    Returns:
        The FROC (OUT/eval-train-<variant>-s<seed>/froc.json).
    """
    tag = f"{slug(name)}-s{seed}"
    eval_dir = os.path.join(out, f"eval-train-{tag}")
    froc_path = os.path.join(eval_dir, "froc.json")
    if os.path.exists(froc_path):
        return quality.read_json(froc_path)
    if model is None or not os.path.exists(model):
        model = os.path.join(out, tag, "model.keras")
    return evaluate(model, prep, "train", eval_dir,
                    os.path.join(out, f"{tag}.evaluate-train.log"))


def run_probe(prep: str, out: str, table: dict[str, list[str]], seeds: list[int], jobs: int,
              data_of: dict[str, str] | None = None, train_data_of: dict[str, str] | None = None,
              **task_options) -> dict[tuple[str, int], dict]:
    """Runs every (variant, seed) of `table`, `jobs` at a time.

    Args:
        data_of: variant -> its own PREP (default: `prep`), e.g. the same images at another `--size`.
        train_data_of: variant -> the PREP it trains on (its val split still comes from `data_of` / `prep`).

    Returns:
        (variant, seed) -> its val FROC (see `probe_task`).
    """
    os.makedirs(out, exist_ok=True)
    keys = [(name, seed) for name in table for seed in seeds]
    data_of, train_data_of = data_of or {}, train_data_of or {}
    tasks = [probe_task(data_of.get(name, prep), out, name, table[name], seed,
                        train_prep=train_data_of.get(name), **task_options) for name, seed in keys]
    return dict(zip(keys, quality.in_parallel(tasks, jobs)))


def image_hashes(prep: str, split: str) -> set[str]:
    """Returns: the image hashes of PREP's `split` (every stratum)."""
    import glob

    import tensorflow as tf

    only_hash = {"image_hash": tf.io.FixedLenFeature([], tf.string)}  # no PNG decode
    files = sorted(glob.glob(os.path.join(prep, split, "*.tfrecord")))
    return {tf.io.parse_single_example(serialized, only_hash)["image_hash"].numpy().decode()
            for serialized in tf.data.TFRecordDataset(files)}


def check_scored_images_unseen(val: set[str], other_train: set[str], other_val: set[str]) -> None:
    """Refuses a training PREP that holds any image of the val split the probe scores on.

    Args:
        val: image hashes of the scored val split.
        other_train: image hashes of the other PREP's training split.
        other_val: image hashes of the other PREP's val split.

    Raises:
        SystemExit: a scored image is in the other training split, or missing from its val split.
    """
    leaked, missing = val & other_train, val - other_val - other_train
    if leaked:
        raise SystemExit(f"val_probe: {len(leaked)} scored val images are in the other PREP's training split")
    if missing:
        raise SystemExit(f"val_probe: {len(missing)} scored val images are not in the other PREP's val split "
                         "(not the same images)")


def _per_seed(values: list[float], digits: int = 3) -> str:
    return " / ".join(f"{v:.{digits}f}" for v in values)


def render(title: str, intro: str, table: dict[str, list[str]], seeds: list[int],
           results: dict[tuple[str, int], dict], *, minutes: bool = False, paired: bool = False) -> str:
    """The probe's markdown: mean over seeds of sensitivity at 1, 2 and 4.8 FPI (per seed in brackets),
    max sensitivity, the FPI where it is reached, (`minutes`) the training minutes per run and
    (`paired`) the difference at 4.8 FPI against the first row, seed by seed (mean ± half-width of its
    95 % t-interval).

    Returns:
        The markdown text.
    """
    any_froc = next(iter(results.values()))
    header = ("| variant | @1 | @2 | @4.8 | max sens | FPI at max |" + (" train min |" if minutes else "")
              + (" Δ @4.8 vs first row (paired) |" if paired else ""))
    first = next(iter(table))
    lines = [title, "", intro.format(images=any_froc["num_images"], findings=any_froc["num_malignant_findings"],
                                     seeds=",".join(map(str, seeds))), "",
             header, "|" + "---|" * (header.count("|") - 1)]
    for name in table:
        frocs = [results[(name, s)] for s in seeds]
        cells = []
        for point in FPI_POINTS:
            values = [f["sensitivity_at_fpi"][point] for f in frocs]
            cells.append(f"{sum(values) / len(values):.3f} ({_per_seed(values)})")
        maxima = [f["max_sensitivity"] for f in frocs]
        fpis = [f["fpi_at_max_sensitivity"] for f in frocs]
        row = (f"| {name} | {' | '.join(cells)} | {sum(maxima) / len(maxima):.3f} ({_per_seed(maxima)}) | "
               f"{' / '.join(f'{v:.0f}' for v in fpis)} |")
        if minutes:
            spent = [f["train_minutes"] for f in frocs]
            row += " " + (" / ".join("-" if m is None else f"{m:.1f}" for m in spent)) + " |"
        if paired:
            mean, half = quality.mean_ci([results[(name, s)]["sensitivity_at_fpi"]["4.8"]
                                          - results[(first, s)]["sensitivity_at_fpi"]["4.8"] for s in seeds])
            row += " - |" if name == first else f" {mean:+.3f} ± {quality.fmt(half)} |"
        lines.append(row)
    return "\n".join(lines) + "\n"


def write_outputs(md_name: str, text: str, out: str, results: dict[tuple[str, int], dict], **extra) -> None:
    """Writes the committed markdown (benchmarks/<md_name>), OUT/<stem>.json (`results` keyed
    "variant|seed", beside `extra`) and prints the markdown."""
    with open(os.path.join(HERE, md_name), "w", encoding="utf-8") as handle:
        handle.write(text)
    stem = os.path.splitext(md_name)[0].replace("-", "_")
    payload = {**extra, "results": {f"{name}|{seed}": froc for (name, seed), froc in results.items()}}
    with open(os.path.join(out, f"{stem}.json"), "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=1, default=str)
    print(text)
