"""pipeline.py: balance, patch crops, positives-only boxes, padding, determinism, distribution."""

import collections

import numpy as np
import pytest
import tensorflow as tf

from keras_hourglass import contract
from keras_hourglass.data import pipeline, records

STRIDE = 4
MULTIPLE = 16
PATCH = 32


def _write(prep, split, stratum, chunk, examples):
    path = prep / split / contract.shard_file_name(stratum, chunk)
    records.write_records_atomic(path, [e.SerializeToString() for e in examples])


def _image(rng, height, width, boxes=()):
    """Dark noise with each box painted bright (so crops can be checked by content)."""
    image = rng.uniform(0.0, 0.2, size=(height, width)).astype(np.float32)
    for y0, x0, y1, x1 in boxes:
        image[int(y0):int(y1), int(x0):int(x1)] = 1.0
    return image


def _example(rng, index, height, width, boxes, labels):
    return records.make_example(
        _image(rng, height, width, boxes), boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        box_labels=labels, finding_types=["mass"] * len(labels), patient_hash=f"p{index:015d}",
        study_hash=f"s{index:015d}", image_hash=f"i{index:015d}", laterality="L", view="CC",
        transform=[1.0, 0.0, 0.0, 1.0, 0.0, 0.0])


@pytest.fixture(scope="module")
def prep(tmp_path_factory):
    """Unequal strata: 9 normal (2 files), 4 benign, 3 high_risk, 2 malignant (+ a benign box)."""
    prep = tmp_path_factory.mktemp("prep")
    rng = np.random.default_rng(1)
    shapes = [(64, 80), (70, 90), (48, 40)]
    n = iter(range(1000))
    normals = [_example(rng, next(n), *shapes[i % 3], [], []) for i in range(9)]
    _write(prep, "train", "normal", 0, normals[:5])
    _write(prep, "train", "normal", 1, normals[5:])
    _write(prep, "train", "benign", 0, [
        _example(rng, next(n), 64, 80, [[10, 12, 20, 24]], ["benign"]) for _ in range(4)])
    _write(prep, "train", "high_risk", 0, [
        _example(rng, next(n), 64, 80, [[40 - i, 50, 48 - i, 60]], ["high_risk"]) for i in range(3)])
    _write(prep, "train", "malignant", 0, [
        _example(rng, next(n), 70, 90, [[30, 60, 42, 70], [2, 2, 8, 8]], ["malignant", "benign"])
        for _ in range(2)])
    _write(prep, "test", "malignant", 0, [
        _example(rng, 500 + i, 50, 60, [[5, 6, 15, 16]], ["malignant"]) for i in range(2)])
    _write(prep, "test", "normal", 0, [_example(rng, 600, 30, 20, [], [])])
    return prep


def _stream(prep, **kwargs):
    args = dict(phase="patch", batch_size=8, stride=STRIDE, input_multiple=MULTIPLE,
                patch_size=PATCH, max_boxes=4, seed=5, with_info=True)
    args.update(kwargs)
    return pipeline.training_dataset(prep, **args)


def test_epoch_is_balanced_over_the_four_strata(prep):
    counts = collections.Counter()
    for _, _, info in _stream(prep, augment=False).take(50):  # 400 images
        counts.update(label.decode() for label in info["label"].numpy())
    total = sum(counts.values())
    assert total == 400
    for stratum in contract.LABELS:
        # 3 binomial standard deviations at n=400, p=0.25 is 0.065.
        assert abs(counts[stratum] / total - 0.25) < 0.07, counts


def test_patch_contains_the_positive_it_was_centred_on_and_benign_is_background(prep):
    seen = collections.Counter()
    for image, boxes, info in _stream(prep, augment=False).take(25):
        image, boxes = image.numpy(), boxes.numpy()
        assert image.shape == (8, PATCH, PATCH, 1) and boxes.shape == (8, 4, 4)
        for img, rows, label in zip(image, boxes, info["label"].numpy()):
            label = label.decode()
            real = rows[rows[:, 0] >= 0]
            assert np.all(rows[len(real):] == -1.0)  # padding rows at the end, all -1
            if label in ("normal", "benign"):
                assert len(real) == 0, (label, rows)  # benign boxes never reach y_true
                continue
            if label == "malignant" and len(real) == 0:
                seen["malignant centred on its benign finding"] += 1
                continue
            assert len(real) == 1
            y0, x0, y1, x1 = real[0] * STRIDE  # back to the image frame (of the patch)
            size = (12, 10) if label == "malignant" else (8, 10)
            # The whole finding is inside the crop: not clipped, so its size is intact.
            np.testing.assert_allclose([y1 - y0, x1 - x0], size)
            assert 0 <= y0 and y1 <= PATCH and 0 <= x0 and x1 <= PATCH
            # ... and the crop shows the painted finding where the box says.
            assert np.all(img[int(y0):int(y1), int(x0):int(x1), 0] == 1.0)
            seen[label] += 1
    assert seen["malignant"] > 5 and seen["high_risk"] > 5, seen


