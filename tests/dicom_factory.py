"""Small valid MG 'For Presentation' DICOM files for the tests (uint16 pixels, explicit VR little endian)."""

from __future__ import annotations

import os

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"


def mammogram_dataset(pixels: np.ndarray, *, photometric: str = "MONOCHROME2", bits_stored: int = 12,
                      modality: str = "MG", laterality: str | None = None, view: str | None = None,
                      **tags) -> Dataset:
    """A minimal valid mammogram around `pixels`.

    Args:
        pixels: uint16 stored values [rows, cols].
        photometric: MONOCHROME1 or MONOCHROME2.
        bits_stored: BitsStored (HighBit follows).
        modality: the Modality tag.
        laterality, view: ImageLaterality and ViewPosition; None leaves the tag out.
        **tags: more DICOM keywords to set; a None value deletes the tag.

    Returns:
        The dataset (with file meta), ready for `save_as(..., enforce_file_format=True)`.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = FOR_PRESENTATION
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.Modality = modality
    ds.PresentationIntentType = "FOR PRESENTATION"
    if laterality is not None:
        ds.ImageLaterality = laterality
    if view is not None:
        ds.ViewPosition = view
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    for key, value in tags.items():
        if value is None:
            if key in ds:
                delattr(ds, key)
        else:
            setattr(ds, key, value)
    return ds


def write_mammogram_file(path: str | os.PathLike, pixels: np.ndarray, **kwargs) -> str:
    """Writes `mammogram_dataset(pixels, **kwargs)` to `path` (parents created). Returns: the path."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    mammogram_dataset(pixels, **kwargs).save_as(path, enforce_file_format=True)
    return path
