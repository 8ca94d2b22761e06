"""FHIR client, gathering and outbound report against the real Medplum FHIR router on loopback."""

from __future__ import annotations

import base64
import time
from dataclasses import replace
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from ai_engine.clinical_features import encode_clinical, feature_names
from hl7_fhir.context import ClinicalContext, LabValue, Provenance
from hl7_fhir.fhir_auth import BearerToken
from hl7_fhir.fhir_client import FhirClient, FhirError
from hl7_fhir.findings import OutboundFinding, OutboundStudy
from hl7_fhir.gather import ClinicalQuery, gather_from_fhir, gather_with_budget, merge_contexts
from hl7_fhir.outbound import (
    REPORT_ID_SYSTEM,
    build_alert_communication,
    build_diagnostic_report,
    transaction_bundle,
)
from tests.fhir_peer.fixture import fhir_peer, seed
from tests.peers import free_port
from tests.unit.hl7_fhir import seed_record
from tests.unit.hl7_fhir.seed_record import ACCESSION, MRN, SYSTEM

NOW = datetime.now(timezone.utc).replace(microsecond=0)


@pytest.fixture(scope="module")
def seeded(peer_url: str) -> str:
    """The peer holding two patients and the study patient's record; yields the study patient's id."""
    mine, other = seed(peer_url, seed_record.patients())
    seed(peer_url, seed_record.record(f"Patient/{mine['id']}", f"Patient/{other['id']}", NOW))
    return str(mine["id"])


@pytest.fixture
def client(peer_url: str) -> Iterator[FhirClient]:
    with FhirClient(peer_url, timeout_s=5, retries=1) as fhir:
        yield fhir


def query(*analytes: str) -> ClinicalQuery:
    return ClinicalQuery(MRN, SYSTEM, analytes, NOW, accession=ACCESSION)


def new_patient(peer_url: str, mrn: str) -> dict[str, str]:
    """A patient of one test's own, identified by ``mrn``: the reference its resources carry."""
    [stored] = seed(peer_url, [{"resourceType": "Patient", "identifier": [{"system": SYSTEM, "value": mrn}],
                                "gender": "female", "birthDate": "1950-06-15"}])
    return {"reference": f"Patient/{stored['id']}"}


def feature(task: str, ctx: ClinicalContext, name: str) -> float | None:
    """One clinical feature as a detector reads it; None when missing."""
    values, present = encode_clinical(task, ctx)
    index = feature_names(task).index(name)
    return float(values[index]) if present[index] else None


def snomed(code: str, display: str) -> dict[str, list[dict[str, str]]]:
    return {"coding": [{"system": "http://snomed.info/sct", "code": code, "display": display}]}


def test_search_by_identifier_code_date_sort_and_paging(client: FhirClient, seeded: str) -> None:
    assert client.find_patient(SYSTEM, MRN).id == seeded
    assert client.find_patient(SYSTEM, "nobody") is None
    glucose = client.search("Observation", {"subject": f"Patient/{seeded}", "code": "http://loinc.org|2345-7",
                                            "_sort": "-date", "_count": "5"})
    values = [float(o.valueQuantity.value) for o in glucose]
    assert values == [100.0 + i for i in range(12)]  # three pages of 5, newest first
    recent = client.search("Observation", {"subject": f"Patient/{seeded}", "code": "http://loinc.org|2345-7",
                                           "date": f"ge{(NOW - timedelta(days=4, hours=12)).isoformat()}"})
    assert len(recent) == 5


