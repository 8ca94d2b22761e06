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
from ai_engine.volume import header_numbers, image_type_values

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


def _header_laterality(ds: pydicom.Dataset) -> str | None:
    """L or R from Image Laterality, else (when it is absent or empty) the series' Laterality; None when the one
    that speaks says no single breast (B, U): an image of both breasts is not read as its series' side."""
    for keyword in ("ImageLaterality", "Laterality"):
        value = str(ds.get(keyword, "") or "").strip().upper()
        if value:
            return value if value in ("L", "R") else None
    return None


def _header_view(ds: pydicom.Dataset) -> str | None:
    """One of ``VIEW_ORDER`` from View Position, else from a View Code Sequence code (Type 1 in mammography, so it
    decides where View Position holds another term, such as 'LCC'); None for any other view."""
    position = str(ds.get("ViewPosition", "") or "").upper()
    if position in VIEW_ORDER:
        return position
    codes = (str(item.get("CodeValue", "")) for item in ds.get("ViewCodeSequence", []))
    return next((VIEW_CODE_TO_POSITION[c] for c in codes if c in VIEW_CODE_TO_POSITION), None)


def _laterality(ds: pydicom.Dataset, path: Path) -> str:
    laterality = _header_laterality(ds)
    if laterality is None:
        raise VolumeError(f"{path}: mammogram has no ImageLaterality or Laterality of L or R")
    return laterality


def _view(ds: pydicom.Dataset, path: Path) -> str:
    view = _header_view(ds)
    if view is None:
        raise VolumeError(f"{path}: mammogram's ViewPosition or View Code Sequence names none of {VIEW_ORDER}")
    return view


