"""Scale-aware training geometry: one unit for every pixel-denominated setting.

The loss's patch and mask sizes, its sigma bank, the L2 / focal target sigma
and the training crop all describe physical extents (a lesion, its
surroundings, a region of the breast). A fixed pixel value means something
else at every `hourglass prepare --size`, so `TrainConfig` holds them in
*reference pixels*: pixels at the paper's training scale, a long side of
`REFERENCE_LONG_SIDE` = 1536 (3840 / 2.5), with the loss geometry in heatmap
pixels of a stride-`REFERENCE_STRIDE` model (so `patch_size=72` is 72
heatmap pixels of a stride-4 model at 1536 px, 288 image pixels there) and
the crop in image pixels. A fraction of the long side rather than
millimetres: the long side is known for every PREP and every served image
(the preprocessing resizes to it), while a pixel spacing is missing or
wrong in many exports; both agree for a ~30 cm detector.

`resolve_geometry` converts them to the pixels a run uses:

    heatmap px = reference value * (long_side / 1536) * (4 / stride)
    crop px    = reference value * (long_side / 1536), rounded to the model's
                 input multiple and clamped to the long side

and refuses sizes that are degenerate at the PREP's scale (a patch under
`MIN_PATCH_SIZE` heatmap pixels, a sigma under `MIN_SIGMA`). The loss
classes themselves keep taking heatmap pixels: they are general Keras
losses; the conversion lives here, in training.
"""

from __future__ import annotations

import dataclasses
import math

from keras_hourglass.contract import PREPROCESSING_KEYS, long_side_of
from keras_hourglass.errors import ArgumentError, InputError

REFERENCE_LONG_SIDE = 1536
"""The paper's training long side (3840 / 2.5): reference pixels are pixels at this scale."""
REFERENCE_STRIDE = 4
"""Heatmap stride the reference loss geometry is expressed in."""
MIN_PATCH_SIZE = 3
"""Smallest detector patch / blob mask (heatmap pixels) that still holds a blob and its flank."""
MIN_SIGMA = 0.5
"""Smallest reference-blob sigma (heatmap pixels): below it a blob is a single pixel."""


@dataclasses.dataclass(frozen=True)
class Geometry:
    """The pixel values one run uses, resolved from reference pixels.

    Attributes:
        long_side: long side of the training images (PREP's `--size`).
        stride: output stride of the model.
        heatmap_scale: heatmap pixels per reference heatmap pixel.
        patch_size: detector patch of the hypersensitive loss (heatmap px).
        mask_size: window masked around each top-k blob (heatmap px).
        sigmas: reference-blob sigma bank (heatmap px).
        target_sigma: Gaussian target sigma of the L2 and focal losses (heatmap px).
        crop_size: phase-1 crop side (image px, a multiple of the input multiple).
        crop_clamped: the crop was cut to the images' long side.
    """

    long_side: int
    stride: int
    heatmap_scale: float
    patch_size: int
    mask_size: int
    sigmas: tuple[float, ...]
    target_sigma: float
    crop_size: int
    crop_clamped: bool = False

    def masked_share(self, boxes: int = 1, top_k: int = 3) -> float:
        """Share of a phase-1 crop's heatmap that L_BG cannot see: `boxes` detector patches plus
        `top_k` blob masks (no overlap assumed), at most 1."""
        crop = (self.crop_size / self.stride) ** 2
        return min(1.0, (boxes * self.patch_size ** 2 + top_k * self.mask_size ** 2) / crop)

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["sigmas"] = list(self.sigmas)
        return out


def _at_least(value: float, minimum: int) -> int:
    return max(minimum, int(round(value)))


def resolve_geometry(config, *, long_side: int, stride: int, input_multiple: int) -> Geometry:
    """Converts the reference-pixel settings of `config` to this run's pixels.

    Args:
        config: a `TrainConfig` (patch_size, mask_size, sigmas, target_sigma,
            crop_size in reference pixels).
        long_side: long side of the prepared images (manifest `preprocessing.long_side`).
        stride: the model's output stride.
        input_multiple: crops must be multiples of it.

    Returns:
        The `Geometry`.

    Raises:
        ArgumentError: a setting that is degenerate at this scale (naming the `config` field),
            or (`long_side`) a long side smaller than one input multiple.
    """
    if long_side < input_multiple:
        raise ArgumentError("long_side", f"images of long side {long_side} px are smaller than the model's input "
                                         f"multiple {input_multiple}")
    image_scale = long_side / REFERENCE_LONG_SIDE
    heatmap_scale = image_scale * REFERENCE_STRIDE / stride
    at = f"at long side {long_side} px (stride {stride})"

    def heatmap_px(name: str, value: float, minimum: float) -> float:
        resolved = float(value) * heatmap_scale
        if resolved < minimum:
            least = math.ceil(minimum / heatmap_scale * 100) / 100
            raise ArgumentError(name, f"{value:g} reference px resolves to {resolved:.2f} heatmap px {at}, "
                                      f"below the minimum {minimum:g}: give at least {least:g}")
        return resolved

    patch = _at_least(heatmap_px("patch_size", config.patch_size, MIN_PATCH_SIZE), MIN_PATCH_SIZE)
    if config.mask_size is None:  # half the patch: a predicted blob's extent; never degenerate by default
        mask = max(MIN_PATCH_SIZE, int(round(patch / 2)))
    else:
        mask = _at_least(heatmap_px("mask_size", config.mask_size, MIN_PATCH_SIZE), MIN_PATCH_SIZE)
    sigmas = tuple(round(heatmap_px("sigmas", s, MIN_SIGMA), 4) for s in config.sigmas)
    target_sigma = round(heatmap_px("target_sigma", config.target_sigma, MIN_SIGMA), 4)

    largest = long_side // input_multiple * input_multiple
    crop = max(input_multiple, int(round(config.crop_size * image_scale / input_multiple)) * input_multiple)
    clamped = crop > largest
    return Geometry(long_side=int(long_side), stride=int(stride), heatmap_scale=round(heatmap_scale, 6),
                    patch_size=patch, mask_size=mask, sigmas=sigmas, target_sigma=target_sigma,
                    crop_size=min(crop, largest), crop_clamped=clamped)


def prep_preprocessing(prep_dir: str) -> dict:
    """The ``preprocessing`` block `hourglass prepare` recorded in PREP/manifest.json (read once).

    Returns:
        The block's `contract.PREPROCESSING_KEYS` entries (``long_side`` always present).

    Raises:
        InputError: no readable manifest or no long side in it.
    """
    import json

    from keras_hourglass import storage

    path = storage.join(prep_dir, "manifest.json")
    try:
        manifest = json.loads(storage.read_text(path))
        long_side = long_side_of(manifest)
    except OSError as err:
        raise InputError(path, f"cannot read ({err.strerror})") from None
    except (ValueError, KeyError, TypeError):
        raise InputError(path, "no preprocessing.long_side: not a manifest written by `hourglass prepare`") from None
    block = manifest["preprocessing"]
    return {**{k: block[k] for k in PREPROCESSING_KEYS if k in block}, "long_side": long_side}


def prep_long_side(prep_dir: str) -> int:
    """The training long side recorded by `hourglass prepare` in PREP/manifest.json.

    Raises:
        InputError: no readable manifest or no long side in it.
    """
    return int(prep_preprocessing(prep_dir)["long_side"])
