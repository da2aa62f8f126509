"""Scale-aware geometry, the focal loss and the breast mask (library and exported signature)."""

from __future__ import annotations

import numpy as np
import pytest

from keras_hourglass.errors import ArgumentError, InputError
from keras_hourglass.training.config import TrainConfig
from keras_hourglass.training.geometry import REFERENCE_LONG_SIDE, resolve_geometry


def resolve(long_side, stride=4, multiple=32, **settings):
    return resolve_geometry(TrainConfig(**settings), long_side=long_side, stride=stride, input_multiple=multiple)


def test_same_physical_patch_at_256_and_1536():
    small, large = resolve(256), resolve(1536)
    # At the reference scale reference pixels are pixels; at 256 px everything is 6x smaller.
    assert (large.patch_size, large.sigmas, large.crop_size) == (72, (6.0, 9.0, 12.0, 18.0), 768)
    assert (small.patch_size, small.sigmas, small.target_sigma) == (12, (1.0, 1.5, 2.0, 3.0), 2.0)
    assert small.crop_size == 128  # 768 / 6
    assert resolve(256, crop_size=512).crop_size == 96  # 85.3, rounded to the input multiple 32
    # The same fraction of the image: patch / heatmap long side is equal at both scales.
    assert small.patch_size / (256 / 4) == pytest.approx(large.patch_size / (1536 / 4))
    assert (small.mask_size, large.mask_size) == (6, 36)  # masks default to half the patch
    # ... so L_BG sees the same share of a crop at every scale: patch + 3 masks cover a quarter.
    assert small.masked_share() == pytest.approx(large.masked_share()) == pytest.approx(0.246, abs=0.001)
    # A stride-2 model sees twice the heatmap pixels for the same physical extent.
    assert resolve(256, stride=2, multiple=16).patch_size == 24


def test_crop_is_clamped_to_the_image():
    geometry = resolve(192, crop_size=4096)
    assert geometry.crop_clamped and geometry.crop_size == 192
    assert resolve(200, crop_size=4096).crop_size == 192  # the largest multiple of 32 inside 200
    assert not resolve(REFERENCE_LONG_SIDE).crop_clamped


@pytest.mark.parametrize("setting", [{"patch_size": 8}, {"sigmas": (1.0, 6.0)}, {"mask_size": 10},
                                     {"target_sigma": 2.0}])
def test_degenerate_sizes_are_one_line_errors(setting):
    with pytest.raises(ArgumentError) as info:
        resolve(256, **setting)
    assert info.value.path == next(iter(setting)) and "resolves to" in str(info.value) and "\n" not in str(info.value)


def test_images_smaller_than_the_input_multiple_are_refused():
    with pytest.raises(ArgumentError, match="^long_side: images of long side 16 px are smaller than the model's input "
                                            "multiple"):
        resolve(16)


def test_focal_loss_prefers_a_peak_at_the_centre():
    import tensorflow as tf

    from keras_hourglass.losses import PenaltyReducedFocalLoss

    loss = PenaltyReducedFocalLoss(sigma=1.5)
    boxes = tf.constant([[[6.0, 6.0, 10.0, 10.0], [-1, -1, -1, -1]]])
    target = loss.target(boxes, tf.zeros([1, 16, 16, 1]))
    assert float(target[0, 8, 8]) == 1.0 and float(tf.reduce_sum(tf.cast(target >= 1.0, tf.int32))) == 1
    low = tf.fill([1, 16, 16, 1], -6.0)
    peak = tf.tensor_scatter_nd_update(low, [[0, 8, 8, 0]], [6.0])
    shifted = tf.tensor_scatter_nd_update(low, [[0, 2, 2, 0]], [6.0])
    values = [float(loss(boxes, y)) for y in (peak, low, shifted)]
    assert values[0] < values[1] and values[0] < values[2]  # a peak on the centre beats none and a wrong one
    # Gradient: pushes the centre up and the background down; finite everywhere.
    with tf.GradientTape() as tape:
        y = tf.Variable(tf.zeros([1, 16, 16, 1]))
        value = loss(boxes, y)
    grad = tape.gradient(value, y)
    assert np.all(np.isfinite(grad.numpy())) and float(grad[0, 8, 8, 0]) < 0 < float(grad[0, 0, 0, 0])
    # No boxes: a finite background-only loss; serialisation round trip.
    assert np.isfinite(float(loss(-tf.ones([1, 2, 4]), y)))
    clone = PenaltyReducedFocalLoss.from_config(loss.get_config())
    assert clone.get_config() == loss.get_config()


