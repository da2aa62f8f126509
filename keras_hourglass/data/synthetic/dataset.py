"""A synthetic screening population: patients, exams of 2-4 views, labels, DICOM files, CSV, PHI list.

Layout written by `generate_dataset(out_dir, config)`:

    out_dir/images/pNNNNN/sK/<L|R>_<CC|MLO>.dcm   real DICOM files (see dicom_writer)
    out_dir/annotations.csv                        canonical CSV (DESIGN.md), boxes in ORIGINAL pixels
    out_dir/phi.json                               every fake PHI value written into the DICOM files

Exams rotate through six "device profiles" (photometric, bits stored, transfer syntax, VOI style,
tags present), so any three consecutive exams include a MONOCHROME1 and a compressed one. Labels are
drawn per breast (both views of a breast show the same kind of finding at view-specific positions);
prevalence per image follows the configured rates. Deterministic for a seed: each image is rendered
from its own random stream `(seed, index)`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import time
from typing import Any, Iterator

import numpy as np

from keras_hourglass.contract import LABELS
from keras_hourglass.data.synthetic.anatomy import breast_density_map, draw_geometry
from keras_hourglass.data.synthetic.dicom_writer import DicomTags, write_mammogram_dicom
from keras_hourglass.data.synthetic.findings import (
    DEFAULT_STRESS,
    FindingSpec,
    RenderedFinding,
    StressSettings,
    draw_spec,
    render_finding,
)

CSV_COLUMNS = ("image_path", "patient_id", "study_id", "laterality", "view", "label", "finding_type",
               "xmin", "ymin", "xmax", "ymax")
PHI_FIELDS = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber")
DEFAULT_HEIGHT, DEFAULT_WIDTH = 640, 512
UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's root; UIDs made deterministic by entropy sources

_SURNAMES = ("Lindqvist", "Okonkwo", "Haverkamp", "Marchetti", "Szczepanska", "Delacroix", "Yamaguchi",
             "Fitzgerald", "Abernathy", "Castellanos", "Nakashima", "Oyelaran", "Vasquez-Ortiz", "Brennagh",
             "Kowalczyk", "Thorvaldsen", "Papadakis", "Quenneville", "Rautiainen", "Zielinska", "Achterberg",
             "Montgomery", "Bergqvist", "Iwasaki", "Ferreira-Lopes", "Hallorann", "Dragomir", "Esterhuizen")
_GIVEN = ("Marjatta", "Ngozi", "Hendrika", "Giuliana", "Agnieszka", "Solange", "Keiko", "Siobhan",
          "Prudence", "Ximena", "Harumi", "Folasade", "Rosalind", "Ingeborg", "Ottilie", "Wilhelmina",
          "Dagny", "Philippa", "Esperanza", "Theodora", "Liesbeth", "Annunziata", "Mirela", "Bronwyn")

# Device profiles: (photometric, bits, syntax, voi style, ImageLaterality tag, PatientOrientation tag,
# air padded with Pixel Padding Value 0)
_PROFILES = (
    ("MONOCHROME2", 12, "raw", "window", True, True, False),
    ("MONOCHROME1", 14, "rle", "windows_sigmoid", True, True, False),
    ("MONOCHROME2", 14, "j2k", "lut_and_windows", True, False, False),
    ("MONOCHROME2", 12, "raw", "windows", False, True, True),
    ("MONOCHROME1", 12, "raw", "lut", True, True, False),
    ("MONOCHROME2", 14, "rle", "window", True, False, False),
)


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    """What to synthesise.

    Attributes:
        num_images: number of images (the last exam is cut to fit).
        seed: random seed (same seed -> byte-identical CSV and identical pixels).
        height, width: original image size in pixels (default 640 x 512).
        malignant_rate, high_risk_rate, benign_rate: per-image prevalence; normal = the rest.
            Defaults are close to screening: 1 % malignant, 1 % high-risk, 5 % benign.
        stress: box looseness / offset, lesion size spread and contrast (`StressSettings`).
    """

    num_images: int
    seed: int = 0
    height: int = DEFAULT_HEIGHT
    width: int = DEFAULT_WIDTH
    malignant_rate: float = 0.01
    high_risk_rate: float = 0.01
    benign_rate: float = 0.05
    stress: StressSettings = DEFAULT_STRESS

    def label_probabilities(self) -> tuple[float, float, float, float]:
        """Returns: P(normal), P(benign), P(high_risk), P(malignant). Raises ValueError if invalid."""
        rates = (self.benign_rate, self.high_risk_rate, self.malignant_rate)
        if any(not 0.0 <= r <= 1.0 for r in rates) or sum(rates) > 1.0 + 1e-9:
            raise ValueError(f"rates must be in [0, 1] and sum to at most 1, got benign={self.benign_rate}, "
                             f"high_risk={self.high_risk_rate}, malignant={self.malignant_rate}")
        return (max(0.0, 1.0 - sum(rates)), *rates)

    def validate(self) -> None:
        """Raises ValueError on an unusable configuration."""
        self.label_probabilities()
        self.stress.validate()
        if self.num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {self.num_images}")
        if self.height < 64 or self.width < 48:
            raise ValueError(f"images must be at least 64 x 48 pixels, got {self.height} x {self.width}")


@dataclasses.dataclass(frozen=True)
class ImagePlan:
    """Everything about one image except its random appearance."""

    index: int
    rel_path: str
    patient_index: int
    laterality: str
    view: str
    label: str
    findings: tuple[FindingSpec, ...]
    density: float
    profile: int
    tags: DicomTags


def _uid(seed: int, *parts: Any) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(UID_ROOT, ["keras-hourglass-synth", str(seed), *map(str, parts)]))


def _breast_findings(label: str, rng: np.random.Generator) -> tuple[FindingSpec, ...]:
    if label == "normal":
        return ()
    specs = [draw_spec(label, rng)]
    if rng.random() < 0.12:
        specs.append(draw_spec(label, rng))
    if label != "benign" and rng.random() < 0.08:
        specs.append(draw_spec("benign", rng))
    return tuple(specs)


def plan_dataset(config: SynthConfig) -> list[ImagePlan]:
    """Draws patients, exams, views, labels and header content (no pixels).

    Args:
        config: the configuration.

    Returns:
        `config.num_images` plans in file order.
    """
    from pydicom.pixels import get_encoder
    from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless

    config.validate()
    probs = np.asarray(config.label_probabilities())
    rng = np.random.default_rng([config.seed, 0])
    j2k = JPEG2000Lossless if get_encoder(JPEG2000Lossless).is_available else RLELossless
    syntaxes = {"raw": ExplicitVRLittleEndian, "rle": RLELossless, "j2k": j2k}
    offset = int(rng.integers(len(_PROFILES)))
    spacing = 300.0 / config.height  # a ~30 cm detector
    plans: list[ImagePlan] = []
    names: set[str] = set()
    ids: set[str] = set()
    accessions: set[str] = set()
    exam_counter = 0
    patient = 0
    while len(plans) < config.num_images:
        while True:
            name = f"{_SURNAMES[rng.integers(len(_SURNAMES))]}^{_GIVEN[rng.integers(len(_GIVEN))]}^" \
                   f"{chr(65 + int(rng.integers(26)))}"
            pid = f"HX{int(rng.integers(10**6, 10**7))}{chr(65 + int(rng.integers(26)))}"
            if name not in names and pid not in ids:
                names.add(name), ids.add(pid)
                break
        birth_year = int(rng.integers(1946, 1985))
        birth = f"{birth_year}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
        n_exams = 1 + int(rng.random() < 0.45) + int(rng.random() < 0.2)
        first_year = int(rng.integers(2016, 2021))
        for exam in range(n_exams):
            if len(plans) >= config.num_images:
                break
            while True:
                accession = f"ACN{int(rng.integers(10**8, 10**9))}"
                if accession not in accessions:
                    accessions.add(accession)
                    break
            year = first_year + 2 * exam
            study_date = f"{year}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
            profile = (offset + exam_counter) % len(_PROFILES)
            photometric, bits, syntax, voi_style, lat_tag, orient_tag, padded = _PROFILES[profile]
            exam_counter += 1
            study_uid = _uid(config.seed, "study", patient, exam)
            views = [("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO")]
            u = rng.random()
            if u < 0.15:
                views = [views[i] for i in sorted(rng.choice(4, 3, replace=False))]
            elif u < 0.30:
                views = views[:2] if rng.random() < 0.5 else views[2:]
            breasts = {}
            for side in ("L", "R"):
                label = LABELS[int(rng.choice(4, p=probs))]
                breasts[side] = (label, _breast_findings(label, rng), float(np.clip(rng.beta(2, 3), 0.05, 0.9)))
            for k, (side, view) in enumerate(views):
                if len(plans) >= config.num_images:
                    break
                label, findings, density = breasts[side]
                index = len(plans)
                tags = DicomTags(
                    patient_name=name, patient_id=pid, birth_date=birth, accession_number=accession,
                    study_uid=study_uid, series_uid=_uid(config.seed, "series", patient, exam),
                    sop_uid=_uid(config.seed, "image", index), study_date=study_date, laterality=side,
                    view=view, photometric=photometric, bits_stored=bits, windows=(), voi_function="LINEAR",
                    voi_lut=None, transfer_syntax=syntaxes[syntax], image_laterality_tag=lat_tag,
                    patient_orientation=orient_tag, pixel_spacing_mm=spacing, instance_number=k + 1,
                    pixel_padding=0 if padded else None)
                plans.append(ImagePlan(index, f"images/p{patient:05d}/s{exam + 1}/{side}_{view}.dcm", patient,
                                       side, view, label, findings, density, profile, tags))
        patient += 1
    return plans


def _voi_tags(stored: np.ndarray, tissue: np.ndarray, bits: int, style: str) -> dict[str, Any]:
    """Windows / VOI LUT fitted to the breast's stored values, in the profile's style."""
    values = stored[tissue] if tissue.any() else stored.ravel()
    lo, hi = (float(v) for v in np.percentile(values, [0.5, 99.9]))
    hi = max(hi, lo + 16)
    center, width = (lo + hi) / 2, (hi - lo) * 1.15
    out: dict[str, Any] = {"windows": (), "voi_function": "LINEAR", "voi_lut": None}
    if style in ("window", "windows", "windows_sigmoid", "lut_and_windows"):
        out["windows"] = ((center, width),)
    if style in ("windows", "windows_sigmoid", "lut_and_windows"):
        out["windows"] = ((center, width), (center, width * 0.7))
    if style == "windows_sigmoid":
        out["voi_function"] = "SIGMOID"
    if style in ("lut", "lut_and_windows"):
        v = np.arange(2**bits, dtype=np.float64)
        s = 1.0 / (1.0 + np.exp(-4.0 * (v - center) / width))
        out["voi_lut"] = np.round(65535 * (s - s[0]) / (s[-1] - s[0])).astype(np.uint16)
    return out


def render_image(plan: ImagePlan, config: SynthConfig) -> tuple[np.ndarray, DicomTags, list[RenderedFinding]]:
    """Renders one planned image.

    Args:
        plan: from `plan_dataset`.
        config: the configuration.

    Returns:
        (stored uint16 [H, W] as written to DICOM (mirrored for right breasts, inverted for
        MONOCHROME1), the final tags (windows / LUT filled in), findings with boxes in ORIGINAL
        stored-pixel coordinates).
    """
    rng = np.random.default_rng([config.seed, 1, plan.index])
    shape = (config.height, config.width)
    scale = config.height / DEFAULT_HEIGHT
    geo = draw_geometry(shape, plan.view, rng, density=plan.density)
    density, thickness, allowed = breast_density_map(geo, shape, rng)
    rendered = [render_finding(spec, density, allowed, scale, rng, config.stress) for spec in plan.findings]
    intensity = np.clip(0.02 + thickness * (0.10 + 0.85 * density), 0.0, 1.0).astype(np.float32)
    bits = plan.tags.bits_stored
    maxv = 2**bits - 1
    gain, offset = rng.uniform(0.7, 0.92) * maxv, rng.uniform(0.01, 0.05) * maxv
    signal = offset + gain * intensity
    signal += rng.standard_normal(shape, dtype=np.float32) * np.float32(0.0025 * maxv) * np.sqrt(intensity + 0.05)
    stored = np.clip(np.rint(signal), 1, maxv).astype(np.uint16)
    if plan.tags.pixel_padding is not None:  # the detector's air region, padded (as some vendors do)
        stored[thickness <= 0.0] = plan.tags.pixel_padding
    if plan.tags.photometric == "MONOCHROME1":
        stored = (maxv - stored).astype(np.uint16)
    mirror = plan.laterality == "R"  # right breasts are stored with the chest wall on the right
    if mirror:
        stored = np.ascontiguousarray(stored[:, ::-1])
        w = float(config.width)
        rendered = [dataclasses.replace(
            f, center=(f.center[0], w - f.center[1]),
            tight_box=(f.tight_box[0], w - f.tight_box[3], f.tight_box[2], w - f.tight_box[1]),
            box=(f.box[0], round(w - f.box[3], 1), f.box[2], round(w - f.box[1], 1))) for f in rendered]
    tissue = (thickness > 0.5)[:, ::-1] if mirror else thickness > 0.5
    style = _PROFILES[plan.profile][3]
    tags = dataclasses.replace(plan.tags, **_voi_tags(stored, tissue, bits, style))
    return stored, tags, rendered


def _csv_rows(plan: ImagePlan, findings: list[RenderedFinding]) -> Iterator[list[str]]:
    base = [plan.rel_path, plan.tags.patient_id, plan.tags.study_uid, plan.laterality, plan.view]
    if not findings:
        yield base + ["normal", "", "", "", "", ""]
    for f in findings:
        y0, x0, y1, x1 = f.box
        yield base + [f.spec.label, f.spec.finding_type, f"{x0:.1f}", f"{y0:.1f}", f"{x1:.1f}", f"{y1:.1f}"]


def generate_dataset(out_dir: str | os.PathLike, config: SynthConfig, *, progress: bool = False) -> dict[str, Any]:
    """Writes the synthetic dataset (DICOM files, annotations.csv, phi.json).

    Args:
        out_dir: output directory (created; existing files with the same names are overwritten).
        config: what to synthesise.
        progress: show a progress bar on stderr.

    Returns:
        A JSON-able summary: counts per label (image stratum = most severe finding), finding type,
        transfer syntax and photometric interpretation, timing.
    """
    start = time.perf_counter()
    plans = plan_dataset(config)
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    rows: list[list[str]] = []
    strata = {label: 0 for label in LABELS}
    finding_types: dict[str, int] = {}
    syntaxes: dict[str, int] = {}
    photometric: dict[str, int] = {}
    iterator = plans
    if progress:
        from tqdm import tqdm

        iterator = tqdm(plans, desc="synth", unit="img", leave=False)
    for plan in iterator:
        stored, tags, findings = render_image(plan, config)
        path = os.path.join(out_dir, *plan.rel_path.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_mammogram_dicom(path, stored, tags)
        rows.extend(_csv_rows(plan, findings))
        strata[max((f.spec.label for f in findings), key=LABELS.index, default="normal")] += 1
        for f in findings:
            finding_types[f.spec.finding_type] = finding_types.get(f.spec.finding_type, 0) + 1
        from pydicom.uid import UID

        name = UID(tags.transfer_syntax).name
        syntaxes[name] = syntaxes.get(name, 0) + 1
        photometric[tags.photometric] = photometric.get(tags.photometric, 0) + 1
    csv_path = os.path.join(out_dir, "annotations.csv")
    with open(csv_path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        writer.writerows(rows)
    by_field = {
        "PatientName": sorted({p.tags.patient_name for p in plans}),
        "PatientID": sorted({p.tags.patient_id for p in plans}),
        "PatientBirthDate": sorted({p.tags.birth_date for p in plans}),
        "AccessionNumber": sorted({p.tags.accession_number for p in plans}),
    }
    phi = {
        "description": "Fake PHI written into the synthetic DICOM files. No output of `hourglass prepare` may "
                       "contain any of `values` (PatientName, PatientID, PatientBirthDate, AccessionNumber).",
        "values": sorted({v for vals in by_field.values() for v in vals}),
        "by_field": by_field,
        "identifiers": {"StudyInstanceUID": sorted({p.tags.study_uid for p in plans}),
                        "SOPInstanceUID": [p.tags.sop_uid for p in plans]},
    }
    with open(os.path.join(out_dir, "phi.json"), "w", encoding="utf-8") as fh:
        json.dump(phi, fh, indent=1, sort_keys=True)
        fh.write("\n")
    seconds = time.perf_counter() - start
    return {
        "out": out_dir,
        "annotations": csv_path,
        "images": len(plans),
        "patients": len({p.patient_index for p in plans}),
        "studies": len({p.tags.study_uid for p in plans}),
        "rows": len(rows),
        "images_per_label": strata,
        "findings_per_type": dict(sorted(finding_types.items())),
        "transfer_syntaxes": dict(sorted(syntaxes.items())),
        "photometric": dict(sorted(photometric.items())),
        "height": config.height,
        "width": config.width,
        "seed": config.seed,
        "stress": dataclasses.asdict(config.stress),
        "seconds": round(seconds, 3),
        "images_per_second": round(len(plans) / seconds, 2) if seconds > 0 else None,
    }
