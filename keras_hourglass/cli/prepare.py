"""`hourglass prepare`: annotation table + DICOMs -> TFRecords, manifest.json, rejects.csv."""

from __future__ import annotations

import argparse
import dataclasses
import json

from keras_hourglass.cli import argtypes
from keras_hourglass.errors import InputError, with_flags

EPILOG = """\
examples:
  # canonical CSV (DESIGN.md), one machine, two decoding processes
  hourglass prepare --annotations synth/annotations.csv --images-root synth --out prepared --workers 2

  # VinDr-Mammo (study_id is the patient key; val carved out of its training split)
  hourglass prepare --format vindr --annotations vindr/finding_annotations.csv --images-root vindr \\
      --out prepared-vindr --size 1536 --workers 8

  # CBIS-DDSM: several case-description tables, boxes from the ROI masks
  hourglass prepare --format cbis-ddsm --images-root CBIS-DDSM --out prepared-cbis \\
      --annotations mass_case_description_train_set.csv mass_case_description_test_set.csv \\
                    calc_case_description_train_set.csv calc_case_description_test_set.csv

  # the same ingest as an Apache Beam pipeline (pip install 'keras-hourglass[beam]'); Beam's own
  # options follow a lone "--": two local worker processes ...
  hourglass prepare --annotations synth/annotations.csv --images-root synth --out prepared-beam \\
      --runner DirectRunner -- --direct_num_workers 2 --direct_running_mode multi_processing
  # ... or many machines (README "Many machines": Dataflow, Flink, Spark)
  hourglass prepare --annotations /mnt/vindr/finding_annotations.csv --images-root /mnt/vindr \\
      --format vindr --out gs://BUCKET/prepared --salt 5f3c... --runner DataflowRunner -- \\
      --project P --region europe-west4 --temp_location gs://BUCKET/tmp --sdk_container_image IMAGE

Local path: an interrupted run resumes (rerun the same command: complete chunks are skipped);
PREP/<split>/<stratum>-CCCCC.tfrecord. Beam path: the runner retries failed work; files are
PREP/<split>/<stratum>-SSSSS-of-NNNNN.tfrecord, finalised by Beam's file sink; --out must be new.
Both: PREP/manifest.json, PREP/rejects.csv, the same Examples for the same inputs and --salt;
a JSON summary on stdout. Exit 0 on success, 2 on bad arguments or inputs.
"""


def _birads(text: str) -> dict:
    from keras_hourglass.data.importers.vindr import parse_birads_map

    try:
        return parse_birads_map(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not in [0, 1)")
    return value


def register(subparsers) -> argparse.ArgumentParser:
    """Adds the `prepare` subcommand. Returns: its parser."""
    parser = subparsers.add_parser(
        "prepare", help="ingest DICOMs + annotations into sharded TFRecords (PHI hashed)",
        description="Ingest mammograms and annotations into TFRecords split by patient, with "
                    "manifest.json and rejects.csv (every input row accounted for).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotations", nargs="+", metavar="CSV",
                        help="annotation table(s) (CBIS-DDSM: several case-description CSVs)")
    parser.add_argument("--images-root", metavar="DIR", help="directory the image paths are relative to")
    parser.add_argument("--out", required=True, metavar="PREP", help="output directory")
    parser.add_argument("--format", default="canonical", choices=["canonical", "vindr", "cbis-ddsm"],
                        help="annotation table format (default canonical)")
    parser.add_argument("--size", type=int, default=1536, metavar="PIXELS",
                        help="long side at training scale (default 1536 = 3840 / 2.5)")
    parser.add_argument("--workers", type=int, default=1, metavar="N", help="decoding processes (default 1)")
    parser.add_argument("--decoder", default="pydicom", choices=["pydicom", "tfio"],
                        help="pixel decoder (tfio: tensorflow-io, only in a TF 2.17.1 environment)")
    parser.add_argument("--runner", default=None, metavar="BEAM_RUNNER",
                        help="run as an Apache Beam pipeline on this runner (DirectRunner, PrismRunner, "
                             "DataflowRunner, FlinkRunner, SparkRunner); Beam options after a lone --")
    parser.add_argument("--salt", default=None, metavar="S",
                        help="hashing salt (default: reuse the previous run's, else a new random one)")
    parser.add_argument("--val-fraction", type=_fraction, default=0.1, metavar="F",
                        help="share of patients in val (carved out of train when the dataset has its own "
                             "train/test split; default 0.1)")
    parser.add_argument("--test-fraction", type=_fraction, default=0.1, metavar="F",
                        help="share of patients in test when the dataset has no split (default 0.1)")
    parser.add_argument("--max-pixels", type=int, default=40_000_000, metavar="P",
                        help="reject images with more pixels, checked before decoding")
    parser.add_argument("--voi", default="auto", help="auto | window | none | window index (default auto)")
    parser.add_argument("--orient", default="left", choices=["left", "right", "none"])
    parser.add_argument("--images-per-file", type=int, default=64, metavar="N",
                        help="images per TFRecord chunk, the unit of resumption (default 64, ~100-200 MB "
                             "at 1536 px)")
    parser.add_argument("--birads-map", type=_birads, default=None, metavar="MAP",
                        help="VinDr label map, e.g. '2=benign,3=benign,4=high_risk,5=malignant'")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    # Retired (issue 14): hand-made machine shards and their manifest merge; a Beam runner distributes.
    parser.add_argument("--shard-index", "--num-shards", dest="retired_shards", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--merge", dest="retired_merge", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("beam_options", nargs="*", metavar="-- BEAM_OPTION",
                        help="Apache Beam pipeline options, after a lone -- (with --runner)")
    parser.set_defaults(func=run)
    return parser


def _prepare_flags() -> dict[str, str]:
    """The one place `hourglass prepare` maps the library's Python arguments (`ArgumentError`, ``name=``
    in reasons) to its flags: each `PrepareConfig` field is its flag."""
    from keras_hourglass.data.prepare import PrepareConfig

    return argtypes.flags_of([field.name for field in dataclasses.fields(PrepareConfig)],
                             fmt="--format", beam_options="--runner")


def run(args: argparse.Namespace) -> int:
    """Runs `hourglass prepare`. Returns: exit code 0 (errors raise InputError naming flags -> exit 2)."""
    try:
        return _run(args)
    except InputError as err:
        raise with_flags(err, _prepare_flags()) from None


def _run(args: argparse.Namespace) -> int:
    from keras_hourglass.data import prepare

    if args.retired_shards is not None or args.retired_merge:
        raise InputError("--num-shards", "--shard-index/--num-shards and --merge are retired: run the ingest on "
                                         "many machines as a Beam pipeline (--runner, README 'Many machines')")
    if not args.annotations or not args.images_root:
        raise InputError("--annotations", "--annotations and --images-root are required")
    voi = int(args.voi) if args.voi.isdigit() else args.voi
    if voi not in ("auto", "window", "none") and not isinstance(voi, int):
        raise InputError("--voi", f"{args.voi!r} is not auto, window, none or an index")
    config = prepare.PrepareConfig(
        annotations=args.annotations, images_root=args.images_root, out=args.out, fmt=args.format,
        size=args.size, workers=args.workers, decoder=args.decoder, runner=args.runner,
        beam_options=list(args.beam_options), salt=args.salt, val_fraction=args.val_fraction,
        test_fraction=args.test_fraction, max_pixels=args.max_pixels, voi=voi, orient=args.orient,
        images_per_file=args.images_per_file, quiet=args.quiet, birads_map=args.birads_map)
    print(json.dumps(prepare.prepare(config), indent=2))
    return 0
