"""Box and heatmap geometry shared by the heatmap losses.

One implementation of the conventions of `docs/architecture.md`, used by
`HypersensitiveLoss`, `GaussianL2Loss` and (through their outputs) the tests:

- Boxes are `(y0, x0, y1, x1)` float32 in continuous *heatmap* pixel
  coordinates: pixel index `i` spans `[i, i + 1)` and its centre is `i + 0.5`.
- A box row is valid iff its four values are finite, `y1 > y0`, `x1 > x0`
  and it is not the padding row `(-1, -1, -1, -1)`. Invalid rows are
  replaced by zeros before any arithmetic so that NaN/inf padding can never
  leak into the loss.
- The fixed-size patch of a box is centred on the box centre on the integer
  pixel grid: its top-left pixel is `floor(centre) - patch_size // 2`.

Everything here is vectorised over batch and boxes (no Python loop, no
`tf.map_fn`) and works with dynamic heatmap sizes, eagerly, in `tf.function`
and under XLA.
"""

from __future__ import annotations

import tensorflow as tf


def box_validity(boxes: tf.Tensor) -> tf.Tensor:
    """Which box rows are real boxes.

    Args:
        boxes: float `[B, N, 4]` boxes `(y0, x0, y1, x1)`.

    Returns:
        bool `[B, N]`.
    """
    finite = tf.reduce_all(tf.math.is_finite(boxes), axis=-1)
    padding = tf.reduce_all(tf.equal(boxes, -1.0), axis=-1)
    y0, x0, y1, x1 = tf.unstack(boxes, num=4, axis=-1)
    return finite & ~padding & (y1 > y0) & (x1 > x0)


def box_centres(boxes: tf.Tensor, valid: tf.Tensor) -> tf.Tensor:
    """Box centres `(cy, cx)`, zero for invalid rows.

    Args:
        boxes: float `[B, N, 4]`.
        valid: bool `[B, N]` from `box_validity`.

    Returns:
        float `[B, N, 2]`.
    """
    safe = tf.where(valid[..., None], boxes, tf.zeros_like(boxes))
    return 0.5 * (safe[..., 0:2] + safe[..., 2:4])


def patch_origins(
    centres: tf.Tensor, patch_size: int, height: tf.Tensor, width: tf.Tensor
) -> tf.Tensor:
    """Top-left pixel `floor(centre) - patch_size // 2` of each patch.

    Centres are first clipped to `[-patch_size, size + patch_size]`, which
    leaves every patch that touches the image unchanged and keeps absurd
    coordinates (1e30) from overflowing int32.

    Args:
        centres: float `[B, N, 2]` `(cy, cx)`.
        patch_size: side of the square patch, in heatmap pixels.
        height: heatmap height (scalar int32 tensor).
        width: heatmap width (scalar int32 tensor).

    Returns:
        int32 `[B, N, 2]` `(row, col)`.
    """
    limits = tf.cast(tf.stack([height, width]), centres.dtype) + patch_size
    clipped = tf.clip_by_value(centres, -float(patch_size), limits)
    return tf.cast(tf.floor(clipped), tf.int32) - patch_size // 2


def gather_patches(
    heatmap: tf.Tensor, origins: tf.Tensor, patch_size: int
) -> tuple[tf.Tensor, tf.Tensor]:
    """Extract all square patches at once with one batched gather.

    Pixels of a patch that fall outside the heatmap are gathered from the
    clipped index (any finite value) and flagged in `inside`; callers must
    give them no weight. Gradients flow into `heatmap` (scatter-add).

    Args:
        heatmap: float `[B, h, w]`.
        origins: int32 `[B, N, 2]` top-left pixels from `patch_origins`.
        patch_size: side `P` of the patches.

    Returns:
        `(patches, inside)`: float `[B, N, P, P]` and bool `[B, N, P, P]`.
    """
    shape = tf.shape(heatmap)
    batch, height, width = shape[0], shape[1], shape[2]
    offsets = tf.range(patch_size, dtype=tf.int32)
    rows = origins[..., 0:1] + offsets  # [B, N, P]
    cols = origins[..., 1:2] + offsets  # [B, N, P]
    inside = ((rows >= 0) & (rows < height))[..., :, None] & (
        (cols >= 0) & (cols < width)
    )[..., None, :]
    rows = tf.clip_by_value(rows, 0, height - 1)
    cols = tf.clip_by_value(cols, 0, width - 1)
    flat_index = rows[..., :, None] * width + cols[..., None, :]  # [B,N,P,P]
    flat = tf.reshape(heatmap, [batch, -1])
    patches = tf.gather(flat, tf.reshape(flat_index, [batch, -1]), batch_dims=1)
    return tf.reshape(patches, tf.shape(flat_index)), inside


def inside_box_mask(boxes: tf.Tensor, origins: tf.Tensor, patch_size: int) -> tf.Tensor:
    """Patch pixels whose centres lie inside their box (borders included).

    Args:
        boxes: float `[B, N, 4]` `(y0, x0, y1, x1)` heatmap pixels.
        origins: int32 `[B, N, 2]` top-left pixels from `patch_origins`.
        patch_size: side `P` of the patches.

    Returns:
        float `[B, N, P, P]` (boxes' dtype): 1 inside, 0 outside (also for
        NaN or padding rows).
    """
    centres = tf.cast(tf.range(patch_size), boxes.dtype) + 0.5
    rows = tf.cast(origins[..., 0:1], boxes.dtype) + centres  # [B, N, P]
    cols = tf.cast(origins[..., 1:2], boxes.dtype) + centres
    in_rows = (rows >= boxes[..., 0:1]) & (rows <= boxes[..., 2:3])
    in_cols = (cols >= boxes[..., 1:2]) & (cols <= boxes[..., 3:4])
    return tf.cast(in_rows[..., :, None] & in_cols[..., None, :], boxes.dtype)


