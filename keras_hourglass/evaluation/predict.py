"""Run a heatmap model over an evaluation dataset and collect per-image marks.

The dataset is `keras_hourglass.data.pipeline.evaluation_dataset(...)` (or
any iterable of the same dicts): one image at a time, `image` padded to the
model's input multiple, `boxes` (image frame), `box_labels`,
`patient_hash`, `image_hash`, `transform` and the unpadded `height` /
`width`. Marks come from `keras_hourglass.find_peaks` on the final heatmap,
in image coordinates (stride = `model_stride(model)`); marks outside the
breast mask (`keras_hourglass.breast`, on by default) and outside the
unpadded image, `[0, height) x [0, width)`, i.e. in the padding, are dropped.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Callable, Iterable

import numpy as np
from tqdm.auto import tqdm

from keras_hourglass.contract import EVALUATION_POSITIVE_LABELS
from keras_hourglass.evaluation.froc import ImageRecord

@dataclasses.dataclass
class PredictedImage(ImageRecord):
    """An `ImageRecord` plus what evaluation reports need.

    Attributes:
        transform: `PixelTransform.to_list()` (original <-> image), or None.
        finding_types: per box, its finding type (mass, calcification, ...).
        height, width: the unpadded image size (image frame).
        image: the unpadded image as uint8 `[H, W]` for overlays, kept only
            for the images selected by `keep_images`; else None.
    """

    transform: Any = None
    finding_types: tuple[str, ...] = ()
    height: int = 0
    width: int = 0
    image: np.ndarray | None = None


def _numpy(value: Any) -> np.ndarray:
    return np.asarray(value.numpy() if hasattr(value, "numpy") else value)


def _scalar_str(value: Any) -> str:
    value = _numpy(value).reshape(-1)
    item = value[0] if value.size else ""
    return item.decode("utf-8") if isinstance(item, bytes) else str(item)


def _known_length(dataset: Any) -> int | None:
    """Returns: len(dataset) when it is known (lists, finite tf.data of known cardinality), else None."""
    try:
        return int(len(dataset))
    except (TypeError, ValueError):
        return None


def _strings(value: Any) -> list[str]:
    if value is None:
        return []
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in np.reshape(_numpy(value), -1)]


def _unbatch(element: dict) -> dict:
    """Returns: the element as numpy, without the batch dimension of size 1."""
    out = {key: _numpy(value) for key, value in element.items()}
    image = out["image"]
    if image.ndim == 4:
        if image.shape[0] != 1:
            raise ValueError(f"evaluation batches must hold one image, got batch {image.shape[0]}")
        out = {key: value[0] if value.ndim >= 1 and value.shape[0] == 1 else value for key, value in out.items()}
    return out


def _valid_size(element: dict) -> tuple[int, int]:
    """The unpadded (height, width): `height`/`width`, else the transform's image shape, else the full image."""
    for hkey, wkey in (("height", "width"), ("original_height", "original_width")):
        if hkey in element and wkey in element:
            return int(np.reshape(element[hkey], -1)[0]), int(np.reshape(element[wkey], -1)[0])
    transform = np.reshape(element.get("transform", np.zeros(0)), -1)
    if transform.size >= 4 and transform[2] > 0 and transform[3] > 0:
        return int(round(transform[2])), int(round(transform[3]))
    image = element["image"]
    return int(image.shape[0]), int(image.shape[1])


def _make_predictor(model, *, max_marks: int, threshold: float, stride: int, peak_finder: Callable,
                    breast_only: bool):
    import tensorflow as tf

    from keras_hourglass.breast import breast_mask, suppress_outside_breast

    channels = model.inputs[0].shape[-1] or 1

    @tf.function(input_signature=[tf.TensorSpec([1, None, None, channels], tf.float32)], reduce_retracing=True)
    def predict(image):
        heatmap = model(image, training=False)
        if isinstance(heatmap, (list, tuple)):
            heatmap = heatmap[-1]
        if breast_only:
            heatmap = suppress_outside_breast(heatmap, breast_mask(image[..., :1], stride))
        return peak_finder(heatmap, max_marks=max_marks, threshold=threshold, stride=stride)

    return predict


