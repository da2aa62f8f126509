"""Reading screening mammograms from DICOM: ONE function for ingest, evaluation and serving.

`read_mammogram(path)` turns a DICOM file into the model's input image: a float32 `[H, W]` array in
[0, 1] at training scale, every breast facing the same side, plus the `PixelTransform` between the
original DICOM pixel frame and that image (boxes go forward, marks come back). The serving client,
`hourglass prepare` and `hourglass evaluate` all call it, so train/serve skew is impossible by
construction. This module imports no TensorFlow (a test checks it).

Pipeline (each step is pydicom's own function where one exists):

1. Header checks BEFORE any pixel is decoded (`read_header`): the file must be DICOM, Modality MG,
   not a "For Processing" image (SOP class 1.2.840.10008.5.1.4.1.1.1.2.1 or PresentationIntentType
   'FOR PROCESSING'), single frame, monochrome, with pixel data in a transfer syntax that an installed
   decoder handles, and Rows * Columns <= `max_pixels`. Each failure is a `DicomError` subclass whose
   `code` names the reason ("for_processing", "not_mammography", "no_pixel_data", "multi_frame",
   "unsupported_photometric", "unsupported_transfer_syntax", "too_large", "unreadable").
2. Decode (`pydicom` pixel_array; pylibjpeg plugins for JPEG 2000, JPEG Lossless and RLE).
3. Modality LUT (`apply_modality_lut`: Rescale Slope/Intercept or a Modality LUT Sequence).
4. VOI (`voi`): "auto" (default) = the VOI LUT Sequence if present, else the first window
   (Window Center/Width with VOILUTFunction LINEAR / LINEAR_EXACT / SIGMOID through
   `apply_windowing`), else min-max of the modality values. "window" or an integer k = window k
   even when the file also carries a VOI LUT (pydicom's `prefer_lut=False`), falling back to the VOI
   LUT and then to min-max when there is no window k. "none" = min-max (no VOI). The VOI output is
   scaled to [0, 1] by its own output range: [y_min, y_max] of `apply_windowing` (obtained from
   pydicom itself), or the min..max of the LUT Data for a VOI LUT (robust to LUT descriptors that
   claim more bits than the table uses).
5. MONOCHROME1 is inverted after VOI, so tissue is bright and air dark for every file. (Presentation
   LUT Shape is not applied on top: in DX/MG images INVERSE accompanies MONOCHROME1 and denotes that
   same inversion.) Pixels equal
   to Pixel Padding Value (or in its range with Pixel Padding Range Limit) are excluded from min-max
   and set to 0 (background) afterwards; `voi_rule` then ends with "+padding".
6. Resize so the long side is `long_side` (aspect ratio kept; size = `output_shape(rows, cols,
   long_side)`, deterministic), area averaging (PIL BOX) when shrinking, bilinear when enlarging.
7. Orientation: with `orient="left"` (default) the chest wall is on the LEFT of the output image and
   the breast extends to the right; `orient="right"` the opposite; `orient="none"` keeps the stored
   orientation. See `decide_flip` for the rules (tags vs pixels) and `Mammogram.orientation_rule`
   for the rule that fired.
"""

from __future__ import annotations

import dataclasses
import io
import os
from typing import Any, BinaryIO, Sequence, Union

import numpy as np

from keras_hourglass.errors import InputError

DicomSource = Union[str, os.PathLike, bytes, BinaryIO]

FOR_PRESENTATION_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.2"
FOR_PROCESSING_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.2.1"
# 40 Mpx: above every full-field digital mammography detector we know of (largest ~28 Mpx).
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_LONG_SIDE = 1536
# Pixel-based orientation: |left - right| / (left + right) of the outer thirds' mean intensity must
# exceed this for the pixels to count as evidence (a breast on a dark background gives ~0.5-1).
PIXEL_EVIDENCE_THRESHOLD = 0.2



# ----------------------------------------------------------------------------------------- errors
class DicomError(InputError):
    """A DICOM file that cannot become a model input. `code` names the reason (machine-readable).

    Args:
        path: the file (None for in-memory bytes without a name).
        reason: one line saying what is wrong.
    """

    code = "unreadable"

    def __init__(self, path: str | os.PathLike | None, reason: str):
        super().__init__(path, f"{reason} [{self.code}]")
        self.detail = reason


class UnreadableDicomError(DicomError):
    """Not DICOM, truncated, or corrupt (any unexpected pydicom/numpy failure while decoding)."""

    code = "unreadable"


class ForProcessingError(DicomError):
    """A 'For Processing' (raw detector) image: the model is trained on 'For Presentation' images."""

    code = "for_processing"


class NotMammographyError(DicomError):
    """Modality is not MG."""

    code = "not_mammography"


