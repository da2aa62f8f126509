"""The optional tensorflow-io DICOM decoder (`hourglass prepare --decoder tfio`).

Pixel decoding runs as a TensorFlow op (`tensorflow_io.image.decode_dicom_image`, DCMTK inside), so
it can sit in a tf.data pipeline. Everything else is shared with the default pydicom path, so both
decoders give the same model input:

- header checks: `keras_hourglass.data.dicom.check_header` on a header-only pydicom parse, BEFORE the
  decode op runs (same typed `DicomError`s);
- post-processing: `keras_hourglass.data.dicom.preprocess_pixels` (modality LUT, VOI LUT / windows,
  MONOCHROME1, resize, orientation), run through `tf.numpy_function`.

Differences from `read_mammogram` (measured in the tfio CI leg, tests/test_tfio.py):
- MONOCHROME2: the decoded stored values are identical to pydicom's, so are the output images.
- MONOCHROME1: DCMTK returns pixels rendered to presentation polarity, out = round((N - v) (N - 1) / N)
  with N = 2**BitsStored (measured). They are mapped back with v = N - round(out N / (N - 1)), which
  is exact except where that rounding collides (about 1 pixel value in 10,000 ends up 1 stored level
  off), so MONOCHROME1 images match to within one stored level after VOI (~1e-3 of the range).
- Signed pixel data (PixelRepresentation 1) and syntaxes DCMTK lacks are rejected with
  `UnsupportedTransferSyntaxError` (use the pydicom decoder). Native, deflated, RLE, JPEG, JPEG-LS
  and JPEG 2000 decode.
- The post-processing is a Python function (`tf.numpy_function`): it holds the GIL and cannot be
  saved in a SavedModel (ingest only; serving uses `read_mammogram` in the client).

tensorflow-io 0.37.1 is its last release and its ops do not load on TensorFlow >= 2.18
(tensorflow/io#2104). It needs TensorFlow 2.17.1 in a separate environment
(`pip install "tensorflow==2.17.1" "tensorflow-io==0.37.1"` or `pip install -e ".[tfio]"`;
`make test-tfio` builds one). Anywhere else, `require_tfio()` raises `TfioUnavailableError`
naming the versions it needs. This module imports TensorFlow only inside its functions.
"""

from __future__ import annotations

import os
from importlib import metadata
from typing import Any

import numpy as np

from keras_hourglass.data import dicom
from keras_hourglass.errors import InputError

REQUIRED_TF = "2.17.1"
REQUIRED_TFIO = "0.37.1"
INSTALL_HINT = (f'pip install "tensorflow=={REQUIRED_TF}" "tensorflow-io=={REQUIRED_TFIO}" '
                '(or pip install -e ".[tfio]") in a separate environment; `make test-tfio` builds one')
# Transfer syntaxes tensorflow-io's DCMTK decodes: native, deflated, RLE, JPEG (.4.5x-.4.7x),
# JPEG-LS (.4.80/.4.81) and JPEG 2000 (.4.90/.4.91).
TFIO_DECODABLE_PREFIXES = ("1.2.840.10008.1.2.4.5", "1.2.840.10008.1.2.4.6", "1.2.840.10008.1.2.4.7",
                           "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.90",
                           "1.2.840.10008.1.2.4.91")
TFIO_DECODABLE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2",
                  "1.2.840.10008.1.2.5"}


class TfioUnavailableError(InputError, RuntimeError):
    """The tfio decoder was chosen where tensorflow-io cannot run (absent, or TensorFlow >= 2.18)."""

    def __init__(self, reason: str):
        super().__init__(None, reason)


def _version(*names: str) -> str | None:
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def tfio_status() -> tuple[bool, str]:
    """Whether the tfio decoder can run here, without importing TensorFlow.

    Returns:
        (available, reason): reason says what is missing or which versions were found.
    """
    tf_version = _version("tensorflow", "tensorflow-cpu", "tf-nightly")
    tfio_version = _version("tensorflow-io")
    found = f"found TensorFlow {tf_version or 'not installed'}, tensorflow-io {tfio_version or 'not installed'}"
    if tfio_version is None:
        return False, (f"the tfio decoder needs tensorflow-io {REQUIRED_TFIO} on TensorFlow {REQUIRED_TF} "
                       f"({found}): {INSTALL_HINT}")
    try:
        major, minor = (int(p) for p in (tf_version or "0.0").split(".")[:2])
    except ValueError:
        major, minor = 0, 0
    if (major, minor) != (2, 17):
        return False, (f"the tfio decoder needs TensorFlow {REQUIRED_TF} with tensorflow-io {REQUIRED_TFIO}: "
                       f"tensorflow-io's ops do not load on TensorFlow >= 2.18 (tensorflow/io#2104) ({found}); "
                       f"{INSTALL_HINT}")
    return True, found


def require_tfio():
    """Returns the `tensorflow_io` module, or raises `TfioUnavailableError` with the versions needed."""
    ok, reason = tfio_status()
    if not ok:
        raise TfioUnavailableError(reason)
    try:
        import tensorflow_io as tfio

        tfio.image.decode_dicom_image  # noqa: B018  (loads the op library)
    except Exception as err:  # undefined symbols, missing shared objects...
        raise TfioUnavailableError(f"tensorflow-io is installed but its ops do not load ({err}); "
                                   f"{INSTALL_HINT}") from None
    return tfio


