"""Non-maximum suppression on heatmaps: the ONE rule of what a peak is.

Used by the detector (`keras_hourglass.peaks.find_peaks`: the marks) and by the hypersensitive
loss (`keras_hourglass.losses.background`: the top-k predicted blobs it forgives), so the blobs the
loss excuses are exactly the marks the detector would report.

Rule: a pixel is a local maximum if it equals the maximum of its `pool_size x pool_size` window
(same padding) AND is strictly greater than every pixel of that window that comes before it in
raster order (the window's rows above it, and the pixels to its left on its own row; for 3x3:
up-left, up, up-right, left). A rectangular (more generally, a convex) plateau therefore yields
exactly one local maximum, its top-left pixel.

May import: TensorFlow only (the losses import it without the data package).
"""

from __future__ import annotations

import tensorflow as tf


def check_pool_size(pool_size: int) -> int:
    """Returns `pool_size` as an int.

    Raises:
        ValueError: not a positive odd integer.
    """
    if isinstance(pool_size, bool) or int(pool_size) != pool_size or pool_size < 1 or pool_size % 2 == 0:
        raise ValueError(f"pool_size must be a positive odd integer, got {pool_size!r}")
    return int(pool_size)


def local_maxima(scores: tf.Tensor, pool_size: int = 3) -> tf.Tensor:
    """Marks the local maxima of a batch of heatmaps (see the module docstring).

    Args:
        scores: float `[B, h, w]` (non-finite values should already be -inf; a NaN is never a
            maximum). B, h and w may be unknown.
        pool_size: odd window side (1: every pixel is a local maximum).

    Returns:
        bool `[B, h, w]`.
    """
    pool_size = check_pool_size(pool_size)
    pooled = tf.nn.max_pool2d(scores[..., None], pool_size, 1, "SAME")[..., 0]
    keep = scores >= pooled
    radius = pool_size // 2
    if not radius:
        return keep
    height, width = tf.shape(scores)[1], tf.shape(scores)[2]
    padded = tf.pad(scores, [[0, 0], [radius, radius], [radius, radius]], constant_values=float("-inf"))
    earlier = [(dy, dx) for dy in range(-radius, 0) for dx in range(-radius, radius + 1)]
    earlier += [(0, dx) for dx in range(-radius, 0)]
    shifted = [padded[:, radius + dy: radius + dy + height, radius + dx: radius + dx + width] for dy, dx in earlier]
    return keep & (scores > tf.reduce_max(tf.stack(shifted, 0), 0))
