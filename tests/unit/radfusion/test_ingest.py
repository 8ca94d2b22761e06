"""Ingest rows on the embedded SQLite and on PostgreSQL, which enforces column lengths."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from dicom_node.contracts import StoredInstance
from dicom_node.spool import Spool
from radfusion.db import Database
from radfusion.dicom_time import study_datetime, use_time_zone
from radfusion.errors import ConfigError
from radfusion.ingest import IngestRecorder
from radfusion.models import AuditEvent, Instance, Quarantine, Series, Study
from radfusion.settings import load_settings
from tests.integration.servers import postgresql


@contextmanager
def _sqlite(tmp_path: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp_path / 'db.sqlite'}"


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.peers)])
def test_a_header_that_breaks_its_length_limit_is_stored_cut_and_never_logged(
        tmp_path: Path, backend: str, caplog: pytest.LogCaptureFixture) -> None:
    with (postgresql() if backend == "postgresql" else _sqlite(tmp_path)) as url:
        db = Database(url)
        recorder = IngestRecorder(db, Spool(tmp_path / "spool"))
        instance = StoredInstance(None, tmp_path / "x.dcm", "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.2.3", "1.2.3.1",
                                  "1.2.840.10008.1.2.1", 10,
                                  {"StudyDate": "2024-01-15", "AccessionNumber": "A" * 80, "PatientID": "SECRET-42",
                                   "Modality": "CT"})
        with caplog.at_level(logging.DEBUG):
            assert recorder.instance_stored(instance) is True  # before: PostgreSQL refused the whole study
        with db.session() as session:
            study = session.scalars(select(Study)).one()
        assert (study.study_date, len(study.accession_number), study.patient_id) == ("20240115", 64, "SECRET-42")
        db.dispose()
    assert "SECRET-42" not in caplog.text


@pytest.mark.parametrize(("sent", "stored"), [("20240115", "20240115"), ("2024.01.15", "20240115"),
                                              (" 20240115", "20240115"), ("15.01.2024", ""), ("2024115", ""),
                                              ("", "")])
def test_study_date_is_stored_as_yyyymmdd_or_not_at_all(tmp_path: Path, sent: str, stored: str) -> None:
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    instance = StoredInstance(None, tmp_path / "x.dcm", "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.2.3", "1.2.3.1",
                              "1.2.840.10008.1.2.1", 10, {"StudyDate": sent, "Modality": "CT"})
    assert IngestRecorder(db, Spool(tmp_path / "spool")).instance_stored(instance) is True
    with db.session() as session:
        assert session.scalars(select(Study.study_date)).one() == stored  # before: '15.01.2024' became 15012024
    db.dispose()


@pytest.mark.parametrize(("contrast", "routed_agent"), [
    ({"ContrastBolusRoute": "IV", "ContrastBolusVolume": 75.0}, "not named (ContrastBolusRoute IV)"),
    ({"ContrastBolusVolume": 75.0}, "not named (ContrastBolusVolume 75.0)"),
    ({"ContrastBolusRoute": "NONE", "ContrastBolusIngredient": "N/A"}, None),  # words for none
    ({"ContrastBolusVolume": 0.0, "ContrastFlowRate": [0.0, 0.0], "ContrastBolusRoute": ""}, None),  # zero amounts
    ({"ContrastBolusAgent": "Iohexol", "ContrastBolusRoute": "IV"}, "Iohexol")])
def test_an_empty_agent_that_the_contrast_module_contradicts_is_routed_as_an_agent(
        tmp_path: Path, contrast: dict[str, object], routed_agent: str | None) -> None:
    """Contrast/Bolus Agent is Type 2: a contrast head CT may leave it empty and fill the rest of the module. Before,
    it was routed to the hemorrhage detector and read as a 65 mL subdural; a word for none must not count."""
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    instance = StoredInstance(None, tmp_path / "x.dcm", "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.2.3", "1.2.3.1",
                              "1.2.840.10008.1.2.1", 10, {"Modality": "CT", "ContrastBolusAgent": None, **contrast})
    assert IngestRecorder(db, Spool(tmp_path / "spool")).instance_stored(instance) is True
    with db.session() as session:
        assert session.scalars(select(Series.attributes)).one()["ContrastBolusAgent"] == routed_agent
    db.dispose()


@pytest.mark.parametrize(("date", "time", "offset", "performed"), [
    ("20240115", "083000.123", "+0100", datetime(2024, 1, 15, 7, 30, tzinfo=timezone.utc)),
    ("2024.01.15", "08:30:00", "-0500", datetime(2024, 1, 15, 13, 30, tzinfo=timezone.utc)),  # ACR-NEMA style
    ("20240115", "0830", "", datetime(2024, 1, 15, 8, 30).astimezone()),  # no offset: the server's local time
    ("", "083000", "", None), ("20240231", "083000", "", None),
    # no time, or no valid one: the end of the study's day (before: nothing, so read as of the present)
    ("20240115", "", "+0100", datetime(2024, 1, 15, 22, 59, 59, tzinfo=timezone.utc)),
    ("20240115", "2530", "", datetime(2024, 1, 15, 23, 59, 59).astimezone())])
def test_a_study_records_when_it_was_performed_or_nothing(tmp_path: Path, date: str, time: str, offset: str,
                                                           performed: datetime | None) -> None:
    """Its clinical data is read as of then; a study without a date is read as of the present."""
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    instance = StoredInstance(None, tmp_path / "x.dcm", "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.2.3", "1.2.3.1",
                              "1.2.840.10008.1.2.1", 10, {"StudyDate": date, "StudyTime": time,
                                                          "TimezoneOffsetFromUTC": offset, "Modality": "CT"})
    assert IngestRecorder(db, Spool(tmp_path / "spool")).instance_stored(instance) is True
    with db.session() as session:
        assert session.scalars(select(Study.performed_at)).one() == performed
    db.dispose()


@pytest.mark.peers
def test_a_database_error_does_not_quote_the_patient_id(tmp_path: Path) -> None:
    with postgresql() as url:
        db = Database(url)
        too_long_uid = "1.2." + "3" * 70  # the SCP refuses such UIDs; here it makes PostgreSQL fail the insert
        instance = StoredInstance(None, tmp_path / "x.dcm", "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", too_long_uid,
                                  "1.2.3.1", "1.2.840.10008.1.2.1", 10, {"PatientID": "SECRET-42"})
        with pytest.raises(DBAPIError) as info:
            IngestRecorder(db, Spool(tmp_path / "spool")).instance_stored(instance)
        db.dispose()
    assert "SECRET-42" not in str(info.value)


def _ct(spool: Spool, study: str, position: float, number: int, syntax: str = "1.2.840.10008.1.2.1",
        series: str = "1.2.3.101", sop: str = "1.2.3.102") -> StoredInstance:
    path = spool.instance_path(study, series, sop)
    spool.write_durably(path, b"x" * number)
    return StoredInstance(None, path, "1.2.840.10008.5.1.4.1.1.2", sop, study, series, syntax, number,
                          {"Modality": "CT", "InstanceNumber": number, "ImagePositionPatient": [0.0, 0.0, position],
                           "ImageOrientationPatient": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]})


def test_an_instance_sent_again_with_new_content_gets_the_new_header_in_its_row(tmp_path: Path) -> None:
    """Before: the file was replaced but the row kept the old position, number, syntax and size, so the
    completeness check judged geometry the image no longer has."""
    db, spool = Database(f"sqlite:///{tmp_path / 'db.sqlite'}"), Spool(tmp_path / "spool")
    recorder = IngestRecorder(db, spool)
    recorder.instance_stored(_ct(spool, "1.2.3.100", 5.0, 1))
    assert recorder.instance_stored(_ct(spool, "1.2.3.100", 50.0, 10, "1.2.840.10008.1.2")) is False
    with db.session() as session:
        row = session.scalars(select(Instance)).one()
    assert (row.position, row.instance_number, row.transfer_syntax_uid, row.size_bytes) == (
        [0.0, 0.0, 50.0], 10, "1.2.840.10008.1.2", 10)
    db.dispose()


def test_an_instance_received_again_in_another_series_gets_its_new_header_in_its_row(tmp_path: Path) -> None:
    """Moved to its new series, the row kept the old transfer syntax, size and SOP class of bytes no longer kept."""
    db, spool = Database(f"sqlite:///{tmp_path / 'db.sqlite'}"), Spool(tmp_path / "spool")
    recorder = IngestRecorder(db, spool)
    recorder.instance_stored(_ct(spool, "1.2.3.100", 5.0, 1))
    recorder.instance_stored(replace(_ct(spool, "1.2.3.100", 50.0, 10, "1.2.840.10008.1.2", series="1.2.3.301"),
                                     sop_class_uid="1.2.840.10008.5.1.4.1.1.2.1"))  # now Enhanced CT
    with db.session() as session:
        row = session.scalars(select(Instance)).one()
        assert (row.series.series_uid, row.transfer_syntax_uid, row.size_bytes, row.instance_number,
                row.sop_class_uid) == ("1.2.3.301", "1.2.840.10008.1.2", 10, 10, "1.2.840.10008.5.1.4.1.1.2.1")
    db.dispose()


def test_a_series_sent_again_under_a_corrected_study_uid_leaves_no_file_without_a_row(tmp_path: Path) -> None:
    """Before: the row followed the new file and the old one stayed in the spool with no row, so retention never
    deleted it."""
    db, spool = Database(f"sqlite:///{tmp_path / 'db.sqlite'}"), Spool(tmp_path / "spool")
    recorder = IngestRecorder(db, spool)
    first = _ct(spool, "1.2.3.100", 5.0, 1)
    recorder.instance_stored(first)
    recorder.instance_stored(_ct(spool, "1.2.3.200", 5.0, 1))
    with db.session() as session:
        row = session.scalars(select(Instance)).one()
        set_aside = session.scalars(select(Quarantine)).one()
    assert Path(row.path).is_file() and "1.2.3.200" in row.path and not first.path.exists()
    assert "superseded" in set_aside.reason and [p for p in spool.instances.rglob("*.dcm")] == [Path(row.path)]
    with db.session() as session:  # the series went with it (before: it stayed in 1.2.3.100, analysed and purged
        series = session.scalars(select(Series)).one()  # as that study, whose row was never made for 1.2.3.200)
        assert series.study.study_uid == "1.2.3.200"
        assert session.scalars(select(AuditEvent.kind).where(AuditEvent.kind == "series_moved")).all() == [
            "series_moved"]
        assert {s.study_uid: s.state for s in session.scalars(select(Study))} == {"1.2.3.100": "receiving",
                                                                                   "1.2.3.200": "receiving"}
    db.dispose()


def test_a_study_sent_again_with_a_corrected_patient_follows_the_new_patient(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The PACS corrected the patient of a study and sent it again. Before: the study kept the first Patient ID, so
    the re-issued result fetched and reported the wrong patient's clinical data."""
    db, spool = Database(f"sqlite:///{tmp_path / 'db.sqlite'}"), Spool(tmp_path / "spool")
    recorder = IngestRecorder(db, spool)
    wrong = _ct(spool, "1.2.3.100", 5.0, 1)
    wrong.attributes.update(PatientID="WRONG-PATIENT-1", IssuerOfPatientID="HOSP")
    recorder.instance_stored(wrong)
    corrected = _ct(spool, "1.2.3.100", 5.0, 1)
    corrected.attributes.update(PatientID="RIGHT-PATIENT-2", IssuerOfPatientID="HOSP")
    with caplog.at_level(logging.DEBUG):
        recorder.instance_stored(corrected)  # the same series: the cache must not hide the change
    with db.session() as session:
        study = session.scalars(select(Study)).one()
        changed = session.scalars(select(AuditEvent).where(AuditEvent.kind == "patient_identity_changed")).one()
    assert (study.patient_id, study.issuer_of_patient_id) == ("RIGHT-PATIENT-2", "HOSP")
    assert changed.detail == "Patient ID changed by instance 1.2.3.102"
    assert "PATIENT" not in caplog.text  # neither the old nor the new identifier is logged
    db.dispose()


