"""`hourglass train`: two-phase training (patches, then whole images), distributed, resumable."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from keras_hourglass.cli import argtypes
from keras_hourglass.training.config import TrainConfig

EPILOG = """examples:
  # the defaults: hypersensitive loss with principle (a) off (re-centring; README), tiny model, Adam 1e-3
  # with warmup + cosine decay, 5 + 5 epochs of 8,000 images; loss geometry and crop follow PREP's --size
  # (config.json: given and resolved px)
  hourglass train --data data/prepared --out runs/hs

  # the paper's recipe (Adam 1e-4 constant, omega 0.01, k 3, (a) on, 40 + 40 epochs of 8,000 images,
  # paper model)
  hourglass train --data data/prepared --out runs/paper --profile paper

  # small and quick (CPU): tiny model, 3 + 2 epochs of 40 steps, one log line per epoch
  hourglass train --data data/prepared --out runs/tiny --epochs 5 --steps-per-epoch 40 \\
      --batch-size 4 --quiet

  # the Gaussian L2 baseline, or the hypersensitive loss with one principle switched off
  hourglass train --data data/prepared --out runs/l2 --loss l2
  hourglass train --data data/prepared --out runs/no-topk --top-k 0

  # the tuner's best hyper-parameters; explicit flags still win
  hourglass train --data data/prepared --out runs/best --hparams tune/best_hyperparameters.json --epochs 20

  # all GPUs of this machine, global batch 32 (16 per GPU with 2 GPUs)
  hourglass train --data data/prepared --out runs/hs --strategy mirrored --batch-size 32

  # GPUs with fast bfloat16: the layers compute in bfloat16; weights, heatmap heads and losses stay float32
  hourglass train --data data/prepared --out runs/bf16 --strategy mirrored --mixed-precision bfloat16

  # several machines: run the same command on each, with TF_CONFIG naming the cluster and this task
  TF_CONFIG='{"cluster": {"worker": ["host0:2222", "host1:2222"]}, "task": {"type": "worker", "index": 0}}' \\
      hourglass train --data /shared/prepared --out /shared/runs/hs --strategy multi-worker

strategies: auto (default) = multi-worker if TF_CONFIG names more than one task, else mirrored if more than
one GPU is visible, else default (one device). mirrored without GPUs uses the logical CPU devices
(--cpu-replicas N splits the CPU into N). --batch-size is the GLOBAL batch, split evenly across all
replicas of all workers; the learning rate is NOT scaled with the number of replicas.

resume: after every epoch RUN/backup holds the weights, optimizer state and epoch count. Running the same
command again after a crash or preemption continues after the last completed epoch (a different
configuration in the same RUN is refused). Multi-worker: only the chief (worker 0, or the "chief" task)
writes RUN; RUN must be on storage every worker can read.

--hparams: the JSON of keras_tuner HyperParameters.get_config() (TUNE/best_hyperparameters.json:
{"space": [...], "values": {...}}) or a plain {"name": value} object. Precedence: defaults < --profile <
--hparams < explicit flags.

