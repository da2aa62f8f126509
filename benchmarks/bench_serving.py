"""Serving overhead: the exported serving_default signature over the raw Keras model call.

Builds the tiny Hourglass, saves it as RUN/model.keras, exports it with the export/ API
(`export.saved_model.export_keras_model`, verification off) into a temporary base path, loads the
version with `tf.saved_model.load` and times, on the same image (batch 1, H x W = size x 0.8 size
rounded to the input multiple), interleaved:

- ``signature``: `serving_default(image=...)` (padding, heatmap, peak finding, marks);
- ``raw``: the Keras model's forward pass in a `tf.function` (heatmap only);
- ``eager``: `model(image, training=False)` (reported only).

Figure: signature / raw at 512 and 1536 px, target <= 1.10.

Usage: .venv/bin/python benchmarks/bench_serving.py [--quick]
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import common

CMD = ".venv/bin/python benchmarks/bench_serving.py"


def main(argv=None) -> dict:
    args = common.parser(__doc__.splitlines()[0], "serving").parse_args(argv)
    started = time.perf_counter()
    import keras
    import numpy as np
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    from export.saved_model import export_keras_model
    from keras_hourglass.model import build_hourglass, inference_model

    sizes, repeats = ([256, 512], 3) if args.quick else ([512, 1536], 10)
    work = tempfile.mkdtemp(prefix="bench-serving-")
    figures, details = [], {"repeats": repeats, "timings": {}}
    try:
        keras.utils.set_random_seed(0)
        model = inference_model(build_hourglass("tiny", head_initializer="glorot_uniform"))  # untrained but marking
        model_path = os.path.join(work, "run", "model.keras")
        os.makedirs(os.path.dirname(model_path))
        model.save(model_path)
        t0 = time.perf_counter()
        result = export_keras_model(model_path, os.path.join(work, "serving", "hourglass"), verify="none")
        details["export_seconds"] = round(time.perf_counter() - t0, 1)
        path = getattr(result, "path", None) or os.path.join(work, "serving", "hourglass", "1")
        loaded = tf.saved_model.load(str(path))
        signature = loaded.signatures["serving_default"]
        raw = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        multiple = 32
        for size in sizes:
            width = max(multiple, int(round(size * 0.8 / multiple)) * multiple)
            image = tf.constant(np.random.default_rng(size).uniform(0, 1, (1, size, width, 1)).astype("float32"))
            fns = {
                "signature": lambda: [v.numpy() for v in signature(image=image).values()],
                "raw": lambda: raw(image).numpy() if not isinstance(raw(image), (list, tuple)) else None,
                "eager": lambda: np.asarray(model(image, training=False)),
            }
            fns["raw"] = lambda: [np.asarray(t) for t in tf.nest.flatten(raw(image))]
            timings = common.timed_round_robin(fns, repeats, warmup=2)
            details["timings"][f"{size}x{width}"] = timings
            m = {k: v["median_s"] for k, v in timings.items()}
            print(f"  {size}x{width}: " + ", ".join(f"{k} {common.ms(v)}" for k, v in m.items()), flush=True)
            figures.append(common.figure(
                f"serving_default / raw model call, {size}x{width} px, batch 1", m["signature"] / m["raw"],
                target=1.10, op="<=", numerator=f"signature {common.ms(m['signature'])}",
                denominator=f"tf.function(model) {common.ms(m['raw'])}", command=CMD,
                note=f"eager model call {common.ms(m['eager'])}; peak finding included in the signature"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return common.write(args.out, "serving", figures, details, args.quick, started)


if __name__ == "__main__":
    main()
