"""Clinical context for jobs: HL7 values stored as they arrive, FHIR fetched per study under a time budget.

The FHIR query for a study starts when the study is first seen (in parallel with its
assembly); the job waits only for what is left of ``clinical.time_budget_s`` and then goes on
with whatever it has — image-only, saying why, when the EMR is down or slow.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from sqlalchemy import ColumnElement, Delete, and_, delete, exists, func, or_, select
from sqlalchemy.orm import Session

from hl7_fhir.context import ClinicalContext, CodedItem, LabValue, Provenance
from hl7_fhir.errors import AlreadyStored
from hl7_fhir.fhir_auth import BearerToken, ClientCredentials
from hl7_fhir.fhir_client import FhirClient
from hl7_fhir.gather import ClinicalQuery, gather_from_fhir, merge_contexts
from hl7_fhir.hl7v2 import Demographics, Header, LabReport, Merge, Order, PatientIdentifier, ResultRef
from radfusion.db import Database
from radfusion.models import AuditEvent, ClinicalValue, Hl7Message, PatientMerge, utcnow
from radfusion.settings import ClinicalSettings, FhirAuthSettings, FhirServerSettings

log = logging.getLogger(__name__)
ENDED_ORDER_CONTROLS = frozenset({"CA", "CR", "DC", "DR", "OC", "OD"})  # ORC-1: cancelled or discontinued
UNADDRESSED_ORDER_WINDOW = timedelta(days=2)  # an order without accession is for a study of the next day or two
MERGE_DEPTH = 5  # merges of merges followed when a value comes under a retired identifier
SAME_DRAW = timedelta(hours=12)  # results of one order number further apart are draws of a lab that reuses numbers
DEMOGRAPHIC_KINDS = frozenset({"birth_date", "sex"})
_OID = re.compile(r"[0-2](\.(0|[1-9][0-9]*))+")  # an assigning authority's ISO universal id


def fhir_client(server: FhirServerSettings) -> FhirClient:
    """A client for a configured FHIR server, with its authentication."""
    return FhirClient(server.base_url, auth=fhir_auth(server.auth), timeout_s=server.timeout_s,
                      retries=server.retries)


def fhir_auth(auth: FhirAuthSettings) -> BearerToken | ClientCredentials | None:
    """The httpx auth for a FHIR server's settings (validated: the needed keys are present)."""
    if auth.kind == "bearer":
        return BearerToken(auth.token or "")
    if auth.kind == "client_credentials":
        return ClientCredentials(auth.token_url or "", auth.client_id or "", auth.client_secret or "",
                                 scope=auth.scope)
    return None