class NoPixelDataError(DicomError):
    """The file has no Pixel Data element."""

    code = "no_pixel_data"


class MultiFrameError(DicomError):
    """More than one frame (e.g. tomosynthesis): only 2D mammograms are supported."""

    code = "multi_frame"


class UnsupportedPhotometricError(DicomError):
    """Not a single-sample MONOCHROME1/MONOCHROME2 image."""

    code = "unsupported_photometric"


class UnsupportedTransferSyntaxError(DicomError):
    """No installed pixel decoder handles the file's transfer syntax."""

    code = "unsupported_transfer_syntax"


class TooLargeError(DicomError):
    """Rows * Columns above `max_pixels` (checked from the header, before decoding)."""

    code = "too_large"


ERROR_CODES = tuple(c.code for c in (UnreadableDicomError, ForProcessingError, NotMammographyError, NoPixelDataError,
                                     MultiFrameError, UnsupportedPhotometricError, UnsupportedTransferSyntaxError,
                                     TooLargeError))


# ------------------------------------------------------------------------------------- dataclasses
@dataclasses.dataclass(frozen=True)
class DicomHeader:
    """The header fields the pipeline needs, read without decoding pixels.

    `patient_id`, `study_instance_uid` and `sop_instance_uid` are the RAW identifiers: ingest hashes
    them (salted) and they must never be written anywhere (no file, log, record or exception). They
    are excluded from `repr` so that printing a header cannot leak them.
    """

    path: str | None
    laterality: str | None  # "L" or "R" (ImageLaterality, else Laterality); None when unknown
    view: str | None  # ViewPosition, e.g. "CC", "MLO"; None when absent
    photometric: str
    sop_class_uid: str
    modality: str
    transfer_syntax_uid: str
    rows: int
    columns: int
    bits_stored: int
    number_of_frames: int
    field_of_view_horizontal_flip: bool | None
    patient_orientation: tuple[str, ...]
    window_count: int
    has_voi_lut: bool
    voi_lut_function: str
    patient_id: str = dataclasses.field(default="", repr=False)
    study_instance_uid: str = dataclasses.field(default="", repr=False)
    sop_instance_uid: str = dataclasses.field(default="", repr=False)


@dataclasses.dataclass(frozen=True)
class PixelTransform:
    """Maps ORIGINAL continuous pixel coordinates (y, x) <-> IMAGE coordinates, flip included.

    Continuous coordinates: pixel i covers [i, i+1). Forward: y' = y * H/rows, x' = x * W/cols,
    then x' -> W - x' when `flipped`. Boxes are (y0, x0, y1, x1); a flip swaps x0/x1 so boxes stay
    ordered.

    Args:
        original_shape: (rows, columns) of the DICOM pixel data.
        image_shape: (H, W) of the output image.
        flipped: whether the output is mirrored left-right relative to the stored pixels.
    """

    original_shape: tuple[int, int]
    image_shape: tuple[int, int]
    flipped: bool = False

    @property
    def scale(self) -> tuple[float, float]:
        """Returns: (sy, sx), image pixels per original pixel."""
        return (self.image_shape[0] / self.original_shape[0], self.image_shape[1] / self.original_shape[1])

    def forward_points(self, points: np.ndarray) -> np.ndarray:
        """Original -> image. Args: points `[..., 2]` (y, x). Returns: float64 `[..., 2]`."""
        pts = np.asarray(points, dtype=np.float64)
        sy, sx = self.scale
        y, x = pts[..., 0] * sy, pts[..., 1] * sx
        if self.flipped:
            x = self.image_shape[1] - x
        return np.stack([y, x], axis=-1)

    def inverse_points(self, points: np.ndarray) -> np.ndarray:
        """Image -> original. Args: points `[..., 2]` (y, x). Returns: float64 `[..., 2]`."""
        pts = np.asarray(points, dtype=np.float64)
        sy, sx = self.scale
        x = pts[..., 1]
        if self.flipped:
            x = self.image_shape[1] - x
        return np.stack([pts[..., 0] / sy, x / sx], axis=-1)

    def forward_boxes(self, boxes: np.ndarray) -> np.ndarray:
        """Original -> image. Args: boxes `[N, 4]` (y0, x0, y1, x1). Returns: float64 `[N, 4]`."""
        return self._boxes(boxes, self.forward_points)

    def inverse_boxes(self, boxes: np.ndarray) -> np.ndarray:
        """Image -> original. Args: boxes `[N, 4]` (y0, x0, y1, x1). Returns: float64 `[N, 4]`."""
        return self._boxes(boxes, self.inverse_points)

    @staticmethod
    def _boxes(boxes: np.ndarray, fn) -> np.ndarray:
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        p0 = fn(b[:, 0:2])
        p1 = fn(b[:, 2:4])
        lo, hi = np.minimum(p0, p1), np.maximum(p0, p1)
        return np.stack([lo[:, 0], lo[:, 1], hi[:, 0], hi[:, 1]], axis=-1)

    def to_list(self) -> list[float]:
        """Returns: [rows, cols, H, W, flipped] as floats (TFRecord storage)."""
        return [float(v) for v in (*self.original_shape, *self.image_shape, 1.0 if self.flipped else 0.0)]

    @classmethod
    def from_list(cls, values: Sequence[float]) -> "PixelTransform":
        """Inverse of `to_list`. Args: values: 5 numbers. Returns: the transform."""
        vals = [float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1)]
        if len(vals) != 5 or min(vals[:4]) <= 0:
            raise ValueError(f"a PixelTransform list has 5 values with positive shapes, got {vals}")
        return cls((int(round(vals[0])), int(round(vals[1]))), (int(round(vals[2])), int(round(vals[3]))),
                   vals[4] >= 0.5)