def test_gather_from_fhir_builds_the_clinical_context(client: FhirClient, seeded: str) -> None:
    ctx = gather_from_fhir(client, query("inr", "platelets", "hemoglobin", "creatinine", "smoking_status",
                                         "systolic_bp", "gcs"))
    assert ctx.status == "complete", ctx.errors
    assert (ctx.sex, ctx.age_years) == ("female", pytest.approx((NOW.date().toordinal()
                                                                 - datetime(1950, 6, 15).toordinal()) / 365.25, abs=0.1))
    inr = ctx.labs["inr"]
    assert (inr.value, inr.code, inr.provenance.source) == (2.8, "34714-6", "fhir")
    assert inr.provenance.record_id.startswith("Observation/")  # the newer entered-in-error 8.5 is skipped
    assert (ctx.labs["systolic_bp"].value, ctx.labs["gcs"].value) == (182.0, 13.0)  # BP panel component, integer
    assert ctx.labs["platelets"].value == pytest.approx(95.0) and ctx.labs["platelets"].unit == "10*9/L"
    assert ctx.labs["hemoglobin"].value == pytest.approx(12.0)
    assert ctx.coded_observations["smoking_status"].display == "Ex-smoker"
    assert ctx.missing == ["creatinine"]
    assert {(m.display, m.category) for m in ctx.medications} == {
        ("warfarin", "anticoagulant"), ("clopidogrel", "antiplatelet"), ("Amoxicillin 500 mg", "")}
    assert sorted((c.display, c.category, c.alternate_codes) for c in ctx.conditions) == [
        ("Atrial fibrillation", "active", ()),
        ("Genetic susceptibility to malignant neoplasm of breast", "", ("412734009",))]
    assert [(p.code, p.display, p.category) for p in ctx.procedures] == [("122548005", "Biopsy of breast", "completed")]
    values, present = encode_clinical("mammo", ctx)
    assert present.all() and values.tolist()[1:] == [1.0, 1.0, 1.0]  # BRCA by its SNOMED code, family, biopsy
    assert [(f.display, f.category) for f in ctx.family_history] == [("Breast cancer", "MTH")]
    assert ctx.reason_for_exam == "Fall, on anticoagulation"
    assert "ED note: headache after a fall, on warfarin." in ctx.notes
    assert "Prior CT head: no acute intracranial abnormality." in ctx.notes


def test_a_cancer_only_suspected_is_not_the_patient_s(client: FhirClient, peer_url: str) -> None:
    """Conditions recorded as differential, provisional or unconfirmed (a cancer to rule out) counted as the patient's:
    prior cancer and BRCA carrier read 1. Only confirmed ones count, and those without a verification status."""
    subject = new_patient(peer_url, "MRN-RULE-OUT")
    status = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
    seed(peer_url, [{"resourceType": "Condition", "subject": subject, "code": snomed(code, display),
                     **({"verificationStatus": {"coding": [{"system": status, "code": verified}]}} if verified else {})}
                    for verified, code, display in (("differential", "363358000", "Malignant tumor of lung"),
                                                    ("provisional", "412734009", "BRCA1 carrier"),
                                                    ("unconfirmed", "254837009", "Malignant neoplasm of breast"),
                                                    ("confirmed", "49436004", "Atrial fibrillation"),
                                                    ("", "38341003", "Hypertension"))])
    ctx = gather_from_fhir(client, ClinicalQuery("MRN-RULE-OUT", SYSTEM, (), NOW))
    assert sorted(c.display for c in ctx.conditions) == ["Atrial fibrillation", "Hypertension"]
    assert (feature("nodule", ctx, "prior_cancer"), feature("mammo", ctx, "brca_carrier")) == (0.0, 0.0)


def test_a_biopsy_only_planned_or_not_done_is_no_prior_biopsy(client: FhirClient, peer_url: str) -> None:
    """A Procedure in preparation, in progress, not done or on hold counted as done: a planned breast biopsy read as a
    prior one. Only a completed Procedure counts."""
    subject = new_patient(peer_url, "MRN-PLANNED")
    seed(peer_url, [{"resourceType": "Procedure", "status": status, "subject": subject,
                     "code": snomed("122548005", "Biopsy of breast")}
                    for status in ("preparation", "in-progress", "not-done", "on-hold", "stopped", "unknown")])
    ctx = gather_from_fhir(client, ClinicalQuery("MRN-PLANNED", SYSTEM, (), NOW))
    assert ctx.procedures == [] and feature("mammo", ctx, "prior_biopsy") == 0.0
    seed(peer_url, [{"resourceType": "Procedure", "status": "completed", "subject": subject,
                     "code": snomed("122548005", "Biopsy of breast")}])
    ctx = gather_from_fhir(client, ClinicalQuery("MRN-PLANNED", SYSTEM, (), NOW))
    assert feature("mammo", ctx, "prior_biopsy") == 1.0


