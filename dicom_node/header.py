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

FUNCTIONAL_GROUP_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "SliceThickness": ("PixelMeasuresSequence", "SliceThickness"),
    "BodyPartExamined": ("FrameAnatomySequence", "AnatomicRegionSequence", "CodeMeaning"),
    "ContrastBolusAgent": ("ContrastBolusAgentSequence", "CodeMeaning"),
}
"""Where an enhanced multi-frame image may keep what a single-frame image has at the top level: a functional group
(shared, else the first frame's; the body part as the frames' coded anatomic region) or, for the contrast agent,
the coded Contrast/Bolus Agent Sequence. The path's sequences are followed through their first items."""


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


def _enhanced_value(dataset: Dataset, keyword: str) -> object:
    """``keyword`` of an enhanced image by its :data:`FUNCTIONAL_GROUP_ATTRIBUTES` path; None where it has none."""
    *sequences, inner = FUNCTIONAL_GROUP_ATTRIBUTES[keyword]
    items = [dataset] if sequences[0] in dataset else [
        groups[0] for groups in (dataset.get("SharedFunctionalGroupsSequence"),
                                 dataset.get("PerFrameFunctionalGroupsSequence")) if groups]
    for item in items:
        for sequence in sequences:
            if sequence not in item or not len(item[sequence].value):
                break
            item = item[sequence][0]
        else:
            return item.get(inner)
    return None


def instance_attributes(dataset: Dataset) -> dict[str, object]:
    """The :data:`INSTANCE_ATTRIBUTES` of ``dataset``; converting them surfaces malformed values here.

    An enhanced multi-frame image's slice thickness, body part and contrast agent are read where it keeps them.
    """
    enhanced = "PerFrameFunctionalGroupsSequence" in dataset
    attributes: dict[str, object] = {}
    for keyword in INSTANCE_ATTRIBUTES:
        value = dataset.get(keyword)
        if enhanced and value in (None, "") and keyword in FUNCTIONAL_GROUP_ATTRIBUTES:
            value = _enhanced_value(dataset, keyword)
        empty = value is None or value == "" or (isinstance(value, MultiValue) and len(value) == 0)
        attributes[keyword] = None if empty else _plain(value)
    return attributes