@dataclasses.dataclass(frozen=True)
class Mammogram:
    """A preprocessed mammogram.

    Attributes:
        image: float32 `[H, W]` in [0, 1], training scale, oriented (tissue bright).
        transform: original <-> image coordinates.
        header: the header fields (raw ids inside: never write them anywhere).
        voi_rule: which VOI step ran ("voi_lut[0]", "window[0]:LINEAR", "minmax", ...).
        orientation_rule: which orientation rule fired (see `decide_flip`).
    """

    image: np.ndarray
    transform: PixelTransform
    header: DicomHeader
    voi_rule: str
    orientation_rule: str


# ------------------------------------------------------------------------------------ header step
def _name(source: DicomSource) -> str | None:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return getattr(source, "name", None) if not isinstance(source, bytes) else None


def _read_dataset(source: DicomSource, *, defer: bool = True, name: str | None = None):
    """dcmread with big values (pixel data) deferred: nothing is decoded here."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    name = name if name is not None else _name(source)
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    if isinstance(source, (str, os.PathLike)) and not os.path.isfile(source):
        raise UnreadableDicomError(name, "no such file")
    try:
        # defer_size only helps for named files (pydicom re-opens them when pixels are needed).
        kwargs = {"defer_size": "64 KB"} if defer and isinstance(source, (str, os.PathLike)) else {}
        return pydicom.dcmread(fp, **kwargs)
    except InvalidDicomError as err:
        raise UnreadableDicomError(name, f"not a DICOM file ({_one_line(err)})") from None
    except Exception as err:  # pydicom raises many types on truncated/corrupt files
        raise UnreadableDicomError(name, f"cannot parse DICOM header: {_one_line(err)}") from None


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:200]


def _str(ds, keyword: str, default: str = "") -> str:
    value = ds.get(keyword, None)
    if value is None:
        return default
    if not isinstance(value, (str, bytes)) and hasattr(value, "__iter__"):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _int(ds, keyword: str, default: int) -> int:
    value = ds.get(keyword, None)
    try:
        return default if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return default


def _window_count(ds) -> int:
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return 0
    c, w = ds.WindowCenter, ds.WindowWidth
    nc = len(c) if hasattr(c, "__len__") and not isinstance(c, str) else 1
    nw = len(w) if hasattr(w, "__len__") and not isinstance(w, str) else 1
    return min(nc, nw)


def _header_from_dataset(ds, name: str | None) -> DicomHeader:
    meta = getattr(ds, "file_meta", None)
    tsyntax = str(getattr(meta, "TransferSyntaxUID", "") or "") if meta is not None else ""
    lat = (_str(ds, "ImageLaterality") or _str(ds, "Laterality")).upper()[:1] or None
    if lat not in ("L", "R"):
        lat = None
    flip = _str(ds, "FieldOfViewHorizontalFlip").upper()
    orientation = tuple(p.strip().upper() for p in _str(ds, "PatientOrientation").split("\\") if p.strip())
    sop = _str(ds, "SOPClassUID") or (str(getattr(meta, "MediaStorageSOPClassUID", "")) if meta else "")
    return DicomHeader(
        path=name,
        laterality=lat,
        view=_str(ds, "ViewPosition").upper() or None,
        photometric=_str(ds, "PhotometricInterpretation").upper(),
        sop_class_uid=sop,
        modality=_str(ds, "Modality").upper(),
        transfer_syntax_uid=tsyntax,
        rows=_int(ds, "Rows", 0),
        columns=_int(ds, "Columns", 0),
        bits_stored=_int(ds, "BitsStored", _int(ds, "BitsAllocated", 0)),
        number_of_frames=_int(ds, "NumberOfFrames", 1),
        field_of_view_horizontal_flip={"YES": True, "NO": False}.get(flip),
        patient_orientation=orientation,
        window_count=_window_count(ds),
        has_voi_lut=bool(ds.get("VOILUTSequence", None)),
        voi_lut_function=_str(ds, "VOILUTFunction", "LINEAR").upper() or "LINEAR",
        patient_id=_str(ds, "PatientID"),
        study_instance_uid=_str(ds, "StudyInstanceUID"),
        sop_instance_uid=_str(ds, "SOPInstanceUID"),
    )


def check_header(header: DicomHeader, ds, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Raises the `DicomError` for the first failed check; returns None when the file is usable.

    Args:
        header: from `_header_from_dataset(ds)`.
        ds: the pydicom dataset (pixel data deferred or absent).
        max_pixels: the largest Rows * Columns accepted.
    """
    from pydicom.pixels import get_decoder

    path = header.path
    if not any(k in ds for k in ("SOPClassUID", "Modality", "Rows", "PixelData")):
        raise UnreadableDicomError(path, "empty or truncated data set (no SOP Class, Modality, Rows or Pixel Data)")
    intent = _str(ds, "PresentationIntentType").upper()
    if header.sop_class_uid == FOR_PROCESSING_SOP_CLASS or intent == "FOR PROCESSING":
        raise ForProcessingError(path, "a 'For Processing' (raw detector) image; use the 'For Presentation' image")
    if header.modality != "MG":
        raise NotMammographyError(path, f"Modality is {header.modality or 'missing'!r}, not 'MG'")
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise NoPixelDataError(path, "the file has no Pixel Data")
    if "PixelData" not in ds:
        raise UnsupportedPhotometricError(path, "float pixel data is not a mammogram")
    if header.number_of_frames > 1:
        raise MultiFrameError(path, f"{header.number_of_frames} frames (tomosynthesis?); only 2D images are supported")
    if header.photometric not in ("MONOCHROME1", "MONOCHROME2") or _int(ds, "SamplesPerPixel", 1) != 1:
        raise UnsupportedPhotometricError(path, f"photometric interpretation {header.photometric or 'missing'!r} "
                                                "is not MONOCHROME1/MONOCHROME2")
    if header.rows <= 0 or header.columns <= 0:
        raise UnreadableDicomError(path, f"invalid image size {header.rows}x{header.columns}")
    if header.rows * header.columns > max_pixels:
        raise TooLargeError(path, f"{header.rows}x{header.columns} = {header.rows * header.columns} pixels "
                                  f"exceeds max_pixels={max_pixels}")
    if not header.transfer_syntax_uid:
        raise UnsupportedTransferSyntaxError(path, "no Transfer Syntax UID in the file meta information")
    try:
        decoder = get_decoder(header.transfer_syntax_uid)
    except (NotImplementedError, ValueError):
        raise UnsupportedTransferSyntaxError(
            path, f"no pixel decoder exists for transfer syntax {header.transfer_syntax_uid}") from None
    if not decoder.is_available:
        deps = decoder.missing_dependencies
        missing = "; ".join(f"{k}: {', '.join(v)}" for k, v in deps.items()) if isinstance(deps, dict) \
            else "; ".join(str(d) for d in deps)
        raise UnsupportedTransferSyntaxError(
            path, f"transfer syntax {header.transfer_syntax_uid} ({decoder.UID.name}) needs a plugin that is not "
                  f"installed ({missing})")