def test_records_entered_in_error_feed_neither_history_nor_notes(client: FhirClient, peer_url: str) -> None:
    """A family history, a note or a report entered in error (written on the wrong patient), or a cancelled report,
    was used: family history of breast cancer read 1, and the wrong patient's fall made the ICH head read trauma."""
    subject = new_patient(peer_url, "MRN-IN-ERROR")
    when = (NOW - timedelta(hours=2)).isoformat()

    def note(text: str, **status: str) -> dict:
        data = base64.b64encode(text.encode()).decode()
        return {"resourceType": "DocumentReference", "status": "current", **status, "subject": subject, "date": when,
                "content": [{"attachment": {"contentType": "text/plain", "data": data}}]}

    seed(peer_url, [
        {"resourceType": "FamilyMemberHistory", "status": "entered-in-error", "patient": subject,
         "relationship": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode", "code": "MTH"}]},
         "condition": [{"code": snomed("254837009", "Malignant neoplasm of breast")}]},
        note("ED note: fell down the stairs, struck head.", status="entered-in-error"),
        note("ED note: assaulted, head injury.", docStatus="entered-in-error"),
        note("ED note: sudden headache at rest."),
        *({"resourceType": "DiagnosticReport", "status": status, "subject": subject, "code": {"text": "ED summary"},
           "effectiveDateTime": when, "conclusion": "Motor vehicle collision, head injury."}
          for status in ("entered-in-error", "cancelled"))])
    ctx = gather_from_fhir(client, ClinicalQuery("MRN-IN-ERROR", SYSTEM, (), NOW))
    assert ctx.family_history == [] and feature("mammo", ctx, "family_history_breast_cancer") == 0.0
    assert ctx.notes == ["ED note: sudden headache at rest."] and feature("ich", ctx, "trauma") == 0.0


def test_a_result_timed_by_a_period_an_instant_or_a_month_keeps_its_time(client: FhirClient, peer_url: str) -> None:
    """Only effectiveDateTime with a day was read: a result timed by effectivePeriod or effectiveInstant, or by a month,
    had no time, and merging let any older HL7 value replace it (INR 1.1 of 40 days before over 3.8 of this morning).
    """
    subject = new_patient(peer_url, "MRN-TIMED")
    hours = (lambda h: (NOW - timedelta(hours=h)).isoformat())
    timed = {"inr": ("6301-6", 3.8, "{INR}", {"effectivePeriod": {"start": hours(3), "end": hours(2)}}),
             "platelets": ("777-3", 40, "10*9/L", {"effectiveInstant": hours(1)}),
             "hemoglobin": ("718-7", 9.1, "g/dL", {"effectiveDateTime": NOW.strftime("%Y-%m")})}
    seed(peer_url, [{"resourceType": "Observation", "status": "final", "subject": subject,
                     "code": {"coding": [{"system": "http://loinc.org", "code": code}]}, **when,
                     "valueQuantity": {"value": value, "unit": unit, "code": unit}}
                    for code, value, unit, when in timed.values()])
    ctx = gather_from_fhir(client, ClinicalQuery("MRN-TIMED", SYSTEM, tuple(timed), NOW))
    month = datetime(NOW.year, NOW.month, 1, tzinfo=timezone.utc)
    assert {name: lab.observed_at for name, lab in ctx.labs.items()} == {
        "inr": NOW - timedelta(hours=2), "platelets": NOW - timedelta(hours=1), "hemoglobin": month}
    older = [LabValue(name, "x", 1.1, "u", NOW - timedelta(days=40), Provenance("hl7", "LAB", f"old-{name}"))
             for name in timed]
    merged = merge_contexts(ctx, older, analytes=tuple(timed), as_of=NOW, lookback=timedelta(days=90))
    assert {name: lab.value for name, lab in merged.labs.items()} == {"inr": 3.8, "platelets": 40.0,
                                                                      "hemoglobin": 9.1}


