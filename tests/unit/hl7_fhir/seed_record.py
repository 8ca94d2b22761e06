"""One patient's FHIR record for the peer: labs (some out of window), meds, history, order, notes."""

from __future__ import annotations

import base64
from datetime import datetime, timedelta

SYSTEM = "urn:oid:1.2.840.99999.1"
MRN = "MRN42"
ACCESSION = "ACC777"
LOINC = "http://loinc.org"


def patients() -> list[dict]:
    """The study's patient and another one whose data must never leak in."""
    return [
        {"resourceType": "Patient", "identifier": [{"system": SYSTEM, "value": MRN}],
         "gender": "female", "birthDate": "1950-06-15"},
        {"resourceType": "Patient", "identifier": [{"system": SYSTEM, "value": "MRN43"}],
         "gender": "male", "birthDate": "1970-01-01"},
    ]


def _obs(subject: str, code: str, when: datetime, value: float, unit: str) -> dict:
    return {"resourceType": "Observation", "status": "final", "subject": {"reference": subject},
            "code": {"coding": [{"system": LOINC, "code": code}]}, "effectiveDateTime": when.isoformat(),
            "valueQuantity": {"value": value, "unit": unit}}


def record(subject: str, other: str, now: datetime) -> list[dict]:
    """Resources for ``subject`` (Patient/<id>) plus a newer INR for ``other``."""
    day = timedelta(days=1)
    note = base64.b64encode(b"ED note: headache after a fall, on warfarin.").decode()
    glucose = [_obs(subject, "2345-7", now - i * day, 100 + i, "mg/dL") for i in range(12)]
    return [
        _obs(subject, "6301-6", now - 2 * day, 1.1, "{INR}"),
        _obs(subject, "34714-6", now - 1 * day, 2.8, "{INR}"),
        _obs(subject, "6301-6", now - 200 * day, 5.0, "{INR}"),  # outside the 90-day window
        _obs(other, "6301-6", now - 1 * day / 2, 9.9, "{INR}"),   # another patient
        {**_obs(subject, "6301-6", now - day / 4, 8.5, "{INR}"), "status": "entered-in-error"},  # newest, void
        _obs(subject, "777-3", now - 3 * day, 95000, "/uL"),
        {"resourceType": "Observation", "status": "final", "subject": {"reference": subject},  # US Core BP panel
         "code": {"coding": [{"system": LOINC, "code": "85354-9"}]}, "effectiveDateTime": (now - day).isoformat(),
         "component": [{"code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
                        "valueQuantity": {"value": 182, "unit": "mm[Hg]", "code": "mm[Hg]"}},
                       {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
                        "valueQuantity": {"value": 95, "unit": "mm[Hg]", "code": "mm[Hg]"}}]},
        {"resourceType": "Observation", "status": "final", "subject": {"reference": subject},
         "code": {"coding": [{"system": LOINC, "code": "9269-2"}]}, "effectiveDateTime": (now - day).isoformat(),
         "valueInteger": 13},  # GCS as an integer score
        _obs(subject, "718-7", now - 3 * day, 120, "g/L"),
        *glucose,
        {"resourceType": "Observation", "status": "final", "subject": {"reference": subject},
         "code": {"coding": [{"system": LOINC, "code": "72166-2"}]}, "effectiveDateTime": (now - day).isoformat(),
         "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "8517006",
                                              "display": "Ex-smoker"}]}},
        {"resourceType": "Condition", "subject": {"reference": subject},
         "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                        "code": "active"}]},
         "code": {"coding": [{"system": "http://snomed.info/sct", "code": "49436004",
                              "display": "Atrial fibrillation"}]}},
        {"resourceType": "Condition", "subject": {"reference": subject},  # ICD-10 first, SNOMED CT second
         "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "Z15.01",
                              "display": "Genetic susceptibility to malignant neoplasm of breast"},
                             {"system": "http://snomed.info/sct", "code": "412734009"}]}},
        {"resourceType": "Procedure", "status": "completed", "subject": {"reference": subject},
         "code": {"coding": [{"system": "http://snomed.info/sct", "code": "122548005", "display": "Biopsy of breast"}]},
         "performedDateTime": (now - 400 * day).isoformat()},
        {"resourceType": "Procedure", "status": "entered-in-error", "subject": {"reference": subject},
         "code": {"coding": [{"system": "http://snomed.info/sct", "code": "71651007", "display": "Mammography"}]}},
        {"resourceType": "MedicationStatement", "status": "active", "subject": {"reference": subject},
         "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                                   "code": "11289", "display": "warfarin"}]}},
        {"resourceType": "MedicationRequest", "status": "active", "intent": "order",
         "subject": {"reference": subject},
         "medicationCodeableConcept": {"coding": [{"system": "http://www.whocc.no/atc", "code": "B01AC04",
                                                   "display": "clopidogrel"}]}},
        {"resourceType": "MedicationRequest", "status": "active", "intent": "order",
         "subject": {"reference": subject}, "medicationCodeableConcept": {"text": "Amoxicillin 500 mg"}},
        {"resourceType": "FamilyMemberHistory", "status": "completed", "patient": {"reference": subject},
         "relationship": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode",
                                      "code": "MTH"}]},
         "condition": [{"code": {"coding": [{"system": "http://snomed.info/sct", "code": "254837009",
                                             "display": "Breast cancer"}]}}]},
        {"resourceType": "ServiceRequest", "status": "active", "intent": "order", "subject": {"reference": subject},
         "identifier": [{"system": "urn:oid:1.2.840.99999.2", "value": ACCESSION}],
         "code": {"text": "CT head without contrast"},
         "reasonCode": [{"text": "Fall, on anticoagulation"}]},
        {"resourceType": "DocumentReference", "status": "current", "subject": {"reference": subject},
         "date": (now - day).isoformat(),
         "content": [{"attachment": {"contentType": "text/plain", "data": note}}]},
        {"resourceType": "DiagnosticReport", "status": "final", "subject": {"reference": subject},
         "code": {"text": "CT head"}, "effectiveDateTime": (now - 30 * day).isoformat(),
         "conclusion": "Prior CT head: no acute intracranial abnormality."},
    ]
