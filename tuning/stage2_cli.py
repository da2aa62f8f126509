"""`hourglass tune --stage 2`: the command-line side of `tuning.stage2` (validation, settings, the search).

The flags keep their `hourglass tune` meaning; `--data` is PROPOSALS; the stage-one space and
model flags are refused (one-line error). Resume and outputs are stage one's (`tuning.search`).
"""

from __future__ import annotations

import contextlib
import math
import sys
from typing import Any

from keras_hourglass import storage
from keras_hourglass.errors import InputError

#: Settings that define a stage-two search (a rerun in the same --out must agree on them).
STAGE2_SEARCH_KEYS = ("stage", "tuner", "epochs", "steps_per_epoch", "executions_per_trial", "batch_size",
                      "target_fpi", "seed", "space")
#: Stage-one flags that mean nothing to the classifier: (flag, attribute, parser default).
_STAGE_ONE_ONLY = (
    ("--space", "space", None), ("--omega-range", "omega_range", None), ("--top-k-range", "top_k_range", None),
    ("--sigmas", "sigmas", None), ("--patch-sizes", "patch_sizes", None), ("--preset", "preset", "tiny"),
    ("--model-option", "model_option", []), ("--phase", "phase", "both"), ("--crop-size", "crop_size", None),
    ("--val-images", "val_images", None), ("--jit-compile", "jit_compile", None),
    ("--mixed-precision", "mixed_precision", "float32"), ("--loss", "loss", None),
    ("--target-sigma-range", "target_sigma_range", None), ("--patch-epochs", "patch_epochs", None),
    ("--full-epochs", "full_epochs", None),
)


def validate_stage2(args) -> dict[str, Any]:
    """Checks the arguments of `tune --stage 2` (no TensorFlow).

    Returns:
        The search settings (JSON-able, plus `_space`).

    Raises:
        InputError: naming the flag or file.
    """
    from keras_hourglass.evaluation.froc import FPI_POINTS
    from tuning.stage2 import Stage2Space

    for flag, name, default in _STAGE_ONE_ONLY:
        if getattr(args, name, default) != default:
            raise InputError(flag, "is a stage-one setting; not with --stage 2")
    args.epochs = 3 if args.epochs is None else args.epochs
    if not args.data:
        raise InputError("--data", "required (the output of `hourglass proposals`)")
    manifest_path = storage.join(args.data, "manifest.json")
    if not storage.isfile(manifest_path):
        raise InputError(args.data, "no manifest.json: not a directory written by `hourglass proposals`")
    batch_size = 64 if args.batch_size is None else args.batch_size
    target_fpi = 2.0 if args.target_fpi is None else float(args.target_fpi)
    for flag, value in (("--max-trials", args.max_trials), ("--epochs", args.epochs),
                        ("--executions-per-trial", args.executions_per_trial), ("--batch-size", batch_size)):
        if value < 1:
            raise InputError(flag, f"must be >= 1, got {value}")
    if args.steps_per_epoch is not None and args.steps_per_epoch < 1:
        raise InputError("--steps-per-epoch", f"must be >= 1, got {args.steps_per_epoch}")
    if not (math.isfinite(target_fpi) and target_fpi in FPI_POINTS):
        raise InputError("--target-fpi", f"with --stage 2 one of the FROC points {', '.join(f'{f:g}' for f in FPI_POINTS)}, "
                                         f"got {target_fpi:g}")
    if args.cpu_replicas is not None and args.strategy != "mirrored":
        raise InputError("--cpu-replicas", "needs --strategy mirrored")
    space = Stage2Space()
    if args.lr_range is not None:
        from tuning.search_space import SearchSpace, apply_flags

        space = _with_lr(space, apply_flags(SearchSpace(), lr_range=args.lr_range).learning_rate)
    _check_val_proposals(manifest_path)
    return {"stage": 2, "tuner": args.tuner, "max_trials": args.max_trials, "epochs": args.epochs,
            "steps_per_epoch": args.steps_per_epoch, "executions_per_trial": args.executions_per_trial,
            "batch_size": batch_size, "target_fpi": target_fpi, "seed": args.seed, "space": space.to_json(),
            "data": storage.abspath(args.data), "_space": space}


def _with_lr(space, domain):
    import dataclasses

    return dataclasses.replace(space, learning_rate=domain)


def _check_val_proposals(manifest_path: str) -> None:
    """Fails early when the objective would be undefined: no proposal in PROPOSALS/val."""
    try:
        manifest = storage.read_json(manifest_path)
    except (OSError, ValueError) as err:
        raise InputError(manifest_path, f"cannot read the manifest ({type(err).__name__})") from None
    val = ((manifest.get("splits") or {}).get("val") or {}) if isinstance(manifest, dict) else {}
    if not (int(val.get("positive") or 0) + int(val.get("negative") or 0)):
        raise InputError(manifest_path, "the val split has no proposal: the two-stage validation sensitivity "
                                        "(the objective) is undefined")


def run_stage2(args) -> int:
    """Runs (or resumes) the stage-two search; prints a JSON summary on stdout.

    Returns:
        0, or 1 when no trial completed.
    """
    from tuning.cli import _check_settings, report_search, search_strategy

    settings = validate_stage2(args)
    storage.makedirs(args.out)
    from tuning import search

    if search.role() == "worker" and args.overwrite:
        raise InputError("--overwrite", "only the chief (or a single machine) may discard a search")
    _check_settings(args.out, settings, args.overwrite, keys=STAGE2_SEARCH_KEYS)
    with contextlib.redirect_stdout(sys.stderr):  # KerasTuner prints progress on stdout
        from tuning.stage2 import Stage2HyperModel

        strategy = search_strategy(args.strategy, args.cpu_replicas, settings["batch_size"])
        hypermodel = Stage2HyperModel(args.data, space=settings["_space"], epochs=args.epochs,
                                      steps_per_epoch=args.steps_per_epoch, batch_size=settings["batch_size"],
                                      target_fpi=settings["target_fpi"], seed=args.seed, run_eagerly=args.run_eagerly,
                                      verbose=args.verbose)
        tuner = search.make_tuner(hypermodel, args.out, kind=args.tuner, max_trials=args.max_trials,
                                  max_epochs=args.epochs, executions_per_trial=args.executions_per_trial,
                                  seed=args.seed, distribution_strategy=strategy, overwrite=args.overwrite)
        summary = search.run_search(tuner, args.out)
    summary["stage"] = 2
    return report_search(summary, args.strategy, strategy)
