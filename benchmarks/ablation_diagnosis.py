"""Why does L2 beat the hypersensitive loss in `benchmarks/ablation.py`? Measurements on the trained models.

Reads the models `benchmarks/ablation.py` trained (benchmarks/out/ablation/runs/<variant>/model.keras) and,
on the same held-out test split, measures per model:

- the heatmap on background pixels (outside every box): median, 95th / 99th percentile;
- at each malignant box: the maximum of the heatmap inside the box;
- contrast: that in-box peak divided by the image's highest peak (find_peaks) outside every box, and the
  fraction of malignant boxes whose peak beats all background peaks of their image;
- per image: the number of peaks (find_peaks) at or above 0.5 x the image's maximum;
- the two loss terms of HypersensitiveLoss(omega=0.01, the ablation's patch and sigmas) on the test images:
  mean per image of L_DET and of omega * L_BG, i.e. whether the background term matters at all.

Optionally (`--experiment`), ONE extra training with exactly the ablation's flags plus `--omega X`
(default 0.1), evaluated by `hourglass evaluate` like every ablation variant, to test whether a heavier
background term closes the gap to L2.

Outputs: benchmarks/out/ablation_diagnosis.json and .md (and ablation_diagnosis/ for the experiment).

Usage:
    python benchmarks/ablation_diagnosis.py                       # measurements only (~1-2 min)
    python benchmarks/ablation_diagnosis.py --experiment --omega 0.1    # + one training (~4 min on 2 cores)
    python benchmarks/ablation_diagnosis.py --out benchmarks/out/ablation_3x --variants l2,hypersensitive

"FPI to hit" is approximate: for each malignant box, the background peaks (outside every box) of all test
images scoring at least its in-box maximum, divided by the number of images; `hourglass evaluate`'s FROC
rules (DESIGN.md "Label semantics") remain the reference for sensitivities.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import ablation  # noqa: E402  (the flags, data and runner of the ablation itself)

from keras_hourglass.contract import TRAINING_POSITIVE_LABELS  # noqa: E402 (what the loss sees as positives)

DEFAULT_VARIANTS = "l2,hypersensitive,omega-1,no-top-k,no-recenter,one-sigma"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(HERE, "out"))
    parser.add_argument("--variants", default=DEFAULT_VARIANTS)
    parser.add_argument("--experiment", action="store_true", help="train + evaluate hypersensitive with --omega")
    parser.add_argument("--omega", type=float, default=0.1, help="omega of the experiment")
    parser.add_argument("--experiment-only", action="store_true", help="skip the measurements")
    parser.add_argument("--peak-fraction", type=float, default=0.5)
    return parser.parse_args(argv)


def experiment(out: str, omega: float) -> dict:
    """Hypersensitive with the ablation's exact flags plus `--omega`, evaluated on the same test split."""
    args = ablation.parse_args(["--out", out])
    prep = ablation.prepare_data(args, out)  # reuses the ablation's data (same settings)
    name = f"omega-{omega:g}"
    base = os.path.join(out, "ablation_diagnosis")
    run_dir, eval_dir, logs = (os.path.join(base, d, name) for d in ("runs", "eval", "logs"))
    os.makedirs(logs, exist_ok=True)
    record_path = os.path.join(base, f"{name}.record.json")
    flags = ablation.train_flags(args, "hypersensitive") + ["--omega", str(omega)]
    if os.path.exists(record_path):
        record = ablation.read_json(record_path)
        if record.get("train_flags") == flags and record.get("data_hash") == ablation.data_hash(prep):
            return record
    timeout = args.timeout_minutes * 60
    _, train_seconds = ablation.run([*ablation.hourglass(), "train", "--data", prep, "--out", run_dir, *flags],
                                    os.path.join(logs, "train.log"), timeout)
    _, eval_seconds = ablation.run([*ablation.hourglass(), "evaluate", "--model", os.path.join(run_dir, "model.keras"),
                                    "--data", prep, "--split", "test", "--out", eval_dir, "--bootstrap",
                                    str(args.bootstrap), "--seed", str(args.seed), "--overlays", "2", "--quiet"],
                                   os.path.join(logs, "evaluate.log"), timeout)
    record = {"variant": name, "train_flags": flags, "data_hash": ablation.data_hash(prep),
              "model": os.path.join(run_dir, "model.keras"),
              "train_seconds": round(train_seconds, 1), "eval_seconds": round(eval_seconds, 1),
              "froc": ablation.read_json(os.path.join(eval_dir, "froc.json"))}
    with open(record_path, "w") as handle:
        json.dump(record, handle, indent=2)
    return record


