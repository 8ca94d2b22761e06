"""DICOM Segmentations of the findings: binary masks, and fractional heat maps.

``build_seg``: a BINARY SEG of the findings that carry a mask. ``build_heatmap_seg``: a
FRACTIONAL (probability) SEG of the findings' heat maps, the explanation a viewer overlays on
the images. CT: one SEG over the whole source series, one segment per finding. Mammography:
one SEG per view image that has findings (the views differ in size, so they cannot share one
SEG). Only frames that hold something are stored (highdicom omits empty frames).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import pydicom

from ai_engine.results import DetectorResult, Finding, Task
from reports.algorithm import (
    add_contributing_equipment,
    check_algorithm_info,
    seg_algorithm_identification,
    series_description,
)
from reports.charset import utf8_where_needed
from reports.coding import FINDING_TYPE_CODES, MORPHOLOGICALLY_ABNORMAL_STRUCTURE
from reports.errors import ReportsError
from reports.sources import check_frames, conformant_headers, projection_view, shared_frame_geometry, view_of
from reports.tracking import tracking_id



@dataclass(frozen=True)
class _Layer:
    """What one kind of SEG stores: which Finding array, as which segmentation type, under which labels."""

    attribute: str  # "mask" or "heatmap"
    segmentation_type: hd.seg.SegmentationTypeValues
    content_label: str
    content_description: str
    segment_prefix: str


MASKS = _Layer("mask", hd.seg.SegmentationTypeValues.BINARY, "AI_FINDINGS",
               "AI-generated segmentation, not for clinical use", "")
HEATMAPS = _Layer("heatmap", hd.seg.SegmentationTypeValues.FRACTIONAL, "AI_HEATMAPS",
                  "AI heat maps (probability 0-1 per pixel), not for clinical use", "heat map ")


@dataclass(frozen=True)
class SegmentRef:
    """Where a finding's segment lives in a written SEG (what the SR needs to cite it)."""

    segmentation: pydicom.Dataset
    segment_number: int
    tracking_uid: str
    frame_numbers: tuple[int, ...]


def build_seg(source_datasets: Sequence[pydicom.Dataset], result: DetectorResult, *,
              series_number: int, instance_number: int = 1,
              frames: Sequence[int] | None = None) -> list[pydicom.Dataset]:
    """Binary SEG instances (one series) for the masked findings of ``result``; [] if none.

    ``frames``: the CT volume was read from the one multi-frame image in ``source_datasets``, and its slice k is
    frame ``frames[k]``; the SEG then has one frame per frame of that image.
    """
    return _build(source_datasets, result, MASKS, series_number, instance_number, frames=frames)


def build_heatmap_seg(source_datasets: Sequence[pydicom.Dataset], result: DetectorResult, *,
                      series_number: int, instance_number: int = 1, masks: Sequence[pydicom.Dataset] = (),
                      frames: Sequence[int] | None = None) -> list[pydicom.Dataset]:
    """Fractional SEG instances (one series; probability, 8 bits) of the findings' heat maps; [] if none.

    A finding whose heat map is zero everywhere has nothing to show and gets no segment. A finding
    with a segment in ``masks`` (``build_seg``'s SEGs of the same result) keeps that segment's
    Tracking UID, so a viewer that follows findings by UID shows one finding, not two. ``frames`` as ``build_seg``.
    """
    return _build(source_datasets, result, HEATMAPS, series_number, instance_number, masks, frames)


