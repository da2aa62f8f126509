"""The stacked Hourglass network (Newell et al., 2016) with one heatmap channel.

Architecture (`build_hourglass`):

- Stem: 7x7 stride-2 `ConvBNReLU` (`stem_features`), residual module
  (`num_features // 2`), 2x2 max-pool, residual, residual (`num_features`).
  This gives `output_stride=4`; `output_stride=2` drops the max-pool and
  `output_stride=1` also makes the 7x7 convolution stride 1.
- `num_stacks` hourglasses of `depth` poolings. After each: residual modules,
  a 1x1 `ConvBNReLU` and a 1x1 convolution to ONE heatmap channel. Between
  stacks the features and the heatmap are mapped back by 1x1 convolutions and
  added to the stack input (Newell's intermediate supervision).

Head initialisation: each 1x1 heatmap convolution starts with a zero kernel
and bias (`head_initializer="zeros"`), so the untrained network outputs an
all-zero heatmap. With Glorot-initialised heads, fitting the tiny model to
33 training patches with L2 started at 18x the all-zero heatmap's loss and
was still above it after 600 steps; with zero heads it reached 0.3x
(benchmarks/init_diagnosis.py): at our budgets training spent its steps
shrinking the untrained background instead of learning the lesions.

Outputs: with `intermediate_supervision` and more than one stack, a list
`[heatmap_stack1, ..., heatmap_stack{n-1}, heatmap]`; otherwise the single
tensor `heatmap`. Each is [B, H / output_stride, W / output_stride, 1].

Size rule: H and W must be multiples of `input_multiple(config)`
(`output_stride * 2**depth`). With a fixed `input_size` a wrong size is a
`ValueError` at build time; with dynamic sizes (the default, H = W = None)
the model asserts at call time and callers pad first (the data pipeline and
the serving signature pad to the multiple).

Presets:

- `"tiny"`: 2 stacks, depth 3, 16 features (about 24k parameters): tests
  and the demo.
- `"paper"`: Newell's configuration, 256 features, depth 4 (4 poolings),
  2 stacks (Newell's 2-stack model loses little against 8 stacks and fits
  full-field mammograms in memory; set `num_stacks=8` for the original).
"""

from __future__ import annotations

import copy
import numbers

import keras

from keras_hourglass.model.blocks import ConvBNReLU, HourglassBlock, InputSizeCheck, ResidualBlock

PRESETS: dict[str, dict] = {
    "tiny": {
        "num_stacks": 2,
        "depth": 3,
        "num_features": 16,
        "stem_features": 8,
        "num_residual": 1,
        "output_stride": 4,
        "intermediate_supervision": True,
        "output_activation": "linear",
        "bn_momentum": 0.9,
        "head_initializer": "zeros",
        "input_size": None,
    },
    "paper": {
        "num_stacks": 2,
        "depth": 4,
        "num_features": 256,
        "stem_features": 64,
        "num_residual": 1,
        "output_stride": 4,
        "intermediate_supervision": True,
        "output_activation": "linear",
        "bn_momentum": 0.9,
        "head_initializer": "zeros",
        "input_size": None,
    },
}

_STRIDES = (1, 2, 4)


