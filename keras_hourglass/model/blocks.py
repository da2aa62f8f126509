"""Building blocks of the stacked Hourglass network (Newell et al., 2016).

One small registered Keras layer per block, in the manner of the TF Object
Detection API's `hourglass_network.py`:

- `ResidualBlock`: pre-activation bottleneck residual module
  (BN-ReLU-1x1, BN-ReLU-3x3, BN-ReLU-1x1, with a 1x1 projection skip when the
  number of channels changes).
- `ConvBNReLU`: a convolution followed by batch normalisation and ReLU (the
  stem's 7x7 convolution and the "linear" layer after each hourglass).
- `HourglassBlock`: the recursive encoder-decoder of configurable depth
  (skip branch | pool -> residuals -> recurse -> residuals -> upsample; sum).
- `InputSizeCheck`: identity layer that rejects images whose height or width
  is not a multiple of the network's total stride.

Every layer builds its sub-layers explicitly in `build()` so a `.keras` file
reloads without `custom_objects` and without running a forward pass, and gives
them its own dtype policy, so a mixed-precision model (`--mixed-precision`)
reloads in the policy it was built with.
"""

from __future__ import annotations

import keras
import tensorflow as tf

_PACKAGE = "keras_hourglass"


def _channels_shape(input_shape, channels: int) -> tuple:
    """Returns: `input_shape` with the last axis replaced by `channels`."""
    return tuple(input_shape[:-1]) + (channels,)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ConvBNReLU(keras.layers.Layer):
    """Convolution, batch normalisation, ReLU.

    Args:
        filters: output channels.
        kernel_size: square kernel size.
        strides: convolution stride.
        bn_momentum: momentum of the batch normalisation.
    """

    def __init__(
        self,
        filters: int,
        kernel_size: int = 1,
        strides: int = 1,
        bn_momentum: float = 0.9,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.strides = int(strides)
        self.bn_momentum = float(bn_momentum)
        self.conv = keras.layers.Conv2D(
            self.filters, self.kernel_size, strides=self.strides, padding="same",
            use_bias=False, dtype=self.dtype_policy, name="conv",
        )
        self.bn = keras.layers.BatchNormalization(momentum=self.bn_momentum, dtype=self.dtype_policy, name="bn")

    def build(self, input_shape):
        self.conv.build(input_shape)
        self.bn.build(self.conv.compute_output_shape(input_shape))

    def call(self, inputs, training=None):
        return keras.ops.relu(self.bn(self.conv(inputs), training=training))

    def compute_output_shape(self, input_shape):
        return self.conv.compute_output_shape(input_shape)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            filters=self.filters, kernel_size=self.kernel_size, strides=self.strides,
            bn_momentum=self.bn_momentum,
        )
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ResidualBlock(keras.layers.Layer):
    """Pre-activation bottleneck residual module.

    `out = skip(x) + conv1x1(relu(bn(conv3x3(relu(bn(conv1x1(relu(bn(x)))))))))`
    with `filters // 2` bottleneck channels; `skip` is the identity when the
    input already has `filters` channels, otherwise a 1x1 convolution.

    Args:
        filters: output channels.
        bn_momentum: momentum of the batch normalisations.
    """

    def __init__(self, filters: int, bn_momentum: float = 0.9, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.bn_momentum = float(bn_momentum)
        mid = max(1, self.filters // 2)
        self.bn1 = keras.layers.BatchNormalization(momentum=self.bn_momentum, dtype=self.dtype_policy, name="bn1")
        # conv1 and conv2 feed a batch normalisation: a bias would be redundant.
        self.conv1 = keras.layers.Conv2D(mid, 1, padding="same", use_bias=False, dtype=self.dtype_policy, name="conv1")
        self.bn2 = keras.layers.BatchNormalization(momentum=self.bn_momentum, dtype=self.dtype_policy, name="bn2")
        self.conv2 = keras.layers.Conv2D(mid, 3, padding="same", use_bias=False, dtype=self.dtype_policy, name="conv2")
        self.bn3 = keras.layers.BatchNormalization(momentum=self.bn_momentum, dtype=self.dtype_policy, name="bn3")
        self.conv3 = keras.layers.Conv2D(self.filters, 1, padding="same", dtype=self.dtype_policy, name="conv3")
        self.projection = None

    def build(self, input_shape):
        mid_shape = _channels_shape(input_shape, self.conv1.filters)
        self.bn1.build(input_shape)
        self.conv1.build(input_shape)
        self.bn2.build(mid_shape)
        self.conv2.build(mid_shape)
        self.bn3.build(mid_shape)
        self.conv3.build(mid_shape)
        if input_shape[-1] != self.filters:
            self.projection = keras.layers.Conv2D(self.filters, 1, padding="same", dtype=self.dtype_policy, name="projection")
            self.projection.build(input_shape)

    def call(self, inputs, training=None):
        x = self.conv1(keras.ops.relu(self.bn1(inputs, training=training)))
        x = self.conv2(keras.ops.relu(self.bn2(x, training=training)))
        x = self.conv3(keras.ops.relu(self.bn3(x, training=training)))
        skip = inputs if self.projection is None else self.projection(inputs)
        return x + skip

    def compute_output_shape(self, input_shape):
        return _channels_shape(input_shape, self.filters)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(filters=self.filters, bn_momentum=self.bn_momentum)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class HourglassBlock(keras.layers.Layer):
    """Recursive hourglass (encoder-decoder) module of Newell et al.

    At each of `depth` resolutions: an upper (skip) branch of residual modules
    at the input resolution, and a lower branch: 2x2 max-pool -> residuals ->
    (the hourglass of depth - 1, or residuals at the bottom) -> residuals ->
    nearest-neighbour 2x upsampling. The two branches are summed. Height and
    width must be multiples of `2**depth`.

    Args:
        depth: number of poolings (>= 1).
        filters: channels of every residual module.
        num_residual: residual modules per branch segment.
        bn_momentum: momentum of the batch normalisations.
    """

    def __init__(
        self,
        depth: int,
        filters: int,
        num_residual: int = 1,
        bn_momentum: float = 0.9,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if int(depth) < 1:
            raise ValueError(f"HourglassBlock depth must be >= 1, got {depth}")
        self.depth = int(depth)
        self.filters = int(filters)
        self.num_residual = int(num_residual)
        self.bn_momentum = float(bn_momentum)

        def residuals(prefix: str) -> list:
            return [
                ResidualBlock(self.filters, self.bn_momentum, dtype=self.dtype_policy, name=f"{prefix}_{i}")
                for i in range(self.num_residual)
            ]

        self.skip = residuals("skip")
        self.pool = keras.layers.MaxPooling2D(2, dtype=self.dtype_policy, name="pool")
        self.down = residuals("down")
        if self.depth > 1:
            self.inner = [
                HourglassBlock(
                    self.depth - 1, self.filters, self.num_residual, self.bn_momentum,
                    dtype=self.dtype_policy, name=f"hourglass_d{self.depth - 1}",
                )
            ]
        else:
            self.inner = residuals("bottom")
        self.up = residuals("up")
        self.upsample = keras.layers.UpSampling2D(2, dtype=self.dtype_policy, name="upsample")

    def build(self, input_shape):
        shape = tuple(input_shape)
        for layer in self.skip:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        low = self.pool.compute_output_shape(tuple(input_shape))
        for layer in self.down + self.inner + self.up:
            layer.build(low)
            low = layer.compute_output_shape(low)

    def call(self, inputs, training=None):
        upper = inputs
        for layer in self.skip:
            upper = layer(upper, training=training)
        lower = self.pool(inputs)
        for layer in self.down + self.inner + self.up:
            lower = layer(lower, training=training)
        return upper + self.upsample(lower)

    def compute_output_shape(self, input_shape):
        return _channels_shape(input_shape, self.filters)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            depth=self.depth, filters=self.filters, num_residual=self.num_residual,
            bn_momentum=self.bn_momentum,
        )
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class InputSizeCheck(keras.layers.Layer):
    """Identity that requires height and width to be multiples of `multiple`.

    A static size that is not a multiple raises `ValueError` when the model is
    built or traced. With dynamic sizes (None at build time) the check runs at
    call time as a `tf.debugging.assert_equal` (an InvalidArgumentError naming
    the multiple); callers should pad images to the multiple first (the data
    pipeline and the serving signature do). Under XLA the assert is dropped.

    Args:
        multiple: required divisor of height and width.
    """

    def __init__(self, multiple: int, **kwargs):
        super().__init__(**kwargs)
        self.multiple = int(multiple)

    def check_static(self, input_shape) -> None:
        """Raises: ValueError if a known height or width is not a multiple."""
        for axis, size in (("height", input_shape[1]), ("width", input_shape[2])):
            if size is not None and int(size) % self.multiple:
                raise ValueError(
                    f"image {axis} {int(size)} is not a multiple of {self.multiple} "
                    f"(output_stride * 2**depth); pad the image to a multiple of {self.multiple}"
                )

    def build(self, input_shape):
        self.check_static(input_shape)

    def call(self, inputs):
        self.check_static(tuple(inputs.shape))
        if inputs.shape[1] is not None and inputs.shape[2] is not None:
            return inputs
        size = tf.shape(inputs)[1:3]
        check = tf.debugging.assert_equal(
            size % self.multiple, tf.zeros_like(size),
            message=(
                f"image height and width must be multiples of {self.multiple} "
                "(output_stride * 2**depth); pad the image first"
            ),
        )
        with tf.control_dependencies([check]):
            return tf.identity(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(multiple=self.multiple)
        return config
