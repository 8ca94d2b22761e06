"""Inbound HL7 v2: parse with hl7apy, extract labs / demographics / orders, build ACKs (MSH-15/16).

Every extracted value is normalized (analyte name, canonical unit, time, provenance) so the
application can store it as it is. A message that cannot be used raises
:class:`Hl7MessageError` carrying the acknowledgement code (AR rejected, AE error) and the HL7
error code (table 0357) that the ACK's ERR segment should carry.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta, timezone, tzinfo

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message, Segment
from hl7apy.exceptions import HL7apyException
from hl7apy.parser import parse_message

from hl7_fhir.context import CodedItem, LabValue, Provenance
from hl7_fhir.er7 import MshFields, escape, normalize_segments, read_msh, unescape
from hl7_fhir.errors import Hl7FhirError
from hl7_fhir.units import CODED_ANALYTES, UnitError, analyte_for_code, normalize

# HL7 table 0357 message error condition codes used in ERR segments.
ERR_SEGMENT_SEQUENCE = "100"
ERR_REQUIRED_FIELD = "101"
ERR_DATA_TYPE = "102"
ERR_UNSUPPORTED_MESSAGE_TYPE = "200"
ERR_UNSUPPORTED_VERSION = "203"
ERR_APPLICATION_INTERNAL = "207"
ERR_TEXT = {
    ERR_SEGMENT_SEQUENCE: "Segment sequence error",
    ERR_REQUIRED_FIELD: "Required field missing",
    ERR_DATA_TYPE: "Data type error",
    ERR_UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    ERR_UNSUPPORTED_VERSION: "Unsupported version id",
    ERR_APPLICATION_INTERNAL: "Application internal error",
}

LAB_TYPES = frozenset({"ORU^R01"})
MAX_ORDER_NUMBER = 199  # EI.1, the entity identifier of a placer or filler order number
# ADT events whose PID carries the patient's demographics: admit, transfer, discharge, register, pre-admit, class
# changes, update; and the person-level add and update (A28, A31) that master patient indexes send
ADT_TYPES = frozenset({"ADT^A01", "ADT^A02", "ADT^A03", "ADT^A04", "ADT^A05", "ADT^A06", "ADT^A07", "ADT^A08",
                       "ADT^A28", "ADT^A31"})
ORDER_TYPES = frozenset({"ORM^O01", "OMI^O23"})
MERGE_TYPES = frozenset({"ADT^A18", "ADT^A34", "ADT^A40"})  # patient merges: MRG-1 joins PID-3
SUPPORTED_TYPES = LAB_TYPES | ADT_TYPES | ORDER_TYPES | MERGE_TYPES
ACK_MODES = frozenset({"", "AL", "NE", "ER", "SU"})


class Hl7MessageError(Hl7FhirError):
    """A message radfusion cannot use; ``ack_code`` is 'AR' or 'AE', ``hl7_error`` a table 0357 code."""

    def __init__(self, message: str, ack_code: str = "AE", hl7_error: str = ERR_APPLICATION_INTERNAL):
        super().__init__(message)
        self.ack_code = ack_code
        self.hl7_error = hl7_error


@dataclass(frozen=True)
class PatientIdentifier:
    """One PID-3 repetition: the id, its assigning authority (CX-4) and identifier type (CX-5)."""

    value: str
    authority: str
    type_code: str = ""


@dataclass(frozen=True)
class Header:
    """What the ACK and the duplicate check need from MSH."""

    control_id: str
    message_type: str
    version: str
    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    accept_ack: str
    application_ack: str
    field_sep: str = "|"
    encoding: str = "^~\\&"
    sent_at: str = ""  # MSH-7 as sent
    digest: str = ""  # of the segments after MSH (``content_digest``): a resend's is the same

    @property
    def sender(self) -> str:
        """MSH-3^MSH-4: with MSH-10, what tells one sender's message from another's (duplicate check)."""
        return f"{self.sending_application}^{self.sending_facility}"

    @classmethod
    def from_msh(cls, msh: MshFields) -> Header:
        """Header from a tolerant MSH read (works for messages hl7apy rejects)."""
        return cls(
            control_id=msh.field(10), message_type="^".join(filter(None, (msh.component(9, 1),
                                                                           msh.component(9, 2)))),
            version=msh.component(12, 1), sending_application=msh.field(3),
            sending_facility=msh.field(4), receiving_application=msh.field(5),
            receiving_facility=msh.field(6), accept_ack=msh.field(15).strip().upper(),
            application_ack=msh.field(16).strip().upper(), field_sep=msh.field_sep,
            encoding=msh.encoding, sent_at=msh.component(7, 1).strip(),
        )


@dataclass(frozen=True)
class Merge:
    """One patient merge: the identifiers of the record that goes (MRG-1) and of the one that stays (PID-3), with
    the birth date and sex the message gives the one that stays (PID-7, PID-8)."""

    prior: list[PatientIdentifier]
    surviving: list[PatientIdentifier]
    birth_date: date | None = None
    sex: str | None = None


@dataclass(frozen=True)
class Demographics:
    """ADT content radfusion uses: identifiers, birth date, administrative sex."""

    identifiers: list[PatientIdentifier]
    birth_date: date | None
    sex: str | None


@dataclass(frozen=True)
class Order:
    """ORM/OMI content: identifiers, accession/placer/filler numbers, procedure, reason for exam."""

    identifiers: list[PatientIdentifier]
    accession: str
    placer_number: str
    filler_number: str
    procedure: str
    reason_for_exam: str
    control: str


@dataclass(frozen=True)
class LabReport:
    """ORU content: numeric labs normalized, coded observations, OBX codes radfusion does not use, OBX it could
    not use (``unusable``: "OBX n (code): why"), results the lab took back (``deleted``: deleted or posted to the
    wrong patient, OBX-11 D and W, or no longer obtainable, X, in an order) and results whose value or unit could
    not be read (``unreadable``: the newest result of an analyte then makes it missing, not an older one current).
    """

    identifiers: list[PatientIdentifier]
    values: list[LabValue]
    coded: list[CodedItem] = field(default_factory=list)
    skipped_codes: list[str] = field(default_factory=list)
    unusable: list[str] = field(default_factory=list)
    deleted: list[ResultRef] = field(default_factory=list)
    unreadable: list[ResultRef] = field(default_factory=list)
    birth_date: date | None = None  # PID-7 and PID-8: a lab-only feed gives age and sex too
    sex: str | None = None


@dataclass(frozen=True)
class ResultRef:
    """A result named by its analyte, its order (OBR-3, else OBR-2; '' when none; at most ``MAX_ORDER_NUMBER``
    characters) and its time; ``timed``: the OBX gave that time itself (OBX-14), rather than its order or the
    message (then the time may differ from the one its original was stored with)."""

    analyte: str
    order: str
    observed_at: datetime | None
    timed: bool = False


@dataclass(frozen=True)
class ParsedMessage:
    """A parsed message: its header, the hl7apy tree, and its segments in order."""

    header: Header
    message: Message
    segments: list[Segment]

    def all(self, name: str) -> list[Segment]:
        """Every segment named ``name`` in message order."""
        return [segment for segment in self.segments if segment.name == name]

    def first(self, name: str) -> Segment | None:
        """The first segment named ``name``, or None."""
        found = self.all(name)
        return found[0] if found else None


def read_header(text: str) -> Header:
    """Header of raw message text (tolerant; raises Hl7MessageError AR if no MSH can be read)."""
    try:
        return Header.from_msh(read_msh(text))
    except Hl7FhirError as exc:
        raise Hl7MessageError(str(exc), "AR", ERR_SEGMENT_SEQUENCE) from exc


def content_digest(text: str) -> str:
    """SHA-256 (hex) of a message's segments after MSH, each without trailing empty fields and components: a
    resend has the same, whatever MSH-7 its sender stamped on it and however it ends its segments; another message
    sent under a reused control id does not."""
    segments = normalize_segments(text).split("\r")[1:]
    return hashlib.sha256("\r".join(re.sub(r"[|^~&\s]+$", "", s) for s in segments).encode()).hexdigest()


def parse(text: str) -> ParsedMessage:
    """Parse ``text`` (any line endings) with hl7apy; the message type must be one radfusion handles."""
    header = read_header(text)
    if not header.control_id:
        raise Hl7MessageError("MSH-10 message control id is empty", "AR", ERR_REQUIRED_FIELD)
    if header.message_type not in SUPPORTED_TYPES:
        raise Hl7MessageError(f"message type {header.message_type!r} is not handled; "
                              f"radfusion takes {sorted(SUPPORTED_TYPES)}", "AR", ERR_UNSUPPORTED_MESSAGE_TYPE)
    for label, mode in (("MSH-15", header.accept_ack), ("MSH-16", header.application_ack)):
        if mode not in ACK_MODES:
            raise Hl7MessageError(f"{label} acknowledgment type {mode!r} is not one of AL/NE/ER/SU",
                                  "AR", ERR_DATA_TYPE)
    try:
        message = parse_message(normalize_segments(text), find_groups=False,
                                validation_level=VALIDATION_LEVEL.TOLERANT)
    except HL7apyException as exc:
        code = ERR_UNSUPPORTED_VERSION if "version" in str(exc).lower() else ERR_SEGMENT_SEQUENCE
        raise Hl7MessageError(f"hl7apy cannot parse message {header.control_id}: {exc}", "AR", code) from exc
    return ParsedMessage(header, message, list(message.children))


def _components(parsed: ParsedMessage, er7: str) -> list[str]:
    """Components of one field repetition, unescaped."""
    h = parsed.header
    return [unescape(part, h.field_sep, h.encoding) for part in er7.split(h.encoding[0])]


def _field(parsed: ParsedMessage, segment: Segment, number: int) -> list[list[str]]:
    """Repetitions of field ``number`` of ``segment``, each a list of unescaped components."""
    children = [child for child in segment.children if child.name == f"{segment.name}_{number}"]
    return [_components(parsed, child.to_er7()) for child in children if child.to_er7()]


def _first(parsed: ParsedMessage, segment: Segment | None, number: int, component: int = 1) -> str:
    """Component ``component`` of the first repetition of a field ('' when absent)."""
    if segment is None:
        return ""
    reps = _field(parsed, segment, number)
    if not reps or len(reps[0]) < component:
        return ""
    return reps[0][component - 1].strip()


def parse_ts(value: str, default_offset: tzinfo | None = None) -> datetime | None:
    """HL7 DTM (YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ]) as an aware datetime: in ``default_offset`` when it has
    no offset, or, without one, in this machine's local time (HL7 senders write local time, and the interface
    engine runs in the hospital's zone; the DICOM times of a study are read the same way).

    None for an empty value or the HL7 null '""'. The error names the form, never the value (a birth date
    must not reach a log line).
    """
    value = value.strip()
    if not value or value == '""':
        return None
    offset = default_offset
    for sign in "+-":
        if sign in value[8:]:
            value, zone = value.rsplit(sign, 1)
            if len(zone) not in (2, 4) or not zone.isdigit():  # int()'s message would repeat it
                raise ValueError("HL7 timestamp has an offset that is not +/-ZZZZ")
            minutes = int(zone[:2]) * 60 + int(zone[2:4] or 0)
            offset = timezone(timedelta(minutes=minutes if sign == "+" else -minutes))
    digits = value.split(".")[0]
    formats = {4: "%Y", 6: "%Y%m", 8: "%Y%m%d", 10: "%Y%m%d%H", 12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}
    if len(digits) not in formats or not digits.isdigit():
        raise ValueError(f"HL7 timestamp of {len(value)} characters is not YYYY[MM[DD[HH[MM[SS]]]]][+/-ZZZZ]")
    try:
        naive = datetime.strptime(digits, formats[len(digits)])
    except ValueError:  # strptime's message repeats the value
        raise ValueError(f"HL7 timestamp of {len(value)} characters is not a valid date and time") from None
    return naive.astimezone() if offset is None else naive.replace(tzinfo=offset)


def patient_identifiers(parsed: ParsedMessage) -> list[PatientIdentifier]:
    """PID-3 repetitions (id, assigning authority, type); a message without any is rejected (AE).

    An authority sent with a namespace and a universal ID (HOSP&1.2.3.4&ISO) gives the identifier under
    each, so a study's IssuerOfPatientID matches either; one sent with neither gives an empty authority.
    """
    identifiers = _identifiers(parsed, parsed.first("PID"), 3)
    if not identifiers:
        raise Hl7MessageError(f"message {parsed.header.control_id} has no PID-3 patient identifier",
                              "AE", ERR_REQUIRED_FIELD)
    return identifiers


# CX-5 identifier types (HL7 table 0203). A PID-3 repetition of a type that numbers something other than the
# patient's record (an account, a visit, an insurance, health-card, national, licence, card, employee or provider
# number) is never matched against a study's Patient ID. One without an assigning authority would match any issuer's
# patient of that number, so it is kept only when its type names a record (or it has no type at all).
NOT_RECORD_TYPES = frozenset({"AN", "ANON", "VN", "SS", "SR", "DL", "DR", "PPN", "BA", "BC", "BR", "AM", "DI", "DS",
                              "MS", "VS", "EI", "EN", "DN", "MD", "NPI", "PRN", "UPIN", "TAX", "NI", "CC", "MC",
                              "MA", "HC", "JHN", "MB", "SN", "PEN", "NH"})
RECORD_TYPES = frozenset({"", "MR", "MRN", "MRT", "PI", "PT", "PN", "PE"})


def _kept(type_code: str, has_authority: bool) -> bool:
    """Whether a CX repetition of ``type_code`` is matched against a study's Patient ID (``NOT_RECORD_TYPES``)."""
    kind = type_code.strip().upper()
    if kind in NOT_RECORD_TYPES or kind.startswith("NN"):  # NNxxx: a national person number
        return False
    return has_authority or kind in RECORD_TYPES


