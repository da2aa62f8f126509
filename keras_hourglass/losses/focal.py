"""CenterNet's penalty-reduced focal loss on Gaussian targets (Zhou et al., "Objects as Points", 2019).

What a detection engineer would train a one-channel keypoint heatmap with
instead of L2. The model's output is read as logits; with `p = sigmoid(logit
+ logit_offset)` and the Gaussian target `Y` (peak exactly 1 at the pixel
holding each valid box centre, the pixel-wise maximum over boxes):

    loss = -1/N * sum_pixels { (1 - p)^alpha * log(p)                 where Y = 1
                             { (1 - Y)^beta * p^alpha * log(1 - p)    elsewhere

with `N` = the number of positive pixels of the image (at least 1), so an
image without boxes is normalised by 1. `logit_offset` (default
`-log((1 - 0.1) / 0.1)`) plays the role of CenterNet's prior bias
initialisation: a freshly built model, whose output is ~0, then predicts
p ~ 0.1 instead of 0.5. Peaks of the logits and of p are the same pixels,
so `find_peaks` and the FROC are unchanged by the reading. Box conventions
and helpers are those of `HypersensitiveLoss` and `GaussianL2Loss`.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from keras_hourglass.losses import boxes as box_ops

PRIOR_OFFSET = -math.log((1.0 - 0.1) / 0.1)


@keras.saving.register_keras_serializable(package="keras_hourglass")
class PenaltyReducedFocalLoss(keras.losses.Loss):
    """Penalty-reduced pixel-wise focal loss between heatmap logits and Gaussian targets.

    Args:
        sigma: standard deviation of the target blobs in heatmap pixels.
        alpha: focusing exponent (CenterNet: 2).
        beta: penalty reduction exponent around each centre (CenterNet: 4).
        logit_offset: added to the model's output before the sigmoid.
        name: loss name.
        reduction: Keras reduction over the per-image losses.
        dtype: computation dtype (default `keras.backend.floatx()`).

    Example:

    ```python
    model.compile(optimizer="adam", loss=PenaltyReducedFocalLoss(sigma=2.0))
    ```
    """

    def __init__(
        self,
        sigma: float = 2.0,
        alpha: float = 2.0,
        beta: float = 4.0,
        logit_offset: float = PRIOR_OFFSET,
        name: str = "penalty_reduced_focal_loss",
        reduction: str | None = "sum_over_batch_size",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        for key, value in (("sigma", sigma), ("alpha", alpha), ("beta", beta)):
            if not math.isfinite(float(value)) or float(value) < 0 or (key == "sigma" and float(value) == 0):
                raise ValueError(f"{key} must be a finite number > 0; got {value!r}")
        if not math.isfinite(float(logit_offset)):
            raise ValueError(f"logit_offset must be finite; got {logit_offset!r}")
        self.sigma = float(sigma)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.logit_offset = float(logit_offset)

    def target(self, y_true, y_pred) -> tf.Tensor:
        """The Gaussian target, exactly 1 at each valid box centre's pixel.

        Args:
            y_true: boxes `[B, MAX_BOXES, 4]` in heatmap pixels.
            y_pred: heatmap `[B, h, w, 1]` (only its shape is used).

        Returns:
            float `[B, h, w]`.
        """
        centres, valid, height, width = box_ops.target_centres(y_true, y_pred, self.dtype)
        limit = tf.cast(tf.stack([height, width]) - 1, centres.dtype)
        pixel_centres = tf.clip_by_value(tf.floor(centres), 0.0, limit) + 0.5
        return box_ops.gaussian_target(pixel_centres, valid, self.sigma, height, width)

    def call(self, y_true, y_pred):
        logits = box_ops.as_heatmap(y_pred) + self.logit_offset
        target = tf.stop_gradient(self.target(y_true, y_pred))
        positive = tf.cast(target >= 1.0, logits.dtype)
        prob = tf.sigmoid(logits)
        pos_term = tf.pow(1.0 - prob, self.alpha) * tf.math.log_sigmoid(logits)
        neg_term = tf.pow(1.0 - target, self.beta) * tf.pow(prob, self.alpha) * tf.math.log_sigmoid(-logits)
        per_pixel = positive * pos_term + (1.0 - positive) * neg_term
        count = tf.maximum(tf.reduce_sum(positive, axis=[1, 2]), 1.0)
        return -tf.reduce_sum(per_pixel, axis=[1, 2]) / count

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(sigma=self.sigma, alpha=self.alpha, beta=self.beta, logit_offset=self.logit_offset)
        return config
