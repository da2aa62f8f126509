"""CAD results as DICOM, written with highdicom: a Structured Report and a presentation state per image.

- `write_sr`: a Comprehensive SR whose content is TID 1500 (Imaging Measurement Report), one TID 1410
  measurement group per mark: an image-region SCOORD POINT at the mark in ORIGINAL pixel coordinates
  (DICOM's frame: column, row; the top-left corner of the top-left pixel is (0, 0), the same continuous
  frame as `keras_hourglass.data.dicom.PixelTransform`), referencing the source image's SOP Instance
  UID, with the score as a "Certainty of Finding" (DCM 111012) measurement (unit "1": the detector's
  heatmap score, not a calibrated probability).
- `write_gsps`: a Grayscale Softcopy Presentation State drawing one circle per mark (and its score)
  on the source image, radius `overlay_radius` as in the PNG overlays.

The SR and the GSPS go back to the PACS that sent the image, so they carry the source's patient and
study modules (copied by highdicom from the source, as DICOM requires). They are the only artifacts that
do: predict's JSON carries the instance UIDs, laterality and view, never patient identity.
Files are named by the source SOP Instance UID (`<uid>.SR.dcm`, `<uid>.PR.dcm`; never by the input's
path, which may hold a patient name) and written atomically (encoded in memory, temp file + rename): a
source that cannot be described is an `InputError` naming the file and nothing is written.
"""

from __future__ import annotations

import io
import os

import numpy as np

from keras_hourglass.errors import InputError
from keras_hourglass.storage import join as storage_join
from keras_hourglass.storage import write_bytes as write_bytes_atomic

# Type 1 attributes the references need; without them there is nothing to refer to.
REQUIRED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
# Type 2 attributes of the patient and study modules: highdicom copies them; absent ones become empty.
TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
         "ReferringPhysicianName", "StudyID", "AccessionNumber")
SR_SERIES_NUMBER = 9100
PR_SERIES_NUMBER = 9101
IDENTIFIERS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


def overlay_radius(image_shape: tuple[int, int]) -> int:
    """Returns: the circle radius of a mark in preprocessed-image pixels (PNG overlays and GSPS)."""
    return max(4, round(max(image_shape) / 60))


def read_source(path: str | os.PathLike):
    """Reads a source DICOM's header (no pixels) for the references.

    Raises:
        InputError: unreadable, or without one of `REQUIRED`.
    """
    import pydicom

    try:
        ds = pydicom.dcmread(os.fspath(path), stop_before_pixels=True)
    except Exception as err:  # noqa: BLE001 - pydicom raises many types on garbage
        raise InputError(path, f"cannot read the DICOM header ({type(err).__name__})") from None
    missing = [k for k in REQUIRED if not str(ds.get(k, "") or "").strip()]
    if missing:
        raise InputError(path, f"cannot reference the image in DICOM outputs: no {', '.join(missing)}")
    return ds


def image_identifiers(path: str | os.PathLike, header=None) -> dict:
    """Returns: the source's `StudyInstanceUID`, `SeriesInstanceUID`, `SOPInstanceUID` (None when absent),
    `laterality`, `view`; never patient identity.

    Args:
        path: the source DICOM (already read successfully by `read_mammogram`).
        header: its `keras_hourglass.data.dicom.DicomHeader` (laterality/view as ingest reads them).
    """
    import pydicom

    try:
        ds = pydicom.dcmread(os.fspath(path), stop_before_pixels=True, specific_tags=list(IDENTIFIERS))
    except Exception:  # noqa: BLE001 - the pixels were readable; the ids are then simply unknown
        ds = {}
    found = {k: str(ds.get(k, "") or "") or None for k in IDENTIFIERS}
    found["laterality"] = getattr(header, "laterality", None)
    found["view"] = getattr(header, "view", None)
    return found


def _evidence(ds):
    """A copy of the source header with the empty Type 2 attributes highdicom needs present."""
    import copy

    ds = copy.deepcopy(ds)
    for keyword in TYPE2:
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds


def _save(dataset, path: str) -> str:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    write_bytes_atomic(path, buffer.getvalue())
    return path