def _identifiers(parsed: ParsedMessage, segment: Segment | None, number: int) -> list[PatientIdentifier]:
    """The CX repetitions of a field (PID-3, MRG-1) as identifiers (``patient_identifiers``), those ``_kept``."""
    identifiers = []
    for rep in _field(parsed, segment, number) if segment is not None else []:
        padded = rep + [""] * 5
        namespace, universal = ([*padded[3].split(parsed.header.encoding[3]), ""][:2])
        if not padded[0].strip() or not _kept(padded[4], bool(namespace.strip() or universal.strip())):
            continue
        for authority in dict.fromkeys(a.strip() for a in (namespace, universal) if a.strip()) or [""]:
            identifiers.append(PatientIdentifier(padded[0].strip(), authority, padded[4].strip()))
    return identifiers


def parse_merges(parsed: ParsedMessage) -> list[Merge]:
    """ADT^A40/A34/A18: each MRG with the PID before it; AE when a pair lacks MRG-1 or PID-3."""
    merges, pid = [], None
    for segment in parsed.segments:
        if segment.name == "PID":
            pid = segment
        elif segment.name == "MRG":
            prior, surviving = _identifiers(parsed, segment, 1), _identifiers(parsed, pid, 3)
            if not prior or not surviving:
                raise Hl7MessageError(f"merge message {parsed.header.control_id} needs MRG-1 and PID-3 in each "
                                      f"PID/MRG pair", "AE", ERR_REQUIRED_FIELD)
            try:
                born, sex = _birth_date_and_sex(parsed, pid)
            except Hl7MessageError:  # the merge is what matters: a birth date that cannot be read is left out
                born, sex = None, _sex(parsed, pid)
            merges.append(Merge(prior, surviving, born, sex))
    if not merges:
        raise Hl7MessageError(f"merge message {parsed.header.control_id} has no MRG segment", "AE",
                              ERR_SEGMENT_SEQUENCE)
    return merges