def load_header(source: DicomSource, *, name: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                check: bool = True):
    """Parses the header (pixel data deferred, never decoded) and runs the acceptance checks.

    Args:
        source: a path, the file's bytes, or a binary file object.
        name: the file name for messages when `source` is bytes (default: the path, if any).
        max_pixels: the largest Rows * Columns accepted.
        check: run the acceptance checks (see the module docstring).

    Returns:
        (pydicom Dataset, DicomHeader). The dataset is what `preprocess_pixels` needs for its LUTs.

    Raises:
        DicomError: a subclass naming the file and the reason.
    """
    ds = _read_dataset(source, name=name)
    name = name if name is not None else _name(source)
    try:  # pydicom converts raw elements lazily: corrupt values fail here, not in dcmread
        header = _header_from_dataset(ds, name)
        if check:
            check_header(header, ds, max_pixels=max_pixels)
    except DicomError:
        raise
    except Exception as err:
        raise UnreadableDicomError(name, f"cannot parse DICOM header: {_one_line(err)}") from None
    return ds, header


def read_header(source: DicomSource, *, max_pixels: int = DEFAULT_MAX_PIXELS, check: bool = True) -> DicomHeader:
    """Reads and (by default) validates the header without decoding any pixel.

    Args:
        source: a path, the file's bytes, or a binary file object.
        max_pixels: the largest Rows * Columns accepted.
        check: run the acceptance checks (see the module docstring).

    Returns:
        The `DicomHeader` (raw ids inside: never write them anywhere).

    Raises:
        DicomError: a subclass naming the file and the reason.
    """
    return load_header(source, max_pixels=max_pixels, check=check)[1]


