"""`hourglass export`: write a verified SavedModel version for TensorFlow Serving."""

from __future__ import annotations

import argparse
import json
import sys

from keras_hourglass import storage
from keras_hourglass.cli import argtypes
from keras_hourglass.errors import InputError, escape_controls
from keras_hourglass.two_stage.combine import COMBINATIONS

EPILOG = """\
examples:
  # next version under the base path TF Serving watches (1, 2, ...)
  hourglass export --model runs/r1/model.keras --base-path serving/hourglass
  # an explicit version, at most 50 marks per image, default threshold 0.3
  hourglass export --model runs/r1/model.keras --base-path serving/hourglass \\
      --version 7 --max-marks 50 --threshold 0.3
  # publish as the canary: models.config gets version_labels { canary: N }, atomically
  hourglass export --model runs/r2/model.keras --base-path serving/hourglass --label canary \\
      --models-config serving/models.config
  # TF Serving batches (--enable_batching): warm up at every allowed batch size of its file
  hourglass export --model runs/r1/model.keras --base-path serving/hourglass \\
      --batching-parameters serving/batching_parameters.txt
  # record the operating points hourglass evaluate measured (predict --operating-point 4.8)
  hourglass export --model runs/r1/model.keras --base-path serving/hourglass --evaluation eval/r1
  # both stages in one SavedModel: stage one's marks rescored by the stage-two classifier, combined
  # as RUN2/config.json records (operating points from `hourglass evaluate --classifier`)
  hourglass export --model runs/r1/model.keras --classifier runs/r1-stage2/model.keras \\
      --base-path serving/hourglass --evaluation eval/r1-two-stage

Every version carries its model contract (preprocessing, thresholds,
operating points, lineage) as the signature `metadata` and in
assets.extra/keras_hourglass.json. The version is written under
BASE/.tmp-<uuid>, verified (op allow-list, saved_model_cli show/run, warmup
replay, metadata == assets.extra) and renamed to
BASE/<version>; an existing version is never overwritten (exit 2). Prints
the export's JSON (path, version, metadata, verification) on stdout.

With --classifier the signatures keep their names and outputs, and their
marks carry the two-stage score (the threshold applies to it); two more
outputs give each mark's stage-one score and stage-two probability, and the
contract records the combination (`two_stage`). Verification also compares
the export's scores with the Python two-stage pipeline on a reference image.
"""