def _data_error(parsed: ParsedMessage, where: str, exc: Exception) -> Hl7MessageError:
    return Hl7MessageError(f"message {parsed.header.control_id} {where}: {exc}", "AE", ERR_DATA_TYPE)


def _birth_date_and_sex(parsed: ParsedMessage, pid: Segment | None) -> tuple[date | None, str | None]:
    """PID-7 birth date and PID-8 sex (None where empty); AE for a birth date that cannot be read."""
    try:
        born = parse_ts(_first(parsed, pid, 7))
    except ValueError as exc:
        raise _data_error(parsed, "PID-7 birth date", exc) from exc
    return born.date() if born else None, _sex(parsed, pid)


def _sex(parsed: ParsedMessage, pid: Segment | None) -> str | None:
    """PID-8 administrative sex; None where empty."""
    return _first(parsed, pid, 8).upper() or None


def parse_demographics(parsed: ParsedMessage) -> Demographics:
    """ADT (``ADT_TYPES``): PID-3 identifiers, PID-7 birth date, PID-8 sex."""
    return Demographics(patient_identifiers(parsed), *_birth_date_and_sex(parsed, parsed.first("PID")))


def parse_orders(parsed: ParsedMessage) -> list[Order]:
    """ORM^O01 / OMI^O23, each order of the message (an ORC with its OBR and IPC; an OBR without an ORC of its
    own is an order too): accession (OBR-18, else IPC-1), placer/filler, procedure, reason for exam (OBR-31;
    ORC-16 is why the order control was sent, not why the exam was ordered)."""
    groups: list[dict[str, Segment]] = []
    for segment in parsed.segments:
        if segment.name == "ORC" or (segment.name in ("OBR", "IPC") and (not groups or segment.name in groups[-1])):
            groups.append({})
        if segment.name in ("ORC", "OBR", "IPC") and segment.name not in groups[-1]:
            groups[-1][segment.name] = segment
    if not groups:
        raise Hl7MessageError(f"order message {parsed.header.control_id} has neither ORC nor OBR",
                              "AE", ERR_SEGMENT_SEQUENCE)
    identifiers = patient_identifiers(parsed)
    return [_order(parsed, identifiers, group.get("ORC"), group.get("OBR"), group.get("IPC")) for group in groups]


