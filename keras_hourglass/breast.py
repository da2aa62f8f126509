"""The breast (tissue) mask: where marks may fall.

A preprocessed mammogram (`keras_hourglass.data.dicom.read_mammogram`: VOI
applied, MONOCHROME1 inverted, so tissue is bright and air ~0) has tissue
wherever its intensity exceeds `TISSUE_THRESHOLD`. The mask is computed from
those pixels alone, with plain TensorFlow ops, at the heatmap's resolution:

1. average-pool the image over `stride x stride` cells (one cell per heatmap
   pixel; cells cut by the image edge average their in-image pixels);
2. tissue = cell mean > `TISSUE_THRESHOLD`;
3. close small gaps (dark fat inside the breast, a dark duct) and keep the
   skin line: a max-pool of `CLOSING` cells (dilation) followed by a
   min-pool of the same window (erosion), then a final dilation by
   `MARGIN` cells so a finding on the skin line stays inside.

Because it is a function of the preprocessed pixels, training (tissue crops),
evaluation (`MarkPredictor`) and the exported signatures compute the same
mask from the same pixels: a mark outside it is dropped everywhere. The
zero padding added to reach the model's input multiple is air, so marks
never fall in it either.
"""

from __future__ import annotations

import tensorflow as tf

TISSUE_THRESHOLD = 0.05
"""Mean intensity above which a cell counts as tissue (air is ~0 after VOI)."""
CLOSING = 5
"""Window (heatmap cells) of the morphological closing that fills gaps inside the breast."""
MARGIN = 1
"""Cells the closed mask is grown by, so findings on the skin line keep their marks."""


def breast_mask(image, stride: int = 1) -> tf.Tensor:
    """Tissue mask of preprocessed images at heatmap resolution.

    Args:
        image: float `[B, H, W, 1]` preprocessed images in [0, 1] (padding zeros allowed).
        stride: heatmap stride of the model (the mask has `ceil(H/stride) x ceil(W/stride)` cells).

    Returns:
        bool `[B, ceil(H/stride), ceil(W/stride), 1]`.
    """
    image = tf.cast(tf.convert_to_tensor(image), tf.float32)
    stride = int(stride)
    cells = tf.nn.avg_pool2d(image, stride, stride, "SAME") if stride > 1 else image
    tissue = tf.cast(cells > TISSUE_THRESHOLD, tf.float32)
    closed = -tf.nn.max_pool2d(-tf.nn.max_pool2d(tissue, CLOSING, 1, "SAME"), CLOSING, 1, "SAME")
    grown = tf.nn.max_pool2d(closed, 2 * MARGIN + 1, 1, "SAME") if MARGIN else closed
    return grown > 0.5


def suppress_outside_breast(heatmap, mask) -> tf.Tensor:
    """Sets the heatmap to -inf outside the mask (`find_peaks` never marks non-finite pixels).

    Args:
        heatmap: float `[B, h, w, 1]`.
        mask: bool `[B, h', w', 1]` with `h' >= h`, `w' >= w` (cropped to the heatmap).

    Returns:
        float32 `[B, h, w, 1]`.
    """
    heatmap = tf.cast(tf.convert_to_tensor(heatmap), tf.float32)
    shape = tf.shape(heatmap)
    mask = mask[:, : shape[1], : shape[2], :]
    return tf.where(mask, heatmap, tf.fill(shape, float("-inf")))