def box_mask(boxes: "np.ndarray", h: int, w: int) -> "np.ndarray":
    """True on heatmap pixels overlapping any box (`boxes` in heatmap pixels, pixel i spans [i, i+1))."""
    import numpy as np

    mask = np.zeros((h, w), bool)
    for y0, x0, y1, x1 in boxes:
        r0, r1 = max(int(np.floor(y0)), 0), min(int(np.ceil(y1)), h)
        c0, c1 = max(int(np.floor(x0)), 0), min(int(np.ceil(x1)), w)
        mask[r0:r1, c0:c1] = True
    return mask


def measure_model(model_path: str, prep: str, loss_kwargs: dict, peak_fraction: float) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    import keras_hourglass  # noqa: F401  (registers the custom objects)
    from keras_hourglass.data.pipeline import evaluation_dataset
    from keras_hourglass.losses.hypersensitive import HypersensitiveLoss
    from keras_hourglass.model import inference_model, model_input_multiple, model_stride
    from keras_hourglass.peaks import find_peaks

    model = inference_model(keras.saving.load_model(model_path, compile=False))
    stride, multiple = model_stride(model), model_input_multiple(model)
    loss = HypersensitiveLoss(**loss_kwargs)

    @tf.function(reduce_retracing=True)
    def heat(image):
        out = model(image, training=False)
        return out[-1] if isinstance(out, (list, tuple)) else out

    bg_values, box_peaks, contrasts, beats, strong_peaks, image_max = [], [], [], [], [], []
    bg_peak_scores, l_det, l_bg, l_det_pos, l_bg_pos, l_det_zero_pos = [], [], [], [], [], []
    num_images = 0
    for element in evaluation_dataset(prep, split="test", input_multiple=multiple):
        num_images += 1
        hm = heat(tf.cast(element["image"], tf.float32))
        height, width = int(element["height"][0]), int(element["width"][0])
        h, w = -(-height // stride), -(-width // stride)
        hm = hm[:, :h, :w, :]
        arr = hm.numpy()[0, :, :, 0].astype(np.float64)
        boxes = element["boxes"].numpy()[0].reshape(-1, 4) / stride
        labels = [v.decode() for v in element["box_labels"].numpy()[0].reshape(-1)]
        inside = box_mask(boxes, h, w)
        bg_values.append(arr[~inside])
        image_max.append(arr.max())
        marks, count = find_peaks(hm, max_marks=200, threshold=float("-inf"), stride=1)
        marks = marks.numpy()[0][: int(count.numpy()[0])]
        # peaks on background pixels (outside every box, any label): the image's candidate false positives
        py = np.clip(marks[:, 0].astype(int), 0, h - 1)
        px = np.clip(marks[:, 1].astype(int), 0, w - 1)
        bg_peaks = marks[~inside[py, px], 2]
        bg_peak_scores.append(bg_peaks)
        strong_peaks.append(int(np.sum(marks[:, 2] >= peak_fraction * arr.max())))
        top_bg = bg_peaks.max() if bg_peaks.size else float("nan")
        for (y0, x0, y1, x1), label in zip(boxes, labels):
            if label != "malignant":
                continue
            one = box_mask(np.array([[y0, x0, y1, x1]]), h, w)
            peak = arr[one].max() if one.any() else float("nan")
            box_peaks.append(peak)
            contrasts.append(peak / top_bg if top_bg > 0 else float("nan"))
            beats.append(bool(peak > top_bg) if bg_peaks.size else True)
        pos = np.array([b for b, l in zip(boxes, labels) if l in TRAINING_POSITIVE_LABELS], np.float32).reshape(-1, 4)
        y_true = np.full((1, max(len(pos), 1), 4), -1.0, np.float32)
        y_true[0, : len(pos)] = pos
        terms = loss.components(y_true, hm)
        ld, lb = float(terms["l_det"][0]), float(terms["l_bg"][0])
        l_det.append(ld)
        l_bg.append(lb)
        if len(pos):
            l_det_pos.append(ld)
            l_bg_pos.append(lb)
            # the trivial solution: L_DET of an all-zero heatmap on the same boxes
            l_det_zero_pos.append(float(loss.components(y_true, tf.zeros_like(hm))["l_det"][0]))

    bg = np.concatenate(bg_values)
    all_bg_peaks = np.concatenate(bg_peak_scores)
    box_peaks = np.array(box_peaks)
    # FPI at which each malignant finding would be hit: background peaks (all test images) scoring >= its peak
    fpi_needed = np.array([np.sum(all_bg_peaks >= p) / num_images for p in box_peaks])
    omega = loss_kwargs["omega"]
    q = lambda a, p: float(np.nanpercentile(a, p))  # noqa: E731
    return {
        "images": num_images, "malignant_boxes": int(box_peaks.size),
        "heatmap_pixels_per_image": int(bg.size / num_images),
        "stride": int(stride),
        "bg_median": q(bg, 50), "bg_p95": q(bg, 95), "bg_p99": q(bg, 99), "bg_mean": float(bg.mean()),
        "image_max_median": q(np.array(image_max), 50),
        "box_peak_median": q(box_peaks, 50), "box_peak_p25": q(box_peaks, 25), "box_peak_p75": q(box_peaks, 75),
        "bg_peaks_per_image": float(all_bg_peaks.size / num_images),
        "bg_peak_p90": q(all_bg_peaks, 90),
        "bg_peak_max_median": q(np.array([b.max() for b in bg_peak_scores if b.size]), 50),
        "contrast_median": q(np.array(contrasts), 50),
        "box_beats_all_bg_peaks": float(np.mean(beats)),
        "fpi_needed_median": q(fpi_needed, 50),
        "strong_peaks_per_image_median": q(np.array(strong_peaks), 50),
        "strong_peaks_per_image_mean": float(np.mean(strong_peaks)),
        "l_det_mean": float(np.mean(l_det)), "l_bg_mean": float(np.mean(l_bg)),
        "omega_l_bg_mean": float(omega * np.mean(l_bg)),
        "l_det_mean_pos_images": float(np.mean(l_det_pos)) if l_det_pos else None,
        "omega_l_bg_mean_pos_images": float(omega * np.mean(l_bg_pos)) if l_bg_pos else None,
        "l_det_zero_heatmap_mean_pos_images": float(np.mean(l_det_zero_pos)) if l_det_zero_pos else None,
        "bg_p95_over_box_peak": q(bg, 95) / q(box_peaks, 50),
    }


COLUMNS = [  # key, header, format
    ("bg_median", "bg median", ".3f"), ("bg_p95", "bg p95", ".3f"), ("bg_p99", "bg p99", ".3f"),
    ("bg_mean", "bg mean", ".3f"),
    ("box_peak_median", "malig. box peak (median)", ".3f"), ("bg_peak_max_median", "top bg peak/img (median)", ".3f"),
    ("contrast_median", "box peak / top bg peak (median)", ".2f"),
    ("box_beats_all_bg_peaks", "box beats all bg peaks", ".2f"),
    ("fpi_needed_median", "FPI to hit (median)", ".1f"),
    ("strong_peaks_per_image_mean", "peaks >= 0.5 max / img", ".1f"),
    ("bg_p95_over_box_peak", "bg p95 / box peak", ".2f"),
    ("l_det_mean_pos_images", "L_DET / pos. img", ".2f"),
    ("l_det_zero_heatmap_mean_pos_images", "L_DET if heatmap = 0", ".2f"),
    ("omega_l_bg_mean_pos_images", "0.01 L_BG / pos. img", ".3f"), ("l_bg_mean", "L_BG / img", ".1f"),
]


def markdown(measures: dict, experiment_record: dict | None, ablation_json: dict | None) -> str:
    lines = ["| model | " + " | ".join(h for _, h, _ in COLUMNS) + " | sens@4.8 (ablation) |",
             "|---" * (len(COLUMNS) + 2) + "|"]
    for name, m in measures.items():
        sens = None
        if ablation_json and name in ablation_json.get("variants", {}):
            sens = ablation_json["variants"][name]["sensitivity_at_fpi"].get("4.8")
        elif experiment_record and name == experiment_record["variant"]:
            sens = experiment_record["froc"]["sensitivity_at_fpi"].get("4.8")
        cells = [format(m[k], f) if m.get(k) is not None else "-" for k, _, f in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {'-' if sens is None else format(sens, '.3f')} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = os.path.abspath(args.out)
    started = time.time()
    record = experiment(out, args.omega) if args.experiment else None
    if record:
        print(json.dumps({k: record["froc"].get(k) for k in ("sensitivity_at_fpi", "ci95", "max_sensitivity")}))
    if args.experiment_only:
        return 0
    abl_args = ablation.parse_args(["--out", out])
    prep = ablation.prepare_data(abl_args, out)
    # The loss exactly as the full-loss run resolved it (heatmap pixels at this data's scale).
    run_config = os.path.join(out, "ablation", "runs", "hypersensitive", "config.json")
    resolved = ablation.read_json(run_config)["loss"] if os.path.exists(run_config) else {}
    loss_kwargs = {"omega": 0.01, "top_k": 3, **{k: resolved[k] for k in ("patch_size", "mask_size", "sigmas")
                                                 if k in resolved}}
    models = {v: os.path.join(out, "ablation", "runs", v, "model.keras") for v in args.variants.split(",")}
    exp_name = f"omega-{args.omega:g}"
    exp_record_path = os.path.join(out, "ablation_diagnosis", f"{exp_name}.record.json")
    if record is None and os.path.exists(exp_record_path):
        record = ablation.read_json(exp_record_path)
    if record:
        models[record["variant"]] = record["model"]
    measures = {}
    for name, path in models.items():
        if not os.path.exists(path):
            print(f"ablation_diagnosis: {name}: no model at {path}, skipped", file=sys.stderr)
            continue
        print(f"ablation_diagnosis: measuring {name}", file=sys.stderr, flush=True)
        measures[name] = measure_model(path, prep, loss_kwargs, args.peak_fraction)
    ablation_path = os.path.join(out, "ablation.json")
    ablation_json = ablation.read_json(ablation_path) if os.path.exists(ablation_path) else None
    command = "python benchmarks/ablation_diagnosis.py " + " ".join(argv if argv is not None else sys.argv[1:])
    payload = {"command": command,
               "loss_for_components": loss_kwargs, "peak_fraction": args.peak_fraction, "measures": measures,
               "experiment": ({"variant": record["variant"], "train_flags": record["train_flags"],
                               "train_seconds": record["train_seconds"],
                               "sensitivity_at_fpi": record["froc"]["sensitivity_at_fpi"],
                               "ci95": record["froc"].get("ci95"),
                               "max_sensitivity": record["froc"].get("max_sensitivity"),
                               "fpi_at_max_sensitivity": record["froc"].get("fpi_at_max_sensitivity")}
                              if record else None),
               "wall_seconds": round(time.time() - started, 1)}
    with open(os.path.join(out, "ablation_diagnosis.json"), "w") as handle:
        json.dump(payload, handle, indent=2)
    text = ("Ablation diagnosis: heatmaps of the ablation's trained models on its test split (heatmap pixels; "
            "bg = outside every box; peaks = find_peaks local maxima; loss terms = HypersensitiveLoss"
            f"({loss_kwargs}) components per test image, positives = malignant + high_risk boxes).\n\n"
            f"Command: `{payload['command'].strip()}`\n\n" + markdown(measures, record, ablation_json) + "\n")
    if record:
        sens = record["froc"]["sensitivity_at_fpi"]
        ci = (record["froc"].get("ci95") or {}).get("4.8") or [float("nan")] * 2
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        text += (f"\nExperiment {record['variant']} (the ablation's hypersensitive flags + `--omega {args.omega:g}`): "
                 f"sens@1/2/4.8 FPI = {fmt(sens.get('1'))}, {fmt(sens.get('2'))}, {fmt(sens.get('4.8'))} "
                 f"(4.8 FPI 95% CI [{ci[0]:.3f}, {ci[1]:.3f}]), "
                 f"max {fmt(record['froc'].get('max_sensitivity'))}.\n")
    with open(os.path.join(out, "ablation_diagnosis.md"), "w") as handle:
        handle.write(text)
    print(text)
    return 0

if __name__ == "__main__":
    sys.exit(main())
