"""16-bit grayscale PNG encoding of training-scale images (no TensorFlow).

Ingest workers encode here (PIL), TensorFlow decodes with
``tf.io.decode_png(..., dtype=tf.uint16)`` in ``records.parse_example``.
A float image in [0, 1] maps to ``round(x * 65535)``; decoding divides by
65535, so the round trip is exact to 1/65535.
"""

from __future__ import annotations

import io
import struct
import zlib

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


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png16(image: np.ndarray, compress_level: int = 1, strategy: int = zlib.Z_RLE) -> bytes:
    """Encodes a grayscale image as a 16-bit PNG.

    A direct numpy + zlib writer (one IDAT, the PNG "Sub" filter on every
    row): about twice as fast as PIL's 16-bit path and smaller on
    mammograms, whose rows are smooth. Any PNG decoder reads it
    (tf.io.decode_png, PIL): the pixels do not depend on the zlib settings.

    zlib settings, measured on the ingest benchmark's 768-px synthetic
    mammograms (Sub-filtered rows, 944 KB raw per image): level 1 with the
    default strategy 12.8 ms and 543 KB per image; level 1 with Z_RLE
    (the default here) 5.9 ms and 531 KB (the Sub filter leaves long runs
    of equal bytes in the background and smooth tissue, which run-length
    matching finds as well as the full string search); Huffman only
    6.7 ms, 579 KB; level 6 29 ms, 532 KB; level 0 (stored) 0.7 ms but
    944 KB. Z_RLE is both the fastest compressing choice and the smallest.

    Args:
        image: float in [0, 1] or uint16, `[H, W]` or `[H, W, 1]`.
        compress_level: zlib level (0 = stored, 1 = fast, 9 = smallest).
        strategy: zlib strategy (`zlib.Z_RLE` default; `zlib.Z_DEFAULT_STRATEGY` = plain deflate).

    Returns:
        The PNG bytes.
    """
    array = to_uint16(image)
    height, width = array.shape
    if height == 0 or width == 0:
        raise ValueError("cannot encode an empty image")
    raw = array.astype(">u2").view(np.uint8).reshape(height, 2 * width)
    rows = np.empty((height, 2 * width + 1), np.uint8)
    rows[:, 0] = 1  # filter type Sub: each byte minus the byte one pixel (2 bytes) to its left, mod 256
    rows[:, 1:3] = raw[:, :2]
    rows[:, 3:] = raw[:, 2:] - raw[:, :-2]
    header = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)  # 16-bit grayscale, no interlace
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", _deflate(rows, compress_level, strategy)) + _png_chunk(b"IEND", b""))


def _deflate(data: np.ndarray, level: int, strategy: int) -> bytes:
    compressor = zlib.compressobj(level, zlib.DEFLATED, 15, 8, strategy)
    return compressor.compress(data) + compressor.flush()


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
