"""Inbound HL7 v2 parsing and the ACK rules of MSH-15/16."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest
from hl7apy.parser import parse_message

from hl7_fhir.er7 import escape, unescape
from hl7_fhir.hl7v2 import (
    Hl7MessageError,
    build_ack,
    content_digest,
    error_ack,
    parse,
    parse_demographics,
    parse_labs,
    parse_orders,
    parse_ts,
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
    assert [(i.value, i.authority, i.type_code) for i in report.identifiers] == [  # HOSP&1.2.3&ISO: under both
        ("12345", "HOSP", "MR"), ("12345", "1.2.3", "MR")]  # the social-security number 999 names no record


def test_oru_with_a_local_code_first_is_read_by_its_alternate_loinc_code() -> None:
    message = oru("C4").replace("777-3^Platelets^LN", "PLT^Platelet count^L^777-3^Platelets^LN").replace(
        "6301-6^INR^LN", "INR^INR^99LAB^6301-6^INR^LN")
    report = parse_labs(parse(message))
    assert {(v.name, v.code) for v in report.values} == {("platelets", "777-3"), ("inr", "6301-6")}
    assert report.skipped_codes == ["789-8"]


def test_an_obx_that_cannot_be_read_is_left_out_and_the_rest_is_kept() -> None:
    """Rejecting the whole message (AE) made the sender resend it forever and lost every good value in it."""
    report = parse_labs(parse(oru("C2", unit="furlongs", inr="high")))
    assert report.values == [] and [u.split(":")[0] for u in report.unusable] == ["OBX 1 (777-3)", "OBX 2 (6301-6)"]
    assert "unit 'furlongs'" in report.unusable[0] and report.coded  # the smoking status is still read
    late = parse_labs(parse(oru("C3").replace("|F|||20261120100000", "|F|||2026112010000")))  # OBX 1's time cut
    assert [v.name for v in late.values] == ["inr"] and late.unusable[0].startswith("OBX 1 (777-3): time: HL7")
    assert [(r.analyte, r.observed_at) for r in late.unreadable] == [  # as of the message: older ones not current
        ("platelets", datetime(2026, 11, 20, 10, 30).astimezone())]


@pytest.mark.parametrize(("value_type", "value", "expected"), [
    ("SN", ">^10", 10.0), ("SN", "^1.7", 1.7), ("ST", "<0.5", 0.5), ("NM", "2.5", 2.5)])
def test_structured_and_bounded_numbers_are_read_at_their_value(value_type: str, value: str, expected: float) -> None:
    message = oru("S1").replace("OBX|2|NM|6301-6^INR^LN||2.5|", f"OBX|2|{value_type}|6301-6^INR^LN||{value}|")
    assert {v.name: v.value for v in parse_labs(parse(message)).values}["inr"] == expected


def test_an_obx_value_that_is_no_number_is_not_quoted_back() -> None:
    """Free text in OBX-5 may name the patient: float()'s message quoted it into the ACK and the log."""
    text = "Result cancelled: specimen labelled SMITH JOHN 19500101 MRN PHIMRN77 mismatch"
    report = parse_labs(parse(oru("Q1").replace("OBX|2|NM|6301-6^INR^LN||2.5|", f"OBX|2|ST|6301-6^INR^LN||{text}|")))
    assert report.unusable == ["OBX 2 (6301-6): OBX-5 (value type ST) is not a number"]
    ratio = parse_labs(parse(oru("Q2").replace("OBX|2|NM|6301-6^INR^LN||2.5|", "OBX|2|SN|6301-6^INR^LN||^1^:^2|")))
    assert ratio.unusable == ["OBX 2 (6301-6): OBX-5 is a structured ratio or range, not one number"]  # was 1


def test_a_malformed_offset_is_not_quoted_back() -> None:
    with pytest.raises(ValueError) as raised:
        parse_ts("19500101-0x")
    assert "0x" not in str(raised.value) and "offset" in str(raised.value)


def test_result_status_x_and_w_hold_no_value_and_d_deletes() -> None:
    cannot = parse_labs(parse(oru("X1", inr="").replace("|H|||F|||2026", "|H|||X|||2026")))
    assert [v.name for v in cannot.values] == ["platelets"] and "result status X" in cannot.unusable[0]
    deleted = parse_labs(parse(oru("D1").replace("|H|||F|||2026", "|H|||D|||2026")))
    assert [v.name for v in deleted.values] == ["platelets"] and deleted.deleted[0].analyte == "inr"
    assert (deleted.deleted[0].order, cannot.deleted[0].order) == ("FL1", "FL1")  # X withdraws its order's value
    assert deleted.values[0].provenance.order == "FL1"


