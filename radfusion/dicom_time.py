"""DICOM dates and times (the modality's local clock) as timezone-aware datetimes."""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta, timezone
from datetime import time as clock_time
from zoneinfo import ZoneInfo

from pydicom.valuerep import TM

from radfusion.errors import ConfigError
from reports.sources import dicom_date, dicom_time


def use_time_zone(name: str) -> str:
    """Make ``name`` (an IANA zone; "" keeps this machine's) the process's local time zone: the one in which DICOM
    and HL7 times without an offset are read, and a study's clinical data with them. A server or container kept
    on UTC beside a hospital in another zone would otherwise read a 10:00 scan as 10:00 UTC. Returns the zone in
    effect, for the start-up log."""
    if name:
        os.environ["TZ"] = name
        time.tzset()
        now = datetime.now(timezone.utc)
        if now.astimezone().utcoffset() != now.astimezone(ZoneInfo(name)).utcoffset():
            raise ConfigError(f"timezone: {name!r} is not known to this system's C library (install tzdata)")
    local = datetime.now().astimezone()
    return name or f"{local.tzname()} (this machine's; set timezone to name the hospital's)"


def aware(when: datetime, offset: str) -> datetime | None:
    """A DICOM local date-time made aware: at the source's Timezone Offset From UTC ('+HHMM', -1200..+1400), else
    in the local time zone (``use_time_zone``: the modality's clock is the hospital's). None for a time that cannot
    be placed in UTC (a date at the calendar's edge, such as 00010101): every reader of it converts it."""
    minutes = _offset_minutes(offset)
    try:
        placed = when.astimezone() if minutes is None else when.replace(tzinfo=timezone(timedelta(minutes=minutes)))
        placed.astimezone(timezone.utc)
    except (ValueError, OverflowError, OSError):
        return None
    return placed


def _offset_minutes(offset: str) -> int | None:
    """Timezone Offset From UTC ('+HHMM') in minutes; None unless it is one within -1200..+1400."""
    if len(offset) != 5 or offset[0] not in "+-" or not offset[1:].isdigit() or int(offset[3:]) >= 60:
        return None
    minutes = (int(offset[1:3]) * 60 + int(offset[3:])) * (1 if offset[0] == "+" else -1)
    return minutes if -12 * 60 <= minutes <= 14 * 60 else None


def study_datetime(date: str, time_of_day: str, offset: str) -> datetime | None:
    """When a study was performed (Study Date, Study Time, Timezone Offset From UTC): the end of its day when the
    time is absent or invalid (Study Time is Type 2: a study of 1 June is read with that day's labs, not today's);
    None without a valid date."""
    day, clock = dicom_date(date), dicom_time(time_of_day)
    if day is None:
        return None
    at = TM(clock) if clock else None  # a leap second (103060) is read as 10:30:59
    return aware(datetime.combine(datetime.strptime(day, "%Y%m%d").date(),
                                  clock_time(at.hour, at.minute, at.second) if at else clock_time(23, 59, 59)), offset)
