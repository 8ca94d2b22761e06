"""Outbound HL7 ORU^R01: results and critical alerts parse back with hl7apy."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from hl7_fhir.findings import FindingError, OutboundFinding, OutboundStudy
from hl7_fhir.mllp import frame
from hl7_fhir.oru import Endpoints, build_critical_oru, build_oru_result, patient_name_xpn

STUDY = OutboundStudy("1.2.826.0.1.3680043.8.498.7", "ACC9", "MRN42", "HOSP", "urn:oid:1.2.3", "24725-4",
                      "CT Head", "radfusion-ich 0.1.0", datetime(2026, 11, 20, 10, 0, tzinfo=timezone.utc))
ICH = OutboundFinding("Intracranial hemorrhage", "1386000", "SCT", "left parietal | cortex", volume_ml=12.3,
                      score=0.93, critical=True)
SHIFT = OutboundFinding("Midline shift", diameter_mm=4.0, score=0.7)
ENDPOINTS = Endpoints(sending_facility="RAD", receiving_application="RIS", receiving_facility="HOSP")


def obx_rows(text: str) -> list[list[str]]:
    message = parse_message(text, find_groups=True, validation_level=VALIDATION_LEVEL.STRICT)
    assert message.msh.msh_9.to_er7() == "ORU^R01^ORU_R01"
    return [[obx.obx_3.to_er7(), obx.obx_5.to_er7(), obx.obx_8.to_er7(), obx.obx_11.to_er7()]
            for obx in message.oru_r01_patient_result.oru_r01_order_observation.oru_r01_observation
            for obx in [obx.obx]]


def test_result_oru_has_one_obx_per_finding_with_flags() -> None:
    text = build_oru_result(STUDY, [ICH, SHIFT], ENDPOINTS, control_id="R1")
    rows = obx_rows(text)
    assert rows[0] == ["1386000^Intracranial hemorrhage^SCT",
                       "Intracranial hemorrhage, left parietal \\F\\ cortex, volume 12.3 mL, AI score 0.93", "AA", "P"]
    assert rows[1][2:] == ["A", "P"]
    message = parse_message(text, find_groups=False)
    assert message.obr.obr_18.to_er7() == "ACC9" and message.obr.obr_25.to_er7() == "P"
    assert "AI-generated" in message.nte.nte_3.to_er7()


def test_a_reissued_result_is_sent_as_a_correction_of_its_order() -> None:
    """A re-issue after late images went out as a second preliminary result: nothing told the RIS it replaced the
    first, which stayed current where the RIS keeps both."""
    text = build_oru_result(replace(STUDY, result_uid="1.2.3.2", replaces_result_uid="1.2.3.1"), [ICH], ENDPOINTS)
    message = parse_message(text, find_groups=False)
    first = parse_message(build_oru_result(replace(STUDY, result_uid="1.2.3.1"), [ICH], ENDPOINTS), find_groups=False)
    assert message.obr.obr_3.to_er7() == first.obr.obr_3.to_er7()  # the same filler order as the first result
    assert message.obr.obr_25.to_er7() == "C" and [row[3] for row in obx_rows(text)] == ["C"]
    critical = build_critical_oru(replace(STUDY, result_uid="1.2.3.2", replaces_result_uid="1.2.3.1"), [ICH],
                                  ENDPOINTS)
    assert parse_message(critical, find_groups=False).obr.obr_25.to_er7() == "P"  # a page is never a correction


def test_each_series_detector_and_alert_of_a_study_is_an_order_of_its_own() -> None:
    """OBR-3 was the Study Instance UID for every ORU of a study: the chest CT's nodule result of a trauma study, or
    the result of its second reconstruction, went to the RIS as the same filler order as the head's hemorrhage
    result, and a RIS that keeps one result per order kept the last."""
    def order(study: OutboundStudy, critical: bool = False) -> tuple[str, str]:
        text = (build_critical_oru if critical else build_oru_result)(study, [ICH], ENDPOINTS)
        obr = parse_message(text, find_groups=False).obr
        return obr.obr_3.to_er7(), obr.obr_20.to_er7()

    head = replace(STUDY, order_scope="1.2.826.0.1.3680043.8.498.7.1")
    orders = [order(head), order(replace(head, order_scope="1.2.826.0.1.3680043.8.498.7.2")),
              order(replace(head, algorithm="radfusion-nodule 0.1.0")), order(head, critical=True)]
    assert len({filler for filler, _ in orders}) == 4
    assert all(len(filler) <= 22 for filler, _ in orders)  # OBR-3's length in HL7 2.5.1
    assert {study_uid for _, study_uid in orders} == {STUDY.study_instance_uid}  # OBR-20 names the study
    assert order(replace(head, result_uid="1.2.3.9")) == orders[0]  # results of one series and detector: one order


def test_the_result_s_notes_on_the_case_come_as_nte_segments_before_the_ai_note() -> None:
    noted = replace(STUDY, notes=("image-only: the EMR did not answer within 2 s", "gantry tilt 12.0 degrees"))
    message = parse_message(build_oru_result(noted, [ICH], ENDPOINTS), find_groups=False)
    notes = [s.nte_3.to_er7() for s in message.children if s.name == "NTE"]
    assert notes[:2] == list(noted.notes) and notes[2].startswith("AI-generated")


def test_a_fhir_coding_system_is_sent_by_its_hl7_table_0396_name() -> None:
    snomed = OutboundFinding("Intracranial hemorrhage", "1386000", "http://snomed.info/sct", volume_ml=12.3)
    assert obx_rows(build_oru_result(STUDY, [snomed], ENDPOINTS))[0][0] == "1386000^Intracranial hemorrhage^SCT"


def test_result_without_findings_says_so_with_a_normal_flag() -> None:
    rows = obx_rows(build_oru_result(STUDY, [], ENDPOINTS))
    assert rows == [["^No finding detected by radfusion-ich 0.1.0", "No finding detected by radfusion-ich 0.1.0",
                     "N", "P"]]


def test_critical_oru_is_stat_with_confirm_note_and_needs_a_critical_finding() -> None:
    text = build_critical_oru(STUDY, [ICH, SHIFT], ENDPOINTS, control_id="C1")
    assert [r[2] for r in obx_rows(text)] == ["AA"]
    message = parse_message(text, find_groups=False)
    notes = [s.nte_3.to_er7() for s in message.children if s.name == "NTE"]
    assert notes[0].startswith("CRITICAL RESULT: AI-detected Intracranial hemorrhage")
    assert message.obr.obr_27.to_er7() == "^^^^^S"
    with pytest.raises(FindingError, match="no critical finding"):
        build_critical_oru(STUDY, [SHIFT], ENDPOINTS)


def test_findings_check_their_arguments() -> None:
    with pytest.raises(FindingError, match="score must be within"):
        OutboundFinding("x", score=1.5)
    with pytest.raises(FindingError, match="not a DICOM UID"):
        OutboundStudy("1.2.abc", "", "M", "", "s", "c", "d", "a")


def test_pid_5_carries_the_images_patient_name_and_msh_18_says_utf_8() -> None:
    named = replace(STUDY, patient_name="Müller-Lüdenscheidt^Anna^Q^Dr^Jr=ミュラー^アンナ")
    text = build_oru_result(named, [ICH], ENDPOINTS, control_id="R2")
    obx_rows(text)  # still valid under strict validation
    message = parse_message(text, find_groups=False)
    assert message.msh.msh_18.to_er7() == "UNICODE UTF-8"
    assert message.pid.pid_5.to_er7() == "Müller-Lüdenscheidt^Anna^Q^Jr^Dr^^L"  # XPN: suffix before prefix
    assert message.pid.pid_3.to_er7() == "MRN42^^^HOSP^MR"
    assert frame(text).decode("utf-8")[1:-2] == text


@pytest.mark.parametrize(("dicom_name", "xpn"), [("", ""), ("^", ""), ("DOE", "DOE^^^^^^L"),
                                                  ("O|Brien^Pat", "O\\F\\Brien^Pat^^^^^L"),
                                                  ("=山田^太郎", "山田^太郎^^^^^L")])  # ideographic group only
def test_patient_name_xpn(dicom_name: str, xpn: str) -> None:
    assert patient_name_xpn(dicom_name) == xpn
