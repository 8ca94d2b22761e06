"""Source headers as the result builders take them, and picking the source image a finding lies on."""

from __future__ import annotations

import copy
import datetime
import re
from collections.abc import Sequence

import highdicom as hd
import pydicom
from pydicom.valuerep import TM

from ai_engine.results import Finding
from reports.charset import UTF8, to_utf8
from reports.errors import ReportsError


DATE_KEYWORDS = ("PatientBirthDate", "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate")
TIME_KEYWORDS = ("PatientBirthTime", "StudyTime", "SeriesTime", "AcquisitionTime", "ContentTime")
# Type 2 attributes of the Patient and General Study modules that the result objects copy from the source: a sender
# may leave one out (a CT without Patient's Sex is common), and the copy then carries it empty, as the standard allows.
COPIED_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                "AccessionNumber", "StudyID", "ReferringPhysicianName")
_LOOSE_DATE = re.compile(r"(\d{4})[-./](\d{2})[-./](\d{2})")
_ACR_NEMA_TIME = re.compile(r"\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?")
ACCEPTED_CHARACTER_SETS = frozenset(term.value for term in hd.SpecificCharacterSetValues)


def _character_set(value: object) -> object:
    """Specific Character Set in a form highdicom accepts, same encoding: an empty first value (the standard
    Japanese/Korean form) is ISO 2022 IR 6, and a lone code-extension term its plain one (ISO 2022 IR 100 ->
    ISO_IR 100; ISO 2022 IR 6 or a lone empty value, the default repertoire, -> None: no Specific Character Set).
    Whether highdicom takes the result is ``_accepted``'s question."""
    if isinstance(value, str):
        if value in ("", "ISO 2022 IR 6"):  # the default repertoire, which a lone term cannot be written as: none
            return None
        plain = value.replace("ISO 2022 IR ", "ISO_IR ")
        return plain if value.startswith("ISO 2022 IR ") and plain in ACCEPTED_CHARACTER_SETS else value
    values = list(value)  # type: ignore[call-overload]
    return ["ISO 2022 IR 6" if not v else v for v in values] if values and not values[0] else value


def _accepted(charset: object) -> bool:
    """Whether highdicom accepts every term of ``charset`` (it lacks some valid ones: ISO 2022 IR 149, Korean; and
    an empty term, which only ``_character_set`` can place)."""
    if charset is None:
        return True
    terms = [charset] if isinstance(charset, str) else list(charset)  # type: ignore[call-overload]
    return all(term in ACCEPTED_CHARACTER_SETS for term in terms)


def dicom_date(value: str) -> str | None:
    """A DA value as YYYYMMDD: unchanged when valid, padded or 'YYYY-MM-DD' style rewritten; anything else, and a
    day the calendar does not have (00000000, 19450230, 20241301), None."""
    text = value.strip()
    loose = _LOOSE_DATE.fullmatch(text)
    date = "".join(loose.groups()) if loose else text
    if not re.fullmatch(r"\d{8}", date):
        return None
    try:
        datetime.date(int(date[:4]), int(date[4:6]), int(date[6:]))
    except ValueError:
        return None
    return date


def dicom_time(value: str) -> str | None:
    """A TM value as HHMMSS.FFFFFF (or a prefix): unchanged when valid, padded or ACR-NEMA's 'HH:MM:SS' rewritten;
    anything else, and a time the clock does not have (2500, 1260), None."""
    text = value.strip()
    if _ACR_NEMA_TIME.fullmatch(text):
        text = text.replace(":", "")
    try:
        TM(text)  # what highdicom reads the copied value with
    except ValueError:
        return None
    return text


def conformant_headers(datasets: Sequence[pydicom.Dataset]) -> list[pydicom.Dataset]:
    """The source headers the builders copy from, mended where they would stop the result (a copy only where
    something changes): the Specific Character Set (``_character_set``; one highdicom still refuses becomes UTF-8,
    the text decoded first), dates and times of the patient and study modules ('1945-03-17' -> 19450317,
    '10:30:00' -> 103000; an unreadable or impossible one, which highdicom refuses, emptied), a Patient's Sex other
    than M, F or O (such as 'U', which highdicom refuses: no result at all) emptied, and the ``COPIED_TYPE2``
    attributes a sender left out (added empty)."""
    mended = []
    for ds in datasets:
        changes: dict[str, object] = {keyword: "" for keyword in COPIED_TYPE2 if keyword not in ds}
        if str(ds.get("PatientSex", "") or "").strip() not in ("M", "F", "O", ""):
            changes["PatientSex"] = ""  # Type 2: empty means unknown
        reencode = False
        if "SpecificCharacterSet" in ds:
            charset = _character_set(ds.SpecificCharacterSet)
            reencode = not _accepted(charset)
            if reencode:
                charset = UTF8
            if charset != ds.SpecificCharacterSet:
                changes["SpecificCharacterSet"] = charset
        for keywords, mend in ((DATE_KEYWORDS, dicom_date), (TIME_KEYWORDS, dicom_time)):
            for keyword in keywords:
                value = str(ds.get(keyword, "") or "")
                mended_value = mend(value) if value else value
                if mended_value != value:
                    changes[keyword] = mended_value
        if not changes:
            mended.append(ds)
            continue
        fixed = copy.deepcopy(ds)
        if reencode:
            to_utf8(fixed)
        for keyword, value in changes.items():
            if keyword == "SpecificCharacterSet" and value is None:
                del fixed.SpecificCharacterSet  # the default repertoire
            else:
                setattr(fixed, keyword, "" if value is None else value)  # all Type 2 or 3: empty is allowed
        mended.append(fixed)
    return mended


