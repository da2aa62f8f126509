"""Serving signatures of the exported Hourglass detector.

Three signatures, all made of plain TensorFlow ops (no PyFunc, no
tensorflow-io, no `jit_compile`), so that TensorFlow Serving can run them
with its default settings (XLA off):

- `serving_default`:
    inputs:  `image` float32 `[B, H, W, 1]`, preprocessed (the output of
             `keras_hourglass.data.dicom.read_mammogram`, values in [0, 1]).
             H and W may be anything >= 1: the signature zero-pads the batch
             at the bottom/right to the model's input multiple (as training
             and evaluation do) and crops the heatmap back to
             `ceil(H / stride) x ceil(W / stride)`.
    outputs: `heatmap` float32 `[B, ceil(H/s), ceil(W/s), 1]`,
             `marks` float32 `[B, max_marks, 3]` = (y, x, score) in image
             pixels, only inside the breast mask (`keras_hourglass.breast`,
             computed from the same pixels; padding rows are (-1, -1, 0)),
             `num_marks` int32 `[B]`,
             `long_side` int32 `[B]` (the long side the model was trained at,
             repeated per image, so a remote client can detect a
             preprocessing mismatch).
- `detect_png`:
    inputs:  `image_bytes` string `[B]`: 8- or 16-bit grayscale PNGs of
             preprocessed images, each of any size;
             `threshold` float32 `[B]`: one score threshold per image; NaN
             means "the export's default threshold" (so the input is
             effectively optional: TF Serving requires every signature input,
             and TF Serving's REST JSON accepts NaN). A per-image vector
             rather than a scalar, so the request also works in the REST
             "instances" row format, where every input shares the batch
             dimension.
    outputs: `marks` float32 `[B, max_marks, 3]` in each PNG's own pixel
             coordinates, `num_marks` int32 `[B]`, `long_side` int32 `[B]`.
    Images of different sizes may share one request: the batch is mapped
    image by image with `tf.map_fn` (no batching speed-up inside one request).
- `metadata` (`serving.contract`): the model contract.
    inputs:  `request` int32 `[B]` (any values; TF Serving needs an input).
    outputs: `metadata` string `[B]` (the contract JSON, repeated per row),
             `metadata_sha256` string `[B]` (its hex SHA-256). Constant
             string tensors only.

The functions are registered on a `keras.export.ExportArchive`, the Keras 3
API for TF Serving exports (`keras/src/export/saved_model.py`).
"""

from __future__ import annotations

from typing import Callable

import keras
import tensorflow as tf

from keras_hourglass.breast import breast_mask, suppress_outside_breast
from keras_hourglass.model_input import pad_to_multiple

from serving.contract import (
    METADATA_DIGEST_OUTPUT,
    METADATA_INPUT,
    METADATA_OUTPUT,
    DETECT_PNG,
    METADATA_SIGNATURE,
    SERVING_DEFAULT,
    SIGNATURE_NAMES,
    contract_digest,
)


# PNG decoding: tf.io.decode_png(dtype=uint16) scales 8-bit PNGs by 257
# (255 -> 65535), so dividing by 65535 maps 8- and 16-bit PNGs to [0, 1].
_UINT16_MAX = 65535.0

PeakFn = Callable[..., tuple]


def _default_peak_fn() -> PeakFn:
    from keras_hourglass.peaks import find_peaks

    return find_peaks


def decode_png_image(png: tf.Tensor) -> tf.Tensor:
    """Decodes one 8- or 16-bit grayscale PNG into float32 `[H, W, 1]` in [0, 1]."""
    pixels = tf.io.decode_png(png, channels=1, dtype=tf.uint16)
    return tf.cast(pixels, tf.float32) / _UINT16_MAX


