"""Comprehensive 3D SR with a TID 1500 Measurement Report root, in the source study.

One measurement group per finding: tracking identifier and UID, finding type, finding
site, measurements (volume, diameter, probability, the fusion model's per-case modality
weights), the finding's location, attributes and detector measurements as text, and its
region: the SEG segment when one was written, otherwise a point. A "Qualitative Evaluations"
container holds the case-level present/absent verdict, the algorithm kind with the
not-for-clinical-use statement, the detector's notes on the case (what it analysed: e.g. a gantry
tilt, or that no clinical context was available), and the clinical inputs that were available. An empty result
still yields a valid report that says "no findings".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr import codes
from pydicom.sr.coding import Code
from pydicom.uid import SegmentationStorage

from ai_engine.results import DetectorResult, Finding, Task
from reports.algorithm import (
    add_contributing_equipment,
    check_algorithm_info,
    device_observer_context,
    kind_statement,
    series_description,
    sr_algorithm_identification,
)
from reports.coding import (
    ABSENT,
    CASE_FINDING_CODES,
    CLINICAL_INFORMATION,
    COMMENT,
    DIAMETER,
    FINDING_SITE,
    FINDING_SITE_CODES,
    FINDING_TYPE_CODES,
    LATERALITY_CODES,
    MODALITY_WEIGHT_CODES,
    PRESENT,
    PROBABILITY,
    PROCEDURE_CODES,
    QUALITATIVE_EVALUATIONS,
    UNIT_MM,
    UNIT_ML,
    UNIT_PROBABILITY,
    UNIT_RATIO,
    VOLUME,
)
from reports.charset import utf8_where_needed
from reports.errors import ReportsError
from reports.seg import SegmentRef, find_segment
from reports.sources import check_frames, conformant_headers, slice_of, view_of
from reports.tracking import tracking_id

NO_FINDINGS = "No findings."
_REL = hd.sr.RelationshipTypeValues

MeasurementGroup = (
    hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
)


@dataclass(frozen=True)
class SrReference:
    """The identity of an SR instance, e.g. the predecessor a re-issued result replaces, and the source images it
    cites as evidence (its SEGs left out)."""

    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    source_instance_uids: frozenset[str] = frozenset()

    @classmethod
    def from_dataset(cls, ds: pydicom.Dataset) -> SrReference:
        """Reference to a written (or read) SR dataset."""
        cited = frozenset(
            str(sop.ReferencedSOPInstanceUID)
            for evidence in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence")
            for study in ds.get(evidence, []) for series in study.get("ReferencedSeriesSequence", [])
            for sop in series.get("ReferencedSOPSequence", []) if str(sop.ReferencedSOPClassUID) != SegmentationStorage)
        return cls(str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID), str(ds.StudyInstanceUID),
                   cited)

    def as_dataset(self) -> pydicom.Dataset:
        """The four UIDs as a dataset, the form highdicom takes for previous versions."""
        ds = pydicom.Dataset()
        ds.SOPClassUID = self.sop_class_uid
        ds.SOPInstanceUID = self.sop_instance_uid
        ds.SeriesInstanceUID = self.series_instance_uid
        ds.StudyInstanceUID = self.study_instance_uid
        return ds


def build_sr(source_datasets: Sequence[pydicom.Dataset], result: DetectorResult, *, series_number: int,
             instance_number: int = 1, predecessors: Sequence[SrReference] = (),
             clinical_summary: Mapping[str, str] | None = None,
             segmentations: Sequence[pydicom.Dataset] = (), frames: Sequence[int] | None = None) -> pydicom.Dataset:
    """The SR for ``result`` over ``source_datasets`` (CT slices in position order, or views).

    ``segmentations`` are the SEG instances ``build_seg`` wrote for this result; a finding
    with a mask must then have its segment there, and the group references it. ``frames``: the CT volume was
    read from the one multi-frame image in ``source_datasets``, and its slice k is frame ``frames[k]``.
    """
    if not source_datasets:
        raise ReportsError("build_sr: source_datasets must hold at least one source image, got none")
    check_algorithm_info(result.algorithm)
    check_frames(source_datasets, frames)
    source_datasets = conformant_headers(source_datasets)
    groups = [
        _measurement_group(source_datasets, result, index, finding, segmentations, frames)
        for index, finding in enumerate(result.findings)
    ]
    info = result.algorithm
    sr = hd.sr.Comprehensive3DSR(
        evidence=[*source_datasets, *segmentations],
        content=_report_root(result, groups, clinical_summary or {}),
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=instance_number,
        manufacturer=info.manufacturer,
        is_complete=True,
        previous_versions=[p.as_dataset() for p in predecessors] or None,
        series_description=series_description(info),
        manufacturer_model_name=info.name,
        software_versions=info.version,
    )
    add_contributing_equipment(sr, info)
    utf8_where_needed(sr)
    return sr


def _report_root(result: DetectorResult, groups: list[MeasurementGroup],
                 clinical_summary: Mapping[str, str]) -> hd.sr.ContainerContentItem:
    """TID 1500 root container.

    Built here rather than with ``hd.sr.MeasurementReport``, which insists on at least one
    measurement group and has no Qualitative Evaluations container.
    """
    root = hd.sr.ContainerContentItem(name=codes.cid7021.ImagingMeasurementReport, template_id="1500")
    content = hd.sr.ContentSequence()
    content.extend(hd.sr.LanguageOfContentItemAndDescendants(hd.sr.templates.DEFAULT_LANGUAGE))
    content.extend(hd.sr.ObservationContext(observer_device_context=device_observer_context(result.algorithm)))
    content.append(hd.sr.CodeContentItem(
        name=codes.DCM.ProcedureReported, value=PROCEDURE_CODES[result.task], relationship_type=_REL.HAS_CONCEPT_MOD,
    ))
    if groups:
        measurements = hd.sr.ContainerContentItem(name=codes.DCM.ImagingMeasurements, relationship_type=_REL.CONTAINS)
        measurements.ContentSequence = hd.sr.ContentSequence()
        for group in groups:
            measurements.ContentSequence.extend(group)
        content.append(measurements)
    content.append(_qualitative_evaluations(result, clinical_summary))
    root.ContentSequence = content
    return root


def _qualitative_evaluations(result: DetectorResult,
                             clinical_summary: Mapping[str, str]) -> hd.sr.ContainerContentItem:
    """Case-level verdict, algorithm statement, "no findings" when empty, the detector's notes, clinical inputs."""
    container = hd.sr.ContainerContentItem(name=QUALITATIVE_EVALUATIONS, relationship_type=_REL.CONTAINS)
    items = [
        hd.sr.CodeContentItem(
            name=CASE_FINDING_CODES[result.task],
            value=PRESENT if result.positive else ABSENT,
            relationship_type=_REL.CONTAINS,
        ),
        _text(COMMENT, kind_statement(result.algorithm)),
    ]
    if not result.findings:
        items.append(_text(COMMENT, NO_FINDINGS))
    items.extend(_text(COMMENT, note) for note in result.notes)
    items.extend(_text(CLINICAL_INFORMATION, f"{name}: {value}") for name, value in clinical_summary.items())
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def _measurement_group(sources: Sequence[pydicom.Dataset], result: DetectorResult, index: int, finding: Finding,
                       segmentations: Sequence[pydicom.Dataset], frames: Sequence[int] | None) -> MeasurementGroup:
    """TID 1410/1411 group for one finding, referencing its segment or its centre point."""
    segment = _segment_of(segmentations, index, finding)
    common = {
        "tracking_identifier": hd.sr.TrackingIdentifier(
            uid=hd.UID() if segment is None else segment.tracking_uid,
            identifier=tracking_id(index, finding),
        ),
        "finding_type": FINDING_TYPE_CODES[finding.finding_type],
        "algorithm_id": sr_algorithm_identification(result.algorithm),
        "finding_sites": [hd.sr.FindingSite(anatomic_location=FINDING_SITE_CODES[result.task],
                                            laterality=LATERALITY_CODES.get(finding.laterality or ""))],
        "measurements": _measurements(finding),
    }
    if segment is not None and result.task is Task.MAMMOGRAPHY:
        group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            referenced_segment=_segmentation_frame(segment, view_of(sources, index, finding)), **common,
        )
    elif segment is not None:
        group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            referenced_segment=hd.sr.ReferencedSegment(
                sop_class_uid=segment.segmentation.SOPClassUID,
                sop_instance_uid=segment.segmentation.SOPInstanceUID,
                segment_number=segment.segment_number,
                source_images=_segmented_images(sources, np.flatnonzero(np.asarray(finding.mask).any(axis=(1, 2))),
                                                frames),
            ),
            **common,
        )
    else:
        group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            referenced_region=_point(sources, result.task, index, finding, frames), **common,
        )
    group[0].ContentSequence.extend(_finding_texts(finding))
    return group


