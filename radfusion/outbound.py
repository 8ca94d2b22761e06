"""Outbound clinical messages for a finished job: FHIR DiagnosticReport / Communication, HL7 ORU.

Payloads are built once, when the job's outputs are committed, and stored on the delivery
row, so every retry sends the same message (same control id, same conditional-create keys).
"""

from __future__ import annotations

import secrets
from collections.abc import Collection, Sequence
from dataclasses import replace
from datetime import datetime

from ai_engine.results import DetectorResult, Task
from hl7_fhir.findings import OutboundFinding, OutboundStudy
from hl7_fhir.oru import Endpoints, build_critical_oru, build_oru_result
from hl7_fhir.outbound import build_alert_communication, build_diagnostic_report, transaction_bundle
from radfusion.models import Delivery, Job, Study
from radfusion.settings import Settings
from reports.coding import FINDING_TYPE_CODES

# LOINC codes of the imaging procedure a task reads.
STUDY_CODES = {
    Task.ICH: ("24725-4", "CT Head"),
    Task.LUNG_NODULE: ("24627-2", "CT Chest"),
    Task.MAMMOGRAPHY: ("24606-6", "MG Breast Screening"),
}


def outbound_study(study: Study, task: Task, algorithm: str, settings: Settings, *, performed_at: datetime | None,
                   result_uid: str, patient_name: str, notes: Sequence[str] = (),
                   replaces_result_uid: str = "", order_scope: str = "") -> OutboundStudy:
    """The study as the EMR knows it, for one result (``result_uid``: its SR; ``patient_name``: the images' DICOM
    Patient Name, not stored by radfusion; ``notes``: the result's notes on the case; ``replaces_result_uid``: the
    SR it replaces; ``order_scope``: the series read, "" for the whole study); raises FindingError when it cannot
    be addressed (e.g. no PatientID)."""
    code, display = STUDY_CODES[task]
    return OutboundStudy(
        study_instance_uid=study.study_uid, accession=study.accession_number, patient_id=study.patient_id,
        patient_authority=study.issuer_of_patient_id,
        patient_system=settings.clinical.identifier_system(study.issuer_of_patient_id) or "",
        study_code=code, study_display=display, algorithm=algorithm, performed_at=performed_at,
        result_uid=result_uid, patient_name=patient_name, notes=tuple(notes), replaces_result_uid=replaces_result_uid,
        order_scope=order_scope,
    )


def outbound_findings(result: DetectorResult, urgent: bool) -> list[OutboundFinding]:
    """One outbound finding per detector finding; hemorrhages are critical when the alert fired."""
    findings = []
    for finding in result.findings:
        code = FINDING_TYPE_CODES[finding.finding_type]
        findings.append(OutboundFinding(
            finding_type=code.meaning, code=code.value, code_system="http://snomed.info/sct",
            location=finding.location, volume_ml=finding.volume_ml, diameter_mm=finding.diameter_mm,
            score=min(1.0, max(0.0, float(finding.score))), critical=urgent and result.task == Task.ICH,
        ))
    return findings


def untold_targets(job: Job, settings: Settings, study: OutboundStudy | None, *, reports: bool,
                   alerts: bool) -> list[str]:
    """Why some of the job's report destinations (``reports``: results go out) and alert channels (``alerts``: an
    alert goes out) are left out by the deliveries below: the configuration no longer names them (the rules
    changed after the job was queued), or they are FHIR servers that cannot be told which patient
    (``fhir_addressable``)."""
    fhir_reports = {d.name for d in settings.fhir_destinations}
    all_reports = fhir_reports | {d.name for d in settings.hl7_destinations}
    channels = {c.name: c.kind for c in settings.alerts.channels}
    targets = [(f"report destination {name!r}", name in all_reports, name in fhir_reports)
               for name in (job.report_destinations if reports else [])]
    targets += [(f"alert channel {name!r}", name in channels, channels.get(name) == "fhir")
                for name in (job.alert_channels if alerts else [])]
    reasons = [f"{target} is no longer configured" for target, configured, _ in targets if not configured]
    if study is not None and not fhir_addressable(study):
        reasons += [f"{target} (FHIR) cannot be told which patient: IssuerOfPatientID {study.patient_authority!r} "
                    f"has no FHIR identifier system (clinical.identifier_systems)" for target, _, fhir in targets
                    if fhir]
    return reasons