class HourglassDetector:
    """The inference computation shared by both signatures.

    Args:
        model: a Keras model mapping `image [B, H, W, 1]` to the final
            heatmap `[B, H/stride, W/stride, 1]`.
        stride: output stride of the model.
        input_multiple: H and W fed to the model must be multiples of it.
        max_marks: number of mark rows returned per image.
        threshold: default score threshold (used by `serving_default`).
        long_side: long side (pixels) of the training images, or 0 if unknown.
        pool_size: non-maximum-suppression window of the peak finder.
        breast_only: drop marks outside the breast mask (`keras_hourglass.breast`),
            as evaluation does.
        peak_fn: `find_peaks(heatmap, max_marks=, threshold=, pool_size=,
            stride=) -> (marks, num_marks)`; defaults to
            `keras_hourglass.peaks.find_peaks`.
    """

    def __init__(
        self,
        model: keras.Model,
        *,
        stride: int,
        input_multiple: int,
        max_marks: int = 100,
        threshold: float = 0.0,
        long_side: int = 0,
        pool_size: int = 3,
        breast_only: bool = True,
        peak_fn: PeakFn | None = None,
    ):
        if input_multiple % stride:
            raise ValueError(f"input_multiple {input_multiple} is not a multiple of stride {stride}")
        self.model = model
        self.stride = int(stride)
        self.input_multiple = int(input_multiple)
        self.max_marks = int(max_marks)
        self.threshold = float(threshold)
        self.long_side = int(long_side)
        self.pool_size = int(pool_size)
        self.breast_only = bool(breast_only)
        self.peak_fn = peak_fn or _default_peak_fn()

    def heatmap(self, image: tf.Tensor) -> tf.Tensor:
        """Pads `image [B, H, W, 1]`, runs the model, crops the heatmap to the image."""
        shape = tf.shape(image)
        out_h = (shape[1] + self.stride - 1) // self.stride
        out_w = (shape[2] + self.stride - 1) // self.stride
        heatmap = self.model(pad_to_multiple(image, self.input_multiple), training=False)
        if isinstance(heatmap, (list, tuple)):
            heatmap = heatmap[-1]
        return heatmap[:, :out_h, :out_w, :]

    def marks(self, heatmap: tf.Tensor, image: tf.Tensor, threshold) -> tuple[tf.Tensor, tf.Tensor]:
        """Peaks of `heatmap` in the breast of `image [B, H, W, 1]`, in image pixels clipped to `[H, W]`."""
        image_hw = tf.shape(image)[1:3]
        if self.breast_only:
            heatmap = suppress_outside_breast(heatmap, breast_mask(image, self.stride))
        marks, num_marks = self.peak_fn(
            heatmap,
            max_marks=self.max_marks,
            threshold=threshold,
            pool_size=self.pool_size,
            stride=self.stride,
        )
        marks = tf.convert_to_tensor(marks, tf.float32)
        num_marks = tf.cast(num_marks, tf.int32)
        valid = tf.sequence_mask(num_marks, self.max_marks)[..., None]
        hw = tf.cast(image_hw, tf.float32)  # cells cut by the image edge: y <= H, x <= W
        clipped = tf.concat([tf.minimum(marks[..., :2], hw), marks[..., 2:]], axis=-1)
        return tf.where(valid, clipped, marks), num_marks

    def detect(self, image: tf.Tensor, threshold=None) -> dict[str, tf.Tensor]:
        """`serving_default`: heatmap, marks, num_marks, long_side for a batch."""
        image = tf.convert_to_tensor(image, tf.float32)
        heatmap = self.heatmap(image)
        threshold = self.threshold if threshold is None else threshold
        marks, num_marks = self.marks(heatmap, image, threshold)
        batch = tf.shape(image)[0]
        return {
            "heatmap": heatmap,
            "marks": marks,
            "num_marks": num_marks,
            "long_side": tf.fill([batch], tf.constant(self.long_side, tf.int32)),
        }

    def detect_png(self, image_bytes: tf.Tensor, threshold: tf.Tensor) -> dict[str, tf.Tensor]:
        """`detect_png`: marks, num_marks, long_side for a batch of PNGs of any sizes."""

        specs = self.per_image_outputs()

        def one(args):
            png, thr = args
            image = decode_png_image(png)[None]
            out = self.detect(image, threshold=thr)
            return {key: out[key][0] for key in specs}

        threshold = tf.cast(threshold, tf.float32)
        threshold = tf.where(tf.math.is_nan(threshold), tf.constant(self.threshold, tf.float32), threshold)
        outputs = tf.map_fn(one, (image_bytes, threshold), fn_output_signature=specs)
        batch = tf.shape(image_bytes)[0]
        return {**outputs, "long_side": tf.fill([batch], tf.constant(self.long_side, tf.int32))}

    def per_image_outputs(self) -> dict[str, tf.TensorSpec]:
        """Returns: the outputs of `detect` that `detect_png` returns (besides `long_side`), one image's spec each."""
        return {"marks": tf.TensorSpec([self.max_marks, 3], tf.float32), "num_marks": tf.TensorSpec([], tf.int32)}


def metadata_outputs(request: tf.Tensor, text: str) -> dict[str, tf.Tensor]:
    """`metadata`: the contract JSON `text` and its SHA-256, one row per row of `request`."""
    batch = tf.shape(request)[:1]
    return {
        METADATA_OUTPUT: tf.fill(batch, tf.constant(text, tf.string)),
        METADATA_DIGEST_OUTPUT: tf.fill(batch, tf.constant(contract_digest(text), tf.string)),
    }


def build_export_archive(detector: HourglassDetector, contract: str) -> keras.export.ExportArchive:
    """Builds the `ExportArchive` holding the three signatures.

    Args:
        detector: the inference computation.
        contract: the model contract's JSON text (`serving.contract.contract_text`).

    The functions are `tf.function(jit_compile=False, autograph=False)`:
    nothing is compiled with XLA (TF Serving disables XLA unless started with
    a flag), and there is no Python control flow on tensors to convert.

    Returns:
        A `keras.export.ExportArchive`; call `write_out(path)` to save it.
    """
    archive = keras.export.ExportArchive()
    archive.track(detector.model)

    @tf.function(
        input_signature=[tf.TensorSpec([None, None, None, 1], tf.float32, name="image")],
        jit_compile=False,
        autograph=False,
    )
    def serving_default(image):
        return detector.detect(image)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None], tf.string, name="image_bytes"),
            tf.TensorSpec([None], tf.float32, name="threshold"),
        ],
        jit_compile=False,
        autograph=False,
    )
    def detect_png(image_bytes, threshold):
        return detector.detect_png(image_bytes, threshold)

    @tf.function(
        input_signature=[tf.TensorSpec([None], tf.int32, name=METADATA_INPUT)],
        jit_compile=False,
        autograph=False,
    )
    def metadata(request):
        return metadata_outputs(request, contract)

    archive.add_endpoint(SERVING_DEFAULT, serving_default)
    archive.add_endpoint(DETECT_PNG, detect_png)
    archive.add_endpoint(METADATA_SIGNATURE, metadata)
    return archive
