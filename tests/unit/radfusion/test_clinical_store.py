"""Stored HL7 values as a job sees them: corrections, deletions, senders, orders and assigning authorities."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import select, update

from hl7_fhir.context import ClinicalContext
from hl7_fhir.gather import ClinicalQuery
from hl7_fhir.hl7v2 import PatientIdentifier
from hl7_fhir.inbox import Hl7Inbox
from radfusion import clinical
from radfusion.clinical import ClinicalGatherer, Hl7Store, StudyPatient
from radfusion.db import Database
from radfusion.models import AuditEvent, ClinicalValue, Hl7Message, utcnow
from radfusion.settings import load_settings
from tests.unit.hl7_fhir.messages import adt, orm, oru

STUDY_TIME = datetime(2026, 11, 20, 10, 0, tzinfo=timezone.utc)  # the test ORU's INR is of 09:00 UTC


@pytest.fixture
def stored(tmp_path: Path):  # noqa: ANN201 - (send, context) helpers over one database
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store = Hl7Store(db)
    inbox = Hl7Inbox(store.seen, store.on_labs, store.on_demographics, store.on_order, store.on_merge,
                     store.on_rejected)
    gatherer = ClinicalGatherer(load_settings(storage_path=tmp_path).clinical, db)

    def send(message: str) -> str:
        return inbox.handle(message.replace("\n", "\r")).ack or ""

    def context(issuer: str = "HOSP", accession: str = "ACC123",  # noqa: ANN202
                performed_at: datetime | None = STUDY_TIME):
        return gatherer.context_for(StudyPatient(1, "12345", issuer, accession, performed_at), ["inr", "platelets"])

    yield send, context
    gatherer.close()


def _observed(message: str, day: str) -> str:
    """``message`` (the test ORU) with its values observed on ``day`` (YYYYMMDD) instead of 2026-11-20: another
    draw, so another order."""
    return (message.replace("20261120100000", f"{day}100000").replace("202611201000+0100", f"{day}1000+0100")
            .replace("|PL1|FL1|", f"|PL{day}|FL{day}|"))


def test_a_study_is_read_with_the_values_of_its_own_time(stored) -> None:  # noqa: ANN001
    """A study sent late, or analysed again, is read as of when it was performed: before, a scan of 20 November
    was read with the INR of five days later (after the bleed was treated)."""
    send, context = stored
    send(oru("E1", inr="3.1"))
    send(_observed(oru("L1", inr="1.2"), "20261125"))
    assert context().labs["inr"].value == 3.1
    assert "inr" not in context(performed_at=STUDY_TIME - timedelta(hours=4)).labs  # drawn 3 h after that scan
    yesterday = (utcnow() - timedelta(days=1)).strftime("%Y%m%d")
    send(_observed(oru("Y1", inr="1.4"), yesterday))
    assert context(performed_at=None).labs["inr"].value == 1.4  # no date and time: as of the present


def _status(message: str, status: str) -> str:
    return message.replace("|H|||F|||2026", f"|H|||{status}|||2026")


def test_a_corrected_result_replaces_the_original_and_a_deleted_one_is_gone(stored) -> None:  # noqa: ANN001
    send, context = stored
    send(oru("F1", inr="1.5"))
    send(_status(oru("C1", inr="3.5"), "C"))  # the same observation time, corrected
    assert context().labs["inr"].value == 3.5  # before: the first one stored won the tie
    send(_status(oru("D1", inr="3.5"), "D"))
    assert "inr" not in context().labs and context().labs["platelets"].value == 150.0


def test_a_result_is_taken_back_by_its_order_whatever_time_each_message_gives_it(stored) -> None:  # noqa: ANN001
    """The original was timed by its OBX-14, the deletion (no OBX-14) by OBR-7: nothing was deleted, yet the ACK
    said "1 deleted" and INR 4.5 stayed in use."""
    send, context = stored
    send(oru("O1", inr="4.5"))  # INR observed 09:00 UTC (OBX-14), order FL1 of 10:00 local
    deletion = _status(oru("O2", inr=""), "D").replace("|H|||D|||202611201000+0100", "|H|||D")
    assert "MSA|AA|O2|stored 2 values; 1 taken back, 1 stored value removed" in send(deletion)  # + platelets, smoking
    assert "inr" not in context().labs
    again = send(deletion.replace("|O2|", "|O3|"))
    assert "1 taken back, 0 stored values removed" in again  # said as it is, and warned of in an ERR segment
    assert "|W|" in again and "no stored value matched 1 of the 1 result(s) taken back" in again


def test_a_retraction_that_matches_nothing_beside_one_that_does_is_warned_of(stored) -> None:  # noqa: ANN001
    """Only a message whose retractions all missed was warned of: the platelets taken back under another order
    number stayed in use behind a plain AA."""
    send, context = stored
    send(oru("R1"))
    ack = send("MSH|^~\\&|LAB|HOSP|RADFUSION|RAD|20261120113000||ORU^R01^ORU_R01|R2|P|2.5.1\n"
               "PID|1||12345^^^HOSP&1.2.3&ISO^MR\nOBR|1|PL1|FL1|57021-8^CBC^LN|||20261120100000\n"
               "OBX|1|NM|6301-6^INR^LN||2.5|{INR}|0.8-1.2|H|||D|||202611201000+0100\n"
               "OBR|2|PL77|FL77|57021-8^CBC^LN|||20261120100000\n"
               "OBX|1|NM|777-3^Platelets^LN||150|10*3/uL|150-400|N|||D|||20261120100000\n")
    assert "2 taken back, 1 stored value removed" in ack
    assert "no stored value matched 1 of the 2 result(s) taken back" in ack


def test_a_preliminary_result_withdrawn_as_cannot_be_obtained_is_gone(stored) -> None:  # noqa: ANN001
    send, context = stored
    send(_status(oru("P1", inr="1.9"), "P"))
    send(_status(oru("P2", inr=""), "X").replace("|X|||202611201000+0100", "|X"))  # no OBX-14: by its order
    assert "inr" not in context().labs  # before: the preliminary 1.9 stayed


def test_a_final_result_replaces_its_order_s_preliminary_one(stored) -> None:  # noqa: ANN001
    send, context = stored
    send(_status(oru("P3", inr="1.9"), "P"))
    send(oru("P4", inr="2.6"))  # final, the same specimen time
    assert context().labs["inr"].value == 2.6


def test_a_lab_that_reuses_an_order_number_keeps_each_draw(stored) -> None:  # noqa: ANN001
    """The next day's INR under the same OBR-3 deleted the study day's: the study read again had no INR."""
    send, context = stored
    send(oru("N1", inr="3.1"))
    send(_observed(oru("N2", inr="1.2"), "20261121").replace("|PL20261121|FL20261121|", "|PL1|FL1|"))
    assert context().labs["inr"].value == 3.1


def test_deleting_one_of_two_results_of_an_order_keeps_the_other(stored) -> None:  # noqa: ANN001
    send, context = stored
    send(oru("T1", inr="3.0") + "OBX|5|NM|6301-6^INR^LN||2.0|{INR}|||||F|||202611200800+0100\n")  # 09:00 and 07:00
    ack = send(_status(oru("T3", inr=""), "D"))  # the 09:00 one, by its OBX-14
    assert "1 taken back, 1 stored value removed" in ack
    assert context().labs["inr"].value == 2.0


def test_a_later_result_of_an_order_replaces_the_earlier_whatever_times_they_carry(stored) -> None:  # noqa: ANN001
    """A final result replaces its preliminary one although one took its time from MSH-7 and the other from OBX-14,
    and a withdrawal (X) or a wrong-patient retraction (W) with an OBX-14 of its own takes its order's value back."""
    send, context = stored
    send(_status(oru("F1", inr="1.9"), "P").replace("|P|||202611201000+0100", "|P"))  # timed by MSH-7 (10:30)
    send(oru("F2", inr="2.6"))  # final, OBX-14 09:00 UTC
    assert context().labs["inr"].value == 2.6
    send(_status(oru("F3", inr="1.9"), "P").replace("|PL1|FL1|", "|PL2|FL2|"))
    send(_status(oru("F4", inr=""), "X").replace("|PL1|FL1|", "|PL2|FL2|").replace("202611201000+0100",
                                                                                     "202611201130+0100"))
    assert context().labs["inr"].value == 2.6  # the withdrawn preliminary of order 2 is gone
    ack = send(_status(oru("F5", inr="2.6"), "W").replace("202611201000+0100", "202611201105+0100"))
    assert "1 stored value removed" in ack and "inr" not in context().labs