def test_normal_crops_show_tissue_not_background(tmp_path):
    rng = np.random.default_rng(2)
    image = np.zeros((128, 128), np.float32)
    image[96:, :24] = rng.uniform(0.3, 0.6, size=(32, 24))  # tissue only in the lower-left corner
    _write(tmp_path, "train", "normal", 0, [records.make_example(
        image, boxes=np.zeros((0, 4)), box_labels=[], finding_types=[], patient_hash="p", study_hash="s",
        image_hash="i")])
    crops = next(iter(_stream(tmp_path, batch_size=32, augment=False, with_info=False)))[0].numpy()
    assert all((crop > 0.25).mean() > 0.1 for crop in crops)  # a uniform crop would mostly miss it


def test_flips_move_boxes_with_the_pixels(prep):
    for image, boxes, info in _stream(prep, augment=True, seed=11).take(10):
        for img, rows in zip(image.numpy(), boxes.numpy()):
            for y0, x0, y1, x1 in rows[rows[:, 0] >= 0] * STRIDE:
                patch = img[int(np.ceil(y0)):int(y1), int(np.ceil(x0)):int(x1), 0]
                # Intensity jitter keeps painted (1.0) pixels >= 0.9, noise stays <= 0.2*1.1.
                assert patch.size and patch.min() > 0.85


def test_zoom_scales_crops_and_boxes_together_within_the_range(prep):
    factors = []
    for image, boxes, info in _stream(prep, augment=True, zoom=1.5, seed=12).take(12):
        assert image.shape[1:3] == (PATCH, PATCH)
        for img, rows, label in zip(image.numpy(), boxes.numpy(), info["label"].numpy()):
            if label != b"malignant":
                continue
            for y0, x0, y1, x1 in rows[rows[:, 0] >= 0] * STRIDE:
                height, width = y1 - y0, x1 - x0
                # The painted 12 x 10 finding, resized as one: aspect kept, scale in [1/1.5, 1.5].
                np.testing.assert_allclose(height / width, 1.2, rtol=0.02)
                factors.append(height / 12.0)
                core = img[int(np.ceil(y0)) + 1:int(y1) - 1, int(np.ceil(x0)) + 1:int(x1) - 1, 0]
                assert core.size and core.min() > 0.8  # bilinear edges aside, the box shows the finding
    # The crop side is rounded to a pixel: at PATCH 32 that moves the factor by up to 0.5 / 21.
    assert factors and min(factors) >= (1 / 1.5) / 1.03 and max(factors) <= 1.5 * 1.03
    assert max(factors) / min(factors) > 1.2, factors  # the zoom does vary


def test_turns_transpose_pixels_and_boxes_and_leave_the_other_draws_alone(prep):
    plain = _stream(prep, augment=True, seed=13, with_info=False).take(4)
    turned = _stream(prep, augment=True, rotate=True, seed=13, with_info=False).take(4)
    transposed = 0
    for (ia, ba), (ib, bb) in zip(plain, turned):
        for a, rows_a, b, rows_b in zip(ia.numpy(), ba.numpy(), ib.numpy(), bb.numpy()):
            if np.array_equal(a, b):
                np.testing.assert_array_equal(rows_a, rows_b)
                continue
            # The same crop, flips and jitter, then turned: pixels and boxes transposed.
            np.testing.assert_allclose(b, np.transpose(a, (1, 0, 2)), atol=1e-6)
            real = rows_a[:, 0] >= 0
            np.testing.assert_allclose(rows_b[real], rows_a[real][:, [1, 0, 3, 2]])
            transposed += 1
    assert 0 < transposed < 32
    # Whole images keep the orientation inference sees.
    plain = _stream(prep, phase="full", batch_size=4, augment=True, seed=13, with_info=False).take(3)
    turned = _stream(prep, phase="full", batch_size=4, augment=True, rotate=True, seed=13, with_info=False).take(3)
    for (ia, ba), (ib, bb) in zip(plain, turned):
        np.testing.assert_array_equal(ia.numpy(), ib.numpy())
        np.testing.assert_array_equal(ba.numpy(), bb.numpy())


def test_patches_keep_their_static_shape_with_and_without_the_options(prep):
    # A patch batch of unknown height and width traces the model for any shape: the whole-image phase
    # then reuses that graph instead of its own, which moves the numbers (not the batches) of a run.
    for options in ({}, {"zoom": 1.5}, {"rotate": True}, {"zoom": 1.5, "rotate": True}):
        image_spec = _stream(prep, augment=True, seed=14, with_info=False, **options).element_spec[0]
        assert tuple(image_spec.shape[1:]) == (PATCH, PATCH, 1), (options, image_spec)


def test_zoom_outside_its_range_is_refused(prep):
    with pytest.raises(ValueError, match="zoom"):
        _stream(prep, zoom=0.5)
    with pytest.raises(ValueError, match="zoom"):
        _stream(prep, zoom=5.0)


