"""Where principle (a) puts the reference blob: the centre of mass of trained models, box by box.

The hypersensitive loss centres its reference blob on the centre of mass of `relu(O_DET)` over the
detector patch (the paper's principle (a)). This benchmark measures, for trained models on a split of a
PREP, where that centre of mass lies relative to each training-positive box (high-risk or malignant):

- `com_inside_box`: share of boxes whose centre of mass lies inside the box;
- `com_distance`: median distance of the centre of mass from the box centre, in box half-sizes;
- `patch_mass_inside_box`: median share of the patch's positive mass that lies inside the box;
- `patch_peak_inside_box`: share of boxes whose patch maximum lies inside the box.

The patch is the loss's (`--patch-size` heatmap px around the box centre, as `HypersensitiveLoss`
places it). A model trained with re-centring whose centre of mass often leaves the box has learned to
fire beside findings: the reference followed its responses there (README, detection quality).

Outputs: benchmarks/out/recenter_diagnosis.json and benchmarks/recenter-diagnosis.md.

Usage:
    python benchmarks/recenter_diagnosis.py --data PREP --split val --patch-size 12 \\
        --model hs=RUN1/model.keras --model no-recenter=RUN2/model.keras
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import common  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="PREP (from `hourglass prepare`)")
    parser.add_argument("--split", default="val", help="split to measure (default val)")
    parser.add_argument("--patch-size", type=int, default=12, help="detector patch, heatmap px (default 12)")
    parser.add_argument("--model", action="append", required=True, metavar="NAME=PATH",
                        help="a trained heatmap model (repeatable)")
    parser.add_argument("--out", default=os.path.join(HERE, "out"))
    return parser.parse_args(argv)


def box_statistics(heatmap, box, patch_size: int) -> dict | None:
    """Centre-of-mass statistics of one box's detector patch.

    Args:
        heatmap: float `[h, w]` model output (stride-`s` heatmap px).
        box: `(y0, x0, y1, x1)` in heatmap px.
        patch_size: side of the detector patch in heatmap px.

    Returns:
        A dict of the four measurements, or None when the patch has no positive mass.
    """
    import numpy as np

    heatmap = np.maximum(heatmap, 0.0)
    y0, x0, y1, x1 = (float(v) for v in box)
    cy, cx = (y0 + y1) / 2.0, (x0 + x1) / 2.0
    oy, ox = int(np.floor(cy)) - patch_size // 2, int(np.floor(cx)) - patch_size // 2
    ys, xs = np.arange(oy, oy + patch_size), np.arange(ox, ox + patch_size)
    ys, xs = ys[(ys >= 0) & (ys < heatmap.shape[0])], xs[(xs >= 0) & (xs < heatmap.shape[1])]
    patch = heatmap[np.ix_(ys, xs)]
    total = float(patch.sum())
    if total <= 1e-6:
        return None
    gy, gx = np.meshgrid(ys + 0.5, xs + 0.5, indexing="ij")
    my, mx = float((patch * gy).sum() / total), float((patch * gx).sum() / total)
    inside = (gy >= y0) & (gy <= y1) & (gx >= x0) & (gx <= x1)
    peak = np.unravel_index(int(patch.argmax()), patch.shape)
    return {"com_distance": float(np.hypot(my - cy, mx - cx) / max(0.5 * max(y1 - y0, x1 - x0), 0.5)),
            "com_inside_box": bool(y0 <= my <= y1 and x0 <= mx <= x1),
            "patch_mass_inside_box": float(patch[inside].sum() / total),
            "patch_peak_inside_box": bool(inside[peak])}


def measure(model, elements, patch_size: int, stride: int) -> dict:
    """Returns: the four measurements over every training-positive box of `elements`."""
    import numpy as np

    from keras_hourglass.contract import TRAINING_POSITIVE_LABELS

    rows = []
    for element in elements:
        output = model(element["image"], training=False)
        output = output[-1] if isinstance(output, (list, tuple)) else output
        heatmap = np.asarray(output)[0, ..., 0]
        for box, label in zip(element["boxes"].numpy()[0], element["box_labels"].numpy()[0]):
            if label.decode() in TRAINING_POSITIVE_LABELS:
                stats = box_statistics(heatmap, np.asarray(box) / stride, patch_size)
                if stats is not None:
                    rows.append(stats)
    if not rows:
        return {"boxes": 0}
    return {"boxes": len(rows),
            "com_inside_box": float(np.mean([r["com_inside_box"] for r in rows])),
            "com_distance": float(np.median([r["com_distance"] for r in rows])),
            "patch_mass_inside_box": float(np.median([r["patch_mass_inside_box"] for r in rows])),
            "patch_peak_inside_box": float(np.mean([r["patch_peak_inside_box"] for r in rows]))}


def main(argv=None) -> int:
    args = parse_args(argv)
    import keras

    import keras_hourglass.model  # noqa: F401  (registers the layers)
    from keras_hourglass.data import pipeline
    from keras_hourglass.model.hourglass import model_stride

    results = {}
    elements = list(pipeline.evaluation_dataset(args.data, split=args.split, input_multiple=64))
    for name, path in common.named_paths(args.model):
        model = keras.models.load_model(path, compile=False)
        results[name] = {"model": path, **measure(model, elements, args.patch_size, model_stride(model))}
        print(name, json.dumps(results[name]))
    os.makedirs(args.out, exist_ok=True)
    payload = {"data": os.path.abspath(args.data), "split": args.split, "patch_size": args.patch_size,
               "models": results}
    with open(os.path.join(args.out, "recenter_diagnosis.json"), "w") as handle:
        json.dump(payload, handle, indent=2)
    lines = [f"## Where principle (a) puts the reference (`benchmarks/recenter_diagnosis.py`)", "",
             f"Split `{args.split}`, detector patch {args.patch_size} heatmap px, training-positive boxes.", "",
             "| model | boxes | centre of mass inside the box | distance from box centre (median, box half-sizes) "
             "| patch mass inside the box (median) | patch peak inside the box |",
             "|---|---|---|---|---|---|"]
    for name, r in results.items():
        if r.get("boxes"):
            lines.append(f"| {name} | {r['boxes']} | {r['com_inside_box']:.0%} | {r['com_distance']:.2f} "
                         f"| {r['patch_mass_inside_box']:.0%} | {r['patch_peak_inside_box']:.0%} |")
    with open(os.path.join(HERE, "recenter-diagnosis.md"), "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
