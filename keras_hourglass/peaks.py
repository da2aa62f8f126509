"""Peak finding on heatmaps: the detector's marks.

`find_peaks` turns a batch of one-channel heatmaps into a fixed-size,
score-sorted list of marks `(y, x, score)` in image coordinates. It uses
plain TensorFlow ops only (no numpy, no py_function, no XLA requirement), is
vectorised over the batch and works in a `tf.function` with unknown batch,
height and width, so it can sit inside a TF Serving signature.

Rules (all deterministic):

- Non-finite values (NaN, +-inf) are never marks and never weigh in the
  refinement; neither are pixels outside an optional `mask` (the breast
  mask of `keras_hourglass.breast`, used by evaluation and serving).
- Non-maximum suppression (`keras_hourglass.nms.local_maxima`, shared with the
  hypersensitive loss's top-k blobs): a pixel is a candidate if it equals the
  maximum of its `pool_size x pool_size` window (same padding) AND is strictly
  greater than every neighbour of that window that comes before it in raster
  order (the rows above it, and the pixels to its left on its own row; for
  3x3: up-left, up, up-right, left). A rectangular (more generally, a convex)
  plateau therefore yields exactly one candidate, its top-left pixel.
- The `max_marks` best candidates are taken with `tf.math.top_k`; a
  candidate is a mark only if its score is strictly greater than
  `threshold`. Marks come first, sorted by score descending; the remaining
  rows are padding `(-1, -1, 0)`. `max_marks` may exceed h*w.
- Sub-pixel refinement: per axis, a parabola through the three marginals of
  the 3x3 neighbourhood (row sums for y, column sums for x); the mark moves
  to its vertex, clipped to +-0.5 px. Pixels outside the heatmap (or
  non-finite) count as the neighbourhood's minimum; a flat neighbourhood
  keeps the pixel centre. On Gaussian blobs of sigma 1-3 px this errs by
  <= 0.05 px, where an intensity-weighted centroid (weights = value minus
  the neighbourhood minimum) errs by up to 0.2 px because it is pulled to the
  pixel centre. The score is the unrefined peak value.
- Coordinates are continuous: heatmap pixel j covers [j, j+1) with centre
  j + 0.5; the returned coordinate is the refined heatmap coordinate times
  `stride`, i.e. in the image frame.
"""

from __future__ import annotations

import tensorflow as tf

from keras_hourglass.nms import check_pool_size, local_maxima

_NEG_INF = float("-inf")


def _candidates(heatmap: tf.Tensor, pool_size: int) -> tf.Tensor:
    """Marks non-maxima with -inf.

    Args:
        heatmap: [B, h, w] float32 with non-finite values already set to -inf.
        pool_size: odd window size.

    Returns:
        [B, h, w]: the heatmap value at candidates, -inf elsewhere.
    """
    keep = tf.math.logical_and(local_maxima(heatmap, pool_size), heatmap > _NEG_INF)
    return tf.where(keep, heatmap, tf.fill(tf.shape(heatmap), _NEG_INF))