def test_an_oru_does_not_override_the_registration_s_demographics(stored) -> None:  # noqa: ANN001
    send, context = stored
    send(adt("AD9", event="A04"))  # F
    send(oru("DU1").replace("||19500101|F", "||19500101|U"))
    assert context().sex == "female"  # before: "unknown", from the lab's PID-8


def test_a_retraction_takes_back_a_value_stored_before_order_numbers_were(stored, tmp_path) -> None:  # noqa: ANN001
    """Rows from before migration 0004 have no order: a retraction naming one still takes them back by time."""
    send, context = stored
    send(oru("V1", inr="4.8"))
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with db.session() as session:
        session.execute(update(ClinicalValue).values(order_number=""))
    assert "1 stored value removed" in send(_status(oru("V2", inr="4.8"), "W"))
    assert "inr" not in context().labs


def test_a_newest_result_that_cannot_be_read_makes_the_analyte_missing(stored) -> None:  # noqa: ANN001
    """'3,4' in the newest INR's OBX-5: before, the ACK said "not used" and the INR of 27 days before was read as
    the patient's current one."""
    send, context = stored
    send(_observed(oru("R1", inr="1.0"), "20261024"))
    send(oru("R2", inr="3,4"))
    context_now = context()
    assert "inr" not in context_now.labs and context_now.labs["platelets"].value == 150
    assert "inr: the newest result (2026-11-20T09:00+00:00) could not be read; older results are not used" in (
        context_now.errors)
    send(_status(oru("R3", inr="3.4"), "C"))  # the lab corrects it: its order's unreadable result is replaced
    assert context().labs["inr"].value == 3.4 and not any("could not be read" in e for e in context().errors)
    send(oru("R4", inr="high"))
    send(_status(oru("R5", inr="3.6"), "C").replace("|PL1|FL1|", "|PLX|FLX|"))  # corrected under another order
    assert context().labs["inr"].value == 3.6


