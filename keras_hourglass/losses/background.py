"""Background mask `M(k)` of the hypersensitive loss (paper eq. 5).

`M(k)` is 0 inside every detector patch and inside a `mask_size` window
around each of the top-k predicted blobs, 1 elsewhere.

Predicted blobs (computed on the gradient-stopped heatmap, so the mask is a
constant for the optimiser):

- a blob is a strictly positive local maximum by `keras_hourglass.nms.local_maxima`,
  the same non-maximum suppression as the detector's `find_peaks` (so the
  forgiven blobs are the marks the detector would report): the pixel equals
  the `pool_size x pool_size` max-pool of the heatmap and, on an exact
  plateau, only the first pixel in raster order is kept (strictly greater
  than every earlier pixel of its window), so a blob whose top spans 2 or 4
  equal pixels uses one slot, not four;
- candidates inside a detector patch are excluded: a true detection must not
  use up one of the k "allowed false positive" slots;
- the k best remaining candidates come from `tf.math.top_k` (stable: equal
  scores are taken in raster order); the candidate list is padded with -inf
  so that k may exceed the number of pixels.

The window of a blob at pixel `p` spans `[p - mask_size // 2,
p - mask_size // 2 + mask_size)` on each axis (the detector-patch convention
with centre `p + 0.5`). All masks are built separably (row and column masks
combined with one einsum), vectorised over batch and blobs.
"""

from __future__ import annotations

import tensorflow as tf

from keras_hourglass.losses import boxes as box_ops
from keras_hourglass.nms import local_maxima


def blob_candidates(scores: tf.Tensor, excluded: tf.Tensor, pool_size: int = 3) -> tf.Tensor:
    """Local maxima usable as top-k blobs.

    Args:
        scores: float `[B, h, w]` heatmap (gradient-stopped).
        excluded: bool `[B, h, w]` pixels that may not hold a candidate.
        pool_size: odd max-pool window of the non-maximum suppression.

    Returns:
        bool `[B, h, w]`.
    """
    return local_maxima(scores, pool_size) & (scores > 0) & ~excluded


def top_k_blobs(
    scores: tf.Tensor, excluded: tf.Tensor, k: int, pool_size: int = 3
) -> tuple[tf.Tensor, tf.Tensor]:
    """The k highest blobs outside the excluded pixels.

    Args:
        scores: float `[B, h, w]` heatmap (gradient-stopped).
        excluded: bool `[B, h, w]`.
        k: number of blobs (>= 1).
        pool_size: odd max-pool window of the non-maximum suppression.

    Returns:
        `(pixels, found)`: int32 `[B, k, 2]` `(row, col)` and bool `[B, k]`
        (False for slots left empty because there were fewer candidates).
    """
    batch, width = tf.shape(scores)[0], tf.shape(scores)[2]
    candidates = blob_candidates(scores, excluded, pool_size)
    neg_inf = tf.constant(float("-inf"), scores.dtype)
    flat = tf.reshape(tf.where(candidates, scores, neg_inf), [batch, -1])
    flat = tf.concat([flat, tf.fill([batch, k], neg_inf)], axis=1)
    values, index = tf.math.top_k(flat, k=k, sorted=True)
    found = values > neg_inf
    index = tf.where(found, index, tf.zeros_like(index))
    return tf.stack([index // width, index % width], axis=-1), found


def background_keep_mask(
    heatmap: tf.Tensor,
    patch_origins: tf.Tensor,
    box_valid: tf.Tensor,
    patch_size: int,
    top_k: int,
    mask_size: int,
    pool_size: int = 3,
) -> tf.Tensor:
    """`M(k)`: 1 where the background loss applies, 0 where it is masked.

    Args:
        heatmap: float `[B, h, w]` (gradient is stopped here).
        patch_origins: int32 `[B, N, 2]` detector-patch top-left pixels.
        box_valid: bool `[B, N]`.
        patch_size: detector patch side.
        top_k: number of predicted blobs to forgive (0: none).
        mask_size: side of the window masked around each forgiven blob.
        pool_size: odd max-pool window of the non-maximum suppression.

    Returns:
        float `[B, h, w]` of 0/1 (constant: no gradient).
    """
    scores = tf.stop_gradient(heatmap)
    height, width = tf.shape(scores)[1], tf.shape(scores)[2]
    valid = tf.cast(box_valid, tf.float32)[..., None]
    row_masks = box_ops.interval_masks(patch_origins[..., 0], patch_size, height) * valid
    col_masks = box_ops.interval_masks(patch_origins[..., 1], patch_size, width)
    covered = box_ops.rectangle_union(row_masks, col_masks)
    if top_k > 0:
        pixels, found = top_k_blobs(scores, covered, top_k, pool_size)
        starts = pixels - mask_size // 2
        found = tf.cast(found, tf.float32)[..., None]
        blob_rows = box_ops.interval_masks(starts[..., 0], mask_size, height) * found
        blob_cols = box_ops.interval_masks(starts[..., 1], mask_size, width)
        covered = box_ops.rectangle_union(
            tf.concat([row_masks, blob_rows], axis=1),
            tf.concat([col_masks, blob_cols], axis=1),
        )
    return tf.cast(~covered, heatmap.dtype)