def test_an_unreadable_newest_fhir_result_is_not_filled_by_an_older_hl7_one(client: FhirClient,
                                                                              peer_url: str) -> None:
    """The newest INR, in the EMR an hour before the study, reads '>10': FHIR left INR out, and merging filled it with
    the HL7 INR 1.0 of a month before, as if current. Only an HL7 value newer than it may stand in."""
    subject = new_patient(peer_url, "MRN-ABOVE-RANGE")
    seed(peer_url, [{"resourceType": "Observation", "status": "final", "subject": subject,
                     "code": {"coding": [{"system": "http://loinc.org", "code": "6301-6"}]},
                     "effectiveDateTime": (NOW - timedelta(hours=1)).isoformat(),
                     "valueString": ">10 (above reportable range)"}])
    ctx = gather_from_fhir(client, ClinicalQuery("MRN-ABOVE-RANGE", SYSTEM, ("inr",), NOW))

    def merged_with(hours_ago: float) -> ClinicalContext:
        hl7 = LabValue("inr", "6301-6", 1.0, "{INR}", NOW - timedelta(hours=hours_ago), Provenance("hl7", "LAB", "M1"))
        return merge_contexts(ctx, [hl7], analytes=("inr",), as_of=NOW, lookback=timedelta(days=90))

    month_old = merged_with(24 * 30)
    assert "inr" not in month_old.labs and month_old.missing == ["inr"] and feature("ich", month_old, "inr") is None
    assert any(e.startswith("inr: the newest result (Observation/") for e in month_old.errors)
    assert merged_with(0.5).labs["inr"].provenance.source == "hl7"  # a value newer than the unreadable one


def test_a_study_under_a_merged_away_record_reads_the_surviving_one(client: FhirClient, peer_url: str) -> None:
    """After an EMR merge only the retired record (inactive, linked replaced-by) carries the study's identifier: it was
    read, and its emptied lists said 'no anticoagulant'. The link is followed to the surviving record now; one that
    cannot be followed makes the record unavailable, every input missing, rather than empty."""
    [survivor] = seed(peer_url, [{"resourceType": "Patient", "identifier": [{"system": SYSTEM, "value": "MRN-NEW"}],
                                  "gender": "male", "birthDate": "1940-01-01"}])
    subject = {"reference": f"Patient/{survivor['id']}"}
    seed(peer_url, [
        {"resourceType": "Patient", "active": False, "identifier": [{"system": SYSTEM, "value": "MRN-OLD"}],
         "link": [{"other": subject, "type": "replaced-by"}]},
        {"resourceType": "Patient", "active": False, "identifier": [{"system": SYSTEM, "value": "MRN-LOST"}],
         "link": [{"other": {"reference": "Patient/gone"}, "type": "replaced-by"}]},
        {"resourceType": "MedicationRequest", "status": "active", "intent": "order", "subject": subject,
         "medicationCodeableConcept": {"text": "warfarin 5 mg tablet"}},
        {"resourceType": "Observation", "status": "final", "subject": subject,
         "code": {"coding": [{"system": "http://loinc.org", "code": "6301-6"}]},
         "effectiveDateTime": (NOW - timedelta(hours=1)).isoformat(),
         "valueQuantity": {"value": 4.2, "unit": "{INR}", "code": "{INR}"}}])
    ctx = gather_from_fhir(client, ClinicalQuery("MRN-OLD", SYSTEM, ("inr",), NOW))
    assert (ctx.status, ctx.sex, ctx.labs["inr"].value) == ("complete", "male", 4.2)
    assert feature("ich", ctx, "anticoagulant") == 1.0
    lost = gather_with_budget(lambda: gather_from_fhir(client, ClinicalQuery("MRN-LOST", SYSTEM, ("inr",), NOW)), 5.0)
    assert lost.status == "unavailable" and feature("ich", lost, "anticoagulant") is None
    assert "was retired, replaced by a record that cannot be read" in lost.errors[0]
    assert "MRN-LOST" not in lost.errors[0]


