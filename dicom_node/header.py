"""The header attributes the application gets with every stored instance, as plain Python values."""

from __future__ import annotations

import math

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
    "ContrastBolusRoute",
    "ContrastBolusVolume",
    "ContrastBolusTotalDose",
    "ContrastBolusStartTime",
    "ContrastBolusIngredient",
    "ContrastBolusIngredientConcentration",
    "ContrastFlowRate",
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
    "TimezoneOffsetFromUTC",
    "SeriesNumber",
    "Manufacturer",
    "NumberOfFrames",
    "ConvolutionKernel",
    "SOPClassUID",
)
"""Keywords copied into ``StoredInstance.attributes`` (None when absent or empty)."""

FUNCTIONAL_GROUP_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "SliceThickness": ("PixelMeasuresSequence", "SliceThickness"),
    "BodyPartExamined": ("FrameAnatomySequence", "AnatomicRegionSequence", "CodeMeaning"),
    "ConvolutionKernel": ("CTReconstructionSequence", "ConvolutionKernel"),
    "ImageOrientationPatient": ("PlaneOrientationSequence", "ImageOrientationPatient"),
}
"""Where an enhanced multi-frame image may keep what a single-frame image has at the top level: in a functional
group (the first frame's, else the shared one; the body part as the frames' coded anatomic region; the kernel and the
orientation routing reads, so an Enhanced CT bone kernel or reformat is left out as a single-frame one is). Each
path's sequences are followed through their first items."""

_MALFORMED = (AttributeError, IndexError, KeyError, TypeError, ValueError)


def _plain(value: object) -> object:
    """pydicom value -> str / int / float / list of those (None for a NaN or infinite number), so the sink can
    store it as JSON."""
    if isinstance(value, MultiValue | list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, DSfloat):
        value = float(value)
    if isinstance(value, IS):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None  # JSON (PostgreSQL's json type) has no NaN or Infinity
    if isinstance(value, int):
        return value
    return str(value)


def _first_item_path(item: Dataset, path: tuple[str, ...]) -> object:
    """The value at ``path`` (sequences through their first items, then a keyword); None where it breaks off."""
    *sequences, keyword = path
    try:
        for sequence in sequences:
            element = item.data_element(sequence) if sequence in item else None
            if element is None or element.VR != "SQ" or not len(element.value):
                return None
            item = element.value[0]
        return item.get(keyword)
    except _MALFORMED:  # a malformed optional item means "not there": the image was stored without it before
        return None


def _enhanced_value(dataset: Dataset, keyword: str) -> object:
    """``keyword`` of an enhanced image from its first frame's functional groups, else the shared ones."""
    for groups in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        value = _first_item_path(dataset, (groups, *FUNCTIONAL_GROUP_ATTRIBUTES[keyword]))
        if value not in (None, ""):
            return value
    return None


def _coded_agent(dataset: Dataset) -> object:
    """The first coded Contrast/Bolus Agent (its meaning, else its code), as ``ai_engine.volume`` reads it (the
    import rules keep the two packages apart, so each has its reader)."""
    meaning = _first_item_path(dataset, ("ContrastBolusAgentSequence", "CodeMeaning"))
    return meaning if meaning not in (None, "") else _first_item_path(dataset, ("ContrastBolusAgentSequence",
                                                                                "CodeValue"))


def instance_attributes(dataset: Dataset) -> dict[str, object]:
    """The :data:`INSTANCE_ATTRIBUTES` of ``dataset``; converting them surfaces malformed values here.

    An enhanced multi-frame image's slice thickness and body part are read where it keeps them, and a contrast
    agent given only coded (Contrast/Bolus Agent Sequence) counts as declared.
    """
    enhanced = "PerFrameFunctionalGroupsSequence" in dataset
    attributes: dict[str, object] = {}
    for keyword in INSTANCE_ATTRIBUTES:
        value = dataset.get(keyword)
        if value in (None, "") and enhanced and keyword in FUNCTIONAL_GROUP_ATTRIBUTES:
            value = _enhanced_value(dataset, keyword)
        elif value in (None, "") and keyword == "ContrastBolusAgent":
            value = _coded_agent(dataset)
        empty = value is None or value == "" or (isinstance(value, MultiValue) and len(value) == 0)
        attributes[keyword] = None if empty else _plain(value)
    return attributes
