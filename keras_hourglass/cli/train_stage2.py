"""`hourglass train-stage2` (also spelled `hourglass train --stage 2`): the stage-two patch classifier.

Trains `keras_hourglass.two_stage.classifier` on the output of `hourglass proposals`
(`keras_hourglass.two_stage.train.train_classifier`). The flags it shares with `hourglass train`
mean the same (--epochs, --steps-per-epoch, --batch-size, --learning-rate, --seed, --no-augment,
--strategy, --cpu-replicas, --quiet); stage one's own flags are unknown here (one-line error).

Why a subcommand of its own: `keras_hourglass/cli/train.py` is part of the quality benchmark's recipe
fingerprint (`benchmarks/quality.py` RECIPE_SOURCES), so any code change there makes every finished
quality run stale and redone; `cli/main.py` maps `hourglass train --stage 2 ...` to this command
instead, which keeps the issue's spelling without touching stage one's trainer.
"""

from __future__ import annotations

import argparse
import json
import sys

from keras_hourglass import storage
from keras_hourglass.cli import argtypes
from keras_hourglass.errors import InputError

EPILOG = """examples:
  hourglass proposals --model runs/hs/model.keras --data prepared --out proposals/hs
  hourglass train --stage 2 --data proposals/hs --out runs/hs-stage2          # same as train-stage2
  hourglass train-stage2 --data proposals/hs --out runs/hs-stage2 --epochs 20 --steps-per-epoch 200 \\
      --batch-size 64 --balance weights
  hourglass evaluate --model runs/hs/model.keras --classifier runs/hs-stage2/model.keras \\
      --data prepared --out eval/two-stage

class balance: --balance sampling (default) draws positives and negatives with probability 1/2 each, as
stage one balances its strata; --balance weights reads the natural stream and weights each class to half
of the loss. Validation: loss and AUC on PROPOSALS/val every epoch; after training the combination of
the two scores (probability | geometric_0.75 | product | geometric_0.25) with the best mean FROC
sensitivity on the val proposals is recorded in RUN2/config.json (two_stage.combination), which
`hourglass evaluate --classifier` uses.

resume: RUN2/backup holds the weights, optimizer state and epoch count after every epoch; rerunning the
same command continues after the last completed epoch (other settings in the same RUN2 are refused).

outputs: RUN2/model.keras (patch [B, P, P, 1] -> probability [B, 1]), RUN2/config.json (settings,
proposals' stage-one threshold and scale, class counts, chosen combination with the val table),
RUN2/history.csv, RUN2/backup.
"""


def _filters(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"must be positive integers, got {text!r}")
    return values


