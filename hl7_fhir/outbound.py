"""Outbound FHIR R4: a preliminary AI DiagnosticReport with one Observation per finding, and stat alerts.

Everything is posted as one transaction Bundle with conditional creates keyed by stable
identifiers (study UID, algorithm, finding index), so a delivery retried after a lost
answer finds the first copy instead of storing the result twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from fhir.resources.R4B import FHIRAbstractModel, get_fhir_model_class

from hl7_fhir.findings import FindingError, OutboundFinding, OutboundStudy
from hl7_fhir.oru import AI_NOTE, CRITICAL_NOTE

REPORT_ID_SYSTEM = "urn:radfusion:ai-report"
REPLACES_EXTENSION = "http://hl7.org/fhir/StructureDefinition/diagnosticReport-replaces"  # FHIR R4 core extension
OBSERVATION_ID_SYSTEM = "urn:radfusion:ai-finding"
ALERT_ID_SYSTEM = "urn:radfusion:ai-alert"
DICOM_UID_SYSTEM = "urn:dicom:uid"
LOINC = "http://loinc.org"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
COMM_CATEGORY = "http://terminology.hl7.org/CodeSystem/communication-category"
UCUM = "http://unitsofmeasure.org"

_INTERPRETATION_DISPLAY = {"AA": "Critical abnormal", "A": "Abnormal", "N": "Normal"}


def _model(data: dict[str, Any]) -> FHIRAbstractModel:
    """A resource dict as its R4B model (validated on construction)."""
    return get_fhir_model_class(data["resourceType"]).model_validate(data)


def _patient_reference(study: OutboundStudy, patient_reference: str | None) -> dict[str, Any]:
    """``Patient/<id>`` when the app knows it, else a logical reference by identifier."""
    if patient_reference:
        return {"reference": patient_reference}
    return {"type": "Patient", "identifier": {"system": study.patient_system, "value": study.patient_id}}


def _imaging_study(study: OutboundStudy) -> dict[str, Any]:
    return {"type": "ImagingStudy", "identifier": {"system": DICOM_UID_SYSTEM,
                                                   "value": f"urn:oid:{study.study_instance_uid}"},
            "display": study.study_display}


def _interpretation(finding: OutboundFinding) -> str:
    if finding.critical:
        return "AA"
    return "A" if finding.abnormal else "N"


def _quantity(value: float, unit: str, code: str) -> dict[str, Any]:
    return {"value": round(value, 3), "unit": unit, "system": UCUM, "code": code}


def _observation(study: OutboundStudy, finding: OutboundFinding, index: int, subject: dict[str, Any],
                 issued: datetime) -> dict[str, Any]:
    code: dict[str, Any] = {"text": finding.finding_type}
    if finding.code:
        code["coding"] = [{"system": finding.code_system, "code": finding.code, "display": finding.finding_type}]
    components = []
    if finding.diameter_mm is not None:
        components.append({"code": {"text": "diameter"}, "valueQuantity": _quantity(finding.diameter_mm, "mm", "mm")})
    if finding.score is not None:
        components.append({"code": {"text": "AI model score"}, "valueQuantity": _quantity(finding.score, "1", "1")})
    flag = _interpretation(finding)
    observation: dict[str, Any] = {
        "resourceType": "Observation", "status": "preliminary",
        "identifier": [{"system": OBSERVATION_ID_SYSTEM,
                        "value": f"{study.result_key}/{index}"}],
        "category": [{"coding": [{"system": OBS_CATEGORY, "code": "imaging", "display": "Imaging"}]}],
        "code": code, "subject": subject, "issued": issued.isoformat(),
        "interpretation": [{"coding": [{"system": INTERPRETATION, "code": flag,
                                        "display": _INTERPRETATION_DISPLAY[flag]}]}],
        "device": {"display": study.algorithm},
        "note": [{"text": AI_NOTE}],
    }
    if study.performed_at is not None:
        observation["effectiveDateTime"] = study.performed_at.isoformat()
    if finding.volume_ml is not None:
        observation["valueQuantity"] = _quantity(finding.volume_ml, "mL", "mL")
    else:
        observation["valueString"] = finding.summary()
    if finding.location:
        observation["bodySite"] = {"text": finding.location}
    if components:
        observation["component"] = components
    return observation


def build_diagnostic_report(study: OutboundStudy, findings: Sequence[OutboundFinding], *, issued: datetime,
                            patient_reference: str | None = None) -> tuple[FHIRAbstractModel, list[FHIRAbstractModel]]:
    """Preliminary DiagnosticReport (category RAD, LOINC study code, ImagingStudy by Study UID) and its Observations.

    ``result`` references the Observations by ``urn:uuid`` full URLs, resolved when posted
    with :func:`transaction_bundle`. No finding gives a report whose conclusion says so; the study's notes follow
    the findings in the conclusion.
    """
    if issued.tzinfo is None:
        raise FindingError("build_diagnostic_report: issued must be timezone-aware")
    subject = _patient_reference(study, patient_reference)
    observations = [_observation(study, f, i, subject, issued) for i, f in enumerate(findings, start=1)]
    urns = [f"urn:uuid:{uuid.uuid4()}" for _ in observations]
    for observation, urn in zip(observations, urns, strict=True):
        observation["id"] = urn.removeprefix("urn:uuid:")
    summary = "; ".join(f.summary() for f in findings) or f"No finding detected by {study.algorithm}"
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport", "status": "preliminary",
        "identifier": [{"system": REPORT_ID_SYSTEM, "value": study.result_key}],
        "category": [{"coding": [{"system": V2_0074, "code": "RAD", "display": "Radiology"}]}],
        "code": {"coding": [{"system": LOINC, "code": study.study_code, "display": study.study_display}],
                 "text": study.study_display},
        "subject": subject, "issued": issued.isoformat(),
        "imagingStudy": [_imaging_study(study)],
        "result": [{"reference": urn} for urn in urns],
        "conclusion": " ".join([*(f"{text.rstrip('.')}." for text in (summary, *study.notes)), AI_NOTE]),
    }
    if study.accession:
        report["identifier"].append({"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                                          "code": "ACSN"}]}, "value": study.accession})
    if study.performed_at is not None:
        report["effectiveDateTime"] = study.performed_at.isoformat()
    if study.replaced_result_key:  # a re-issue after late images: the report it replaces, by its identifier
        report["extension"] = [{"url": REPLACES_EXTENSION, "valueReference": {
            "type": "DiagnosticReport", "identifier": {"system": REPORT_ID_SYSTEM, "value": study.replaced_result_key},
            "display": "the earlier AI result of this study, read from fewer images"}}]
    return _model(report), [_model(o) for o in observations]


def build_alert_communication(study: OutboundStudy, findings: Sequence[OutboundFinding], *, sent: datetime,
                              patient_reference: str | None = None,
                              recipient_display: str = "Emergency department") -> FHIRAbstractModel:
    """Communication (category alert, priority stat) for the study's critical findings.

    Raises FindingError without a critical finding: an alert must never fire for nothing.
    """
    critical = [f for f in findings if f.critical]
    if not critical:
        raise FindingError(f"alert for study {study.study_instance_uid} has no critical finding")
    types = ", ".join(sorted({f.finding_type for f in critical}))
    details = "; ".join(f.summary() for f in critical)
    return _model({
        "resourceType": "Communication", "status": "completed", "priority": "stat",
        "identifier": [{"system": ALERT_ID_SYSTEM, "value": f"{study.study_instance_uid}/{study.algorithm}"}],
        "category": [{"coding": [{"system": COMM_CATEGORY, "code": "alert", "display": "Alert"}]}],
        "subject": _patient_reference(study, patient_reference), "sent": sent.isoformat(),
        "about": [_imaging_study(study)],
        "recipient": [{"display": recipient_display}],
        "payload": [{"contentString": f"{CRITICAL_NOTE.format(types=types)} {details}. "
                                      f"Accession {study.accession or 'unknown'}."}],
    })


def transaction_bundle(resources: Sequence[FHIRAbstractModel]) -> FHIRAbstractModel:
    """A transaction Bundle that creates ``resources``; every one must carry an identifier.

    Resources whose id is a UUID keep it as their ``urn:uuid`` full URL, so references
    between them resolve on the server. The creates are plain, not conditional: servers cap
    the size of a transaction with conditional entries (Medplum: 8 entries), and a report with
    many findings would never get through. A retried delivery stays single because the sender
    looks for the first resource's identifier before posting (``FhirClient.post_transaction_once``);
    the transaction is atomic, so the first resource exists exactly when all of them do.
    """
    entries = []
    for resource in resources:
        body = resource.model_dump(mode="json", exclude_none=True)
        local_id = body.pop("id", None) or str(uuid.uuid4())
        identifier = (body.get("identifier") or [{}])[0]
        if not identifier.get("system") or not identifier.get("value"):
            raise FindingError(f"transaction_bundle: {body['resourceType']} needs an identifier with system "
                               f"and value, so that a retried delivery can find it")
        entries.append({"fullUrl": f"urn:uuid:{local_id}", "resource": body,
                        "request": {"method": "POST", "url": body["resourceType"]}})
    return _model({"resourceType": "Bundle", "type": "transaction", "entry": entries})
