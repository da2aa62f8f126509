"""HypersensitiveLoss / GaussianL2Loss: the paper's principles, exact values, edge cases.

Small heatmaps built in NumPy; tolerances are stated next to each assertion.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf

from keras_hourglass.losses import GaussianL2Loss, HypersensitiveLoss
from keras_hourglass.losses.matching import match_reference_blobs
from loss_reference import (
    reference_components,
    reference_gaussian_l2,
)


def blob(shape, centre, sigma, height=1.0):
    """Peak-`height` Gaussian at a continuous centre, sampled at pixel centres."""
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]] + 0.5
    d2 = (ys - centre[0]) ** 2 + (xs - centre[1]) ** 2
    return height * np.exp(-d2 / (2.0 * sigma**2))


def as_pred(*maps):
    """Stack [h, w] maps into a float32 [B, h, w, 1] prediction."""
    return np.stack(maps)[..., None].astype("float32")


def as_boxes(*per_image, max_boxes=4):
    """Lists of (y0, x0, y1, x1) per image -> float32 [B, max_boxes, 4], -1 padding."""
    out = np.full((len(per_image), max_boxes, 4), -1.0, "float32")
    for b, rows in enumerate(per_image):
        for n, row in enumerate(rows):
            out[b, n] = row
    return out


def comps(loss, boxes, pred):
    terms = loss.components(boxes, pred)
    return terms["l_det"].numpy(), terms["l_bg"].numpy()


SHAPE = (64, 64)
BOX = (28.0, 28.0, 36.0, 36.0)  # centre (32, 32)


# ---------------------------------------------------------------- principle (a)
def test_a_shift_invariance_vs_gaussian_l2_and_recenter_off():
    boxes = as_boxes([BOX])
    centred = as_pred(blob(SHAPE, (32.0, 32.0), 3.0))
    shifted = as_pred(blob(SHAPE, (35.0, 30.0), 3.0))  # 3 px down, 2 px left
    loss = HypersensitiveLoss(patch_size=32, sigmas=(1.5, 3.0, 6.0))
    det_c, _ = comps(loss, boxes, centred)
    det_s, _ = comps(loss, boxes, shifted)
    # Recentred: the blob is found where it is; only the patch truncation of
    # the shifted blob's far tail (> 11 px = 3.7 sigma away) differs.
    assert abs(det_s[0] - det_c[0]) < 1e-3
    assert det_s[0] < 1e-3

    l2 = GaussianL2Loss(sigma=3.0)
    l2_c, l2_s = l2(boxes, centred).numpy(), l2(boxes, shifted).numpy()
    assert l2_c < 1e-6
    # Analytically 2*pi*sigma^2*(1 - exp(-d^2 / (4 sigma^2))) with d^2 = 13: ~17.
    assert l2_s > 10.0

    fixed = HypersensitiveLoss(patch_size=32, sigmas=(1.5, 3.0, 6.0), recenter=False)
    det_fc, _ = comps(fixed, boxes, centred)
    det_fs, _ = comps(fixed, boxes, shifted)
    assert det_fc[0] < 1e-6
    assert det_fs[0] > 5.0


def test_a_box_region_keeps_the_reference_inside_the_box():
    """recenter_region="box": a response beside the box cannot pull the reference out of the box."""
    boxes = as_boxes([BOX])  # (28, 28)-(36, 36)
    lesion = blob(SHAPE, (33.0, 31.0), 1.5)  # inside the box, off its centre
    beside = blob(SHAPE, (32.0, 42.0), 1.5, 2.0)  # outside the box, inside the 24-px patch, stronger
    pred = as_pred(lesion + beside)
    common = dict(patch_size=24, sigmas=(1.5,), omega=0.0, jit_compile=False)
    patch_loss = HypersensitiveLoss(recenter_region="patch", **common)
    box_loss = HypersensitiveLoss(recenter_region="box", **common)
    # The box region re-centres on the lesion: L_DET is then only the response beside the box.
    det_box, _ = comps(box_loss, boxes, pred)
    np.testing.assert_allclose(det_box[0], np.sum(blob(SHAPE, (32.0, 42.0), 1.5, 2.0)[20:44, 20:44] ** 2),
                               rtol=0.05)
    # Over the whole patch the centre of mass lands between the two, outside the box (x > 36).
    det_patch, _ = comps(patch_loss, boxes, pred)
    assert det_patch[0] > det_box[0] + 1.0
    # A lesion inside the box only: both re-centre on it (the box region's centre of mass is pulled
    # slightly towards the box by the tail cut at the box border: L_DET 0.018 instead of 0).
    only = as_pred(lesion)
    assert comps(patch_loss, boxes, only)[0][0] < 1e-4
    assert comps(box_loss, boxes, only)[0][0] < 0.05
    fixed = HypersensitiveLoss(recenter=False, **common)
    assert comps(fixed, boxes, only)[0][0] > 0.5  # not re-centring at all costs far more
    assert box_loss.get_config()["recenter_region"] == "box"
    assert HypersensitiveLoss.from_config(box_loss.get_config()).recenter_region == "box"
    with pytest.raises(ValueError, match="recenter_region"):
        HypersensitiveLoss(recenter_region="image")


def test_inside_box_mask_hand_computed():
    from keras_hourglass.losses.boxes import inside_box_mask

    mask = inside_box_mask(tf.constant([[[2.0, 3.0, 5.0, 4.0], [-1.0, -1.0, -1.0, -1.0]]]),
                           tf.constant([[[1, 1], [0, 0]]]), 6).numpy()
    expected = np.zeros((6, 6))
    expected[1:4, 2] = 1.0  # centres 2.5, 3.5, 4.5 in [2, 5]; 3.5 in [3, 4]
    np.testing.assert_array_equal(mask[0, 0], expected)
    assert mask[0, 1].sum() == 0  # a padding row covers nothing


# ---------------------------------------------------------------- principle (b)
def test_b_size_invariance_with_bank_and_not_with_one_sigma():
    boxes = as_boxes([BOX], [BOX])
    pred = as_pred(blob(SHAPE, (32.0, 32.0), 1.5), blob(SHAPE, (32.0, 32.0), 6.0))
    det, _ = comps(HypersensitiveLoss(patch_size=32, sigmas=(1.5, 3.0, 6.0)), boxes, pred)
    np.testing.assert_allclose(det, 0.0, atol=1e-6)
    det1, _ = comps(HypersensitiveLoss(patch_size=32, sigmas=(1.5,)), boxes, pred)
    assert det1[0] < 1e-6  # the matching size
    assert det1[1] > 5.0  # the wide blob is penalised without the bank
    det3, _ = comps(HypersensitiveLoss(patch_size=32, sigmas=(3.0,)), boxes, pred)
    assert np.all(det3 > 5.0)


# ---------------------------------------------------------------- principle (c)
FALSE_BLOBS = [((44.0, 12.0), 0.9), ((12.0, 44.0), 0.8), ((48.0, 48.0), 0.7)]


def _fp_image(n_false):
    image = blob(SHAPE, (12.0, 12.0), 1.5, 1.0)  # the true detection (highest peak)
    for centre, height in FALSE_BLOBS[:n_false]:
        image = image + blob(SHAPE, centre, 1.5, height)
    return image


def test_c_top_k_false_positives_are_free_and_the_next_one_is_not():
    boxes = as_boxes([(10.0, 10.0, 14.0, 14.0)] * 1)
    pred = as_pred(*[_fp_image(n) for n in range(4)])
    boxes = np.repeat(boxes, 4, axis=0)
    loss = HypersensitiveLoss(patch_size=16, top_k=2, sigmas=(1.5,))
    _, bg = comps(loss, boxes, pred)
    # Windows of 16 px around sigma-1.5 blobs leave tails of exp(-64/2.25)^2.
    assert abs(bg[1] - bg[0]) < 1e-6
    assert abs(bg[2] - bg[0]) < 1e-6
    # The (k+1)-th blob (the lowest) is penalised: ~pi * sigma^2 * height^2.
    third = np.sum(blob(SHAPE, FALSE_BLOBS[2][0], 1.5, FALSE_BLOBS[2][1]) ** 2)
    np.testing.assert_allclose(bg[3] - bg[0], third, rtol=1e-3)
    assert bg[3] - bg[0] > 3.0

    _, bg0 = comps(HypersensitiveLoss(patch_size=16, top_k=0, sigmas=(1.5,)), boxes, pred)
    for n in range(1, 4):
        every = sum(np.sum(blob(SHAPE, c, 1.5, h) ** 2) for c, h in FALSE_BLOBS[:n])
        np.testing.assert_allclose(bg0[n] - bg0[0], every, rtol=1e-3)


def test_c_plateau_blob_uses_one_slot():
    # A blob centred on a pixel corner has 4 equal maxima: still one blob.
    image = blob(SHAPE, (40.0, 40.0), 1.5) + blob(SHAPE, (16.0, 48.0), 1.5, 0.5)
    loss = HypersensitiveLoss(patch_size=8, mask_size=16, top_k=2, sigmas=(1.5,))
    _, bg = comps(loss, as_boxes([]), as_pred(image))
    assert bg[0] < 1e-6  # both blobs excused (16-px windows leave ~1e-12 tails)
    _, bg1 = comps(HypersensitiveLoss(patch_size=8, mask_size=16, top_k=1), as_boxes([]), as_pred(image))
    assert bg1[0] > 0.5  # only one slot: the 0.5-high blob (sum of squares ~1.8) counts


# ---------------------------------------------------------------- principle (d)
def test_d_total_is_det_plus_omega_bg():
    rng = np.random.default_rng(0)
    pred = rng.normal(0.0, 0.3, (3, 32, 40, 1)).astype("float32")
    boxes = as_boxes([(4, 4, 9, 9), (20, 30, 26, 38)], [], [(0, 0, 3, 3)])
    for omega in (0.0, 0.01, 0.5, 1.0, 3.0):
        loss = HypersensitiveLoss(omega=omega, patch_size=8, reduction=None)
        det, bg = comps(loss, boxes, pred)
        total = loss(boxes, pred).numpy()
        np.testing.assert_allclose(total, det + omega * bg, rtol=1e-6)
        assert np.all(bg > 0) and np.all(det[[0, 2]] > 0)
        mean = HypersensitiveLoss(omega=omega, patch_size=8)(boxes, pred).numpy()
        np.testing.assert_allclose(mean, np.mean(det + omega * bg), rtol=1e-6)


# ---------------------------------------------------------------- exact values
def _tiny_case():
    """8x8 heatmap, one box with centre (3, 3), patch 4 -> patch pixels rows/cols 1..4."""
    image = np.zeros((8, 8))
    image[3, 3] = 1.0  # the detection, patch-local (2, 2)
    image[7, 0] = 0.5  # a false positive outside the patch
    image[0, 7] = -0.2  # negative background: never a blob
    return as_boxes([(2.0, 2.0, 4.0, 4.0)]), as_pred(image)


def test_hand_computed_tiny_case():
    boxes, pred = _tiny_case()
    e = np.exp
    # recenter: x0 = centre of mass = centre of pixel (2, 2) = (2.5, 2.5).
    # R(i, j) = exp(-((i - 2)^2 + (j - 2)^2) / (2 sigma^2)); O = 1 at (2, 2) only.
    # L_DET = sum_{(i,j) != (2,2)} R^2 = a^2 - 1, a = sum_{d in -2..1} exp(-d^2 / sigma^2).
    a1 = e(-4.0) + 2 * e(-1.0) + 1.0  # sigma = 1
    a03 = e(-4.0 / 0.09) + 2 * e(-1.0 / 0.09) + 1.0  # sigma = 0.3
    loss = HypersensitiveLoss(patch_size=4, sigmas=(1.0,), top_k=1, mask_size=2, omega=0.1)
    det, bg = comps(loss, boxes, pred)
    np.testing.assert_allclose(det, [a1**2 - 1.0], rtol=1e-5)
    # top-1 blob = (7, 0) with window rows 6..7, cols -1..0; -0.2 stays.
    np.testing.assert_allclose(bg, [0.04], rtol=1e-5)
    np.testing.assert_allclose(loss(boxes, pred).numpy(), a1**2 - 1.0 + 0.1 * 0.04, rtol=1e-5)
    # The bank picks the closer sigma.
    det2, _ = comps(HypersensitiveLoss(patch_size=4, sigmas=(1.0, 0.3)), boxes, pred)
    np.testing.assert_allclose(det2, [min(a1, a03) ** 2 - 1.0], rtol=1e-4, atol=1e-9)
    # top_k = 0: every background pixel counts.
    _, bg0 = comps(HypersensitiveLoss(patch_size=4, sigmas=(1.0,), top_k=0), boxes, pred)
    np.testing.assert_allclose(bg0, [0.25 + 0.04], rtol=1e-5)
    # recenter off: x0 = box centre (2.0, 2.0) patch-local, a pixel corner.
    # R = exp(-(b_i + b_j) / 2), b = (i - 1.5)^2 in {2.25, .25, .25, 2.25}.
    c = 2 * e(-2.25) + 2 * e(-0.25)
    r22 = e(-0.25)
    det3, _ = comps(HypersensitiveLoss(patch_size=4, sigmas=(1.0,), recenter=False), boxes, pred)
    np.testing.assert_allclose(det3, [c**2 - r22**2 + (1.0 - r22) ** 2], rtol=1e-5)


def test_gaussian_l2_hand_computed():
    boxes, pred = _tiny_case()
    ys, xs = np.mgrid[0:8, 0:8] + 0.5
    target = np.exp(-((ys - 3.0) ** 2 + (xs - 3.0) ** 2) / (2 * 2.0**2))
    expected = np.sum((pred[0, ..., 0] - target) ** 2)
    np.testing.assert_allclose(GaussianL2Loss(sigma=2.0)(boxes, pred).numpy(), expected, rtol=1e-5)


# ---------------------------------------------------------------- gradients
def test_gradient_is_two_residual_on_patch_and_target_is_constant():
    rng = np.random.default_rng(1)
    image = blob((24, 24), (11.3, 12.6), 2.0) + rng.uniform(-0.1, 0.3, (24, 24))
    pred = tf.Variable(as_pred(image))
    boxes = as_boxes([(9.0, 10.0, 13.0, 14.0)])  # centre (11, 12) -> patch rows 7..14, cols 8..15
    omega = 0.25
    loss = HypersensitiveLoss(patch_size=8, sigmas=(1.0, 2.0, 4.0), omega=omega, top_k=0)
    with tf.GradientTape() as tape:
        value = loss(boxes, pred)
    grad = tape.gradient(value, pred).numpy()[0, ..., 0]
    assert np.all(np.isfinite(grad)) and np.abs(grad).max() > 0.01

    patch = image[7:15, 8:16].astype("float32")
    reference, _, _ = match_reference_blobs(
        tf.constant(patch[None, None]),
        tf.ones((1, 1, 8, 8)),
        tf.constant([[[11.0 - 7.0, 12.0 - 8.0]]]),
        tf.constant([1.0, 2.0, 4.0]),
    )
    expected = 2.0 * (patch - reference.numpy()[0, 0])
    np.testing.assert_allclose(grad[7:15, 8:16], expected, rtol=1e-4, atol=1e-5)
    outside = np.ones((24, 24), bool)
    outside[7:15, 8:16] = False
    np.testing.assert_allclose(grad[outside], 2.0 * omega * image[outside], rtol=1e-4, atol=1e-6)


def test_top_k_window_gets_no_gradient():
    boxes, pred = _tiny_case()
    var = tf.Variable(pred)
    loss = HypersensitiveLoss(patch_size=4, sigmas=(1.0,), top_k=1, mask_size=2, omega=0.5)
    with tf.GradientTape() as tape:
        value = loss(boxes, var)
    grad = tape.gradient(value, var).numpy()[0, ..., 0]
    assert grad[7, 0] == 0.0  # excused false positive
    np.testing.assert_allclose(grad[0, 7], 2 * 0.5 * -0.2, rtol=1e-5)


# ---------------------------------------------------------------- edge cases
def test_images_without_boxes():
    rng = np.random.default_rng(2)
    pred = rng.normal(0, 0.5, (2, 16, 16, 1)).astype("float32")
    boxes = as_boxes([], [])
    det, bg = comps(HypersensitiveLoss(top_k=0), boxes, pred)
    np.testing.assert_array_equal(det, 0.0)
    np.testing.assert_allclose(bg, np.sum(pred**2, axis=(1, 2, 3)), rtol=1e-5)
    # zero box rows at all (MAX_BOXES = 0) also work
    det0, bg0 = comps(HypersensitiveLoss(top_k=0), np.zeros((2, 0, 4), "float32"), pred)
    np.testing.assert_array_equal(det0, 0.0)
    np.testing.assert_allclose(bg0, bg, rtol=1e-6)
    np.testing.assert_allclose(GaussianL2Loss(reduction=None)(boxes, pred).numpy(), bg, rtol=1e-5)


def test_bad_box_rows_are_ignored():
    rng = np.random.default_rng(3)
    pred = rng.normal(0, 0.5, (1, 16, 16, 1)).astype("float32")
    good = as_boxes([(4, 4, 8, 8)])
    bad = as_boxes(
        [(4, 4, 8, 8), (np.nan, 1, 5, 5), (1, 1, np.inf, 5), (5, 5, 5, 9), (9, 9, 3, 3)]
        , max_boxes=6
    )
    for loss in (HypersensitiveLoss(patch_size=6), GaussianL2Loss()):
        np.testing.assert_allclose(loss(bad, pred).numpy(), loss(good, pred).numpy(), rtol=1e-6)
    # boxes far outside the heatmap touch nothing
    far = as_boxes([(4, 4, 8, 8), (1e30, 1e30, 2e30, 2e30), (-500, -500, -490, -490)])
    loss = HypersensitiveLoss(patch_size=6)
    np.testing.assert_allclose(loss(far, pred).numpy(), loss(good, pred).numpy(), rtol=1e-6)


def test_border_boxes_match_reference_and_are_finite():
    rng = np.random.default_rng(4)
    pred = (rng.uniform(-0.2, 1.0, (1, 20, 20, 1))).astype("float32")
    boxes = as_boxes([(0, 0, 2, 2), (17, 18, 20, 20), (-3, 8, 1, 12)])
    kwargs = dict(patch_size=8, sigmas=(1.0, 3.0), top_k=1, mask_size=4)
    det, bg = comps(HypersensitiveLoss(**kwargs), boxes, pred)
    ref_det, ref_bg = reference_components(boxes, pred, **kwargs)
    np.testing.assert_allclose(det, ref_det, rtol=1e-4)
    np.testing.assert_allclose(bg, ref_bg, rtol=1e-4)
    assert np.all(np.isfinite(det)) and det[0] > 0


def test_all_zero_prediction_is_finite_with_finite_gradient():
    boxes = as_boxes([(4, 4, 8, 8), (10, 10, 14, 14)], [])
    var = tf.Variable(np.zeros((2, 16, 16, 1), "float32"))
    loss = HypersensitiveLoss(patch_size=6, sigmas=(1.0, 2.0))
    with tf.GradientTape() as tape:
        value = loss(boxes, var)
    grad = tape.gradient(value, var).numpy()
    det, bg = comps(loss, boxes, var)
    assert np.all(np.isfinite(grad)) and np.isfinite(value.numpy())
    # x0 falls back to the box centre; the narrowest blob is the closest to 0.
    ref_det, _ = reference_components(boxes, var.numpy(), patch_size=6, sigmas=(1.0, 2.0))
    np.testing.assert_allclose(det, ref_det, rtol=1e-5)
    assert det[0] > 0 and det[1] == 0 and np.all(bg == 0)
    assert np.abs(grad[0]).max() > 0  # pulls the detection patch up


def test_rejects_bad_arguments_and_shapes():
    with pytest.raises(ValueError):
        HypersensitiveLoss(omega=-1)
    with pytest.raises(ValueError):
        HypersensitiveLoss(sigmas=())
    with pytest.raises(ValueError):
        HypersensitiveLoss(pool_size=2)
    with pytest.raises(ValueError):
        HypersensitiveLoss(top_k=-1)
    with pytest.raises(ValueError):
        GaussianL2Loss(sigma=0)
    with pytest.raises(ValueError, match="one-channel"):
        HypersensitiveLoss()(as_boxes([]), np.zeros((1, 8, 8, 2), "float32"))
    with pytest.raises(ValueError, match="MAX_BOXES"):
        HypersensitiveLoss()(np.zeros((1, 4), "float32"), np.zeros((1, 8, 8, 1), "float32"))


# ---------------------------------------------------------------- vectorised == naive
def _random_case(seed, batch=3, height=40, width=48, max_boxes=5):
    rng = np.random.default_rng(seed)
    boxes = np.full((batch, max_boxes, 4), -1.0, "float32")
    pred = rng.normal(0.0, 0.05, (batch, height, width))
    for b in range(batch):
        for n in range(rng.integers(0, max_boxes + 1)):
            cy, cx = rng.uniform(-2, height + 2), rng.uniform(-2, width + 2)
            hh, ww = rng.uniform(1, 8, 2)
            boxes[b, n] = [cy - hh / 2, cx - ww / 2, cy + hh / 2, cx + ww / 2]
            pred[b] += blob((height, width), (cy + rng.normal(0, 2), cx + rng.normal(0, 2)), rng.uniform(1, 4))
        for _ in range(rng.integers(0, 5)):
            pred[b] += blob((height, width), rng.uniform(0, [height, width]), rng.uniform(1, 3), rng.uniform(0.2, 1))
    return boxes, pred[..., None].astype("float32")


@pytest.mark.parametrize("seed", [10, 11, 12])
def test_vectorised_loss_matches_naive_per_box_reference(seed):
    boxes, pred = _random_case(seed)
    settings = [
        dict(patch_size=12, sigmas=(1.0, 2.0, 4.0), top_k=2, mask_size=8),
        dict(patch_size=9, sigmas=(2.0,), recenter=False, top_k=0, pool_size=5),
    ]
    for kwargs in settings:
        det, bg = comps(HypersensitiveLoss(**kwargs), boxes, pred)
        ref_det, ref_bg = reference_components(boxes, pred, **kwargs)
        np.testing.assert_allclose(det, ref_det, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(bg, ref_bg, rtol=1e-4, atol=1e-5)
    l2 = GaussianL2Loss(sigma=2.5, reduction=None)(boxes, pred).numpy()
    np.testing.assert_allclose(l2, reference_gaussian_l2(boxes, pred, sigma=2.5), rtol=1e-4)


def test_xla_matching_agrees_with_plain_and_in_tf_function():
    boxes, pred = _random_case(20, batch=2)
    xla = HypersensitiveLoss(patch_size=12, jit_compile=True, reduction=None)
    plain = HypersensitiveLoss(patch_size=12, jit_compile=False, reduction=None)
    a, b = xla(boxes, pred).numpy(), plain(boxes, pred).numpy()
    np.testing.assert_allclose(a, b, rtol=1e-5)

    @tf.function(
        jit_compile=True,
        input_signature=[tf.TensorSpec([None, None, 4]), tf.TensorSpec([None, None, None, 1])],
    )
    def whole(y_true, y_pred):  # the whole loss under XLA, dynamic shapes, nested jit
        return xla(y_true, y_pred)

    np.testing.assert_allclose(whole(boxes, pred).numpy(), b, rtol=1e-5)


def test_k_larger_than_the_heatmap_and_float16_predictions():
    rng = np.random.default_rng(5)
    pred = rng.uniform(-0.5, 1.0, (2, 4, 5, 1)).astype("float32")
    boxes = as_boxes([(1, 1, 2, 2)], [])
    kwargs = dict(patch_size=2, sigmas=(0.5, 1.0), top_k=50, mask_size=1)
    det, bg = comps(HypersensitiveLoss(**kwargs), boxes, pred)
    ref_det, ref_bg = reference_components(boxes, pred, **kwargs)
    np.testing.assert_allclose(det, ref_det, rtol=1e-5)
    np.testing.assert_allclose(bg, ref_bg, rtol=1e-5, atol=1e-7)
    half = HypersensitiveLoss(**kwargs, reduction=None)(boxes, pred.astype("float16")).numpy()
    assert half.dtype == np.float32
    np.testing.assert_allclose(half, det + 0.01 * bg, rtol=1e-2)
