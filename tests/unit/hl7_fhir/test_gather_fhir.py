"""The FHIR side of gathering against a server that misbehaves in ways real EMRs do: thousands of vitals, a
resource that is not valid R4, orders not to give a drug, conditions that were ruled out."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx

from ai_engine.clinical_features import encode_clinical, feature_names
from hl7_fhir.fhir_client import FhirClient
from hl7_fhir.gather import ClinicalQuery, gather_from_fhir
from hl7_fhir.medication_classes import classify

BASE = "http://emr.test/fhir"
NOW = datetime(2026, 12, 7, 12, 0, tzinfo=timezone.utc)
LOINC = "http://loinc.org"


def _bundle(resources: list[dict[str, Any]], next_url: str | None = None) -> dict[str, Any]:
    links = [{"relation": "next", "url": next_url}] if next_url else []
    return {"resourceType": "Bundle", "type": "searchset", "link": links,
            "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources]}


def _observation(ident: str, code: str, value: object, unit: str, hours_ago: float, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": ident, "status": "final", "subject": {"reference": "Patient/p1"},
            "code": {"coding": [{"system": LOINC, "code": code}]},
            "effectiveDateTime": (NOW - timedelta(hours=hours_ago)).isoformat(),
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
            **extra}


def _bp_panel(hour: int) -> dict[str, Any]:
    panel = _observation(f"bp{hour}", "85354-9", 120, "mm[Hg]", hour)
    del panel["valueQuantity"]
    panel["component"] = [{"code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
                           "valueQuantity": {"value": 120 + hour % 30, "unit": "mm[Hg]",
                                             "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}]
    return panel


def _server(sections: dict[str, Callable[[httpx.Request], dict[str, Any]]], calls: list[str]) -> FhirClient:
    patient = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1950-01-01",
               "identifier": [{"system": "urn:oid:1.2.3", "value": "12345"}]}

    def handler(request: httpx.Request) -> httpx.Response:
        kind = request.url.path.rsplit("/", 1)[-1]
        calls.append(kind)
        if kind == "Patient":
            return httpx.Response(200, json=_bundle([patient]))
        return httpx.Response(200, json=sections[kind](request) if kind in sections else _bundle([]))

    return FhirClient(BASE, transport=httpx.MockTransport(handler), sleep=lambda s: None)


def _query(*analytes: str) -> ClinicalQuery:
    return ClinicalQuery(patient_id="12345", identifier_system="urn:oid:1.2.3", analytes=analytes, as_of=NOW)


def test_an_icu_patient_s_hourly_vitals_do_not_cost_the_labs() -> None:
    """Newest first, 50 a page, and the server always has another page: before, one search for every analyte
    followed 20 pages of blood pressures, gave up, and INR and platelets were read as missing. An analyte the
    record lacks (hemoglobin here) must not cost the others either."""
    def observations(request: httpx.Request) -> dict[str, Any]:
        page, codes = int(request.url.params.get("page", "0")), request.url.params["code"]
        found = {"6301-6": [_observation("inr", "6301-6", 3.4, "{INR}", 30)],
                 "777-3": [_observation("plt", "777-3", 40, "10*9/L", 31)],
                 "8480-6": [_bp_panel(page * 50 + h + 1) for h in range(50)]}
        matches = [r for code, rs in found.items() if f"|{code}" in codes for r in rs]
        return _bundle(matches, f"{BASE}/Observation?page={page + 1}&code={codes}")

    calls: list[str] = []
    query = _query("inr", "platelets", "systolic_bp", "hemoglobin")
    context = gather_from_fhir(_server({"Observation": observations}, calls), query)
    assert (context.labs["inr"].value, context.labs["platelets"].value) == (3.4, 40.0)
    assert "systolic_bp" in context.labs and context.missing == ["hemoglobin"] and context.errors == []
    assert calls.count("Observation") == 4  # one page per analyte


def test_one_resource_that_is_not_valid_r4_costs_only_itself() -> None:
    bad = _observation("bad", "6301-6", "twelve", "{INR}", 0.1)
    good = _observation("plt", "777-3", 40, "10*9/L", 0.6)
    context = gather_from_fhir(_server({"Observation": lambda r: _bundle([bad, good])}, []),
                               _query("inr", "platelets"))
    assert context.labs["platelets"].value == 40.0 and "inr" not in context.labs  # before: no labs at all


def test_a_newest_result_that_is_not_valid_r4_is_an_unreadable_one() -> None:
    """The newest INR was not valid R4 (a time without an offset, a value '4,6'): the search left it out with a log
    line only, and the INR of 27 days before was read as current, with nothing in the errors."""
    old = _observation("old", "6301-6", 1.0, "{INR}", 24 * 27)
    naive = _observation("new", "6301-6", 4.6, "{INR}", 0, effectiveDateTime="2026-12-07T10:00:00")
    comma = _observation("new", "6301-6", "4,6", "{INR}", 2)
    untimed = _observation("new", "6301-6", 4.6, "{INR}", 0, effectiveDateTime="this morning")
    local = datetime(2026, 12, 7, 10, 0).astimezone()  # a time without an offset: this machine's, as in HL7
    for newest, when in ((naive, local), (comma, NOW - timedelta(hours=2)), (untimed, None)):
        context = gather_from_fhir(_server({"Observation": lambda r, page=[newest, old]: _bundle(page)}, []),
                                   _query("inr"))
        assert "inr" not in context.labs and context.unreadable == {"inr": when} and context.status == "partial"
        [error] = context.errors
        assert error.startswith("inr: the newest result could not be read (Observation/new is not valid R4: ")
        assert "4,6" not in error and "12345" not in error and "Patient/p1" not in error
    older = _observation("older", "6301-6", "4,6", "{INR}", 24 * 30)
    context = gather_from_fhir(_server({"Observation": lambda r: _bundle([old, older])}, []), _query("inr"))
    assert context.labs["inr"].value == 1.0 and context.errors == []  # older than a value that can be read


def test_an_unreadable_newest_result_makes_the_analyte_missing_not_an_older_one_current() -> None:
    """The newest INR is text and the newest platelet count in a unit not accepted: before, INR 1.0 of a month
    ago and platelets of October were read as the patient's current ones."""
    newest_inr = _observation("inr-new", "6301-6", 0, "", 2)
    del newest_inr["valueQuantity"]
    newest_inr["valueString"] = "3.1"
    observations = [newest_inr, _observation("inr-old", "6301-6", 1.0, "{INR}", 24 * 27),
                    _observation("plt-new", "777-3", 40, "furlongs", 3), _observation("plt-old", "777-3", 310,
                                                                                      "10*9/L", 24 * 50),
                    _observation("hb", "718-7", 12.5, "g/dL", 5)]

    def search(request: httpx.Request) -> dict[str, Any]:
        codes = request.url.params["code"]
        return _bundle([o for o in observations if f"|{o['code']['coding'][0]['code']}" in codes])

    context = gather_from_fhir(_server({"Observation": search}, []), _query("inr", "platelets", "hemoglobin"))
    assert "inr" not in context.labs and "platelets" not in context.labs
    assert context.labs["hemoglobin"].value == 12.5
    assert "inr: the newest result (Observation/inr-new) holds no value that can be read; older results are not " \
           "used" in context.errors
    assert any(e.startswith("platelets: the newest result (Observation/plt-new)") for e in context.errors)