def _spacing(ds: pydicom.Dataset, path: Path, fallback_mm: float | None) -> tuple[float, float]:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        if keyword in ds and ds[keyword].value:
            row, col = header_numbers(path, keyword, ds[keyword].value)
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
    neither PixelSpacing nor ImagerPixelSpacing. An annotation whose laterality or view contradicts the header's
    is refused: one of the two is wrong, and a mirrored or mismatched label would be learnt silently.
    """
    ds = pydicom.dcmread(path)
    if "PixelData" not in ds:
        raise VolumeError(f"{path}: has no Pixel Data")
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise VolumeError(f"{path}: multi-frame mammograms (tomosynthesis) are not supported")
    array = ds.pixel_array.astype(np.float32)
    slope, intercept = (ds.get(keyword) for keyword in ("RescaleSlope", "RescaleIntercept"))  # optional here
    array = array * np.float32(1.0 if slope in (None, "") else float(slope)) + np.float32(
        0.0 if intercept in (None, "") else float(intercept))
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":
        array = array.max() - array
    spacing = _spacing(ds, path, fallback_spacing_mm)
    if identity is None:
        laterality, view = _laterality(ds, path), _view(ds, path)
    else:  # the annotation's, checked against what the header says of it
        laterality, view = identity
        for what, annotated, header in (("laterality", laterality, _header_laterality(ds)),
                                        ("view", view, _header_view(ds))):
            if header is not None and header != annotated:
                raise VolumeError(f"{path}: its annotation says {what} {annotated} but its header says {header}; "
                                  "correct the one that is wrong")
    return MammoView(array=array, pixel_spacing_mm=spacing, laterality=laterality,
                     view=view, sop_instance_uid=str(ds.SOPInstanceUID), path=path,
                     series_instance_uid=str(ds.SeriesInstanceUID), study_instance_uid=str(ds.StudyInstanceUID))


FOR_PROCESSING_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.2.1"  # Digital Mammography X-Ray Image Storage - For Processing
MAGNIFIED = 1.4  # Estimated Radiographic Magnification Factor of a magnification view (1.5-2; a contact view ~1.1)


def _left_out(header: pydicom.Dataset) -> str | None:
    """Why an image is not one of the full-field 2D views for presentation the detectors read, or None when it is.

    Left out: raw "For Processing" data; tomosynthesis, synthesized 2D (also as a single-frame image, Image Type
    GENERATED_2D or TOMOSYNTHESIS) and other multi-frame or enhanced objects; views with a View Modifier (spot
    compression, magnification, implant displaced ...) or a magnification factor of ``MAGNIFIED`` or more; an image
    of no single breast (a specimen, laterality B) and views other than ``VIEW_ORDER``.
    """
    if (str(header.get("SOPClassUID", "")) == FOR_PROCESSING_SOP_CLASS
            or str(header.get("PresentationIntentType", "")).upper() == "FOR PROCESSING"):
        return "For Processing (raw) data"
    if int(header.get("NumberOfFrames", 1) or 1) > 1 or "PerFrameFunctionalGroupsSequence" in header:
        return "a multi-frame image (tomosynthesis or enhanced mammography); only 2D views are read"
    image_types = {value.strip().upper() for value in image_type_values(header.get("ImageType"))}
    if image_types & {"GENERATED_2D", "TOMOSYNTHESIS"}:
        return "a synthesized 2D image (Image Type GENERATED_2D or TOMOSYNTHESIS); only acquired 2D views are read"
    modifiers = [str(modifier.get("CodeMeaning", "") or modifier.get("CodeValue", ""))
                 for item in header.get("ViewCodeSequence", [])
                 for modifier in item.get("ViewModifierCodeSequence", [])]
    if modifiers:
        return f"a view with a View Modifier ({', '.join(modifiers)}); only standard views are read"
    try:
        magnification = float(header.get("EstimatedRadiographicMagnificationFactor") or 0.0)
    except (TypeError, ValueError):  # an unreadable optional value says nothing
        magnification = 0.0
    if magnification >= MAGNIFIED:
        return f"a magnification view (factor {magnification:g})"
    if _header_laterality(header) is None:
        return "no laterality of L or R (Image Laterality, Laterality)"
    if _header_view(header) is None:
        return f"a view other than {', '.join(VIEW_ORDER)}"
    return None


def _image_name(header: pydicom.Dataset) -> str:
    """How a radiologist finds an image again: its series and instance numbers."""
    return f"image {header.get('InstanceNumber', '?')} of series {header.get('SeriesNumber', '?')}"


def _acquired(header: pydicom.Dataset) -> tuple[str, int]:
    """Sort key of a retake: acquisition (else content) date and time, then instance number."""
    when = str(header.get("AcquisitionDateTime", "") or "") or (
        str(header.get("ContentDate", "") or "") + str(header.get("ContentTime", "") or ""))
    return when, int(header.get("InstanceNumber", 0) or 0)


def load_views(paths: Sequence[Path | str]) -> tuple[list[MammoView], list[str]]:
    """Read the views of one study, ordered by laterality then CC, MLO, ... so view_index is stable, and the notes
    for the result: which images were left out and why, and what a view read carries that the model did not learn
    (an implant).

    Only full-field 2D views for presentation are read (``_left_out``): one image of another kind in the study
    (a tomosynthesis object, a specimen) must not cost the exam. Of several images of the same laterality and view
    (a retake) the last acquired is kept. VolumeError when none is left.
    """
    if not paths:
        raise VolumeError("no files given for the mammography views")
    headers = {Path(p): pydicom.dcmread(p, stop_before_pixels=True) for p in paths}
    reasons = {path: _left_out(header) for path, header in headers.items()}
    screening = [p for p, reason in reasons.items() if reason is None]
    notes = [f"{_image_name(headers[p])} not read: {reason}" for p, reason in reasons.items() if reason]
    if not screening:
        raise VolumeError(f"none of the {len(paths)} mammography images is a full-field 2D view for presentation: "
                          f"{'; '.join(sorted({r for r in reasons.values() if r}))}")
    latest: dict[tuple[str, str], Path] = {}
    for path in sorted(screening, key=lambda p: _acquired(headers[p])):
        header = headers[path]
        side_view = (_laterality(header, path), _view(header, path))
        if side_view in latest:
            notes.append(f"{_image_name(headers[latest[side_view]])} not read: {' '.join(side_view)} is read from "
                         f"{_image_name(header)}, acquired later")
        latest[side_view] = path
    notes += [f"{_image_name(headers[path])}: Breast Implant Present is YES; the model learned breasts without "
              "implants" for path in latest.values()
              if str(headers[path].get("BreastImplantPresent", "") or "").upper() == "YES"]
    views = [load_view(path) for path in latest.values()]
    studies = {v.study_instance_uid for v in views}
    if len(studies) != 1:
        raise VolumeError(f"mammography views must belong to one study, got {len(studies)} StudyInstanceUIDs")

    def order(view: MammoView) -> tuple[str, int, str]:
        return (view.laterality, VIEW_ORDER.index(view.view), view.sop_instance_uid)  # _left_out: one of them

    return sorted(views, key=order), notes
