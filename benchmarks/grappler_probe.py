"""Which grappler pass makes the whole-image phase differ from process to process?

Runs the behaviour probe's training (`quality.PROBE_FLAGS`: a few steps of both phases, one TensorFlow
thread) on the main quality table's data in separate processes, each with some of grappler's passes
switched off (`tf.config.optimizer.set_experimental_options`) before anything is built, and counts the
distinct final whole-image losses per setting. One value in every process: that setting is
reproducible. Nothing is scored; no split but train and the probe's val images is read.

Outputs: OUT/grappler-probe.json (every process's loss per setting), benchmarks/grappler-probe.md.

Usage:
    python benchmarks/grappler_probe.py --runs 4     # ~10-40 min on 2 cores, depending on load
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import quality  # noqa: E402
from common import run_step, thread_env  # noqa: E402

#: Setting name -> grappler options switched off (an empty dict: TensorFlow's defaults).
SETTINGS: dict[str, dict[str, bool]] = {
    "defaults": {},
    "dependency optimizer off": {"dependency_optimization": False},
    "arithmetic optimizer off": {"arithmetic_optimization": False},
    "loop optimizer off": {"loop_optimization": False},
    "meta-optimizer off": {"disable_meta_optimizer": True},
}


def child(options: dict[str, bool], prep: str, out: str) -> None:
    """In a fresh process: set the grappler options, train with the probe's flags, print the last loss."""
    import tensorflow as tf

    if options:
        tf.config.optimizer.set_experimental_options(options)
    from keras_hourglass.cli.main import main

    main(["train", "--data", prep, "--out", out, *quality.PROBE_FLAGS])
    with open(os.path.join(out, "history.csv"), newline="", encoding="utf-8") as handle:
        print(json.dumps({"heatmap_loss": float(list(csv.DictReader(handle))[-1]["heatmap_loss"])}))


def summarise(losses: dict[str, list[float]]) -> list[dict]:
    """Per setting: processes run, distinct losses, whether every process agreed.

    Args:
        losses: setting name -> each process's final whole-image loss.

    Returns:
        One row per setting, in the order given.
    """
    rows = []
    for name, values in losses.items():
        distinct = sorted(set(values))
        rows.append({"setting": name, "processes": len(values), "distinct": distinct,
                     "reproducible": len(values) > 1 and len(distinct) == 1})
    return rows


def markdown(rows: list[dict]) -> str:
    """Returns: the probe's table."""
    lines = ["## Grappler passes and run-to-run reproducibility (`python benchmarks/grappler_probe.py`)", "",
             "The behaviour probe's training (`quality.PROBE_FLAGS`, one TensorFlow thread) on the main "
             "quality data, one process per run; the final whole-image-phase loss of each process.", "",
             "| setting | processes | distinct losses | every process agrees |", "|---|---|---|---|"]
    for row in rows:
        values = ", ".join(f"{v:.7f}" for v in row["distinct"])
        lines.append(f"| {row['setting']} | {row['processes']} | {len(row['distinct'])}: {values} | "
                     f"{'yes' if row['reproducible'] else 'no'} |")
    lines += ["", "Agreement in a few processes is evidence, not proof: a setting that varies may agree by chance "
                  "in a few processes, so read a \"yes\" with its process count (`--runs` adds processes)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(HERE, "out", "grappler"))
    parser.add_argument("--runs", type=int, default=4, help="processes per setting")
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated subset of the settings")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        options, prep, out = json.loads(args.child)
        child(options, prep, out)
        return 0
    names = [n.strip() for n in args.settings.split(",") if n.strip()]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        raise SystemExit(f"grappler_probe: unknown setting(s) {', '.join(unknown)}; known: {', '.join(SETTINGS)}")
    if args.runs < 1:
        raise SystemExit("grappler_probe: --runs must be at least 1")
    prep = quality.prepare_data(os.path.join(HERE, "out", "quality"), quality.data_settings({}, False))
    os.makedirs(args.out, exist_ok=True)
    losses: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.runs):  # interleaved: a load change hits every setting alike
        for name in names:
            with tempfile.TemporaryDirectory(dir=args.out) as work:
                spec = json.dumps([SETTINGS[name], prep, os.path.join(work, "run")])
                stdout, _seconds = run_step([sys.executable, os.path.abspath(__file__), "--child", spec],
                                            os.path.join(args.out, "last-run.log"), 3600,
                                            f"grappler_probe ({name})", extra_env=thread_env(1))
                losses[name].append(json.loads(stdout.strip().splitlines()[-1])["heatmap_loss"])
                print(f"grappler_probe: {name}: {losses[name][-1]:.7f}", file=sys.stderr, flush=True)
    rows = summarise(losses)
    quality.write_json(os.path.join(args.out, "grappler-probe.json"), {"losses": losses, "rows": rows})
    text = markdown(rows)
    with open(os.path.join(HERE, "grappler-probe.md"), "w", encoding="utf-8") as handle:
        handle.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