def fhir_addressable(study: OutboundStudy) -> bool:
    """Whether a FHIR server can be told whose study this is (its issuer maps to an identifier system)."""
    return bool(study.patient_system)


def report_deliveries(job: Job, study: OutboundStudy, findings: Sequence[OutboundFinding], settings: Settings,
                      now: datetime, hl7_told: Collection[str] = ()) -> list[Delivery]:
    """A FHIR DiagnosticReport or an HL7 ORU^R01 for each of the job's report destinations still configured.

    A re-issue's ORU is a correction only for the HL7 destinations in ``hl7_told`` (sent, or still being sent, the
    result it replaces); one that never got that result (its delivery failed, or it was added since) gets a
    preliminary result, not a correction of an order it does not know, which a RIS may refuse."""
    deliveries = []
    hl7 = {d.name for d in settings.hl7_destinations}
    for index, name in enumerate(job.report_destinations):
        if any(d.name == name for d in settings.fhir_destinations):
            if not fhir_addressable(study):  # untold_targets says why
                continue
            report, observations = build_diagnostic_report(study, findings, issued=now)
            payload = transaction_bundle([report, *observations]).model_dump(mode="json", exclude_none=True)
            deliveries.append(Delivery(kind="fhir_report", target=name, job_id=job.id, payload=payload))
        elif name in hl7:
            oru_study = study if name in hl7_told else replace(study, replaces_result_uid="")
            message = build_oru_result(oru_study, findings, _endpoints(settings, name),
                                       control_id=_control_id(job, "R", index))
            deliveries.append(Delivery(kind="hl7_report", target=name, job_id=job.id, payload={"message": message}))
    return deliveries


def alert_deliveries(job: Job, study: OutboundStudy | None, findings: Sequence[OutboundFinding],
                     settings: Settings, now: datetime, already_told: Collection[str] = ()) -> list[Delivery]:
    """One delivery per alert channel of the job still configured: webhook JSON, FHIR Communication or critical
    ORU (the caller sets their alert).

    Channels in ``already_told`` (an earlier alert of the study reaches them) get none. Without an addressable
    study (``None``) only the webhooks can be told.
    """
    deliveries = []
    for index, name in enumerate(job.alert_channels):
        if name in already_told:
            continue
        try:
            channel = settings.channel(name)
        except KeyError:  # no longer configured: untold_targets names it
            continue
        if channel.kind == "webhook":
            deliveries.append(Delivery(kind="webhook", target=name, job_id=job.id))
        elif study is None:
            continue
        elif channel.kind == "fhir":
            if not fhir_addressable(study):  # untold_targets says why
                continue
            communication = build_alert_communication(study, findings, sent=now)
            payload = transaction_bundle([communication]).model_dump(mode="json", exclude_none=True)
            deliveries.append(Delivery(kind="fhir_alert", target=name, job_id=job.id, payload=payload))
        else:
            message = build_critical_oru(study, findings, _endpoints(settings, channel.destination),
                                         control_id=_control_id(job, "A", index))
            deliveries.append(Delivery(kind="hl7_alert", target=name, job_id=job.id, payload={"message": message}))
    return deliveries


def _control_id(job: Job, kind: str, index: int) -> str:
    """MSH-10 of a job's ORU: its job, kind (R result, A alert) and target, and a random part, so a database started
    afresh (job ids from 1 again) does not repeat one a receiver still remembers and drops as a resend. At most 20
    characters (MSH-10); stored with the message, so a retry sends the same."""
    return f"RF{job.id}{kind}{index}-{secrets.token_hex(3)}"


def _endpoints(settings: Settings, destination: str) -> Endpoints:
    dest = settings.hl7_destination(destination)
    return Endpoints(settings.hl7.sending_application, settings.hl7.sending_facility,
                     dest.receiving_application, dest.receiving_facility)