def test_a_result_still_pending_does_not_hide_the_one_of_this_morning() -> None:
    """A repeat INR only ordered (status registered) or a preliminary platelet count without a value yet was read as an
    unreadable newest result: the final values of this morning were left out and INR and platelets read as missing.
    Like a pending HL7 result (OBX-11 I) it is no result; a preliminary value is one."""
    pending = _observation("inr-pending", "6301-6", 0, "", 1, status="registered")
    waiting = _observation("plt-waiting", "777-3", 0, "", 1, status="preliminary")
    for observation in (pending, waiting):
        del observation["valueQuantity"]
    observations = [pending, _observation("inr-final", "6301-6", 2.9, "{INR}", 5),
                    waiting, _observation("plt-final", "777-3", 140, "10*9/L", 5),
                    _observation("hb-preliminary", "718-7", 9.5, "g/dL", 1, status="preliminary"),
                    _observation("hb-final", "718-7", 12.5, "g/dL", 5)]

    def search(request: httpx.Request) -> dict[str, Any]:
        codes = request.url.params["code"]
        return _bundle([o for o in observations if f"|{o['code']['coding'][0]['code']}" in codes])

    context = gather_from_fhir(_server({"Observation": search}, []), _query("inr", "platelets", "hemoglobin"))
    assert {name: lab.value for name, lab in context.labs.items()} == {"inr": 2.9, "platelets": 140.0,
                                                                       "hemoglobin": 9.5}
    assert context.errors == []


