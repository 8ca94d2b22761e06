"""Gather a ClinicalContext for one study: from FHIR, merged with stored HL7 values, under a time budget.

The budget matters more than completeness: a hemorrhage alert must not wait on a slow EMR,
so :func:`gather_with_budget` returns an explicit 'unavailable' context when the EMR does
not answer in time, and the job goes on image-only, saying why.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any

from fhir.resources.R4B.observation import Observation

from hl7_fhir.context import ClinicalContext, CodedItem, LabValue, Provenance
from hl7_fhir.errors import Hl7FhirError
from hl7_fhir.fhir_client import FhirClient, FhirError, parse_resource
from hl7_fhir.medication_classes import DEFAULT_MEDICATION_CLASSES, MedicationClass, classify
from hl7_fhir.units import (
    ANALYTES,
    CODED_ANALYTES,
    LOINC_SYSTEM,
    UnitError,
    analyte_for_code,
    loinc_codes,
    normalize,
    panel_codes,
)

log = logging.getLogger(__name__)

HL7_SEX_TO_FHIR = {"F": "female", "M": "male", "O": "other", "U": "unknown", "A": "other"}
IN_ERROR = "entered-in-error"  # a record written in error (on the wrong patient): not the patient's
VOID_STATUSES = frozenset({IN_ERROR, "cancelled"})  # Observation, DiagnosticReport: no result
VALUE_FIELDS = tuple(f for f in Observation.model_fields if f.startswith("value") and "__" not in f)  # value[x]
DONE = "completed"  # Procedure.status: the only one that was done (planned, stopped or not done is no procedure)
LATEST = datetime.max.replace(tzinfo=timezone.utc)  # an Observation not valid R4 whose time cannot be read: newest
LAB_PAGE = 50  # newest Observations read per analyte: enough to pass over void ones and panels without it
CONFIRMED = "confirmed"  # Condition.verificationStatus: the only one (or none, as many EMRs send) that counts
LIST_SECTIONS = ("medications", "conditions", "procedures", "family_history")  # FHIR-only; errors: "<section>: ..."
NOT_GATHERED = "not gathered, the EMR was unavailable"  # a section's error when FHIR was not read
NEWEST_UNREADABLE = "the newest result"  # begins an analyte's error when its newest FHIR result could not be read


@dataclass(frozen=True)
class ClinicalQuery:
    """What to ask the EMR for one study.

    ``analytes`` are canonical names from :mod:`hl7_fhir.units` (the task's configuration),
    searched by all their LOINC codes; the record is read as of ``as_of`` (the study's time, or the
    present): values and notes after it, or older than ``lookback`` before it, are ignored, and the
    age is the age then. ``accession`` finds the ServiceRequest that carries the reason for exam.
    """

    patient_id: str
    identifier_system: str
    analytes: tuple[str, ...]
    as_of: datetime
    lookback: timedelta = timedelta(days=90)
    accession: str = ""
    medication_classes: tuple[MedicationClass, ...] = DEFAULT_MEDICATION_CLASSES
    note_limit: int = 5

    def __post_init__(self) -> None:
        unknown = [a for a in self.analytes if a not in ANALYTES and a not in CODED_ANALYTES]
        if unknown:
            raise Hl7FhirError(f"ClinicalQuery.analytes {unknown} are not known analytes "
                               f"{sorted([*ANALYTES, *CODED_ANALYTES])}")
        if self.as_of.tzinfo is None:
            raise Hl7FhirError("ClinicalQuery.as_of must be timezone-aware")
        if not self.patient_id or not self.identifier_system:
            raise Hl7FhirError("ClinicalQuery needs patient_id and identifier_system")

    @property
    def since(self) -> datetime:
        """Start of the look-back window."""
        return self.as_of - self.lookback

    @property
    def window(self) -> list[str]:
        """The look-back window as FHIR ``date`` search values."""
        return [f"ge{self.since.isoformat()}", f"le{self.as_of.isoformat()}"]


def _as_datetime(value: object) -> datetime | None:
    """FHIR date/dateTime as an aware datetime (dates at midnight UTC, naive as UTC)."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    return None


def _codings(concept: Any) -> list[tuple[str, str, str]]:
    """(system, code, display) of a CodeableConcept's codings."""
    if concept is None:
        return []
    return [(c.system or "", c.code or "", c.display or "") for c in (concept.coding or [])]


def _effective_time(obs: Any) -> datetime | None:
    """When an Observation was made: its dateTime, the end (else start) of its period, or its instant; a date without
    a day ('2026-11', '2026') at its start."""
    period = obs.effectivePeriod
    for value in (obs.effectiveDateTime, period.end if period else None, period.start if period else None,
                  obs.effectiveInstant):
        if isinstance(value, str):  # R4B keeps a partial date as its text
            year, _, month = value.partition("-")
            value = date(int(year), int(month or 1), 1)
        when = _as_datetime(value)
        if when is not None:
            return when
    return None


def _effective_time_or_oldest(obs: Any) -> datetime:
    """When an Observation was made, for ordering: its effective time, else when it was issued (one without either
    sorts as the oldest)."""
    return _effective_time(obs) or _as_datetime(obs.issued) or datetime.min.replace(tzinfo=timezone.utc)


def _lenient_time(data: Mapping[str, Any]) -> datetime | None:
    """The effective time of an Observation's JSON as far as it can be read; one without an offset is in this
    machine's time zone, as an HL7 time without one is."""
    period = data.get("effectivePeriod") if isinstance(data.get("effectivePeriod"), dict) else {}
    for value in (data.get("effectiveDateTime"), period.get("end"), period.get("start"), data.get("effectiveInstant")):
        try:
            when = datetime.fromisoformat(value)
        except (TypeError, ValueError):
            continue
        return when if when.tzinfo else when.astimezone()
    return None


def _stand_in(data: Mapping[str, Any]) -> Any | None:
    """What can be read of an Observation that is not valid R4: its id, status, codes and time (``_lenient_time``),
    and a text in place of each value it holds, so that it reads as a result holding no value that can be read;
    None when its status or codes cannot be read."""
    components = data.get("component") if isinstance(data.get("component"), list) else []
    parts = [data, *(c for c in components if isinstance(c, dict))]
    kept = [{"code": part.get("code"), **({"valueString": "not valid R4"} if any(
        str(key).startswith("value") for key in part) else {})} for part in parts]
    when = _lenient_time(data)
    try:
        return parse_resource({"resourceType": "Observation", "id": data.get("id"), "status": data.get("status"),
                               **kept[0], **({"component": kept[1:]} if kept[1:] else {}),
                               **({"effectiveDateTime": when.isoformat()} if when else {})})
    except FhirError:
        return None


def _no_result(obs: Any) -> bool:
    """Whether an Observation is no result: void (entered in error, cancelled), or none yet (registered, or
    preliminary without any value), as a pending HL7 result (OBX-11 I) is none."""
    if obs.status in VOID_STATUSES or obs.status == "registered":
        return True
    parts = [obs, *(obs.component or [])]
    return obs.status == "preliminary" and all(getattr(part, f) is None for part in parts for f in VALUE_FIELDS)


def _coded_item(concept: Any, category: str, recorded: object, provenance: Provenance) -> CodedItem:
    codings = _codings(concept)
    system, code, display = codings[0] if codings else ("", "", "")
    text = (concept.text if concept is not None else None) or display or code
    return CodedItem(code, system, text, category, _as_datetime(recorded), provenance,
                     tuple(other for _, other, _ in codings[1:] if other))


class _FhirGatherer:
    """One gathering run: the patient found, then each section searched in parallel."""

    def __init__(self, client: FhirClient, query: ClinicalQuery, patient_id: str):
        self.client = client
        self.query = query
        self.subject = f"Patient/{patient_id}"

    def provenance(self, resource: Any) -> Provenance:
        last_updated = resource.meta.lastUpdated if resource.meta else None
        return Provenance("fhir", self.client.base_url, f"{resource.get_resource_type()}/{resource.id}",
                          _as_datetime(last_updated))

    def labs(self, context: ClinicalContext) -> list[str]:
        """Newest usable value per analyte, from an Observation's own value or one of its components.

        Each analyte is searched on its own, newest first, first page only (``LAB_PAGE``): a patient with
        thousands of observations (an ICU's hourly vitals) costs one request per analyte, and an analyte the
        record lacks costs no more. Panels that carry an analyte as a component (the blood pressure panel's
        systolic value) are searched too; Observations that are no result (``_no_result``) are skipped. When the newest
        result of an analyte holds no value that can be read (a text value, a unit not accepted, a value out of
        range, a resource not valid R4), the analyte is missing and a problem says so: an older result would be read
        as the current one. ``context.unreadable`` keeps that result's time for merging.
        """
        problems: list[str] = []
        for analyte in self.query.analytes:
            for obs, invalid in self._newest_first(analyte):
                if _no_result(obs):
                    continue
                when = _effective_time(obs)
                for part in [obs, *(obs.component or [])]:
                    problem = self._lab_value(context, obs, part, when)
                    if problem:
                        problems.append(problem)
                if analyte in context.labs or analyte in context.coded_observations:
                    break
                if any(analyte_for_code(code) == analyte for part in [obs, *(obs.component or [])]
                       for system, code, _ in _codings(part.code) if system == LOINC_SYSTEM):
                    newest = f"could not be read ({invalid})" if invalid else (
                        f"(Observation/{obs.id}) holds no value that can be read")
                    problems.append(f"{analyte}: {NEWEST_UNREADABLE} {newest}; older results are not used")
                    context.unreadable[analyte] = when
                    break
        return problems

    def _newest_first(self, analyte: str) -> list[tuple[Any, str]]:
        """The first page of ``analyte``'s Observations, newest first (a server may ignore _sort), each with why it
        is not valid R4 ('' when it is). One that is not valid R4 counts by what can be read of it (``_stand_in``),
        as the newest when its time cannot be read; one whose codes cannot be read is left out (logged)."""
        codes = [f"{LOINC_SYSTEM}|{c}" for c in [*loinc_codes(analyte), *panel_codes(analyte)]]
        invalid: list[tuple[datetime, Any, str]] = []

        def keep(data: Mapping[str, Any], exc: FhirError) -> None:
            stand_in = _stand_in(data)
            if stand_in is not None:
                invalid.append((_effective_time(stand_in) or LATEST, stand_in, str(exc).rstrip(".")))

        page = [(_effective_time_or_oldest(obs), obs, "") for obs in self.client.iter_search("Observation", {
            "subject": self.subject, "code": ",".join(codes), "date": self.query.window, "_sort": "-date",
            "_count": str(LAB_PAGE)}, lenient=True, max_pages=1, on_invalid=keep)]
        return [(obs, why) for _, obs, why in sorted([*page, *invalid], key=lambda result: result[0], reverse=True)]

    def _lab_value(self, context: ClinicalContext, obs: Any, part: Any, when: datetime | None) -> str | None:
        """Record ``part`` (the Observation or one of its components) under its analyte if that is still unset;
        the problem with its value, if any."""
        codes_here = [code for system, code, _ in _codings(part.code) if system == LOINC_SYSTEM]
        name = next((n for n in map(analyte_for_code, codes_here) if n), None)
        if name is None or name in context.labs or name in context.coded_observations:
            return None
        if name in CODED_ANALYTES and part.valueCodeableConcept is not None:
            context.coded_observations[name] = _coded_item(part.valueCodeableConcept, name, when,
                                                           self.provenance(obs))
            return None
        if name not in ANALYTES:
            return None
        quantity = part.valueQuantity
        if quantity is not None and quantity.value is not None:
            raw, unit = float(quantity.value), quantity.code or quantity.unit or ""
        elif part.valueInteger is not None:  # a score such as GCS
            raw, unit = float(part.valueInteger), ""
        else:
            return None
        try:
            value, unit = normalize(name, raw, unit)
        except UnitError as exc:
            return f"Observation/{obs.id}: {exc}"
        flags = "~".join(code for i in (obs.interpretation or []) for _, code, _ in _codings(i))
        context.labs[name] = LabValue(name, codes_here[0], value, unit, when, self.provenance(obs), flags)
        return None

    def later(self, item: CodedItem) -> bool:
        """Whether ``item`` was recorded after the moment the record is read as of (a condition diagnosed, a drug
        started after the study): not part of the record the study was made with."""
        return item.recorded_at is not None and item.recorded_at > self.query.as_of

    def _listed(self, section: str, resource_type: str, params: dict[str, str], problems: list[str]) -> list[Any]:
        """The valid matches of a list section's search, all pages; each one that is not valid R4 is a problem of
        the section, so its features read missing: a warfarin order that cannot be read is no 'not on an
        anticoagulant'."""
        def note(_data: Mapping[str, Any], exc: FhirError) -> None:
            problems.append(f"{section}: {str(exc).rstrip('.')}")

        return list(self.client.iter_search(resource_type, params, lenient=True, on_invalid=note))

    def conditions(self, context: ClinicalContext) -> list[str]:
        problems: list[str] = []
        for cond in self._listed("conditions", "Condition", {"subject": self.subject, "_count": "100"}, problems):
            if cond.verificationStatus is not None and CONFIRMED not in {
                    code for _, code, _ in _codings(cond.verificationStatus)}:
                continue  # suspected, ruled out or recorded in error: not a condition the patient has
            status = _codings(cond.clinicalStatus)
            item = _coded_item(cond.code, status[0][1] if status else "", cond.recordedDate or cond.onsetDateTime,
                               self.provenance(cond))
            if not self.later(item):
                context.conditions.append(item)
        return problems

    def procedures(self, context: ClinicalContext) -> list[str]:
        problems: list[str] = []
        for procedure in self._listed("procedures", "Procedure", {"subject": self.subject, "_count": "100"},
                                      problems):
            if procedure.status != DONE:
                continue
            item = _coded_item(procedure.code, procedure.status or "", procedure.performedDateTime,
                               self.provenance(procedure))
            if not self.later(item):
                context.procedures.append(item)
        return problems

    def medications(self, context: ClinicalContext) -> list[str]:
        """Active drugs, coded from the statement or order itself, a Medication it contains or one it references
        (US Core's usual shape); a referenced Medication that cannot be read is a problem of the section, so the
        drug classes read as missing rather than as "not taken"."""
        problems: list[str] = []
        for resource_type, when_field in (("MedicationStatement", "effectiveDateTime"),
                                          ("MedicationRequest", "authoredOn")):
            for med in self._listed("medications", resource_type, {"subject": self.subject, "status": "active",
                                                                   "_count": "100"}, problems):
                if med.status != "active" or getattr(med, "doNotPerform", None):
                    continue  # a server that ignores the status search, or an order not to give it
                concept = med.medicationCodeableConcept or self._referenced_medication(med, problems)
                text = (concept.text if concept else None) or (
                    med.medicationReference.display if med.medicationReference else "") or ""
                category = classify(_codings(concept), text, self.query.medication_classes)
                item = _coded_item(concept, category, getattr(med, when_field), self.provenance(med))
                if self.later(item):
                    continue
                context.medications.append(item if item.display else CodedItem(
                    item.code, item.system, text, category, item.recorded_at, item.provenance))
        return problems

    def _referenced_medication(self, med: Any, problems: list[str]) -> Any:
        """The code (a CodeableConcept) of the Medication that ``med`` references, contained ('#id') or on the
        server ('Medication/id'); None without a reference, a problem added when it cannot be read."""
        reference = med.medicationReference.reference if med.medicationReference else None
        if not reference:
            return None
        where = f"medications: {med.get_resource_type()}/{med.id}"
        if reference.startswith("#"):
            contained = next((r for r in med.contained or [] if getattr(r, "id", None) == reference[1:]), None)
            if contained is None:
                problems.append(f"{where} references a contained Medication it does not contain")
            return getattr(contained, "code", None)
        ident = self.client.local_id(reference, "Medication")
        if ident is None:  # another server's, or not a Medication
            problems.append(f"{where} references a Medication that is not on this server: {reference!r}")
            return None
        try:
            return self.client.read("Medication", ident).code
        except Hl7FhirError as exc:
            problems.append(f"medications: Medication/{ident}, referenced by {med.get_resource_type()}/{med.id}, "
                            f"could not be read: {exc}")
            return None

    def family_history(self, context: ClinicalContext) -> list[str]:
        problems: list[str] = []
        for history in self._listed("family_history", "FamilyMemberHistory", {"patient": self.subject,
                                                                              "_count": "100"}, problems):
            if history.status == IN_ERROR:
                continue
            relation = _codings(history.relationship)
            for cond in history.condition or []:
                context.family_history.append(_coded_item(
                    cond.code, relation[0][1] if relation else (history.relationship.text or ""),
                    history.date, self.provenance(history)))
        return problems

    def reason_for_exam(self, context: ClinicalContext) -> list[str]:
        if not self.query.accession:
            return []
        reasons = []
        for request in self.client.search("ServiceRequest", {"subject": self.subject,
                                                             "identifier": self.query.accession}, lenient=True):
            for concept in request.reasonCode or []:
                codings = _codings(concept)
                reasons.append(concept.text or (codings[0][2] if codings else ""))
            reasons += [ref.display for ref in request.reasonReference or [] if ref.display]
        context.reason_for_exam = "; ".join(filter(None, reasons)) or None
        return []

    def notes(self, context: ClinicalContext) -> list[str]:
        """Text of the newest notes and reports (conclusion, text/plain attachments); one entered in error, or a
        cancelled report, is not the patient's."""
        window = {"subject": self.subject, "date": self.query.window, "_sort": "-date",
                  "_count": str(self.query.note_limit)}
        problems: list[str] = []
        attachments: list[tuple[str, Any]] = []
        limit = self.query.note_limit  # the newest few: a later page is fetched only for ones in error
        documents = (doc for doc in self.client.iter_search("DocumentReference", window, lenient=True)
                     if IN_ERROR not in (doc.status, doc.docStatus))
        reports = (report for report in self.client.iter_search("DiagnosticReport", window, lenient=True)
                   if report.status not in VOID_STATUSES)
        for doc in itertools.islice(documents, limit):
            attachments += [(f"DocumentReference/{doc.id}", c.attachment) for c in doc.content or []]
        for report in itertools.islice(reports, limit):
            if report.conclusion:
                context.notes.append(report.conclusion)
            attachments += [(f"DiagnosticReport/{report.id}", a) for a in report.presentedForm or []]
        for where, attachment in attachments:
            if attachment.data is None or not (attachment.contentType or "").startswith("text/plain"):
                continue
            try:
                raw = attachment.data if isinstance(attachment.data, bytes) else base64.b64decode(attachment.data)
                context.notes.append(raw.decode("utf-8"))
            except (binascii.Error, UnicodeDecodeError) as exc:
                problems.append(f"{where}: text/plain attachment does not decode: {exc}")
        return problems


def _age_years(birth: object, now: datetime) -> float | None:
    born = _as_datetime(birth)
    return None if born is None else round((now - born).days / 365.25, 1)


def gather_from_fhir(client: FhirClient, query: ClinicalQuery, *, max_workers: int = 6) -> ClinicalContext:
    """ClinicalContext from FHIR for the query's patient; FhirError when the patient search fails.

    Sections (labs, conditions, procedures, medications, family history, reason for exam, notes) run in
    parallel; one that fails leaves its reason in ``errors`` and the status 'partial'.
    """
    patient = client.find_patient(query.identifier_system, query.patient_id)
    if patient is None:
        return ClinicalContext.unavailable(f"no Patient with an identifier in system {query.identifier_system} "
                                           f"matches the study's patient")
    context = ClinicalContext(age_years=_age_years(patient.birthDate, query.as_of), sex=patient.gender,
                              status="complete")
    gatherer = _FhirGatherer(client, query, str(patient.id))
    sections: list[Callable[[ClinicalContext], list[str]]] = [
        gatherer.labs, gatherer.conditions, gatherer.procedures, gatherer.medications, gatherer.family_history,
        gatherer.reason_for_exam, gatherer.notes]
    with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="fhir-gather") as pool:
        futures = {section.__name__: pool.submit(section, context) for section in sections}
    for name, future in futures.items():
        try:
            context.errors += future.result()
        except Hl7FhirError as exc:
            context.errors.append(f"{name}: {exc}")
    context.status = "partial" if context.errors else "complete"
    context.missing = _missing(context, query.analytes, query.accession)
    return context


