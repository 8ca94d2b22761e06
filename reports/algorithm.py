"""IHE AI Results algorithm identification shared by every object radfusion writes.

The same algorithm appears three ways: a Contributing Equipment item (99IHE 1630
"Processing Algorithm", with the Device UID that changes with the weights), TID 4019
"Algorithm Identification" content in SR, and the Algorithm Identification Sequence in
SEG segments. The series description flags the object as AI output not for clinical use.
"""

from __future__ import annotations

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from ai_engine.results import AlgorithmInfo
from reports.coding import ARTIFICIAL_INTELLIGENCE, MORPHOLOGICAL_OPERATIONS, PROCESSING_ALGORITHM
from reports.errors import ReportsError

SERIES_DESCRIPTION_PREFIX = "AI RESULT - NOT FOR CLINICAL USE - "
LONG_STRING_MAX = 64
DISCLAIMER = "AI-generated result, not for clinical use; must be confirmed by a radiologist."


def check_algorithm_info(info: AlgorithmInfo) -> None:
    """Refuse identities DICOM cannot carry: name, version, manufacturer are LO (64 chars)."""
    for field_name in ("name", "version", "manufacturer"):
        value = getattr(info, field_name)
        if not value or len(value) > LONG_STRING_MAX:
            raise ReportsError(
                f"algorithm {field_name} must be 1..{LONG_STRING_MAX} characters (DICOM LO), got {value!r}"
            )
    algorithm_family(info)


def series_description(info: AlgorithmInfo) -> str:
    """Series Description (LO, 64 chars): the AI/not-clinical prefix, then the model name."""
    return (SERIES_DESCRIPTION_PREFIX + info.name)[:LONG_STRING_MAX]


def kind_statement(info: AlgorithmInfo) -> str:
    """One sentence naming the algorithm, its kind and the disclaimer, for report text."""
    return f"{info.name} {info.version} ({info.kind}): {DISCLAIMER}"


def algorithm_family(info: AlgorithmInfo) -> Code:
    """CID 7162 family for the algorithm kind: classical image processing or a trained model."""
    kind = info.kind.lower()
    if "classical" in kind:
        return MORPHOLOGICAL_OPERATIONS
    if "model" in kind or "trained" in kind:
        return ARTIFICIAL_INTELLIGENCE
    raise ReportsError(
        f"algorithm {info.name!r}: kind must say 'classical' or name a trained model, got {info.kind!r}"
    )


def contributing_equipment_item(info: AlgorithmInfo) -> Dataset:
    """Contributing Equipment Sequence item per IHE AIR (Purpose of Reference 99IHE 1630).

    Built by hand: highdicom's ``ContributingEquipment`` only accepts DCM purposes.
    """
    purpose = Dataset()
    purpose.CodeValue = PROCESSING_ALGORITHM.value
    purpose.CodingSchemeDesignator = PROCESSING_ALGORITHM.scheme_designator
    purpose.CodeMeaning = PROCESSING_ALGORITHM.meaning
    item = Dataset()
    item.PurposeOfReferenceCodeSequence = [purpose]
    item.Manufacturer = info.manufacturer
    item.ManufacturerModelName = info.name
    item.SoftwareVersions = info.version
    item.DeviceUID = info.device_uid
    item.ContributionDescription = f"AI algorithm ({info.kind})"
    return item


def add_contributing_equipment(ds: Dataset, info: AlgorithmInfo) -> None:
    """Append the algorithm's item to the Contributing Equipment Sequence of ``ds``."""
    if "ContributingEquipmentSequence" not in ds:
        ds.ContributingEquipmentSequence = []
    ds.ContributingEquipmentSequence.append(contributing_equipment_item(info))


def sr_algorithm_identification(info: AlgorithmInfo) -> hd.sr.AlgorithmIdentification:
    """TID 4019 content: name, version, manufacturer, family, and the kind as a parameter."""
    return hd.sr.AlgorithmIdentification(
        name=info.name,
        version=info.version,
        manufacturer=info.manufacturer,
        family=algorithm_family(info),
        parameters=[f"kind: {info.kind}", f"device UID: {info.device_uid}"],
    )


def seg_algorithm_identification(info: AlgorithmInfo) -> hd.AlgorithmIdentificationSequence:
    """Algorithm Identification Sequence for SEG segment descriptions."""
    return hd.AlgorithmIdentificationSequence(
        name=info.name,
        family=algorithm_family(info),
        version=info.version,
        source=info.manufacturer,
        parameters={"kind": info.kind, "device_uid": info.device_uid},
    )


def device_observer_context(info: AlgorithmInfo) -> hd.sr.ObserverContext:
    """TID 1004 device observer: the algorithm, identified by its Device UID."""
    return hd.sr.ObserverContext(
        observer_type=hd.sr.CodedConcept.from_code(Code("121007", "DCM", "Device")),
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=info.device_uid,
            name=info.name,
            manufacturer_name=info.manufacturer,
            model_name=info.name,
        ),
    )
