"""`hourglass synth`: write synthetic screening mammograms (DICOM + canonical CSV + phi.json)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from keras_hourglass.cli import argtypes

EPILOG = """examples:
  # 200 images for the demo, with a richer case mix than screening
  hourglass synth --out data/synth --images 200 --seed 7 --malignant-rate 0.25

  # screening-like prevalence (about 1 % malignant), larger images
  hourglass synth --out data/screening --images 1000 --height 1280 --width 1024

  # stress: loose, offset boxes (principle a), wide lesion-size spread (b), subtle findings
  hourglass synth --out data/stress --images 400 --box-looseness 4 --box-offset 0.45 --size-spread 2 --contrast 0.5

  # then
  hourglass prepare --annotations data/synth/annotations.csv --images-root data/synth --out data/prepared

output: DIR/images/pNNNNN/sK/<L|R>_<CC|MLO>.dcm, DIR/annotations.csv (canonical format, boxes in
original DICOM pixels), DIR/phi.json (the fake PHI written, for PHI-leak scans). The JSON summary
goes to stdout. Same --seed, same files.
"""


MAX_SIDE = 8192  # a full-field mammogram is at most ~4096 x 3328


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Adds `synth` to the CLI. Args: subparsers: from `add_subparsers`. Returns: the parser."""
    from keras_hourglass.data.synthetic.dataset import DEFAULT_HEIGHT, DEFAULT_WIDTH

    parser = subparsers.add_parser(
        "synth", help="write synthetic screening mammograms (DICOM + annotations.csv)",
        description="Synthesise screening mammograms as real DICOM files (MG, For Presentation, MONOCHROME1/2, "
                    "windows / VOI LUT, some RLE or JPEG 2000 compressed, fake PHI) with masses, calcification "
                    "clusters, architectural distortions and asymmetries, plus the canonical annotation CSV.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--images", required=True, type=argtypes.positive, metavar="N", help="number of images")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--height", type=argtypes.positive, default=DEFAULT_HEIGHT, metavar="H",
                        help=f"image rows (default {DEFAULT_HEIGHT})")
    parser.add_argument("--width", type=argtypes.positive, default=DEFAULT_WIDTH, metavar="W",
                        help=f"image columns (default {DEFAULT_WIDTH})")
    parser.add_argument("--malignant-rate", type=argtypes.rate, default=0.01, metavar="R",
                        help="fraction of images with a malignant finding (default 0.01)")
    parser.add_argument("--high-risk-rate", type=argtypes.rate, default=0.01, metavar="R",
                        help="fraction with a high-risk finding (default 0.01)")
    parser.add_argument("--benign-rate", type=argtypes.rate, default=0.05, metavar="R",
                        help="fraction with a benign finding (default 0.05); normal = the rest")
    stress = parser.add_argument_group("stress knobs (what each principle of the loss is meant to absorb)")
    stress.add_argument("--box-looseness", type=argtypes.number, default=2.5, metavar="F",
                        help="annotation boxes are the lesion enlarged up to F times (default 2.5; 1-10)")
    stress.add_argument("--box-offset", type=argtypes.number, default=0.2, metavar="F",
                        help="box centres move up to F of the box side off the lesion (default 0.2; 0-0.5)")
    stress.add_argument("--size-spread", type=argtypes.number, default=1.0, metavar="F",
                        help="lesions scaled by a log-uniform factor in [1/F, F] (default 1; 1-4)")
    stress.add_argument("--contrast", type=argtypes.number, default=1.0, metavar="F",
                        help="finding contrast multiplier: below 1 = subtler findings (default 1; 0.05-4)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)
    return parser


STRESS_FLAGS = ("box_looseness", "box_offset", "size_spread", "contrast")
"""`StressSettings` fields, each set by the flag of the same name."""


def run(args: argparse.Namespace) -> int:
    """Runs `hourglass synth`. Returns: 0. Raises: InputError on bad arguments."""
    from keras_hourglass.data.synthetic import SynthConfig, generate_dataset
    from keras_hourglass.data.synthetic.findings import StressSettings
    from keras_hourglass.errors import InputError

    stress = StressSettings(box_looseness=args.box_looseness, box_offset=args.box_offset,
                            size_spread=args.size_spread, contrast=args.contrast)
    config = SynthConfig(num_images=args.images, seed=args.seed, height=args.height, width=args.width,
                         malignant_rate=args.malignant_rate, high_risk_rate=args.high_risk_rate,
                         benign_rate=args.benign_rate, stress=stress)
    for flag, value in (("--height", args.height), ("--width", args.width)):
        if value > MAX_SIDE:
            raise InputError(flag, f"{value} is too large (at most {MAX_SIDE} pixels)")
    try:
        config.validate()
    except ValueError as err:  # the library names its arguments; the CLI names the flag
        message = str(err)
        name = message.split(" ", 1)[0]
        flag = f"--{name.replace('_', '-')}" if name in STRESS_FLAGS else None
        raise InputError(flag, message.split(" ", 1)[1] if flag else message) from None
    try:
        summary = generate_dataset(args.out, config, progress=not args.no_progress and sys.stderr.isatty())
    except OSError as err:
        raise InputError(args.out, f"cannot write the dataset: {err.strerror or err}") from None
    print(json.dumps(summary, indent=2))
    return 0
