"""`hourglass proposals`: stage-two data (a labelled patch per stage-one mark, every split of PREP)."""

from __future__ import annotations

import argparse
import json
import textwrap

from keras_hourglass import storage
from keras_hourglass.cli import argtypes
from keras_hourglass.errors import InputError

EXAMPLES = textwrap.dedent(
    """\
    examples:
      hourglass proposals --model runs/hs/model.keras --data prepared --out proposals/hs
      hourglass proposals --model runs/hs/model.keras --data prepared --out proposals/hs48 \\
          --operating-point 48 --max-marks 100 --patch-size 384

    Per mark: a --patch-size patch (reference px: pixels at the 1536-px training scale, resolved
    against PREP's --size; 384 = 64 px at --size 256), stage one's score, label 1 when the mark
    lies inside a high_risk or malignant box (the evaluation's hit rule, borders included), 0
    otherwise (benign boxes and background), and a malignant-only label for evaluation.
    Threshold: --threshold T keeps marks with score >= T; --operating-point FPI uses stage one's
    threshold at that FPI on PREP's val split; neither keeps every mark (<= --max-marks per image).
    Output: OUT/<split>/{positive,negative}-NNNNN.tfrecord, OUT/<split>/images.jsonl and
    OUT/manifest.json (counts per split and label: every mark accounted for), written last.
    Next: hourglass train --stage 2 --data OUT --out RUN2
    """
)


def register(subparsers) -> argparse.ArgumentParser:
    """Adds `proposals` to the `hourglass` subcommands. Returns: its parser."""
    parser = subparsers.add_parser(
        "proposals", help="two-stage: run stage one over every split and write a labelled patch per mark",
        description="Runs the stage-one detector over every split of a prepared directory and writes, per mark, "
                    "a patch at the training scale with its score and labels (stage-two training data).",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="stage-one model (RUN/model.keras)")
    parser.add_argument("--data", required=True, metavar="PREP", help="prepared directory (`hourglass prepare`)")
    parser.add_argument("--out", required=True, metavar="PROPOSALS", help="output directory")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--threshold", type=argtypes.finite, default=None, help="keep marks with score >= T")
    group.add_argument("--operating-point", type=argtypes.positive_number, default=None, metavar="FPI",
                       help="use stage one's threshold at this FPI on PREP/val")
    parser.add_argument("--max-marks", type=argtypes.positive, default=100, help="marks per image (default: 100)")
    parser.add_argument("--patch-size", type=argtypes.positive_number, default=None, metavar="REF_PX",
                        help="patch side in reference px (default 384 = 64 px at --size 256)")
    parser.add_argument("--records-per-shard", type=argtypes.positive, default=4096, help="records per TFRecord file")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)
    return parser


# The one place `hourglass proposals` maps the library's Python arguments to its flags.
PROPOSALS_FLAGS = argtypes.flags_of(["threshold", "operating_point", "patch_size", "max_marks"],
                                    out_dir="--out", model="--model", model_path="--model")


def run(args: argparse.Namespace) -> int:
    """Runs `hourglass proposals`. Returns: 0. Raises: InputError on bad arguments or inputs (naming flags)."""
    from keras_hourglass.errors import with_flags

    try:
        return _run(args)
    except InputError as err:
        raise with_flags(err, PROPOSALS_FLAGS) from None


def _run(args: argparse.Namespace) -> int:
    from keras_hourglass.modelfile import check_archive

    check_archive(args.model)  # before TensorFlow is imported: a bad file costs nothing
    if not storage.isdir(args.data):
        raise InputError(args.data, "no such prepared directory")
    if not storage.exists(storage.join(args.data, "manifest.json")):
        raise InputError(args.data, "no manifest.json: not a directory written by `hourglass prepare`")

    from keras_hourglass.modelfile import load_heatmap_model
    from keras_hourglass.two_stage.patches import DEFAULT_PATCH_SIZE
    from keras_hourglass.two_stage.proposals import make_proposals

    model = load_heatmap_model(args.model)
    manifest = make_proposals(
        model, args.data, args.out, patch_size=args.patch_size or DEFAULT_PATCH_SIZE, threshold=args.threshold,
        operating_point=args.operating_point, max_marks=args.max_marks, records_per_shard=args.records_per_shard,
        model_path=args.model, progress=not args.quiet)
    print(json.dumps({
        "proposals": storage.abspath(args.out), "threshold": manifest["stage_one"]["threshold"],
        "patch_px": manifest["patch"]["resolved"], "totals": manifest["totals"],
        "splits": {split: {k: v for k, v in counts.items() if k in ("images", "marks", "positive", "negative",
                                                                     "malignant")}
                   for split, counts in manifest["splits"].items() if counts.get("present")},
    }))
    return 0
