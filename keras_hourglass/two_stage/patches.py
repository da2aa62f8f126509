"""Patch geometry of stage two (numpy; TensorFlow on demand).

The patch side is given in *reference pixels* (pixels at the paper's 1536-px
training scale, `keras_hourglass.training.geometry.REFERENCE_LONG_SIDE`) and
resolved against PREP's long side, like every other pixel-denominated setting:
`resolve_patch_size(384, long_side=256) == 64`.

Crop rule (the one definition, used by `hourglass proposals`, by `hourglass
evaluate --classifier` and, later, by the combined export): a mark at
continuous image coordinates `(y, x)` gets the `size x size` window of whole
pixels whose top-left pixel is `(floor(y - size / 2 + 0.5), floor(x - size / 2
+ 0.5))`, i.e. the integer-aligned window whose centre is nearest to the
mark. Pixels outside the (unpadded) image are 0, the value of air.

`crop_patches` applies the rule with numpy; `crop_patches_tf` with `tf.image.crop_and_resize`
(nearest-neighbour sampling at whole pixels of a zero-padded image, so the patches are the same
pixels), for graphs such as the combined export. The origin formula is written once (`_origin`).
TensorFlow is imported only by `crop_patches_tf`.
"""

from __future__ import annotations

import math

import numpy as np

from keras_hourglass.errors import ArgumentError, InputError
from keras_hourglass.training.geometry import REFERENCE_LONG_SIDE

DEFAULT_PATCH_SIZE = 384
"""Default patch side in reference px: 64 px at --size 256, 128 at 512 (a quarter of the long side)."""
MIN_PATCH_PIXELS = 8
"""Smallest patch side (image px) a classifier can use."""


def resolve_patch_size(reference_px: float, *, long_side: int, argument: str = "patch_size") -> int:
    """Converts a patch side from reference pixels to image pixels at `long_side`.

    Args:
        reference_px: the patch side in reference pixels.
        long_side: the long side of PREP's images (manifest `preprocessing.long_side`).
        argument: the Python argument named in errors.

    Returns:
        The side in image pixels, rounded to an even number.

    Raises:
        InputError: the side resolves to fewer than `MIN_PATCH_PIXELS` pixels.
    """
    resolved = float(reference_px) * long_side / REFERENCE_LONG_SIDE
    if resolved < MIN_PATCH_PIXELS:
        smallest = math.ceil(MIN_PATCH_PIXELS * REFERENCE_LONG_SIDE / long_side)
        raise ArgumentError(argument, f"{reference_px:g} reference px resolves to {resolved:.1f} px at long side "
                               f"{long_side} px, below the minimum {MIN_PATCH_PIXELS}: give at least {smallest}")
    return int(2 * round(resolved / 2))


def _origin(coordinate, size: int, floor):
    """The first whole pixel of the `size`-pixel window centred nearest to `coordinate` (`floor`: a library's)."""
    return floor(coordinate - size / 2.0 + 0.5)


def patch_origin(y: float, x: float, size: int) -> tuple[int, int]:
    """Returns: the top-left pixel `(row, col)` of the patch of side `size` around the mark `(y, x)`."""
    return int(_origin(y, size, math.floor)), int(_origin(x, size, math.floor))


def crop_patches(image: np.ndarray, marks: np.ndarray, size: int) -> np.ndarray:
    """Crops one patch per mark (the module's crop rule).

    Args:
        image: `[H, W]` or `[H, W, 1]` float image (unpadded, image frame).
        marks: `[M, >=2]` rows starting with `(y, x)` in image coordinates.
        size: patch side in pixels.

    Returns:
        float32 `[M, size, size, 1]`, zero outside the image.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3:
        image = image[..., 0]
    height, width = image.shape
    marks = np.asarray(marks, dtype=np.float64)
    out = np.zeros((len(marks), size, size, 1), np.float32)
    if not len(marks):
        return out
    for m, (y, x) in enumerate(marks[:, :2]):
        top, left = patch_origin(float(y), float(x), size)
        y0, x0 = max(top, 0), max(left, 0)
        y1, x1 = min(top + size, height), min(left + size, width)
        if y1 > y0 and x1 > x0:
            out[m, y0 - top:y1 - top, x0 - left:x1 - left, 0] = image[y0:y1, x0:x1]
    return out


def crop_patches_tf(images, marks, size: int):
    """`crop_patches` for a batch, with TensorFlow ops (`tf.image.crop_and_resize`).

    Args:
        images: float32 `[B, H, W, 1]` (unpadded, image frame; one H, W for the batch).
        marks: float32 `[B, K, >=2]`, rows starting with `(y, x)` in image coordinates.
        size: patch side in pixels.

    Returns:
        float32 `[B * K, size, size, 1]` (image-major: the K patches of image 0 first), zero outside
        the image.
    """
    import tensorflow as tf

    size = int(size)
    images = tf.convert_to_tensor(images, tf.float32)
    marks = tf.convert_to_tensor(marks, tf.float32)
    # Padding by `size` keeps every sample point of a mark inside [0, H] x [0, W] strictly within the
    # padded image, so nearest-neighbour sampling reads whole pixels and the padding reads 0.
    padded = tf.pad(images, [[0, 0], [size, size], [size, size], [0, 0]])
    extent = tf.cast(tf.shape(padded)[1:3] - 1, tf.float32)
    top = _origin(marks[..., 0], size, tf.math.floor) + size
    left = _origin(marks[..., 1], size, tf.math.floor) + size
    boxes = tf.stack([top / extent[0], left / extent[1],
                      (top + size - 1) / extent[0], (left + size - 1) / extent[1]], axis=-1)
    batch, count = tf.shape(marks)[0], tf.shape(marks)[1]
    box_indices = tf.repeat(tf.range(batch), count)
    return tf.image.crop_and_resize(padded, tf.reshape(boxes, [-1, 4]), box_indices, [size, size],
                                    method="nearest", extrapolation_value=0.0)
