"""Endpoint-layer form of the hypersensitive loss (a test helper: the package trains with `loss=`).

For functional training graphs that take the boxes as a model input
(`keras.Input((MAX_BOXES, 4), name="boxes")`) instead of as `y`: the layer
adds the loss with `add_loss` and passes the heatmap through unchanged, so
the model compiles without a `loss=` argument. It holds a
`HypersensitiveLoss` and calls it: one implementation, the same numbers.
"""

from __future__ import annotations

import keras

from keras_hourglass.losses.hypersensitive import HypersensitiveLoss


@keras.saving.register_keras_serializable(package="keras_hourglass_tests")
class HypersensitiveLossEndpoint(keras.layers.Layer):
    """Adds `HypersensitiveLoss(boxes, heatmap)` to the model's losses.

    Args:
        loss: a `HypersensitiveLoss` or its config dict (default settings if
            None). Its reduction turns the per-image losses into the scalar
            that is added (default: the batch mean).
        **kwargs: base `keras.layers.Layer` arguments (name, ...).

    Call arguments:
        heatmap: `[B, h, w, 1]` model output.
        boxes: `[B, MAX_BOXES, 4]` in heatmap pixels, -1 padding.

    Returns:
        `heatmap`, unchanged.
    """

    def __init__(self, loss: HypersensitiveLoss | dict | None = None, **kwargs):
        super().__init__(**kwargs)
        if loss is None:
            loss = HypersensitiveLoss()
        elif isinstance(loss, dict):
            loss = HypersensitiveLoss.from_config(loss)
        if not isinstance(loss, HypersensitiveLoss):
            raise TypeError(f"loss must be a HypersensitiveLoss; got {type(loss).__name__}")
        self.loss_fn = loss

    def call(self, heatmap, boxes):
        self.add_loss(self.loss_fn(boxes, heatmap))
        return heatmap

    def compute_output_shape(self, heatmap_shape, boxes_shape=None):
        return heatmap_shape

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(loss=self.loss_fn.get_config())
        return config
