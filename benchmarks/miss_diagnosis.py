"""What a trained detector misses and where its false marks fall, finding type by finding type.

For trained heatmap models on a split of a PREP, at the operating point of `--fpi` false marks per
image (the step rule of `keras_hourglass.evaluation.froc`, on that split):

- per `(label, finding type)`: the number of boxes, the median and 90th percentile of the best heatmap
  value inside the box (for every label: a detector that does not respond to benign masses either has
  not learned masses, a detector that does has learned them and is told not to fire), and for
  malignant findings the share detected at the operating point;
- the false marks at the operating point by place: on a benign or high-risk box, at the image border
  (within `BORDER_PX` image px of the unpadded image's edge), at the breast edge (within
  `EDGE_CELLS` heatmap cells of the breast mask's boundary), or in breast tissue;
- the background percentiles: heatmap values inside the breast mask, outside every box.

These back README's claims on what keeps the detector from the targets (detection quality section).

Outputs: benchmarks/out/miss_diagnosis.json and benchmarks/miss-diagnosis.md.

Usage:
    python benchmarks/miss_diagnosis.py --data PREP --split val \\
        --model hs=RUN1/model.keras --model l2=RUN2/model.keras
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import common  # noqa: E402
BORDER_PX = 8
EDGE_CELLS = 2
PLACES = ("on_benign", "on_high_risk", "image_border", "breast_edge", "tissue")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="PREP (from `hourglass prepare`)")
    parser.add_argument("--split", default="val", help="split to measure (default val)")
    parser.add_argument("--fpi", type=float, default=4.8, help="operating point, false marks per image")
    parser.add_argument("--model", action="append", required=True, metavar="NAME=PATH",
                        help="a trained heatmap model (repeatable)")
    parser.add_argument("--max-images", type=int, default=None, help="measure only the first images")
    parser.add_argument("--out", default=os.path.join(HERE, "out"))
    return parser.parse_args(argv)


def best_in_boxes(heatmap, boxes, stride: int) -> list[float]:
    """The highest heatmap value over the cells each box touches.

    Args:
        heatmap: float `[h, w]` model output.
        boxes: `[N, 4]` `(y0, x0, y1, x1)` in image px.
        stride: image px per heatmap cell.

    Returns:
        N floats (NaN for a box that touches no cell).
    """
    import numpy as np

    out = []
    h, w = heatmap.shape
    for y0, x0, y1, x1 in np.asarray(boxes, dtype=float).reshape(-1, 4):
        r0, c0 = max(int(np.floor(y0 / stride)), 0), max(int(np.floor(x0 / stride)), 0)
        r1, c1 = min(int(np.ceil(y1 / stride)), h), min(int(np.ceil(x1 / stride)), w)
        out.append(float(heatmap[r0:r1, c0:c1].max()) if r1 > r0 and c1 > c0 else float("nan"))
    return out


def place_of_mark(y: float, x: float, boxes, labels: Sequence[str], mask, stride: int,
                  height: int, width: int) -> str:
    """Where a false mark lies (one of `PLACES`, checked in that order).

    Args:
        y, x: the mark, image px.
        boxes: `[N, 4]` boxes of the image, image px; labels: their N labels.
        mask: bool `[h, w]` breast mask at heatmap resolution.
        stride: image px per heatmap cell.
        height, width: the unpadded image size.

    Returns:
        The place name.
    """
    import numpy as np

    for (y0, x0, y1, x1), label in zip(np.asarray(boxes, dtype=float).reshape(-1, 4), labels):
        if y0 <= y <= y1 and x0 <= x <= x1 and label in ("benign", "high_risk"):
            return f"on_{label}"
    if min(y, x, height - y, width - x) < BORDER_PX:
        return "image_border"
    r, c = int(y // stride), int(x // stride)
    window = mask[max(r - EDGE_CELLS, 0):r + EDGE_CELLS + 1, max(c - EDGE_CELLS, 0):c + EDGE_CELLS + 1]
    if window.size and not window.all():
        return "breast_edge"
    return "tissue"


def _summary(values: list[float]) -> dict[str, Any]:
    import numpy as np

    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if not v.size:
        return {"n": 0, "median": None, "p90": None}
    return {"n": int(v.size), "median": round(float(np.median(v)), 4), "p90": round(float(np.percentile(v, 90)), 4)}


def measure_model(model_path: str, prep: str, split: str, fpi: float, max_images: int | None = None) -> dict:
    """All measurements of one model (see module docstring).

    Returns:
        A JSON-serialisable dict.
    """
    import keras
    import numpy as np

    import keras_hourglass.model  # noqa: F401  (registers the serializables)
    from keras_hourglass.breast import breast_mask
    from keras_hourglass.data import pipeline
    from keras_hourglass.evaluation.froc import froc, fpi_key, match_image
    from keras_hourglass.evaluation.predict import predict_marks
    from keras_hourglass.model import model_input_multiple, model_stride

    model = keras.models.load_model(model_path, compile=False)
    stride = model_stride(model)
    multiple = model_input_multiple(model)
    dataset = pipeline.evaluation_dataset(prep, split=split, input_multiple=multiple)
    records = predict_marks(model, dataset, stride=stride, max_images=max_images, breast_only=True)
    result = froc(records, fpi_points=(fpi,), n_bootstrap=0)
    threshold = result.operating_points[fpi_key(fpi)]["threshold"]
    threshold = float("inf") if threshold is None else threshold

    scores: dict[str, list[float]] = {}
    detected: dict[str, list[bool]] = {}
    places = {p: 0 for p in PLACES}
    background: list[np.ndarray] = []
    elements = dataset.take(max_images) if max_images else dataset
    for record, element in zip(records, elements):
        image = element["image"]
        heatmap = model(image, training=False)
        heatmap = np.asarray(heatmap[-1] if isinstance(heatmap, (list, tuple)) else heatmap)[0, ..., 0]
        mask = np.asarray(breast_mask(image, stride))[0, ..., 0][: heatmap.shape[0], : heatmap.shape[1]]
        types = list(record.finding_types) or ["?"] * len(record.labels)
        for label, kind, value in zip(record.labels, types, best_in_boxes(heatmap, record.boxes, stride)):
            scores.setdefault(f"{label}/{kind}", []).append(value)
        match = match_image(record)
        for n in np.flatnonzero(match.positive):
            kind = types[n]
            score = match.finding_score[n]
            detected.setdefault(kind, []).append(bool(np.isfinite(score) and score >= threshold))
        keep = match.false_positive & (record.marks[:, 2] >= threshold)
        for y, x, _ in record.marks[keep]:
            places[place_of_mark(y, x, record.boxes, record.labels, mask, stride, record.height,
                                 record.width)] += 1
        outside = mask.copy()
        for y0, x0, y1, x1 in record.boxes:
            outside[int(y0 // stride):int(np.ceil(y1 / stride)), int(x0 // stride):int(np.ceil(x1 / stride))] = False
        background.append(heatmap[outside])
    bg = np.concatenate(background) if background else np.zeros(1)
    total = max(sum(places.values()), 1)
    return {
        "model": model_path,
        "images": len(records),
        "threshold": None if not np.isfinite(threshold) else threshold,
        "sensitivity": result.sensitivity_at_fpi[fpi_key(fpi)],
        "detected_by_type": {k: f"{sum(v)}/{len(v)}" for k, v in sorted(detected.items())},
        "best_in_box": {k: _summary(v) for k, v in sorted(scores.items())},
        "false_marks_by_place": {k: round(v / total, 3) for k, v in places.items()},
        "false_marks": int(sum(places.values())),
        "background_p99": round(float(np.percentile(bg, 99)), 4),
        "background_p99_9": round(float(np.percentile(bg, 99.9)), 4),
    }


def markdown(results: dict[str, dict], split: str, fpi: float) -> str:
    """The tables of README's claims.

    Args:
        results: model name -> `measure_model` output.
        split, fpi: what was measured.

    Returns:
        Markdown text.
    """
    lines = [f"## Miss diagnosis ({split} split, operating point {fpi:g} FPI)", "",
             "Models: " + "; ".join(f"{name} = `{r['model']}`" for name, r in results.items()), "",
             "| model | sens | malignant detected by type | false marks: " + " / ".join(PLACES)
             + " | background p99 / p99.9 |", "|---|---|---|---|---|"]
    for name, r in results.items():
        places = " / ".join(f"{r['false_marks_by_place'][p]:.0%}" for p in PLACES)
        found = ", ".join(f"{k} {v}" for k, v in r["detected_by_type"].items())
        lines.append(f"| {name} | {r['sensitivity']:.3f} | {found} | {places} ({r['false_marks']}) | "
                     f"{r['background_p99']:.3f} / {r['background_p99_9']:.3f} |")
    lines += ["", "Best heatmap value inside the box, median (90th percentile), n:", "",
              "| label/type | " + " | ".join(results) + " |", "|---|" + "---|" * len(results)]
    keys = sorted({k for r in results.values() for k in r["best_in_box"]})
    for key in keys:
        cells = []
        for r in results.values():
            s = r["best_in_box"].get(key)
            cells.append("-" if not s or s["median"] is None else f"{s['median']:.3f} ({s['p90']:.3f}), {s['n']}")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    results = {}
    for name, path in common.named_paths(args.model):
        results[name] = measure_model(path, args.data, args.split, args.fpi, args.max_images)
        print(name, json.dumps(results[name]))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "miss_diagnosis.json"), "w") as f:
        json.dump({"split": args.split, "fpi": args.fpi, "data": args.data, "results": results}, f, indent=1)
    with open(os.path.join(HERE, "miss-diagnosis.md"), "w") as f:
        f.write(markdown(results, args.split, args.fpi))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
