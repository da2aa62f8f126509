"""The Newell et al. Hourglass baseline loss: pixel-wise L2 to Gaussian targets.

The target heatmap is the pixel-wise maximum of peak-1 Gaussians
`exp(-|x - c|^2 / (2 sigma^2))` centred on the valid box centres (pixel
centres at `i + 0.5`, the same box conventions and helpers as
`HypersensitiveLoss`); the loss is the sum over pixels of `(O - target)^2`
per image (the same per-image-sum normalisation as `HypersensitiveLoss`, so
the two are comparable). An image without boxes has an all-zero target.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from keras_hourglass.losses import boxes as box_ops


@keras.saving.register_keras_serializable(package="keras_hourglass")
class GaussianL2Loss(keras.losses.Loss):
    """Pixel-wise L2 between the heatmap and Gaussian blobs at box centres.

    Args:
        sigma: standard deviation of the target blobs in heatmap pixels.
        name: loss name.
        reduction: Keras reduction over the per-image losses.
        dtype: computation dtype (default `keras.backend.floatx()`).

    Example:

    ```python
    model.compile(optimizer="adam", loss=GaussianL2Loss(sigma=2.0))
    ```
    """

    def __init__(
        self,
        sigma: float = 2.0,
        name: str = "gaussian_l2_loss",
        reduction: str | None = "sum_over_batch_size",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        sigma = float(sigma)
        if not math.isfinite(sigma) or sigma <= 0:
            raise ValueError(f"sigma must be a finite number > 0; got {sigma!r}")
        self.sigma = sigma

    def target(self, y_true, y_pred) -> tf.Tensor:
        """The Gaussian target heatmap.

        Args:
            y_true: boxes `[B, MAX_BOXES, 4]` in heatmap pixels.
            y_pred: heatmap `[B, h, w, 1]` (only its shape is used).

        Returns:
            float `[B, h, w]`.
        """
        centres, valid, height, width = box_ops.target_centres(y_true, y_pred, self.dtype)
        return box_ops.gaussian_target(centres, valid, self.sigma, height, width)

    def call(self, y_true, y_pred):
        heatmap = box_ops.as_heatmap(y_pred)
        target = tf.stop_gradient(self.target(y_true, y_pred))
        return tf.reduce_sum(tf.square(heatmap - target), axis=[1, 2])

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(sigma=self.sigma)
        return config
