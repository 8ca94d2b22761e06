"""Readers the report tests share: walk SR content, check IHE algorithm identification."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pydicom

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
