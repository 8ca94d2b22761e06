"""The detector contract: what every detector takes and returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

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


def lps_volume(inputs: DetectorInput, detector: str, anatomy: str) -> tuple[Volume, Reorientation]:
    """The CT volume of ``inputs`` in LPS order, and the reorientation that maps findings back onto the stored voxels.

    Every CT detector reads its volume through this, so a series stored feet first, prone or mirrored is
    analysed as the anatomy it shows (``ai_engine.orientation``); a DetectorInputError when there is no volume.
    """
    if inputs.volume is None:
        raise DetectorInputError(f"{detector} needs a {anatomy} CT volume, got none (views: {len(inputs.views)})")
    return to_lps(inputs.volume)
