"""Reference-blob matching of the hypersensitive loss (paper eqs. 1-3).

For every detector patch `O_DET` (all boxes of all images at once):

1. `x0` = centre of mass of `relu(O_DET)` over the patch pixels that lie
   inside the image (eq. 1), or over the `com_weights` pixels when given
   (the hypersensitive loss passes the box's own pixels with
   `recenter_region="box"`). If that mass is `<= epsilon` (an all-zero or
   negative patch) `x0` falls back to the box centre. With `recenter=False`
   (principle (a) off) `x0` is always the box centre.
2. A bank `R_i(x) = exp(-|x - x0|^2 / (2 sigma_i^2))` (peak 1, unnormalised)
   evaluated at the pixel centres of the patch (eq. 2).
3. `R = argmin_i sum_valid (O_DET - R_i)^2` (eq. 3); ties go to the first
   sigma. A single sigma means principle (b) is off.

The result is a *target*: callers pass `stop_gradient` values in and must
treat the output as constant, so no gradient flows through `x0` or the
argmin. `match_reference_blobs_xla` is the same function compiled with
`tf.function(jit_compile=True)`; it nests inside an XLA-compiled train step
and runs per replica under `tf.distribute` strategies.
"""

from __future__ import annotations

import tensorflow as tf


def match_reference_blobs(
    patches: tf.Tensor,
    weights: tf.Tensor,
    box_centres: tf.Tensor,
    sigmas: tf.Tensor,
    recenter: bool = True,
    epsilon: float = 1e-6,
    com_weights: tf.Tensor | None = None,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Best-matching reference blob for every patch.

    Args:
        patches: float `[B, N, P, P]` detector patches (gradient-stopped).
        weights: float `[B, N, P, P]`, 1 for pixels that take part (inside
            the image, valid box), 0 otherwise.
        box_centres: float `[B, N, 2]` box centres `(cy, cx)` in continuous
            patch-local coordinates (patch pixel `j` spans `[j, j + 1)`).
        sigmas: float `[S]` bank of blob standard deviations (heatmap pixels).
        recenter: centre the bank on the centre of mass (principle (a)).
        epsilon: minimum patch mass for the centre of mass to be used.
        com_weights: float `[B, N, P, P]` pixels over which the centre of
            mass is taken (default: `weights`); the matching itself always
            uses `weights`.

    Returns:
        `(reference, centres, sigma_index)`: float `[B, N, P, P]` target
        patches, float `[B, N, 2]` blob centres `x0` (patch-local) and int32
        `[B, N]` index of the chosen sigma.
    """
    dtype = patches.dtype
    size = tf.shape(patches)[-1]
    coords = tf.cast(tf.range(size), dtype) + 0.5  # pixel centres [P]
    if recenter:
        mass = tf.nn.relu(patches) * (weights if com_weights is None else com_weights)
        total = tf.reduce_sum(mass, axis=[-2, -1])
        safe_total = tf.maximum(total, epsilon)
        com_y = tf.reduce_sum(mass * coords[:, None], axis=[-2, -1]) / safe_total
        com_x = tf.reduce_sum(mass * coords[None, :], axis=[-2, -1]) / safe_total
        com = tf.stack([com_y, com_x], axis=-1)
        centres = tf.where((total > epsilon)[..., None], com, box_centres)
    else:
        centres = box_centres
    dy2 = tf.square(coords - centres[..., 0:1])  # [B, N, P]
    dx2 = tf.square(coords - centres[..., 1:2])
    dist2 = dy2[..., :, None] + dx2[..., None, :]  # [B, N, P, P]
    sigmas = tf.cast(sigmas, dtype)
    bank = tf.exp(-dist2[..., None] / (2.0 * tf.square(sigmas)))  # [B,N,P,P,S]
    errors = tf.reduce_sum(
        weights[..., None] * tf.square(patches[..., None] - bank), axis=[2, 3]
    )  # [B, N, S]
    best = tf.argmin(errors, axis=-1, output_type=tf.int32)
    choice = tf.one_hot(best, tf.shape(sigmas)[0], dtype=dtype)  # [B, N, S]
    reference = tf.reduce_sum(bank * choice[:, :, None, None, :], axis=-1)
    return reference, centres, best


match_reference_blobs_xla = tf.function(
    match_reference_blobs, jit_compile=True, reduce_retracing=True
)