def _segmented_images(sources: Sequence[pydicom.Dataset], slices: np.ndarray,
                      frames: Sequence[int] | None) -> list[hd.sr.SourceImageForSegmentation]:
    """The source images of the slices a segment covers: one per slice, or the multi-frame image with its frames."""
    if frames is None:
        return [hd.sr.SourceImageForSegmentation.from_source_image(sources[z]) for z in slices]
    numbers = sorted(frames[z] for z in slices)
    return [hd.sr.SourceImageForSegmentation.from_source_image(sources[0], referenced_frame_numbers=numbers)]


def _segment_of(segmentations: Sequence[pydicom.Dataset], index: int, finding: Finding) -> SegmentRef | None:
    """The finding's segment; an error if SEGs were given but a masked finding is missing."""
    if not segmentations or finding.mask is None:
        return None
    segment = find_segment(segmentations, index, finding)
    if segment is None:
        raise ReportsError(
            f"finding {index}: has a mask, so the given segmentations must hold segment "
            f"{tracking_id(index, finding)!r}; none of {len(segmentations)} SEG instances does"
        )
    return segment


def _segmentation_frame(segment: SegmentRef, view: pydicom.Dataset) -> hd.sr.ReferencedSegmentationFrame:
    """Reference to the SEG frame of a segment on a single view image.

    highdicom 0.28.2 writes Referenced Segment Number beside the frame number, which
    PS3.3 forbids (the frame already implies its segment); the number is removed.
    """
    reference = hd.sr.ReferencedSegmentationFrame(
        sop_class_uid=segment.segmentation.SOPClassUID,
        sop_instance_uid=segment.segmentation.SOPInstanceUID,
        frame_number=segment.frame_numbers[0],
        segment_number=segment.segment_number,
        source_image=hd.sr.SourceImageForSegmentation.from_source_image(view),
    )
    del reference[0].ReferencedSOPSequence[0].ReferencedSegmentNumber
    return reference