def view_of(views: Sequence[pydicom.Dataset], index: int, finding: Finding) -> pydicom.Dataset:
    """The mammography view that finding ``index`` lies on."""
    if not 0 <= finding.view_index < len(views):
        raise ReportsError(
            f"finding {index}: view_index must address one of {len(views)} views, got {finding.view_index}"
        )
    return views[finding.view_index]


def projection_view(view: pydicom.Dataset) -> pydicom.Dataset:
    """A projection view (a mammogram: no Image Orientation (Patient)) as a SEG over it is built from: without its
    Frame of Reference UID (optional in MG, and common), which would give the SEG one and with it a Slice Thickness
    in the Pixel Measures (Type 1C) that a projection does not have. The SEG's frame is tied to the view by its
    Derivation Image reference, as for a view without one (a copy only where something changes)."""
    if "FrameOfReferenceUID" not in view:
        return view
    placed = copy.deepcopy(view)
    del placed.FrameOfReferenceUID
    return placed


def check_frames(sources: Sequence[pydicom.Dataset], frames: Sequence[int] | None) -> None:
    """Refuse ``frames`` that do not number frames of exactly one multi-frame source image.

    ``frames``: the volume was read from that image, and its slice k is frame ``frames[k]``."""
    if frames is None:
        return
    count = int(sources[0].get("NumberOfFrames", 1) or 1) if len(sources) == 1 else 0
    if count == 0 or not frames or min(frames) < 1 or max(frames) > count:
        raise ReportsError(f"frames must number frames 1..{count} of one multi-frame source image; got "
                           f"{len(frames)} frame number(s) for {len(sources)} source image(s)")


PLACING_GROUPS = ("PlaneOrientationSequence", "PixelMeasuresSequence")
"""The functional groups highdicom reads from a multi-frame source's shared groups only when it places SEG frames."""


def shared_frame_geometry(source: pydicom.Dataset, frames: Sequence[int]) -> pydicom.Dataset:
    """``source`` (one multi-frame image) with its Plane Orientation and Pixel Measures in the shared functional
    groups, as highdicom needs to place SEG frames on it: where the image keeps them per frame, a copy takes them
    from the first of ``frames`` (the volume's frames, which the loader checked to share them; a localizer frame
    outside the volume gets no SEG frame)."""
    per_frame = [group for group in PLACING_GROUPS if group in source.PerFrameFunctionalGroupsSequence[frames[0] - 1]]
    if not per_frame:
        return source
    placed = copy.deepcopy(source)
    if "SharedFunctionalGroupsSequence" not in placed or not len(placed.SharedFunctionalGroupsSequence):
        placed.SharedFunctionalGroupsSequence = [pydicom.Dataset()]
    shared, first = placed.SharedFunctionalGroupsSequence[0], placed.PerFrameFunctionalGroupsSequence[frames[0] - 1]
    for group in per_frame:
        setattr(shared, group, getattr(first, group))
    for item in placed.PerFrameFunctionalGroupsSequence:
        for group in per_frame:
            if group in item:
                delattr(item, group)
    return placed


def slice_of(slices: Sequence[pydicom.Dataset], index: int, z: float,
             frames: Sequence[int] | None = None) -> tuple[pydicom.Dataset, list[int] | None]:
    """The CT slice nearest to voxel coordinate ``z`` of finding ``index``: its image, and its frame number when the
    volume was read from one multi-frame image (``frames``)."""
    count = len(slices) if frames is None else len(frames)
    position = int(round(z))
    if not 0 <= position < count:
        raise ReportsError(f"finding {index}: center z must lie within {count} slices, got {z}")
    return (slices[position], None) if frames is None else (slices[0], [frames[position]])
