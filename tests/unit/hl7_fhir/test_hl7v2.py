"""Inbound HL7 v2 parsing and the ACK rules of MSH-15/16."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from hl7apy.parser import parse_message

from hl7_fhir.er7 import escape, unescape
from hl7_fhir.hl7v2 import (
    Hl7MessageError,
    build_ack,
    error_ack,
    parse,
    parse_demographics,
    parse_labs,
    parse_order,
    read_header,
)
from tests.unit.hl7_fhir.messages import adt, orm, oru


def test_oru_labs_are_normalized_with_time_flags_and_provenance() -> None:
    report = parse_labs(parse(oru("C1", platelets="0.15", unit="10\\S\\3/µL")))  # "10^3/µL" escaped
    labs = {v.name: v for v in report.values}
    assert labs["platelets"].value == pytest.approx(0.15) and labs["platelets"].unit == "10*9/L"
    assert labs["inr"].value == 2.5 and labs["inr"].flags == "H"
    assert labs["inr"].observed_at == datetime(2026, 11, 20, 9, 0, tzinfo=timezone.utc)
    assert labs["platelets"].provenance.source == "hl7"
    assert labs["platelets"].provenance.record_id == "C1/OBX1"
    assert report.skipped_codes == ["789-8"]
    assert report.coded[0].category == "smoking_status" and report.coded[0].code == "449868002"
    assert [(i.value, i.authority, i.type_code) for i in report.identifiers] == [
        ("12345", "HOSP", "MR"), ("999", "SSA", "SS")]


def test_oru_with_a_local_code_first_is_read_by_its_alternate_loinc_code() -> None:
    message = oru("C4").replace("777-3^Platelets^LN", "PLT^Platelet count^L^777-3^Platelets^LN").replace(
        "6301-6^INR^LN", "INR^INR^99LAB^6301-6^INR^LN")
    report = parse_labs(parse(message))
    assert {(v.name, v.code) for v in report.values} == {("platelets", "777-3"), ("inr", "6301-6")}
    assert report.skipped_codes == ["789-8"]


def test_oru_with_unknown_unit_or_bad_number_is_an_application_error() -> None:
    with pytest.raises(Hl7MessageError, match="unit 'furlongs'") as info:
        parse_labs(parse(oru("C2", unit="furlongs")))
    assert info.value.ack_code == "AE"
    with pytest.raises(Hl7MessageError, match="OBX 2 .6301-6."):
        parse_labs(parse(oru("C3", inr="high")))


def test_adt_and_order_content() -> None:
    demo = parse_demographics(parse(adt("A1")))
    assert (demo.birth_date.isoformat(), demo.sex) == ("1950-01-01", "F")
    order = parse_order(parse(orm("O1")))
    assert (order.accession, order.placer_number, order.filler_number) == ("ACC123", "PL9", "FL9")
    assert order.reason_for_exam == "Fall from ladder, on warfarin"
    assert order.procedure == "CT Head without contrast"


@pytest.mark.parametrize("text, code, error", [
    ("not hl7 at all", "AR", "100"),
    ("MSH|^~\\&|A|B|C|D|2026||ZZZ^Z99|X1|P|2.5\rPID|1", "AR", "200"),
    ("MSH|^~\\&|A|B|C|D|2026||ORU^R01|X1|P|9.9\rPID|1", "AR", "203"),
    ("MSH|^~\\&|A|B|C|D|2026||ORU^R01||P|2.5\rPID|1", "AR", "101"),
])
def test_unusable_messages_are_rejected_with_a_table_0357_code(text: str, code: str, error: str) -> None:
    with pytest.raises(Hl7MessageError) as info:
        parse(text)
    assert (info.value.ack_code, info.value.hl7_error) == (code, error)


@pytest.mark.parametrize("modes, code, expected", [
    ("", "AA", "AA"), ("", "AE", "AE"),                     # original mode: always an application ACK
    ("|||AL|AL", "AA", "AA"), ("|||NE|AL", "AR", "AR"),
    ("|||AL|NE", "AA", "CA"), ("|||AL|NE", "AE", "CE"),    # commit ACK only
    ("|||NE|NE", "AA", None), ("|||NE|NE", "AE", None),    # nothing wanted
    ("|||NE|ER", "AA", None), ("|||NE|ER", "AE", "AE"),
    ("|||NE|SU", "AA", "AA"), ("|||ER|SU", "AR", "CR"),
])
def test_ack_follows_msh15_and_msh16(modes: str, code: str, expected: str | None) -> None:
    header = read_header(adt("M1", ack_modes=modes))
    ack = build_ack(header, code, "text")
    if expected is None:
        assert ack is None
        return
    segments = ack.split("\r")
    assert segments[1].split("|")[:3] == ["MSA", expected, "M1"]
    assert segments[0].split("|")[2:6] == ["RADFUSION", "RAD", "ADT", "HOSP"]
    assert any(s.startswith("ERR|") for s in segments) == (code != "AA")
    parse_message(ack.replace("|P|2.3", "|P|2.5"))  # a well-formed message


def test_error_ack_for_a_frame_without_msh_still_parses() -> None:
    ack = error_ack("\x00garbage|", "AR", "no MSH segment")
    assert ack.split("\r")[1] == "MSA|AR||no MSH segment"
    assert parse_message(ack).msa.msa_1.value == "AR"


def test_escape_round_trip() -> None:
    text = "a|b^c~d\\e&f\rg"
    assert "|" not in escape(text) and unescape(escape(text)) == text