def _order(parsed: ParsedMessage, identifiers: list[PatientIdentifier], orc: Segment | None, obr: Segment | None,
           ipc: Segment | None) -> Order:
    """One order of ``parse_orders`` from its segments (any may be missing)."""
    reasons = [rep[1] if len(rep) > 1 and rep[1] else rep[0] for rep in
               (_field(parsed, obr, 31) if obr is not None else [])]
    return Order(
        identifiers=identifiers,
        accession=_first(parsed, obr, 18) or _first(parsed, ipc, 1),
        placer_number=_first(parsed, obr, 2) or _first(parsed, orc, 2),
        filler_number=_first(parsed, obr, 3) or _first(parsed, orc, 3),
        procedure=_first(parsed, obr, 4, 2) or _first(parsed, obr, 4),
        reason_for_exam="; ".join(filter(None, reasons)),
        control=_first(parsed, orc, 1),
    )


def _obx_loinc(parsed: ParsedMessage, obx: Segment) -> str:
    """The code of OBX-3 to look up: its identifier, or its alternate identifier (OBX-3.4) when that one is
    LOINC (OBX-3.6 "LN") and the identifier is not a known code (a local code sent first, LOINC second)."""
    code = _first(parsed, obx, 3)
    if analyte_for_code(code) is None and _first(parsed, obx, 3, 6).upper() == "LN":
        return _first(parsed, obx, 3, 4) or code
    return code