def _check_tfio_header(contents: bytes, name: str | None, max_pixels: int) -> tuple[Any, dicom.DicomHeader]:
    ds, header = dicom.load_header(contents, name=name, max_pixels=max_pixels)
    ts = header.transfer_syntax_uid
    if ts not in TFIO_DECODABLE and not ts.startswith(TFIO_DECODABLE_PREFIXES):
        raise dicom.UnsupportedTransferSyntaxError(
            name, f"tensorflow-io (DCMTK) cannot decode transfer syntax {ts}; use the pydicom decoder")
    if int(ds.get("PixelRepresentation", 0) or 0) != 0:
        raise dicom.UnsupportedTransferSyntaxError(name, "signed pixel data is not supported by the tfio "
                                                         "decoder; use the pydicom decoder")
    return ds, header


def _stored_from_dcmtk(values: np.ndarray, header: dicom.DicomHeader) -> np.ndarray:
    """DCMTK output -> stored values (MONOCHROME1: undo DCMTK's polarity rendering, see module doc)."""
    values = np.asarray(values)
    if values.ndim == 4:
        values = values[0, ..., 0]
    elif values.ndim == 3:
        values = values[0]
    if header.photometric == "MONOCHROME1":
        n = float(2 ** header.bits_stored)
        values = n - np.rint(values.astype(np.float64) * n / (n - 1.0))
        values = np.clip(values, 0, n - 1)
    return values.astype(np.uint16)


def decode_dicom_tfio(source: Any, *, long_side: int | None = dicom.DEFAULT_LONG_SIDE, voi: str | int = "auto",
                      orient: str = "left", max_pixels: int = dicom.DEFAULT_MAX_PIXELS):
    """Decodes one DICOM with tensorflow-io inside TensorFlow (usable in `tf.data.Dataset.map`).

    Args:
        source: a scalar string tensor (or str) holding a file path, or a `tf.Tensor` of file bytes
            passed as `bytes` (a Python bytes object).
        long_side, voi, orient, max_pixels: as in `keras_hourglass.data.dicom.read_mammogram`.

    Returns:
        (image float32 `[H, W, 1]` in [0, 1], transform float32 `[5]` (`PixelTransform.to_list`),
        stored uint16 `[rows, cols]`: the decoded stored values).

    Raises:
        TfioUnavailableError: tensorflow-io cannot run here. A bad file raises, when the dataset is
        iterated, a `tf.errors.OpError` whose message is the `DicomError` line (file and reason).
    """
    dicom.validate_options(long_side=long_side, voi=voi, orient=orient)
    tfio = require_tfio()
    import tensorflow as tf

    if isinstance(source, bytes):
        contents, name = tf.constant(source), tf.constant("")
    else:
        name = tf.convert_to_tensor(source, dtype=tf.string)
        contents = tf.io.read_file(name)

    def check(data: bytes, path: bytes) -> np.int64:
        _check_tfio_header(data, path.decode() or None, max_pixels)
        return np.int64(0)

    checked = tf.numpy_function(check, [contents, name], tf.int64, stateful=False)
    with tf.control_dependencies([checked]):
        raw = tfio.image.decode_dicom_image(tf.identity(contents), on_error="strict", scale="preserve",
                                            dtype=tf.uint16)

    def post(data: bytes, path: bytes, values: np.ndarray):
        ds, header = _check_tfio_header(data, path.decode() or None, max_pixels)
        stored = _stored_from_dcmtk(values, header)
        mam = dicom.preprocess_pixels(stored, ds, header, long_side=long_side, voi=voi, orient=orient)
        return (mam.image[..., None].astype(np.float32), np.asarray(mam.transform.to_list(), np.float32),
                stored.astype(np.uint16))

    image, transform, stored = tf.numpy_function(post, [contents, name, raw], [tf.float32, tf.float32, tf.uint16],
                                                 stateful=False)
    image.set_shape([None, None, 1])
    transform.set_shape([5])
    stored.set_shape([None, None])
    return image, transform, stored


def read_mammogram_tfio(path: str | os.PathLike, *, long_side: int | None = dicom.DEFAULT_LONG_SIDE,
                        voi: str | int = "auto", orient: str = "left",
                        max_pixels: int = dicom.DEFAULT_MAX_PIXELS) -> dicom.Mammogram:
    """Eager, per-file form of the tfio decoder with the same result type as `read_mammogram`.

    Args:
        path: the DICOM file.
        long_side, voi, orient, max_pixels: as in `read_mammogram`.

    Returns:
        The `Mammogram`.

    Raises:
        TfioUnavailableError: tensorflow-io cannot run here.
        DicomError: a bad file (same checks as `read_mammogram`, plus the syntaxes DCMTK lacks).
    """
    dicom.validate_options(long_side=long_side, voi=voi, orient=orient)
    tfio = require_tfio()
    import tensorflow as tf

    name = os.fspath(path)
    try:
        with open(name, "rb") as fh:
            data = fh.read()
    except OSError as err:
        raise dicom.UnreadableDicomError(name, f"cannot read file: {err.strerror or err}") from None
    ds, header = _check_tfio_header(data, name, max_pixels)
    try:
        raw = tfio.image.decode_dicom_image(tf.constant(data), on_error="strict", scale="preserve",
                                            dtype=tf.uint16).numpy()
    except tf.errors.OpError as err:
        raise dicom.UnreadableDicomError(name, f"tensorflow-io cannot decode the pixel data: "
                                               f"{' '.join(str(err).split())[:200]}") from None
    stored = _stored_from_dcmtk(raw, header)
    try:
        return dicom.preprocess_pixels(stored, ds, header, long_side=long_side, voi=voi, orient=orient)
    except dicom.DicomError:
        raise
    except Exception as err:  # never a raw traceback for a bad file
        raise dicom.UnreadableDicomError(name, f"cannot preprocess the pixels: {err}") from None


__all__ = ["REQUIRED_TF", "REQUIRED_TFIO", "TfioUnavailableError", "decode_dicom_tfio", "read_mammogram_tfio",
           "require_tfio", "tfio_status"]
