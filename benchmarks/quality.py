"""Detection quality: the losses side by side on the same data, seeds and budget, with confidence intervals.

Tables (each its own make target, resumable: a finished run is kept, keyed by its data, its flags and
the behaviour of the training and scoring code, `behaviour_fingerprint`: a short probe run whose numbers
are hashed, so a refactor that changes no number keeps the runs and any numeric change redoes them):

    main      (make quality)           L2, hypersensitive, focal             x seeds (default 0, 1, 2)
    two-stage (make quality-two-stage) main's hypersensitive runs + stage two (benchmarks/quality_two_stage.py)
    tuned     (make quality-tuned)     each loss tuned over its own settings, same trial budget, then
                                       its best values x seeds (benchmarks/quality_tuned.py)
    ablation  (make quality-ablation)  hypersensitive with (a)-(d) off       x seeds
    stress    (make quality-stress)    hypersensitive vs L2 along each stress axis of `hourglass synth`
                                       (box looseness/offset, lesion size spread, rarity, subtlety) x seeds;
                                       on the box axis also hypersensitive with (a) on ("recentred")

Every run is `hourglass train` with the DEFAULTS of the command (the loss geometry, learning rate and its
schedule are whatever `hourglass train --help` says) plus the benchmark's budget (--patch-epochs,
--full-epochs, --steps-per-epoch) and the seed; only the loss or one principle changes between variants.
The final weights are evaluated once on the held-out test split with `hourglass evaluate` (bootstrap CIs
over patients). The validation split feeds the per-epoch FROC callback (`val_sensitivity` in
history.csv), which gives the time to quality: the training minutes until validation sensitivity at
4.8 FPI first reaches 0.8 and 0.9. Validation selects nothing in the main, ablation and stress tables (no
checkpoint choice, no seed choice): their test numbers come from the last epoch of every run. The tuned
table scores best.keras, the epoch chosen on validation (the epoch each tuning trial was ranked by), and
the last epoch beside it. A run that another table already made (the same flags, data, checkpoint and
behaviour: the stress table's base setting, the ablation's "(a) off" row) is reused, not trained twice.

Runs go `--jobs` at a time (default: cores // `--threads`), each with `--threads` TensorFlow threads
(default 1; 0 = TensorFlow's default, all cores). On our 2-core machines two one-thread runs side by
side train about 1.7x the steps per minute of one run on both cores (small convolutions do not split
well across threads). The thread count changes floating-point sums, so it is part of a run's behaviour:
a finished run is kept with the thread count that made it (the main table's 2026-12-01 runs: TensorFlow's
default), and new runs use `--threads`.

Outputs (under --out, default benchmarks/out/quality):
    data/<name>/{synth,prepared}    the data sets (made once per settings)
    runs/<table>/<variant>-s<seed>/ run directories, eval/ the evaluation outputs, *.record.json
    quality-<table>.json / .md      per seed and mean over seeds (95% t-interval across seeds), paired
                                    differences against L2, FPI at which 0.95 / 0.97 is first reached
    quality-<table>.png             every FROC curve (seed 0 of every variant) in one plot

Usage:
    python benchmarks/quality.py main                      # 9 runs of 1,600 steps, ~6-9 min each on 2 cores
    python benchmarks/quality.py ablation --seeds 0,1,2
    python benchmarks/quality.py stress --seeds 0,1
    python benchmarks/quality.py main --quick              # smoke run: little data, a few steps
    python benchmarks/quality.py main --render-only        # tables and plot from the finished runs
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from common import THREAD_VARIABLES, hourglass_cli, run_step, thread_env  # noqa: E402

from keras_hourglass import atomic  # noqa: E402
FPI_COLUMNS = ("0.25", "0.5", "1", "2", "4.8")
SENSITIVITY_TARGETS = (0.95, 0.97)
VAL_TARGETS = (0.8, 0.9)

#: table -> {variant: (description, extra `hourglass train` flags)}
TABLES: dict[str, dict[str, tuple[str, list[str]]]] = {
    "main": {
        "l2": ("Gaussian L2 baseline (Newell)", ["--loss", "l2"]),
        "hypersensitive": ("hypersensitive loss, training defaults ((a) off)", ["--loss", "hypersensitive"]),
        "focal": ("CenterNet penalty-reduced focal loss", ["--loss", "focal"]),
    },
    "ablation": {  # each variant switches one principle off the paper's full loss ((a)-(d) on)
        "hypersensitive": ("hypersensitive loss, all principles", ["--loss", "hypersensitive", "--recenter"]),
        "no-recenter": ("(a) off: reference centred on the box (the training default: main's run)",
                        ["--loss", "hypersensitive"]),
        "one-sigma": ("(b) off: a single sigma (12 reference px)", ["--recenter", "--sigmas", "12"]),
        "no-top-k": ("(c) off: top_k = 0", ["--recenter", "--top-k", "0"]),
        "omega-1": ("(d) off: omega = 1", ["--recenter", "--omega", "1.0"]),
    },
    "stress": {
        "l2": ("Gaussian L2 baseline (Newell)", ["--loss", "l2"]),
        "hypersensitive": ("hypersensitive loss, training defaults ((a) off)", ["--loss", "hypersensitive"]),
        # principle (a) where it should pay: off-centre lesions in loose boxes (base: the ablation's full loss)
        "recentred": ("hypersensitive loss with (a) on (re-centred on the patch's centre of mass)",
                      ["--loss", "hypersensitive", "--recenter"]),
    },
}
#: stress variants run on some axes only (variant -> axes); the others run on every axis
STRESS_VARIANT_AXES = {"recentred": ("boxes (a)",)}

#: The data of the main and ablation tables: `hourglass synth` defaults (loose boxes, all four finding
#: types) with an enriched case mix so that the test split holds >= 60 malignant findings.
BASE_DATA = {"images": 800, "height": 640, "width": 512, "malignant_rate": 0.25, "high_risk_rate": 0.1,
             "benign_rate": 0.15, "box_looseness": 2.5, "box_offset": 0.2, "size_spread": 1.0, "contrast": 1.0,
             "size": 256, "val_fraction": 0.15, "test_fraction": 0.3, "seed": 11}

#: stress axis -> [(setting name, overrides of BASE_DATA)]; the first of each is the base data.
STRESS_AXES: dict[str, list[tuple[str, dict]]] = {
    "boxes (a)": [("base", {}), ("loose", {"box_looseness": 4.0, "box_offset": 0.35}),
                  ("very-loose", {"box_looseness": 6.0, "box_offset": 0.5})],
    "size spread (b)": [("base", {}), ("x1.6", {"size_spread": 1.6}), ("x2.5", {"size_spread": 2.5})],
    "rarity (c, d)": [("base", {}), ("10%", {"malignant_rate": 0.1, "images": 1600}),
                      ("4%", {"malignant_rate": 0.04, "images": 3200})],
    "subtlety": [("base", {}), ("contrast-0.7", {"contrast": 0.7}), ("contrast-0.5", {"contrast": 0.5})],
}


def variants_on_axis(variants: dict, axis: str | None) -> dict:
    """Returns: the `variants` that run on a stress `axis` (`STRESS_VARIANT_AXES`; every variant off the stress table)."""
    return {name: v for name, v in variants.items() if axis is None or axis in STRESS_VARIANT_AXES.get(name, (axis,))}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", choices=[*TABLES, "two-stage", "tuned"])
    parser.add_argument("--out", default=os.path.join(HERE, "out", "quality"))
    parser.add_argument("--seeds", default=None, help="comma-separated (default 0,1,2; stress 0,1)")
    parser.add_argument("--variants", default=None, help="comma-separated subset of the table's variants")
    parser.add_argument("--axes", default=None, help="stress: comma-separated subset of " + ", ".join(STRESS_AXES))
    parser.add_argument("--settings", default=None,
                        help="stress: comma-separated setting names to run (e.g. contrast-0.5; the base setting "
                             "is the main table's runs); the table still shows every finished setting")
    parser.add_argument("--patch-epochs", type=int, default=12)
    parser.add_argument("--full-epochs", type=int, default=4)
    parser.add_argument("--steps-per-epoch", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--val-images", type=int, default=64)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--max-trials", type=int, default=None,
                        help="tuned: `hourglass tune` trials per loss (default quality_tuned.DEFAULT_TRIALS; a larger "
                             "value extends a finished search)")
    parser.add_argument("--timeout-minutes", type=float, default=30.0, help="per train/evaluate process")
    parser.add_argument("--threads", type=int, default=1,
                        help="TensorFlow threads per run (intra- and inter-op; default 1; 0 = TensorFlow's default, "
                             "all cores). Part of every run's key: the thread count changes floating-point sums")
    parser.add_argument("--jobs", type=int, default=None,
                        help="runs (or searches) at a time (default: CPU cores // --threads, at least 1)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 120 images, 3 x 5 steps")
    parser.add_argument("--render-only", action="store_true", help="tables from the finished runs only")
    parser.add_argument("--fingerprint-only", action="store_true",
                        help="compute (and cache) each variant's behaviour fingerprint, train nothing")
    parser.add_argument("--code-root", default=ROOT,
                        help="with --fingerprint-only: the checkout whose code the probes run (default: this one; "
                             "probed with --threads: 0 for runs made with TensorFlow's default threads), "
                             "e.g. the commit a finished table was measured on")
    args = parser.parse_args(argv)
    default_seeds = "0,1" if args.table == "stress" else "0,1,2"
    args.seeds = [int(s) for s in (args.seeds or default_seeds).split(",")]
    # two-stage: on main's hypersensitive runs; tuned: one search per loss
    variants = TABLES.get(args.table) or ({"hypersensitive": None, "l2": None, "focal": None}
                                          if args.table == "tuned" else {"hypersensitive": None})
    args.variants = args.variants.split(",") if args.variants else list(variants)
    unknown = [v for v in args.variants if v not in variants]
    if unknown:
        parser.error(f"unknown variants {unknown}; {args.table} has {list(variants)}")
    args.axes = args.axes.split(",") if args.axes else list(STRESS_AXES)
    if any(a not in STRESS_AXES for a in args.axes):
        parser.error(f"unknown axes; choose from {list(STRESS_AXES)}")
    names = {name for axis in args.axes for name, _ in STRESS_AXES[axis]}
    args.settings = args.settings.split(",") if args.settings else sorted(names)
    if any(name not in names for name in args.settings):
        parser.error(f"unknown settings {sorted(set(args.settings) - names)}; the axes have {sorted(names)}")
    if args.threads < 0 or (args.jobs is not None and args.jobs < 1):
        parser.error("--threads must be >= 0 and --jobs >= 1")
    args.threads = args.threads or None  # None: TensorFlow's default
    args.jobs = args.jobs or max(1, (os.cpu_count() or 1) // (args.threads or os.cpu_count() or 1))
    if args.max_trials is None:
        from quality_tuned import DEFAULT_TRIALS

        args.max_trials = DEFAULT_TRIALS
    if args.quick:
        args.patch_epochs, args.full_epochs, args.steps_per_epoch, args.bootstrap = 2, 1, 5, 100
        args.val_images, args.max_trials = 8, 2
    return args


def hourglass() -> list[str]:
    return hourglass_cli()


def run(cmd: list[str], log_path: str, timeout: float, threads: int | None = None) -> tuple[str, float]:
    """Runs one step with `threads` TensorFlow threads; returns (stdout, seconds). stderr goes to `log_path`."""
    return run_step(cmd, log_path, timeout, "quality", extra_env=thread_env(threads))


def read_json(path: str):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def write_json(path: str, payload) -> None:
    atomic.write_json(path, payload)


def data_settings(overrides: dict, quick: bool) -> dict:
    settings = {**BASE_DATA, **overrides}
    if quick:
        settings["images"] = min(settings["images"], 120)
    return settings


def prepare_data(out: str, settings: dict, create: bool = True) -> str | None:
    """Makes (once) the synthetic data set of `settings`; returns PREP (None if absent and not `create`).

    A fixed salt: the same split everywhere."""
    import hashlib

    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    root = os.path.join(out, "data", key)
    synth, prep = os.path.join(root, "synth"), os.path.join(root, "prepared")
    stamp = os.path.join(root, "settings.json")
    if os.path.exists(stamp) and os.path.exists(os.path.join(prep, "manifest.json")):
        return prep
    if not create:
        return None
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    log = os.path.join(root, "data.log")
    s = settings
    run([*hourglass(), "synth", "--out", synth, "--images", str(s["images"]), "--seed", str(s["seed"]),
         "--height", str(s["height"]), "--width", str(s["width"]), "--malignant-rate", str(s["malignant_rate"]),
         "--high-risk-rate", str(s["high_risk_rate"]), "--benign-rate", str(s["benign_rate"]),
         "--box-looseness", str(s["box_looseness"]), "--box-offset", str(s["box_offset"]),
         "--size-spread", str(s["size_spread"]), "--contrast", str(s["contrast"]), "--no-progress"], log, 1800)
    run([*hourglass(), "prepare", "--annotations", os.path.join(synth, "annotations.csv"), "--images-root", synth,
         "--out", prep, "--size", str(s["size"]), "--val-fraction", str(s["val_fraction"]),
         "--test-fraction", str(s["test_fraction"]), "--salt", f"quality-{s['seed']}", "--workers", "2",
         "--quiet"], log + ".prepare", 1800)
    write_json(stamp, settings)
    return prep


def data_facts(prep: str, split: str = "test") -> dict:
    """What the README says about the data and the mask, measured: breast-mask share of the image and the
    share of finding centres inside it, per label; mask share of a phase-1 crop at the default geometry."""
    import numpy as np

    from keras_hourglass.breast import breast_mask
    from keras_hourglass.data import pipeline
    from keras_hourglass.training.config import TrainConfig
    from keras_hourglass.training.geometry import prep_long_side, resolve_geometry

    area, inside = [], {}
    for element in pipeline.evaluation_dataset(prep, split=split, input_multiple=32):
        mask = breast_mask(element["image"], 4).numpy()[0, ..., 0]
        height, width = int(element["height"][0]), int(element["width"][0])
        area.append(float(mask[: -(-height // 4), : -(-width // 4)].mean()))
        for box, label in zip(element["boxes"][0].numpy(), element["box_labels"][0].numpy()):
            centre = int((box[0] + box[2]) / 8), int((box[1] + box[3]) / 8)
            inside.setdefault(label.decode(), []).append(bool(mask[centre]))
    geometry = resolve_geometry(TrainConfig(), long_side=prep_long_side(prep), stride=4, input_multiple=32)
    return {"split": split, "images": len(area), "breast_mask_share_of_image": round(float(np.mean(area)), 3),
            "finding_centres_inside_mask": {k: f"{sum(v)}/{len(v)}" for k, v in sorted(inside.items())},
            "default_geometry": geometry.to_json(),
            "crop_share_masked_from_l_bg": round(geometry.masked_share(), 3)}


def blob_filter_baseline(prep: str, split: str = "test") -> dict:
    """A detector with no training, to calibrate how hard the data is: the maximum over three scales of a
    difference-of-Gaussians blob filter (sigma 1, 2, 3 image px against 3x as wide), max-pooled to stride 4,
    peaks in the breast mask, evaluated with the same FROC as the trained models."""
    import numpy as np
    from scipy import ndimage

    from keras_hourglass.breast import breast_mask
    from keras_hourglass.data import pipeline
    from keras_hourglass.evaluation.froc import ImageRecord, froc
    from keras_hourglass.peaks import find_peaks

    records = []
    for element in pipeline.evaluation_dataset(prep, split=split, input_multiple=32):
        image = element["image"].numpy()[0, ..., 0]
        height, width = int(element["height"][0]), int(element["width"][0])
        response = np.zeros_like(image)
        for sigma in (1.0, 2.0, 3.0):
            dog = ndimage.gaussian_filter(image, sigma) - ndimage.gaussian_filter(image, 3 * sigma)
            response = np.maximum(response, sigma * dog)
        heatmap = response.reshape(image.shape[0] // 4, 4, image.shape[1] // 4, 4).max(axis=(1, 3))
        marks, count = find_peaks(heatmap[None, ..., None], max_marks=100, threshold=-1e9, stride=4,
                                  mask=breast_mask(element["image"], 4))
        marks = marks.numpy()[0][: int(count[0])].astype(float)
        marks = marks[(marks[:, 0] < height) & (marks[:, 1] < width)]
        records.append(ImageRecord(image_id=element["image_hash"].numpy()[0].decode(),
                                   patient_id=element["patient_hash"].numpy()[0].decode(), marks=marks,
                                   boxes=element["boxes"].numpy()[0],
                                   labels=[label.decode() for label in element["box_labels"].numpy()[0]]))
    return froc(records, n_bootstrap=1000, seed=0).to_json()


def train_flags(args, variant_flags: list[str], seed: int) -> list[str]:
    return [*variant_flags, "--seed", str(seed), "--patch-epochs", str(args.patch_epochs),
            "--full-epochs", str(args.full_epochs), "--steps-per-epoch", str(args.steps_per_epoch),
            "--batch-size", str(args.batch_size), "--val-images", str(args.val_images), "--strategy", "default",
            "--quiet"]


# The sources that decide what a training run learns and how it is scored; a change in any of them
# (docstrings and comments aside) makes a finished run stale.
RECIPE_SOURCES = ("keras_hourglass/model", "keras_hourglass/losses", "keras_hourglass/training",
                  "keras_hourglass/data/pipeline.py", "keras_hourglass/data/records.py", "keras_hourglass/peaks.py",
                  "keras_hourglass/breast.py", "keras_hourglass/evaluation", "keras_hourglass/cli/train.py")


def _code_without_docstrings(path: str) -> str:
    import ast

    tree = ast.parse(open(path, encoding="utf-8").read())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(getattr(body[0], "value", None), ast.Constant)
                and isinstance(body[0].value.value, str)):
            body[0] = ast.Pass()
    return ast.dump(tree)


def recipe_fingerprint(root: str = ROOT) -> str:
    """A hash of the training and scoring code (RECIPE_SOURCES, docstrings and comments ignored).

    Returns:
        12 hex digits; part of every run's key, so runs made by other code are redone, not reused.
    """
    import hashlib

    digest = hashlib.sha256()
    for source in RECIPE_SOURCES:
        path = os.path.join(root, source)
        files = [path] if path.endswith(".py") else sorted(
            os.path.join(d, f) for d, _, names in os.walk(path) for f in names if f.endswith(".py"))
        for file in files:
            digest.update(os.path.relpath(file, root).encode())
            digest.update(_code_without_docstrings(file).encode())
    return digest.hexdigest()[:12]


#: The behaviour probe's budget: a variant's own flags with seed 0 and a few steps of both phases.
PROBE_FLAGS = ["--seed", "0", "--patch-epochs", "1", "--full-epochs", "1", "--steps-per-epoch", "3",
               "--batch-size", "8", "--val-images", "4", "--strategy", "default", "--quiet"]
#: history.csv columns that are clocks, not numbers the code computes.
_CLOCK_COLUMNS = ("epoch_seconds",)


def _probe_key(variant_flags: list[str], data_hash: str | None, threads: int | None = None) -> str:
    import hashlib

    parts = [variant_flags, PROBE_FLAGS, data_hash, *([{"threads": threads}] if threads else [])]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:12]


def _probe_numbers(run_dir: str, eval_dir: str) -> str:
    """The probe's outputs as text: history.csv without its clock columns, marks.csv and froc.json's curve."""
    import csv

    with open(os.path.join(run_dir, "history.csv"), newline="", encoding="utf-8") as handle:
        rows = [{k: v for k, v in row.items() if k not in _CLOCK_COLUMNS} for row in csv.DictReader(handle)]
    with open(os.path.join(eval_dir, "marks.csv"), encoding="utf-8") as handle:
        marks = handle.read()
    curve = read_json(os.path.join(eval_dir, "froc.json")).get("curve", [])
    return json.dumps({"history": rows, "marks": marks, "curve": curve}, sort_keys=True)


def behaviour_fingerprint(out: str, prep: str, variant_flags: list[str], code_root: str = ROOT,
                          create: bool = True, recipe: str | None = None, threads: int | None = None) -> str | None:
    """What the training and scoring code does with a variant's flags on PREP, as 12 hex digits.

    A probe: `hourglass train` with the variant's flags and `PROBE_FLAGS` (a few steps of both phases,
    validation included), run by the code under `code_root`, then `hourglass evaluate` of the result on the
    val split; the hash covers every number they write (losses and validation figures per epoch, every
    mark's score, the FROC curve), not the clocks. Runs are deterministic on the CPU, so two code versions
    with the same behaviour fingerprint train and score alike as far as the probe reaches: a refactor that
    moves no number keeps the finished runs, a change that moves one redoes them. Cached in
    `out/behaviour/<recipe>-<probe key>.json` (`recipe_fingerprint(code_root)`, flags and data).

    Args:
        out: the benchmark's output root.
        prep: the table's PREP.
        variant_flags: the variant's `hourglass train` flags (no budget, no seed).
        code_root: a checkout whose `keras_hourglass` the probe runs (default: this one).
        create: run the probe when it is not cached (False: None instead).
        recipe: look up the cached fingerprint of code with this `recipe_fingerprint` instead of
            `code_root`'s (a finished run's record names the code that made it); with `create` False.
        threads: TensorFlow threads of the probe (None: TensorFlow's default), as the runs it stands for
            had: the thread count changes floating-point sums, so it is part of the behaviour.

    Returns:
        The fingerprint, or None (not cached and `create` is False).
    """
    data_hash = read_json(os.path.join(prep, "manifest.json")).get("content_hash")
    if recipe is not None and create:
        raise ValueError("a recipe is looked up, not probed: pass create=False")
    recipe = recipe or recipe_fingerprint(code_root)
    cache = os.path.join(out, "behaviour", f"{recipe}-{_probe_key(variant_flags, data_hash, threads)}.json")
    with _lock_for(cache):  # parallel runs of one variant wait for one probe
        if os.path.exists(cache):
            return read_json(cache)["behaviour"]
        if not create:
            return None
        return _probe(out, prep, variant_flags, code_root, recipe, threads, data_hash, cache)


_LOCKS: dict[str, "threading.Lock"] = {}
_LOCKS_GUARD = threading.Lock()


def _lock_for(key: str) -> "threading.Lock":
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(key, threading.Lock())


def _probe(out: str, prep: str, variant_flags: list[str], code_root: str, recipe: str, threads: int | None,
           data_hash: str | None, cache: str) -> str:
    """Runs the behaviour probe (see `behaviour_fingerprint`) and caches its fingerprint. Returns: it."""
    import hashlib
    import tempfile

    os.makedirs(os.path.dirname(cache), exist_ok=True)
    env = {**({"PYTHONPATH": os.path.abspath(code_root)} if os.path.abspath(code_root) != ROOT else {}),
           **thread_env(threads)}
    with tempfile.TemporaryDirectory(dir=os.path.dirname(cache)) as work:
        run_dir, eval_dir = os.path.join(work, "run"), os.path.join(work, "eval")
        log = os.path.join(work, "probe.log")
        print(f"quality: behaviour probe of {' '.join(variant_flags)} (code {recipe})", file=sys.stderr, flush=True)
        for cmd in ([*hourglass(), "train", "--data", prep, "--out", run_dir, *variant_flags, *PROBE_FLAGS],
                    [*hourglass(), "evaluate", "--model", os.path.join(run_dir, "model.keras"), "--data", prep,
                     "--split", "val", "--out", eval_dir, "--bootstrap", "0", "--overlays", "0", "--quiet"]):
            try:
                run_step(cmd, log, 30 * 60, "quality behaviour probe", extra_env=env, cwd=os.path.abspath(code_root))
            except SystemExit:
                shutil.copy(log, cache + ".failed.log")
                raise
        behaviour = hashlib.sha256(_probe_numbers(run_dir, eval_dir).encode()).hexdigest()[:12]
    write_json(cache, {"behaviour": behaviour, "recipe": recipe, "variant_flags": variant_flags, "threads": threads,
                       "probe_flags": PROBE_FLAGS, "data_hash": data_hash, "code_root": os.path.abspath(code_root),
                       "commit": git_commit(code_root)})
    return behaviour


def git_commit(root: str = ROOT) -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def time_to_quality(history: list[dict]) -> dict[str, float | None]:
    """Training minutes (wall, cumulative epoch seconds) until val sensitivity at 4.8 FPI first reaches each target."""
    out: dict[str, float | None] = {f"{t:g}": None for t in VAL_TARGETS}
    elapsed = 0.0
    for row in history:
        elapsed += float(row.get("epoch_seconds") or 0.0)
        value = row.get("val_sensitivity_at_4.8") or row.get("val_sensitivity")
        if value in (None, ""):
            continue
        for target in VAL_TARGETS:
            key = f"{target:g}"
            if out[key] is None and float(value) >= target:
                out[key] = round(elapsed / 60.0, 2)
    return out


def fpi_to_reach(curve: list[dict], target: float) -> float | None:
    """The smallest FPI at which the FROC curve reaches `target` sensitivity (None: never)."""
    reached = [p["fpi"] for p in curve if p.get("sensitivity") is not None and p["sensitivity"] >= target - 1e-12]
    return round(min(reached), 3) if reached else None


#: The checkpoint a run is scored with unless its table says otherwise: the last epoch's weights.
FINAL_CHECKPOINT = "model.keras"
#: The checkpoint of the epoch chosen on validation (`hourglass train`'s best.keras, the epoch a tuning
#: trial reports).
BEST_CHECKPOINT = "best.keras"


def _matches(record: dict, flags: list[str], data_hash: str | None, checkpoint: str) -> bool:
    return (record.get("train_flags") == flags and record.get("data_hash") == data_hash
            and record.get("checkpoint", FINAL_CHECKPOINT) == checkpoint)


def record_is_current(out: str, prep: str, variant_flags: list[str], record: dict) -> bool:
    """Whether a finished run still stands for this code: the code behaves, at the run's own thread count,
    as the code that made the run did (`behaviour_fingerprint`). A record of other code without a
    behaviour fingerprint gets one when that code's probe is cached and agrees (written back by the caller).

    Returns:
        True: keep the run (its `behaviour` is then set).
    """
    threads = record.get("threads")  # absent: TensorFlow's default (runs made before the thread setting)
    now = behaviour_fingerprint(out, prep, variant_flags, threads=threads)
    if record.get("behaviour") == now:
        return True
    if record.get("behaviour") is None and behaviour_fingerprint(
            out, prep, variant_flags, create=False, recipe=record.get("recipe"), threads=threads) == now:
        record["behaviour"] = now  # made by other code that behaves the same
        return True
    return False


def same_run_elsewhere(out: str, prep: str, variant_flags: list[str], flags: list[str], data_hash: str | None,
                       checkpoint: str, exclude: str) -> str | None:
    """A finished, current run of another table (or name) that is this run: the same train flags, data and
    checkpoint (e.g. the stress table's base setting is the main table's data; the ablation's "(a) off" row
    is the main table's default loss).

    Returns:
        The other run's record path, or None.
    """
    import glob

    for path in sorted(glob.glob(os.path.join(out, "runs", "*", "*.record.json"))):
        if os.path.abspath(path) == os.path.abspath(exclude):
            continue
        record = read_json(path)
        if _matches(record, flags, data_hash, checkpoint) and not record.get("reused_from") \
                and record_is_current(out, prep, variant_flags, record):
            return path
    return None


def run_one(args, out: str, table: str, name: str, prep: str, variant_flags: list[str], seed: int,
            description: str, checkpoint: str = FINAL_CHECKPOINT, threads: int | None | str = "args") -> dict | None:
    """Trains one variant and seed and scores `checkpoint` once on the test split (or reuses the run).

    A finished run is kept while it is current (`record_is_current`), whatever thread count made it; a new
    run is trained and scored with `threads`.

    Args:
        checkpoint: the run's file that is evaluated: `FINAL_CHECKPOINT` (the last epoch, the default)
            or `BEST_CHECKPOINT` (the epoch chosen on validation).
        threads: TensorFlow threads of a new run ("args": `args.threads`; None: TensorFlow's default).

    Returns:
        The run's record, or None (render-only and not run).
    """
    from keras_hourglass.training.callbacks import read_history

    threads = args.threads if threads == "args" else threads
    base = os.path.join(out, "runs", table)
    tag = f"{name}-s{seed}"
    run_dir, eval_dir = os.path.join(base, tag), os.path.join(base, "eval", tag)
    record_path = os.path.join(base, f"{tag}.record.json")
    flags = train_flags(args, variant_flags, seed)
    data_hash = read_json(os.path.join(prep, "manifest.json")).get("content_hash")
    if os.path.exists(record_path):
        record = read_json(record_path)
        if _matches(record, flags, data_hash, checkpoint):
            if args.render_only:
                return record
            had_behaviour = record.get("behaviour") is not None
            if not record.get("reused_from") and record_is_current(out, prep, variant_flags, record):
                if not had_behaviour:  # record_is_current filled it in
                    write_json(record_path, record)
                return record
    if args.render_only:
        return None
    other = same_run_elsewhere(out, prep, variant_flags, flags, data_hash, checkpoint, exclude=record_path)
    if other is not None:  # the same run under another table's name: its record, not a second training
        record = {**read_json(other), "table": table, "name": name, "description": description,
                  "reused_from": os.path.relpath(other, out)}
        write_json(record_path, record)
        print(f"quality {table}: {tag}: the same run as {record['reused_from']} (kept)", file=sys.stderr, flush=True)
        return record
    behaviour = behaviour_fingerprint(out, prep, variant_flags, threads=threads)
    stamp_path = os.path.join(base, f"{tag}.stamp.json")
    stamp = {"train_flags": flags, "data_hash": data_hash, "behaviour": behaviour,
             **({"checkpoint": checkpoint} if checkpoint != FINAL_CHECKPOINT else {}),
             **({"threads": threads} if threads else {})}
    if not os.path.exists(stamp_path) or read_json(stamp_path) != stamp:  # stale: start that run over
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.rmtree(eval_dir, ignore_errors=True)
        os.makedirs(base, exist_ok=True)
        write_json(stamp_path, stamp)
    os.makedirs(os.path.join(base, "logs"), exist_ok=True)
    timeout = args.timeout_minutes * 60
    print(f"quality {table}: {tag}: training ({description})", file=sys.stderr, flush=True)
    stdout, train_seconds = run([*hourglass(), "train", "--data", prep, "--out", run_dir, *flags],
                                os.path.join(base, "logs", f"{tag}.train.log"), timeout, threads)
    froc, eval_seconds = evaluate_on_test(args, prep, os.path.join(run_dir, checkpoint), eval_dir,
                                          os.path.join(base, "logs", f"{tag}.evaluate.log"), timeout, threads)
    history = read_history(os.path.join(run_dir, "history.csv"))
    record = {"table": table, "name": name, "seed": seed, "description": description, "train_flags": flags,
              "data_hash": data_hash, "recipe": recipe_fingerprint(), "behaviour": behaviour, "prep": prep,
              "commit": git_commit(), "eval_dir": eval_dir, "checkpoint": checkpoint, "threads": threads,
              "train_seconds": round(train_seconds, 1), "eval_seconds": round(eval_seconds, 1),
              "time_to_val_sensitivity_minutes": time_to_quality(history),
              "summary": summarise_froc(froc), "curve": froc.get("curve", [])}
    if checkpoint != FINAL_CHECKPOINT:  # the last epoch too, so the checkpoint choice's share is measured
        final_froc, _ = evaluate_on_test(args, prep, os.path.join(run_dir, FINAL_CHECKPOINT), eval_dir + "-final",
                                         os.path.join(base, "logs", f"{tag}.evaluate-final.log"), timeout, threads)
        record["final_summary"] = summarise_froc(final_froc)
        best = read_json(os.path.join(run_dir, "best.json")) if os.path.exists(os.path.join(run_dir, "best.json")) else {}
        record["best_epoch"] = best.get("epoch")
    write_json(record_path, record)
    print(f"quality {table}: {tag}: {train_seconds:.0f} s, sensitivity at 4.8 FPI "
          f"{record['summary']['sensitivity_at_fpi'].get('4.8')}", file=sys.stderr, flush=True)
    return record


def evaluate_on_test(args, prep: str, model_path: str, eval_dir: str, log: str, timeout: float,
                     threads: int | None = None) -> tuple[dict, float]:
    """`hourglass evaluate` of one model file on the test split (bootstrap CIs, 2 overlays), with the
    TensorFlow threads its run was trained with.

    Returns:
        (froc.json's content, wall seconds).
    """
    _, seconds = run([*hourglass(), "evaluate", "--model", model_path, "--data", prep, "--split", "test", "--out",
                      eval_dir, "--bootstrap", str(args.bootstrap), "--seed", "0", "--overlays", "2", "--quiet"],
                     log, timeout, threads)
    return read_json(os.path.join(eval_dir, "froc.json")), seconds


def summarise_froc(froc: dict) -> dict:
    curve = froc.get("curve", [])
    return {
        "sensitivity_at_fpi": {k: froc["sensitivity_at_fpi"].get(k) for k in FPI_COLUMNS},
        "ci95": {k: (froc.get("ci95") or {}).get(k) for k in FPI_COLUMNS},
        "max_sensitivity": froc.get("max_sensitivity"),
        "fpi_at_max_sensitivity": froc.get("fpi_at_max_sensitivity"),
        "fpi_to_reach": {f"{t:g}": fpi_to_reach(curve, t) for t in SENSITIVITY_TARGETS},
        "num_images": froc.get("num_images"),
        "num_malignant_findings": froc.get("num_malignant_findings"),
    }


def mean_ci(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and the half-width of its 95% t-interval across seeds (None with fewer than 2 values)."""
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    from scipy import stats

    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return mean, float(stats.t.ppf(0.975, len(values) - 1) * sd / math.sqrt(len(values)))


def fmt(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def fmt_mean(values: list) -> str:
    mean, half = mean_ci(values)
    if mean is None:
        return "-"
    return fmt(mean) + (f" ± {half:.3f}" if half is not None else "")


def variant_rows(records: list[dict], baseline: list[dict] | None) -> dict:
    """The aggregated numbers of one variant over its seeds (and paired differences to the baseline)."""
    by_seed = {r["seed"]: r for r in records}
    out = {"seeds": sorted(by_seed), "mean": {}, "per_seed": {}}
    for seed, r in sorted(by_seed.items()):
        s = r["summary"]
        out["per_seed"][seed] = {**s["sensitivity_at_fpi"], "max": s["max_sensitivity"],
                                 "fpi_at_max": s["fpi_at_max_sensitivity"], **{
                                     f"fpi_to_{k}": v for k, v in s["fpi_to_reach"].items()},
                                 "ci95_4.8": s["ci95"].get("4.8"),
                                 **{f"minutes_to_val_{k}": v for k, v in r["time_to_val_sensitivity_minutes"].items()},
                                 "train_minutes": round(r["train_seconds"] / 60, 2), "commit": r.get("commit")}
    for key in (*FPI_COLUMNS, "max", "fpi_at_max"):
        out["mean"][key] = mean_ci([row[key] for row in out["per_seed"].values()])
    if baseline:
        base = {r["seed"]: r["summary"] for r in baseline}
        for key in ("4.8", "max"):
            diffs = []
            for seed, row in out["per_seed"].items():
                if seed in base:
                    other = base[seed]["max_sensitivity"] if key == "max" else base[seed]["sensitivity_at_fpi"][key]
                    if row[key] is not None and other is not None:
                        diffs.append(row[key] - other)
            out["mean"][f"paired_diff_vs_l2_{key}"] = mean_ci(diffs)
    return out


def markdown(table: str, groups: dict[str, dict[str, list[dict]]], args) -> str:
    lines = []
    for group, variants in groups.items():
        any_record = next((r for recs in variants.values() for r in recs), None)
        if any_record is None:
            continue
        s = any_record["summary"]
        lines.append(f"**{group}**: {s['num_images']} test images, {s['num_malignant_findings']} malignant "
                     f"findings; seeds {','.join(map(str, args.seeds))}; {args.patch_epochs} x "
                     f"{args.steps_per_epoch} patch + {args.full_epochs} x {args.steps_per_epoch} whole-image "
                     f"steps of batch {args.batch_size}, `hourglass train` defaults otherwise.\n")
        lines.append("| variant | " + " | ".join(f"sens @{k}" for k in FPI_COLUMNS)
                     + " | max sens | FPI at max | FPI to 0.95 | FPI to 0.97 | min to val 0.8 | min to val 0.9 "
                       "| Δ vs L2 @4.8 (paired) |")
        lines.append("|---" * (len(FPI_COLUMNS) + 8) + "|")
        baseline = variants.get("l2")
        for name, recs in variants.items():
            if not recs:
                continue
            agg = variant_rows(recs, baseline if name != "l2" else None)
            per = agg["per_seed"].values()

            def seeds_of(key):
                return "/".join(fmt(row[key], 2) if row[key] is not None else "never" for row in per)

            diff = agg["mean"].get("paired_diff_vs_l2_4.8")
            lines.append(
                f"| {name} | " + " | ".join(fmt_mean([row[k] for row in per]) for k in FPI_COLUMNS)
                + f" | {fmt_mean([row['max'] for row in per])} | {fmt_mean([row['fpi_at_max'] for row in per])}"
                + f" | {seeds_of('fpi_to_0.95')} | {seeds_of('fpi_to_0.97')}"
                + f" | {seeds_of('minutes_to_val_0.8')} | {seeds_of('minutes_to_val_0.9')}"
                + f" | {fmt(diff[0]) + (f' ± {diff[1]:.3f}' if diff and diff[1] else '') if diff and diff[0] is not None else '-'} |")
        lines.append("")
        lines.append("Per seed (sensitivity at 4.8 FPI [bootstrap 95% CI over patients], max, commit, TensorFlow "
                     "threads):\n")
        for name, recs in variants.items():
            cells = []
            for r in sorted(recs, key=lambda r: r["seed"]):
                s, ci = r["summary"], r["summary"]["ci95"].get("4.8")
                ci_text = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""
                cells.append(f"s{r['seed']}: {fmt(s['sensitivity_at_fpi']['4.8'])}{ci_text}, max "
                             f"{fmt(s['max_sensitivity'])} ({r.get('commit')}, {thread_label(r.get('threads'))})")
            if cells:
                lines.append(f"- {name}: " + "; ".join(cells))
        lines.append("")
    lines.append("Means ± half-width of the 95% t-interval across seeds; 'FPI to 0.95' per seed (never = not "
                 "reached); 'min to val 0.8' = training minutes (wall, this machine) until validation "
                 "sensitivity at 4.8 FPI first reached 0.8, per seed.")
    return "\n".join(lines) + "\n"


def stress_summary(groups: dict[str, dict[str, list[dict]]]) -> str:
    """The stress table in one view: per axis setting, hypersensitive and L2 side by side at 4.8 FPI and at
    the maximum, with the paired difference (mean ± 95% t half-width over the seeds both have).

    Returns:
        A markdown table (empty when no setting has both losses).
    """
    lines = ["| axis: setting | malignant test findings | seeds | hypersensitive @4.8 | L2 @4.8 | Δ @4.8 (paired) "
             "| hypersensitive max | L2 max | Δ max (paired) |", "|---" * 9 + "|"]
    for group, variants in groups.items():
        hs = {r["seed"]: r["summary"] for r in variants.get("hypersensitive", [])}
        l2 = {r["seed"]: r["summary"] for r in variants.get("l2", [])}
        seeds = sorted(set(hs) & set(l2))
        if not seeds:
            continue
        cells = []
        for read in (lambda s: s["sensitivity_at_fpi"]["4.8"], lambda s: s["max_sensitivity"]):
            a, b = [read(hs[k]) for k in seeds], [read(l2[k]) for k in seeds]
            cells.append((fmt_mean(a), fmt_mean(b),
                          fmt_mean([x - y for x, y in zip(a, b) if x is not None and y is not None])))
        lines.append(f"| {group} | {hs[seeds[0]]['num_malignant_findings']} | {','.join(map(str, seeds))} | "
                     + " | ".join(" | ".join(c) for c in cells) + " |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def write_committed_table(table: str, title: str, text: str) -> str:
    """Writes benchmarks/quality-<table>.md, the copy BENCHMARKS.md carries: a title, the hand-written
    paragraph that an earlier copy had between its title and its "Command:" line (when and on which commit
    the table was measured, the targets; kept, so a `--render-only` never drops it), the command, `text`.

    Returns:
        The path written.
    """
    path = os.path.join(HERE, f"quality-{table}.md")
    notes = ""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
        end = next((i for i, line in enumerate(lines) if line.startswith("Command:")), None)
        if end is not None and lines and lines[0].startswith("## "):
            notes = "\n".join(lines[1:end]).strip()
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(f"## Detection quality: {title} (`python benchmarks/quality.py {table}`)\n\n"
                     + (notes + "\n\n" if notes else "")
                     + f"Command: `python benchmarks/quality.py {table}` (tables from finished runs: `--render-only`)"
                     + f"\n\n{text}")
    return path


def thread_label(threads: int | None) -> str:
    """Returns: a run's thread count as the tables print it."""
    return f"{threads} thread{'s' if threads != 1 else ''}" if threads else "default threads"


def in_parallel(tasks: list, jobs: int) -> list:
    """Runs `tasks` (callables: each a run, whose work is a child process) `jobs` at a time, in order of the
    list.

    Returns:
        Their results, in the order of `tasks`. The first task that raised is re-raised after every
        started task has ended (a finished run is never left half-written by a sibling's failure).
    """
    if jobs <= 1:
        return [task() for task in tasks]
    return in_parallel_after(tasks, {}, jobs)


def in_parallel_after(tasks: list, after: dict[int, list[int]], jobs: int) -> list:
    """Runs `tasks` `jobs` at a time, each only after the tasks it depends on have finished; of the tasks
    that are ready, the earliest in the list goes first (so a long search is not queued behind retrains).

    Args:
        tasks: callables (each a run, whose work is a child process).
        after: task index -> the indices of the tasks it waits for (a task that raised counts as finished;
            its dependants then raise the same error).
        jobs: tasks at a time.

    Returns:
        Their results, in the order of `tasks`; the first task that raised is re-raised after every
        started task has ended.
    """
    import heapq
    from concurrent.futures import ThreadPoolExecutor

    free, waiting, state = [max(1, jobs)], [], threading.Condition()
    futures: list = []

    def run(index: int):
        for dependency in after.get(index, []):
            futures[dependency].result()  # waits; re-raises the dependency's error
        with state:
            heapq.heappush(waiting, index)
            state.wait_for(lambda: free[0] > 0 and waiting[0] == index)
            heapq.heappop(waiting)
            free[0] -= 1
            state.notify_all()
        try:
            return tasks[index]()
        finally:
            with state:
                free[0] += 1
                state.notify_all()

    with ThreadPoolExecutor(max_workers=max(1, len(tasks))) as pool:
        futures.extend(pool.submit(run, i) for i in range(len(tasks)))
        errors = [f.exception() for f in futures]
    for error in errors:
        if error is not None:
            raise error
    return [f.result() for f in futures]


def print_fingerprints(args, out: str, variants: dict) -> int:
    """`--fingerprint-only`: each variant's behaviour fingerprint under `--code-root` (main / ablation data)."""
    prep = prepare_data(out, data_settings({}, args.quick), create=False)
    if prep is None:
        raise SystemExit("quality: no prepared data yet: run the table once first")
    for name, (_description, flags) in variants.items():
        fingerprint = behaviour_fingerprint(out, prep, flags, code_root=args.code_root, threads=args.threads)
        print(f"{name}: behaviour {fingerprint} (code {recipe_fingerprint(args.code_root)} at {args.code_root})")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    for name in THREAD_VARIABLES:  # every step's thread count is the run's own (`thread_env`), never inherited
        os.environ.pop(name, None)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    started = time.time()
    table = args.table
    if table == "two-stage":
        import quality_two_stage

        return quality_two_stage.main(args, out)
    if table == "tuned":
        import quality_tuned

        return quality_tuned.main(args, out)
    variants = {v: TABLES[table][v] for v in args.variants}
    if args.fingerprint_only:
        return print_fingerprints(args, out, variants)
    groups: dict[str, dict[str, list[dict]]] = {}
    if table == "stress":  # the base setting (no overrides) is always run: its runs are the main table's
        settings_list = [(f"{axis}: {name}", f"{axis.split()[0]}-{name}", overrides,
                          not overrides or name in args.settings, axis)
                         for axis in args.axes for name, overrides in STRESS_AXES[axis]]
    else:
        settings_list = [("synthetic test split", "", {}, True, None)]
    facts = {}
    tasks: list[tuple] = []  # (group, variant, () -> record or None), in table order
    for group, prefix, overrides, selected, axis in settings_list:
        prep = prepare_data(out, data_settings(overrides, args.quick), create=selected and not args.render_only)
        if prep is not None:
            facts_path = os.path.join(os.path.dirname(prep), "facts.json")
            if not os.path.exists(facts_path):
                write_json(facts_path, data_facts(prep))
            facts[group] = read_json(facts_path)
            baseline_path = os.path.join(os.path.dirname(prep), "blob_filter_froc.json")
            if not os.path.exists(baseline_path):
                write_json(baseline_path, blob_filter_baseline(prep))
            facts[group]["blob_filter"] = summarise_froc(read_json(baseline_path))
        here = variants_on_axis(variants, axis)
        groups[group] = {name: [] for name in here}
        # Seed-major: an interrupted invocation leaves every variant with the same seeds done.
        for seed in args.seeds:
            for name, (description, flags) in here.items():
                run_name = f"{prefix}-{name}" if prefix else name
                if args.render_only or prep is None or not selected:
                    # render-only (or a setting not asked for): the finished record, found by name
                    path = os.path.join(out, "runs", table, f"{run_name}-s{seed}.record.json")
                    tasks.append((group, name, lambda path=path: read_json(path) if os.path.exists(path) else None))
                else:
                    tasks.append((group, name, lambda run_name=run_name, prep=prep, flags=flags, seed=seed,
                                  description=description: run_one(args, out, table, run_name, prep, flags, seed,
                                                                    description)))
    for (group, name, _), record in zip(tasks, in_parallel([task for _, _, task in tasks], args.jobs)):
        if record:
            groups[group][name].append(record)

    from keras_hourglass.evaluation.plots import plot_froc_curves

    text = markdown(table, groups, args)
    if table == "stress":
        summary = stress_summary(groups)
        if summary:
            text = ("Hypersensitive loss against L2 along each axis (test split of each setting; mean ± 95% "
                    "t half-width over seeds):\n\n" + summary + "\n" + text)
    shown: list[dict] = []
    for group, fact in facts.items():
        if not any(groups.get(group, {}).values()) or fact in shown:  # no run yet, or the same data as above
            continue
        shown.append(fact)
        blob = fact.get("blob_filter")
        if blob:
            text += (f"\nNo-training reference ({group}): a difference-of-Gaussians blob filter scores "
                     + ", ".join(f"{fmt(blob['sensitivity_at_fpi'][k])} at {k}" for k in FPI_COLUMNS)
                     + f" FPI (max {fmt(blob['max_sensitivity'])}).\n")
        text += (f"\nData ({group}): breast mask = {fact['breast_mask_share_of_image']:.0%} of the image on "
                 f"average, finding centres inside it: {fact['finding_centres_inside_mask']}; at the default "
                 f"geometry the detector patch and 3 blob masks hide {fact['crop_share_masked_from_l_bg']:.0%} "
                 f"of a phase-1 crop from L_BG.\n")
    payload = {
        "table": table,
        "command": "python benchmarks/quality.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out",)},
        "groups": {g: {name: variant_rows(recs, v.get("l2") if name != "l2" else None)
                       for name, recs in v.items() if recs} for g, v in groups.items()},
        "data_facts": facts,
        "wall_seconds": round(time.time() - started, 1),
    }
    write_json(os.path.join(out, f"quality-{table}.json"), payload)
    with open(os.path.join(out, f"quality-{table}.md"), "w", encoding="utf-8") as handle:
        handle.write(text)
    if not args.quick:  # the committed copy that BENCHMARKS.md (benchmarks/run_all.py) carries
        write_committed_table(table, f"`{table}` table", text)
    first_group = next(iter(groups.values()), {})
    curves = {name: read_json(os.path.join(recs[0]["eval_dir"], "froc.json"))
              for name, recs in first_group.items() if recs and os.path.exists(recs[0].get("eval_dir", ""))}
    if curves:
        plot_froc_curves(curves, os.path.join(out, f"quality-{table}.png"),
                         title=f"FROC, {table} table (seed {args.seeds[0]}, synthetic test split)")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