def resolve_config(preset: str = "tiny", **overrides) -> dict:
    """Merges a preset with overrides and validates the result.

    Args:
        preset: a key of `PRESETS`.
        **overrides: any preset key (`num_stacks`, `depth`, `num_features`,
            `stem_features`, `num_residual`, `output_stride`,
            `intermediate_supervision`, `output_activation`, `bn_momentum`,
            `head_initializer` (a Keras initializer name for the 1x1
            heatmap kernels; "zeros" by default), `input_size` (None or
            (H, W))).

    Returns:
        A new dict holding every key.

    Raises:
        ValueError: unknown preset or key, or an invalid value.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    config = copy.deepcopy(PRESETS[preset])
    for key, value in overrides.items():
        if key not in config:
            raise ValueError(f"unknown model option {key!r}; valid options: {sorted(config)}")
        config[key] = value
    for key in ("num_stacks", "depth", "num_features", "stem_features", "num_residual"):
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or int(value) != value or value < 1:
            raise ValueError(f"model option {key!r} must be a positive integer, got {value!r}")
        config[key] = int(value)
    if config["output_stride"] not in _STRIDES:
        raise ValueError(
            f"model option 'output_stride' must be one of {_STRIDES}, got {config['output_stride']!r}"
        )
    config["output_stride"] = int(config["output_stride"])
    config["intermediate_supervision"] = bool(config["intermediate_supervision"])
    if config["input_size"] is not None:
        size = tuple(config["input_size"])
        if len(size) != 2 or any(s is not None and (int(s) != s or s < 1) for s in size):
            raise ValueError(
                f"model option 'input_size' must be None or (height, width), got {config['input_size']!r}"
            )
        config["input_size"] = tuple(None if s is None else int(s) for s in size)
    keras.activations.get(config["output_activation"])  # raises ValueError if unknown
    keras.initializers.get(config["head_initializer"])  # raises ValueError if unknown
    return config


def input_multiple(config: dict) -> int:
    """Args: config: a resolved config. Returns: the divisor H and W need."""
    return int(config["output_stride"]) * 2 ** int(config["depth"])


def build_hourglass(preset: str = "tiny", **overrides) -> keras.Model:
    """Builds the stacked Hourglass as a Keras functional model.

    Args:
        preset: `"tiny"` or `"paper"` (see `PRESETS`).
        **overrides: keys of the preset to change (see `resolve_config`).

    Returns:
        A `keras.Model` with input `image` [B, H, W, 1] float32 and output
        `heatmap` [B, H/s, W/s, 1] (a list, one per stack, the last named
        `heatmap`, when intermediate supervision is on with > 1 stacks).

    Raises:
        ValueError: bad options, or a fixed `input_size` that is not a
            multiple of `input_multiple(config)`.
    """
    config = resolve_config(preset, **overrides)
    multiple = input_multiple(config)
    height, width = config["input_size"] or (None, None)
    check = InputSizeCheck(multiple, name="input_size_check")
    check.check_static((None, height, width, 1))

    features = config["num_features"]
    momentum = config["bn_momentum"]
    stride = config["output_stride"]
    image = keras.Input(shape=(height, width, 1), dtype="float32", name="image")
    x = check(image)

    x = ConvBNReLU(config["stem_features"], 7, strides=2 if stride >= 2 else 1,
                   bn_momentum=momentum, name="stem_conv")(x)
    x = ResidualBlock(features // 2 or 1, momentum, name="stem_res1")(x)
    if stride == 4:
        x = keras.layers.MaxPooling2D(2, name="stem_pool")(x)
    x = ResidualBlock(features // 2 or 1, momentum, name="stem_res2")(x)
    x = ResidualBlock(features, momentum, name="stem_res3")(x)

    outputs = []
    num_stacks = config["num_stacks"]
    for stack in range(1, num_stacks + 1):
        last = stack == num_stacks
        y = HourglassBlock(config["depth"], features, config["num_residual"], momentum,
                           name=f"hourglass{stack}")(x)
        for i in range(config["num_residual"]):
            y = ResidualBlock(features, momentum, name=f"hourglass{stack}_res{i + 1}")(y)
        y = ConvBNReLU(features, 1, bn_momentum=momentum, name=f"hourglass{stack}_lin")(y)
        heatmap = keras.layers.Conv2D(
            1, 1, activation=config["output_activation"], dtype="float32",
            kernel_initializer=config["head_initializer"],
            name="heatmap" if last else f"heatmap_stack{stack}",
        )(y)
        outputs.append(heatmap)
        if not last:
            back_features = keras.layers.Conv2D(features, 1, name=f"stack{stack}_features_back")(y)
            back_heatmap = keras.layers.Conv2D(features, 1, name=f"stack{stack}_heatmap_back")(heatmap)
            x = keras.layers.Add(name=f"stack{stack + 1}_input")([x, back_features, back_heatmap])

    if config["intermediate_supervision"] and num_stacks > 1:
        model_outputs = outputs
    else:
        model_outputs = outputs[-1]
    return keras.Model(image, model_outputs, name=f"hourglass_{preset}")


def inference_model(model: keras.Model) -> keras.Model:
    """Args: model: a (loaded) Hourglass. Returns: image -> final heatmap only."""
    if len(model.outputs) == 1:
        return model
    try:
        final = model.get_layer("heatmap").output
    except ValueError:
        final = model.outputs[-1]
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, final, name=f"{model.name}_inference")


def model_input_multiple(model: keras.Model) -> int:
    """Divisor that a (loaded) model needs for image height and width.

    Args:
        model: a model from `build_hourglass` (read from its
            `InputSizeCheck` layer) or any fully convolutional model.

    Returns:
        The `InputSizeCheck` multiple; for models without one, `model_stride(model)`.
    """
    multiples = [layer.multiple for layer in model.layers if isinstance(layer, InputSizeCheck)]
    return max(multiples) if multiples else model_stride(model)


def model_stride(model: keras.Model) -> int:
    """Output stride of a built or loaded fully convolutional model.

    Uses shape inference only (no forward pass): unknown input sizes are
    probed with 16384, a multiple of every supported `input_multiple`;
    fixed input sizes are used as they are.

    Args:
        model: a model with one image input [B, H, W, C] and heatmap output(s).

    Returns:
        The integer ratio of input height to output height.

    Raises:
        ValueError: the ratio is not an integer.
    """
    _, height, width, channels = model.inputs[0].shape
    height = height or 2**14
    shape = model.compute_output_shape((1, height, width or 2**14, channels))
    if isinstance(shape, dict):
        shape = list(shape.values())
    if isinstance(shape, (list, tuple)) and shape and isinstance(shape[0], (list, tuple)):
        shape = shape[-1]
    out = shape[1]
    if not out or height % int(out):
        raise ValueError(
            f"cannot infer an integer output stride from input height {height} and output shape {shape}"
        )
    return height // int(out)
