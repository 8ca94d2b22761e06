"""ClinicalContext: the patient's labs and record gathered for one study (plain dataclasses).

Imported by ai_engine (types only) and by the application; no heavy imports here.
Missing data is explicit: a value is either present with its provenance or listed in
``missing``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class Provenance:
    """Where a value came from: 'fhir' or 'hl7', the server or sending facility, the record id, and for HL7 the
    order it belongs to (OBR-3 filler, else OBR-2 placer number; '' when the message names none)."""

    source: str
    origin: str
    record_id: str
    received_at: datetime | None = None
    order: str = ""


@dataclass(frozen=True)
class LabValue:
    """A normalized numeric observation (value in the canonical unit of its name).

    ``flags`` are the sender's abnormal flags as sent (HL7 OBX-8, FHIR interpretation codes).
    """

    name: str
    code: str
    value: float
    unit: str
    observed_at: datetime | None
    provenance: Provenance
    flags: str = ""


@dataclass(frozen=True)
class CodedItem:
    """A condition, procedure, medication or family-history entry: code, system, display, optional class.

    ``alternate_codes``: the codes of the concept's other codings (an ICD-10 code first, SNOMED CT second).
    """

    code: str
    system: str
    display: str
    category: str = ""
    recorded_at: datetime | None = None
    provenance: Provenance | None = None
    alternate_codes: tuple[str, ...] = ()


@dataclass
class ClinicalContext:
    """Everything gathered for one study. ``status`` is 'complete', 'partial' or 'unavailable'.

    ``unreadable``: per analyte left out because its newest FHIR result held no value that can be read, that result's
    time (None: not timed); merging lets only a value newer than it stand in.
    """

    age_years: float | None = None
    sex: str | None = None
    labs: dict[str, LabValue] = field(default_factory=dict)
    coded_observations: dict[str, CodedItem] = field(default_factory=dict)
    medications: list[CodedItem] = field(default_factory=list)
    conditions: list[CodedItem] = field(default_factory=list)
    procedures: list[CodedItem] = field(default_factory=list)
    family_history: list[CodedItem] = field(default_factory=list)
    reason_for_exam: str | None = None
    notes: list[str] = field(default_factory=list)
    status: str = "unavailable"
    missing: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    unreadable: dict[str, datetime | None] = field(default_factory=dict)

    @classmethod
    def unavailable(cls, reason: str) -> ClinicalContext:
        """A context for a job that goes on image-only, saying why."""
        return cls(status="unavailable", errors=[reason])

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (datetimes as ISO strings)."""

        def convert(value: object) -> object:
            if isinstance(value, datetime):
                return value.isoformat()
            if isinstance(value, dict):
                return {k: convert(v) for k, v in value.items()}
            if isinstance(value, list):
                return [convert(v) for v in value]
            return value

        return convert(asdict(self))  # type: ignore[return-value]