def test_a_result_posted_to_the_wrong_patient_is_taken_back(stored) -> None:  # noqa: ANN001
    send, context = stored
    send(oru("W0", inr="4.8"))
    ack = send(_status(oru("W1", inr="4.8"), "W"))  # the INR's OBX-11
    assert "MSA|AA|W1" in ack
    assert "inr" not in context().labs  # before: 4.8 stayed in this patient's record


def test_an_oru_with_two_patients_is_refused_and_stores_nothing(stored) -> None:  # noqa: ANN001
    send, context = stored
    two = oru("P2", inr="1.0") + ("PID|2||222^^^HOSP^MR\nOBR|2|PL2|FL2|6301-6^INR^LN|||20261120100000\n"
                                  "OBX|1|NM|6301-6^INR^LN||4.8|{INR}|0.8-1.2|H|||F|||20261120100000\n")
    ack = send(two)
    assert "MSA|AE|P2" in ack and "2 patients" in ack  # before: AA, and 222's INR 4.8 stored under 12345
    assert context().labs == {}
    same = oru("P3") + "PID|2||12345^^^HOSP^mr\n"  # the same patient again, written another way, is one
    assert "MSA|AA|P3" in send(same) and context().labs["inr"].value == 2.5


def test_an_account_number_in_pid_3_does_not_match_a_study_s_patient_id(stored) -> None:  # noqa: ANN001
    send, context = stored
    send(oru("A1").replace("12345^^^HOSP&1.2.3&ISO^MR~999^^^SSA^SS", "777^^^HOSP^MR~12345^^^^AN"))
    assert context().labs == {}  # before: the account number 12345 matched the study's Patient ID 12345
    send(oru("A2").replace("12345^^^HOSP&1.2.3&ISO^MR~999^^^SSA^SS", "777^^^HOSP^MR~12345^^^^MC"))
    assert context().labs == {}  # a Medicare number without authority is not a record number either
    send(oru("A3").replace("12345^^^HOSP&1.2.3&ISO^MR~999^^^SSA^SS", "12345^^^HOSP^MRN"))
    assert context().labs["inr"].value == 2.5  # a record number under a type name of its own is still one


def test_two_senders_may_use_the_same_control_id(stored) -> None:  # noqa: ANN001
    send, context = stored
    send(oru("1001", platelets="77"))
    ack = send(oru("1001", platelets="33").replace("MSH|^~\\&|LAB|HOSP", "MSH|^~\\&|POCT|HOSP"))
    assert "duplicate" not in ack and "MSA|AA|1001" in ack


def test_an_order_without_accession_does_not_override_the_study_s_own(stored) -> None:  # noqa: ANN001
    send, context = stored
    send(orm("O1"))
    send(orm("O2").replace("ACC123", "").replace("Fall from ladder, on warfarin", "Abdominal pain"))
    assert context().reason_for_exam == "Fall from ladder, on warfarin"
    assert context(accession="OTHER", performed_at=None).reason_for_exam == "Abdominal pain"  # received now


def test_a_cancelled_order_takes_back_its_reason(stored) -> None:  # noqa: ANN001
    send, context = stored
    send(orm("O1"))
    assert context().reason_for_exam == "Fall from ladder, on warfarin"
    assert "MSA|AA|O2" in send(orm("O2").replace("ORC|NW|", "ORC|CA|"))
    assert context().reason_for_exam is None  # before: the cancelled order's reason still set the trauma feature


