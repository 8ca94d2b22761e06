"""What the report tests share: results with masks on known voxels, SR content walkers."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pydicom

from ai_engine.results import AlgorithmInfo, DetectorResult, Finding, FindingType, Task

PATIENT_AND_STUDY = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
    "StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName", "StudyID",
)


def content_items(item: pydicom.Dataset) -> Iterator[pydicom.Dataset]:
    """Every SR content item below ``item``, depth first."""
    for child in item.get("ContentSequence", []):
        yield child
        yield from content_items(child)


def named(item: pydicom.Dataset, meaning: str) -> list[pydicom.Dataset]:
    """Content items below ``item`` whose concept name has this meaning."""
    return [c for c in content_items(item) if c.ConceptNameCodeSequence[0].CodeMeaning == meaning]


def algorithm_equipment(ds: pydicom.Dataset) -> list[pydicom.Dataset]:
    """Contributing Equipment items with purpose (99IHE, 1630)."""
    return [
        item for item in ds.get("ContributingEquipmentSequence", [])
        if (item.PurposeOfReferenceCodeSequence[0].CodingSchemeDesignator,
            item.PurposeOfReferenceCodeSequence[0].CodeValue) == ("99IHE", "1630")
    ]


def box_mask(shape: tuple[int, ...], *box: slice) -> np.ndarray:
    """A bool array of ``shape`` that is True inside ``box``."""
    mask = np.zeros(shape, dtype=bool)
    mask[box] = True
    return mask


def ich_result(algorithm: AlgorithmInfo, sources: list[pydicom.Dataset]) -> DetectorResult:
    """Two hemorrhages with masks on known voxels of the head CT."""
    shape = (len(sources), sources[0].Rows, sources[0].Columns)
    findings = [
        Finding(FindingType.HEMORRHAGE, 0.93, (4.0, 45.0, 65.0), "left frontal", volume_ml=1.2, laterality="L",
                mask=box_mask(shape, slice(3, 6), slice(40, 50), slice(60, 70)), attributes={"subtype": "subdural"}),
        Finding(FindingType.HEMORRHAGE, 0.71, (8.0, 80.0, 30.0), "right occipital", volume_ml=0.4, laterality="R",
                mask=box_mask(shape, slice(8, 9), slice(78, 83), slice(28, 33))),
    ]
    return DetectorResult(Task.ICH, algorithm, findings, case_score=0.93, positive=True)


def mammo_result(algorithm: AlgorithmInfo, views: list[pydicom.Dataset]) -> DetectorResult:
    """A mass on the first view and a calcification cluster on the second."""
    findings = [
        Finding(FindingType.MASS, 0.81, (30.0, 40.0), "upper outer quadrant", diameter_mm=9.0, view_index=0,
                mask=box_mask((views[0].Rows, views[0].Columns), slice(25, 36), slice(35, 46))),
        Finding(FindingType.CALCIFICATION_CLUSTER, 0.66, (70.0, 50.0), "upper outer quadrant", view_index=1,
                mask=box_mask((views[1].Rows, views[1].Columns), slice(68, 73), slice(48, 53))),
    ]
    return DetectorResult(Task.MAMMOGRAPHY, algorithm, findings, case_score=0.81, positive=True)