def _missing(context: ClinicalContext, analytes: Sequence[str], accession: str) -> list[str]:
    """Names of what was asked for and not found."""
    missing = [a for a in analytes if a not in context.labs and a not in context.coded_observations]
    missing += [name for name, value in (("age", context.age_years), ("sex", context.sex)) if value is None]
    if accession and not context.reason_for_exam:
        missing.append("reason_for_exam")
    return missing


def merge_contexts(fhir_context: ClinicalContext, hl7_values: Sequence[LabValue], *, analytes: Sequence[str],
                   as_of: datetime, lookback: timedelta, hl7_coded: Sequence[CodedItem] = (),
                   hl7_birth_date: date | None = None, hl7_sex: str | None = None,
                   hl7_reason: str | None = None, accession: str = "",
                   hl7_unreadable: Sequence[tuple[str, datetime | None]] = ()) -> ClinicalContext:
    """FHIR context plus stored HL7 values (in the order received): per analyte the newest value inside the
    window (``lookback`` before ``as_of``, up to ``as_of``) wins, and of HL7 values for the same time the one
    received last (a corrected result). A result that could not be read, from HL7 (``hl7_unreadable``: analyte and
    time) or FHIR (``fhir_context.unreadable``), and is at least as new as that value makes the analyte missing,
    saying why.

    Each value keeps its provenance. FHIR demographics win over HL7's (the EMR is the
    master record); HL7 fills what FHIR lacks. An unavailable FHIR context with HL7 data
    becomes 'partial' and keeps the EMR's error, and each list section (``LIST_SECTIONS``)
    gets an error of its own: those lists come from the EMR only, so an empty one means "not
    asked", not "none" (an anticoagulant list never fetched must not read as "not anticoagulated").
    """
    since = as_of - lookback
    merged = ClinicalContext(
        age_years=fhir_context.age_years, sex=fhir_context.sex, labs=dict(fhir_context.labs),
        coded_observations=dict(fhir_context.coded_observations), medications=list(fhir_context.medications),
        conditions=list(fhir_context.conditions), procedures=list(fhir_context.procedures),
        family_history=list(fhir_context.family_history),
        reason_for_exam=fhir_context.reason_for_exam, notes=list(fhir_context.notes),
        errors=list(fhir_context.errors))
    for value in hl7_values:  # in the order received: of two HL7 values for one time, the later (a correction) wins
        if value.name not in analytes or value.observed_at is None or not since <= value.observed_at <= as_of:
            continue
        current = merged.labs.get(value.name)
        if current is None or current.observed_at is None or value.observed_at > current.observed_at or (
                value.observed_at == current.observed_at and current.provenance.source == "hl7"):
            merged.labs[value.name] = value
    for item in hl7_coded:  # the same rule: a corrected status sent for the same time replaces the first
        current_coded = merged.coded_observations.get(item.category)
        if item.category in analytes and item.recorded_at is not None and since <= item.recorded_at <= as_of and (
                current_coded is None or current_coded.recorded_at is None
                or item.recorded_at > current_coded.recorded_at or (
                    item.recorded_at == current_coded.recorded_at and current_coded.provenance.source == "hl7")):
            merged.coded_observations[item.category] = item
    _withhold_unreadable(merged, fhir_context.unreadable, hl7_unreadable, analytes, since, as_of)
    if merged.age_years is None and hl7_birth_date is not None:
        merged.age_years = _age_years(hl7_birth_date, as_of)
    merged.sex = merged.sex or HL7_SEX_TO_FHIR.get(hl7_sex or "")
    merged.reason_for_exam = merged.reason_for_exam or hl7_reason or None
    has_data = bool(merged.labs or merged.coded_observations or merged.age_years is not None
                    or merged.reason_for_exam)
    if fhir_context.status == "unavailable":
        merged.status = "partial" if has_data else "unavailable"
        if has_data:
            merged.errors += [f"{section}: {NOT_GATHERED}" for section in LIST_SECTIONS]
    else:
        merged.status = fhir_context.status
    merged.missing = _missing(merged, analytes, accession)
    return merged


