"""`hourglass train --stage 2`: the stage-two classifier on `hourglass proposals` output.

`cli/train.py` registers the flags (its "stage 2" group) and hands `--stage 2` here. The shared
flags mean what they mean for stage one (--epochs, --steps-per-epoch, --batch-size, --learning-rate,
--seed, --no-augment, --strategy, --cpu-replicas, --quiet); stage one's own flags (loss, geometry,
phases, model preset, validation FROC, --hparams, --profile) are refused in one line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from keras_hourglass.errors import InputError

SHARED = {"epochs": "epochs", "steps_per_epoch": "steps_per_epoch", "batch_size": "batch_size",
          "learning_rate": "learning_rate", "seed": "seed", "augment": "augment"}
STAGE_TWO = {"balance": "balance", "backbone": "backbone", "backbone_weights": "backbone_weights",
             "classifier_filters": "filters"}
STAGE_ONE_ONLY = ("hparams", "loss", "omega", "top_k", "patch_size", "mask_size", "sigmas", "recenter",
                  "target_sigma", "phase", "patch_epochs", "full_epochs", "images_per_epoch", "lr_schedule",
                  "warmup_steps", "full_learning_rate", "crop_size", "max_boxes", "preset", "model_option",
                  "jit_compile", "val_images", "target_fpi")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the `--stage` flag and the stage-two group to `hourglass train`'s parser."""
    parser.add_argument("--stage", type=int, choices=(1, 2), default=1,
                        help="1: the Hourglass on PREP (default); 2: the patch classifier on PROPOSALS "
                             "(`hourglass proposals`)")
    group = parser.add_argument_group("stage 2 (--stage 2 --data PROPOSALS --out RUN2)")
    group.add_argument("--balance", choices=("sampling", "weights"), default=None,
                       help="class balancing: sampling (default: positives and negatives drawn 1:1) or weights "
                            "(natural stream, each class weighted to half of the loss)")
    group.add_argument("--backbone", default=None, metavar="NAME",
                       help="a keras.applications backbone (MobileNetV3Small, MobileNetV3Large, EfficientNetB0, "
                            "EfficientNetV2B0) instead of the small CNN")
    group.add_argument("--backbone-weights", default=None, metavar="WEIGHTS",
                       help="with --backbone: 'imagenet' (needs network access) or a weights file (default: none)")
    group.add_argument("--classifier-filters", default=None, metavar="F1,F2,...",
                       help="channels of the small CNN's stages (default 16,32,64)")


def _filters(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise InputError("--classifier-filters", f"not a comma-separated list of integers: {text!r}") from None
    if not values or min(values) < 1:
        raise InputError("--classifier-filters", f"must be positive integers, got {text!r}")
    return values


def build_config(args: argparse.Namespace):
    """Stage2Config from defaults < explicit flags. Raises: InputError for a stage-one flag."""
    import dataclasses

    from keras_hourglass.two_stage.train import Stage2Config

    for name in STAGE_ONE_ONLY:
        if getattr(args, name, None) is not None:
            raise InputError(f"--{name.replace('_', '-')}", "applies to stage one only, not to --stage 2")
    if getattr(args, "profile", "default") not in (None, "default"):
        raise InputError("--profile", "applies to stage one only, not to --stage 2")
    values = {field: getattr(args, flag) for flag, field in {**SHARED, **STAGE_TWO}.items()
              if getattr(args, flag, None) is not None}
    if "filters" in values:
        values["filters"] = _filters(values["filters"])
    return dataclasses.replace(Stage2Config(), **values).validate()


def run(args: argparse.Namespace) -> int:
    """Runs `hourglass train --stage 2`. Returns: 0."""
    config = build_config(args)
    from keras_hourglass.two_stage.proposals import read_manifest

    read_manifest(args.data)
    if os.path.isfile(args.out):
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
