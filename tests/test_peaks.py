"""Tests of keras_hourglass.peaks.find_peaks."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf

from keras_hourglass.peaks import find_peaks

H, W = 32, 40
# (y, x, height, sigma) in heatmap pixels, continuous coordinates.
BLOBS = [
    [(5.3, 7.8, 1.0, 1.5), (20.6, 30.2, 0.6, 2.0), (25.0, 10.0, 0.3, 1.0), (12.2, 21.7, 0.45, 3.0)],
    [(16.1, 20.9, 0.8, 1.5), (3.9, 35.4, 0.5, 1.2)],
]


def blob_image(blobs, height=H, width=W):
    yy, xx = np.mgrid[0:height, 0:width] + 0.5
    image = np.zeros((height, width), np.float32)
    for cy, cx, peak, sigma in blobs:
        image += peak * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    return image


@pytest.fixture(scope="module")
def blob_batch():
    return np.stack([blob_image(b) for b in BLOBS])[..., None]


def _sorted_expected(blobs, stride=1):
    order = sorted(blobs, key=lambda b: -b[2])
    return np.array([(b[0] * stride, b[1] * stride) for b in order])


def test_planted_blobs_found_at_planted_positions(blob_batch):
    marks, num = find_peaks(blob_batch, max_marks=8, threshold=0.1)
    marks, num = marks.numpy(), num.numpy()
    assert marks.shape == (2, 8, 3) and marks.dtype == np.float32
    assert num.tolist() == [4, 2]
    for b, blobs in enumerate(BLOBS):
        expected = _sorted_expected(blobs)
        found = marks[b, : num[b], :2]
        np.testing.assert_allclose(found, expected, atol=0.25)
        scores = marks[b, : num[b], 2]
        assert np.all(np.diff(scores) <= 0)
        # Score = the peak pixel's value: the blob height seen from a pixel centre <= 0.71 px away.
        for score, (_, _, peak, sigma) in zip(scores, sorted(blobs, key=lambda b: -b[2])):
            assert peak * np.exp(-0.5 / (2 * sigma**2)) - 1e-3 <= score <= peak + 1e-3


def test_stride_maps_to_image_frame(blob_batch):
    marks1, num1 = find_peaks(blob_batch, max_marks=8, threshold=0.1)
    marks4, num4 = find_peaks(blob_batch, max_marks=8, threshold=0.1, stride=4)
    np.testing.assert_array_equal(num1.numpy(), num4.numpy())
    for b, blobs in enumerate(BLOBS):
        n = num4.numpy()[b]
        np.testing.assert_allclose(marks4.numpy()[b, :n, :2], _sorted_expected(blobs, 4), atol=1.0)
        np.testing.assert_allclose(marks4.numpy()[b, :n, :2], 4 * marks1.numpy()[b, :n, :2], rtol=1e-6)
        np.testing.assert_allclose(marks4.numpy()[b, :n, 2], marks1.numpy()[b, :n, 2])


def test_pixel_centre_convention():
    heatmap = np.zeros((1, 5, 6, 1), np.float32)
    heatmap[0, 2, 3, 0] = 1.0  # isolated pixel: symmetric neighbourhood, no sub-pixel shift
    marks, num = find_peaks(heatmap, max_marks=1, stride=4)
    assert num.numpy().tolist() == [1]
    np.testing.assert_allclose(marks.numpy()[0, 0], [2.5 * 4, 3.5 * 4, 1.0])


@pytest.mark.parametrize("top,left", [(2, 3), (0, 0), (6, 5)])
def test_rectangular_plateau_gives_one_mark(top, left):
    heatmap = np.zeros((1, 10, 10, 1), np.float32)
    heatmap[0, top : top + 4, left : left + 5, 0] = 0.7
    marks, num = find_peaks(heatmap, max_marks=10)
    assert num.numpy().tolist() == [1]
    y, x, score = marks.numpy()[0, 0]
    assert score == pytest.approx(0.7)
    # The mark lies on the plateau.
    assert top <= y <= top + 4 and left <= x <= left + 5


def test_plateau_with_larger_pool_gives_one_mark():
    heatmap = np.zeros((1, 12, 12, 1), np.float32)
    heatmap[0, 3:9, 2:10, 0] = 1.0
    _, num = find_peaks(heatmap, max_marks=10, pool_size=5)
    assert num.numpy().tolist() == [1]


def test_threshold_drops_low_peaks_and_counts(blob_batch):
    marks, num = find_peaks(blob_batch, max_marks=8, threshold=0.55)
    assert num.numpy().tolist() == [2, 1]
    m = marks.numpy()
    assert np.all(m[0, :2, 2] > 0.55) and np.all(m[1, :1, 2] > 0.55)
    # Scalar-tensor threshold (as the serving signature passes it) gives the same result.
    marks_t, num_t = find_peaks(blob_batch, max_marks=8, threshold=tf.constant(0.55))
    np.testing.assert_array_equal(num_t.numpy(), num.numpy())
    np.testing.assert_array_equal(marks_t.numpy(), m)


def test_padding_rows_and_max_marks_larger_than_map():
    heatmap = np.zeros((2, 3, 3, 1), np.float32)
    heatmap[0, 1, 1, 0] = 2.0
    marks, num = find_peaks(heatmap, max_marks=20)
    assert marks.shape == (2, 20, 3)
    assert num.numpy().tolist() == [1, 0]
    m = marks.numpy()
    np.testing.assert_allclose(m[0, 0], [1.5, 1.5, 2.0])
    np.testing.assert_array_equal(m[0, 1:], np.tile([-1.0, -1.0, 0.0], (19, 1)))
    np.testing.assert_array_equal(m[1], np.tile([-1.0, -1.0, 0.0], (20, 1)))


def test_max_marks_keeps_the_best(blob_batch):
    marks, num = find_peaks(blob_batch, max_marks=2, threshold=0.1)
    assert num.numpy().tolist() == [2, 2]
    np.testing.assert_allclose(marks.numpy()[0, :, :2], _sorted_expected(BLOBS[0])[:2], atol=0.25)


def test_all_zero_heatmap_gives_no_marks():
    marks, num = find_peaks(np.zeros((3, 8, 8, 1), np.float32), max_marks=4, threshold=0.0)
    assert num.numpy().tolist() == [0, 0, 0]
    np.testing.assert_array_equal(marks.numpy(), np.tile([-1.0, -1.0, 0.0], (3, 4, 1)))


def test_non_finite_values_are_not_marks():
    heatmap = blob_image([(4.5, 4.5, 1.0, 1.0)], 10, 10)[None, ..., None].copy()
    heatmap[0, 8, 8, 0] = np.nan
    heatmap[0, 1, 8, 0] = np.inf
    marks, num = find_peaks(heatmap, max_marks=4, threshold=0.1)
    assert num.numpy().tolist() == [1]
    assert np.all(np.isfinite(marks.numpy()))
    np.testing.assert_allclose(marks.numpy()[0, 0, :2], [4.5, 4.5], atol=0.05)


def test_inside_tf_function_with_unknown_shapes(blob_batch):
    @tf.function(
        input_signature=[tf.TensorSpec([None, None, None, 1], tf.float32), tf.TensorSpec([], tf.float32)],
        jit_compile=False,
    )
    def serve(heatmap, threshold):
        return find_peaks(heatmap, max_marks=6, threshold=threshold, stride=4)

    graph = serve.get_concrete_function().graph
    op_types = {op.type for op in graph.get_operations()}
    assert not op_types & {"PyFunc", "EagerPyFunc", "PyFuncStateless"}
    marks, num = serve(tf.constant(blob_batch), tf.constant(0.1))
    assert marks.shape == (2, 6, 3)
    eager_marks, eager_num = find_peaks(blob_batch, max_marks=6, threshold=0.1, stride=4)
    np.testing.assert_array_equal(num.numpy(), eager_num.numpy())
    np.testing.assert_allclose(marks.numpy(), eager_marks.numpy(), rtol=1e-6)
    # Another size through the same concrete function (no retrace needed).
    small, small_num = serve(tf.zeros([3, 5, 7, 1]), tf.constant(0.0))
    assert small.shape == (3, 6, 3) and small_num.numpy().tolist() == [0, 0, 0]


@pytest.mark.parametrize(
    "kwargs,shape",
    [
        ({"pool_size": 4}, (1, 4, 4, 1)),
        ({"max_marks": 0}, (1, 4, 4, 1)),
        ({}, (1, 4, 4, 2)),
        ({}, (4, 4)),
    ],
)
def test_bad_arguments_raise(kwargs, shape):
    with pytest.raises(ValueError):
        find_peaks(np.zeros(shape, np.float32), **kwargs)


@pytest.mark.parametrize("pool_size", [3, 5, 7])
def test_loss_blobs_are_the_detector_marks(pool_size):
    """The hypersensitive loss forgives exactly the top-k marks `find_peaks` reports (one NMS)."""
    from keras_hourglass.losses.background import top_k_blobs

    rng = np.random.default_rng(pool_size)
    # Quantised values: many exact ties and plateaus, where the NMS rules are tested hardest.
    heatmaps = (np.round(rng.uniform(-0.3, 1.0, (6, 24, 20)) * 6) / 6).astype(np.float32)
    heatmaps[0] = 0.0  # no blob at all
    k = 12
    pixels, found = top_k_blobs(tf.constant(heatmaps), tf.zeros(heatmaps.shape, tf.bool), k, pool_size)
    marks, num_marks = find_peaks(heatmaps[..., None], max_marks=k, threshold=0.0, pool_size=pool_size)
    pixels, found, marks = pixels.numpy(), found.numpy(), marks.numpy()
    np.testing.assert_array_equal(found.sum(axis=1), num_marks.numpy())
    assert num_marks.numpy()[0] == 0 and num_marks.numpy()[1:].min() > 0
    for b in range(len(heatmaps)):
        for slot in range(int(num_marks[b])):
            (row, col), (y, x, score) = pixels[b, slot], marks[b, slot]
            assert heatmaps[b, row, col] == score, (b, slot)
            assert row <= y <= row + 1 and col <= x <= col + 1, (b, slot, row, col, y, x)  # refined within its pixel
