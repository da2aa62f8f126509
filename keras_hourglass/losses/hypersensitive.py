"""The hypersensitive loss of the paper (section 2.3, equations 1-6).

    L = L_DET + omega * L_BG

`y_true` is a box tensor `[B, MAX_BOXES, 4]` `(y0, x0, y1, x1)` in continuous
*heatmap* pixels (pixel `i` spans `[i, i + 1)`), padding rows `-1`; `y_pred`
is the one-channel heatmap `[B, h, w, 1]` of any Keras model. `call` returns
one loss per image `[B]`; Keras' default `sum_over_batch_size` reduction
averages them (and scales per replica under `tf.distribute`, so N replicas
give the loss and gradients of one device with the same global batch).
The loss works in `model.compile(jit_compile=True)` and `False`, and under
`MirroredStrategy` with its own XLA-compiled matching; Keras'
`model.compile(jit_compile=True)` itself fails under `MirroredStrategy` for
any loss (variables on another device; keras-team/keras#19005), so compile
distributed models with `jit_compile=False`.

Decisions (fixed by the project; see also `boxes.py`, `matching.py`,
`background.py`):

- Detector patch `O_DET`: `patch_size x patch_size` heatmap pixels centred
  on the box centre on the integer grid (top-left `floor(centre) -
  patch_size // 2`), extracted for all boxes at once with one gather. Patch
  pixels outside the image (boxes near the border) take no part in
  anything: not in the centre of mass, the matching or the loss.
- Target `R` (eqs. 1-3): bank of peak-1 Gaussians centred on the centre of
  mass of `relu(O_DET)` (box centre if the patch mass is ~0, or always with
  `recenter=False`); the bank member closest in L2 wins. With
  `recenter_region="box"` the centre of mass is taken over the patch pixels
  whose centres lie inside the box only: the lesion is inside its box, and
  over the whole patch the model's own responses beside the box pulled the
  reference out of the box for 23 % of the positive boxes of a trained model
  (README, detection quality). `R` is a target:
  no gradient flows through `x0` or the argmin, only through `O_DET`.
  The matching runs under `tf.function(jit_compile=True)` unless
  `jit_compile=False`.
- `L_DET` (eq. 4) = sum over valid boxes of sum over valid patch pixels of
  `(O_DET - R)^2`. Overlapping boxes: each box is compared with its own
  reference on its own patch (shared pixels count once per box).
- `L_BG` (eq. 5) = sum over pixels of `(M(k) * O)^2`; `M(k)` is 0 inside
  every detector patch of the image and inside a `mask_size` window around
  each of the top-k predicted blobs (strictly positive local maxima of the
  gradient-stopped heatmap by `pool_size` max-pool NMS, one pixel per exact
  plateau, excluding those inside a detector patch so that a true detection
  never uses up one of the k slots), 1 elsewhere. No gradient flows
  through the mask.
- Normalisation: both terms are sums over pixels per image (no per-pixel
  mean). A missed blob and a false-positive blob then cost the same at any
  image size, so `omega` is literally "how much cheaper a false positive is
  than a false negative"; with per-pixel means omega=0.01 left the
  background almost unpenalised in an earlier trial (DESIGN.md).
- Images without boxes: `L_DET = 0` and `L_BG` covers the whole image minus
  the top-k windows. An all-zero (or all-negative) patch has no mass: `x0`
  falls back to the box centre, so the loss and its gradient stay finite.
- Bad box rows (NaN, inf, empty or inverted boxes, -1 padding) are ignored;
  a box whose patch lies entirely outside the heatmap contributes nothing.

Each principle can be switched off: `recenter=False` (a), a single sigma
(b), `top_k=0` (c), `omega=1.0` (d).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
import tensorflow as tf

from keras_hourglass.losses import boxes as box_ops
from keras_hourglass.losses.background import background_keep_mask
from keras_hourglass.losses.matching import (
    match_reference_blobs,
    match_reference_blobs_xla,
)


def _positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)


RECENTER_REGIONS = ("patch", "box")
"""Where the centre of mass of principle (a) is taken (see `HypersensitiveLoss`)."""


@keras.saving.register_keras_serializable(package="keras_hourglass")
class HypersensitiveLoss(keras.losses.Loss):
    """Hypersensitive detection loss `L = L_DET + omega * L_BG`.

    Args:
        omega: weight of the background loss, `>= 0` (paper: 0.01;
            1.0 switches principle (d) off).
        top_k: predicted blobs per image excused from the background loss
            (paper: 3; 0 switches principle (c) off).
        patch_size: side of the detector patch `O_DET` in heatmap pixels.
        sigmas: bank of reference blob standard deviations in heatmap pixels
            (one value switches principle (b) off).
        recenter: centre the reference on the predicted blob's centre of
            mass (False switches principle (a) off).
        recenter_region: where the centre of mass is taken: `"patch"` (the
            whole detector patch, the paper's wording) or `"box"` (only the
            patch pixels inside the box).
        mask_size: side of the window masked around each top-k blob
            (default: `patch_size`).
        pool_size: odd max-pool window used to find predicted blobs.
        jit_compile: run the reference-blob matching under
            `tf.function(jit_compile=True)`.
        com_epsilon: a patch whose positive mass is at most this uses the
            box centre instead of its centre of mass.
        name: loss name.
        reduction: Keras reduction over the per-image losses.
        dtype: computation dtype (default `keras.backend.floatx()`).

    The per-image sums make the loss grow with the number of boxes and the
    area of the background; see the module docstring for every decision.
    The XLA-compiled matching works on `[B, MAX_BOXES, P, P]` patches, so it
    compiles once per (batch, MAX_BOXES) shape, whatever the image size.

    Example:

    ```python
    model.compile(optimizer="adam", loss=HypersensitiveLoss(omega=0.01, top_k=3))
    model.fit(images, boxes)  # boxes [B, MAX_BOXES, 4], heatmap pixels, -1 padding
    ```
    """

    def __init__(
        self,
        omega: float = 0.01,
        top_k: int = 3,
        patch_size: int = 32,
        sigmas: Sequence[float] = (1.5, 3.0, 6.0),
        recenter: bool = True,
        mask_size: int | None = None,
        recenter_region: str = "patch",
        pool_size: int = 3,
        jit_compile: bool = True,
        com_epsilon: float = 1e-6,
        name: str = "hypersensitive_loss",
        reduction: str | None = "sum_over_batch_size",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        omega = float(omega)
        if not math.isfinite(omega) or omega < 0:
            raise ValueError(f"omega must be a finite number >= 0; got {omega!r}")
        if isinstance(sigmas, (int, float)):
            sigmas = (sigmas,)
        sigmas = tuple(float(s) for s in sigmas)
        if not sigmas or not all(math.isfinite(s) and s > 0 for s in sigmas):
            raise ValueError(f"sigmas must be a non-empty list of numbers > 0; got {sigmas!r}")
        self.omega = omega
        self.top_k = _positive_int("top_k", top_k, minimum=0)
        self.patch_size = _positive_int("patch_size", patch_size)
        self.sigmas = sigmas
        self.recenter = bool(recenter)
        if recenter_region not in RECENTER_REGIONS:
            raise ValueError(f"recenter_region must be one of {RECENTER_REGIONS}; got {recenter_region!r}")
        self.recenter_region = recenter_region
        self.mask_size = _positive_int(
            "mask_size", self.patch_size if mask_size is None else mask_size
        )
        self.pool_size = _positive_int("pool_size", pool_size)
        if self.pool_size % 2 == 0:
            raise ValueError(f"pool_size must be odd; got {pool_size!r}")
        self.jit_compile = bool(jit_compile)
        self.com_epsilon = float(com_epsilon)

    def components(self, y_true, y_pred) -> dict[str, tf.Tensor]:
        """The two terms of the loss, per image.

        Args:
            y_true: boxes `[B, MAX_BOXES, 4]` in heatmap pixels.
            y_pred: heatmap `[B, h, w, 1]`.

        Returns:
            `{"l_det": [B], "l_bg": [B]}`.
        """
        y_true = tf.convert_to_tensor(y_true, dtype=self.dtype)
        y_pred = tf.convert_to_tensor(y_pred, dtype=self.dtype)
        return self._components(y_true, y_pred)

    def call(self, y_true, y_pred):
        terms = self._components(y_true, y_pred)
        return terms["l_det"] + self.omega * terms["l_bg"]

    def _components(self, y_true, y_pred) -> dict[str, tf.Tensor]:
        boxes = box_ops.check_boxes(y_true)
        heatmap = box_ops.as_heatmap(y_pred)
        height, width = tf.shape(heatmap)[1], tf.shape(heatmap)[2]
        valid = box_ops.box_validity(boxes)
        centres = box_ops.box_centres(boxes, valid)
        origins = box_ops.patch_origins(centres, self.patch_size, height, width)
        patches, inside = box_ops.gather_patches(heatmap, origins, self.patch_size)
        weights = tf.cast(inside & valid[:, :, None, None], heatmap.dtype)
        local_centres = centres - tf.cast(origins, centres.dtype)
        com_weights = None
        if self.recenter and self.recenter_region == "box":
            com_weights = weights * box_ops.inside_box_mask(boxes, origins, self.patch_size)
        match = match_reference_blobs_xla if self.jit_compile else match_reference_blobs
        reference, _, _ = match(
            tf.stop_gradient(patches),
            weights,
            local_centres,
            tf.constant(self.sigmas, heatmap.dtype),
            recenter=self.recenter,
            epsilon=self.com_epsilon,
            com_weights=com_weights,
        )
        reference = tf.stop_gradient(reference)
        l_det = tf.reduce_sum(weights * tf.square(patches - reference), axis=[1, 2, 3])
        keep = background_keep_mask(
            heatmap,
            origins,
            valid,
            self.patch_size,
            self.top_k,
            self.mask_size,
            self.pool_size,
        )
        l_bg = tf.reduce_sum(keep * tf.square(heatmap), axis=[1, 2])
        return {"l_det": l_det, "l_bg": l_bg}

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            omega=self.omega,
            top_k=self.top_k,
            patch_size=self.patch_size,
            sigmas=list(self.sigmas),
            recenter=self.recenter,
            recenter_region=self.recenter_region,
            mask_size=self.mask_size,
            pool_size=self.pool_size,
            jit_compile=self.jit_compile,
            com_epsilon=self.com_epsilon,
        )
        return config