# ------------------------------------------------------------------------------------- pixel step
def output_shape(rows: int, cols: int, long_side: int | None) -> tuple[int, int]:
    """The output image size: long side = `long_side`, aspect ratio kept (round half up, >= 1).

    Args:
        rows, cols: original size.
        long_side: target long side; None keeps the original size.

    Returns:
        (H, W).
    """
    if long_side is None:
        return int(rows), int(cols)
    if long_side <= 0:
        raise ValueError(f"long_side must be positive, got {long_side}")
    if rows >= cols:
        return int(long_side), max(1, int(np.floor(cols * long_side / rows + 0.5)))
    return max(1, int(np.floor(rows * long_side / cols + 0.5))), int(long_side)


def resize(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Anti-aliased resize of a float32 [0, 1] image (PIL mode 'F'; BOX shrinking, BILINEAR growing).

    Args:
        image: float32 `[h, w]`.
        shape: (H, W).

    Returns:
        float32 `[H, W]`; pixel centres map linearly (x' + 0.5 = (x + 0.5) * W / w).
    """
    from PIL import Image

    if tuple(image.shape) == tuple(shape):
        return image.astype(np.float32, copy=False)
    shrink = shape[0] <= image.shape[0] and shape[1] <= image.shape[1]
    pil = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32), mode="F")
    out = pil.resize((shape[1], shape[0]), Image.BOX if shrink else Image.BILINEAR)
    return np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0)


def _voi_output_range(ds, index: int) -> tuple[float, float]:
    """[y_min, y_max] of pydicom's `apply_windowing` for this file, asked from pydicom itself."""
    from pydicom.pixels import apply_windowing

    probe = np.array([-1e300, 1e300], dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        out = np.asarray(apply_windowing(probe, ds, index=index), dtype=np.float64)
    return float(out[0]), float(out[1])


def _lut_output_range(ds, index: int) -> tuple[float, float]:
    """min..max of the LUT Data of VOI LUT item `index`, read through pydicom's own `apply_voi`."""
    from pydicom.pixels import apply_voi as pd_apply_voi

    descriptor = [int(v) for v in ds.VOILUTSequence[index].LUTDescriptor]
    entries = descriptor[0] or 2**16
    probe = np.arange(descriptor[1], descriptor[1] + entries, dtype=np.int64)
    table = np.asarray(pd_apply_voi(probe, ds, index=index), dtype=np.float64)
    return float(table.min()), float(table.max())


def _normalise(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        return np.zeros(values.shape, np.float32)
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def _valid_range(values: np.ndarray, valid: np.ndarray | None = None) -> tuple[float, float]:
    """min..max of `values` over the `valid` pixels (all pixels when none is valid or `valid` is None)."""
    v = np.asarray(values, dtype=np.float64)
    inside = v[valid] if valid is not None and valid.any() else v
    return float(inside.min()), float(inside.max())


def _padding_range(ds) -> tuple[int, int] | None:
    """[lo, hi] of the stored values that are padding (Pixel Padding Value / Range Limit), or None."""
    value = ds.get("PixelPaddingValue", None)
    if value is None or isinstance(value, (bytes, str)):
        return None
    try:
        lo = hi = int(value)
        limit = ds.get("PixelPaddingRangeLimit", None)
        if limit is not None and not isinstance(limit, (bytes, str)):
            lo, hi = min(lo, int(limit)), max(lo, int(limit))
    except (TypeError, ValueError):
        return None
    return lo, hi


def padding_mask(stored: np.ndarray, ds) -> np.ndarray | None:
    """Pixels equal to Pixel Padding Value (or within [value, Pixel Padding Range Limit]), if any.

    Args:
        stored: stored pixel values (padding is given in stored units, before the modality LUT).
        ds: the dataset.

    Returns:
        bool `[rows, cols]`, or None when the file declares no padding.
    """
    bounds = _padding_range(ds)
    if bounds is None:
        return None
    mask = (stored >= bounds[0]) & (stored <= bounds[1])
    return mask if mask.any() else None


def apply_voi(values: np.ndarray, ds, voi: str | int = "auto",
              valid: np.ndarray | None = None) -> tuple[np.ndarray, str]:
    """VOI step on modality-LUT output, scaled to [0, 1] (MONOCHROME1 NOT yet inverted).

    Args:
        values: output of `apply_modality_lut`.
        ds: the dataset (VOI LUT Sequence, Window Center/Width, VOILUTFunction).
        voi: "auto", "window", an int window index, or "none" (see the module docstring).
        valid: pixels that count for min-max (padding excluded); None = all.

    Returns:
        (float32 image in [0, 1], rule that ran).
    """
    return _apply_voi(values, ds, voi, lambda: _valid_range(values, valid))


def _apply_voi(values: np.ndarray, ds, voi: str | int, minmax_range) -> tuple[np.ndarray, str]:
    """`apply_voi` with the min-max range supplied by `minmax_range()` (called only when min-max runs).

    Every step is elementwise in `values` except that range, so `values` may be the whole image or a
    table of the image's stored levels (see `_voi_table`).
    """
    from pydicom.pixels import apply_voi as pd_apply_voi, apply_windowing

    if voi == "none":
        return _normalise(values, *minmax_range()), "minmax"
    if voi == "auto":
        order = ("lut", "window")
        index = 0
    elif voi == "window" or isinstance(voi, (int, np.integer)) and not isinstance(voi, bool):
        index = 0 if voi == "window" else int(voi)
        if index < 0:
            raise ValueError(f"window index must be >= 0, got {index}")
        order = ("window", "lut")
    else:
        raise ValueError(f"voi must be 'auto', 'window', 'none' or a window index, got {voi!r}")
    lut_items = ds.get("VOILUTSequence", None) or []
    for kind in order:
        if kind == "lut" and lut_items:
            i = index if index < len(lut_items) else 0
            try:
                ints = values if np.issubdtype(values.dtype, np.integer) else np.rint(values).astype(np.int64)
                out = pd_apply_voi(ints, ds, index=i)
                lo, hi = _lut_output_range(ds, i)
                return _normalise(out, lo, hi), f"voi_lut[{i}]"
            except Exception:  # malformed LUT: fall through to the next rule, recorded below
                continue
        if kind == "window":
            n = _window_count(ds)
            i = index if voi != "auto" else 0
            if i < n:
                try:
                    with np.errstate(over="ignore"):
                        out = apply_windowing(np.asarray(values, dtype=np.float64), ds, index=i)
                    lo, hi = _voi_output_range(ds, i)
                    func = _str(ds, "VOILUTFunction", "LINEAR").upper() or "LINEAR"
                    return _normalise(out, lo, hi), f"window[{i}]:{func}"
                except Exception:  # e.g. width < 1 or an unknown VOILUTFunction
                    continue
    return _normalise(values, *minmax_range()), "minmax"


# Largest span of stored levels (max - min(min, 0) + 1) for which the pixel step runs on a table of
# levels: 2**16 covers every 8..16-bit image, signed or not.
_TABLE_MAX_LEVELS = 1 << 16


def _voi_table(stored: np.ndarray, ds, header: DicomHeader, voi: str | int) -> tuple[np.ndarray, str] | None:
    """Modality LUT, VOI, MONOCHROME1 inversion and padding for every stored level, then one lookup.

    Each of these steps maps a stored value to an output value independently of the other pixels
    (the only global quantity, the min-max range, is taken from the levels present in the image), so
    computing them once per stored LEVEL (at most 65,536 for 16-bit data) and indexing the table with
    the stored array gives bit-for-bit the same float32 image as running them per pixel, with one
    gather instead of several float64 passes over the full-resolution image. Exact for every VOI rule
    (LINEAR, LINEAR_EXACT, SIGMOID, VOI LUT, Modality LUT, min-max, padding).

    Returns:
        (float32 image `[rows, cols]` in [0, 1], voi_rule) or None when the stored values are not
        integers or span more than `_TABLE_MAX_LEVELS` levels (the caller then runs per pixel).
    """
    from pydicom.pixels import apply_modality_lut

    if stored.dtype.kind not in "iu" or stored.size == 0:
        return None
    smin, smax = int(stored.min()), int(stored.max())
    base = min(smin, 0)
    count = smax - base + 1
    if count > _TABLE_MAX_LEVELS:
        return None
    levels = np.arange(base, smax + 1, dtype=np.int64).astype(stored.dtype)
    index = stored if base == 0 else stored.astype(np.int64) - base
    bounds = _padding_range(ds)
    pad_levels = None
    if bounds is not None and bounds[0] <= smax and bounds[1] >= smin:
        pad_levels = (levels >= bounds[0]) & (levels <= bounds[1])
        if not ((stored >= bounds[0]) & (stored <= bounds[1])).any():
            pad_levels = None

    def minmax_range() -> tuple[float, float]:
        present = np.bincount(index.ravel(), minlength=count) > 0
        if pad_levels is not None and (present & ~pad_levels).any():
            present &= ~pad_levels
        return _valid_range(np.asarray(values, dtype=np.float64)[present])

    values = apply_modality_lut(levels, ds)
    table, rule = _apply_voi(values, ds, voi, minmax_range)
    if header.photometric == "MONOCHROME1":
        table = 1.0 - table
    if pad_levels is not None:
        table = np.where(pad_levels, np.float32(0.0), table)
        rule += "+padding"
    return np.take(table.astype(np.float32, copy=False), index), rule


def decide_flip(image: np.ndarray, header: DicomHeader, orient: str = "left") -> tuple[bool, str]:
    """Decides whether to mirror the image so the chest wall is on the `orient` side.

    Rules, in order:
      1. Tags give the stored chest-wall side: PatientOrientation's row direction ('A...' = the
         breast extends to the right, so the chest wall is on the left; 'P...' = on the right); else
         laterality (ImageLaterality, else Laterality) with the standard storage convention
         (L: chest wall left, R: chest wall right), reversed when FieldOfViewHorizontalFlip is YES.
      2. Pixels: the mean intensity of the left vs right third of the (windowed, tissue-bright)
         image; the brighter third holds the chest wall. Counts only when
         |left - right| / (left + right) > PIXEL_EVIDENCE_THRESHOLD.
      3. When both exist and disagree, the PIXELS win: a breast on a dark background is unambiguous,
         while stale tags (a PACS flip that left the tags alone, a wrong ImageLaterality) are common
         and a wrong flip silently corrupts training. Tags decide when the pixels are ambiguous.

    Args:
        image: float32 `[H, W]`, tissue bright (after VOI and MONOCHROME1 inversion).
        header: the file's header.
        orient: "left" (chest wall on the left, default), "right", or "none" (never flip).

    Returns:
        (flip, rule) with rule one of "none", "tags", "tags+pixels", "pixels", "pixels_override_tags",
        "tags_pixels_ambiguous", "default".
    """
    if orient == "none":
        return False, "none"
    if orient not in ("left", "right"):
        raise ValueError(f"orient must be 'left', 'right' or 'none', got {orient!r}")
    tag_side = None  # stored chest-wall side from tags
    row_dir = header.patient_orientation[0][:1] if header.patient_orientation else ""
    if row_dir in ("A", "P"):
        tag_side = "left" if row_dir == "A" else "right"
    elif header.laterality in ("L", "R"):
        tag_side = "left" if header.laterality == "L" else "right"
        if header.field_of_view_horizontal_flip:
            tag_side = "right" if tag_side == "left" else "left"
    w = image.shape[1]
    third = max(1, w // 3)
    left = float(np.mean(image[:, :third], dtype=np.float64))
    right = float(np.mean(image[:, w - third:], dtype=np.float64))
    total = left + right
    pixel_side = None
    if total > 0 and abs(left - right) / total > PIXEL_EVIDENCE_THRESHOLD:
        pixel_side = "left" if left > right else "right"
    if tag_side and pixel_side:
        side, rule = (tag_side, "tags+pixels") if tag_side == pixel_side else (pixel_side, "pixels_override_tags")
    elif tag_side:
        side, rule = tag_side, "tags_pixels_ambiguous"
    elif pixel_side:
        side, rule = pixel_side, "pixels"
    else:
        side, rule = orient, "default"
    return side != orient, rule


def stored_values(ds, path: str | None = None) -> np.ndarray:
    """Decodes the stored pixel values (pydicom `pixel_array`), any failure -> `UnreadableDicomError`.

    Args:
        ds: the dataset (pixel data may be deferred).
        path: for the error message.

    Returns:
        The 2D array of stored values (signed when PixelRepresentation is 1).
    """
    try:
        arr = ds.pixel_array
    except DicomError:
        raise
    except Exception as err:  # truncated data, decoder failures, bad lengths...
        raise UnreadableDicomError(path, f"cannot decode pixel data: {_one_line(err)}") from None
    except BaseException as err:  # pyo3 decoders (pylibjpeg-rle) panic with a BaseException subclass
        if type(err).__name__ != "PanicException":
            raise
        raise UnreadableDicomError(path, f"pixel decoder crashed on corrupt data: {_one_line(err)}") from None
    arr = np.asarray(arr)
    if arr.ndim != 2:
        raise UnreadableDicomError(path, f"decoded pixel array has shape {arr.shape}, expected 2D")
    return arr


def preprocess_pixels(stored: np.ndarray, ds, header: DicomHeader, *, long_side: int | None = DEFAULT_LONG_SIDE,
                      voi: str | int = "auto", orient: str = "left") -> Mammogram:
    """Stored values -> `Mammogram` (modality LUT, VOI, MONOCHROME1 inversion, resize, orientation).

    Shared by `read_mammogram` and the tensorflow-io decoder so that both post-process identically.

    Args:
        stored: 2D stored pixel values `[rows, cols]`.
        ds: the file's dataset (for the LUTs and windows).
        header: the file's `DicomHeader`.
        long_side, voi, orient: as in `read_mammogram`.

    Returns:
        The `Mammogram`.

    Raises:
        DicomError: when the pixels do not match the header or processing fails.
    """
    from pydicom.pixels import apply_modality_lut

    validate_options(long_side=long_side, voi=voi, orient=orient)
    path = header.path
    if stored.shape != (header.rows, header.columns):
        raise UnreadableDicomError(path, f"pixel array {stored.shape} does not match Rows x Columns "
                                         f"{header.rows}x{header.columns}")
    try:
        by_table = _voi_table(stored, ds, header, voi)
    except Exception as err:
        raise UnreadableDicomError(path, f"cannot apply the modality/VOI LUT: {_one_line(err)}") from None
    if by_table is not None:  # integer levels (every mammogram): the same steps, once per level
        image, voi_rule = by_table
    else:
        padding = padding_mask(stored, ds)
        try:
            values = apply_modality_lut(stored, ds)
            image, voi_rule = apply_voi(values, ds, voi, None if padding is None else ~padding)
        except Exception as err:
            raise UnreadableDicomError(path, f"cannot apply the modality/VOI LUT: {_one_line(err)}") from None
        if header.photometric == "MONOCHROME1":
            image = 1.0 - image
        if padding is not None:  # padding is background: dark, whatever the VOI made of it
            image = np.where(padding, np.float32(0.0), image)
            voi_rule += "+padding"
    shape = output_shape(header.rows, header.columns, long_side)
    image = resize(image, shape)
    flip, rule = decide_flip(image, header, orient)
    if flip:
        image = np.ascontiguousarray(image[:, ::-1])
    transform = PixelTransform((header.rows, header.columns), shape, flip)
    return Mammogram(image=image.astype(np.float32, copy=False), transform=transform, header=header,
                     voi_rule=voi_rule, orientation_rule=rule)


def read_mammogram(source: DicomSource, *, long_side: int | None = DEFAULT_LONG_SIDE, voi: str | int = "auto",
                   max_pixels: int = DEFAULT_MAX_PIXELS, orient: str = "left") -> Mammogram:
    """Reads a screening mammogram: the ONE preprocessing function for ingest, evaluation and serving.

    Args:
        source: a path, the file's bytes, or a binary file object.
        long_side: output long side in pixels (paper: 3840 / 2.5 = 1536); None keeps the size.
        voi: "auto" (VOI LUT, else first window, else min-max), "window" / int k (window k first),
            or "none" (min-max). See the module docstring.
        max_pixels: reject (before decoding) images with more than this many pixels.
        orient: "left" (chest wall on the left, breast extending right; default), "right", "none".

    Returns:
        The `Mammogram` (image float32 `[H, W]` in [0, 1], transform, header, rules that fired).

    Raises:
        DicomError: a subclass naming the file and the reason; never a raw pydicom/numpy error.
    """
    validate_options(long_side=long_side, voi=voi, orient=orient)
    ds, header = load_header(source, max_pixels=max_pixels)
    stored = stored_values(ds, header.path)
    try:
        return preprocess_pixels(stored, ds, header, long_side=long_side, voi=voi, orient=orient)
    except DicomError:
        raise
    except Exception as err:  # never a raw traceback for a bad file
        raise UnreadableDicomError(header.path, f"cannot preprocess the pixels: {_one_line(err)}") from None


def validate_options(*, long_side: int | None, voi: str | int, orient: str) -> None:
    """Raises ValueError for options `read_mammogram` does not understand (programming errors).

    Args:
        long_side, voi, orient: as in `read_mammogram`.
    """
    if long_side is not None and (not isinstance(long_side, (int, np.integer)) or long_side <= 0):
        raise ValueError(f"long_side must be a positive integer or None, got {long_side!r}")
    if not (voi in ("auto", "window", "none")
            or isinstance(voi, (int, np.integer)) and not isinstance(voi, bool) and voi >= 0):
        raise ValueError(f"voi must be 'auto', 'window', 'none' or a window index >= 0, got {voi!r}")
    if orient not in ("left", "right", "none"):
        raise ValueError(f"orient must be 'left', 'right' or 'none', got {orient!r}")


__all__ = [
    "DEFAULT_LONG_SIDE", "DEFAULT_MAX_PIXELS", "DicomError", "ERROR_CODES", "DicomHeader", "ForProcessingError",
    "FOR_PRESENTATION_SOP_CLASS", "FOR_PROCESSING_SOP_CLASS", "Mammogram", "MultiFrameError",
    "NoPixelDataError", "NotMammographyError", "PixelTransform", "TooLargeError", "UnreadableDicomError",
    "UnsupportedPhotometricError", "UnsupportedTransferSyntaxError", "apply_voi", "check_header",
    "decide_flip", "load_header", "output_shape", "padding_mask", "preprocess_pixels", "read_header", "read_mammogram", "resize",
    "stored_values", "validate_options",
]
