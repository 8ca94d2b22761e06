"""DICOM dates and times (the modality's local clock) as timezone-aware datetimes."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from reports.sources import dicom_date

_TIME = re.compile(r"(\d{2})(?::?(\d{2}))?(?::?(\d{2}))?(?:\.\d{1,6})?")  # TM, and ACR-NEMA's HH:MM:SS


def aware(when: datetime, offset: str) -> datetime:
    """A DICOM local date-time made aware: at the source's Timezone Offset From UTC ('+HHMM'), else as the server's
    local time (the modality's clock is the hospital's)."""
    if len(offset) == 5 and offset[0] in "+-" and offset[1:].isdigit():
        minutes = (int(offset[1:3]) * 60 + int(offset[3:])) * (1 if offset[0] == "+" else -1)
        return when.replace(tzinfo=timezone(timedelta(minutes=minutes)))
    return when.astimezone()


def study_datetime(date: str, time: str, offset: str) -> datetime | None:
    """When a study was performed (Study Date, Study Time, Timezone Offset From UTC); None unless the date and the
    time are both there and valid."""
    day, clock = dicom_date(date), _TIME.fullmatch(time.strip())
    if day is None or clock is None:
        return None
    hour, minute, second = (int(part or 0) for part in clock.groups())
    try:
        return aware(datetime.strptime(day, "%Y%m%d").replace(hour=hour, minute=minute, second=second), offset)
    except ValueError:  # 20240231, or 25:00
        return None