class Hl7Store:
    """The database side of the HL7 listener (the callbacks of ``hl7_fhir.inbox.Hl7Inbox``).

    Each message is stored in one transaction together with its control id, so a resend is
    recognised and a failure leaves nothing half-stored.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    def seen(self, header: Header) -> bool:
        """Whether this message of its sender (MSH-3^MSH-4, ``Header.sender``) was stored: its control id with the
        same content (``Header.digest``; a row stored before migration 0007 has none and counts), or the control id
        it was stored under because the sender had used its own for another message (``_reused_id``)."""
        with self._db.session() as session:
            return _holds(_stored_digests(session, header), header)

    def on_labs(self, header: Header, report: LabReport) -> list[int]:
        """Store the values; return how many stored values each of the report's retractions removed.

        A result names its order (filler numbers are the filler's own, so: order and sender) and a time. A value
        of an order replaces what is stored for its analyte and order at its time when something is stored then
        (one of two results of an order), else within ``SAME_DRAW`` of it (a final result its preliminary one, a
        correction the result it corrects, even where one took its time from OBR-7 or MSH-7; a lab that reuses an
        order number a day later keeps the earlier draw). A retraction (``report.deleted``) removes the same,
        trying its own time first only when its OBX gives one; and values
        stored without an order (before migration 0004) at its time. A result that could not be read is stored
        without a value: as the newest, it makes its analyte missing. Demographics in an ORU fill in only what no
        message has given for the patient yet (ADT's are the registration's).
        """
        rows = [dict(kind="lab", name=v.name, code=v.code, value=v.value, unit=v.unit, flags=v.flags,
                     observed_at=v.observed_at, order_number=v.provenance.order) for v in report.values]
        rows += [dict(kind="lab", name=r.analyte, value=None, observed_at=r.observed_at, order_number=r.order)
                 for r in report.unreadable]
        rows += [dict(kind="coded", name=c.category, code=c.code, system=c.system, text=c.display,
                      observed_at=c.recorded_at, order_number=c.provenance.order) for c in report.coded]
        replaced = [ResultRef(row["name"], row["order_number"], row["observed_at"]) for row in rows
                    if row["order_number"]]
        identifiers = self.surviving(report.identifiers)
        demographics = _demographic_rows(report.birth_date, report.sex)
        known = self._demographics_known(identifiers) if demographics else set()  # one query, if any
        rows += [row for row in demographics if row["kind"] not in known]
        removals = [_matching(header, identifier, ref, exact_first=ref.timed and bool(ref.order))
                    for identifier in identifiers for ref in report.deleted]
        replacements = [_matching(header, identifier, ref, exact_first=ref.observed_at is not None)
                        for identifier in identifiers for ref in replaced]
        counted = len(report.deleted)  # the first identifier's: each value is stored once per form of the identifier
        return self._store(header, identifiers, rows, replacements + removals[counted:], removals[:counted])

    def surviving(self, identifiers: list[PatientIdentifier]) -> list[PatientIdentifier]:
        """``identifiers`` with each form that a merge retired replaced by the surviving record's forms: a lab that
        has not yet processed a merge sends under the old id, which no study reads any more.

        Only the newest merge of an identifier counts (a merge corrected by another), and from the surviving record
        only merges newer than that one (a wrong merge A into B undone by merging B back into A leaves A's values
        A's), at most ``MERGE_DEPTH`` hops. Merges are remembered only for identifiers with an assigning authority
        (``on_merge``), so a bare "777" of another sender is never taken for the merged patient's."""
        found: dict[tuple[str, str], PatientIdentifier] = {}
        with self._db.session() as session:
            for identifier in identifiers:
                hops, since = [identifier], 0
                for _ in range(MERGE_DEPTH):
                    newest = session.scalar(select(func.max(PatientMerge.message_id)).where(
                        PatientMerge.prior_id.in_([i.value for i in hops]), PatientMerge.message_id > since,
                        or_(*(and_(PatientMerge.prior_id == i.value, PatientMerge.prior_authority == i.authority)
                              for i in hops))))
                    if newest is None:
                        break
                    rows = session.scalars(select(PatientMerge).where(PatientMerge.message_id == newest)).all()
                    keys = {(i.value, i.authority) for i in hops}
                    hops = [PatientIdentifier(r.surviving_id, r.surviving_authority) for r in rows
                            if (r.prior_id, r.prior_authority) in keys] or hops
                    since = newest
                found.update({(i.value, i.authority): i for i in hops})
        return list(found.values())

    def _demographics_known(self, identifiers: list[PatientIdentifier]) -> set[str]:
        """The demographic kinds some message has stored for one of ``identifiers``."""
        with self._db.session() as session:
            return set(session.scalars(select(ClinicalValue.kind).where(
                ClinicalValue.kind.in_(DEMOGRAPHIC_KINDS), _one_of(identifiers))))

    def on_rejected(self, header: Header | None, ack_code: str, reason: str) -> None:
        """Audit a message answered AE or AR (the reason names fields and rules, no patient data)."""
        subject = "frame without MSH" if header is None else f"{header.sender} {header.control_id}"
        with self._db.session() as session:
            session.add(AuditEvent(kind="hl7_rejected", subject=subject[:128], detail=f"{ack_code}: {reason}"))

    def on_demographics(self, header: Header, demographics: Demographics) -> None:
        self._store(header, self.surviving(demographics.identifiers),
                    _demographic_rows(demographics.birth_date, demographics.sex))

    def on_merge(self, header: Header, merges: list[Merge]) -> None:
        """Move what was stored under each merge's prior identifiers to its surviving ones (the first takes the
        rows, the other forms of the surviving identifier get copies), in one transaction with the message.

        The prior record's birth date and sex are moved only where the record that stays has none of its own and
        the merge message gives none (PID-7, PID-8; those are stored as its newest). A trauma alias registered as
        born 1900-01-01, sex unknown, otherwise became the patient's demographics (age 126)."""
        with self._db.session() as session:
            message = _message(session, header)
            session.add(message)
            session.flush()
            for merge in merges:  # an id without authority may be another sender's patient: not remembered
                session.add_all(PatientMerge(message_id=message.id, prior_id=prior.value,
                                             prior_authority=prior.authority, surviving_id=survivor.value,
                                             surviving_authority=survivor.authority)
                                for prior in merge.prior if prior.authority for survivor in merge.surviving)
                first, *others = merge.surviving
                given = {row["kind"] for row in _demographic_rows(merge.birth_date, merge.sex)}
                kept = given | set(session.scalars(select(ClinicalValue.kind).where(
                    ClinicalValue.kind.in_(DEMOGRAPHIC_KINDS), _one_of(merge.surviving))))
                moved: dict[tuple, ClinicalValue] = {}  # a value was stored once per form of the prior identifier
                for prior in merge.prior:
                    for row in session.scalars(select(ClinicalValue).where(
                            ClinicalValue.patient_id == prior.value, ClinicalValue.patient_authority == prior.authority)):
                        if row.kind in kept or moved.setdefault(_content(row), row) is not row:
                            session.delete(row)
                for row in moved.values():
                    row.patient_id, row.patient_authority = first.value, first.authority
                    session.add_all(_copy(row, identifier) for identifier in others)
                session.add_all(ClinicalValue(message_id=message.id, patient_id=identifier.value,
                                              patient_authority=identifier.authority, **row)
                                for identifier in merge.surviving
                                for row in _demographic_rows(merge.birth_date, merge.sex))

    def on_order(self, header: Header, orders: list[Order]) -> None:
        """Keep each order's reason for exam; a cancelled or discontinued order (ORC-1) takes back the reason stored
        for its accession (by accession: without one it names no order of ours). One transaction for the message."""
        ended = [order for order in orders if order.control.upper() in ENDED_ORDER_CONTROLS]
        rows = [dict(kind="reason_for_exam", text=order.reason_for_exam, accession=order.accession)
                for order in orders if order not in ended and order.reason_for_exam]
        deletions = [[delete(ClinicalValue).where(
            ClinicalValue.patient_id == identifier.value, ClinicalValue.patient_authority == identifier.authority,
            ClinicalValue.kind == "reason_for_exam", ClinicalValue.accession == order.accession)]
            for order in ended if order.accession for identifier in self.surviving(order.identifiers)]
        self._store(header, self.surviving(orders[0].identifiers), rows, deletions)

    def _store(self, header: Header, identifiers: list[PatientIdentifier], rows: list[dict],
               deletions: Sequence[Sequence[Delete]] = (), counted: Sequence[Sequence[Delete]] = ()) -> list[int]:
        """Run ``counted`` and ``deletions`` (each a list of alternatives: the first that removes rows ends it),
        then store the message and ``rows`` under each identifier, in one transaction; return how many rows each of
        ``counted`` removed."""
        with self._db.session() as session:
            removed = [_first_that_removes(session, alternatives) for alternatives in counted]
            for alternatives in deletions:
                _first_that_removes(session, alternatives)
            message = _message(session, header)
            session.add(message)
            session.flush()
            for identifier in identifiers:
                for row in rows:
                    session.add(ClinicalValue(message_id=message.id, patient_id=identifier.value,
                                              patient_authority=identifier.authority, **row))
        return removed


_CONTENT_COLUMNS = tuple(c.key for c in ClinicalValue.__table__.columns
                         if c.key not in ("id", "patient_id", "patient_authority"))


def _matching(header: Header, identifier: PatientIdentifier, result: ResultRef, exact_first: bool) -> list[Delete]:
    """The deletes tried in turn for what a result replaces or a retraction removes: at its own time first
    (``exact_first``), then within ``SAME_DRAW``."""
    window = _stored(header, identifier, result, exact=False)
    return [_stored(header, identifier, result, exact=True), window] if exact_first else [window]


def _stored(header: Header, identifier: PatientIdentifier, result: ResultRef, exact: bool) -> Delete:
    """Delete the stored lab and coded values of ``result`` for ``identifier`` (``Hl7Store.on_labs``): of its order
    from its sender at its time (``exact``) or within ``SAME_DRAW`` of it, and those stored without an order at its
    time."""
    if result.order:
        same = and_(ClinicalValue.order_number == result.order, exists().where(
            Hl7Message.id == ClinicalValue.message_id, Hl7Message.sending_facility == header.sender))
        if exact or result.observed_at is not None:
            same = and_(same, ClinicalValue.observed_at == result.observed_at if exact else or_(
                ClinicalValue.observed_at.is_(None), ClinicalValue.observed_at.between(
                    result.observed_at - SAME_DRAW, result.observed_at + SAME_DRAW)))
        same = or_(same, and_(ClinicalValue.order_number == "", ClinicalValue.observed_at == result.observed_at))
    else:
        same = ClinicalValue.observed_at == result.observed_at
    return delete(ClinicalValue).where(
        ClinicalValue.patient_id == identifier.value, ClinicalValue.patient_authority == identifier.authority,
        ClinicalValue.kind.in_(("lab", "coded")), ClinicalValue.name == result.analyte, same)


def _first_that_removes(session: Session, alternatives: Sequence[Delete]) -> int:
    """Run ``alternatives`` in turn until one removes rows; how many it removed."""
    for statement in alternatives:
        removed = int(session.execute(statement).rowcount)  # type: ignore[attr-defined]
        if removed:
            return removed
    return 0


def _one_of(identifiers: Sequence[PatientIdentifier]) -> ColumnElement[bool]:
    """Rows stored under any of ``identifiers``."""
    return or_(*(and_(ClinicalValue.patient_id == identifier.value,
                      ClinicalValue.patient_authority == identifier.authority) for identifier in identifiers))


def _demographic_rows(birth_date: date | None, sex: str | None) -> list[dict]:
    """The rows a birth date and a sex are stored as (none for what is not given)."""
    return ([dict(kind="birth_date", text=birth_date.isoformat())] if birth_date is not None else []) + (
        [dict(kind="sex", text=sex)] if sex else [])


def _message(session: Session, header: Header) -> Hl7Message:
    """The stored record of a message, with the duplicate key ``seen`` reads: its control id, or ``_reused_id`` when
    the sender used that control id before for another message (audited: a sequence reset, say). AlreadyStored when
    another connection stored this very message since ``seen`` (a resend after a lost ACK)."""
    control_id = header.control_id
    stored = _stored_digests(session, header)
    if _holds(stored, header):
        raise AlreadyStored(control_id)
    if stored:  # all under the control id itself: one under ``_reused_id`` has this digest
        control_id = _reused_id(header)
        session.add(AuditEvent(kind="hl7_control_id_reused", subject=f"{header.sender} {header.control_id}"[:128],
                               detail=f"another message came before under this control id; stored as {control_id}"))
        log.warning("HL7 %s from %s reuses control id %s for other content: stored as %s", header.message_type,
                    header.sender, header.control_id, control_id)
    return Hl7Message(control_id=control_id, sending_facility=header.sender, message_type=header.message_type,
                      digest=header.digest or None)


def _stored_digests(session: Session, header: Header) -> list[str | None]:
    """The digests of the messages of ``header``'s sender stored under its control id or its ``_reused_id``."""
    return list(session.scalars(select(Hl7Message.digest).where(
        Hl7Message.sending_facility == header.sender,
        Hl7Message.control_id.in_([header.control_id, _reused_id(header)]))))


def _holds(digests: list[str | None], header: Header) -> bool:
    """Whether ``digests`` (``_stored_digests``) include this message: its own, or none (a row stored before
    migration 0007, taken for it)."""
    return any(digest in (None, header.digest) for digest in digests)


def _reused_id(header: Header) -> str:
    """The control id a message is stored under when its own was used before for other content."""
    return f"{header.control_id[:47]}#{header.digest[:16]}"


def _content(row: ClinicalValue) -> tuple:
    """What ``row`` holds, apart from the identifier it is stored under."""
    return tuple(getattr(row, key) for key in _CONTENT_COLUMNS)


def _copy(row: ClinicalValue, identifier: PatientIdentifier) -> ClinicalValue:
    """``row`` stored again under ``identifier``."""
    return ClinicalValue(**dict(zip(_CONTENT_COLUMNS, _content(row), strict=True)), patient_id=identifier.value,
                         patient_authority=identifier.authority)


@dataclass(frozen=True)
class StudyPatient:
    """Who a study belongs to, as the EMR knows them."""

    study_id: int
    patient_id: str
    issuer: str
    accession: str
    performed_at: datetime | None = None  # Study Date + Time (``Study.performed_at``); None: as of the present


class ClinicalGatherer:
    """Starts the FHIR query when a study is first seen; hands a job the merged context within budget."""

    def __init__(self, settings: ClinicalSettings, db: Database) -> None:
        self._settings = settings
        self._db = db
        self._client = fhir_client(settings.fhir) if settings.fhir else None
        self._pool = ThreadPoolExecutor(4, thread_name_prefix="fhir")
        # study id -> (the patient the query is for, its start, the query): a study whose patient was corrected in
        # the meantime is asked about again
        self._pending: dict[int, tuple[tuple[str, str], float, Future[ClinicalContext]]] = {}
        self._lock = threading.Lock()
        self._unmapped_issuers: set[str] = set()  # warned about once each

    def prefetch(self, patient: StudyPatient, analytes: list[str]) -> None:
        """Start the FHIR query for a study (once); it runs while the study is still arriving."""
        if self._client is None or not patient.patient_id or self._system(patient) is None:
            return
        who = (patient.patient_id, patient.issuer)
        with self._lock:
            if patient.study_id in self._pending and self._pending[patient.study_id][0] == who:
                return
            query = self._query(patient, analytes)
            self._pending[patient.study_id] = (who, time.monotonic(),
                                               self._pool.submit(gather_from_fhir, self._client, query))

    def context_for(self, patient: StudyPatient, analytes: list[str]) -> ClinicalContext:
        """FHIR (waiting at most what is left of the budget) merged with stored HL7 values; never raises."""
        if not patient.patient_id:
            return ClinicalContext.unavailable("the study has no PatientID to match clinical data with")
        as_of = self._as_of(patient)
        fhir_context = self._fhir_context(patient, analytes)
        record = self._hl7_record(patient, as_of)
        merged = merge_contexts(fhir_context, record.labs, analytes=analytes, as_of=as_of, lookback=self._lookback,
                                hl7_coded=record.coded, hl7_birth_date=record.birth_date, hl7_sex=record.sex,
                                hl7_reason=record.reason, accession=patient.accession, hl7_unreadable=record.unreadable)
        if record.withheld:
            merged.errors.append(record.withheld)
        return merged

    def close(self) -> None:
        """Stop the FHIR worker threads (queries in flight are abandoned)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    @property
    def _lookback(self) -> timedelta:
        return timedelta(days=self._settings.lookback_days)

    def _as_of(self, patient: StudyPatient) -> datetime:
        """When the study's clinical data is read as of: its time and ``after_study_hours`` (labs drawn with the
        scan); the present for a study without date and time."""
        if patient.performed_at is None:
            return utcnow()
        return patient.performed_at + timedelta(hours=self._settings.after_study_hours)

    def _system(self, patient: StudyPatient) -> str | None:
        return self._settings.identifier_system(patient.issuer)

    def _query(self, patient: StudyPatient, analytes: list[str]) -> ClinicalQuery:
        return ClinicalQuery(patient_id=patient.patient_id, identifier_system=self._system(patient) or "",
                             analytes=tuple(analytes), as_of=self._as_of(patient), lookback=self._lookback,
                             accession=patient.accession)

    def _fhir_context(self, patient: StudyPatient, analytes: list[str]) -> ClinicalContext:
        if self._client is None:
            return ClinicalContext.unavailable("no FHIR server configured")
        if self._system(patient) is None:
            if patient.issuer not in self._unmapped_issuers:  # an organisation, not a patient: safe to name
                self._unmapped_issuers.add(patient.issuer)
                log.warning("IssuerOfPatientID %r is not in clinical.identifier_systems: the EMR is not asked about "
                            "its studies' patients (map it if it is one of yours)", patient.issuer)
            return ClinicalContext.unavailable(f"IssuerOfPatientID {patient.issuer!r} has no FHIR identifier system "
                                               "(clinical.identifier_systems): the EMR was not asked")
        self.prefetch(patient, analytes)  # after a restart the study was never seen: start now
        with self._lock:
            _, started, future = self._pending.pop(patient.study_id)
        budget = self._settings.time_budget_s
        try:
            return future.result(timeout=max(0.0, budget - (time.monotonic() - started)))
        except FutureTimeout:
            log.warning("EMR did not answer within %.1f s for study %d; going on without FHIR data",
                        budget, patient.study_id)
            return ClinicalContext.unavailable(f"EMR did not answer within {budget:.1f} s")
        except Exception as exc:  # noqa: BLE001 - any EMR failure means: go on without FHIR data, say why
            log.warning("EMR query for study %d failed: %s: %s", patient.study_id, type(exc).__name__, exc)
            return ClinicalContext.unavailable(f"EMR query failed: {type(exc).__name__}: {exc}")

    def _hl7_record(self, patient: StudyPatient, as_of: datetime) -> _Hl7Record:
        """Stored HL7 values for the patient: matched by id, and by issuer (``_same_patient``). An order that names
        no accession gives its reason only when it came within ``UNADDRESSED_ORDER_WINDOW`` before ``as_of`` (the
        study's time): one that came after it is for a later exam."""
        recent = as_of - UNADDRESSED_ORDER_WINDOW
        with self._db.session() as session:
            rows = session.execute(
                select(ClinicalValue, Hl7Message).join(Hl7Message, ClinicalValue.message_id == Hl7Message.id)
                .where(ClinicalValue.patient_id == patient.patient_id).order_by(Hl7Message.received_at)).all()
        bare = any(not value.patient_authority for value, _ in rows)
        usable, withheld = _same_patient(_authority_groups(rows), bare, patient.issuer, self._settings)
        if withheld:
            log.warning("study %d: %s", patient.study_id, withheld)
        record = _Hl7Record(withheld=withheld)
        unaddressed = None
        for value, message in rows:
            if value.patient_authority not in usable:
                continue
            provenance = Provenance("hl7", message.sending_facility, message.control_id, message.received_at)
            if value.kind == "lab" and value.value is None:
                record.unreadable.append((value.name, value.observed_at))
            elif value.kind == "lab":  # received after an unreadable result of its time: it corrects that one
                record.unreadable = [u for u in record.unreadable if u != (value.name, value.observed_at)]
                record.labs.append(LabValue(value.name, value.code, value.value, value.unit, value.observed_at,
                                            provenance, flags=value.flags))
            elif value.kind == "coded":
                record.coded.append(CodedItem(value.code, value.system, value.text, value.name, value.observed_at,
                                              provenance))
            elif value.kind == "birth_date":
                record.birth_date = date.fromisoformat(value.text)
            elif value.kind == "sex":
                record.sex = value.text
            elif value.kind == "reason_for_exam" and value.accession and value.accession == patient.accession:
                record.reason = value.text
            elif value.kind == "reason_for_exam" and not value.accession and recent <= message.received_at <= as_of:
                unaddressed = value.text  # a recent order without accession: only if none names this study
        record.reason = record.reason or unaddressed
        return record


@dataclass
class _Hl7Record:
    """What the stored HL7 messages say about one study's patient; ``withheld``: why some values of its PatientID
    are not used."""

    labs: list[LabValue] = field(default_factory=list)
    unreadable: list[tuple[str, datetime | None]] = field(default_factory=list)  # (analyte, time): no value read
    coded: list[CodedItem] = field(default_factory=list)
    birth_date: date | None = None
    sex: str | None = None
    reason: str | None = None
    withheld: str | None = None


def _authority_groups(rows: Sequence[tuple[ClinicalValue, Hl7Message]]) -> list[set[str]]:
    """The assigning authorities that hold a patient id, grouped into one per patient: the forms of one
    authority (its namespace and its universal id, ``HOSP&1.2.3&ISO``) are stored from the same message."""
    by_message: dict[int, set[str]] = {}
    for value, message in rows:
        if value.patient_authority:
            by_message.setdefault(message.id, set()).add(value.patient_authority)
    groups: list[set[str]] = []
    for authorities in by_message.values():
        joined = [group for group in groups if group & authorities]
        groups = [group for group in groups if not group & authorities] + [authorities.union(*joined)]
    return groups


def _same_patient(groups: list[set[str]], bare: bool, issuer: str,
                  settings: ClinicalSettings) -> tuple[set[str], str | None]:
    """The assigning authorities (PID-3.4; "" for none) whose values are the study's patient's, and why the others
    of its PatientID are not (``bare``: some values came without an authority).

    An authority group is the study's when it holds the study's issuer or names the study's identifier system
    (``clinical.identifier_systems``; an ISO OID names urn:oid:OID). Values without an authority go to a study of
    this site (its issuer maps to a system, or it names none) only when every authority holding the id is the
    study's: then "12345" without an authority cannot be another hospital's 12345. A study whose issuer is not
    mapped (an outside hospital's patient) takes its own issuer's values only."""
    system = settings.identifier_system(issuer)
    mine = [group for group in groups if issuer in group
            or (system is not None and any(_authority_system(settings, a) == system for a in group))]
    others = sorted("/".join(sorted(group)) for group in groups if group not in mine)
    usable = set().union(*mine) | ({""} if system is not None and not others else set())
    reasons = [f"HL7 values under assigning authority {', '.join(others)} not used: not the study's "
               f"IssuerOfPatientID {issuer!r} and not mapped to its identifier system "
               "(clinical.identifier_systems)"] if others else []
    if bare and "" not in usable:
        reasons.append("HL7 values without an assigning authority not used: " + (
            f"IssuerOfPatientID {issuer!r} is not mapped in clinical.identifier_systems (not this site's patient)"
            if system is None else "another assigning authority holds the same PatientID"))
    return usable, "; ".join(reasons) or None


def _authority_system(settings: ClinicalSettings, authority: str) -> str | None:
    """The identifier system an HL7 assigning authority (one form of PID-3.4) names: its mapping, else urn:oid:
    for an ISO OID, else none."""
    return settings.identifier_systems.get(authority) or (f"urn:oid:{authority}" if _OID.fullmatch(authority)
                                                          else None)
