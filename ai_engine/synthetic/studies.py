"""Synthetic phantom studies written as real DICOM, with their ground truth.

``write_study`` is what tests, benchmarks, the demo and training use to get a study a PACS
could have sent. Everything is drawn from one seeded numpy Generator, so a seed is a study.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pydicom
from highdicom.legacy import LegacyConvertedEnhancedCTImage
from pydicom.uid import generate_uid

from ai_engine.errors import SyntheticError
from ai_engine.synthetic.chest_ct import CHEST_SLICES, chest_spacing, make_chest_ct
from ai_engine.synthetic.dicom_writer import StudyHeader, write_ct_series, write_mammo_view
from ai_engine.synthetic.head_ct import HEAD_SLICES, head_spacing, make_head_ct
from ai_engine.synthetic.mammo_phantom import VIEWS, make_mammo_views, mammo_spacing
from ai_engine.synthetic.truth import LesionTruth

STUDY_KINDS = ("head_ct", "chest_ct", "mammo")
MIN_ROWS = 64

__all__ = ["STUDY_KINDS", "LesionTruth", "SyntheticStudy", "legacy_enhanced_ct", "write_study"]


@dataclass(frozen=True)
class SyntheticStudy:
    """The files of one written study, its identifiers and the truth of its lesions."""

    paths: list[Path]
    study_instance_uid: str
    series_instance_uids: list[str]
    accession_number: str
    patient_id: str
    lesions: list[LesionTruth]


def _header(rng: np.random.Generator, seed: int, kind: str, patient_id: str | None,
            accession_number: str | None, performed_at: datetime | None) -> StudyHeader:
    """Identity of a synthetic patient and study; names say SYNTHETIC so nobody mistakes them. The study is dated
    ``performed_at`` (in the server's local time) when given, else at a drawn moment of 2024; the moment is drawn
    either way, so a seed gives the same phantom."""
    drawn = datetime(2024, 1, 1) + timedelta(days=int(rng.integers(0, 365)))
    birth_days = int(rng.integers(30 * 365, 85 * 365))
    sex = "F" if kind == "mammo" else str(rng.choice(["F", "M"]))
    drawn = drawn.replace(hour=int(rng.integers(0, 24)), minute=int(rng.integers(0, 60)))
    moment = drawn if performed_at is None else performed_at.astimezone().replace(tzinfo=None)
    birth = moment.date() - timedelta(days=birth_days)
    return StudyHeader(
        patient_id=patient_id or f"SYN{seed:08d}",
        patient_name=f"SYNTHETIC^PHANTOM{seed}",
        accession_number=accession_number or f"SYNACC{seed:08d}{STUDY_KINDS.index(kind)}",
        study_instance_uid=generate_uid(),
        study_date=moment.strftime("%Y%m%d"),
        study_time=moment.strftime("%H%M%S"),
        patient_birth_date=birth.strftime("%Y%m%d"),
        patient_sex=sex,
    )


def write_study(kind: str, out_dir: Path, *, seed: int = 0, lesion: bool = True, rows: int = 512,
                slices: int | None = None, patient_id: str | None = None,
                accession_number: str | None = None, performed_at: datetime | None = None) -> SyntheticStudy:
    """Generate a phantom study of ``kind`` ("head_ct", "chest_ct", "mammo") and write it to ``out_dir``.

    ``rows`` is the image matrix (CT: rows x rows; mammo: image height, width 3/4 of it);
    ``slices`` defaults to 40 x 5 mm for head CT and 120 x 2.5 mm for chest CT. ``performed_at`` dates the study
    (a study that goes with clinical data of today); by default it is dated in 2024.
    """
    if kind not in STUDY_KINDS:
        raise SyntheticError(f"study kind must be one of {STUDY_KINDS}, got {kind!r}")
    if rows < MIN_ROWS:
        raise SyntheticError(f"rows must be at least {MIN_ROWS} for a recognisable phantom, got {rows}")
    if slices is not None and slices < 8:
        raise SyntheticError(f"slices must be at least 8, got {slices}")
    rng = np.random.default_rng(seed)
    header = _header(rng, seed, kind, patient_id, accession_number, performed_at)
    out_dir = Path(out_dir)
    if kind == "mammo":
        laterality = str(rng.choice(["L", "R"]))
        images, truths = make_mammo_views(rng, rows, laterality, lesion)
        series_uid = generate_uid()
        paths = [write_mammo_view(image, mammo_spacing(rows), out_dir, header, laterality=laterality,
                                  view=view, series_uid=series_uid, instance_number=i + 1)
                 for i, (image, view) in enumerate(zip(images, VIEWS, strict=True))]
        return SyntheticStudy(paths, header.study_instance_uid, [series_uid], header.accession_number,
                              header.patient_id, truths)
    if kind == "head_ct":
        hu, truths = make_head_ct(rng, rows, slices or HEAD_SLICES, lesion)
        spacing, body_part, description, signed = head_spacing(rows), "HEAD", "HEAD CT", False
    else:
        hu, truths = make_chest_ct(rng, rows, slices or CHEST_SLICES, lesion)
        spacing, body_part, description, signed = chest_spacing(rows), "CHEST", "CHEST CT", True
    paths, series_uid = write_ct_series(hu, spacing, out_dir, header, frame_of_reference_uid=generate_uid(),
                                        body_part=body_part, description=description, signed=signed)
    return SyntheticStudy(paths, header.study_instance_uid, [series_uid], header.accession_number,
                          header.patient_id, truths)


def legacy_enhanced_ct(study: SyntheticStudy, out_dir: Path) -> SyntheticStudy:
    """``study`` (a CT study of ``write_study``) as one Legacy Converted Enhanced CT image in a new series of the same
    study: a multi-frame image as an archive that stores CT that way sends it, with the same lesions."""
    if len(study.series_instance_uids) != 1:
        raise SyntheticError(f"a CT study of one series is converted, got {len(study.series_instance_uids)} series")
    slices = [pydicom.dcmread(path) for path in study.paths]
    if str(slices[0].Modality) != "CT":
        raise SyntheticError(f"a CT study is converted, got modality {slices[0].Modality}")
    series_uid = generate_uid()
    image = LegacyConvertedEnhancedCTImage(slices, series_instance_uid=series_uid, series_number=int(
        slices[0].SeriesNumber) + 100, sop_instance_uid=generate_uid(), instance_number=1)
    path = Path(out_dir) / f"{image.SOPInstanceUID}.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save_as(path, enforce_file_format=True)
    return dataclasses.replace(study, paths=[path], series_instance_uids=[series_uid])