def _build(source_datasets: Sequence[pydicom.Dataset], result: DetectorResult, layer: _Layer,
           series_number: int, instance_number: int, masks: Sequence[pydicom.Dataset] = (),
           frames: Sequence[int] | None = None) -> list[pydicom.Dataset]:
    check_algorithm_info(result.algorithm)
    check_frames(source_datasets, frames)
    masked = [(index, f) for index, f in enumerate(result.findings) if _included(getattr(f, layer.attribute), layer)]
    if not masked:
        return []
    source_datasets = conformant_headers(source_datasets)
    if frames is not None:
        source_datasets = [shared_frame_geometry(source_datasets[0], frames)]
    unmeasured = next((ds for ds in source_datasets if "ImagePositionPatient" in ds and not ds.get("SliceThickness")),
                      None)
    if unmeasured is not None:  # the SEG's Pixel Measures need it, and an empty one fails dciodvfy
        raise ReportsError(f"source image {unmeasured.SOPInstanceUID} has no Slice Thickness (Type 2, left out or "
                           f"empty), which a SEG's Pixel Measures need")
    series_uid = hd.UID()
    if result.task is Task.MAMMOGRAPHY:
        groups = _group_by_view(source_datasets, masked)
    else:
        groups = [(list(source_datasets), masked)]
    return [
        _segmentation(sources, findings, result, layer, series_uid, series_number, instance_number + k, masks, frames)
        for k, (sources, findings) in enumerate(groups)
    ]


def _included(array: np.ndarray | None, layer: _Layer) -> bool:
    """Every mask (an empty one is an error later); a heat map with a value of at least one 8-bit step."""
    return array is not None and (layer is MASKS or float(np.max(array)) >= 1.0 / 255.0)


def find_segment(segmentations: Sequence[pydicom.Dataset], index: int, finding: Finding) -> SegmentRef | None:
    """The segment written for finding ``index`` of a result, found by its tracking ID."""
    wanted = tracking_id(index, finding)
    for seg in segmentations:
        for segment in seg.SegmentSequence:
            if segment.get("TrackingID") == wanted:
                number = int(segment.SegmentNumber)
                frames = tuple(k + 1 for k in range(int(seg.NumberOfFrames)) if _frame_segment(seg, k) == number)
                return SegmentRef(seg, number, str(segment.TrackingUID), frames)
    return None


def _frame_segment(seg: pydicom.Dataset, k: int) -> int:
    """Segment number of frame ``k`` (0-based); shared when the SEG has a single segment."""
    groups = seg.PerFrameFunctionalGroupsSequence[k]
    if "SegmentIdentificationSequence" not in groups:
        groups = seg.SharedFunctionalGroupsSequence[0]
    return int(groups.SegmentIdentificationSequence[0].ReferencedSegmentNumber)


def _group_by_view(views: Sequence[pydicom.Dataset],
                   masked: list[tuple[int, Finding]]) -> list[tuple[list[pydicom.Dataset], list[tuple[int, Finding]]]]:
    """Masked mammography findings grouped per view image, in view order."""
    by_view: dict[int, list[tuple[int, Finding]]] = {}
    for index, finding in masked:
        view_of(views, index, finding)
        by_view.setdefault(finding.view_index, []).append((index, finding))
    return [([views[view]], by_view[view]) for view in sorted(by_view)]


def _tracking_uid(masks: Sequence[pydicom.Dataset], index: int, finding: Finding) -> str:
    """The Tracking UID of finding ``index``'s segment in ``masks``, or a new one."""
    segment = find_segment(masks, index, finding)
    return hd.UID() if segment is None else segment.tracking_uid