def interval_masks(starts: tf.Tensor, size: int, length: tf.Tensor) -> tf.Tensor:
    """1-D indicator of `[start, start + size)` over `range(length)`.

    Args:
        starts: int32 `[B, N]` first index of each interval.
        size: interval length.
        length: number of pixels along the axis (scalar int32 tensor).

    Returns:
        float32 `[B, N, length]`.
    """
    index = tf.range(length, dtype=tf.int32)
    starts = starts[..., None]
    return tf.cast((index >= starts) & (index < starts + size), tf.float32)


def rectangle_union(row_masks: tf.Tensor, col_masks: tf.Tensor) -> tf.Tensor:
    """Union of axis-aligned rectangles given separably.

    Rectangle `n` of image `b` is `row_masks[b, n, :] x col_masks[b, n, :]`;
    a rectangle that should not count has an all-zero row (or column) mask.

    Args:
        row_masks: float `[B, N, h]` of 0/1.
        col_masks: float `[B, N, w]` of 0/1.

    Returns:
        bool `[B, h, w]`, True where at least one rectangle covers the pixel.
    """
    return tf.einsum("bnh,bnw->bhw", row_masks, col_masks) > 0.5


def gaussian_profiles(
    centres: tf.Tensor, sigma: float, height: tf.Tensor, width: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """Separable factors of unnormalised Gaussians (peak 1) at pixel centres.

    `exp(-|x - c|^2 / (2 sigma^2)) = gy[row] * gx[col]`.

    Args:
        centres: float `[B, N, 2]` `(cy, cx)` continuous coordinates.
        sigma: standard deviation in heatmap pixels.
        height: heatmap height (scalar int32 tensor).
        width: heatmap width (scalar int32 tensor).

    Returns:
        `(gy, gx)`: float `[B, N, h]` and `[B, N, w]`.
    """
    dtype = centres.dtype
    ys = tf.cast(tf.range(height), dtype) + 0.5
    xs = tf.cast(tf.range(width), dtype) + 0.5
    scale = -0.5 / (sigma * sigma)
    gy = tf.exp(scale * tf.square(ys - centres[..., 0:1]))
    gx = tf.exp(scale * tf.square(xs - centres[..., 1:2]))
    return gy, gx


def gaussian_target(
    centres: tf.Tensor, valid: tf.Tensor, sigma: float, height: tf.Tensor, width: tf.Tensor
) -> tf.Tensor:
    """Pixel-wise maximum of peak-1 Gaussians at the valid box centres.

    Args:
        centres: float `[B, N, 2]`.
        valid: bool `[B, N]`.
        sigma: Gaussian standard deviation in heatmap pixels.
        height: heatmap height (scalar int32 tensor).
        width: heatmap width (scalar int32 tensor).

    Returns:
        float `[B, h, w]`, all zeros for an image without valid boxes.
    """
    gy, gx = gaussian_profiles(centres, sigma, height, width)
    gy = gy * tf.cast(valid, gy.dtype)[..., None]
    blobs = gy[..., :, None] * gx[..., None, :]  # [B, N, h, w]
    # Concatenating a zero map makes the max well defined when N == 0.
    zero = tf.zeros_like(blobs[:, :1])
    return tf.reduce_max(tf.concat([zero, blobs], axis=1), axis=1)


def as_heatmap(y_pred: tf.Tensor) -> tf.Tensor:
    """`[B, h, w, 1]` (or `[B, h, w]`) prediction -> `[B, h, w]`.

    Args:
        y_pred: the model's one-channel heatmap.

    Returns:
        float `[B, h, w]`.

    Raises:
        ValueError: for any other rank or more than one channel.
    """
    rank = y_pred.shape.rank
    if rank == 4:
        if y_pred.shape[-1] not in (1, None):
            raise ValueError(
                "heatmap losses expect a one-channel heatmap [B, h, w, 1]; "
                f"got shape {y_pred.shape}"
            )
        return y_pred[..., 0]
    if rank == 3:
        return y_pred
    raise ValueError(f"heatmap losses expect y_pred [B, h, w, 1]; got shape {y_pred.shape}")


def check_boxes(y_true: tf.Tensor) -> tf.Tensor:
    """Validate the static shape of the box tensor.

    Args:
        y_true: boxes `[B, MAX_BOXES, 4]`.

    Returns:
        `y_true` unchanged.

    Raises:
        ValueError: if the shape is not `[B, N, 4]`.
    """
    if y_true.shape.rank != 3 or y_true.shape[-1] not in (4, None):
        raise ValueError(
            "heatmap losses expect y_true = boxes [B, MAX_BOXES, 4] "
            f"(y0, x0, y1, x1) in heatmap pixels; got shape {y_true.shape}"
        )
    return y_true


def target_centres(y_true, y_pred, dtype) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """The valid box centres of `y_true` and the heatmap size of `y_pred`, for Gaussian-target losses.

    Args:
        y_true: boxes `[B, MAX_BOXES, 4]` in heatmap pixels.
        y_pred: heatmap `[B, h, w, 1]` (only its shape is used).
        dtype: computation dtype.

    Returns:
        `(centres [B, N, 2], valid [B, N], height, width)`.
    """
    boxes = check_boxes(tf.convert_to_tensor(y_true, dtype=dtype))
    heatmap = as_heatmap(tf.convert_to_tensor(y_pred, dtype=dtype))
    valid = box_validity(boxes)
    return box_centres(boxes, valid), valid, tf.shape(heatmap)[1], tf.shape(heatmap)[2]

