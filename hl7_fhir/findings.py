"""What outbound messages say: a study and its AI findings as plain dataclasses.

The application converts ai_engine results into these, so hl7_fhir needs no import of
ai_engine. Constructors check every argument and name the one that is wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from hl7_fhir.errors import Hl7FhirError

_UID = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")


class FindingError(Hl7FhirError):
    """An outbound finding or study with an argument out of its allowed range."""


@dataclass(frozen=True)
class OutboundFinding:
    """One AI finding: type (display), optional code, location, measurements, model score, flags.

    ``critical`` marks a finding that needs an urgent call (hemorrhage); ``abnormal`` is False
    only for an explicit negative finding.
    """

    finding_type: str
    code: str = ""
    code_system: str = ""
    location: str = ""
    volume_ml: float | None = None
    diameter_mm: float | None = None
    score: float | None = None
    abnormal: bool = True
    critical: bool = False

    def __post_init__(self) -> None:
        if not self.finding_type.strip():
            raise FindingError("OutboundFinding.finding_type must not be empty")
        if self.code and not self.code_system:
            raise FindingError(f"OutboundFinding.code {self.code!r} needs a code_system")
        if self.score is not None and not 0.0 <= self.score <= 1.0:
            raise FindingError(f"OutboundFinding.score must be within [0, 1], got {self.score}")
        for name in ("volume_ml", "diameter_mm"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise FindingError(f"OutboundFinding.{name} must be >= 0, got {value}")
        if self.critical and not self.abnormal:
            raise FindingError("OutboundFinding cannot be critical and not abnormal")

    def summary(self) -> str:
        """One line a clinician reads: type, location, measurements, score."""
        parts = [self.finding_type]
        if self.location:
            parts.append(self.location)
        if self.volume_ml is not None:
            parts.append(f"volume {self.volume_ml:.1f} mL")
        if self.diameter_mm is not None:
            parts.append(f"diameter {self.diameter_mm:.1f} mm")
        if self.score is not None:
            parts.append(f"AI score {self.score:.2f}")
        return ", ".join(parts)


@dataclass(frozen=True)
class OutboundStudy:
    """The imaging study the findings belong to, and the algorithm that produced them.

    ``study_code`` is a LOINC code of the imaging procedure (e.g. 24725-4 CT Head), with
    ``study_display`` its name; ``patient_system`` is the FHIR identifier system of
    ``patient_id`` and ``patient_authority`` the HL7 assigning authority. ``result_uid`` tells
    this result from the study's other results (re-issues, other series): radfusion passes
    the SR's SOP Instance UID, and the FHIR identifiers end with it. ``patient_name`` is the
    images' Patient Name as DICOM writes it (family^given^middle^prefix^suffix; empty if absent).
    ``notes`` are what the detector says about the case (an input it lacked, a part of a study it read), shown
    with the result as the SR shows them. ``replaces_result_uid`` is the SR this result replaces (a re-issue after
    late images): the FHIR report names the report it replaces, and the ORU is sent as a correction.
    ``order_scope`` is what the algorithm read, the Series Instance UID of a series-level result ("" for the whole
    study): with the study and the algorithm it keys the ORU's filler order, which re-issues keep.
    """

    study_instance_uid: str
    accession: str
    patient_id: str
    patient_authority: str
    patient_system: str
    study_code: str
    study_display: str
    algorithm: str
    performed_at: datetime | None = None
    result_uid: str = ""
    patient_name: str = ""
    notes: tuple[str, ...] = ()
    replaces_result_uid: str = ""
    order_scope: str = ""

    @property
    def result_key(self) -> str:
        """Study UID / algorithm [/ result UID]: the stem of the FHIR identifiers of this result."""
        return self._key(self.result_uid)

    @property
    def replaced_result_key(self) -> str:
        """The ``result_key`` of the result this one replaces; "" when it replaces none."""
        return self._key(self.replaces_result_uid) if self.replaces_result_uid else ""

    def _key(self, result_uid: str) -> str:
        return "/".join(filter(None, (self.study_instance_uid, self.algorithm, result_uid)))

    def __post_init__(self) -> None:
        if not _UID.match(self.study_instance_uid) or len(self.study_instance_uid) > 64:
            raise FindingError(f"OutboundStudy.study_instance_uid is not a DICOM UID: {self.study_instance_uid!r}")
        for name in ("patient_id", "study_code", "study_display", "algorithm"):
            if not getattr(self, name).strip():
                raise FindingError(f"OutboundStudy.{name} must not be empty")
        if self.performed_at is not None and self.performed_at.tzinfo is None:
            raise FindingError("OutboundStudy.performed_at must be timezone-aware")