NOT_RESULTS = {"X": "cannot be obtained", "I": "pending", "N": "not asked for"}  # OBX-11: no value
# OBX-11 statuses that take back the result sent before for this observation: deleted, or posted to the wrong
# patient (that patient's value must not stay in their record).
RETRACTED = {"D": "deleted", "W": "posted to the wrong patient"}


def _number(parsed: ParsedMessage, obx: Segment) -> float:
    """OBX-5 as a number: NM, an SN (comparator^number, e.g. '>^1000' or '^1.7'), or '<0.5' style text; a
    bounded value ('<0.5') is taken at its bound. ValueError when it is none of these (an SN ratio or range such as
    '^1^:^2' too); its message never quotes the value, which may be free text naming the patient."""
    kind = _first(parsed, obx, 2).upper()
    if kind == "SN" and _first(parsed, obx, 5, 3):
        raise ValueError("OBX-5 is a structured ratio or range, not one number")
    raw = _first(parsed, obx, 5, 2) if kind == "SN" else _first(parsed, obx, 5).lstrip("<>=").strip()
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"OBX-5 (value type {kind or 'none'}) is not a number") from None


def parse_labs(parsed: ParsedMessage, received_at: datetime | None = None) -> LabReport:
    """ORU^R01: one LabValue per numeric OBX of a known analyte, converted to its canonical unit.

    OBX-3 is read by its LOINC code, primary or alternate (``_obx_loinc``). The observation time is
    OBX-14, else OBR-7 of the OBX's own order, else MSH-7. A time without an offset is local time at that
    moment (``parse_ts``) when MSH-7 has none or names this machine's offset, else in MSH-7's offset (a sender
    in another zone). OBX-8 holds the abnormal flags. Coded analytes (smoking status) become CodedItems. An OBX
    whose status (OBX-11) says it holds no result, or whose value or unit cannot be read, is left
    out and listed in ``unusable``, never stored as a wrong value; the rest of the message is kept.
    A result taken back (OBX-11 D, deleted; W, posted to the wrong patient; X, cannot be obtained, in an order)
    is listed in ``deleted``; every value carries its order (``Provenance.order``). A message
    whose PID segments name more than one patient is refused (AE).
    """
    header = parsed.header
    identifiers = patient_identifiers(parsed)
    named = {(i.value, i.authority) for i in identifiers}
    others = [pid for pid in parsed.segments if pid.name == "PID"  # the same patient shares an identifier
              and not named & {(i.value, i.authority) for i in _identifiers(parsed, pid, 3)}]
    if others:  # every OBX would be stored under the first PID's patient
        raise Hl7MessageError(f"message {header.control_id} holds {len(others) + 1} patients (PID segments); "
                              f"radfusion takes one patient per ORU^R01", "AE", ERR_SEGMENT_SEQUENCE)
    try:
        sent = parse_ts(header.sent_at)
    except ValueError as exc:
        raise _data_error(parsed, "MSH-7", exc) from exc
    explicit = any(sign in header.sent_at.strip()[8:] for sign in "+-")
    ours = sent is not None and sent.utcoffset() == sent.astimezone().utcoffset()  # the sender keeps our time
    zone = sent.tzinfo if sent is not None and explicit and not ours else None  # None: local time, its own DST
    try:
        born, sex = _birth_date_and_sex(parsed, parsed.first("PID"))
        problem = None
    except Hl7MessageError as exc:  # the labs are kept; only the demographics are left out
        born, sex, problem = None, None, f"PID: {exc}"
    report = LabReport(identifiers, [], birth_date=born, sex=sex)
    if problem:
        report.unusable.append(problem)
    order_time = order = ""
    index = 0
    for segment in parsed.segments:
        if segment.name == "OBR":
            order_time = _first(parsed, segment, 7)
            order = (_first(parsed, segment, 3) or _first(parsed, segment, 2))[:MAX_ORDER_NUMBER]
        elif segment.name == "OBX":
            index += 1
            _read_obx(parsed, segment, index, (order, order_time), zone, sent, received_at, report)
    return report


