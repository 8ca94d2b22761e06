"""The detector contract: what every detector takes and returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ai_engine.errors import DetectorInputError
from ai_engine.orientation import Reorientation, to_lps
from ai_engine.results import AlgorithmInfo, DetectorResult, Task

if TYPE_CHECKING:
    from ai_engine.mammo import MammoView
    from ai_engine.volume import Volume
    from hl7_fhir.context import ClinicalContext


@dataclass
class DetectorInput:
    """Input for one run: a CT volume or mammography views, plus optional clinical context."""

    volume: Volume | None = None
    views: list[MammoView] = field(default_factory=list)
    context: ClinicalContext | None = None
    notes: list[str] = field(default_factory=list)  # what the loader left out, for the result's notes


class Detector(Protocol):
    """A detector for one task. ``detect`` must not raise for a valid but empty input."""

    name: str
    task: Task
    algorithm: AlgorithmInfo

    def detect(self, inputs: DetectorInput) -> DetectorResult:
        """Run detection and return findings (possibly none)."""
        ...


HEAD_MIN_COVERAGE_MM = 30.0  # less: a few slices, which cannot show a head free of blood
HEAD_FULL_COVERAGE_MM = 100.0  # less: the result says how little of the head it read


def head_coverage_notes(volume: Volume, detector: str) -> list[str]:
    """Refuse a series too short to be read as a head CT (two slices of a bleeding head scored a plain negative);
    a note when it covers less than a head. The coverage is the slices times the table's step between them (with
    a gantry tilt, longer than their spacing along the tilted slice normal)."""
    step = volume.spacing_mm[0] * np.asarray(volume.direction[2]) + np.asarray(volume.shear_mm)
    extent_mm = volume.array.shape[0] * float(np.linalg.norm(step))
    if extent_mm < HEAD_MIN_COVERAGE_MM:
        raise DetectorInputError(f"{detector}: the series covers {extent_mm:.1f} mm along the body axis, less than "
                                 f"{HEAD_MIN_COVERAGE_MM:g} mm: too little of a head to call it free of blood")
    if extent_mm < HEAD_FULL_COVERAGE_MM:
        return [f"the series covers only {extent_mm:.0f} mm along the body axis (a head CT covers "
                f"{HEAD_FULL_COVERAGE_MM:g} mm or more): nothing outside it was searched"]
    return []


def lps_volume(inputs: DetectorInput, detector: str, anatomy: str) -> tuple[Volume, Reorientation]:
    """The CT volume of ``inputs`` in LPS order, and the reorientation that maps findings back onto the stored voxels.

    Every CT detector reads its volume through this, so a series stored feet first, prone or mirrored is
    analysed as the anatomy it shows (``ai_engine.orientation``); a DetectorInputError when there is no volume.
    """
    if inputs.volume is None:
        raise DetectorInputError(f"{detector} needs a {anatomy} CT volume, got none (views: {len(inputs.views)})")
    return to_lps(inputs.volume)