def _refine(heatmap: tf.Tensor, rows: tf.Tensor, cols: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Sub-pixel offsets of peaks from their 3x3 neighbourhoods.

    Args:
        heatmap: [B, h, w] float32, non-finite values set to -inf.
        rows, cols: [B, K] int32 peak indices.

    Returns:
        (dy, dx), each [B, K] float32 in [-0.5, 0.5].
    """
    width = tf.shape(heatmap)[2]
    padded = tf.pad(heatmap, [[0, 0], [1, 1], [1, 1]], constant_values=_NEG_INF)
    flat = tf.reshape(padded, [tf.shape(heatmap)[0], -1])
    offsets = tf.constant([(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)], tf.int32)  # [9, 2]
    index = (rows[..., None] + 1 + offsets[:, 0]) * (width + 2) + (cols[..., None] + 1 + offsets[:, 1])
    index = tf.clip_by_value(index, 0, tf.maximum(tf.shape(flat)[1] - 1, 0))  # padding rows of empty maps
    values = tf.gather(flat, index, batch_dims=1)  # [B, K, 9]
    finite = tf.math.is_finite(values)
    low = tf.reduce_min(tf.where(finite, values, tf.fill(tf.shape(values), float("inf"))), -1, keepdims=True)
    values = tf.reshape(tf.where(finite, values, tf.broadcast_to(low, tf.shape(values))), [-1, 3, 3])

    def vertex(m: tf.Tensor) -> tf.Tensor:
        # Vertex of the parabola through (-1, m0), (0, m1), (1, m2).
        offset = tf.math.divide_no_nan(0.5 * (m[:, 0] - m[:, 2]), m[:, 0] - 2.0 * m[:, 1] + m[:, 2])
        return tf.clip_by_value(offset, -0.5, 0.5)

    shape = tf.shape(rows)
    dy = tf.reshape(vertex(tf.reduce_sum(values, 2)), shape)
    dx = tf.reshape(vertex(tf.reduce_sum(values, 1)), shape)
    return dy, dx


def find_peaks(
    heatmap,
    max_marks: int = 100,
    threshold=0.0,
    pool_size: int = 3,
    stride=1,
    mask=None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Finds local maxima in a batch of heatmaps (see the module docstring).

    Args:
        heatmap: [B, h, w, 1] float tensor (any float dtype; computed in
            float32). B, h and w may be unknown.
        max_marks: number of rows of the output (a Python int >= 1).
        threshold: float or scalar float tensor; marks need a score > it.
        pool_size: odd non-maximum-suppression window (1 disables NMS).
        stride: heatmap-to-image scale (the model's output stride); a number
            or scalar tensor.
        mask: optional bool `[B, h', w', 1]` (`h' >= h`, `w' >= w`): pixels
            where marks may fall, e.g. `keras_hourglass.breast_mask(image,
            stride)`; elsewhere the heatmap counts as non-finite.

    Returns:
        `(marks, num_marks)`: marks float32 [B, max_marks, 3] of
        `(y, x, score)` in image coordinates, sorted by score descending,
        padded with `(-1, -1, 0)`; num_marks int32 [B].

    Raises:
        ValueError: bad `max_marks`/`pool_size`, or a heatmap whose static
            rank is not 4 or whose static channel count is not 1.
    """
    if isinstance(max_marks, bool) or int(max_marks) != max_marks or max_marks < 1:
        raise ValueError(f"max_marks must be a positive integer, got {max_marks!r}")
    max_marks, pool_size = int(max_marks), check_pool_size(pool_size)
    heatmap = tf.convert_to_tensor(heatmap)
    if heatmap.shape.rank is not None and (heatmap.shape.rank != 4 or heatmap.shape[-1] not in (1, None)):
        raise ValueError(f"heatmap must have shape [B, h, w, 1], got {heatmap.shape}")
    if mask is not None:
        from keras_hourglass.breast import suppress_outside_breast

        heatmap = suppress_outside_breast(heatmap, mask)
    heatmap = tf.cast(heatmap, tf.float32)[..., 0]
    heatmap = tf.where(tf.math.is_finite(heatmap), heatmap, tf.fill(tf.shape(heatmap), _NEG_INF))
    threshold = tf.cast(threshold, tf.float32)
    stride = tf.cast(stride, tf.float32)

    batch, height, width = tf.unstack(tf.shape(heatmap))
    scores = tf.reshape(_candidates(heatmap, pool_size), [batch, -1])
    k = tf.minimum(max_marks, height * width)
    scores, index = tf.math.top_k(scores, k=k, sorted=True)
    padding = [[0, 0], [0, max_marks - k]]
    scores = tf.pad(scores, padding, constant_values=_NEG_INF)
    index = tf.pad(index, padding)
    valid = tf.math.logical_and(scores > threshold, scores > _NEG_INF)

    safe_width = tf.maximum(width, 1)  # an empty heatmap has no marks, but must not divide by 0
    rows, cols = index // safe_width, index % safe_width
    dy, dx = _refine(heatmap, rows, cols)
    y = (tf.cast(rows, tf.float32) + 0.5 + dy) * stride
    x = (tf.cast(cols, tf.float32) + 0.5 + dx) * stride
    minus_one = tf.fill(tf.shape(y), -1.0)
    marks = tf.stack(
        [
            tf.where(valid, y, minus_one),
            tf.where(valid, x, minus_one),
            tf.where(valid, scores, tf.zeros_like(scores)),
        ],
        axis=-1,
    )
    marks = tf.ensure_shape(marks, [None, max_marks, 3])
    num_marks = tf.reduce_sum(tf.cast(valid, tf.int32), axis=1)
    return marks, num_marks