def test_a_server_that_ignores_the_sort_still_gives_the_newest_result() -> None:
    """The first readable result of the page was taken: on a server that ignores _sort, an old INR."""
    page = [_observation("old", "6301-6", 1.0, "{INR}", 24 * 20), _observation("new", "6301-6", 3.2, "{INR}", 3),
            _observation("mid", "6301-6", 2.0, "{INR}", 24 * 2)]
    context = gather_from_fhir(_server({"Observation": lambda r: _bundle(page)}, []), _query("inr"))
    assert context.labs["inr"].value == 3.2
    by_period = _observation("period", "6301-6", 2.7, "{INR}", 1)
    by_period["effectivePeriod"] = {"start": by_period.pop("effectiveDateTime")}  # a time of its own, as a period
    context = gather_from_fhir(_server({"Observation": lambda r: _bundle([*page, by_period])}, []), _query("inr"))
    assert context.labs["inr"].value == 2.7


def test_an_order_not_to_give_warfarin_a_flush_and_a_refuted_cancer_are_not_the_patient_s() -> None:
    warfarin = {"resourceType": "MedicationRequest", "id": "m1", "status": "active", "intent": "order",
                "doNotPerform": True, "subject": {"reference": "Patient/p1"},
                "medicationCodeableConcept": {"text": "Warfarin 5 mg - DO NOT GIVE"}}
    stopped = {**warfarin, "id": "m2", "status": "stopped", "doNotPerform": False}  # the server ignored ?status
    refuted = {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"},
               "verificationStatus": {"coding": [{"code": "refuted"}]},
               "code": {"text": "Malignant neoplasm of lung"}}
    context = gather_from_fhir(_server({"MedicationRequest": lambda r: _bundle([warfarin, stopped]),
                                        "Condition": lambda r: _bundle([refuted])}, []), _query("inr"))
    assert context.medications == [] and context.conditions == []  # before: anticoagulant, prior cancer
    assert classify([], "Heparin lock flush 10 units/mL") == "" and classify([], "Heparin 5000 units SC") != ""


