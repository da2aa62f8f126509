"""Does post-processing move the detector? Trained models re-scored under other peak-finding settings.

For trained heatmap models on a split of a PREP (validation: this chooses nothing on test), the FROC
of each model under each `VARIANTS` entry, everything else as `hourglass evaluate` does it (breast mask,
100 marks per image, the step rule):

- the non-maximum-suppression window of `find_peaks` (3x3 is what evaluation and export use);
- the heatmap smoothed by a Gaussian (over breast cells only) before the peaks are found;
- test-time augmentation: the mean of the heatmaps of the image and of its vertical flip.

These back README's claims on post-processing (detection quality: tried and not adopted).
Models named `LOSS-sSEED` are also summarised per loss (mean over seeds and the per-seed values).

Outputs: benchmarks/out/postprocess_probe.json and benchmarks/postprocess-probe.md.

Usage:
    python benchmarks/postprocess_probe.py --data PREP --split val \\
        --model hypersensitive-s0=RUN1/model.keras --model l2-s0=RUN2/model.keras
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import common  # noqa: E402
FPI_POINTS = (1.0, 2.0, 4.8)
#: variant name -> (NMS window, Gaussian smoothing sigma in heatmap cells or 0, vertical-flip average)
VARIANTS: dict[str, tuple[int, float, bool]] = {
    "nms 3x3 (default)": (3, 0.0, False),
    "nms 5x5": (5, 0.0, False),
    "nms 7x7": (7, 0.0, False),
    "smoothed sigma 1, nms 3x3": (3, 1.0, False),
    "vertical-flip mean, nms 3x3": (3, 0.0, True),
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="PREP (from `hourglass prepare`)")
    parser.add_argument("--split", default="val", help="split to measure (default val)")
    parser.add_argument("--model", action="append", required=True, metavar="NAME=PATH",
                        help="a trained heatmap model (repeatable); NAME as LOSS-sSEED groups seeds")
    parser.add_argument("--max-images", type=int, default=None, help="measure only the first images")
    parser.add_argument("--out", default=os.path.join(HERE, "out"))
    return parser.parse_args(argv)


def smooth_finite(heatmap, sigma: float):
    """Gaussian smoothing over the finite cells only; non-finite cells stay as they are.

    Args:
        heatmap: float `[B, h, w, 1]`, -inf outside the breast.
        sigma: standard deviation in cells (> 0).

    Returns:
        float32 `[B, h, w, 1]`: each finite cell is the Gaussian-weighted mean of the finite cells
        around it.
    """
    import numpy as np
    import tensorflow as tf

    radius = int(np.ceil(3 * sigma))
    x = np.arange(-radius, radius + 1, dtype=np.float32)
    g = np.exp(-(x ** 2) / (2 * sigma ** 2))
    kernel = tf.constant((np.outer(g, g) / g.sum() ** 2)[:, :, None, None], tf.float32)
    heatmap = tf.cast(heatmap, tf.float32)
    finite = tf.math.is_finite(heatmap)
    values = tf.nn.conv2d(tf.where(finite, heatmap, tf.zeros_like(heatmap)), kernel, 1, "SAME")
    weights = tf.nn.conv2d(tf.cast(finite, tf.float32), kernel, 1, "SAME")
    return tf.where(finite, tf.math.divide_no_nan(values, weights), heatmap)


def peak_finder(pool_size: int, sigma: float):
    """Returns: a `find_peaks`-compatible function with this NMS window and smoothing."""
    from keras_hourglass.peaks import find_peaks

    def find(heatmap, max_marks, threshold, stride):
        if sigma:
            heatmap = smooth_finite(heatmap, sigma)
        return find_peaks(heatmap, max_marks=max_marks, threshold=threshold, stride=stride, pool_size=pool_size)

    return find


def flip_averaged(model):
    """Returns: a functional model whose heatmap is the mean of `model`'s on the image and on its vertical flip."""
    import keras

    image = keras.Input(shape=(None, None, model.inputs[0].shape[-1]))
    direct = model(image)
    flipped = keras.ops.flip(model(keras.ops.flip(image, axis=1)), axis=1)
    return keras.Model(image, (direct + flipped) / 2.0)


