"""Input pipeline throughput against what a training step consumes.

Synthesises mammograms (`keras_hourglass.data.synthetic`), prepares them (`prepare()`, 2 workers),
then for each phase of `keras_hourglass.data.pipeline.training_dataset` (``patch``: 256-px crops,
batch 4; ``full``: whole images padded to the input multiple, batch 2):

- pipeline images/s: batches drawn from the dataset (after warm-up), nothing else running;
- step images/s: `train_on_batch` of the tiny preset (2 stacks, intermediate supervision, one
  HypersensitiveLoss per output, jit_compile "auto" as `hourglass train` compiles it) on a batch of
  the same shape taken from that dataset.

Figure: pipeline images/s / step images/s, target >= 5 (the pipeline must never be the bottleneck).

Usage: .venv/bin/python benchmarks/bench_pipeline.py [--quick]
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import common

CMD = ".venv/bin/python benchmarks/bench_pipeline.py"


def main(argv=None) -> dict:
    args = common.parser(__doc__.splitlines()[0], "pipeline").parse_args(argv)
    started = time.perf_counter()
    import keras
    import numpy as np
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    from keras_hourglass.data.pipeline import training_dataset
    from keras_hourglass.data.prepare import PrepareConfig, prepare
    from keras_hourglass.data.synthetic import SynthConfig, generate_dataset
    from keras_hourglass.losses import HypersensitiveLoss
    from keras_hourglass.model import build_hourglass

    if args.quick:
        images, height, width, size, batches, repeats = 16, 640, 512, 256, 10, 3
    else:
        images, height, width, size, batches, repeats = 16, 1280, 1024, 768, 20, 5
    work = tempfile.mkdtemp(prefix="bench-pipeline-")
    figures, details = [], {"images": images, "original": [height, width], "size": size, "phases": {}}
    try:
        synth, prep = os.path.join(work, "synth"), os.path.join(work, "prep")
        generate_dataset(synth, SynthConfig(num_images=images, seed=11, height=height, width=width,
                                            malignant_rate=0.3, high_risk_rate=0.1, benign_rate=0.2))
        prepare(PrepareConfig(annotations=[os.path.join(synth, "annotations.csv")], images_root=synth, out=prep,
                              size=size, workers=2, salt="bench-pipeline", val_fraction=0.0, test_fraction=0.0,
                              quiet=True))
        details["prepare_done_s"] = round(time.perf_counter() - started, 1)
        keras.utils.set_random_seed(0)
        model = build_hourglass("tiny")
        outputs = len(model.outputs)
        model.compile(optimizer="adam", loss=[HypersensitiveLoss() for _ in range(outputs)], jit_compile="auto")
        for phase, batch in (("patch", 4), ("full", 2)):
            dataset = training_dataset(prep, split="train", phase=phase, batch_size=batch, stride=4,
                                       input_multiple=32, patch_size=256, seed=0)
            iterator = iter(dataset)
            for _ in range(3):
                image, boxes = next(iterator)
            start = time.perf_counter()
            for _ in range(batches):
                image, boxes = next(iterator)
            pipeline_s = (time.perf_counter() - start) / batches
            x, y = image.numpy(), [boxes.numpy()] * outputs
            step = common.timed(lambda: model.train_on_batch(x, y), repeats, warmup=2)
            pipe_ips, step_ips = batch / pipeline_s, batch / step["median_s"]
            details["phases"][phase] = {"batch": batch, "shape": list(x.shape), "pipeline_s_per_batch": pipeline_s,
                                        "pipeline_images_per_s": pipe_ips, "step": step,
                                        "step_images_per_s": step_ips}
            print(f"  {phase} {list(x.shape)}: pipeline {pipe_ips:.1f} img/s, step {step_ips:.1f} img/s", flush=True)
            figures.append(common.figure(
                f"tf.data / train step, {phase} phase, batch {batch} of {x.shape[1]}x{x.shape[2]}",
                pipe_ips / step_ips, target=5.0, op=">=",
                numerator=f"pipeline {pipe_ips:.1f} img/s ({common.ms(pipeline_s)}/batch)",
                denominator=f"tiny train step {step_ips:.1f} img/s ({common.ms(step['median_s'])}/step)",
                command=CMD))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return common.write(args.out, "pipeline", figures, details, args.quick, started)


if __name__ == "__main__":
    main()