class MarkPredictor:
    """A model's final heatmap + `find_peaks`, traced once, reusable.

    The traced function shares the model's weights, so a predictor built
    once (e.g. by `FrocCallback`) sees every weight update without being
    traced again.

    Args:
        model: a heatmap model (image -> heatmap, or a training model whose
            last output is the final heatmap).
        max_marks: marks kept per image (the highest-scoring local maxima).
            Keep it generous: the FROC sweeps thresholds itself, and a too
            small value truncates the curve at high FPI.
        threshold: minimum heatmap value of a mark; None keeps every local
            maximum (the heatmap may be unbounded, e.g. a linear output).
        stride: heatmap -> image scale; None reads it from the model
            (`keras_hourglass.model.model_stride`).
        peak_finder: a function with the signature of
            `keras_hourglass.find_peaks` (default).
        breast_only: drop marks outside the breast mask
            (`keras_hourglass.breast`), as the exported signatures do.
    """

    def __init__(
        self,
        model,
        *,
        max_marks: int = 100,
        threshold: float | None = None,
        stride: int | None = None,
        peak_finder: Callable | None = None,
        breast_only: bool = True,
    ):
        from keras_hourglass.model import inference_model, model_stride

        if peak_finder is None:
            from keras_hourglass.peaks import find_peaks as peak_finder
        self.model = inference_model(model)
        self.stride = int(model_stride(self.model) if stride is None else stride)
        self.max_marks = int(max_marks)
        self.threshold = float("-inf") if threshold is None else float(threshold)
        self._predict = _make_predictor(
            self.model, max_marks=self.max_marks, threshold=self.threshold, stride=self.stride, peak_finder=peak_finder,
            breast_only=bool(breast_only),
        )

    def __call__(
        self,
        dataset: Iterable[dict],
        *,
        max_images: int | None = None,
        keep_images: int = 0,
        progress: bool = False,
    ) -> list[PredictedImage]:
        """Runs over `dataset`; arguments as in `predict_marks`. Returns: one `PredictedImage` per image."""
        elements = dataset if max_images is None else itertools.islice(dataset, int(max_images))
        kept_malignant = kept_other = 0
        records: list[PredictedImage] = []
        total = _known_length(dataset)
        if max_images is not None:
            total = int(max_images) if total is None else min(total, int(max_images))
        for element in tqdm(elements, desc="predict", unit="image", disable=not progress, total=total):
            element = _unbatch(element)
            image = element["image"].astype(np.float32)
            if image.ndim == 2:
                image = image[..., None]
            marks, count = self._predict(image[None])
            marks = _numpy(marks)[0][: int(_numpy(count).reshape(-1)[0])].astype(np.float64)
            height, width = _valid_size(element)
            inside = (marks[:, 0] >= 0) & (marks[:, 1] >= 0) & (marks[:, 0] < height) & (marks[:, 1] < width)
            marks = marks[inside]
            marks = marks[np.argsort(-marks[:, 2], kind="stable")]
            labels = _strings(element.get("box_labels"))
            record = PredictedImage(
                image_id=_scalar_str(element.get("image_hash", str(len(records)))),
                patient_id=_scalar_str(element.get("patient_hash", str(len(records)))),
                marks=marks,
                boxes=np.reshape(element.get("boxes", np.zeros((0, 4))), (-1, 4)),
                labels=labels,
                transform=[float(v) for v in np.reshape(element["transform"], -1)] if "transform" in element else None,
                finding_types=tuple(_strings(element.get("finding_types"))),
                height=height,
                width=width,
            )
            malignant = any(label in EVALUATION_POSITIVE_LABELS for label in record.labels)
            if keep_images and (kept_malignant if malignant else kept_other) < keep_images:
                pixels = np.clip(image[:height, :width, 0], 0.0, 1.0)
                record.image = (pixels * 255.0 + 0.5).astype(np.uint8)
                if malignant:
                    kept_malignant += 1
                else:
                    kept_other += 1
            records.append(record)
        return records


def predict_marks(
    model,
    dataset: Iterable[dict],
    *,
    max_marks: int = 100,
    threshold: float | None = None,
    stride: int | None = None,
    max_images: int | None = None,
    keep_images: int = 0,
    progress: bool = False,
    peak_finder: Callable | None = None,
    breast_only: bool = True,
) -> list[PredictedImage]:
    """Runs `model` over `dataset` and returns the marks of every image.

    Args:
        model: a heatmap model (image -> heatmap, or a training model whose
            last output is the final heatmap).
        dataset: evaluation dicts, batch 1 (see module docstring).
        max_marks: marks kept per image (the highest-scoring local maxima).
            Keep it generous: the FROC sweeps thresholds itself, and a too
            small value truncates the curve at high FPI.
        threshold: minimum heatmap value of a mark; None keeps every local
            maximum (the heatmap may be unbounded, e.g. a linear output).
        stride: heatmap -> image scale; None reads it from the model
            (`keras_hourglass.model.model_stride`).
        max_images: evaluate only the first images.
        keep_images: keep the pixels (uint8) of up to this many images with
            a malignant finding and up to this many others, for overlays.
        progress: show a tqdm progress bar.
        peak_finder: a function with the signature of
            `keras_hourglass.find_peaks` (default).
        breast_only: drop marks outside the breast mask (`keras_hourglass.breast`).

    Returns:
        One `PredictedImage` per image, marks `[M, 3]` (y, x, score) in image
        coordinates, sorted by score descending.
    """
    predictor = MarkPredictor(model, max_marks=max_marks, threshold=threshold, stride=stride, peak_finder=peak_finder,
                              breast_only=breast_only)
    return predictor(dataset, max_images=max_images, keep_images=keep_images, progress=progress)