class DicomResultWriter:
    """Writes SRs and/or GSPSs for the detections of one `hourglass predict` run.

    One SR series and one GSPS series per source study (a series belongs to one study).

    Args:
        sr_dir: directory for the SRs (None: none written).
        pr_dir: directory for the presentation states (None: none written).
        algorithm_version: version recorded as the algorithm's (e.g. "0.1.0, model version 3").
    """

    def __init__(self, sr_dir: str | None = None, pr_dir: str | None = None, *, algorithm_version: str = ""):
        self.sr_dir, self.pr_dir = sr_dir, pr_dir
        self.algorithm_version = algorithm_version or "unknown"
        self._series: dict[tuple[str, str], str] = {}
        self._instances: dict[tuple[str, str], int] = {}

    def _series_of(self, kind: str, study: str) -> tuple[str, int]:
        from pydicom.uid import generate_uid

        key = (kind, study)
        series = self._series.setdefault(key, generate_uid())
        self._instances[key] = self._instances.get(key, 0) + 1
        return series, self._instances[key]

    def write(self, detection, source_path: str | os.PathLike) -> dict[str, str]:
        """Writes the configured outputs for one detection. Returns: {"dicom_sr": path, "dicom_pr": path}.

        Raises:
            InputError: the source cannot be referenced or highdicom refuses it (nothing is written).
        """
        ds = read_source(source_path)
        written = {}
        try:
            sr = self.build_sr(detection, ds) if self.sr_dir else None
            pr = self.build_gsps(detection, ds) if self.pr_dir else None
        except (ValueError, TypeError, AttributeError, KeyError) as err:
            reason = (str(err).splitlines() or [type(err).__name__])[0][:200]
            raise InputError(source_path, f"cannot describe the image in DICOM outputs: {reason}") from None
        uid = str(ds.SOPInstanceUID)
        if sr is not None:
            written["dicom_sr"] = _save(sr, storage_join(self.sr_dir, f"{uid}.SR.dcm"))
        if pr is not None:
            written["dicom_pr"] = _save(pr, storage_join(self.pr_dir, f"{uid}.PR.dcm"))
        return written

    def build_sr(self, detection, ds):
        """Returns: the `highdicom.sr.ComprehensiveSR` (TID 1500) of `detection` on source `ds`."""
        import highdicom as hd
        from pydicom.sr.codedict import codes
        from pydicom.uid import generate_uid

        algorithm = hd.sr.AlgorithmIdentification(name="keras-hourglass", version=self.algorithm_version)
        source = hd.sr.SourceImageForRegion.from_source_image(ds)
        groups = []
        for rank, ((y, x), score) in enumerate(zip(detection.original_marks, detection.marks[:, 2]), start=1):
            region = hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POINT,
                                       graphic_data=np.array([[float(x), float(y)]]), source_image=source)
            groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=f"mark {rank}"),
                referenced_region=region,
                finding_type=codes.SCT.Lesion,
                algorithm_id=algorithm,
                measurements=[hd.sr.Measurement(name=codes.DCM.CertaintyOfFinding, value=float(score),
                                                unit=codes.UCUM.NoUnits, algorithm_id=algorithm)],
            ))
        observer = hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=generate_uid(), name="keras-hourglass", model_name="hourglass"),
        )
        report = hd.sr.MeasurementReport(
            observation_context=hd.sr.ObservationContext(observer_device_context=observer),
            procedure_reported=codes.SCT.Mammography,
            imaging_measurements=groups or None,
            title=codes.DCM.ImagingMeasurementReport,
        )
        series, number = self._series_of("sr", str(ds.StudyInstanceUID))
        return hd.sr.ComprehensiveSR(
            evidence=[_evidence(ds)], content=report, series_instance_uid=series, series_number=SR_SERIES_NUMBER,
            sop_instance_uid=generate_uid(), instance_number=number, manufacturer="keras-hourglass",
            is_complete=True, series_description="CAD marks (keras-hourglass)",
        )

    def build_gsps(self, detection, ds):
        """Returns: the `highdicom.pr.GrayscaleSoftcopyPresentationState` circling the marks on `ds`."""
        from highdicom.pr import (
            AnnotationUnitsValues,
            GraphicAnnotation,
            GraphicLayer,
            GraphicObject,
            GraphicTypeValues,
            GrayscaleSoftcopyPresentationState,
            TextObject,
        )
        from pydicom.uid import generate_uid

        rows, cols = int(ds.Rows), int(ds.Columns)
        scale = detection.image_shape[1] / detection.original_shape[1]
        radius = overlay_radius(detection.image_shape) / scale  # original pixels
        layer = GraphicLayer(layer_name="CAD", order=1, description="keras-hourglass marks")
        circles, texts = [], []
        for (y, x), score in zip(detection.original_marks, detection.marks[:, 2]):
            edge = x + radius if x + radius <= cols else x - radius  # a point of the circle inside the image
            circles.append(GraphicObject(graphic_type=GraphicTypeValues.CIRCLE,
                                         graphic_data=np.array([[x, y], [edge, y]], np.float64),
                                         units=AnnotationUnitsValues.PIXEL))
            anchor = (float(np.clip(x + radius, 0, cols)), float(np.clip(y - radius, 0, rows)))
            texts.append(TextObject(text_value=f"{score:.2f}", units=AnnotationUnitsValues.PIXEL,
                                    anchor_point=anchor))
        annotations = [GraphicAnnotation(referenced_images=[ds], graphic_layer=layer, graphic_objects=circles,
                                         text_objects=texts)] if circles else None
        series, number = self._series_of("pr", str(ds.StudyInstanceUID))
        return GrayscaleSoftcopyPresentationState(
            referenced_images=[_evidence(ds)], series_instance_uid=series, series_number=PR_SERIES_NUMBER,
            sop_instance_uid=generate_uid(), instance_number=number, manufacturer="keras-hourglass",
            manufacturer_model_name="hourglass", software_versions=self.algorithm_version,
            device_serial_number="0", content_label="CAD_MARKS", graphic_layers=[layer],
            graphic_annotations=annotations,
        )