def study() -> OutboundStudy:
    return OutboundStudy("1.2.826.0.1.3680043.8.498.1", ACCESSION, MRN, "HOSP", SYSTEM, "24725-4",
                         "CT Head", "radfusion-ich 0.1.0", NOW - timedelta(minutes=5))


FINDINGS = [OutboundFinding("Intracranial hemorrhage", "1386000", "http://snomed.info/sct", "left parietal",
                            volume_ml=12.34, score=0.93, critical=True),
            OutboundFinding("Midline shift", location="septum pellucidum", diameter_mm=4.0, score=0.71)]


def test_a_study_of_two_days_ago_is_read_as_the_record_was_then(client: FhirClient, seeded: str) -> None:
    """The search names the window's end too: before, the INR of yesterday was used for a scan of the day
    before, and the age was today's."""
    ctx = gather_from_fhir(client, replace(query("inr", "platelets"), as_of=NOW - timedelta(hours=36)))
    assert (ctx.labs["inr"].value, ctx.labs["inr"].code, ctx.labs["platelets"].value) == (1.1, "6301-6", 95.0)
    assert ctx.age_years == pytest.approx((NOW - timedelta(hours=36) - datetime(1950, 6, 15, tzinfo=timezone.utc))
                                          .days / 365.25, abs=0.06)


def test_outbound_report_is_valid_and_found_again_once(client: FhirClient, seeded: str) -> None:
    report, observations = build_diagnostic_report(study(), FINDINGS, issued=NOW,
                                                   patient_reference=f"Patient/{seeded}")
    alert = build_alert_communication(study(), FINDINGS, sent=NOW, patient_reference=f"Patient/{seeded}")
    bundle = transaction_bundle([report, *observations, alert])
    assert client.post_transaction_once(bundle) is not None
    assert client.post_transaction_once(bundle) is None  # a retried delivery must not store a second copy
    found = client.search("DiagnosticReport", {"identifier": f"{REPORT_ID_SYSTEM}|{study().study_instance_uid}/"
                                                             f"{study().algorithm}"})
    assert len(found) == 1
    stored = found[0]
    assert stored.status == "preliminary" and stored.subject.reference == f"Patient/{seeded}"
    assert stored.imagingStudy[0].identifier.value == "urn:oid:1.2.826.0.1.3680043.8.498.1"
    results = [client.read(*ref.reference.split("/")) for ref in stored.result]
    assert [r.interpretation[0].coding[0].code for r in results] == ["AA", "A"]
    assert float(results[0].valueQuantity.value) == 12.34 and results[0].bodySite.text == "left parietal"
    alerts = client.search("Communication", {"subject": f"Patient/{seeded}"})
    assert len(alerts) == 1 and alerts[0].priority == "stat"


def test_a_reissued_result_is_a_report_of_its_own_that_names_the_one_it_replaces(client: FhirClient,
                                                                                  seeded: str) -> None:
    """The first result and its re-issue (a late instance) differ in their SR: both reach the EMR, and the re-issue
    names the report it replaces (before, nothing told the EMR which of the two was current)."""
    first, second = "1.2.826.0.1.3680043.8.498.101", "1.2.826.0.1.3680043.8.498.102"
    for sr_uid, replaces in ((first, ""), (second, first)):
        reissue = replace(study(), result_uid=sr_uid, replaces_result_uid=replaces)
        report, observations = build_diagnostic_report(reissue, FINDINGS[:1], issued=NOW,
                                                       patient_reference=f"Patient/{seeded}")
        assert client.post_transaction_once(transaction_bundle([report, *observations])) is not None
    stored = {}
    for sr_uid in (first, second):
        key = f"{study().study_instance_uid}/{study().algorithm}/{sr_uid}"
        [stored[sr_uid]] = client.search("DiagnosticReport", {"identifier": f"{REPORT_ID_SYSTEM}|{key}"})
    assert stored[first].extension is None
    [link] = stored[second].extension
    assert link.url == "http://hl7.org/fhir/StructureDefinition/diagnosticReport-replaces"
    assert link.valueReference.identifier.value == f"{study().study_instance_uid}/{study().algorithm}/{first}"


