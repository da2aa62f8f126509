"""Naive NumPy reference of the heatmap losses: one Python loop per box.

Slow and written for reading, not for training: it follows the paper's
equations box by box and pixel by pixel with the same documented decisions
as `HypersensitiveLoss` / `GaussianL2Loss`, but shares no code with them.
The tests use it to check the vectorised TF implementation on random boxes
and predictions; `benchmarks/loss_step.py` times it. No TensorFlow import.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _valid_boxes(boxes: np.ndarray) -> list[tuple[float, float]]:
    """Centres `(cy, cx)` of the valid rows of one image's `[N, 4]` boxes."""
    centres = []
    for y0, x0, y1, x1 in boxes:
        if not np.all(np.isfinite([y0, x0, y1, x1])):
            continue
        if y0 == x0 == y1 == x1 == -1 or y1 <= y0 or x1 <= x0:
            continue
        centres.append(((y0 + y1) / 2.0, (x0 + x1) / 2.0))
    return centres


def _patch(heatmap: np.ndarray, centre, size: int):
    """Patch values (NaN outside the image) and its top-left pixel."""
    h, w = heatmap.shape
    r0 = int(np.floor(centre[0])) - size // 2
    c0 = int(np.floor(centre[1])) - size // 2
    patch = np.full((size, size), np.nan)
    for i in range(size):
        for j in range(size):
            if 0 <= r0 + i < h and 0 <= c0 + j < w:
                patch[i, j] = heatmap[r0 + i, c0 + j]
    return patch, r0, c0


def reference_components(
    boxes: np.ndarray,
    heatmap: np.ndarray,
    *,
    patch_size: int = 32,
    sigmas: Sequence[float] = (1.5, 3.0, 6.0),
    recenter: bool = True,
    top_k: int = 3,
    mask_size: int | None = None,
    pool_size: int = 3,
    com_epsilon: float = 1e-6,
) -> tuple[np.ndarray, np.ndarray]:
    """`L_DET` and `L_BG` per image, computed box by box.

    Args:
        boxes: `[B, N, 4]` `(y0, x0, y1, x1)` heatmap pixels, -1 padding.
        heatmap: `[B, h, w, 1]` or `[B, h, w]`.
        patch_size, sigmas, recenter, top_k, mask_size, pool_size,
            com_epsilon: as in `HypersensitiveLoss`.

    Returns:
        `(l_det, l_bg)`, float64 `[B]` each.
    """
    heatmap = np.asarray(heatmap, np.float64)
    if heatmap.ndim == 4:
        heatmap = heatmap[..., 0]
    mask_size = patch_size if mask_size is None else mask_size
    l_det = np.zeros(len(heatmap))
    l_bg = np.zeros(len(heatmap))
    for b, image in enumerate(heatmap):
        h, w = image.shape
        keep = np.ones((h, w), bool)
        for centre in _valid_boxes(np.asarray(boxes[b], np.float64)):
            patch, r0, c0 = _patch(image, centre, patch_size)
            keep[max(r0, 0) : max(r0 + patch_size, 0), max(c0, 0) : max(c0 + patch_size, 0)] = False
            inside = ~np.isnan(patch)
            # eq. 1: centre of mass of relu(O_DET) over the pixels in the image
            x0 = (centre[0] - r0, centre[1] - c0)
            if recenter:
                mass = total = sy = sx = 0.0
                for i in range(patch_size):
                    for j in range(patch_size):
                        if inside[i, j]:
                            mass = max(patch[i, j], 0.0)
                            total += mass
                            sy += mass * (i + 0.5)
                            sx += mass * (j + 0.5)
                if total > com_epsilon:
                    x0 = (sy / total, sx / total)
            # eqs. 2-4: bank of blobs, the closest one is the target
            best = None
            for sigma in sigmas:
                ref = np.zeros((patch_size, patch_size))
                for i in range(patch_size):
                    for j in range(patch_size):
                        d2 = (i + 0.5 - x0[0]) ** 2 + (j + 0.5 - x0[1]) ** 2
                        ref[i, j] = np.exp(-d2 / (2.0 * sigma**2))
                err = float(np.sum((patch[inside] - ref[inside]) ** 2))
                if best is None or err < best:
                    best = err
            l_det[b] += best
        # eq. 5: top-k positive local maxima outside the detector patches
        half = pool_size // 2
        peaks = []
        for r in range(h):
            for c in range(w):
                v = image[r, c]
                if v <= 0 or not keep[r, c]:
                    continue
                window = image[max(r - half, 0) : r + half + 1, max(c - half, 0) : c + half + 1]
                if v < window.max():
                    continue
                earlier = [(r + dy, c + dx) for dy in range(-half, 1) for dx in range(-half, half + 1)
                           if (dy, dx) < (0, 0)]  # the window's pixels before (r, c) in raster order
                if any(0 <= rr < h and 0 <= cc < w and image[rr, cc] >= v for rr, cc in earlier):
                    continue
                peaks.append((-v, r * w + c, r, c))
        for _, _, r, c in sorted(peaks)[:top_k]:
            r0, c0 = r - mask_size // 2, c - mask_size // 2
            keep[max(r0, 0) : max(r0 + mask_size, 0), max(c0, 0) : max(c0 + mask_size, 0)] = False
        l_bg[b] = float(np.sum(image[keep] ** 2))
    return l_det, l_bg


def reference_hypersensitive(boxes, heatmap, *, omega: float = 0.01, **kwargs) -> np.ndarray:
    """`L_DET + omega * L_BG` per image (see `reference_components`)."""
    l_det, l_bg = reference_components(boxes, heatmap, **kwargs)
    return l_det + omega * l_bg


def reference_gaussian_l2(boxes, heatmap, *, sigma: float = 2.0) -> np.ndarray:
    """Newell baseline per image, computed box by box.

    Args:
        boxes: `[B, N, 4]` heatmap pixels, -1 padding.
        heatmap: `[B, h, w, 1]` or `[B, h, w]`.
        sigma: target blob standard deviation.

    Returns:
        float64 `[B]`.
    """
    heatmap = np.asarray(heatmap, np.float64)
    if heatmap.ndim == 4:
        heatmap = heatmap[..., 0]
    out = np.zeros(len(heatmap))
    for b, image in enumerate(heatmap):
        h, w = image.shape
        ys, xs = np.mgrid[0:h, 0:w] + 0.5
        target = np.zeros((h, w))
        for cy, cx in _valid_boxes(np.asarray(boxes[b], np.float64)):
            blob = np.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2.0 * sigma**2))
            target = np.maximum(target, blob)
        out[b] = float(np.sum((image - target) ** 2))
    return out
