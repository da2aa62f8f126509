"""`hourglass evaluate`: FROC of a trained model on a prepared split.

Writes to --out:

- froc.json: the FROC (keras_hourglass.evaluation.froc; keys in DESIGN.md).
- froc.png: the curve with its bootstrap 95% band and operating points.
- marks.csv: one row per mark (image and original DICOM coordinates, score,
  match, whether it is kept at the operating point).
- findings.csv: one row per finding with its best mark score and whether it
  is detected at the operating point (the missed cancers to review).
- overlays/*.png: a few images with their boxes and the marks kept at the
  operating point (malignant images first).

With `--classifier RUN2/model.keras` (the two-stage system) the same split is
scored by stage one and by the two-stage system (`keras_hourglass.two_stage`):
froc.json keeps stage one's FROC at the top level and adds `two_stage` (the
combined system's FROC, same keys, same hit rule and bootstrap seed) and
`comparison`; froc.png draws both curves; marks_two_stage.csv and
findings_two_stage.csv hold the combined scores.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap

from keras_hourglass import storage
from keras_hourglass.errors import InputError
from keras_hourglass.two_stage.combine import COMBINATIONS

EXAMPLES = textwrap.dedent(
    """\
    examples:
      hourglass evaluate --model runs/demo/model.keras --data prepared --out eval/demo
      hourglass evaluate --model runs/demo/model.keras --data prepared --split val --out eval/val \\
          --max-marks 200 --overlays 8 --bootstrap 2000 --seed 1
      hourglass evaluate --model runs/demo/model.keras --data prepared --out eval/quick \\
          --max-images 50 --bootstrap 0          # a quick look, no confidence intervals
      hourglass evaluate --model runs/demo/model.keras --classifier runs/demo-stage2/model.keras \\
          --data prepared --out eval/two-stage   # stage one and the two-stage system side by side

    FROC rules: evaluation positives are malignant findings only; a mark inside a malignant
    box (borders included) hits it; several marks on one finding count once and are not false
    (--extra-hits false_positive makes them false); marks on benign/high-risk findings are
    false; FPI = false marks / all images. Sensitivity at an FPI point is the step value of the
    lowest threshold whose FPI is <= the point (--interpolation linear: LUNA16/MONAI-style).
    CIs: bootstrap over patients, percentiles 2.5/97.5.
    """
)


def register(subparsers) -> argparse.ArgumentParser:
    """Adds `evaluate` to the `hourglass` subcommands. Returns: its parser."""
    parser = subparsers.add_parser(
        "evaluate",
        help="FROC evaluation of a model on a prepared split (froc.json, froc.png, marks.csv, findings.csv, overlays)",
        description="Runs the model over a prepared split and computes the FROC with bootstrap CIs.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="trained model (RUN/model.keras)")
    parser.add_argument("--data", required=True, help="prepared directory (output of `hourglass prepare`)")
    parser.add_argument("--split", default="test", help="split to evaluate (default: test)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--max-marks", type=int, default=100, help="marks per image (default: 100)")
    parser.add_argument("--overlays", type=int, default=6, help="overlay images to draw (default: 6)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates, 0 = no CIs (default: 1000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    parser.add_argument("--max-images", type=int, default=None, help="evaluate only the first N images")
    parser.add_argument("--operating-fpi", type=float, default=4.8,
                        help="FPI of the operating point used in marks.csv and overlays (default: 4.8)")
    parser.add_argument("--extra-hits", choices=("ignore", "false_positive"), default="ignore",
                        help="several marks on one finding: ignore the extras (default) or count them as false")
    parser.add_argument("--interpolation", choices=("step", "linear"), default="step",
                        help="how sensitivity is read at an FPI point (default: step)")
    parser.add_argument("--classifier", default=None, metavar="RUN2/model.keras",
                        help="stage-two classifier (`hourglass train --stage 2`): also evaluate the two-stage system")
    parser.add_argument("--combination", default="auto",
                        choices=("auto", *COMBINATIONS),
                        help="with --classifier: how the scores combine (default auto: the one RUN2/config.json "
                             "chose on the val proposals)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)
    return parser


def _check_args(args: argparse.Namespace) -> None:
    from keras_hourglass.modelfile import check_archive

    check_archive(args.model)  # before TensorFlow is imported: a bad file costs nothing
    if args.classifier is not None:
        check_archive(args.classifier)
    if not storage.isdir(args.data):
        raise InputError(args.data, "no such prepared directory")
    for name in ("max_marks", "overlays", "bootstrap"):
        value = getattr(args, name)
        if value < (1 if name == "max_marks" else 0):
            raise InputError(f"--{name.replace('_', '-')}", f"must be {'>= 1' if name == 'max_marks' else '>= 0'}, got {value}")
    if args.max_images is not None and args.max_images < 1:
        raise InputError("--max-images", f"must be >= 1, got {args.max_images}")
    if args.operating_fpi <= 0:
        raise InputError("--operating-fpi", f"must be > 0, got {args.operating_fpi}")


def load_model(path: str):
    """Loads a Keras heatmap model (compile=False) with the package's layers registered.

    Raises:
        InputError: the file is not a loadable one-channel heatmap model (`keras_hourglass.modelfile`).
    """
    from keras_hourglass.modelfile import load_heatmap_model

    return load_heatmap_model(path)


def run(args: argparse.Namespace) -> int:
    """Runs the evaluation. Returns: 0."""
    _check_args(args)
    from keras_hourglass.data.pipeline import evaluation_dataset
    from keras_hourglass.evaluation.plots import plot_froc, plot_overlay
    from keras_hourglass.evaluation.predict import predict_marks
    from keras_hourglass.model import model_input_multiple
    from keras_hourglass.evaluation.report import format_table, write_findings_csv, write_marks_csv
    from keras_hourglass.contract import EVALUATION_POSITIVE_LABELS
    from keras_hourglass.evaluation.froc import froc

    model = load_model(args.model)
    try:
        multiple = model_input_multiple(model)
    except (ValueError, TypeError) as err:
        raise InputError(args.model, f"not a fully convolutional heatmap model ({type(err).__name__})") from None
    two_stage = _load_two_stage(args) if args.classifier is not None else None
    dataset = evaluation_dataset(args.data, split=args.split, input_multiple=multiple)
    if two_stage is None:
        records = predict_marks(
            model,
            dataset,
            max_marks=args.max_marks,
            max_images=args.max_images,
            keep_images=args.overlays,
            progress=not args.quiet,
        )
    else:
        from keras_hourglass.two_stage.evaluate import predict_two_stage

        records, combined = predict_two_stage(
            model, two_stage["classifier"], dataset, combination=two_stage["combination"],
            max_marks=args.max_marks, proposal_threshold=two_stage["threshold"],
            max_proposals=two_stage["max_proposals"], max_images=args.max_images, keep_images=args.overlays,
            progress=not args.quiet)
    if not records:
        raise InputError(args.data, f"split {args.split!r} has no images")
    result = froc(
        records,
        extra_hits=args.extra_hits,
        interpolation=args.interpolation,
        n_bootstrap=args.bootstrap,
        seed=args.seed,
        progress=not args.quiet,
    )
    storage.makedirs(args.out)
    payload = result.to_json()
    payload["model"] = storage.abspath(args.model)
    payload["data"] = storage.abspath(args.data)
    payload["split"] = args.split
    payload["settings"]["max_marks"] = args.max_marks
    operating = result.operating_point(args.operating_fpi)
    payload["operating_point"] = {"target_fpi": args.operating_fpi, **operating}
    if two_stage is not None:
        combined_result = froc(combined, extra_hits=args.extra_hits, interpolation=args.interpolation,
                               n_bootstrap=args.bootstrap, seed=args.seed, progress=not args.quiet)
        _add_two_stage(payload, combined_result, two_stage, args)
    json_path = storage.join(args.out, "froc.json")
    import json

    storage.write_text(json_path, json.dumps(payload, indent=2, allow_nan=False) + "\n")
    if two_stage is None:
        plot_froc(result, os.path.join(args.out, "froc.png"))
    else:
        from keras_hourglass.evaluation.plots import plot_froc_curves

        plot_froc_curves({"stage one": result, f"two-stage ({two_stage['combination']})": combined_result},
                         os.path.join(args.out, "froc.png"), title=f"FROC: stage one vs two-stage, {args.split} split")
        combined_threshold = payload["two_stage"]["operating_point"]["threshold"]
        write_marks_csv(os.path.join(args.out, "marks_two_stage.csv"), combined,
                        operating_threshold=combined_threshold, extra_hits=args.extra_hits)
        write_findings_csv(os.path.join(args.out, "findings_two_stage.csv"), combined,
                           operating_threshold=combined_threshold)
    threshold = operating["threshold"]
    write_marks_csv(
        os.path.join(args.out, "marks.csv"), records, operating_threshold=threshold, extra_hits=args.extra_hits
    )
    write_findings_csv(os.path.join(args.out, "findings.csv"), records, operating_threshold=threshold)
    overlay_dir = os.path.join(args.out, "overlays")
    chosen = [r for r in records if r.image is not None]
    chosen.sort(key=lambda r: not any(label in EVALUATION_POSITIVE_LABELS for label in r.labels))
    if args.overlays:
        storage.makedirs(overlay_dir)
    for i, record in enumerate(chosen[: args.overlays]):
        plot_overlay(
            record,
            os.path.join(overlay_dir, f"{i:02d}_{record.image_id[:16]}.png"),
            threshold=threshold if threshold is not None else float("inf"),
        )
    if two_stage is not None:
        print("stage one")
    print(format_table(result))
    if two_stage is not None:
        print(f"two-stage ({two_stage['combination']})")
        print(format_table(combined_result))
    if threshold is None:
        print(f"operating point (FPI <= {args.operating_fpi:g}): no mark fits the budget")
    else:
        sensitivity = operating["sensitivity"]
        print(f"operating point (FPI <= {args.operating_fpi:g}): threshold {threshold:.6g}, "
              f"FPI {operating['fpi']:.3g}, sensitivity " + ("n/a" if sensitivity is None else f"{sensitivity:.3f}"))
    print(f"froc.json: {json_path}")
    sys.stdout.flush()
    return 0


def _load_two_stage(args: argparse.Namespace) -> dict:
    """The classifier and how RUN2 scores (`keras_hourglass.two_stage.system.load_stage_two`).

    Raises:
        InputError: not a patch classifier; no RUN2/config.json with --combination auto; patches at another
            scale than PREP's (the proposals' long side differs from PREP's).
    """
    from keras_hourglass.errors import with_flags
    from keras_hourglass.training.geometry import prep_long_side
    from keras_hourglass.two_stage.system import check_long_side, load_stage_two

    try:
        stage_two = load_stage_two(args.classifier, combination=args.combination)
    except InputError as err:
        raise with_flags(err, {"combination": "--combination"}) from None
    check_long_side(stage_two, prep_long_side(args.data), where=args.data, what="its images")
    return {"classifier": stage_two.classifier, "combination": stage_two.combination, "threshold": stage_two.threshold,
            "max_proposals": stage_two.max_proposals, "config": stage_two.config}


def _add_two_stage(payload: dict, combined, two_stage: dict, args: argparse.Namespace) -> None:
    """Adds `two_stage` (the combined FROC and how it was scored) and `comparison` to froc.json's payload."""
    from keras_hourglass.two_stage.combine import RULE, stage_two_weight

    block = combined.to_json()
    block["classifier"] = storage.abspath(args.classifier)
    block["combination"] = {"name": two_stage["combination"], "stage_two_weight": stage_two_weight(two_stage["combination"]),
                            "rule": RULE,
                            "source": "RUN2/config.json" if args.combination == "auto" else "--combination"}
    block["proposals"] = {"threshold": two_stage["threshold"], "max_marks": two_stage["max_proposals"]}
    block["operating_point"] = {"target_fpi": args.operating_fpi, **combined.operating_point(args.operating_fpi)}
    payload["two_stage"] = block
    payload["comparison"] = {
        "systems": ["stage_one", "two_stage"],
        "sensitivity_at_fpi": {key: {"stage_one": payload["sensitivity_at_fpi"][key], "two_stage": value}
                               for key, value in block["sensitivity_at_fpi"].items()},
        "max_sensitivity": {"stage_one": payload["max_sensitivity"], "two_stage": block["max_sensitivity"]},
        "mean_sensitivity": {"stage_one": payload["mean_sensitivity"], "two_stage": block["mean_sensitivity"]},
    }
