"""The stacked Hourglass model: blocks, presets and the model factory."""

from keras_hourglass.model.hourglass import (
    PRESETS,
    build_hourglass,
    inference_model,
    input_multiple,
    model_input_multiple,
    model_stride,
    resolve_config,
)

__all__ = [
    "PRESETS",
    "build_hourglass",
    "inference_model",
    "input_multiple",
    "model_input_multiple",
    "model_stride",
    "resolve_config",
]