def _measurements(finding: Finding) -> list[hd.sr.Measurement]:
    """Volume (ml), diameter (mm) when known, the score as a probability, and the fusion's modality weights."""
    weights = finding.modality_weights or {}
    values = [
        (VOLUME, finding.volume_ml, UNIT_ML),
        (DIAMETER, finding.diameter_mm, UNIT_MM),
        (PROBABILITY, finding.score, UNIT_PROBABILITY),
        *((MODALITY_WEIGHT_CODES[name], weights.get(name), UNIT_RATIO) for name in MODALITY_WEIGHT_CODES),
    ]
    return [
        hd.sr.Measurement(name=name, value=float(value), unit=unit)
        for name, value, unit in values if value is not None
    ]


def _finding_texts(finding: Finding) -> list[hd.sr.TextContentItem]:
    """The location in words, each attribute (e.g. subtype) and each detector measurement as text evaluations."""
    texts = [_text(FINDING_SITE, finding.location)] if finding.location else []
    texts.extend(_text(COMMENT, f"{name}: {value}") for name, value in finding.attributes.items())
    texts.extend(_text(COMMENT, f"{name.replace('_', ' ')}: {value:.4g}")
                 for name, value in finding.measurements.items())
    return texts


def _point(sources: Sequence[pydicom.Dataset], task: Task, index: int, finding: Finding,
           frames: Sequence[int] | None) -> hd.sr.ImageRegion | hd.sr.ImageRegion3D:
    """The finding's centre: SCOORD3D in patient space when known, else a point on its image."""
    if task is not Task.MAMMOGRAPHY and finding.center_mm is not None:
        return hd.sr.ImageRegion3D(
            graphic_type=hd.sr.GraphicTypeValues3D.POINT,
            graphic_data=np.array([finding.center_mm], dtype=float),
            frame_of_reference_uid=sources[0].FrameOfReferenceUID,
        )
    frame = None
    if task is Task.MAMMOGRAPHY:
        image, (row, column) = view_of(sources, index, finding), finding.center_voxel
    else:
        z, row, column = finding.center_voxel
        image, frame = slice_of(sources, index, z, frames)
    return hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POINT,
        graphic_data=np.array([[column + 0.5, row + 0.5]], dtype=float),
        source_image=hd.sr.SourceImageForRegion.from_source_image(image, referenced_frame_numbers=frame),
    )


def _text(name: Code, value: str) -> hd.sr.TextContentItem:
    """A CONTAINS TEXT item."""
    return hd.sr.TextContentItem(name=name, value=value, relationship_type=_REL.CONTAINS)
