"""Mammography views: one image per view with its laterality, view and pixel spacing.

Brighter always means denser here (MONOCHROME1 images are inverted on load), so detectors
need not care how the modality stored them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from ai_engine.errors import VolumeError

# View Code Sequence codes (SNOMED CT, and the legacy SNOMED-RT ones) -> ViewPosition term.
VIEW_CODE_TO_POSITION: dict[str, str] = {
    "399162004": "CC", "R-10242": "CC",
    "399368009": "MLO", "R-10226": "MLO",
    "399260004": "ML", "R-10224": "ML",
    "399352003": "LM", "R-10228": "LM",
    "399192003": "XCCL", "R-1024A": "XCCL",
}
VIEW_ORDER = ("CC", "MLO", "ML", "LM", "XCCL")


@dataclass
class MammoView:
    """One mammogram: float32 pixels (brighter = denser), spacing (row, col) mm and identity."""

    array: np.ndarray
    pixel_spacing_mm: tuple[float, float]
    laterality: str
    view: str
    sop_instance_uid: str
    path: Path
    series_instance_uid: str
    study_instance_uid: str


def breast_grey_range(values: np.ndarray) -> tuple[float, float]:
    """(low, scale) of a breast's grey levels ``values``: the 2nd percentile and the 2nd-99.5th percentile range
    (at least 1e-3), by which both mammography detectors normalise a view."""
    low, high = np.percentile(values, [2.0, 99.5])
    return low, max(float(high - low), 1e-3)


def chest_wall_on_right(breast: np.ndarray) -> bool:
    """Whether the breast mask lies against the image's right edge: more of it in a band along the right edge
    (1/20 of the width, at least 2 columns: a few unexposed pixels must not decide) than along the left."""
    edge = max(2, breast.shape[1] // 20)
    return bool(breast[:, -edge:].sum() > breast[:, :edge].sum())


def _laterality(ds: pydicom.Dataset, path: Path) -> str:
    for keyword in ("ImageLaterality", "Laterality"):
        value = str(ds.get(keyword, "") or "").upper()
        if value in ("L", "R"):
            return value
    raise VolumeError(f"{path}: mammogram has no ImageLaterality or Laterality of L or R")


def _view(ds: pydicom.Dataset, path: Path) -> str:
    position = str(ds.get("ViewPosition", "") or "").upper()
    if position:
        return position
    for item in ds.get("ViewCodeSequence", []):
        code = str(item.get("CodeValue", ""))
        if code in VIEW_CODE_TO_POSITION:
            return VIEW_CODE_TO_POSITION[code]
    raise VolumeError(f"{path}: mammogram has neither ViewPosition nor a known View Code Sequence code")


def _spacing(ds: pydicom.Dataset, path: Path, fallback_mm: float | None) -> tuple[float, float]:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        if keyword in ds and ds[keyword].value:
            row, col = (float(v) for v in ds[keyword].value)
            return (row, col)
    if fallback_mm is not None:
        return (fallback_mm, fallback_mm)
    raise VolumeError(f"{path}: mammogram has neither PixelSpacing nor ImagerPixelSpacing")


def load_view(path: Path, *, identity: tuple[str, str] | None = None,
              fallback_spacing_mm: float | None = None) -> MammoView:
    """Read one single-frame mammogram.

    Serving reads laterality, view and spacing from the header. A dataset whose headers lack them
    (scanned film, e.g. CBIS-DDSM) passes ``identity`` = (laterality, view) from its annotations,
    which then replaces the header's, and ``fallback_spacing_mm``, used only when the header has
    neither PixelSpacing nor ImagerPixelSpacing.
    """
    ds = pydicom.dcmread(path)
    if "PixelData" not in ds:
        raise VolumeError(f"{path}: has no Pixel Data")
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise VolumeError(f"{path}: multi-frame mammograms (tomosynthesis) are not supported")
    array = ds.pixel_array.astype(np.float32)
    array = array * np.float32(float(ds.get("RescaleSlope", 1.0))) + np.float32(float(ds.get("RescaleIntercept", 0.0)))
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":
        array = array.max() - array
    spacing = _spacing(ds, path, fallback_spacing_mm)
    laterality, view = identity if identity is not None else (_laterality(ds, path), _view(ds, path))
    return MammoView(array=array, pixel_spacing_mm=spacing, laterality=laterality,
                     view=view, sop_instance_uid=str(ds.SOPInstanceUID), path=path,
                     series_instance_uid=str(ds.SeriesInstanceUID), study_instance_uid=str(ds.StudyInstanceUID))


FOR_PROCESSING_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.2.1"  # Digital Mammography X-Ray Image Storage - For Processing


def _screening_image(header: pydicom.Dataset) -> bool:
    """Whether an image is a full-field view for presentation (not raw "For Processing" data, not a spot
    compression or magnification view, whose View Modifier Code Sequence says so)."""
    for_processing = (str(header.get("SOPClassUID", "")) == FOR_PROCESSING_SOP_CLASS
                      or str(header.get("PresentationIntentType", "")).upper() == "FOR PROCESSING")
    modified = any(len(item.get("ViewModifierCodeSequence", [])) for item in header.get("ViewCodeSequence", []))
    return not for_processing and not modified


def _acquired(header: pydicom.Dataset) -> tuple[str, int]:
    """Sort key of a retake: acquisition (else content) date and time, then instance number."""
    when = str(header.get("AcquisitionDateTime", "") or "") or (
        str(header.get("ContentDate", "") or "") + str(header.get("ContentTime", "") or ""))
    return when, int(header.get("InstanceNumber", 0) or 0)


def load_views(paths: Sequence[Path | str]) -> list[MammoView]:
    """Read the views of one study, ordered by laterality then CC, MLO, ... so view_index is stable.

    Only full-field views for presentation are read (``_screening_image``); of several images of the
    same laterality and view (a retake) the last acquired is kept. VolumeError when none is left.
    """
    if not paths:
        raise VolumeError("no files given for the mammography views")
    headers = {Path(p): pydicom.dcmread(p, stop_before_pixels=True) for p in paths}
    screening = [p for p, header in headers.items() if _screening_image(header)]
    if not screening:
        raise VolumeError(f"none of the {len(paths)} mammography images is a full-field view for presentation "
                          f"(For Processing, spot compression or magnification only)")
    latest: dict[tuple[str, str], Path] = {}
    for path in sorted(screening, key=lambda p: _acquired(headers[p])):
        header = headers[path]
        latest[(_laterality(header, path), _view(header, path))] = path
    views = [load_view(path) for path in latest.values()]
    studies = {v.study_instance_uid for v in views}
    if len(studies) != 1:
        raise VolumeError(f"mammography views must belong to one study, got {len(studies)} StudyInstanceUIDs")

    def order(view: MammoView) -> tuple[str, int, str]:
        rank = VIEW_ORDER.index(view.view) if view.view in VIEW_ORDER else len(VIEW_ORDER)
        return (view.laterality, rank, view.sop_instance_uid)

    return sorted(views, key=order)
