"""Stage two: a small functional Keras patch classifier (and its loader).

`build_classifier(patch_size)` -> `keras.Model`: input ``patch`` `[B, P, P, 1]`
float32 in [0, 1] (the crop of `keras_hourglass.two_stage.patches`), output
``probability`` `[B, 1]`: the probability that the mark is a training
positive (high_risk or malignant). Built from registered layers only
(`keras_hourglass.model.blocks.ConvBNReLU`, `GrayToRGB` here), so a `.keras`
file reloads with `keras.saving.load_model` once `keras_hourglass.two_stage.classifier`
is imported, without `custom_objects`.

- Default: `len(filters)` stages of two 3x3 ConvBNReLU and a 2x2 max-pool,
  global average pooling, dropout, a small dense layer, a sigmoid. It trains
  from scratch (no pretrained weights are reachable on this project's machines).
- `backbone=`: a `keras.applications` network (`BACKBONES`, each with its own
  input preprocessing built in, fed `[0, 255]` RGB by `GrayToRGB`) with
  `weights=None` (from scratch), `"imagenet"` (downloaded by Keras: needs
  network access) or a weights file, then the same head.
"""

from __future__ import annotations

import os

import keras

from keras_hourglass.errors import InputError
from keras_hourglass.model.blocks import ConvBNReLU

BACKBONES = ("MobileNetV3Small", "MobileNetV3Large", "EfficientNetB0", "EfficientNetV2B0")
"""`keras.applications` networks whose preprocessing is part of the model (input: RGB in [0, 255])."""
MIN_BACKBONE_PATCH = 32
DEFAULTS = {"filters": (16, 32, 64), "dense": 64, "dropout": 0.3, "backbone": None}


@keras.saving.register_keras_serializable(package="keras_hourglass")
class GrayToRGB(keras.layers.Layer):
    """Repeats a one-channel image in [0, 1] to three channels, times `scale` (255: a backbone's input range).

    Args:
        scale: multiplier of the intensities.
    """

    def __init__(self, scale: float = 255.0, **kwargs):
        super().__init__(**kwargs)
        self.scale = float(scale)

    def call(self, inputs):
        return keras.ops.repeat(inputs, 3, axis=-1) * self.scale

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (3,)

    def get_config(self) -> dict:
        return {**super().get_config(), "scale": self.scale}


def build_classifier(patch_size: int, *, filters: tuple[int, ...] = DEFAULTS["filters"], dense: int = 64,
                     dropout: float = 0.3, backbone: str | None = None, backbone_weights: str | None = None,
                     name: str = "patch_classifier") -> keras.Model:
    """Builds the stage-two classifier.

    Args:
        patch_size: patch side P in pixels.
        filters: channels of each convolution stage (ignored with `backbone`).
        dense: units of the hidden dense layer (0: none).
        dropout: dropout rate before the head.
        backbone: one of `BACKBONES`, or None for the small CNN.
        backbone_weights: with `backbone`: None (random init), "imagenet" or a weights file.
        name: the model's name.

    Returns:
        A functional `keras.Model`: ``patch`` `[B, P, P, 1]` -> ``probability`` `[B, 1]`.

    Raises:
        ValueError: a bad setting (unknown backbone, patch too small, no stage).
    """
    patch_size = int(patch_size)
    inputs = keras.Input((patch_size, patch_size, 1), name="patch")
    if backbone is not None:
        if backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r}; expected one of {BACKBONES}")
        if patch_size < MIN_BACKBONE_PATCH:
            raise ValueError(f"a {backbone} backbone needs patches of at least {MIN_BACKBONE_PATCH} px, got {patch_size}")
        network = getattr(keras.applications, backbone)(
            include_top=False, weights=backbone_weights, input_shape=(patch_size, patch_size, 3), pooling="avg")
        x = network(GrayToRGB(name="gray_to_rgb")(inputs))
    else:
        filters = tuple(int(f) for f in filters)
        if not filters or min(filters) < 1:
            raise ValueError(f"filters must be positive channel counts, got {filters}")
        if patch_size < 2 ** len(filters):
            raise ValueError(f"{len(filters)} pooling stages need patches of at least {2 ** len(filters)} px")
        x = inputs
        for i, width in enumerate(filters):
            x = ConvBNReLU(width, 3, name=f"stage{i + 1}_conv1")(x)
            x = ConvBNReLU(width, 3, name=f"stage{i + 1}_conv2")(x)
            x = keras.layers.MaxPooling2D(2, name=f"stage{i + 1}_pool")(x)
        x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    if dropout:
        x = keras.layers.Dropout(float(dropout), name="dropout")(x)
    if dense:
        x = keras.layers.Dense(int(dense), activation="relu", name="hidden")(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="probability")(x)
    return keras.Model(inputs, outputs, name=name)


def classifier_patch_size(model: keras.Model) -> int:
    """Returns: the patch side P of a classifier (its input `[B, P, P, 1]`)."""
    return int(model.inputs[0].shape[1])


def check_classifier(model, path: str) -> None:
    """Raises InputError unless `model` takes one square one-channel patch and returns one probability."""
    try:
        inputs, outputs = list(model.inputs), list(model.outputs)
    except (AttributeError, ValueError):
        raise InputError(path, "not a patch classifier: it has no defined inputs/outputs") from None
    shape = tuple(inputs[0].shape) if len(inputs) == 1 else ()
    if len(shape) != 4 or shape[-1] != 1 or shape[1] is None or shape[1] != shape[2]:
        shapes = ", ".join(str(tuple(t.shape)) for t in inputs)
        raise InputError(path, f"not a patch classifier: expected one input [B, P, P, 1], it takes {shapes or 'none'}")
    if len(outputs) != 1 or tuple(outputs[0].shape)[1:] != (1,):
        shapes = ", ".join(str(tuple(t.shape)) for t in outputs)
        raise InputError(path, f"not a patch classifier: expected one output [B, 1], it returns {shapes or 'nothing'}")


def load_classifier(path: str | os.PathLike) -> keras.Model:
    """Loads a stage-two classifier `.keras` file (compile=False), with one-line errors.

    Raises:
        InputError: no such file, not a Keras archive, not loadable, or not a patch classifier.
    """
    from keras_hourglass.modelfile import load_model_file

    path = os.fspath(path)
    model = load_model_file(path)
    check_classifier(model, path)
    return model
