"""Test doubles for the export and serving tests.

- `standin_model` / `standin_find_peaks`: tiny stand-ins with the interfaces
  of `keras_hourglass.model` and `keras_hourglass.peaks`, used until those
  modules are available.
"""

from __future__ import annotations

import numpy as np


def standin_model(stride: int = 2, seed: int = 0):
    """A 2-layer conv 'heatmap' model: image [B,H,W,1] -> heatmap [B,H/stride,W/stride,1]."""
    import keras

    keras.utils.set_random_seed(seed)
    image = keras.Input((None, None, 1), name="image")
    x = keras.layers.Conv2D(4, 3, strides=stride, padding="same", activation="relu")(image)
    heatmap = keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid", name="heatmap")(x)
    return keras.Model(image, heatmap, name="standin_hourglass")


def standin_find_peaks(heatmap, max_marks=100, threshold=0.0, pool_size=3, stride=1):
    """Plain-TF peak finder with the `keras_hourglass.peaks.find_peaks` contract."""
    import tensorflow as tf

    heatmap = tf.convert_to_tensor(heatmap, tf.float32)[..., 0]
    batch = tf.shape(heatmap)[0]
    width = tf.shape(heatmap)[2]
    pooled = tf.nn.max_pool2d(heatmap[..., None], pool_size, 1, "SAME")[..., 0]
    keep = (heatmap >= pooled) & (heatmap > threshold)
    scores = tf.reshape(tf.where(keep, heatmap, tf.fill(tf.shape(heatmap), -1.0)), [batch, -1])
    k = tf.minimum(max_marks, tf.shape(scores)[1])
    top, idx = tf.math.top_k(scores, k)
    pad = max_marks - k
    top = tf.pad(top, [[0, 0], [0, pad]], constant_values=-1.0)
    idx = tf.pad(idx, [[0, 0], [0, pad]])
    valid = top > -1.0
    y = (tf.cast(idx // width, tf.float32) + 0.5) * stride
    x = (tf.cast(idx % width, tf.float32) + 0.5) * stride
    marks = tf.stack([y, x, top], axis=-1)
    marks = tf.where(valid[..., None], marks, tf.constant([-1.0, -1.0, 0.0]))
    return marks, tf.reduce_sum(tf.cast(valid, tf.int32), axis=1)


def random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth-ish float32 [H, W] image in [0, 1] with a few bright blobs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    image = 0.1 * rng.random((h, w), dtype=np.float32)
    for _ in range(3):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        image += 0.8 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 4.0**2))
    return np.clip(image, 0.0, 1.0).astype(np.float32)