def test_every_order_of_an_order_message_counts(stored) -> None:  # noqa: ANN001
    """Only the first ORC/OBR group was read: a second order's reason was never stored, and the cancellation of a
    second order was ignored, its reason still served."""
    send, context = stored

    def order(control: str, accession: str, reason: str) -> str:
        obr = ["OBR", "1", f"PL{accession}", f"FL{accession}", "CTHEAD^CT Head"] + [""] * 27
        obr[18], obr[31] = accession, f"^{reason}"
        return f"ORC|{control}|PL{accession}|FL{accession}||||||||||||||duplicate order\n" + "|".join(obr) + "\n"

    header = orm("G1").split("ORC|")[0]
    ack = send(header + order("NW", "ACC1", "fall") + order("NW", "ACC2", "headache, on warfarin"))
    assert "MSA|AA|G1|stored 2 order(s)" in ack
    assert context(accession="ACC2").reason_for_exam == "headache, on warfarin"
    assert context(accession="ACC1").reason_for_exam == "fall"  # ORC-16 ("duplicate order") is not a reason
    send(header.replace("|G1|", "|G2|") + order("NW", "ACC3", "seizure") + order("CA", "ACC2", "x"))
    assert context(accession="ACC2").reason_for_exam is None and context(accession="ACC3").reason_for_exam == "seizure"


