"""The header attributes the application gets with every stored instance, as plain Python values."""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import DSfloat, IS

INSTANCE_ATTRIBUTES: tuple[str, ...] = (
    "Modality",
    "BodyPartExamined",
    "SeriesDescription",
    "StudyDescription",
    "ProtocolName",
    "SliceThickness",
    "ContrastBolusAgent",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "InstanceNumber",
    "ImageType",
    "Rows",
    "Columns",
    "Laterality",
    "ImageLaterality",
    "ViewPosition",
    "PatientID",
    "IssuerOfPatientID",
    "AccessionNumber",
    "StudyDate",
    "StudyTime",
    "SeriesNumber",
    "Manufacturer",
    "NumberOfFrames",
)
"""Keywords copied into ``StoredInstance.attributes`` (None when absent or empty)."""


def _plain(value: object) -> object:
    """pydicom value -> str / int / float / list of those, so the sink can store it as JSON."""
    if isinstance(value, MultiValue | list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, DSfloat):
        return float(value)
    if isinstance(value, IS):
        return int(value)
    if isinstance(value, int | float):
        return value
    return str(value)


def instance_attributes(dataset: Dataset) -> dict[str, object]:
    """The :data:`INSTANCE_ATTRIBUTES` of ``dataset``; converting them surfaces malformed values here."""
    attributes: dict[str, object] = {}
    for keyword in INSTANCE_ATTRIBUTES:
        value = dataset.get(keyword)
        empty = value is None or value == "" or (isinstance(value, MultiValue) and len(value) == 0)
        attributes[keyword] = None if empty else _plain(value)
    return attributes