def test_a_series_that_leaves_the_issuer_out_does_not_flip_the_study_s_patient(tmp_path: Path) -> None:
    """One modality fills IssuerOfPatientID, another leaves it empty, for the same Patient ID: the study keeps
    the issuer, whichever series comes last (review finding: it flipped with every series)."""
    db, spool = Database(f"sqlite:///{tmp_path / 'db.sqlite'}"), Spool(tmp_path / "spool")
    recorder = IngestRecorder(db, spool)
    for index, (series, issuer) in enumerate([("1.2.3.201", ""), ("1.2.3.202", "HOSP"), ("1.2.3.201", ""),
                                              ("1.2.3.202", "HOSP"), ("1.2.3.201", "")]):
        instance = _ct(spool, "1.2.3.100", 5.0 * index, 1, series=series, sop=f"1.2.3.9.{index}")
        instance.attributes.update(PatientID="P1", IssuerOfPatientID=issuer)
        recorder.instance_stored(instance)
    with db.session() as session:
        study = session.scalars(select(Study)).one()
        details = session.scalars(select(AuditEvent.detail).where(AuditEvent.kind == "patient_identity_changed")).all()
    assert (study.patient_id, study.issuer_of_patient_id) == ("P1", "HOSP")
    assert details == ["Issuer of Patient ID added by instance 1.2.3.9.1"]
    db.dispose()