def test_each_order_s_time_and_the_sender_s_zone_date_its_results() -> None:
    message = (oru("T1").replace("OBX|1|NM|777-3^Platelets^LN||150|10*3/uL|150-400|N|||F|||20261120100000",
                                 "OBX|1|NM|777-3^Platelets^LN||150|10*3/uL|150-400|N|||F")
               .replace("20261120103000", "20261120103000+0100")
               + "OBR|2|PL2|FL2|34714-6^INR^LN|||20261120090000\n"
               + "OBX|5|NM|34714-6^INR^LN||3.1|{INR}|||||F\n")
    report = parse_labs(parse(message))
    times = {v.name: v.observed_at for v in report.values}
    assert times["platelets"] == datetime(2026, 11, 20, 10, 0, tzinfo=timezone(timedelta(hours=1)))  # OBR 1
    assert times["inr"] == datetime(2026, 11, 20, 9, 0, tzinfo=timezone(timedelta(hours=1)))  # its own OBR


def test_a_time_without_any_offset_is_local_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """An interface engine in Berlin writes 10:00 local: that is 09:00 UTC, not 10:00 UTC (before: a result of
    30 minutes ago looked 30 minutes in the future and was dropped by the gatherer)."""
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    try:
        report = parse_labs(parse(oru("L1")))  # MSH-7 and the platelets' OBX-14 carry no offset
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    platelets = next(v for v in report.values if v.name == "platelets")
    assert platelets.observed_at == datetime(2026, 11, 20, 9, 0, tzinfo=timezone.utc)
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    try:  # sent in winter (UTC+1), drawn in summer (UTC+2): each time in its own offset, not the sender's
        summer = parse_labs(parse(oru("L2").replace("|F|||20261120100000", "|F|||20260710100000")))
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    drawn = next(v for v in summer.values if v.name == "platelets").observed_at
    assert drawn == datetime(2026, 7, 10, 8, 0, tzinfo=timezone.utc)
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:  # MSH-7 names New York's winter offset, which is ours: a July value still gets July's -04:00
        named = parse_labs(parse(oru("L3").replace("20261120103000", "20261120103000-0500")
                                 .replace("|F|||20261120100000", "|F|||20260710100000")))
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    drawn = next(v for v in named.values if v.name == "platelets").observed_at
    assert drawn == datetime(2026, 7, 10, 14, 0, tzinfo=timezone.utc)


def test_an_hl7_null_birth_date_is_no_birth_date() -> None:
    assert parse_demographics(parse(adt("N1").replace("||19500101|F", '||""|F'))).birth_date is None
    for wrong in ("1950-01-01", "19370000", "19261320"):  # the form, and dates of that form that are none
        with pytest.raises(Hl7MessageError) as info:
            parse_demographics(parse(adt("N2").replace("||19500101|F", f"||{wrong}|F")))
        assert wrong[:4] not in str(info.value) and wrong[-2:] not in str(info.value)  # never in a log line


def test_a_frame_without_msh_is_named_by_its_first_segment_only() -> None:
    """Before, the error (logged) quoted the frame's first 20 characters: a PID's patient identifier."""
    with pytest.raises(Hl7MessageError) as info:
        read_header("PID|1||PHI-NOMSH-321^^^HOSP^MR||DOE^JANE")
    assert "PHI" not in str(info.value) and "'PID'" in str(info.value)


def test_adt_and_order_content() -> None:
    demo = parse_demographics(parse(adt("A1")))
    assert (demo.birth_date.isoformat(), demo.sex) == ("1950-01-01", "F")
    ipc_first = orm("O2").replace("ORC|NW|PL9|FL9\n", "IPC|ACC9|REQ1|1.2.3|1.2.3.4\nORC|NW|PL9|FL9\n")
    assert [o.accession for o in parse_orders(parse(ipc_first))] == ["ACC9", "ACC123"]  # was an IndexError
    order, = parse_orders(parse(orm("O1")))
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


def test_a_resend_has_the_digest_of_its_original_and_another_message_does_not() -> None:
    """A control id reused for another message is told from a resend by this digest: line endings, MSH-7 and
    trailing empty fields (an engine that re-serialises on resend) must not make a resend look new."""
    original = oru("D1")
    resends = [original.replace("\n", "\r\n"), original.replace("20261120103000", "20261120113000"),
               original.replace("||19500101|F\n", "||19500101|F|||\n")]
    assert {content_digest(text) for text in resends} == {content_digest(original)}
    assert content_digest(oru("D1", inr="4.8")) != content_digest(original)