def mammogram_like(height=64, width=48):
    """A bright half-ellipse 'breast' on the left, air elsewhere; a bright spot in the air too."""
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.full((height, width), 0.02, np.float32)
    inside = ((yy - height / 2) / (height / 2)) ** 2 + (xx / (width * 0.6)) ** 2 < 1
    image[inside] = 0.5
    return image, inside


def test_breast_mask_covers_the_breast_and_not_the_air():
    from keras_hourglass.breast import breast_mask

    image, inside = mammogram_like()
    mask = breast_mask(image[None, ..., None], stride=4).numpy()[0, ..., 0]
    assert mask.shape == (16, 12)
    cells_inside = inside.reshape(16, 4, 12, 4).mean(axis=(1, 3))
    assert mask[cells_inside > 0.5].all()  # every tissue cell is kept
    assert not mask[:, -3:].any()  # the air far from the breast is not
    padded = np.pad(image, [(0, 0), (0, 16)])[None, ..., None]  # zero padding (input multiple) is air
    assert not breast_mask(padded, stride=4).numpy()[0, :, 12:, 0].any()


def test_find_peaks_and_evaluation_drop_marks_outside_the_breast():
    import keras

    from keras_hourglass.evaluation.predict import predict_marks
    from keras_hourglass.peaks import find_peaks
    from keras_hourglass.breast import breast_mask

    image, _ = mammogram_like()
    heatmap = np.zeros((1, 16, 12, 1), np.float32)
    heatmap[0, 8, 2, 0] = 0.7  # in the breast
    heatmap[0, 3, 10, 0] = 0.9  # in the air: the strongest peak
    mask = breast_mask(image[None, ..., None], stride=4)
    marks, count = find_peaks(heatmap, max_marks=4, threshold=0.1, stride=4, mask=mask)
    assert int(count[0]) == 1 and marks[0, 0, 2].numpy() == pytest.approx(0.7)
    marks, count = find_peaks(heatmap, max_marks=4, threshold=0.1, stride=4)
    assert int(count[0]) == 2  # without the mask both

    # MarkPredictor: a model that outputs that heatmap for any image.
    inputs = keras.Input((None, None, 1))
    constant = keras.layers.Lambda(lambda x: 0.0 * x[:, ::4, ::4, :] + heatmap)(inputs)
    model = keras.Model(inputs, constant)
    element = {"image": image[None, ..., None], "boxes": np.zeros((1, 0, 4)), "box_labels": np.zeros((1, 0), "S1"),
               "height": np.array([64]), "width": np.array([48])}
    record = predict_marks(model, [element], stride=4, threshold=0.1)[0]
    assert len(record.marks) == 1 and record.marks[0, 2] == pytest.approx(0.7)
    assert len(predict_marks(model, [element], stride=4, threshold=0.1, breast_only=False)[0].marks) == 2


def test_exported_signature_drops_marks_outside_the_breast():
    import keras
    import tensorflow as tf

    from export.signatures import HourglassDetector

    image, _ = mammogram_like()
    heatmap = np.zeros((1, 16, 12, 1), np.float32)
    heatmap[0, 8, 2, 0] = 0.7
    heatmap[0, 3, 10, 0] = 0.9
    inputs = keras.Input((None, None, 1))
    model = keras.Model(inputs, keras.layers.Lambda(lambda x: 0.0 * x[:, ::4, ::4, :] + heatmap)(inputs))
    detector = HourglassDetector(model, stride=4, input_multiple=4, max_marks=4, threshold=0.1)
    out = detector.detect(tf.constant(image[None, ..., None]))
    assert int(out["num_marks"][0]) == 1 and float(out["marks"][0, 0, 2]) == pytest.approx(0.7)
    assert int(HourglassDetector(model, stride=4, input_multiple=4, max_marks=4, threshold=0.1,
                                 breast_only=False).detect(tf.constant(image[None, ..., None]))["num_marks"][0]) == 2