def test_an_anticoagulant_given_by_a_medication_reference_is_known() -> None:
    """US Core's usual shape: the order references a Medication (RxNorm warfarin) without a display. It was read as
    no drug, so the patient counted as not anticoagulated."""
    rxnorm = "http://www.nlm.nih.gov/research/umls/rxnorm"
    order = {"resourceType": "MedicationRequest", "id": "m1", "status": "active", "intent": "order",
             "subject": {"reference": "Patient/p1"}, "medicationReference": {"reference": "Medication/w1"}}
    contained = {**order, "id": "m2", "medicationReference": {"reference": "#apx"},
                 "contained": [{"resourceType": "Medication", "id": "apx",
                                "code": {"coding": [{"system": rxnorm, "code": "1364430", "display": "apixaban"}]}}]}
    gone = {**order, "id": "m3", "medicationReference": {"reference": "Medication/gone"}}
    warfarin = {"resourceType": "Medication", "id": "w1",
                "code": {"coding": [{"system": rxnorm, "code": "11289", "display": "Warfarin"}]}}

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/Medication/w1"):
            return httpx.Response(200, json=warfarin)
        if path.endswith("/Medication/gone"):
            return httpx.Response(404, json={"resourceType": "OperationOutcome", "issue": []})
        if path.endswith("/Patient"):
            return httpx.Response(200, json=_bundle([{"resourceType": "Patient", "id": "p1", "identifier": [
                {"system": "urn:oid:1.2.3", "value": "12345"}]}]))
        if path.endswith("/MedicationRequest"):
            return httpx.Response(200, json=_bundle([order, contained]))
        return httpx.Response(200, json=_bundle([]))

    client = FhirClient(BASE, transport=httpx.MockTransport(handler), sleep=lambda s: None)
    context = gather_from_fhir(client, _query("inr"))
    assert [(m.code, m.category) for m in context.medications] == [("11289", "anticoagulant"),
                                                                    ("1364430", "anticoagulant")]
    assert not [e for e in context.errors if e.startswith("medications")]

    def missing(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/MedicationRequest"):
            return httpx.Response(200, json=_bundle([gone]))
        return handler(request)

    context = gather_from_fhir(FhirClient(BASE, transport=httpx.MockTransport(missing), sleep=lambda s: None),
                               _query("inr"))
    assert any(e.startswith("medications: Medication/gone, referenced by MedicationRequest/m3, could not be read")
               for e in context.errors)  # the drug classes are then missing, not "not taken"

    versioned = {**order, "id": "m4", "medicationReference": {"reference": f"{BASE}/Medication/w1/_history/2"}}
    elsewhere = {**order, "id": "m5", "medicationReference": {"reference": "https://other.test/fhir/Medication/w1"}}
    lost = {**order, "id": "m6", "medicationReference": {"reference": "#nothing"}}

    def odd(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/MedicationRequest"):
            return httpx.Response(200, json=_bundle([versioned, elsewhere, lost]))
        return handler(request)

    context = gather_from_fhir(FhirClient(BASE, transport=httpx.MockTransport(odd), sleep=lambda s: None),
                               _query("inr"))
    assert [m.code for m in context.medications if m.code] == ["11289"]  # ours, by its version-less id
    assert sorted(e.split(" references ")[0] for e in context.errors if e.startswith("medications")) == [
        "medications: MedicationRequest/m5", "medications: MedicationRequest/m6"]  # another server's; not contained


def test_a_drug_started_or_a_diagnosis_made_after_the_study_is_not_its_record() -> None:
    """A study analysed again later (or sent late) is read with the record of its time: before, an anticoagulant
    started a week after the scan counted for it, as did a cancer diagnosed since."""
    started_later = {"resourceType": "MedicationRequest", "id": "m1", "status": "active", "intent": "order",
                     "subject": {"reference": "Patient/p1"}, "authoredOn": (NOW + timedelta(days=7)).isoformat(),
                     "medicationCodeableConcept": {"text": "Apixaban 5 mg"}}
    taken_before = {**started_later, "id": "m2", "authoredOn": (NOW - timedelta(days=30)).isoformat(),
                    "medicationCodeableConcept": {"text": "Warfarin 5 mg"}}
    diagnosed_later = {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"},
                       "recordedDate": (NOW + timedelta(days=2)).isoformat(), "code": {"text": "Lung cancer"}}
    done_later = {"resourceType": "Procedure", "id": "p1", "status": "completed", "subject": {"reference": "Patient/p1"},
                  "performedDateTime": (NOW + timedelta(days=1)).isoformat(), "code": {"text": "Craniotomy"}}
    context = gather_from_fhir(_server({"MedicationRequest": lambda r: _bundle([started_later, taken_before]),
                                        "Condition": lambda r: _bundle([diagnosed_later]),
                                        "Procedure": lambda r: _bundle([done_later])}, []), _query("inr"))
    assert [m.display for m in context.medications] == ["Warfarin 5 mg"]
    assert context.conditions == [] and context.procedures == []


def test_a_list_entry_that_is_not_valid_r4_makes_its_section_unread_not_empty() -> None:
    """A warfarin order that was not valid R4 (an authoredOn without an offset) was left out with a log line only:
    the patient read as not anticoagulated, a present 0. A condition likewise."""
    rxnorm = "http://www.nlm.nih.gov/research/umls/rxnorm"
    order = {"resourceType": "MedicationRequest", "id": "m1", "status": "active", "intent": "order",
             "subject": {"reference": "Patient/p1"}, "authoredOn": "2026-12-01T10:00:00",
             "medicationCodeableConcept": {"coding": [{"system": rxnorm, "code": "11289", "display": "warfarin"}]}}
    condition = {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"},
                 "code": {"text": "lung cancer"}, "recordedDate": "last year"}
    context = gather_from_fhir(_server({"MedicationRequest": lambda r: _bundle([order]),
                                        "Condition": lambda r: _bundle([condition])}, []), _query("inr"))
    medications = [e for e in context.errors if e.startswith("medications: MedicationRequest/m1 is not valid R4")]
    conditions = [e for e in context.errors if e.startswith("conditions: Condition/c1 is not valid R4")]
    assert len(medications) == len(conditions) == 1 and context.medications == []
    assert "warfarin" not in medications[0] and "last year" not in conditions[0]
    _, present = encode_clinical("ich", context)
    assert not present[feature_names("ich").index("anticoagulant")]  # missing, not 0