def test_full_phase_pads_to_the_multiple_and_the_batch_max(prep):
    shapes = set()
    for image, boxes, info in _stream(prep, phase="full", batch_size=4).take(12):
        height, width = image.shape[1:3]
        assert height % MULTIPLE == 0 and width % MULTIPLE == 0
        shapes.add((height, width))
        for rows, label in zip(boxes.numpy(), info["label"].numpy()):
            real = rows[rows[:, 0] >= 0]
            assert len(real) == (1 if label in (b"malignant", b"high_risk") else 0)
            assert np.all(real <= np.array([height, width, height, width]) / STRIDE)
    assert shapes <= {(64, 80), (80, 96), (48, 48)} and (80, 96) in shapes


def test_same_seed_same_batches_different_seed_different(prep):
    def first(seed):
        return [(i.numpy(), b.numpy()) for i, b in _stream(prep, seed=seed, with_info=False).take(3)]

    a, b, c = first(3), first(3), first(4)
    for (ia, ba), (ib, bb) in zip(a, b):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(ba, bb)
    assert any(not np.array_equal(ia, ic) for (ia, _), (ic, _) in zip(a, c))


def test_distributed_iteration_and_auto_shard_policy(prep):
    dataset = _stream(prep, with_info=False, batch_size=4)
    assert (dataset.options().experimental_distribute.auto_shard_policy
            == tf.data.experimental.AutoShardPolicy.DATA)
    for strategy in (tf.distribute.get_strategy(), tf.distribute.MirroredStrategy(["/cpu:0"])):
        image, boxes = next(iter(strategy.experimental_distribute_dataset(dataset)))
        local = strategy.experimental_local_results(image)
        assert sum(t.shape[0] for t in local) == 4


@pytest.mark.slow
def test_mirrored_strategy_over_two_logical_cpus(prep):
    import subprocess
    import sys

    code = f"""
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from keras_hourglass.data import pipeline
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
dataset = pipeline.training_dataset({str(prep)!r}, batch_size=4, stride=4, input_multiple=16, patch_size=32,
                                    seed=1)
image, boxes = next(iter(strategy.experimental_distribute_dataset(dataset)))
shapes = [tuple(t.shape) for t in strategy.experimental_local_results(boxes)]
assert shapes == [(2, 16, 4), (2, 16, 4)], shapes
print("OK", strategy.num_replicas_in_sync)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "OK 2" in out.stdout, out.stderr[-2000:]


def test_missing_strata_are_skipped_and_missing_split_is_an_input_error(prep, tmp_path):
    images, boxes, info = next(iter(_stream(prep, split="test", batch_size=16)))
    assert set(info["label"].numpy()) == {b"malignant", b"normal"}
    from keras_hourglass.errors import InputError
    with pytest.raises(InputError, match="no TFRecords for split 'val'"):
        _stream(tmp_path, split="val")


def test_evaluation_dataset_every_image_once_in_order_with_all_boxes(prep):
    first = list(pipeline.evaluation_dataset(prep, split="test", input_multiple=MULTIPLE))
    second = list(pipeline.evaluation_dataset(prep, split="test", input_multiple=MULTIPLE))
    assert [e["image_hash"].numpy()[0] for e in first] == [e["image_hash"].numpy()[0] for e in second]
    assert len(first) == 3
    malignant = first[0]
    assert malignant["image"].shape == (1, 64, 64, 1)
    assert int(malignant["height"][0]) == 50 and int(malignant["width"][0]) == 60
    np.testing.assert_allclose(malignant["boxes"].numpy()[0], [[5, 6, 15, 16]])
    assert malignant["box_labels"].numpy()[0].tolist() == [b"malignant"]
    assert malignant["transform"].shape == (1, 6)
    assert first[2]["image"].shape == (1, 32, 32, 1) and first[2]["boxes"].shape == (1, 0, 4)


def test_an_interleaved_evaluation_stream_mixes_every_stratum_from_the_first_images(prep):
    """`--val-images N` reads the first N: in file order (benign shard first) they can hold no malignant
    finding at all; interleaved, the first one per shard covers every stratum."""
    in_order = list(pipeline.evaluation_dataset(prep, split="train", input_multiple=MULTIPLE))
    mixed = list(pipeline.evaluation_dataset(prep, split="train", input_multiple=MULTIPLE, interleave_shards=True))
    again = list(pipeline.evaluation_dataset(prep, split="train", input_multiple=MULTIPLE, interleave_shards=True))
    hashes = [e["image_hash"].numpy()[0] for e in mixed]
    assert hashes == [e["image_hash"].numpy()[0] for e in again]  # deterministic
    assert sorted(hashes) == sorted(e["image_hash"].numpy()[0] for e in in_order) and len(hashes) == 18
    assert {e["label"].numpy()[0] for e in in_order[:4]} == {b"benign"}
    assert {e["label"].numpy()[0] for e in mixed[:5]} == {b"benign", b"high_risk", b"malignant", b"normal"}


def test_steps_per_epoch():
    assert pipeline.steps_per_epoch(8000, 16) == 500
    assert pipeline.steps_per_epoch(10, 16) == 1
    with pytest.raises(ValueError):
        pipeline.steps_per_epoch(100, 0)
