"""`hourglass tune`: KerasTuner search over the detector's loss settings (each loss over its own).

TensorFlow and KerasTuner are imported only inside `run`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from typing import Any

from keras_hourglass import storage
from keras_hourglass.errors import InputError

SETTINGS_FILE = "search.json"

EXAMPLES = """\
examples:
  # one machine: 20 random trials, 3 epochs of 100 steps each (outputs refreshed after every trial)
  hourglass tune --data prepared --out tune --max-trials 20 --epochs 3 --steps-per-epoch 100
  # the paper's model on the local GPUs, Bayesian optimisation
  hourglass tune --data prepared --out tune-paper --preset paper --tuner bayesian --max-trials 30 \
      --epochs 5 --steps-per-epoch 500 --batch-size 16 --strategy mirrored
  # then train with the best values (and the preset/batch/crop they were tuned with)
  hourglass train --data prepared --out runs/best --hparams tune/best_hyperparameters.json

  # rerun the same command after an interruption: finished trials are kept
  hourglass tune --data prepared --out tune --max-trials 20 --epochs 3 --steps-per-epoch 100
  # ... or extend the finished search to 30 trials
  hourglass tune --data prepared --out tune --max-trials 30 --epochs 3 --steps-per-epoch 100

  # tuned against tuned: the L2 baseline / the focal loss over their own settings (target sigma,
  # learning rate), with the same trial budget
  hourglass tune --data prepared --out tune-l2 --loss l2 --max-trials 20 --epochs 3 --steps-per-epoch 100
  hourglass tune --data prepared --out tune-focal --loss focal --target-sigma-range 8,18 --max-trials 20 ...

  # narrower space from flags, or a JSON file (flags win over the file)
  hourglass tune --data prepared --out tune --omega-range 0.003,0.3 --top-k-range 1,5 \\
      --sigmas 6,9,12,18 12
  hourglass tune --data prepared --out tune --space space.json
      # space.json: {"omega": {"min": 0.001, "max": 1}, "top_k": {"values": [0, 3, 6]},
      #              "sigmas": {"fixed": "6,9,12,18"}, "patch_size": {"values": [48, 72]}}

  # stage two: the patch classifier on `hourglass proposals` output (objective: two-stage val sensitivity
  # at 2 FPI), then retrain with the best values
  hourglass tune --stage 2 --data proposals --out tune2 --max-trials 10 --epochs 3 --steps-per-epoch 100
  hourglass train --stage 2 --data proposals --out runs/stage2 --hparams tune2/best_hyperparameters.json

  # the outputs of a running or finished search (e.g. watched on the chief's machine)
  hourglass tune --out tune --report

  # a cluster: the same command on every machine, one chief and N workers; the chief serves the
  # oracle on KERASTUNER_ORACLE_IP:PORT (its address as the workers see it) and writes the outputs
  KERASTUNER_TUNER_ID=chief  KERASTUNER_ORACLE_IP=10.0.0.1 KERASTUNER_ORACLE_PORT=8000 hourglass tune ...
  KERASTUNER_TUNER_ID=tuner0 KERASTUNER_ORACLE_IP=10.0.0.1 KERASTUNER_ORACLE_PORT=8000 hourglass tune ...
  KERASTUNER_TUNER_ID=tuner1 KERASTUNER_ORACLE_IP=10.0.0.1 KERASTUNER_ORACLE_PORT=8000 hourglass tune ...

