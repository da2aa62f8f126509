"""tf.data input pipelines: balanced training streams and the evaluation stream.

Training (`training_dataset`) yields ``(image [B,H,W,1] float32, boxes
[B,MAX_BOXES,4] float32)``; boxes are the training POSITIVES only
(high_risk + malignant; benign boxes are background for the loss), in the
HEATMAP frame (image frame / stride), unused rows filled with -1 — the
`y_true` encoding the losses expect.

Balance: one infinite, shuffled stream per stratum (normal, benign,
high_risk, malignant), mixed by ``tf.data.Dataset.sample_from_datasets``
with equal weights, so every stratum is drawn with probability 1/k (k =
strata present in the split; absent strata are skipped with a warning).
An "epoch" is ``steps_per_epoch(images_per_epoch, batch_size)`` batches
of that stream (paper: 8,000 images).

Phases:

- ``"patch"``: a ``patch_size`` crop (paper: 1280 native = 512 at training
  scale) around a random finding of the image (any label), the finding
  placed uniformly at random wherever it fits inside the crop (a finding
  always near the centre is a positional shortcut: zero padding tells a
  network where the centre is); images without findings
  (normals): a random crop centred on a random TISSUE block (blocks of
  patch_size/8 whose mean intensity exceeds `TISSUE_THRESHOLD`; uniformly
  random when none does), so negatives show breast, not the black
  background that fills half of a mammogram. The crop is kept inside the
  image when the image is larger and zero-padded bottom/right when it is
  smaller. Boxes are shifted, clipped to the crop, and dropped when
  nothing of them is left.
- ``"full"``: the whole image, padded bottom/right to a multiple of
  ``input_multiple``; a batch is padded to its largest image
  (``padded_batch``, zeros), which is again a multiple.

Augmentation (``augment=True``): random horizontal and vertical flips
(boxes follow) and a small intensity jitter (gain in [0.9, 1.1], gamma
in [exp(-0.15), exp(0.15)]); optionally (``zoom`` > 1) patch-phase crops
scaled by a log-uniform factor in [1/zoom, zoom] and (``rotate``) random
90-degree turns of the patches, boxes following. All randomness is stateless and keyed by
``(seed, element counter)`` and the file/record shuffles and the stratum
sampler are seeded, so with a ``seed`` the same call gives the same
batches (``options.deterministic`` is then set; without a seed the map
runs non-deterministically for throughput).

Distribution: ``auto_shard_policy`` is set to DATA on purpose. FILE
sharding would give each worker a subset of files per stratum; with
rare strata stored in a few files a worker may get none of them and its
stream would lose the balance (or fail). DATA sharding lets every worker
build the same balanced stream and keep every n-th element. (With
``strategy.distribute_datasets_from_function``, one pipeline per worker,
no auto-sharding happens: give each worker its own seed.)

Boxes beyond ``max_boxes`` positives per image (patch or full image) are
dropped; prepare's manifest counts findings per label so a suitable
``max_boxes`` can be chosen.
"""

from __future__ import annotations

import logging
import math
import os
import random

import tensorflow as tf

from keras_hourglass import storage
from keras_hourglass.breast import TISSUE_THRESHOLD
from keras_hourglass.contract import LABELS, TRAINING_POSITIVE_LABELS
from keras_hourglass.data import records
from keras_hourglass.errors import InputError
from keras_hourglass.model_input import pad_to_multiple

logger = logging.getLogger(__name__)

GAIN_RANGE = (0.9, 1.1)
LOG_GAMMA_RANGE = 0.15


def steps_per_epoch(images_per_epoch: int, batch_size: int) -> int:
    """Returns: the number of batches in an epoch of `images_per_epoch` images (at least 1)."""
    if batch_size <= 0 or images_per_epoch <= 0:
        raise ValueError("images_per_epoch and batch_size must be positive")
    return max(1, images_per_epoch // batch_size)


def _non_empty_files(prep_dir, split: str, stratum: str | None) -> list[str]:
    return [f for f in records.list_files(prep_dir, split, stratum) if storage.getsize(f) > 0]


def _stratum_stream(files: list[str], seed: int, shuffle_buffer: int, deterministic: bool):
    """Infinite shuffled stream of serialized records of one stratum."""
    names = tf.data.Dataset.from_tensor_slices(files)
    names = names.shuffle(len(files), seed=seed, reshuffle_each_iteration=True).repeat()
    stream = names.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(4, len(files)),
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )
    return stream.shuffle(shuffle_buffer, seed=seed + 1, reshuffle_each_iteration=True)