def test_the_result_s_notes_on_the_case_reach_the_report_s_conclusion(client: FhirClient, seeded: str) -> None:
    noted = replace(study(), result_uid="1.2.826.0.1.3680043.8.498.103",
                    notes=("image-only: the EMR did not answer within 2 s",))
    report, observations = build_diagnostic_report(noted, FINDINGS[:1], issued=NOW,
                                                   patient_reference=f"Patient/{seeded}")
    assert client.post_transaction_once(transaction_bundle([report, *observations])) is not None
    [stored] = client.search("DiagnosticReport", {"identifier": f"{REPORT_ID_SYSTEM}|{noted.result_key}"})
    assert ". image-only: the EMR did not answer within 2 s. AI-generated" in stored.conclusion


def test_server_down_gives_unavailable_context_with_the_reason() -> None:
    dead = FhirClient(f"http://127.0.0.1:{free_port()}", timeout_s=1, retries=1, backoff_s=0.05)
    start = time.monotonic()
    ctx = gather_with_budget(lambda: gather_from_fhir(dead, query("inr")), budget_s=2.0)
    assert ctx.status == "unavailable" and time.monotonic() - start < 3.0  # the budget, with slack
    assert "EMR query failed" in ctx.errors[0] and "ConnectError" in ctx.errors[0]


def test_slow_server_the_budget_holds_and_tokens_are_sent(tmp_path: Path) -> None:
    with fhir_peer(tmp_path, delay_ms=2500, token="s3cret") as url:
        seed(url, seed_record.patients(), token="s3cret")
        with FhirClient(url, auth=BearerToken("s3cret"), timeout_s=5, retries=0) as slow:
            start = time.monotonic()
            ctx = gather_with_budget(lambda: gather_from_fhir(slow, query("inr")), budget_s=0.5)
            elapsed = time.monotonic() - start
            assert ctx.status == "unavailable" and ctx.errors == ["EMR did not answer within 0.5 s"]
            assert elapsed < 1.5  # the budget with slack for a busy machine, well before the 2.5 s answer
            assert slow.find_patient(SYSTEM, MRN) is not None  # the token is accepted
        with FhirClient(url, timeout_s=5, retries=0) as anonymous:
            with pytest.raises(FhirError, match="answered 401") as info:
                anonymous.find_patient(SYSTEM, MRN)
            assert info.value.status == 401


def test_a_report_with_many_findings_goes_through_in_one_transaction(client: FhirClient, seeded: str) -> None:
    many = [OutboundFinding("Nodule", "27925004", "http://snomed.info/sct", f"lobe {i}", diameter_mm=4.0 + i,
                            score=0.6) for i in range(12)]
    other = OutboundStudy("1.2.826.0.1.3680043.8.498.2", "ACC-MANY", MRN, "HOSP", SYSTEM, "24627-2", "CT Chest",
                          "radfusion-nodule 0.1.0", NOW)
    report, observations = build_diagnostic_report(other, many, issued=NOW, patient_reference=f"Patient/{seeded}")
    assert client.post_transaction_once(transaction_bundle([report, *observations])) is not None
    (stored,) = client.search("DiagnosticReport", {"identifier": f"{REPORT_ID_SYSTEM}|{other.study_instance_uid}/"
                                                                 f"{other.algorithm}"})
    assert len(stored.result) == 12