def _read_obx(parsed: ParsedMessage, obx: Segment, index: int, order: tuple[str, str], zone: tzinfo | None,
              sent: datetime | None, received_at: datetime | None, report: LabReport) -> None:
    """Add one OBX of ``order`` (its number and time) to ``report`` (``parse_labs``)."""
    header = parsed.header
    order_number, order_time = order
    code = _obx_loinc(parsed, obx)
    name = analyte_for_code(code)
    if name is None:
        report.skipped_codes.append(code)
        return
    where = f"OBX {index} ({code})"
    timed = bool(_first(parsed, obx, 14))
    try:
        observed = parse_ts(_first(parsed, obx, 14) or order_time, zone) or sent
    except ValueError as exc:  # this OBX's time (or its order's) only: the rest of the message is kept
        report.unusable.append(f"{where}: time: {exc}")
        if name not in CODED_ANALYTES and sent is not None:  # a result sent then: an older one is not current
            report.unreadable.append(ResultRef(name, order_number, sent))
        return
    status = _first(parsed, obx, 11).upper()
    if status in RETRACTED:
        report.deleted.append(ResultRef(name, order_number, observed, timed))
        return
    if status == "U" and not _first(parsed, obx, 5):  # made final without sending the value again: it stands
        return
    if status in NOT_RESULTS:
        if status == "X" and order_number:  # a preliminary value of this order is withdrawn with it
            report.deleted.append(ResultRef(name, order_number, observed, timed))
        report.unusable.append(f"{where}: result status {status} ({NOT_RESULTS[status]})")
        return
    provenance = Provenance("hl7", header.sending_facility or header.sending_application,
                            f"{header.control_id}/OBX{index}", received_at, order_number)
    if name in CODED_ANALYTES:
        raw = _first(parsed, obx, 5)
        display = _first(parsed, obx, 5, 2)
        report.coded.append(CodedItem(raw, _first(parsed, obx, 5, 3), display or raw, name, observed, provenance))
        return
    try:
        value, unit = normalize(name, _number(parsed, obx), _first(parsed, obx, 6))
    except (ValueError, UnitError) as exc:
        report.unusable.append(f"{where}: {exc}")
        report.unreadable.append(ResultRef(name, order_number, observed, timed))
        return
    flags = "~".join(rep[0] for rep in _field(parsed, obx, 8))
    report.values.append(LabValue(name, code, value, unit, observed, provenance, flags))