def _positives(boxes: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    keep = tf.zeros_like(labels, dtype=tf.bool)
    for name in TRAINING_POSITIVE_LABELS:
        keep = keep | tf.equal(labels, name)
    return tf.boolean_mask(boxes, keep)


def _pad_boxes(boxes: tf.Tensor, max_boxes: int) -> tf.Tensor:
    boxes = boxes[:max_boxes]
    pad = max_boxes - tf.shape(boxes)[0]
    boxes = tf.pad(boxes, [[0, pad], [0, 0]], constant_values=-1.0)
    return tf.ensure_shape(boxes, [max_boxes, 4])


def _crop_origin(image, boxes, patch_size, seeds, block: int):
    """Chooses the top-left corner of a patch (int32 y, x), see module doc.

    `patch_size` may be a scalar int32 tensor (a zoomed crop); `block` is the tissue block side of
    the nominal patch (a Python int: pooling windows are static).
    """
    height = tf.shape(image)[0]
    width = tf.shape(image)[1]
    size = tf.cast(patch_size, tf.float32)
    num = tf.shape(boxes)[0]

    def centred():
        index = tf.random.stateless_uniform([], seeds[0], minval=0, maxval=num, dtype=tf.int32)
        box = boxes[index]
        centre = tf.stack([(box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0])
        extent = tf.stack([box[2] - box[0], box[3] - box[1]])
        # Anywhere the finding fits: a finding always near the crop centre lets a zero-padded network
        # learn "fire at the centre" instead of "fire on the lesion".
        reach = tf.maximum(0.0, (size - extent) / 2.0 - 1.0)
        offset = tf.random.stateless_uniform([2], seeds[1], minval=-1.0, maxval=1.0) * reach
        return tf.cast(tf.floor(centre + offset - size / 2.0), tf.int32)

    def uniform():
        y = tf.random.stateless_uniform([], seeds[0], minval=0,
                                        maxval=tf.maximum(height - patch_size, 0) + 1, dtype=tf.int32)
        x = tf.random.stateless_uniform([], seeds[1], minval=0,
                                        maxval=tf.maximum(width - patch_size, 0) + 1, dtype=tf.int32)
        return tf.stack([y, x])

    def tissue():
        pooled = tf.nn.avg_pool2d(image[tf.newaxis], ksize=block, strides=block, padding="VALID")
        candidates = tf.cast(tf.where(pooled[0, :, :, 0] > TISSUE_THRESHOLD), tf.int32)
        count = tf.shape(candidates)[0]

        def pick():
            index = tf.random.stateless_uniform([], seeds[0], minval=0, maxval=count, dtype=tf.int32)
            return candidates[index] * block + block // 2 - patch_size // 2

        return tf.cond(count > 0, pick, uniform)

    origin = tf.cond(num > 0, centred, tissue)
    limits = tf.stack([tf.maximum(height - patch_size, 0), tf.maximum(width - patch_size, 0)])
    return tf.clip_by_value(origin, 0, limits)


def _crop(image, boxes, labels, patch_size: int, seeds, zoom: float = 1.0, zoom_seed=None):
    """A `patch_size` patch (see module doc); with `zoom` > 1 the crop is first scaled by a factor
    drawn log-uniformly in [1/zoom, zoom]: a crop of side patch_size / factor is resized to
    patch_size (boxes follow), so lesions and texture appear up to `zoom` times larger or smaller."""
    if zoom > 1.0:
        factor = tf.exp(tf.random.stateless_uniform([], zoom_seed, minval=-1.0, maxval=1.0) * math.log(zoom))
        side = tf.maximum(tf.cast(tf.round(patch_size / factor), tf.int32), 8)
    else:
        side = patch_size  # a Python int keeps the patch's static shape (a tensor here would not)
    origin = _crop_origin(image, boxes, side, seeds, block=max(1, patch_size // 8))
    height = tf.shape(image)[0]
    width = tf.shape(image)[1]
    size_y = tf.minimum(side, height - origin[0])
    size_x = tf.minimum(side, width - origin[1])
    patch = tf.slice(image, [origin[0], origin[1], 0], [size_y, size_x, 1])
    patch = tf.image.pad_to_bounding_box(patch, 0, 0, side, side)
    shift = tf.cast(tf.concat([origin, origin], axis=0), tf.float32)
    moved = tf.clip_by_value(boxes - shift, 0.0, tf.cast(side, tf.float32))
    if zoom > 1.0:
        patch = tf.image.resize(patch, [patch_size, patch_size], method="bilinear", antialias=True)
        patch = tf.ensure_shape(patch, [patch_size, patch_size, 1])
        moved = moved * (float(patch_size) / tf.cast(side, tf.float32))
    keep = (moved[:, 2] > moved[:, 0]) & (moved[:, 3] > moved[:, 1])
    return patch, tf.boolean_mask(moved, keep), tf.boolean_mask(labels, keep)


def _turn(image, boxes, seed):
    """Transposes image (and boxes) with probability 1/2: with both flips, all 8 orientations."""
    do = tf.random.stateless_uniform([], seed) < 0.5

    def turned():
        y0, x0, y1, x1 = tf.unstack(boxes, num=4, axis=1)
        return tf.transpose(image, [1, 0, 2]), tf.stack([x0, y0, x1, y1], axis=1)

    return tf.cond(do, turned, lambda: (image, boxes))


def _flip(image, boxes, seed, axis: int):
    """Flips image (and boxes) along axis 0 (vertical) or 1 (horizontal) with probability 1/2."""
    do = tf.random.stateless_uniform([], seed) < 0.5
    extent = tf.cast(tf.shape(image)[axis], tf.float32)
    lo, hi = (0, 2) if axis == 0 else (1, 3)

    def flipped():
        cols = tf.unstack(boxes, num=4, axis=1)
        cols[lo], cols[hi] = extent - cols[hi], extent - cols[lo]
        return tf.reverse(image, axis=[axis]), tf.stack(cols, axis=1)

    return tf.cond(do, flipped, lambda: (image, boxes))


def _intensity(image, seed):
    values = tf.random.stateless_uniform([2], seed, minval=0.0, maxval=1.0)
    gain = GAIN_RANGE[0] + (GAIN_RANGE[1] - GAIN_RANGE[0]) * values[0]
    gamma = tf.exp((2.0 * values[1] - 1.0) * LOG_GAMMA_RANGE)
    return tf.clip_by_value(gain * tf.pow(tf.maximum(image, 0.0), gamma), 0.0, 1.0)


def training_dataset(
    prep_dir: str | os.PathLike,
    *,
    split: str = "train",
    phase: str = "patch",
    batch_size: int,
    stride: int,
    input_multiple: int,
    patch_size: int = 512,
    max_boxes: int = 16,
    seed: int | None = None,
    augment: bool = True,
    zoom: float = 1.0,
    rotate: bool = False,
    images_per_epoch: int = 8000,
    shuffle_buffer: int = 64,
    with_info: bool = False,
) -> tf.data.Dataset:
    """Builds the infinite, stratum-balanced training stream.

    Args:
        prep_dir: directory written by `hourglass prepare`.
        split: which split to read (usually "train").
        phase: "patch" (crops centred on findings) or "full" (whole images).
        batch_size: images per batch.
        stride: model output stride (boxes are divided by it).
        input_multiple: H and W must be multiples of it (full phase; the patch
            size must be one).
        patch_size: crop side at training scale (paper: 512).
        max_boxes: rows of the box tensor; extra positives are dropped.
        seed: makes the stream reproducible; None draws a random one.
        augment: flips and intensity jitter (and `zoom`, `rotate`).
        zoom: patch phase, with `augment`: maximum zoom factor of a crop (1 = none; see `_crop`).
        rotate: patch phase, with `augment`: also random 90-degree turns (transposes). Whole
            images keep their orientation: it is the one inference sees, and turned images would
            pad a batch to new shapes (one XLA compilation each).
        images_per_epoch: images per epoch (the stream is infinite: pair it
            with `steps_per_epoch(images_per_epoch, batch_size)`); validated only.
        shuffle_buffer: records buffered per stratum for shuffling.
        with_info: also yield a third element, a dict with the image's
            ``label`` (stratum) and ``image_hash`` (inspection and tests; do
            not pass to `fit`, which would read it as sample weights).

    Returns:
        `tf.data.Dataset` of ``(image, boxes)`` (or ``(image, boxes, info)``).
    """
    if phase not in ("patch", "full"):
        raise ValueError(f"phase must be 'patch' or 'full', got {phase!r}")
    if batch_size <= 0 or stride <= 0 or input_multiple <= 0 or max_boxes <= 0:
        raise ValueError("batch_size, stride, input_multiple and max_boxes must be positive")
    if not (isinstance(zoom, (int, float)) and 1.0 <= zoom <= 4.0):
        raise ValueError(f"zoom must be in [1, 4], got {zoom!r}")
    if phase == "patch" and patch_size % input_multiple:
        raise ValueError(f"patch_size {patch_size} is not a multiple of input_multiple {input_multiple}")
    steps_per_epoch(images_per_epoch, batch_size)
    deterministic = seed is not None
    base_seed = int(seed) if seed is not None else random.SystemRandom().randrange(2**31)

    streams, present = [], []
    for i, stratum in enumerate(LABELS):
        files = _non_empty_files(prep_dir, split, stratum)
        if not files:
            logger.warning("split %r of %s has no %r images: balancing over the other strata",
                           split, prep_dir, stratum)
            continue
        streams.append(_stratum_stream(files, base_seed + 7919 * (i + 1), shuffle_buffer, deterministic))
        present.append(stratum)
    if not streams:
        raise InputError(prep_dir, f"no TFRecords for split {split!r} (run `hourglass prepare`)")
    weights = [1.0 / len(streams)] * len(streams)
    mixed = tf.data.Dataset.sample_from_datasets(streams, weights=weights, seed=base_seed,
                                                 stop_on_empty_dataset=False)
    mixed = tf.data.Dataset.zip((mixed, tf.data.Dataset.counter()))

    def transform(serialized, counter):
        example = records.parse_example(serialized)
        seeds = tf.random.experimental.stateless_split(
            tf.stack([tf.constant(base_seed, tf.int64), counter]), num=6)
        image, boxes, labels = example["image"], example["boxes"], example["box_labels"]
        # seeds[5] feeds the optional augmentations, so turning them on leaves the others' draws alone.
        extra = tf.random.experimental.stateless_split(seeds[5], num=2)
        if phase == "patch":
            image, boxes, labels = _crop(image, boxes, labels, patch_size, seeds[:2],
                                         zoom=zoom if augment else 1.0, zoom_seed=extra[0])
        boxes = _positives(boxes, labels)
        if augment:
            image, boxes = _flip(image, boxes, seeds[2], axis=1)
            image, boxes = _flip(image, boxes, seeds[3], axis=0)
            if rotate and phase == "patch":
                image, boxes = _turn(image, boxes, extra[1])
            image = _intensity(image, seeds[4])
        if phase == "full":
            image = pad_to_multiple(image, input_multiple)
        boxes = _pad_boxes(boxes / float(stride), max_boxes)
        outputs = (image, boxes)
        if with_info:
            outputs += ({"label": example["label"], "image_hash": example["image_hash"]},)
        return outputs

    dataset = mixed.map(transform, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    if phase == "patch":
        dataset = dataset.batch(batch_size, drop_remainder=True)
    else:
        shapes = ([None, None, 1], [max_boxes, 4])
        values = (0.0, -1.0)
        if with_info:
            shapes += ({"label": [], "image_hash": []},)
            values += ({"label": "", "image_hash": ""},)
        dataset = dataset.padded_batch(batch_size, padded_shapes=shapes, padding_values=values,
                                       drop_remainder=True)
    options = tf.data.Options()
    options.deterministic = deterministic
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


def evaluation_dataset(prep_dir: str | os.PathLike, *, split: str, input_multiple: int,
                       interleave_shards: bool = False) -> tf.data.Dataset:
    """Builds the evaluation stream: every image of a split once, in file order, batch 1.

    Args:
        prep_dir: directory written by `hourglass prepare`.
        split: "val" or "test" (or "train").
        input_multiple: the image is padded bottom/right to a multiple of it.
        interleave_shards: one image of each shard in turn (deterministic) instead of shard after
            shard, so that the first N images mix every stratum: what a validation subset
            (`--val-images N`) must read; in file order the first N of a large split can all be benign.

    Returns:
        `tf.data.Dataset` of dicts (each value with a leading batch axis of 1):
        ``image`` `[1,H',W',1]`, ``boxes`` `[1,N,4]` (all findings, image frame),
        ``box_labels``, ``finding_types`` `[1,N]`, ``label``, ``patient_hash``,
        ``image_hash``, ``study_hash`` `[1]`, ``transform`` `[1,T]`, ``height``,
        ``width`` `[1]` (size before padding).
    """
    files = _non_empty_files(prep_dir, split, None)
    if not files:
        raise InputError(prep_dir, f"no TFRecords for split {split!r} (run `hourglass prepare`)")
    keys = ("boxes", "box_labels", "finding_types", "label", "patient_hash", "study_hash",
            "image_hash", "transform", "height", "width")

    def transform(serialized):
        example = records.parse_example(serialized)
        out = {key: example[key] for key in keys}
        out["image"] = pad_to_multiple(example["image"], input_multiple)
        return out

    if interleave_shards:
        dataset = tf.data.Dataset.from_tensor_slices(files).interleave(
            tf.data.TFRecordDataset, cycle_length=len(files), block_length=1, num_parallel_calls=None,
            deterministic=True)
    else:
        dataset = tf.data.TFRecordDataset(files)
    dataset = dataset.map(transform, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.batch(1).with_options(options).prefetch(tf.data.AUTOTUNE)
