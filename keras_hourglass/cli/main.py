"""Entry point of the `hourglass` console script.

Each subcommand is a module (table `COMMANDS`) with
`register(subparsers) -> argparse.ArgumentParser` (which sets
`func=run` as a default) and must import TensorFlow only inside `run`,
so `hourglass --help` stays fast. The modules of `tuning/`, `export/` and
`serving/` are named here as strings and imported on demand, so the
library itself never imports those packages. `hourglass train --stage 2 ...`
is spelled out as `hourglass train-stage2 ...` (`train_stage2.stage_two_alias`).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from keras_hourglass.cli import argtypes
from keras_hourglass.errors import InputError, escape_controls
from keras_hourglass.version import __version__

# Output directories each subcommand creates (checked before it runs: a file in the way is exit 2).
OUTPUT_FLAGS = {
    "synth": ("--out",),
    "prepare": ("--out",),
    "train": ("--out",),
    "train-stage2": ("--out",),
    "evaluate": ("--out",),
    "proposals": ("--out",),
    "tune": ("--out",),
    "export": ("--base-path",),
    "predict": ("--overlay-dir", "--dicom-sr", "--dicom-pr"),
}


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (exit 2), like every other error of the CLI;
    the usage stays available through ``--help``."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {escape_controls(message)} (see {self.prog} --help)\n")


# Order shown in --help.
COMMANDS = {
    "synth": "keras_hourglass.cli.synth",
    "prepare": "keras_hourglass.cli.prepare",
    "train": "keras_hourglass.cli.train",
    "evaluate": "keras_hourglass.cli.evaluate",
    "proposals": "keras_hourglass.cli.proposals",
    "train-stage2": "keras_hourglass.cli.train_stage2",
    "tune": "tuning.cli",
    "export": "export.cli",
    "predict": "serving.cli",
}


def build_parser() -> argparse.ArgumentParser:
    """Returns: the top-level parser with every importable subcommand."""
    parser = OneLineParser(
        prog="hourglass",
        description="Train, evaluate, tune and serve a hypersensitive Hourglass lesion detector.",
    )
    parser.add_argument("--version", action="version", version=f"keras-hourglass {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module_path in COMMANDS.values():
        try:
            module = importlib.import_module(module_path)
        except ModuleNotFoundError as err:
            if err.name != module_path:
                raise
            continue  # subcommand not installed in this checkout
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the CLI. Returns: the process exit code (0 ok, 2 bad input, 1 failure)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from keras_hourglass.cli.train_stage2 import stage_two_alias

    parser = build_parser()
    args = parser.parse_args(stage_two_alias(sys.argv[1:] if argv is None else list(argv)))
    try:
        for flag in OUTPUT_FLAGS.get(args.command, ()):
            value = getattr(args, flag[2:].replace("-", "_"), None)
            if value is not None:
                argtypes.check_output_dir(value, flag)
        result = args.func(args)
    except InputError as err:
        print(f"hourglass {args.command}: error: {escape_controls(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hourglass {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
