"""Study completeness, pure: is a series geometrically whole, and is it time to look at it.

No I/O and no database: the application feeds positions and timestamps from its rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from statistics import median

import numpy as np

from dicom_node.errors import ConfigError

Vector3 = tuple[float, float, float]
Orientation = tuple[float, float, float, float, float, float]

_ORIENTATION_TOLERANCE = 1e-3
_DUPLICATE_TOLERANCE_MM = 1e-3


@dataclass(frozen=True)
class SlicePosition:
    """Where one instance lies: ImagePositionPatient, ImageOrientationPatient, InstanceNumber."""

    position: Vector3 | None
    orientation: Orientation | None
    instance_number: int | None = None


@dataclass(frozen=True)
class Gap:
    """A step between neighbouring slices larger than the allowed factor of the median step."""

    after_instance: int | None
    before_instance: int | None
    at_mm: float
    step_mm: float


@dataclass(frozen=True)
class GeometryReport:
    """Verdict on a series' slice geometry; ``reason`` says what is wrong and where."""

    ok: bool
    reason: str | None = None
    gaps: list[Gap] = field(default_factory=list)
    spacing_mm: float | None = None


def _label(item: SlicePosition) -> str:
    return f"instance {item.instance_number}" if item.instance_number is not None else f"slice at {item.position}"


def check_series_geometry(slices: list[SlicePosition], gap_factor: float = 1.5) -> GeometryReport:
    """Order slices along the normal and report mixed orientations, duplicate positions or gaps.

    Series without positions (single-frame 2D images such as mammograms) have no geometry
    to check and are ok.
    """
    if gap_factor <= 1:
        raise ConfigError(f"gap_factor {gap_factor} must be > 1")
    located = [item for item in slices if item.position is not None]
    if not located:
        return GeometryReport(ok=True)
    if len(located) != len(slices):
        missing = [_label(item) for item in slices if item.position is None]
        return GeometryReport(ok=False, reason=f"{len(missing)} of {len(slices)} slices lack a position "
                                               f"(first: {missing[0]})")
    orientations = [item.orientation for item in located]
    if any(orientation is None for orientation in orientations):
        first = next(item for item in located if item.orientation is None)
        return GeometryReport(ok=False, reason=f"{_label(first)} has a position but no orientation")
    reference = np.asarray(orientations[0], dtype=float)
    for item in located[1:]:
        if not np.allclose(np.asarray(item.orientation, dtype=float), reference, atol=_ORIENTATION_TOLERANCE):
            return GeometryReport(ok=False, reason=f"mixed orientations: {_label(item)} has {item.orientation}, "
                                                   f"{_label(located[0])} has {located[0].orientation}")
    if len(located) == 1:
        return GeometryReport(ok=True)
    normal = np.cross(reference[:3], reference[3:])
    ordered = sorted(located, key=lambda item: float(np.dot(normal, item.position)))  # type: ignore[arg-type]
    distances = [float(np.dot(normal, item.position)) for item in ordered]  # type: ignore[arg-type]
    steps = [later - earlier for earlier, later in zip(distances, distances[1:])]
    for index, step in enumerate(steps):
        if step < _DUPLICATE_TOLERANCE_MM:
            return GeometryReport(ok=False, reason=f"duplicate position {ordered[index].position}: "
                                                   f"{_label(ordered[index])} and {_label(ordered[index + 1])}")
    spacing = median(steps)
    gaps = [
        Gap(ordered[index].instance_number, ordered[index + 1].instance_number, distances[index], step)
        for index, step in enumerate(steps) if step > gap_factor * spacing
    ]
    if gaps:
        first = gaps[0]
        return GeometryReport(
            ok=False, gaps=gaps, spacing_mm=spacing,
            reason=(f"{len(gaps)} gap(s) larger than {gap_factor} x the median spacing {spacing:.3g} mm; first "
                    f"{first.step_mm:.3g} mm after instance {first.after_instance} at {first.at_mm:.3g} mm "
                    f"along the normal"),
        )
    return GeometryReport(ok=True, spacing_mm=spacing)


def series_is_candidate(last_received: datetime, released: bool, now: datetime,
                        settle_s: float, quiet_timeout_s: float) -> bool:
    """Ready for the geometry check: its association released and settled, or quiet for the long timeout.

    An aborted association does not count as released: the sender is likely to try again.
    """
    if settle_s < 0 or quiet_timeout_s < settle_s:
        raise ConfigError(f"need 0 <= settle_s ({settle_s}) <= quiet_timeout_s ({quiet_timeout_s})")
    quiet = now - last_received
    if quiet >= timedelta(seconds=quiet_timeout_s):
        return True
    return released and quiet >= timedelta(seconds=settle_s)