def test_an_order_without_accession_counts_only_for_two_days(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store = Hl7Store(db)
    inbox = Hl7Inbox(store.seen, store.on_labs, store.on_demographics, store.on_order, store.on_merge)
    gatherer = ClinicalGatherer(load_settings(storage_path=tmp_path).clinical, db)
    inbox.handle(orm("O1").replace("ACC123", "").replace("\n", "\r"))
    patient = StudyPatient(1, "12345", "HOSP", "ACC999")
    assert gatherer.context_for(patient, ["inr"]).reason_for_exam == "Fall from ladder, on warfarin"
    with db.session() as session:  # the same order, received a week ago
        session.execute(update(Hl7Message).values(received_at=utcnow() - timedelta(days=7)))
    assert gatherer.context_for(patient, ["inr"]).reason_for_exam is None  # before: used for any later study
    week_ago = utcnow() - timedelta(days=7)  # studies of a week ago, sent or analysed now
    assert gatherer.context_for(StudyPatient(1, "12345", "HOSP", "ACC999", week_ago + timedelta(hours=1)),
                                ["inr"]).reason_for_exam == "Fall from ladder, on warfarin"  # ordered just before it
    assert gatherer.context_for(StudyPatient(1, "12345", "HOSP", "ACC999", week_ago - timedelta(days=1)),
                                ["inr"]).reason_for_exam is None  # ordered after it: for a later exam
    no_accession = StudyPatient(1, "12345", "HOSP", "")  # a study without accession: the old order is no match
    assert gatherer.context_for(no_accession, ["inr"]).reason_for_exam is None
    gatherer.close()


def test_a_patient_merge_brings_the_prior_record_s_labs_to_the_surviving_id(stored) -> None:  # noqa: ANN001
    send, context = stored
    send(oru("M1").replace("PID|1||12345^^^HOSP&1.2.3&ISO^MR~999^^^SSA^SS", "PID|1||777^^^HOSP^MR"))
    assert "inr" not in context().labs  # the labs came under a duplicate registration, 777
    ack = send("MSH|^~\\&|ADT|HOSP|RADFUSION|RAD|20261120103000||ADT^A40^ADT_A39|MG1|P|2.5.1\n"
               "EVN|A40|20261120103000\nPID|1||12345^^^HOSP&1.2.3&ISO^MR\nMRG|777^^^HOSP^MR\n")
    assert "MSA|AA|MG1" in ack  # before: AR, "message type not handled"
    assert context().labs["inr"].value == 2.5 and context(issuer="1.2.3").labs["inr"].value == 2.5


def test_a_merge_keeps_the_surviving_record_s_birth_date_and_sex(stored) -> None:  # noqa: ANN001
    """A trauma alias (born 1900-01-01, sex unknown, registered last) merged into the real record: its birth date
    and sex became the patient's (age 126.9, sex unknown)."""
    send, context = stored
    send(adt("AD1", event="A04"))  # 12345^^^HOSP: born 1950-01-01, F
    send(adt("AD2", event="A04").replace("12345^^^HOSP^MR||Doe^Jane||19500101|F", "TRAUMA9^^^HOSP^MR||Trauma^Nine||"
                                                                                   "19000101|U"))
    ack = send("MSH|^~\\&|ADT|HOSP|RADFUSION|RAD|20261120113000||ADT^A40^ADT_A39|MG2|P|2.5.1\n"
               "EVN|A40|20261120113000\nPID|1||12345^^^HOSP^MR||Doe^Jane||19500102|F\nMRG|TRAUMA9^^^HOSP^MR\n")
    assert "MSA|AA|MG2" in ack
    garbled = send("MSH|^~\\&|ADT|HOSP|RADFUSION|RAD|20261120113000||ADT^A40^ADT_A39|MG4|P|2.5.1\n"
                   "EVN|A40|20261120113000\nPID|1||12345^^^HOSP^MR||Doe^Jane||1950-01-0x|F\nMRG|NOBODY^^^HOSP^MR\n")
    assert "MSA|AA|MG4" in garbled  # a birth date that cannot be read does not stop the merge
    merged = context()
    assert merged.sex == "female" and merged.age_years == pytest.approx(76.9, abs=0.1)  # the A40's 1950-01-02


def test_a_lab_feed_gives_age_and_sex_too(stored) -> None:  # noqa: ANN001
    """The ORU's PID-7/8 were ignored: a site with a lab feed and no ADT feed had age and sex missing."""
    send, context = stored
    send(oru("DM1"))  # PID: born 1950-01-01, F
    record = context()
    assert record.sex == "female" and record.age_years == pytest.approx(76.9, abs=0.1)
    ack = send(oru("DM2").replace("||19500101|F", "||1950-01-0x|F"))
    assert "MSA|AA|DM2|stored 3 values" in ack and "not used: PID" in ack  # the labs are still kept
    # MSA-3 stops at 80 characters; each part left out is an ERR warning in full
    assert "\rERR|||102^Data type error^HL70357|W||||PID: message DM2 PID-7 birth date: HL7 timestamp" in ack


@pytest.mark.parametrize("event", ["A28", "A31", "A03"])
def test_person_and_discharge_events_carry_demographics_too(stored, event: str) -> None:  # noqa: ANN001
    """A master patient index sends A28/A31, a discharge A03: they were refused (AR, not handled)."""
    send, context = stored
    assert f"MSA|AA|E{event}|stored demographics" in send(adt(f"E{event}", event=event))
    assert context().sex == "female"


def test_a_merge_without_demographics_keeps_the_only_birth_date_known(stored) -> None:  # noqa: ANN001
    send, context = stored
    send(adt("AD3", event="A04").replace("12345^^^HOSP^MR", "777^^^HOSP^MR"))  # born 1950-01-01, F
    send("MSH|^~\\&|ADT|HOSP|RADFUSION|RAD|20261120113000||ADT^A40^ADT_A39|MG3|P|2.5.1\n"
         "EVN|A40|20261120113000\nPID|1||12345^^^HOSP^MR\nMRG|777^^^HOSP^MR\n")
    assert context().sex == "female" and context().age_years == pytest.approx(76.9, abs=0.1)


def test_a_value_sent_under_a_merged_away_identifier_is_the_surviving_patient_s(stored) -> None:  # noqa: ANN001
    """The merge was applied to what was stored, then forgotten: the INR the lab sent afterwards under the retired
    id (it processes merges later than the ADT feed) stayed under it, and studies of the surviving id read the
    older INR as current."""
    send, context = stored
    send(_observed(oru("L1", inr="1.1").replace("12345^^^HOSP&1.2.3&ISO^MR", "777^^^HOSP&1.2.3&ISO^MR"),
                   "20261119"))
    send("MSH|^~\\&|ADT|HOSP|RADFUSION|RAD|20261120080000||ADT^A40^ADT_A39|MG9|P|2.5.1\nEVN|A40|20261120080000\n"
         "PID|1||12345^^^HOSP&1.2.3&ISO^MR\nMRG|777^^^HOSP&1.2.3&ISO^MR\n")
    send(oru("L2", inr="4.4").replace("12345^^^HOSP&1.2.3&ISO^MR", "777^^^HOSP&1.2.3&ISO^MR"))
    assert context().labs["inr"].value == 4.4  # before: 1.1, the value moved by the merge


def test_merges_are_followed_by_their_newest_and_only_with_an_assigning_authority(tmp_path: Path) -> None:
    """Remembered merges sent values to the wrong patient: a wrong merge A into B undone by merging B back into A
    sent A's later values to B; an id merged twice stored a value under both survivors; an MRG-1 without
    authority took another sender's bare '777' for the merged patient."""
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store = Hl7Store(db)
    inbox = Hl7Inbox(store.seen, store.on_labs, store.on_demographics, store.on_order, store.on_merge)

    def merge(control_id: str, surviving: str, prior: str) -> None:
        inbox.handle(f"MSH|^~\\&|ADT|HOSP|RADFUSION|RAD|20261120080000||ADT^A40^ADT_A39|{control_id}|P|2.5.1\r"
                     f"EVN|A40|20261120080000\rPID|1||{surviving}^^^HOSP^MR\rMRG|{prior}\r")

    def now(value: str, authority: str = "HOSP") -> list[str]:
        return sorted(i.value for i in store.surviving([PatientIdentifier(value, authority)]))

    merge("M1", "B", "A^^^HOSP^MR")
    merge("M2", "A", "B^^^HOSP^MR")  # the wrong merge undone
    assert now("A") == ["A"] and now("B") == ["A"]  # before: A's later values went to B
    merge("M3", "Y", "X^^^HOSP^MR")
    merge("M4", "Z", "X^^^HOSP^MR")
    assert now("X") == ["Z"]  # before: Y and Z both
    merge("M5", "12345", "777")  # MRG-1 without an assigning authority
    assert now("777", "") == ["777"]  # another sender's bare 777 is not taken for 12345
    db.dispose()


def test_an_assigning_authority_matches_by_its_universal_id_too(stored) -> None:  # noqa: ANN001
    send, context = stored
    send(oru("U1"))  # PID-3 12345^^^HOSP&1.2.3&ISO
    assert context(issuer="1.2.3").labs["inr"].value == 2.5
    assert "inr" not in context(issuer="ELSEWHERE").labs


def test_a_correction_of_one_of_two_results_of_an_order_replaces_that_one_only(stored) -> None:  # noqa: ANN001
    """An order with INR at 07:00 and 09:00: correcting the 07:00 result deleted both, and the study read the
    corrected, older value instead of the 09:00 one."""
    send, context = stored
    head = ("MSH|^~\\&|LAB|HOSP|RADFUSION|RAD|20261120093000||ORU^R01|{}|P|2.5.1\nPID|1||12345^^^HOSP^MR\n"
            "OBR|1||FL7|34714-6|||20261120070000\n")
    send(head.format("T1") + "OBX|1|NM|6301-6^INR^LN||1.4|{INR}|||||F|||20261120070000\n"
         "OBX|2|NM|6301-6^INR^LN||3.6|{INR}|||||F|||20261120090000\n")
    assert context().labs["inr"].value == 3.6
    assert "MSA|AA" in send(head.format("T2") + "OBX|1|NM|6301-6^INR^LN||1.5|{INR}|||||C|||20261120070000\n")
    assert context().labs["inr"].value == 3.6  # before: 1.5, the 09:00 result deleted with the corrected one
    send(head.format("T3") + "OBX|1|NM|6301-6^INR^LN||3.7|{INR}|||||C|||20261120090000\n")
    assert context().labs["inr"].value == 3.7


def test_a_result_made_final_without_its_value_keeps_the_value_sent_before(stored) -> None:  # noqa: ANN001
    """OBX-11 U (status changed to final, the value not sent again) was read as an unreadable result: it deleted
    the preliminary INR and the analyte went missing, acknowledged AA."""
    send, context = stored
    send(_status(oru("P1", inr="3.4"), "P").replace("|N|||F|||", "|N|||P|||"))
    assert context().labs["inr"].value == 3.4
    send(oru("U1").replace("||2.5|{INR}|0.8-1.2|H|||F|||", "|||{INR}|0.8-1.2|H|||U|||"))
    assert context().labs["inr"].value == 3.4


def test_a_control_id_reused_for_another_message_is_stored_not_dropped_as_a_resend(stored) -> None:  # noqa: ANN001
    """A LIS that restarted its sequence sent a new INR under a control id it had used before: it was acknowledged
    AA as a duplicate and dropped, and the study read the old INR."""
    send, context = stored
    send(oru("1001", inr="1.1"))
    later = _observed(oru("1001", inr="4.8"), "20261120").replace("202611201000+0100", "202611201015+0100")
    ack = send(later)
    assert "duplicate" not in ack and context().labs["inr"].value == 4.8
    assert "duplicate" in send(later.replace("20261120103000", "20261120120000"))  # a resend: MSH-7 restamped
    assert "duplicate" in send(oru("1001", inr="1.1"))


def test_a_resend_stored_meanwhile_by_another_connection_is_a_duplicate(tmp_path: Path) -> None:
    """Two connections (a resend after a lost ACK) both passed the duplicate check before either committed: the
    second was stored again under a 'reused' control id, its values twice, and audited as a sequence reset."""
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store = Hl7Store(db)
    racing = Hl7Inbox(lambda header: False, store.on_labs, store.on_demographics, store.on_order, store.on_merge)
    acks = [racing.handle(oru("R100").replace("\n", "\r")).ack or "" for _ in range(2)]
    assert "MSA|AA|R100|stored" in acks[0] and "duplicate message control id R100" in acks[1]
    with db.session() as session:
        assert session.scalars(select(Hl7Message.control_id)).all() == ["R100"]
        assert not session.scalars(select(AuditEvent).where(AuditEvent.kind == "hl7_control_id_reused")).all()
    db.dispose()


def test_another_hospital_s_patient_with_the_same_id_is_not_read_as_the_study_s(stored, caplog) -> None:  # noqa: ANN001
    """Before, a study without an issuer got the INR of HOSPB's patient 12345, and the values of an authority this
    site does not map when it was the only one holding 12345 (a reference lab's patient)."""
    send, context = stored
    send(oru("H1", inr="1.0"))  # 12345 of HOSP (1.2.3), not mapped in clinical.identifier_systems
    assert context(issuer="HOSP").labs["inr"].value == 1.0  # the study's own issuer
    with caplog.at_level(logging.WARNING, logger="radfusion.clinical"):
        unknown = context(issuer="")
    assert "inr" not in unknown.labs  # before: 1.0, though the default identifier system is not HOSP's
    assert unknown.errors[-1] == ("HL7 values under assigning authority 1.2.3/HOSP not used: not the study's "
                                  "IssuerOfPatientID '' and not mapped to its identifier system "
                                  "(clinical.identifier_systems)")
    assert "12345" not in caplog.text
    send(oru("H2", inr="4.0").replace("12345^^^HOSP&1.2.3&ISO^MR", "12345^^^HOSPB^MR").replace(
        "202611201000+0100", "202611201030+0100"))
    assert context(issuer="HOSP").labs["inr"].value == 1.0 and context(issuer="HOSPB").labs["inr"].value == 4.0
    send(oru("H3", platelets="40").replace("12345^^^HOSP&1.2.3&ISO^MR", "12345^^^^MR"))  # no authority
    assert context(issuer="HOSP").labs["platelets"].value == 150  # whose 12345 it is cannot be told


def test_values_are_the_study_s_patient_s_by_the_identifier_system_their_authority_names(tmp_path: Path) -> None:
    """A LIS that sends PID-3 without an assigning authority lent its patient 12345's INR, sex and age to a study of
    an outside hospital's patient 12345 (an issuer the site does not map, which the EMR is rightly not asked
    about)."""
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store = Hl7Store(db)
    inbox = Hl7Inbox(store.seen, store.on_labs, store.on_demographics, store.on_order, store.on_merge)
    settings = load_settings(storage_path=tmp_path, clinical={"default_identifier_system": "urn:oid:1.2.3",
                                                              "identifier_systems": {"RAD": "urn:oid:1.2.3"}})
    gatherer = ClinicalGatherer(settings.clinical, db)

    def inr(issuer: str) -> float | None:
        context = gatherer.context_for(StudyPatient(1, "12345", issuer, "ACC123", STUDY_TIME), ["inr", "platelets"])
        return context.labs["inr"].value if "inr" in context.labs else None

    inbox.handle(oru("B1", inr="3.9").replace("12345^^^HOSP&1.2.3&ISO^MR", "12345^^^^MR").replace("\n", "\r"))
    assert inr("OUTSIDE") is None  # before: 3.9, this site's patient 12345
    assert inr("") == inr("RAD") == 3.9  # this site's studies: with no issuer, or one mapped to the same system
    inbox.handle(oru("B2", inr="1.2").replace("\n", "\r"))  # HOSP&1.2.3: its OID names the system
    assert inr("") == inr("RAD") == 1.2
    inbox.handle(oru("B3", inr="2.7").replace("12345^^^HOSP&1.2.3&ISO^MR", "12345^^^REFLAB^PI")
                 .replace("202611201000+0100", "202611201030+0100").replace("\n", "\r"))
    assert inr("") == 1.2 and inr("REFLAB") == 2.7  # a reference lab's patient 12345 is theirs only
    gatherer.close()
    db.dispose()


def test_a_merge_moves_each_value_once_per_form_of_the_surviving_id(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store = Hl7Store(db)
    inbox = Hl7Inbox(store.seen, store.on_labs, store.on_demographics, store.on_order, store.on_merge)
    inbox.handle(oru("M1").replace("12345^^^HOSP&1.2.3&ISO^MR~999^^^SSA^SS", "777^^^HOSP&1.2.3&ISO^MR"))
    for control_id in ("MG1", "MG2"):  # merged twice: the second finds nothing under 777 and changes nothing
        inbox.handle(f"MSH|^~\\&|ADT|HOSP|RADFUSION|RAD|20261120103000||ADT^A40^ADT_A39|{control_id}|P|2.5.1\r"
                     "EVN|A40|20261120103000\rPID|1||12345^^^HOSP&1.2.3&ISO^MR\rMRG|777^^^HOSP&1.2.3&ISO^MR\r")
    with db.session() as session:
        stored = session.execute(select(ClinicalValue.patient_id, ClinicalValue.patient_authority)
                                 .where(ClinicalValue.name == "inr")).all()
    assert sorted(stored) == [("12345", "1.2.3"), ("12345", "HOSP")]  # before: two rows under each
    db.dispose()


def test_an_outside_issuer_s_patient_is_not_looked_up_as_ours(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """Before: IssuerOfPatientID OUTSIDE_HOSP, not mapped, was searched under the default system, so the EMR's own
    patient 12345 lent the outside patient their labs."""
    settings = load_settings(storage_path=tmp_path, clinical={"fhir": {"base_url": "http://127.0.0.1:9/fhir"},
                                                              "identifier_systems": {"HOSP": "urn:oid:1.2.3"}})
    assert settings.clinical.identifier_system("") == settings.clinical.default_identifier_system
    assert settings.clinical.identifier_system("HOSP") == "urn:oid:1.2.3"
    assert settings.clinical.identifier_system("OUTSIDE_HOSP") is None
    gatherer = ClinicalGatherer(settings.clinical, Database(f"sqlite:///{tmp_path / 'db.sqlite'}"))
    with caplog.at_level(logging.WARNING, logger="radfusion.clinical"):
        context = gatherer.context_for(StudyPatient(1, "12345", "OUTSIDE_HOSP", "A1"), ["inr"])
        gatherer.context_for(StudyPatient(2, "12346", "OUTSIDE_HOSP", "A2"), ["inr"])
    gatherer.close()
    assert [r.getMessage() for r in caplog.records] == [  # once per issuer, so a site that forgot its own sees it
        "IssuerOfPatientID 'OUTSIDE_HOSP' is not in clinical.identifier_systems: the EMR is not asked about its "
        "studies' patients (map it if it is one of yours)"]
    assert context.errors[0] == ("IssuerOfPatientID 'OUTSIDE_HOSP' has no FHIR identifier system "
                                 "(clinical.identifier_systems): the EMR was not asked")


def test_a_study_whose_patient_was_corrected_is_asked_about_the_new_patient(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The query started when the study was first seen was for the first Patient ID; the job runs after the
    correction. Before: it was handed the first patient's record."""
    asked: list[str] = []

    def gather(client: object, query: ClinicalQuery) -> ClinicalContext:
        asked.append(query.patient_id)
        return ClinicalContext(status="complete")

    monkeypatch.setattr(clinical, "gather_from_fhir", gather)
    settings = load_settings(storage_path=tmp_path, clinical={"fhir": {"base_url": "http://127.0.0.1:9/fhir"}})
    gatherer = ClinicalGatherer(settings.clinical, Database(f"sqlite:///{tmp_path / 'db.sqlite'}"))
    gatherer.prefetch(StudyPatient(1, "WRONG-1", "", "A1"), ["inr"])
    gatherer.context_for(StudyPatient(1, "RIGHT-2", "", "A1"), ["inr"])
    gatherer.close()
    assert asked == ["WRONG-1", "RIGHT-2"]


def test_a_rejected_message_is_audited_without_its_content(tmp_path: Path) -> None:
    """Before, an AE or AR left a trace in the log only."""
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store = Hl7Store(db)
    inbox = Hl7Inbox(store.seen, store.on_labs, store.on_demographics, store.on_order, store.on_merge,
                     store.on_rejected)
    inbox.handle("PID|1||PHI-NOMSH-321^^^HOSP^MR||DOE^JANE")
    inbox.handle(oru("R1").replace("\n", "\r").replace("OBR|1|PL1", "OBR|1|PL1") + "PID|2||222^^^HOSP^MR\r")
    with db.session() as session:
        events = [(e.kind, e.subject, e.detail) for e in session.scalars(select(AuditEvent).order_by(AuditEvent.id))]
    assert [(kind, subject) for kind, subject, _ in events] == [("hl7_rejected", "frame without MSH"),
                                                                ("hl7_rejected", "LAB^HOSP R1")]
    assert events[1][2].startswith("AE: ") and not any("PHI" in d or "DOE" in d or "222" in d for *_, d in events)
