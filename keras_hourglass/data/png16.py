"""16-bit grayscale PNG encoding of training-scale images (no TensorFlow).

Ingest workers encode here (PIL), TensorFlow decodes with
``tf.io.decode_png(..., dtype=tf.uint16)`` in ``records.parse_example``.
A float image in [0, 1] maps to ``round(x * 65535)``; decoding divides by
65535, so the round trip is exact to 1/65535.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def to_uint16(image: np.ndarray) -> np.ndarray:
    """Converts a float image in [0, 1] (or a uint16 image) to uint16.

    Args:
        image: `[H, W]` or `[H, W, 1]` float (values clipped to [0, 1]) or uint16.

    Returns:
        A contiguous uint16 `[H, W]` array.
    """
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {array.shape}")
    if array.dtype == np.uint16:
        return np.ascontiguousarray(array)
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"expected float in [0, 1] or uint16, got {array.dtype}")
    if not np.all(np.isfinite(array)):
        raise ValueError("image has NaN or infinite values")
    return np.round(np.clip(array, 0.0, 1.0) * 65535.0).astype(np.uint16)


def encode_png16(image: np.ndarray, compress_level: int = 1) -> bytes:
    """Encodes a grayscale image as a 16-bit PNG.

    Args:
        image: float in [0, 1] or uint16, `[H, W]` or `[H, W, 1]`.
        compress_level: zlib level (1 = fast; mammograms compress little more at 9).

    Returns:
        The PNG bytes.
    """
    array = to_uint16(image)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def decode_png16(data: bytes) -> np.ndarray:
    """Decodes a 16-bit grayscale PNG (for tools and tests; training decodes in TF).

    Args:
        data: PNG bytes.

    Returns:
        uint16 `[H, W]`.
    """
    with Image.open(io.BytesIO(data)) as img:
        array = np.array(img)
    return array.astype(np.uint16)