def register(subparsers) -> argparse.ArgumentParser:
    """Adds `train-stage2` to the `hourglass` subcommands. Returns: its parser."""
    parser = subparsers.add_parser(
        "train-stage2", help="two-stage: train the patch classifier on `hourglass proposals` output "
                             "(also: hourglass train --stage 2)",
        description="Trains the stage-two patch classifier, class-balanced, resumable, and chooses how its "
                    "probability combines with stage one's score on the val proposals.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, metavar="PROPOSALS", help="output of `hourglass proposals`")
    parser.add_argument("--out", required=True, metavar="RUN2", help="run directory (created; resumed if it has a backup)")
    parser.add_argument("--epochs", type=argtypes.positive, default=None, help="epochs (default 10)")
    parser.add_argument("--steps-per-epoch", type=argtypes.positive, default=None, help="steps per epoch (default 100)")
    parser.add_argument("--batch-size", type=argtypes.positive, default=None, help="GLOBAL batch (default 64)")
    parser.add_argument("--learning-rate", type=argtypes.positive_number, default=None, help="Adam (default 1e-3)")
    parser.add_argument("--seed", type=int, default=None, help="seed (default 0)")
    parser.add_argument("--no-augment", dest="augment", action="store_const", const=False, default=None,
                        help="no flips / 90-degree turns")
    parser.add_argument("--balance", choices=("sampling", "weights"), default=None,
                        help="class balancing: sampling (default) or weights")
    parser.add_argument("--classifier-filters", dest="filters", type=_filters, default=None, metavar="F1,F2,...",
                        help="channels of the small CNN's stages (default 16,32,64)")
    parser.add_argument("--dense", type=argtypes.non_negative, default=None, help="hidden dense units (default 64; 0 = none)")
    parser.add_argument("--dropout", type=argtypes.rate, default=None, help="dropout before the head (default 0.3)")
    parser.add_argument("--backbone", default=None, metavar="NAME",
                        help="a keras.applications backbone instead of the small CNN: MobileNetV3Small, "
                             "MobileNetV3Large, EfficientNetB0, EfficientNetV2B0 (patches >= 32 px)")
    parser.add_argument("--backbone-weights", default=None, metavar="WEIGHTS",
                        help="with --backbone: 'imagenet' (Keras downloads them: needs network access) or a weights "
                             "file (default: none, from scratch)")
    parser.add_argument("--hparams", metavar="JSON", default=None,
                        help="tuned values (`hourglass tune --stage 2`'s best_hyperparameters.json); flags win")
    parser.add_argument("--strategy", choices=["auto", "default", "mirrored", "multi-worker"], default="auto",
                        help="tf.distribute strategy (default auto, as hourglass train)")
    parser.add_argument("--cpu-replicas", type=argtypes.positive, default=None, metavar="N",
                        help="split the CPU into N logical devices (for mirrored without GPUs)")
    parser.add_argument("--quiet", action="store_true", help="one log line per epoch")
    parser.set_defaults(func=run)
    return parser


FIELDS = ("epochs", "steps_per_epoch", "batch_size", "learning_rate", "seed", "augment", "balance", "filters",
          "dense", "dropout", "backbone", "backbone_weights")


def stage_two_alias(argv: list[str]) -> list[str]:
    """Maps `train --stage 2 ARGS` to `train-stage2 ARGS` (and drops a `--stage 1`); other argv unchanged."""
    if not argv or argv[0] != "train":
        return argv
    for i, arg in enumerate(argv):
        if arg == "--stage" and i + 1 < len(argv) and argv[i + 1] in ("1", "2"):
            rest = [*argv[1:i], *argv[i + 2:]]
            return ["train-stage2", *rest] if argv[i + 1] == "2" else ["train", *rest]
        if arg in ("--stage=1", "--stage=2"):
            rest = [*argv[1:i], *argv[i + 1:]]
            return ["train-stage2", *rest] if arg.endswith("2") else ["train", *rest]
    return argv


def build_config(args: argparse.Namespace):
    """Returns: the `Stage2Config` of defaults < --hparams < explicit flags. Raises: InputError on a bad setting."""
    import dataclasses

    from keras_hourglass.two_stage.train import Stage2Config, apply_hparams

    config = Stage2Config()
    if getattr(args, "hparams", None):
        config = apply_hparams(config, _read_hparams(args.hparams), source=args.hparams)
    values = {name: getattr(args, name) for name in FIELDS if getattr(args, name, None) is not None}
    return dataclasses.replace(config, **values).validate()


def _read_hparams(path: str) -> dict:
    """Returns: the values of a best_hyperparameters.json (`{"values": {...}}`) or of a plain JSON object."""
    try:
        data = storage.read_json(path)
    except FileNotFoundError:
        raise InputError(path, "hyper-parameter file not found") from None
    except (OSError, ValueError) as err:
        raise InputError(path, f"not a readable JSON file ({err.__class__.__name__})") from None
    values = data.get("values", data) if isinstance(data, dict) else None
    if not isinstance(values, dict):
        raise InputError(path, "expected a JSON object (or KerasTuner's {\"values\": {...}})")
    return values


# The one place `hourglass train-stage2` maps the Python arguments of the shared training library
# (`ArgumentError`, ``name=`` in reasons) to its flags.
STAGE2_FLAGS = argtypes.flags_of(["strategy", "cpu_replicas", "batch_size", "epochs", "steps_per_epoch",
                                  "learning_rate", "balance", "dropout", "backbone"],
                                 run_dir="--out", filters="--classifier-filters")


def run(args: argparse.Namespace) -> int:
    """Runs `hourglass train-stage2`. Returns: 0. Raises: InputError on bad arguments or inputs (naming flags)."""
    from keras_hourglass.errors import with_flags

    try:
        return _run(args)
    except InputError as err:
        raise with_flags(err, STAGE2_FLAGS) from None


def _run(args: argparse.Namespace) -> int:
    config = build_config(args)
    from keras_hourglass.two_stage.proposals import read_manifest

    read_manifest(args.data)
    if storage.isfile(args.out):
        raise InputError(args.out, "exists and is a file")

    from keras_hourglass.training.distribution import configure_cpu_replicas, make_strategy

    if args.cpu_replicas:
        configure_cpu_replicas(args.cpu_replicas)
    strategy, info = make_strategy(args.strategy)

    from keras_hourglass.two_stage.train import train_classifier

    command = ["hourglass", *sys.argv[1:]] if sys.argv and sys.argv[0].endswith("hourglass") else sys.argv
    summary = train_classifier(config, args.data, args.out, strategy=strategy, strategy_info=info,
                               verbose=2 if args.quiet else "auto", command=command)
    result = summary["result"]
    print(json.dumps({"run_dir": result["run_dir"], "model": result["model"], "stage": 2,
                      "epochs_completed": result["epochs_completed"], "resumed_from_epoch": result["resumed_from_epoch"],
                      "final_logs": result["final_logs"], "combination": summary["two_stage"]["combination"]["name"],
                      "strategy": summary["strategy"].get("name")}, default=str))
    return 0
