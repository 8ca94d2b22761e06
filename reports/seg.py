"""DICOM Segmentation (binary) of the findings that carry a mask.

CT: one SEG over the whole source series, one segment per masked finding. Mammography:
one SEG per view image that has masked findings (the views differ in size, so they cannot
share one SEG). Only frames that contain a mask are stored (highdicom omits empty frames).
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
from reports.coding import FINDING_TYPE_CODES, MORPHOLOGICALLY_ABNORMAL_STRUCTURE
from reports.errors import ReportsError
from reports.sources import view_of
from reports.tracking import tracking_id

CONTENT_LABEL = "AI_FINDINGS"
CONTENT_DESCRIPTION = "AI-generated segmentation, not for clinical use"


@dataclass(frozen=True)
class SegmentRef:
    """Where a finding's segment lives in a written SEG (what the SR needs to cite it)."""

    segmentation: pydicom.Dataset
    segment_number: int
    tracking_uid: str
    frame_numbers: tuple[int, ...]


def build_seg(source_datasets: Sequence[pydicom.Dataset], result: DetectorResult, *,
              series_number: int, instance_number: int = 1) -> list[pydicom.Dataset]:
    """Binary SEG instances (one series) for the masked findings of ``result``; [] if none."""
    check_algorithm_info(result.algorithm)
    masked = [(index, f) for index, f in enumerate(result.findings) if f.mask is not None]
    if not masked:
        return []
    series_uid = hd.UID()
    if result.task is Task.MAMMOGRAPHY:
        groups = _group_by_view(source_datasets, masked)
    else:
        groups = [(list(source_datasets), masked)]
    return [
        _segmentation(sources, findings, result, series_uid, series_number, instance_number + k)
        for k, (sources, findings) in enumerate(groups)
    ]


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


def _segmentation(sources: list[pydicom.Dataset], findings: list[tuple[int, Finding]], result: DetectorResult,
                  series_uid: str, series_number: int, instance_number: int) -> hd.seg.Segmentation:
    """One binary SEG over ``sources`` with one segment per finding."""
    shape = (len(sources), int(sources[0].Rows), int(sources[0].Columns))
    masks = [_mask_as_frames(index, finding, shape) for index, finding in findings]
    info = result.algorithm
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=tracking_id(index, finding),
            segmented_property_category=MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
            segmented_property_type=FINDING_TYPE_CODES[finding.finding_type],
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=seg_algorithm_identification(info),
            tracking_uid=hd.UID(),
            tracking_id=tracking_id(index, finding),
        )
        for number, (index, finding) in enumerate(findings, start=1)
    ]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=np.stack(masks, axis=-1),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=instance_number,
        manufacturer=info.manufacturer,
        manufacturer_model_name=info.name,
        software_versions=info.version,
        device_serial_number=info.device_uid,
        content_label=CONTENT_LABEL,
        content_description=CONTENT_DESCRIPTION,
        series_description=series_description(info),
    )
    if "ImageOrientationPatient" not in sources[0]:
        # A projection view has no patient geometry; its orientation labels apply unchanged.
        seg.PatientOrientation = sources[0].PatientOrientation
    add_contributing_equipment(seg, info)
    return seg


def _mask_as_frames(index: int, finding: Finding, shape: tuple[int, int, int]) -> np.ndarray:
    """The finding's mask as (frames, rows, columns) bool, checked against the source shape."""
    mask = np.asarray(finding.mask, dtype=bool)
    if mask.ndim == 2:
        mask = mask[np.newaxis]
    if mask.shape != shape:
        raise ReportsError(
            f"finding {index}: mask shape must equal the source (frames, rows, columns) {shape}, got {mask.shape}"
        )
    if not mask.any():
        raise ReportsError(f"finding {index}: mask is empty; a finding's mask must mark at least one pixel")
    return mask
