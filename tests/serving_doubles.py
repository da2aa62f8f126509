"""Test doubles for the export and serving tests.

- `tiny_hourglass`: the smallest real Hourglass, for fast export tests.
- `conv_model`: a 2-layer conv heatmap model where the network does not matter.
- `random_image`: a float32 image with a few bright blobs.
"""

from __future__ import annotations

import numpy as np


def tiny_hourglass(seed: int = 0):
    """The smallest real Hourglass: 1 stack, depth 2, stride 4 (input multiple 16), ~3k weights."""
    import keras

    from keras_hourglass.model import build_hourglass

    keras.utils.set_random_seed(seed)
    return build_hourglass("tiny", num_stacks=1, depth=2, num_features=8, stem_features=4)


def conv_model(stride: int = 2, seed: int = 0):
    """A 2-layer conv heatmap model (image -> heatmap at `stride`): for tests where the network is
    irrelevant (atomic publication, verification failures) and tracing a real Hourglass 4 times
    would only cost time."""
    import keras

    keras.utils.set_random_seed(seed)
    image = keras.Input((None, None, 1), name="image")
    x = keras.layers.Conv2D(4, 3, strides=stride, padding="same", activation="relu")(image)
    heatmap = keras.layers.Conv2D(1, 3, padding="same", name="heatmap")(x)
    return keras.Model(image, heatmap, name="conv_heatmap")


def random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth-ish float32 [H, W] image in [0, 1] with a few bright blobs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    image = 0.1 * rng.random((h, w), dtype=np.float32)
    for _ in range(3):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        image += 0.8 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 4.0**2))
    return np.clip(image, 0.0, 1.0).astype(np.float32)