outputs (in --out): best_hyperparameters.json (for `hourglass train --hparams`), trials.csv,
objective.png, search.json (the settings), logs/ (TensorBoard HParams: `tensorboard --logdir TUNE/logs`),
hourglass_tune/ (KerasTuner's project: trials, oracle).
Objective: val_sensitivity at --target-fpi (max); ties -> higher mean sensitivity, higher max
sensitivity, lower omega, earlier trial.
"""

# Settings that define a search: a rerun in the same --out must agree on them (--max-trials may
# grow, to extend a search; --strategy may change with the hardware).
_SEARCH_KEYS = (
    "loss", "tuner", "epochs", "patch_epochs", "full_epochs", "steps_per_epoch", "executions_per_trial", "batch_size",
    "target_fpi", "val_images", "seed", "preset", "phase", "crop_size", "model_options", "space",
    "jit_compile", "mixed_precision",
)


#: Search keys added after searches were recorded: a search.json without one had this value.
_ADDED_KEY_DEFAULTS = {"loss": "hypersensitive"}


def register(subparsers) -> argparse.ArgumentParser:
    """Adds `tune` to the `hourglass` subcommands. Returns: its parser."""
    parser = subparsers.add_parser(
        "tune",
        help="tune the loss (omega, top_k, sigmas, learning rate; --loss l2/focal: target sigma, learning rate) "
             "with KerasTuner",
        description="KerasTuner search over the detector's loss settings (--loss: the hypersensitive loss, the L2 "
        "baseline or the focal loss, each over its own settings). Objective: validation "
        "sensitivity at the target FPI (never val_loss). Resumes when rerun with the same --out; "
        "runs distributed with KerasTuner's KERASTUNER_* environment variables.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", metavar="PREP", help="prepared data directory (train and val splits); required "
                        "unless --report; with --stage 2: the output of `hourglass proposals`")
    parser.add_argument("--stage", type=int, choices=(1, 2), default=1,
                        help="1: the detector's loss (default); 2: the two-stage system's patch classifier "
                             "(tuning/stage2.py; objective: two-stage val sensitivity at --target-fpi, default 2)")
    parser.add_argument("--out", required=True, metavar="TUNE", help="output directory (reused to resume)")
    parser.add_argument("--tuner", choices=("random", "bayesian", "hyperband"), default="random")
    parser.add_argument("--max-trials", type=int, default=10, metavar="N", help="trials (random, bayesian; default 10)")
    parser.add_argument("--epochs", type=int, default=None, metavar="E",
                        help="epochs per trial, both phases (hyperband: the maximum; default 3, or the sum of "
                             "--patch-epochs and --full-epochs)")
    parser.add_argument("--patch-epochs", type=int, default=None, metavar="E",
                        help="epochs of a trial's patch phase, as hourglass train --patch-epochs (not with hyperband)")
    parser.add_argument("--full-epochs", type=int, default=None, metavar="E",
                        help="epochs of a trial's whole-image phase, as hourglass train --full-epochs")
    parser.add_argument("--steps-per-epoch", type=int, default=None, metavar="S",
                        help="training steps per epoch (default: from the training split's size)")
    parser.add_argument("--executions-per-trial", type=int, default=1, metavar="N",
                        help="trainings per trial, metrics averaged (default 1)")
    parser.add_argument("--batch-size", type=int, default=None, metavar="B",
                        help="global batch size (default 8; --stage 2: 64)")
    parser.add_argument("--target-fpi", type=float, default=None, metavar="F",
                        help="false marks per image at which sensitivity is the objective (default 4.8; --stage 2: 2)")
    parser.add_argument("--val-images", type=int, default=None, metavar="N",
                        help="validate on the first N images of the val split (default: all)")
    parser.add_argument("--loss", choices=("hypersensitive", "l2", "focal"), default=None,
                        help="the loss whose settings are searched (default hypersensitive: omega, top_k, sigmas, "
                             "learning rate; l2 / focal: target sigma and learning rate); recorded in "
                             "best_hyperparameters.json, so `train --hparams` trains the same loss")
    parser.add_argument("--space", metavar="FILE", help="search space JSON file (see tuning/search_space.py)")
    parser.add_argument("--omega-range", metavar="MIN,MAX", help="omega range, log sampling (one value: fixed)")
    parser.add_argument("--top-k-range", metavar="MIN,MAX", help="top_k range (one value: fixed)")
    parser.add_argument("--lr-range", metavar="MIN,MAX", help="learning-rate range, log sampling (one value: fixed)")
    parser.add_argument("--sigmas", nargs="+", metavar="BANK", help="sigma banks to choose from, reference heatmap px, e.g. 6,9,12,18 12")
    parser.add_argument("--patch-sizes", metavar="P1,P2", help="loss patch sizes to choose from (one value: fixed)")
    parser.add_argument("--target-sigma-range", metavar="MIN,MAX",
                        help="--loss l2 / focal: Gaussian target sigma range, reference heatmap px, log sampling "
                             "(default 6,24; one value: fixed)")
    parser.add_argument("--seed", type=int, default=None, help="seeds the oracle, the weights and the data order")
    parser.add_argument("--preset", choices=("tiny", "paper"), default="tiny",
                        help="model preset (default tiny, as hourglass train; tune the model you will train)")
    parser.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                        help="override a model preset option, e.g. num_stacks=1 (repeatable)")
    parser.add_argument("--phase", choices=("both", "patch", "full"), default="both",
                        help="training phases of a trial (default both, patches then whole images, as hourglass "
                             "train; --epochs is split between them as hourglass train --epochs does)")
    parser.add_argument("--crop-size", type=int, default=None, metavar="PIXELS",
                        help="patch-phase crop side, reference image px (default: the training default)")
    parser.add_argument("--strategy", choices=("default", "mirrored"), default="default",
                        help="distribution strategy inside each trial (mirrored: all local GPUs); "
                             "--batch-size is the global batch")
    parser.add_argument("--cpu-replicas", type=int, default=None, metavar="N",
                        help="with --strategy mirrored and no GPU: split the CPU into N replicas")
    parser.add_argument("--jit-compile", action=argparse.BooleanOptionalAction, default=None,
                        help="XLA for the train step (default: Keras' auto, as hourglass train)")
    parser.add_argument("--mixed-precision", choices=("float32", "bfloat16", "float16"), default="float32",
                        help="compute dtype of the model, as hourglass train --mixed-precision (default float32)")
    parser.add_argument("--run-eagerly", action="store_true",
                        help="no graph tracing (saves ~10-30 s per trial on CPU, slower steps): smoke searches")
    parser.add_argument("--report", action="store_true",
                        help="only rewrite the outputs from the trials recorded in --out so far (no training); "
                             "safe while a search runs")
    parser.add_argument("--overwrite", action="store_true", help="discard a previous search in --out and start over")
    parser.add_argument("--verbose", type=int, choices=(0, 1, 2), default=0, help="Keras fit verbosity")
    parser.set_defaults(func=run)
    return parser


def _parse_model_options(items: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise InputError("--model-option", f"{item!r} is not KEY=VALUE")
        try:
            options[key] = json.loads(text)
        except json.JSONDecodeError:
            options[key] = text
    return options


def _validate(args) -> dict[str, Any]:
    """Checks the arguments (no TensorFlow). Returns: the search settings."""
    from tuning.search_space import apply_flags, check_space_for_loss, default_space, load_space

    args.batch_size = 8 if args.batch_size is None else args.batch_size
    args.target_fpi = 4.8 if args.target_fpi is None else args.target_fpi
    if not args.data:
        raise InputError("--data", "required (the prepared data directory)")
    _resolve_epochs(args)
    if not storage.isdir(args.data):
        raise InputError(args.data, "prepared data directory not found")
    for flag, value in (("--max-trials", args.max_trials), ("--epochs", args.epochs),
                        ("--executions-per-trial", args.executions_per_trial), ("--batch-size", args.batch_size)):
        if value < 1:
            raise InputError(flag, f"must be >= 1, got {value}")
    if args.steps_per_epoch is not None and args.steps_per_epoch < 1:
        raise InputError("--steps-per-epoch", f"must be >= 1, got {args.steps_per_epoch}")
    if args.cpu_replicas is not None:
        if args.cpu_replicas < 1:
            raise InputError("--cpu-replicas", f"must be >= 1, got {args.cpu_replicas}")
        if args.strategy != "mirrored":
            raise InputError("--cpu-replicas", "needs --strategy mirrored")
        if args.batch_size % args.cpu_replicas:
            raise InputError("--batch-size", f"{args.batch_size} is not divisible by {args.cpu_replicas} replicas")
    if args.val_images is not None and args.val_images < 1:
        raise InputError("--val-images", f"must be >= 1, got {args.val_images}")
    if args.crop_size is not None and args.crop_size < 1:
        raise InputError("--crop-size", f"must be >= 1, got {args.crop_size}")
    if not (math.isfinite(args.target_fpi) and args.target_fpi > 0):
        raise InputError("--target-fpi", f"must be a positive number, got {args.target_fpi}")
    _check_validation_split(args.data)
    args.loss = args.loss or "hypersensitive"
    base = default_space(args.loss)
    space = check_space_for_loss(load_space(args.space, base), args.loss, args.space) if args.space else base
    space = apply_flags(
        space, omega_range=args.omega_range, top_k_range=args.top_k_range, lr_range=args.lr_range,
        sigmas=args.sigmas, patch_sizes=args.patch_sizes, target_sigma_range=args.target_sigma_range, loss=args.loss,
    )
    model_options = _parse_model_options(args.model_option)
    try:
        from keras_hourglass.model.hourglass import resolve_config

        resolve_config(args.preset, **model_options)
    except ValueError as err:
        raise InputError("--model-option", str(err)) from None
    except ImportError:
        pass
    return {
        "loss": args.loss,
        "tuner": args.tuner,
        "max_trials": args.max_trials,
        "epochs": args.epochs,
        "patch_epochs": args.patch_epochs,
        "full_epochs": args.full_epochs,
        "steps_per_epoch": args.steps_per_epoch,
        "executions_per_trial": args.executions_per_trial,
        "batch_size": args.batch_size,
        "target_fpi": args.target_fpi,
        "val_images": args.val_images,
        "seed": args.seed,
        "preset": args.preset,
        "phase": args.phase,
        "crop_size": args.crop_size,
        "model_options": model_options,
        "jit_compile": args.jit_compile,
        "mixed_precision": args.mixed_precision,
        "space": space.to_json(),
        "data": storage.abspath(args.data),
        "_space": space,
    }


def _resolve_epochs(args) -> None:
    """Sets `args.epochs` (a trial's total) from --epochs / --patch-epochs / --full-epochs as train does.

    Raises:
        ArgumentError: the epochs disagree (`split_epochs`; `run` maps its names to flags).
    """
    from keras_hourglass.training.config import split_epochs

    given = {flag: value for flag, value in (("--patch-epochs", args.patch_epochs),
                                             ("--full-epochs", args.full_epochs)) if value is not None}
    for flag, value in given.items():
        if value < 0:
            raise InputError(flag, f"must be >= 0, got {value}")
        if args.tuner == "hyperband":
            raise InputError(flag, "not with --tuner hyperband (it chooses each trial's epochs)")
    if not given:
        args.epochs = 3 if args.epochs is None else args.epochs
        return
    patch, full = split_epochs(args.phase, args.epochs, args.patch_epochs, args.full_epochs)
    args.epochs = (patch or 0) + (full or 0)
    args.patch_epochs, args.full_epochs = patch, full


def _check_validation_split(prep_dir: str) -> None:
    """Fails early on a directory that `hourglass prepare` did not write (no readable manifest.json), and
    when the objective would be undefined: no malignant image in the val split."""
    path = storage.join(prep_dir, "manifest.json")
    if not storage.isfile(path):
        raise InputError(prep_dir, "no manifest.json: not a directory written by `hourglass prepare`")
    try:
        manifest = storage.read_json(path)
    except (OSError, ValueError) as err:
        raise InputError(path, f"cannot read the manifest ({type(err).__name__})") from None
    if not isinstance(manifest, dict):
        raise InputError(path, "not a prepare manifest (not a JSON object)")
    written = manifest.get("images_written", {})
    val = written.get("val") if isinstance(written, dict) else None
    if isinstance(val, dict) and not val.get("malignant"):
        raise InputError(path, "the val split has no malignant image: validation sensitivity (the objective) "
                               "is undefined; prepare with a larger --val-fraction")


def _check_settings(out_dir: str, settings: dict[str, Any], overwrite: bool, keys: tuple = _SEARCH_KEYS) -> None:
    """Refuses to resume a search made with other settings (`keys`); records the settings."""
    path = storage.join(out_dir, SETTINGS_FILE)
    record = {k: settings[k] for k in (*keys, "max_trials", "data")}
    if storage.exists(path) and not overwrite:
        try:
            previous = storage.read_json(path)
        except (OSError, json.JSONDecodeError) as err:
            raise InputError(path, f"cannot read the previous search's settings ({err.__class__.__name__})") from None
        changed = [k for k in keys if previous.get(k, _ADDED_KEY_DEFAULTS.get(k)) != record[k]]
        if changed:
            raise InputError(
                path,
                f"--out holds a search with other settings ({', '.join(changed)}); "
                "use another --out, the same settings, or --overwrite",
            )
    storage.write_json(path, record)


def _report(out_dir: str) -> int:
    """Rewrites the outputs from the recorded trials (no TensorFlow). Returns: 0."""
    from tuning import outputs
    from tuning.outputs import PROJECT_NAME

    project = storage.join(out_dir, PROJECT_NAME)
    if not storage.isdir(project):
        raise InputError(out_dir, f"no search here (no {PROJECT_NAME}/ directory)")
    print(json.dumps(outputs.write_outputs(project, out_dir), indent=2, default=str))
    return 0


def report_search(summary: dict, strategy_name: str, strategy) -> int:
    """Prints a search's JSON summary (with its strategy) on stdout.

    Returns:
        0, or 1 when no trial completed (on the chief).
    """
    summary["strategy"] = {"name": strategy_name,
                           "replicas_per_trial": strategy.num_replicas_in_sync if strategy is not None else 1}
    print(json.dumps(summary, indent=2, default=str))
    if summary.get("role") != "worker" and summary.get("best_trial_id") is None:
        print("hourglass tune: error: no trial completed (see the trial messages above)", file=sys.stderr)
        return 1
    return 0


def search_strategy(name: str, cpu_replicas: int | None, batch_size: int):
    """The `tf.distribute` strategy of a search's trials (`--strategy`, `--cpu-replicas`).

    Args:
        name: "mirrored", or anything else for none (each trial on the default device).
        cpu_replicas: logical CPU devices to make first (tests, CPU-only machines), or None.
        batch_size: the trials' global batch, which must split over the replicas.

    Returns:
        A `MirroredStrategy`, or None.

    Raises:
        InputError: the batch does not split over the replicas.
    """
    if name != "mirrored":
        return None
    from keras_hourglass.training.distribution import configure_cpu_replicas, make_strategy

    if cpu_replicas:
        configure_cpu_replicas(cpu_replicas)
    strategy, info = make_strategy("mirrored")
    if batch_size % info.num_replicas:
        raise InputError("--batch-size", f"{batch_size} is not divisible by {info.num_replicas} replicas")
    return strategy


def run(args) -> int:
    """Runs the search; prints a JSON summary on stdout.

    Returns:
        0, or 1 when the search ended without a completed trial (the outputs are still written).

    Raises:
        InputError: bad arguments or inputs, naming the flags (the training library's Python arguments
            mapped by `hourglass train`'s table).
    """
    from keras_hourglass.cli.train import TRAIN_FLAGS
    from keras_hourglass.errors import with_flags

    try:
        return _run(args)
    except InputError as err:
        raise with_flags(err, TRAIN_FLAGS) from None


def _run(args) -> int:
    if args.report:
        return _report(args.out)
    if args.stage == 2:
        from tuning.stage2_cli import run_stage2

        return run_stage2(args)
    settings = _validate(args)
    storage.makedirs(args.out)
    from tuning import search

    if search.role() == "worker" and args.overwrite:
        raise InputError("--overwrite", "only the chief (or a single machine) may discard a search")
    _check_settings(args.out, settings, args.overwrite)

    # KerasTuner prints progress on stdout; keep stdout for the JSON summary.
    with contextlib.redirect_stdout(sys.stderr):
        from tuning.hypermodel import HourglassHyperModel

        strategy = search_strategy(args.strategy, args.cpu_replicas, args.batch_size)
        hypermodel = HourglassHyperModel(
            args.data,
            loss=args.loss,
            space=settings["_space"],
            preset=args.preset,
            model_overrides=settings["model_options"],
            phase=args.phase,
            batch_size=args.batch_size,
            epochs=args.epochs,
            patch_epochs=args.patch_epochs,
            full_epochs=args.full_epochs,
            steps_per_epoch=args.steps_per_epoch,
            crop_size=args.crop_size,
            target_fpi=args.target_fpi,
            val_images=args.val_images,
            seed=args.seed,
            jit_compile=args.jit_compile,
            mixed_precision=args.mixed_precision,
            run_eagerly=args.run_eagerly,
            verbose=args.verbose,
        )
        tuner = search.make_tuner(
            hypermodel,
            args.out,
            kind=args.tuner,
            max_trials=args.max_trials,
            max_epochs=args.epochs,
            executions_per_trial=args.executions_per_trial,
            seed=args.seed,
            distribution_strategy=strategy,
            overwrite=args.overwrite,
        )
        try:
            summary = search.run_search(tuner, args.out)
        except RuntimeError as err:  # KerasTuner: too many consecutive failed trials
            if "consecutive failures" not in str(err):
                raise
            last = [line for line in str(err).strip().splitlines() if line.strip()][-1]
            print(f"hourglass tune: error: trials keep failing; the last one: {last} "
                  f"(full log in {search.project_dir(args.out)}/trial_*/trial.json)", file=sys.stderr)
            return 1
    return report_search(summary, args.strategy, strategy)