outputs: RUN/model.keras (inference model: image -> final heatmap), RUN/best.keras (+ best.json, the
best epoch by val_sensitivity at --target-fpi on the validation split), RUN/config.json (data manifest
hash, hyper-parameters, model config, seed, precision (dtype policy), strategy, package versions, command
line, result),
RUN/history.csv, RUN/logs (TensorBoard: scalars and validation heatmaps), RUN/backup. The JSON summary
goes to stdout.
"""


def _sigmas(text: str) -> tuple:
    from keras_hourglass.training.config import parse_sigmas

    try:
        return parse_sigmas(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None


def _model_option(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Adds `train` to the CLI. Args: subparsers: from `add_subparsers`. Returns: the parser."""
    parser = subparsers.add_parser(
        "train", help="train the Hourglass (patches, then whole images); multi-GPU / multi-worker; resumable",
        description="Train the hypersensitive Hourglass in two phases as in the paper: phase 1 on patches "
                    "centred on findings, phase 2 fine-tuning on whole images (same model).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    io = parser.add_argument_group("data and output")
    io.add_argument("--data", required=True, metavar="PREP", help="directory written by `hourglass prepare`")
    io.add_argument("--out", required=True, metavar="RUN", help="run directory (created; resumed if it has a backup)")
    io.add_argument("--hparams", metavar="JSON", help="hyper-parameters (KerasTuner get_config() JSON or {name: value})")

    loss = parser.add_argument_group(
        "loss (default: the paper's hypersensitive loss); sizes in REFERENCE pixels: pixels at the paper's "
        "1536-px training scale (heatmap pixels of a stride-4 model for the loss), resolved against PREP's "
        "--size (x size/1536): the same physical extent at any scale")
    loss.add_argument("--loss", choices=["hypersensitive", "l2", "focal"], default=None,
                      help="hypersensitive (default), l2 (Gaussian L2 baseline) or focal (CenterNet's "
                           "penalty-reduced focal loss on the same Gaussian targets)")
    loss.add_argument("--omega", type=argtypes.number, default=None, help="background weight (default 0.01; 1.0 = off)")
    loss.add_argument("--top-k", type=argtypes.non_negative, default=None, metavar="K",
                      help="predicted blobs excused from the background loss (default 3; 0 = off)")
    loss.add_argument("--patch-size", type=argtypes.positive, default=None, metavar="P",
                      help="detector patch of the loss, reference heatmap px (default 72 = 12 px at --size 256)")
    loss.add_argument("--mask-size", type=argtypes.positive, default=None, metavar="P",
                      help="window masked around each top-k blob, reference heatmap px (default: half --patch-size)")
    loss.add_argument("--sigmas", type=_sigmas, default=None, metavar="S1,S2,...",
                      help="reference blob sigmas, reference heatmap px (default 6,9,12,18 = 1,1.5,2,3 px at "
                           "--size 256; one value = off)")
    loss.add_argument("--recenter", dest="recenter", action="store_const", const=True, default=None,
                      help="centre reference blobs on the predicted blob's centre of mass (principle (a) on; "
                           "on in --profile paper)")
    loss.add_argument("--no-recenter", dest="recenter", action="store_const", const=False, default=None,
                      help="centre reference blobs on the box centre (principle (a) off; the default)")
    loss.add_argument("--recenter-region", choices=("patch", "box"), default=None,
                      help="principle (a): centre of mass over the whole detector patch or only the patch pixels "
                           "inside the box (default patch)")
    loss.add_argument("--target-sigma", "--l2-sigma", dest="target_sigma", type=argtypes.number, default=None,
                      help="Gaussian target sigma of --loss l2 / focal, reference heatmap px (default 12)")

    sched = parser.add_argument_group("schedule")
    sched.add_argument("--phase", choices=["patch", "full", "both"], default=None,
                       help="patches, whole images, or both in that order (default both)")
    sched.add_argument("--epochs", type=argtypes.positive, default=None, metavar="E",
                       help="total epochs; with --phase both split in half (patch gets the odd one) "
                            "unless --patch-epochs/--full-epochs say otherwise")
    sched.add_argument("--patch-epochs", type=argtypes.non_negative, default=None, help="epochs of phase 1 (default 5)")
    sched.add_argument("--full-epochs", type=argtypes.non_negative, default=None, help="epochs of phase 2 (default 5)")
    sched.add_argument("--steps-per-epoch", type=argtypes.positive, default=None, metavar="S",
                       help="steps per epoch (default: images-per-epoch // batch-size)")
    sched.add_argument("--images-per-epoch", type=argtypes.positive, default=None, metavar="N",
                       help="images per epoch (default 8000, the paper's)")
    sched.add_argument("--batch-size", type=argtypes.positive, default=None, metavar="B",
                       help="GLOBAL batch size, split across replicas (default 8)")
    sched.add_argument("--profile", choices=["default", "paper"], default="default",
                       help="bundle of defaults: 'default' (measured on CPU budgets, see README) or 'paper' "
                            "(Adam 1e-4 constant, 40 + 40 epochs of 8,000 images, paper preset); --hparams "
                            "and flags override it")
    sched.add_argument("--learning-rate", type=argtypes.number, default=None, metavar="LR",
                       help="Adam (peak) learning rate (default 1e-3; not scaled with replicas)")
    sched.add_argument("--lr-schedule", choices=["cosine", "constant"], default=None,
                       help="cosine (default: linear warmup, then cosine decay to 5%% over all steps of both "
                            "phases) or constant")
    sched.add_argument("--warmup-steps", type=argtypes.non_negative, default=None, metavar="N",
                       help="warmup of the cosine schedule (default 5%% of all steps, at most 1000)")
    sched.add_argument("--full-learning-rate", type=argtypes.number, default=None, metavar="LR",
                       help="--lr-schedule constant only: learning rate of phase 2 (default: --learning-rate)")
    sched.add_argument("--crop-size", type=argtypes.positive, default=None, metavar="PIXELS",
                       help="phase-1 patch side, reference image px (default 768 = 128 px at --size 256; the "
                            "paper's 1280 native is 512; resolved to PREP's scale, rounded to the model's input "
                            "multiple, clamped to the image)")
    sched.add_argument("--max-boxes", type=argtypes.positive, default=None, help="box slots per image (default 16)")
    sched.add_argument("--no-augment", dest="augment", action="store_const", const=False, default=None,
                       help="no flips / intensity jitter")
    sched.add_argument("--zoom", type=argtypes.number, default=None, metavar="FACTOR",
                       help="scale phase-1 crops by a random factor in [1/FACTOR, FACTOR] (default 1 = off; "
                            "at most 4)")
    sched.add_argument("--rotate", action=argparse.BooleanOptionalAction, default=None,
                       help="also random 90-degree turns of the phase-1 patches (default off)")
    sched.add_argument("--seed", type=int, default=None, help="seed of initialisation and data (default 0)")

    model = parser.add_argument_group("model")
    model.add_argument("--preset", choices=["tiny", "paper"], default=None, help="model size (default tiny)")
    model.add_argument("--model-option", type=_model_option, action="append", default=None, metavar="KEY=VALUE",
                       help="override a preset key, e.g. num_features=32 (repeatable)")
    model.add_argument("--jit-compile", action=argparse.BooleanOptionalAction, default=None,
                       help="XLA-compile the train step (default: Keras 'auto')")
    model.add_argument("--mixed-precision", choices=["float32", "bfloat16", "float16"], default=None,
                       help="compute dtype of the model (default float32): bfloat16 / float16 run the layers in "
                            "low precision with float32 weights, heatmap heads and losses (float16 with loss "
                            "scaling); recorded in config.json")

    val = parser.add_argument_group("validation")
    val.add_argument("--val-images", type=argtypes.non_negative, default=None, metavar="N",
                     help="validation images for the per-epoch FROC (default 64; 0 = no validation)")
    val.add_argument("--target-fpi", type=argtypes.number, default=None,
                     help="FPI at which val_sensitivity is read (default 4.8)")

    dist = parser.add_argument_group("distribution")
    dist.add_argument("--strategy", choices=["auto", "default", "mirrored", "multi-worker"], default="auto",
                      help="tf.distribute strategy (default auto)")
    dist.add_argument("--cpu-replicas", type=argtypes.positive, default=None, metavar="N",
                      help="split the CPU into N logical devices (for mirrored without GPUs)")

    parser.add_argument("--quiet", action="store_true", help="one log line per epoch instead of progress bars")
    parser.set_defaults(func=run)
    return parser


FLAG_FIELDS = ("loss", "omega", "top_k", "patch_size", "mask_size", "sigmas", "recenter", "recenter_region",
               "target_sigma", "phase",
               "steps_per_epoch", "images_per_epoch", "batch_size", "learning_rate", "lr_schedule",
               "warmup_steps", "full_learning_rate",
               "crop_size", "max_boxes", "augment", "zoom", "rotate", "seed", "preset", "jit_compile", "mixed_precision", "val_images",
               "target_fpi")


# The one place `hourglass train` maps the library's Python arguments (`ArgumentError`, ``name=`` in
# reasons) to its flags: each `TrainConfig` field is its flag; `hourglass tune` shares the table.
TRAIN_FLAGS = argtypes.flags_of(
    [field.name for field in dataclasses.fields(TrainConfig)] + ["epochs", "profile", "strategy", "cpu_replicas",
                                                                   "hparams"],
    model="--model-option", prep_dir="--data", long_side="--data", run_dir="--out")


def build_config(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig from defaults < --profile < --hparams < explicit flags. Raises: InputError naming flags."""
    from keras_hourglass.errors import InputError, with_flags

    try:
        return _build_config(args)
    except InputError as err:
        raise with_flags(err, TRAIN_FLAGS) from None


def _build_config(args: argparse.Namespace) -> TrainConfig:
    from keras_hourglass.training.config import apply_hparams, apply_profile, load_hparams, split_epochs

    config = apply_profile(TrainConfig(), getattr(args, "profile", "default") or "default")
    if args.hparams:
        config = apply_hparams(config, load_hparams(args.hparams), source=args.hparams)
    explicit = {name: getattr(args, name) for name in FLAG_FIELDS if getattr(args, name) is not None}
    if args.model_option:
        explicit["model"] = {**config.model, **dict(args.model_option)}
    config = dataclasses.replace(config, **explicit)

    patch, full = split_epochs(config.phase, args.epochs, args.patch_epochs, args.full_epochs)
    if patch is not None:
        config = dataclasses.replace(config, patch_epochs=patch)
    if full is not None:
        config = dataclasses.replace(config, full_epochs=full)
    return config.validate()


def _require_training_positives(manifest_path: str) -> None:
    """Refuses a PREP whose train split has no high_risk or malignant image (the loss would learn nothing).

    A manifest without `images_written` (older or hand-made) is not checked here; the pipeline still
    fails on a split without records.
    """
    import json

    from keras_hourglass import contract
    from keras_hourglass.errors import InputError

    from keras_hourglass import storage

    try:
        written = json.loads(storage.read_text(manifest_path)).get("images_written")
    except (OSError, ValueError, AttributeError):
        raise InputError(manifest_path, "not a readable JSON manifest") from None
    if not isinstance(written, dict) or not isinstance(written.get("train"), dict):
        return
    positives = sum(int(written["train"].get(label) or 0) for label in contract.TRAINING_POSITIVE_LABELS)
    if positives == 0:
        raise InputError(manifest_path, "the train split has no high_risk or malignant image: the detection loss "
                                        "has nothing to learn (prepare more data or other splits)")


def run(args: argparse.Namespace) -> int:
    """Runs `hourglass train`. Returns: 0. Raises: InputError on bad arguments or inputs (naming flags)."""
    from keras_hourglass.errors import InputError, with_flags

    try:
        return _run(args)
    except InputError as err:
        raise with_flags(err, TRAIN_FLAGS) from None


def _run(args: argparse.Namespace) -> int:
    from keras_hourglass import storage

    from keras_hourglass.errors import InputError

    config = build_config(args)
    if not storage.isdir(args.data):
        raise InputError(args.data, "not a directory (run `hourglass prepare` first)")
    if not storage.exists(storage.join(args.data, "manifest.json")):
        raise InputError(args.data, "no manifest.json: not a directory written by `hourglass prepare`")
    _require_training_positives(storage.join(args.data, "manifest.json"))
    if storage.isfile(args.out):
        raise InputError(args.out, "exists and is a file")

    from keras_hourglass.training.distribution import configure_cpu_replicas, make_strategy

    if args.cpu_replicas:
        configure_cpu_replicas(args.cpu_replicas)
    strategy, info = make_strategy(args.strategy)  # before any other TensorFlow work (multi-worker)

    from keras_hourglass.training.train import train

    summary = train(config, args.out, prep_dir=args.data, strategy=strategy, strategy_info=info,
                    verbose=2 if args.quiet else "auto", command=["hourglass", *sys.argv[1:]]
                    if sys.argv and sys.argv[0].endswith("hourglass") else sys.argv)
    result = summary["result"]
    print(json.dumps({
        "run_dir": result["run_dir"], "model": result["model"], "best": result["best"],
        "epochs_completed": result["epochs_completed"], "resumed_from_epoch": result["resumed_from_epoch"],
        "final_logs": result["final_logs"], "strategy": summary["strategy"]["name"],
        "num_replicas": summary["strategy"]["num_replicas"], "is_chief": summary["strategy"]["is_chief"],
    }, default=str))
    return 0
