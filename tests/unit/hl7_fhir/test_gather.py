"""Merging FHIR and HL7 values, and the time budget that keeps a slow EMR off the alert path."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone

from hl7_fhir.context import ClinicalContext, CodedItem, LabValue, Provenance
from hl7_fhir.gather import gather_with_budget, merge_contexts
from hl7_fhir.medication_classes import ATC_SYSTEM, RXNORM_SYSTEM, classify

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)
WINDOW = timedelta(days=90)


def lab(name: str, value: float, days_ago: float, source: str) -> LabValue:
    return LabValue(name, "code", value, "u", NOW - timedelta(days=days_ago),
                    Provenance(source, "origin", f"{source}-{name}-{days_ago}"))


def test_newest_value_wins_with_its_provenance_and_missing_is_explicit() -> None:
    fhir = ClinicalContext(sex="female", age_years=70.0, status="complete",
                           labs={"inr": lab("inr", 1.1, 2, "fhir"), "platelets": lab("platelets", 200, 1, "fhir")})
    hl7 = [lab("inr", 2.9, 0.5, "hl7"), lab("platelets", 90, 5, "hl7"), lab("hemoglobin", 9, 200, "hl7")]
    merged = merge_contexts(fhir, hl7, analytes=["inr", "platelets", "hemoglobin"], as_of=NOW, lookback=WINDOW)
    assert (merged.labs["inr"].value, merged.labs["inr"].provenance.source) == (2.9, "hl7")
    assert (merged.labs["platelets"].value, merged.labs["platelets"].provenance.source) == (200, "fhir")
    assert "hemoglobin" not in merged.labs and merged.missing == ["hemoglobin"]
    assert merged.status == "complete"


def test_emr_down_but_hl7_labs_present_is_partial_and_keeps_the_reason() -> None:
    fhir = ClinicalContext.unavailable("EMR did not answer within 2.0 s")
    merged = merge_contexts(fhir, [lab("inr", 3.1, 1, "hl7")], analytes=["inr"], as_of=NOW, lookback=WINDOW,
                            hl7_birth_date=date(1950, 11, 20), hl7_sex="M", hl7_reason="Fall")
    assert merged.status == "partial" and merged.errors[0] == "EMR did not answer within 2.0 s"
    assert (merged.age_years, merged.sex, merged.reason_for_exam) == (76.0, "male", "Fall")
    assert {e.split(":")[0] for e in merged.errors[1:]} == {"medications", "conditions", "procedures", "family_history"}
    nothing = merge_contexts(fhir, [], analytes=["inr"], as_of=NOW, lookback=WINDOW)
    assert nothing.status == "unavailable" and nothing.missing == ["inr", "age", "sex"]
    assert nothing.errors == ["EMR did not answer within 2.0 s"]


def test_a_smoking_status_corrected_for_the_same_time_replaces_the_first() -> None:
    """HL7 sends a corrected status (OBX-11 C) for the same time; labs took the later one, coded items kept the
    first ("never smoker" stayed after the correction to "current every day smoker")."""
    when = NOW - timedelta(days=1)
    first = CodedItem("266919005", "SCT", "Never smoker", "smoking_status", when, Provenance("hl7", "LAB", "S1"))
    fixed = CodedItem("449868002", "SCT", "Current every day smoker", "smoking_status", when,
                      Provenance("hl7", "LAB", "S2"))
    merged = merge_contexts(ClinicalContext(status="complete"), [], analytes=["smoking_status"], as_of=NOW,
                            lookback=WINDOW, hl7_coded=[first, fixed])
    assert merged.coded_observations["smoking_status"].code == "449868002"


def test_a_fhir_result_that_could_not_be_read_keeps_older_hl7_ones_out_too() -> None:
    """Only an unreadable HL7 result kept older values out: the newest smoking status in the EMR, unreadable, was
    filled by an HL7 'never smoker' of a month before, and an unreadable FHIR INR without a time by any HL7 INR."""
    fhir = ClinicalContext(status="partial", unreadable={"smoking_status": NOW - timedelta(days=2), "inr": None},
                           errors=["smoking_status: the newest result (Observation/s1) holds no value that can be "
                                   "read; older results are not used"])
    never = CodedItem("266919005", "SCT", "Never smoker", "smoking_status", NOW - timedelta(days=30),
                      Provenance("hl7", "LAB", "S1"))
    merged = merge_contexts(fhir, [lab("inr", 1.0, 1, "hl7")], analytes=["smoking_status", "inr"], as_of=NOW,
                            lookback=WINDOW, hl7_coded=[never])
    assert merged.coded_observations == {} and merged.labs == {} and merged.missing == ["smoking_status", "inr",
                                                                                        "age", "sex"]
    assert merged.errors == fhir.errors  # FHIR said why when it gathered
    newer = replace(never, recorded_at=NOW - timedelta(days=1))
    merged = merge_contexts(fhir, [], analytes=["smoking_status"], as_of=NOW, lookback=WINDOW, hl7_coded=[newer])
    assert merged.coded_observations["smoking_status"] == newer
    assert merged.errors == []  # the FHIR result that could not be read is not the newest: its error is taken back


def test_budget_returns_on_time_and_never_raises() -> None:
    release = threading.Event()

    def stuck() -> ClinicalContext:
        release.wait(10)
        return ClinicalContext(status="complete")

    start = time.monotonic()
    late = gather_with_budget(stuck, budget_s=0.2)
    assert time.monotonic() - start < 2.0  # the budget plus slack for a busy machine, far below the 10 s stall
    assert late.status == "unavailable" and late.errors == ["EMR did not answer within 0.2 s"]
    release.set()

    def broken() -> ClinicalContext:
        raise ConnectionError("EMR certificate expired")

    failed = gather_with_budget(broken, budget_s=1.0)
    assert failed.errors == ["EMR query failed: EMR certificate expired"]
    assert gather_with_budget(lambda: ClinicalContext(status="complete"), 1.0).status == "complete"


def test_medication_classes_by_atc_rxnorm_and_name() -> None:
    assert classify([(ATC_SYSTEM, "B01AF02", "")], "") == "anticoagulant"
    assert classify([(RXNORM_SYSTEM, "1191", "")], "") == "antiplatelet"
    assert classify([], "Eliquis (apixaban) 5 mg") == "anticoagulant"
    assert classify([(RXNORM_SYSTEM, "723", "amoxicillin")], "") == ""
