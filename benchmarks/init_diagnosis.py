"""Why the detector did not learn: the untrained heatmap's scale, measured by memorising a few patches.

A detector that cannot fit 30 training patches cannot fit 400 images. This benchmark takes the phase-1
patches (with at least one training-positive box) of ONE training batch of a PREP, and fits the tiny
Hourglass to exactly those patches with the L2 loss (Gaussian targets, `--target-sigma`'s default at
the PREP's scale), once per heatmap-head initialisation:

- `glorot_uniform`: Keras' default for the 1x1 heatmap convolutions (the model before this benchmark);
- `zeros`: the head kernels start at zero, so the untrained heatmap is all zero (today's default).

Measured per checkpoint: the training loss, the loss of an all-zero heatmap on the same patches (the
"learned nothing" line), the mean heatmap on target pixels (target > 0.6) and the 99th percentile of the
heatmap off target (target < 0.01). Same patches, same seed, same optimizer for both.

Outputs: benchmarks/out/init_diagnosis.json, and the table in benchmarks/init-diagnosis.md (committed;
`benchmarks/run_all.py` appends it to BENCHMARKS.md).

Usage:
    python benchmarks/init_diagnosis.py --data PREP              # 2 x 600 steps, ~5 min on 2 cores
    python benchmarks/init_diagnosis.py --data PREP --steps 100  # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
INITIALIZERS = ("glorot_uniform", "zeros")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="PREP (from `hourglass prepare`)")
    parser.add_argument("--out", default=os.path.join(HERE, "out"))
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--checkpoints", type=int, default=6, help="measurements per run")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=5)
    return parser.parse_args(argv)


def memorisation_patches(prep: str, seed: int):
    """One phase-1 batch of 64 at the resolved default geometry, keeping patches with a positive box."""
    import tensorflow as tf

    from keras_hourglass.data import pipeline
    from keras_hourglass.training.config import TrainConfig
    from keras_hourglass.training.geometry import prep_long_side, resolve_geometry

    geometry = resolve_geometry(TrainConfig(), long_side=prep_long_side(prep), stride=4, input_multiple=32)
    dataset = pipeline.training_dataset(prep, phase="patch", batch_size=64, stride=4, input_multiple=32,
                                        patch_size=geometry.crop_size, seed=seed, augment=False)
    images, boxes = next(iter(dataset))
    keep = tf.reduce_any(boxes[:, :, 0] >= 0, axis=1)
    return images[keep], boxes[keep], geometry


def fit_once(initializer: str, images, boxes, target_sigma: float, args) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_hourglass.losses.gaussian_l2 import GaussianL2Loss
    from keras_hourglass.model import build_hourglass

    keras.utils.set_random_seed(args.seed)
    model = build_hourglass("tiny", intermediate_supervision=False, head_initializer=initializer)
    loss = GaussianL2Loss(sigma=target_sigma)
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate), loss=loss)
    untrained = model(images, training=False)
    target = loss.target(boxes, untrained).numpy()
    zero_loss = float(tf.reduce_mean(loss.call(boxes, tf.zeros_like(untrained))))

    def measure(step: int, train_loss: float | None) -> dict:
        out = model(images, training=False).numpy()[..., 0]
        return {"step": step, "loss": None if train_loss is None else round(train_loss, 3),
                "eval_loss": round(float(tf.reduce_mean(loss.call(boxes, tf.constant(out[..., None])))), 3),
                "heatmap_on_target": round(float(out[target > 0.6].mean()), 3),
                "heatmap_off_target_p99": round(float(np.percentile(out[target < 0.01], 99)), 3),
                "heatmap_abs_mean": round(float(np.abs(out).mean()), 3)}

    rows = [measure(0, None)]
    steps_per_epoch = max(1, int(np.ceil(len(images) / 8)))
    every = max(1, args.steps // args.checkpoints)
    done, start = 0, time.time()
    while done < args.steps:
        epochs = max(1, every // steps_per_epoch)
        history = model.fit(images, boxes, batch_size=8, epochs=epochs, verbose=0, shuffle=True)
        done += epochs * steps_per_epoch
        rows.append(measure(done, float(history.history["loss"][-1])))
        print(f"init_diagnosis: {initializer}: step {done}: {rows[-1]}", file=sys.stderr, flush=True)
    return {"initializer": initializer, "all_zero_loss": round(zero_loss, 3), "rows": rows,
            "seconds": round(time.time() - start, 1)}


def markdown(result: dict) -> str:
    lines = ["## Head initialisation: memorising one batch (`python benchmarks/init_diagnosis.py`)", "",
             f"{result['patches']} phase-1 patches of {result['crop_size']} px with a training-positive box "
             f"(PREP long side {result['long_side']}), tiny Hourglass, L2 to Gaussians of sigma "
             f"{result['target_sigma']} heatmap px, Adam {result['learning_rate']:g}, batch 8, seed "
             f"{result['seed']}. 'all-zero' = the loss of an all-zero heatmap on the same patches.", "",
             "| head init | step | loss on the patches | all-zero loss | heatmap on target | off-target p99 | mean abs heatmap |",
             "|---|---|---|---|---|---|---|"]
    for run in result["runs"]:
        for row in run["rows"]:
            lines.append(f"| {run['initializer']} | {row['step']} | {row['eval_loss']} | {run['all_zero_loss']} | "
                         f"{row['heatmap_on_target']} | {row['heatmap_off_target_p99']} | {row['heatmap_abs_mean']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    images, boxes, geometry = memorisation_patches(args.data, args.seed)
    result = {"patches": int(images.shape[0]), "crop_size": geometry.crop_size, "long_side": geometry.long_side,
              "target_sigma": geometry.target_sigma, "learning_rate": args.learning_rate, "seed": args.seed,
              "steps": args.steps,
              "runs": [fit_once(name, images, boxes, geometry.target_sigma, args) for name in INITIALIZERS]}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "init_diagnosis.json"), "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2)
    text = markdown(result)
    with open(os.path.join(HERE, "init-diagnosis.md"), "w", encoding="utf-8") as handle:
        handle.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