def register(subparsers) -> argparse.ArgumentParser:
    """Adds the `export` subcommand. Returns: its parser."""
    parser = subparsers.add_parser(
        "export",
        help="export a trained model as a SavedModel version for TF Serving",
        description="Export RUN/model.keras as BASE/<version>/ (SavedModel with signatures "
        "serving_default and detect_png, warmup requests, metadata), atomically and verified.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, metavar="RUN/model.keras", help="Keras model saved by `hourglass train`")
    parser.add_argument("--base-path", required=True, metavar="DIR", help="the model base path TF Serving watches")
    parser.add_argument("--version", type=int, default=None, metavar="N", help="version number (default: next integer)")
    parser.add_argument("--max-marks", type=argtypes.positive, default=100, metavar="M", help="mark rows per image (default 100)")
    parser.add_argument("--threshold", type=float, default=0.0, metavar="T", help="default score threshold (default 0)")
    parser.add_argument(
        "--long-side",
        type=argtypes.positive,
        default=None,
        metavar="PIXELS",
        help="long side of the training images (default: the preprocessing model.keras carries, else the run's "
             "config.json); clients preprocess DICOMs to it",
    )
    parser.add_argument("--evaluation", metavar="EVAL", default=None,
                        help="EVAL/froc.json (or EVAL) of `hourglass evaluate` on this model: its operating "
                             "points go into the model contract (hourglass predict --operating-point FPI)")
    parser.add_argument("--model-name", default="hourglass",
                        help="model name (warmup requests, models.config entry; default hourglass)")
    parser.add_argument("--label", default=None, metavar="NAME",
                        help="after publishing, point this TF Serving version label (stable, canary) at the new "
                             "version in --models-config, atomically")
    parser.add_argument("--models-config", default=None, metavar="FILE",
                        help="models.config that --label updates (default: models.config next to the base path; "
                             "created if absent)")
    parser.add_argument("--batching-parameters", metavar="FILE", default=None,
                        help="TF Serving batching parameters the server runs with (serving/batching_parameters.txt): "
                             "warmup at each allowed_batch_sizes entry (default: batch 1, batching off)")
    parser.add_argument("--classifier", default=None, metavar="RUN2/model.keras",
                        help="stage-two classifier (`hourglass train --stage 2`): export both stages as one "
                             "SavedModel whose marks carry the combined score")
    parser.add_argument("--combination", default="auto",
                        choices=("auto", *COMBINATIONS),
                        help="with --classifier: how the scores combine (default auto: the one RUN2/config.json "
                             "chose on the val proposals)")
    parser.add_argument(
        "--verify",
        choices=("full", "ops"),
        default="full",
        help="full: op allow-list + saved_model_cli run + warmup replay (+ with --classifier, the scores against "
             "the Python two-stage pipeline) (default); ops: op allow-list only",
    )
    parser.set_defaults(func=run)
    return parser


# The one place `hourglass export` maps the library's Python arguments (`ArgumentError`, ``name=`` in
# reasons) to its flags.
EXPORT_FLAGS = {
    "model_path": "--model", "base_path": "--base-path", "version": "--version", "max_marks": "--max-marks",
    "threshold": "--threshold", "long_side": "--long-side", "model_name": "--model-name", "verify": "--verify",
    "evaluation": "--evaluation", "batch_sizes": "--batching-parameters", "label": "--label",
    "classifier": "--classifier", "combination": "--combination",
}


def run(args: argparse.Namespace) -> int:
    """Runs the export. Returns: 0 on success, 1 if verification fails."""
    from keras_hourglass.errors import with_flags

    try:
        return _run(args)
    except InputError as err:
        raise with_flags(err, EXPORT_FLAGS) from None


def _run(args: argparse.Namespace) -> int:
    from export.saved_model import export_keras_model, list_versions, version_problem
    from export.verify import VerificationError

    config = None
    if args.label:
        from serving.model_config import check_label

        config = args.models_config or storage.join(storage.dirname(storage.abspath(args.base_path)), "models.config")
        check_label(config, args.model_name, args.label)  # before anything is published
    elif args.models_config:
        raise InputError("--models-config", "only used with --label")
    batch_sizes = (1,)
    if args.batching_parameters:
        from serving.batching import allowed_batch_sizes

        batch_sizes = allowed_batch_sizes(args.batching_parameters)
    versions = list_versions(args.base_path)
    if versions:
        newest = storage.join(args.base_path, str(versions[-1]))
        problem = version_problem(newest)
        if problem:
            print(f"hourglass export: warning: {escape_controls(newest)}, the newest version in the base path, is "
                  f"broken ({problem}): TF Serving cannot load it; remove it or publish a higher version",
                  file=sys.stderr)
    try:
        result = export_keras_model(
            args.model,
            args.base_path,
            version=args.version,
            max_marks=args.max_marks,
            threshold=args.threshold,
            long_side=args.long_side,
            model_name=args.model_name,
            verify=args.verify,
            evaluation=args.evaluation,
            batch_sizes=batch_sizes,
            classifier=args.classifier,
            combination=args.combination,
        )
    except VerificationError as err:
        print(f"hourglass export: verification failed, nothing published: {err}", file=sys.stderr)
        return 1
    payload = result.to_json()
    if args.label:
        from serving.model_config import set_version_label

        payload["version_label"] = set_version_label(config, args.model_name, args.label, result.version,
                                                     base_path=storage.abspath(args.base_path))
    print(json.dumps(payload, indent=2))
    return 0