def ack_wanted(header: Header, code: str) -> str | None:
    """Which acknowledgment MSH-15/16 asks for: 'application', 'commit' or None (none wanted).

    Original mode (both empty): always an application ACK. Enhanced mode: the application
    ACK when MSH-16 asks for it (AL, ER on error, SU on success), else the commit ACK when
    MSH-15 asks for it; over one synchronous connection a single reply is sent.
    """
    if not header.accept_ack and not header.application_ack:
        return "application"
    success = code == "AA"

    def asks(mode: str) -> bool:
        return mode == "AL" or (mode == "ER" and not success) or (mode == "SU" and success)

    if asks(header.application_ack):
        return "application"
    if asks(header.accept_ack):
        return "commit"
    return None


def build_ack(header: Header, code: str, text: str, *, hl7_error: str = ERR_APPLICATION_INTERNAL,
              control_id: str | None = None, now: Callable[[], datetime] | None = None,
              warnings: Sequence[str] = ()) -> str | None:
    """The ACK for a message with ``header`` (``code`` AA/AE/AR), or None when MSH-15/16 wants none.

    MSA-2 echoes MSH-10 (MSA-3 is cut at its 80 characters); an AE/AR carries an ERR segment with ``hl7_error``
    (table 0357) and the whole ``text``. Each of ``warnings`` (a part of the message that was left out, e.g. an
    OBX whose value cannot be read) is an ERR of severity W, data type error, so the sender sees every one in
    full. A commit ACK uses CA/CE/CR instead.
    """
    if code not in ("AA", "AE", "AR"):
        raise Hl7FhirError(f"ACK code must be AA, AE or AR, got {code!r}")
    kind = ack_wanted(header, code)
    if kind is None:
        return None
    msa_code = code if kind == "application" else "C" + code[1]
    sep, enc = header.field_sep, header.encoding
    stamp = (now or (lambda: datetime.now(timezone.utc)))().strftime("%Y%m%d%H%M%S")
    trigger = header.message_type.split("^")[1] if "^" in header.message_type else ""
    ack_id = control_id or uuid.uuid4().hex[:20]
    version = header.version or "2.5.1"

    def esc(value: str) -> str:
        return escape(value, sep, enc)

    msh = sep.join(["MSH", enc, header.receiving_application, header.receiving_facility,
                    header.sending_application, header.sending_facility, stamp, "",
                    f"ACK^{trigger}^ACK" if trigger else "ACK", ack_id, "P", version])
    segments = [msh, sep.join(["MSA", msa_code, header.control_id, esc(text[:80])])]
    problems = ([(hl7_error, "E", text)] if code != "AA" else []) + [(ERR_DATA_TYPE, "W", w) for w in warnings]
    for error, severity, message in problems:
        err_code = enc[0].join([error, ERR_TEXT.get(error, ""), "HL70357"])
        segments.append(sep.join(["ERR", "", "", err_code, severity, "", "", "", esc(message)]))
    return "\r".join(segments) + "\r"



def error_ack(text: str, code: str, reason: str, hl7_error: str = ERR_APPLICATION_INTERNAL) -> str:
    """An AE/AR ACK for raw ``text`` that may not even parse: MSH is read tolerantly when it can be.

    A frame with no readable MSH gets an ACK with an empty MSA-2 and the reason, so the
    sender still learns why; MSH-15/16 are ignored here because they cannot be trusted.
    """
    try:
        header = replace(read_header(text), accept_ack="", application_ack="")
    except Hl7MessageError:
        header = Header("", "", "", "", "", "RADFUSION", "", "", "")
    ack = build_ack(header, code, reason, hl7_error=hl7_error)
    if ack is None:
        raise Hl7FhirError("an original-mode ACK is always built; got none")
    return ack