def _segmentation(sources: list[pydicom.Dataset], findings: list[tuple[int, Finding]], result: DetectorResult,
                  layer: _Layer, series_uid: str, series_number: int, instance_number: int,
                  masks: Sequence[pydicom.Dataset], source_frames: Sequence[int] | None) -> hd.seg.Segmentation:
    """One SEG of ``layer`` over ``sources`` with one segment per finding."""
    projection = source_frames is None and "ImageOrientationPatient" not in sources[0]
    if projection:
        sources = [projection_view(view) for view in sources]
    shape = (len(sources) if source_frames is None else len(source_frames), int(sources[0].Rows),
             int(sources[0].Columns))
    frames = [_in_source_frames(_as_frames(index, finding, layer, shape), sources, source_frames)
              for index, finding in findings]
    info = result.algorithm
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=layer.segment_prefix + tracking_id(index, finding),
            segmented_property_category=MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
            segmented_property_type=FINDING_TYPE_CODES[finding.finding_type],
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=seg_algorithm_identification(info),
            tracking_uid=_tracking_uid(masks, index, finding),
            tracking_id=tracking_id(index, finding),
        )
        for number, (index, finding) in enumerate(findings, start=1)
    ]
    pixels, positions = _pixel_array(frames, sources, layer, source_frames, projection)
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        plane_positions=positions,
        segmentation_type=layer.segmentation_type,
        fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
        segment_descriptions=descriptions,
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=instance_number,
        manufacturer=info.manufacturer,
        manufacturer_model_name=info.name,
        software_versions=info.version,
        device_serial_number=info.device_uid,
        content_label=layer.content_label,
        content_description=layer.content_description,
        series_description=series_description(info),
    )
    if projection:
        # A projection view has no patient geometry; its orientation labels apply unchanged. Type 2C here: empty
        # (unknown) for a view that left them out, though MG requires them, rather than no SEG at all.
        seg.PatientOrientation = sources[0].get("PatientOrientation", "")
    add_contributing_equipment(seg, info)
    utf8_where_needed(seg)
    return seg


def _pixel_array(arrays: list[np.ndarray], sources: list[pydicom.Dataset], layer: _Layer,
                 source_frames: Sequence[int] | None,
                 projection: bool) -> tuple[np.ndarray, list[hd.PlanePositionSequence] | None]:
    """The findings' ``_as_frames`` arrays as highdicom takes them, (frames, rows, columns, segments), and the
    positions of those frames where they are not all of the source's. Masks: every frame. Heat maps: probabilities
    (float32) on only the frames where one is non-zero, which highdicom would leave out anyway: ten full-volume maps
    of a CT would otherwise be stacked as ten float copies of the volume (gigabytes). A projection view has one
    frame and no positions to give."""
    if layer is MASKS:
        return np.stack(arrays, axis=-1), None
    kept = np.flatnonzero(np.any([array.any(axis=(1, 2)) for array in arrays], axis=0))
    pixels = np.empty((len(kept), *arrays[0].shape[1:], len(arrays)), dtype=np.float32)
    for segment, array in enumerate(arrays):
        pixels[..., segment] = array[kept]
    pixels /= 255  # exact 8-bit steps: highdicom's rounding gives back the same values
    if projection:
        return pixels, None
    planes = (hd.utils.get_plane_positions_of_series(sources) if source_frames is None
              else hd.utils.get_plane_positions_of_image(sources[0]))
    return pixels, [planes[k] for k in kept]


def _in_source_frames(array: np.ndarray, sources: list[pydicom.Dataset],
                      source_frames: Sequence[int] | None) -> np.ndarray:
    """A (slices, rows, columns) array laid out as the source's frames: unchanged for single-frame sources; for
    one multi-frame source, slice k at frame ``source_frames[k]`` and zero on frames the volume left out."""
    if source_frames is None:
        return array
    laid_out = np.zeros((int(sources[0].NumberOfFrames), *array.shape[1:]), dtype=array.dtype)
    laid_out[np.asarray(source_frames) - 1] = array
    return laid_out


def _as_frames(index: int, finding: Finding, layer: _Layer, shape: tuple[int, int, int]) -> np.ndarray:
    """The finding's mask (bool) or heat map (uint8: the 8-bit probability steps, 0..255, that highdicom rounds it
    to) as (frames, rows, columns), checked against the source."""
    array = np.asarray(getattr(finding, layer.attribute))
    if layer is MASKS:
        array = array.astype(bool)
    else:
        steps = np.clip(np.asarray(array, dtype=np.float32), 0.0, 1.0)
        steps *= 255
        array = np.around(steps, out=steps).astype(np.uint8)
    if array.ndim == 2:
        array = array[np.newaxis]
    if array.shape != shape:
        raise ReportsError(f"finding {index}: {layer.attribute} shape must equal the source (frames, rows, columns) "
                           f"{shape}, got {array.shape}")
    if layer is MASKS and not array.any():
        raise ReportsError(f"finding {index}: mask is empty; a finding's mask must mark at least one pixel")
    return array
