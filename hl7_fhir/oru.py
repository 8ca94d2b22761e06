"""Outbound HL7 v2.5.1 ORU^R01: AI results (one OBX per finding) and critical-result alerts.

Results are preliminary (OBR-25/OBX-11 'P'): an AI result is never final until a
radiologist confirms it, and every message carries an NTE that says so.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from hl7_fhir.er7 import escape
from hl7_fhir.findings import FindingError, OutboundFinding, OutboundStudy
from hl7_fhir.units import LOINC_SYSTEM

AI_NOTE = "AI-generated preliminary result; not for diagnosis until confirmed by a radiologist."
CHARACTER_SET = "UNICODE UTF-8"  # MSH-18: names may hold any character; the MLLP sender frames in UTF-8
CRITICAL_NOTE = ("CRITICAL RESULT: AI-detected {types}. AI-generated, confirm with the images "
                 "and a radiologist before acting.")


@dataclass(frozen=True)
class Endpoints:
    """MSH-3..6: radfusion as sender, the RIS/EMR interface as receiver."""

    sending_application: str = "RADFUSION"
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""


def abnormal_flag(finding: OutboundFinding) -> str:
    """OBX-8: 'AA' critical, 'A' abnormal, 'N' normal (HL7 table 0078)."""
    if finding.critical:
        return "AA"
    return "A" if finding.abnormal else "N"


def patient_name_xpn(dicom_name: str) -> str:
    """PID-5 (XPN, name type L) of a DICOM Patient Name: family^given^middle^prefix^suffix becomes
    family^given^middle^suffix^prefix^^L; the first of its "="-separated groups (alphabetic, ideographic,
    phonetic) that holds a name is sent."""
    group = next((g for g in dicom_name.split("=") if g.strip("^ ")), "")
    parts = (group.split("^") + [""] * 5)[:5]
    family, given, middle, prefix, suffix = (escape(p.strip()) for p in parts)
    if not any((family, given, middle, prefix, suffix)):
        return ""
    return f"{family}^{given}^{middle}^{suffix}^{prefix}^^L"


def filler_order_number(study: OutboundStudy, *, critical: bool = False) -> str:
    """OBR-3: one order per study, algorithm and what it read (``order_scope``), so a re-issue corrects its own
    order while another series' or another detector's result of the study stands beside it; a critical alert is an
    order of its own. 22 characters, HL7 2.5.1's length of the field."""
    key = "\x00".join((study.study_instance_uid, study.algorithm, study.order_scope, "critical" * critical))
    return "RF" + hashlib.sha256(key.encode()).hexdigest()[:20].upper()


def _ts(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime("%Y%m%d%H%M%S+0000")


HL7_CODING_SYSTEMS = {"http://snomed.info/sct": "SCT", LOINC_SYSTEM: "LN"}  # FHIR URI -> HL7 table 0396


def _segment(*fields: str) -> str:
    return "|".join(fields)


def _build(study: OutboundStudy, findings: Sequence[OutboundFinding], endpoints: Endpoints,
           notes: Sequence[str], priority: str, status: str, control_id: str | None,
           now: Callable[[], datetime] | None) -> str:
    stamp = _ts((now or (lambda: datetime.now(timezone.utc)))())
    performed = _ts(study.performed_at) if study.performed_at else ""
    msh = _segment("MSH", "^~\\&", escape(endpoints.sending_application), escape(endpoints.sending_facility),
                   escape(endpoints.receiving_application), escape(endpoints.receiving_facility), stamp, "",
                   "ORU^R01^ORU_R01", control_id or uuid.uuid4().hex[:20], "P", "2.5.1", "", "", "", "", "",
                   CHARACTER_SET)  # MSH-13..17 empty
    pid = _segment("PID", "1", "", f"{escape(study.patient_id)}^^^{escape(study.patient_authority)}^MR", "",
                   patient_name_xpn(study.patient_name))
    obr = [""] * 26
    obr[0:5] = ["OBR", "1", "", filler_order_number(study, critical=bool(priority)),
                f"{escape(study.study_code)}^{escape(study.study_display)}^LN"]
    obr[7] = performed
    obr[18] = escape(study.accession)
    obr[20] = escape(study.study_instance_uid)  # filler field 1
    obr[22] = stamp
    obr[24] = "RAD"
    obr[25] = status
    if priority:
        obr += ["", f"^^^^^{priority}"]
    segments = [msh, pid, _segment(*obr)]
    segments += [_segment("NTE", str(i), "L", escape(note)) for i, note in enumerate(notes, start=1)]
    rows = list(findings) or [OutboundFinding(f"No finding detected by {study.algorithm}", abnormal=False)]
    for index, finding in enumerate(rows, start=1):
        system = HL7_CODING_SYSTEMS.get(finding.code_system, finding.code_system)
        code = (f"{escape(finding.code)}^{escape(finding.finding_type)}^{escape(system)}"
                if finding.code else f"^{escape(finding.finding_type)}")
        segments.append(_segment("OBX", str(index), "ST", code, str(index), escape(finding.summary()),
                                 "", "", abnormal_flag(finding), "", "", status, "", "", performed,
                                 "", "", "", escape(study.algorithm)))
    return "\r".join(segments) + "\r"


def build_oru_result(study: OutboundStudy, findings: Sequence[OutboundFinding], endpoints: Endpoints,
                     *, control_id: str | None = None, now: Callable[[], datetime] | None = None) -> str:
    """ORU^R01 for one study: OBR for the imaging study (OBR-18 accession, OBR-20 Study Instance UID), one OBX per
    finding.

    No finding gives one OBX saying so, flagged 'N'. OBX-18 names the algorithm. The study's notes come as NTE
    segments before the AI note.
    """
    status = "C" if study.replaces_result_uid else "P"  # a re-issue corrects the result of the same filler order
    return _build(study, findings, endpoints, [*study.notes, AI_NOTE], "", status, control_id, now)


def build_critical_oru(study: OutboundStudy, findings: Sequence[OutboundFinding], endpoints: Endpoints,
                       *, control_id: str | None = None, now: Callable[[], datetime] | None = None) -> str:
    """Critical-result ORU^R01 (priority stat, 'AA' OBX flags, NTE asking to confirm).

    Raises FindingError unless at least one finding is critical: a critical alert without a
    critical finding would page staff for nothing.
    """
    critical = [f for f in findings if f.critical]
    if not critical:
        raise FindingError(f"critical ORU for study {study.study_instance_uid} has no critical finding")
    types = ", ".join(sorted({f.finding_type for f in critical}))
    # "P" even for a re-issue: a channel already paged for the study is not paged again, so this is its first
    return _build(study, critical, endpoints, [CRITICAL_NOTE.format(types=types), AI_NOTE], "S", "P",
                  control_id, now)