def _withhold_unreadable(merged: ClinicalContext, fhir_unreadable: dict[str, datetime | None],
                         hl7_unreadable: Sequence[tuple[str, datetime | None]], analytes: Sequence[str],
                         since: datetime, as_of: datetime) -> None:
    """Leave out of ``merged`` each analyte whose newest result, from either source, could not be read (the value
    kept is no newer, or one of them is not timed): an older value would be read as the current one. HL7's results
    say why here; FHIR's said so when gathered, and that is taken back where a newer HL7 value is kept."""
    unreadable = {name: (when, "") for name, when in fhir_unreadable.items() if name in analytes}
    for name, when in hl7_unreadable:
        if name not in analytes or when is None or not since <= when <= as_of:
            continue
        newest = unreadable.get(name)
        if newest is None or (newest[0] is not None and when >= newest[0]):
            unreadable[name] = (when, f"{name}: {NEWEST_UNREADABLE} ({when.isoformat(timespec='minutes')}) could not "
                                      "be read; older results are not used")
    times = {**{name: lab.observed_at for name, lab in merged.labs.items()},
             **{name: item.recorded_at for name, item in merged.coded_observations.items()}}
    for name, (when, error) in unreadable.items():
        kept = times.get(name)
        if kept is None or when is None or when >= kept:
            merged.labs.pop(name, None)
            merged.coded_observations.pop(name, None)
            merged.errors += [error] if error else []
        elif name in fhir_unreadable:  # a newer value than the FHIR result that could not be read is used
            merged.errors = [e for e in merged.errors if not e.startswith(f"{name}: {NEWEST_UNREADABLE}")]


def gather_with_budget(gather: Callable[[], ClinicalContext], budget_s: float = 2.0) -> ClinicalContext:
    """Run ``gather`` in a worker thread; its context if it finishes within ``budget_s``, else 'unavailable'.

    Never raises and never blocks longer than the budget: an EMR error or a late answer
    becomes ``ClinicalContext.unavailable(reason)`` and the job goes on image-only.
    """
    done = threading.Event()
    outcome: list[ClinicalContext] = []

    def work() -> None:
        try:
            outcome.append(gather())
        except Exception as exc:  # any failure of the EMR side means image-only, with the reason
            log.warning("clinical context gathering failed: %s: %s", type(exc).__name__, exc)
            outcome.append(ClinicalContext.unavailable(f"EMR query failed: {exc}"))
        finally:
            done.set()

    threading.Thread(target=work, name="clinical-context", daemon=True).start()
    if not done.wait(budget_s):
        log.warning("clinical context not gathered within %.1f s; going on image-only", budget_s)
        return ClinicalContext.unavailable(f"EMR did not answer within {budget_s:.1f} s")
    return outcome[0]