def test_study_times_without_an_offset_are_read_in_the_configured_time_zone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server kept on UTC beside a New York hospital: before, a 10:00 scan was read as 10:00 UTC, and the INR drawn
    at 09:00 local (14:00 UTC) fell after the study's window."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        assert study_datetime("20240115", "100000", "") == datetime(2024, 1, 15, 10, tzinfo=timezone.utc)
        assert use_time_zone("America/New_York") == "America/New_York"
        assert study_datetime("20240115", "100000", "") == datetime(2024, 1, 15, 15, tzinfo=timezone.utc)
        assert study_datetime("20240715", "100000", "") == datetime(2024, 7, 15, 14, tzinfo=timezone.utc)  # EDT
        assert study_datetime("20240115", "100000", "+0100") == datetime(2024, 1, 15, 9, tzinfo=timezone.utc)
        # no Study Time (Type 2), or one that is no time: the end of the study's day, not None (read as of today)
        for no_time in ("", "2500"):
            assert study_datetime("20240115", no_time, "+0100") == datetime(2024, 1, 15, 22, 59, 59,
                                                                             tzinfo=timezone.utc)
        assert study_datetime("20240231", "100000", "") is None and study_datetime("", "100000", "") is None
    finally:
        monkeypatch.undo()
        time.tzset()