def measure_model(model_path: str, prep: str, split: str, max_images: int | None = None) -> dict[str, dict]:
    """Returns: variant -> {"sensitivity": {fpi: value}, "max_sensitivity", "max_fpi"} for one model."""
    import keras

    import keras_hourglass.model  # noqa: F401  (registers the serializables)
    from keras_hourglass.data import pipeline
    from keras_hourglass.evaluation.froc import fpi_key, froc
    from keras_hourglass.evaluation.predict import predict_marks
    from keras_hourglass.model import inference_model, model_input_multiple, model_stride

    model = inference_model(keras.models.load_model(model_path, compile=False))
    stride = model_stride(model)
    dataset = pipeline.evaluation_dataset(prep, split=split, input_multiple=model_input_multiple(model))
    elements = list(dataset if max_images is None else dataset.take(max_images))
    results = {}
    for name, (pool_size, sigma, flip) in VARIANTS.items():
        records = predict_marks(flip_averaged(model) if flip else model, elements, stride=stride,
                                peak_finder=peak_finder(pool_size, sigma))
        result = froc(records, fpi_points=FPI_POINTS, n_bootstrap=0)
        results[name] = {"sensitivity": {fpi_key(f): result.sensitivity_at_fpi[fpi_key(f)] for f in FPI_POINTS},
                         "max_sensitivity": result.max_sensitivity, "max_fpi": result.fpi_at_max_sensitivity}
    return results


def group_of(name: str) -> str | None:
    """Returns: LOSS of a `LOSS-sSEED` model name, else None."""
    match = re.fullmatch(r"(.+)-s\d+", name)
    return match.group(1) if match else None


def markdown(results: dict[str, dict], split: str) -> str:
    """The tables of README's claims.

    Args:
        results: model name -> `measure_model` output.
        split: what was measured.

    Returns:
        Markdown text.
    """
    import numpy as np

    key = "4.8"
    lines = [f"## Post-processing probe ({split} split)", "",
             "Sensitivity at 4.8 FPI and maximum sensitivity per loss: mean over seeds (per seed):", "",
             "| loss | " + " | ".join(VARIANTS) + " |", "|---|" + "---|" * len(VARIANTS)]
    groups: dict[str, list[str]] = {}
    for name in results:
        groups.setdefault(group_of(name) or name, []).append(name)
    for group, names in groups.items():
        cells = []
        for variant in VARIANTS:
            at = [results[n][variant]["sensitivity"][key] for n in names]
            top = [results[n][variant]["max_sensitivity"] for n in names]
            cells.append(f"{np.mean(at):.3f} ({'/'.join(f'{v:.2f}' for v in at)}); max {np.mean(top):.3f}")
        lines.append(f"| {group} | " + " | ".join(cells) + " |")
    lines += ["", "Per model (sensitivity at 1 / 2 / 4.8 FPI; max at FPI):", "",
              "| model | variant | @1 | @2 | @4.8 | max (FPI) |", "|---|---|---|---|---|---|"]
    for name, variants in results.items():
        for variant, r in variants.items():
            s = r["sensitivity"]
            lines.append(f"| {name} | {variant} | {s['1']:.3f} | {s['2']:.3f} | {s['4.8']:.3f} | "
                         f"{r['max_sensitivity']:.3f} ({r['max_fpi']:.1f}) |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    results: dict[str, Any] = {}
    for name, path in common.named_paths(args.model):
        results[name] = measure_model(path, args.data, args.split, args.max_images)
        print(name, json.dumps(results[name]), flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "postprocess_probe.json"), "w") as f:
        json.dump({"split": args.split, "data": args.data, "variants": VARIANTS, "results": results}, f, indent=1)
    with open(os.path.join(HERE, "postprocess-probe.md"), "w") as f:
        f.write(markdown(results, args.split))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
