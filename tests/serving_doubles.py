"""Test doubles for the export and serving tests.

- `tiny_hourglass`: the smallest real Hourglass, for fast export tests.
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


def random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth-ish float32 [H, W] image in [0, 1] with a few bright blobs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    image = 0.1 * rng.random((h, w), dtype=np.float32)
    for _ in range(3):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        image += 0.8 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 4.0**2))
    return np.clip(image, 0.0, 1.0).astype(np.float32)