def test_an_unknown_time_zone_is_refused_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="timezone.*unknown time zone 'Europe/Berlln'"):
        load_settings(storage_path=tmp_path, timezone="Europe/Berlln")


def test_a_series_whose_first_instance_failed_is_not_recorded_under_the_next_study(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The series' ids were cached before its transaction committed. When it rolled back (database locked, disk
    full), SQLite handed the same ids to the next study, another patient's, and the rest of the first series was
    recorded there, to be analysed and reported under that patient."""
    from radfusion import ingest

    db, spool = Database(f"sqlite:///{tmp_path / 'db.sqlite'}"), Spool(tmp_path / "spool")
    recorder = IngestRecorder(db, spool)
    alice = [_ct(spool, "1.2.3.100", float(z), z, series="1.2.3.101", sop=f"1.2.3.10{z}") for z in (1, 2)]
    bob = _ct(spool, "1.2.3.200", 1.0, 1, series="1.2.3.201", sop="1.2.3.202")
    for instance, patient in ((alice[0], "ALICE"), (alice[1], "ALICE"), (bob, "BOB")):
        instance.attributes["PatientID"] = patient
    header_values = ingest._header_values

    def locked(attrs: dict[str, object]) -> dict[str, object]:
        monkeypatch.setattr(ingest, "_header_values", header_values)
        raise RuntimeError("database is locked")

    monkeypatch.setattr(ingest, "_header_values", locked)
    with pytest.raises(RuntimeError):  # the SCP answers 0xA702: the sender sends it again
        recorder.instance_stored(alice[0])
    recorder.instance_stored(bob)
    recorder.instance_stored(alice[1])
    with db.session() as session:
        rows = session.execute(select(Instance.sop_instance_uid, Study.patient_id)
                               .join(Series, Instance.series_id == Series.id).join(Study)).all()
    assert sorted(rows) == [("1.2.3.102", "ALICE"), ("1.2.3.202", "BOB")]
    db.dispose()


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.peers)])
def test_an_instance_over_2_gib_or_numbered_beyond_a_column_is_stored(tmp_path: Path, backend: str) -> None:
    """PostgreSQL refused a size over 2 GiB (a breast tomosynthesis object) and both databases a 20-digit
    InstanceNumber (pydicom reads one): the SCP answered 0xA702 to every resend of the instance, for ever."""
    with (postgresql() if backend == "postgresql" else _sqlite(tmp_path)) as url:
        db, spool = Database(url), Spool(tmp_path / "spool")
        instance = replace(_ct(spool, "1.2.3.100", 1.0, 1), size_bytes=3 << 30)
        instance.attributes["InstanceNumber"] = 10**20
        assert IngestRecorder(db, spool).instance_stored(instance)
        with db.session() as session:
            assert session.execute(select(Instance.size_bytes, Instance.instance_number)).one() == (3 << 30, None)
        db.dispose()


def test_a_scout_received_first_does_not_describe_its_series_for_the_routing(tmp_path: Path) -> None:
    """Before, a series' routing attributes were its first instance's: a scout sent first (10 mm, 'Topogram')
    kept a thin axial chest series from the nodule rule. Its first axial image describes it now, after a
    restart too."""
    db, spool = Database(f"sqlite:///{tmp_path / 'db.sqlite'}"), Spool(tmp_path / "spool")
    scout = _ct(spool, "1.2.3.100", 0.0, 1, sop="1.2.3.201")
    scout.attributes.update(ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"], SliceThickness=10.0,
                            SeriesDescription="Topogram")
    IngestRecorder(db, spool).instance_stored(scout)
    axial = _ct(spool, "1.2.3.100", 5.0, 2, sop="1.2.3.202")
    axial.attributes.update(ImageType=["ORIGINAL", "PRIMARY", "AXIAL"], SliceThickness=1.0,
                            SeriesDescription="Lung 1mm")
    recorder = IngestRecorder(db, spool)  # a restart between the two
    recorder.instance_stored(axial)
    later = _ct(spool, "1.2.3.100", 10.0, 3, sop="1.2.3.203")
    later.attributes.update(ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"], SeriesDescription="Topogram 2")
    recorder.instance_stored(later)  # a scout after the axial images changes nothing
    with db.session() as session:
        attributes = session.scalars(select(Series.attributes)).one()
    assert (attributes["SliceThickness"], attributes["SeriesDescription"]) == (1.0, "Lung 1mm")
    db.dispose()
