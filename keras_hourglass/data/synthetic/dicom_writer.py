"""Writes a synthetic mammogram as a real DICOM file (pydicom): MG, Digital Mammography X-Ray Image
Storage - For Presentation, with window / VOI LUT, laterality and view tags, and optional compression
through pydicom's own encoders (RLE Lossless; JPEG 2000 Lossless when pylibjpeg-openjpeg is present).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from keras_hourglass.data.dicom import FOR_PRESENTATION_SOP_CLASS


@dataclasses.dataclass(frozen=True)
class DicomTags:
    """The per-image header content.

    Attributes:
        patient_name, patient_id, birth_date, accession_number: fake PHI (written as given).
        study_uid, series_uid, sop_uid: DICOM UIDs.
        study_date: "YYYYMMDD".
        laterality: "L" or "R"; view: "CC" or "MLO".
        photometric: "MONOCHROME1" or "MONOCHROME2"; bits_stored: 12..16.
        windows: [(center, width), ...] (may be empty); voi_function: "LINEAR" or "SIGMOID".
        voi_lut: LUT Data (uint16 array over stored values 0..2**bits-1) or None.
        transfer_syntax: the UID to store with (compressed through `Dataset.compress`).
        image_laterality_tag: write ImageLaterality (else only the series-level Laterality).
        patient_orientation: write PatientOrientation.
        pixel_spacing_mm: Imager Pixel Spacing.
        series_number, instance_number: numbering.
        pixel_padding: Pixel Padding Value (stored units) marking the air around the breast, or None.
    """

    patient_name: str
    patient_id: str
    birth_date: str
    accession_number: str
    study_uid: str
    series_uid: str
    sop_uid: str
    study_date: str
    laterality: str
    view: str
    photometric: str
    bits_stored: int
    windows: tuple[tuple[float, float], ...]
    voi_function: str
    voi_lut: np.ndarray | None
    transfer_syntax: str
    image_laterality_tag: bool = True
    patient_orientation: bool = True
    pixel_spacing_mm: float = 0.47
    series_number: int = 1
    instance_number: int = 1
    pixel_padding: int | None = None


_ORIENTATION = {("L", "CC"): ["A", "R"], ("R", "CC"): ["P", "L"], ("L", "MLO"): ["A", "FR"],
                ("R", "MLO"): ["P", "FL"]}


def write_mammogram_dicom(path: str | os.PathLike, stored: np.ndarray, tags: DicomTags) -> None:
    """Writes one mammogram.

    Args:
        path: output file.
        stored: uint16 `[rows, cols]` stored values, already in the photometric convention of
            `tags.photometric` and already mirrored for right breasts.
        tags: the header content.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = FOR_PRESENTATION_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = tags.sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = FOR_PRESENTATION_SOP_CLASS
    ds.SOPInstanceUID = tags.sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = tags.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "090000"
    ds.AccessionNumber = tags.accession_number
    ds.Modality = "MG"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = "keras-hourglass synthetic"
    ds.InstitutionName = "Synthetic Screening Centre"
    ds.PatientName = tags.patient_name
    ds.PatientID = tags.patient_id
    ds.PatientBirthDate = tags.birth_date
    ds.PatientSex = "F"
    ds.BodyPartExamined = "BREAST"
    ds.BurnedInAnnotation = "NO"
    ds.StudyInstanceUID = tags.study_uid
    ds.SeriesInstanceUID = tags.series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = tags.series_number
    ds.InstanceNumber = tags.instance_number
    ds.Laterality = tags.laterality
    if tags.image_laterality_tag:
        ds.ImageLaterality = tags.laterality
    if tags.patient_orientation:
        ds.PatientOrientation = _ORIENTATION[(tags.laterality, tags.view)]
    ds.ViewPosition = tags.view
    ds.FieldOfViewHorizontalFlip = "NO"
    ds.ImagerPixelSpacing = [f"{tags.pixel_spacing_mm:.4f}"] * 2
    ds.PixelIntensityRelationship = "LOG"
    # DX/MG IOD: IDENTITY with MONOCHROME2, INVERSE with MONOCHROME1 (the same inversion, not a second).
    ds.PresentationLUTShape = "INVERSE" if tags.photometric == "MONOCHROME1" else "IDENTITY"
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    if tags.windows:
        ds.WindowCenter = [f"{c:.1f}" for c, _ in tags.windows]
        ds.WindowWidth = [f"{w:.1f}" for _, w in tags.windows]
        names = ("NORMAL", "HARDER", "SOFTER")
        ds.WindowCenterWidthExplanation = [names[i % 3] for i in range(len(tags.windows))]
        ds.VOILUTFunction = tags.voi_function
    if tags.pixel_padding is not None:
        ds.add_new(0x00280120, "US", int(tags.pixel_padding))  # Pixel Padding Value (US: unsigned data)
    if tags.voi_lut is not None:
        item = Dataset()
        lut = np.asarray(tags.voi_lut, dtype="<u2")
        item.add_new(0x00283002, "US", [int(lut.size) % 65536, 0, 16])  # LUT Descriptor
        item.add_new(0x00283006, "OW", lut.tobytes())  # LUT Data, as most modalities write it
        item.LUTExplanation = "SYNTHETIC SIGMOID"
        ds.VOILUTSequence = Sequence([item])
    # generate_instance_uid=False: keep the deterministic SOP Instance UID (pydicom's default would
    # replace it with a random one, breaking seed determinism).
    ds.set_pixel_data(np.ascontiguousarray(stored, dtype=np.uint16), tags.photometric, tags.bits_stored,
                      generate_instance_uid=False)
    if tags.transfer_syntax != ExplicitVRLittleEndian:
        ds.compress(tags.transfer_syntax, generate_instance_uid=False)
    ds.save_as(path, enforce_file_format=True)
