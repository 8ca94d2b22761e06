"""Jobs on the database: a mammogram sent as one series per view is read as one exam; a job whose result
objects cannot be written still raises the alarm for an urgent finding."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from ai_engine.synthetic.cohorts.mammo import generate_case, write_case_dicom
from ai_engine.synthetic.studies import write_study
from hl7_fhir.context import ClinicalContext, LabValue, Provenance
from hl7_fhir.gather import NOT_GATHERED
from radfusion import pipeline
from radfusion.models import Alert, Artifact, Association, AuditEvent, Delivery, Instance, Job, Series, utcnow
from radfusion.cli import main as cli_main
from radfusion.errors import MixedPatientError
from radfusion.retention import purge_expired
from radfusion.service import Service
from radfusion.status import collect_status
from radfusion.settings import default_routing, load_settings
from tests.unit.radfusion.stored import store


def _store(service: Service, paths: list[Path]) -> None:
    store(service.db, service.spool, paths)


def _bleed_job(tmp_path: Path, settings: dict | None = None, lesion: bool = True, **job: object
               ) -> tuple[Service, int]:
    """A service whose channel 'ed' is a webhook (``settings``: more of its configuration), a stored head CT with a
    bleed (or without: ``lesion``), and a queued ich_fusion job of it (``job``: its other columns); the service and
    the job's id."""
    service = Service(load_settings(storage_path=tmp_path / "data", routing=[r.model_dump(mode="json") for r in
                                                                             default_routing([], ["ed"])],
                                    alerts={"channels": [{"name": "ed", "url": "http://127.0.0.1:9/"}]},
                                    **(settings or {})))
    _store(service, write_study("head_ct", tmp_path / "in", seed=14, lesion=lesion, rows=256, slices=24).paths)
    with service.db.session() as session:
        series = session.scalars(select(Series)).one()
        queued = Job(study_id=series.study_id, series_id=series.id, detector="ich_fusion", model_version="test",
                     rule="test", **job)
        session.add(queued)
        session.flush()
        return service, queued.id


def test_a_mammogram_sent_as_one_series_per_view_is_one_exam_and_one_job(tmp_path: Path) -> None:
    service = Service(load_settings(storage_path=tmp_path / "data",
                                    routing=[r.model_dump(mode="json") for r in default_routing([], [])]))
    paths = write_case_dicom(generate_case(1), tmp_path / "exam")  # a normal exam (all four views: ~0.0)
    for path in paths:  # as many modalities send it: every view a series of its own
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = generate_uid()
        ds.save_as(path)
    _store(service, paths)
    assert service.assembler.tick(utcnow() + timedelta(hours=1)) == 1  # before: four jobs, each at ~1.0
    with service.db.session() as session:
        job = session.scalars(select(Job)).one()
        assert len(service.runner.input_series(job)) == 4
    assert service.runner.claim(job.id)
    service.runner.run(job.id)
    with service.db.session() as session:
        job = session.get(Job, job.id)
        assert job.state == "done" and job.result["positive"] is False, job.error
        sr = pydicom.dcmread(session.scalars(select(Artifact.path).where(Artifact.kind == "sr")).one())
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    assert len(evidence) == 4


def test_a_patient_correction_still_arriving_is_not_reported_under_either_patient(tmp_path: Path) -> None:
    """Two views of a mammogram sent again under the corrected patient, two not yet: the SR went to the PACS under
    the old Patient ID, the new views' SEGs under the new one, in a study filed under the new one."""
    service = Service(load_settings(storage_path=tmp_path / "data",
                                    routing=[r.model_dump(mode="json") for r in default_routing([], [])]))
    paths = write_case_dicom(generate_case(1), tmp_path / "exam")
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = generate_uid()
        ds.save_as(path)
    _store(service, paths)
    corrected = []
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.PatientID, ds.PatientName = "CORRECTED-1", "Corrected^Patient"
        ds.save_as(tmp_path / path.name)
        corrected.append(tmp_path / path.name)
    _store(service, corrected[:2])
    assert service.assembler.tick(utcnow() + timedelta(hours=1)) == 1
    with service.db.session() as session:
        first = session.scalars(select(Job.id)).one()
    assert service.runner.claim(first)
    service.runner.run(first)
    with service.db.session() as session:
        job = session.get(Job, first)
        assert job.state == "failed" and "patient correction still being sent" in job.error
        assert "CORRECTED" not in job.error and not session.scalars(select(Artifact)).all()
    _store(service, corrected[2:])
    assert service.assembler.tick(utcnow() + timedelta(hours=2)) == 1
    with service.db.session() as session:
        second = session.scalars(select(Job.id).where(Job.id != first)).one()
    assert service.runner.claim(second)
    service.runner.run(second)
    with service.db.session() as session:
        assert session.get(Job, second).state == "done", session.get(Job, second).error
        written = [pydicom.dcmread(path) for path in session.scalars(select(Artifact.path))]
    assert {str(ds.PatientID) for ds in written} == {"CORRECTED-1"}
    status = collect_status(service.db, tmp_path / "data")  # the failure was run again: no one need look at it
    assert (status["jobs_failed"], status["jobs_failed_since_rerun"], status["attention"]) == (0, 1, [])


def test_one_patient_written_two_ways_is_one_patient() -> None:
    sources = [pydicom.Dataset(), pydicom.Dataset()]
    for ds, name in zip(sources, ("DOE^JANE", "Doe^Jane^^"), strict=True):
        ds.PatientID, ds.PatientName = "P1", name
    sources[1].IssuerOfPatientID = "HOSP"
    pipeline._one_patient(sources, ("P1", "HOSP"))  # a name's case and empty components, an issuer left out
    sources[1].PatientID = "P2"
    with pytest.raises(MixedPatientError, match="2 patient identities and 1 patient names"):
        pipeline._one_patient(sources, ("P1", "HOSP"))


def test_the_sr_s_clinical_summary_says_what_of_the_record_could_not_be_read() -> None:
    """With one lab read, the errors of the rest (the medications query failed) were dropped: a partial record read
    as a complete one."""
    context = ClinicalContext(labs={"inr": LabValue("inr", "6301-6", 2.9, "1", None, Provenance("hl7", "LAB", "1"))},
                              status="partial", errors=["medications: the EMR answered 500"])
    assert pipeline.clinical_summary(context) == {"inr": "2.9 1",
                                                  "Clinical data": "partly read: medications: the EMR answered 500"}
    hl7_only = replace(context, errors=["no FHIR server configured",
                                        *(f"{s}: {NOT_GATHERED}" for s in ("medications", "conditions"))])
    assert pipeline.clinical_summary(hl7_only)["Clinical data"] == (
        f"partly read: no FHIR server configured; medications, conditions: {NOT_GATHERED}")  # one line, not one each
    assert pipeline.clinical_summary(replace(hl7_only, labs={}))["Clinical data"] == (
        f"not used (no FHIR server configured; medications, conditions: {NOT_GATHERED})")


def test_the_exam_time_sent_to_the_emr_carries_the_sender_s_offset_or_the_local_zone() -> None:
    ds = pydicom.Dataset()
    ds.AcquisitionDate, ds.AcquisitionTime, ds.TimezoneOffsetFromUTC = "20240115", "093000.25", "+0100"
    assert pipeline.performed_at(ds) == datetime(2024, 1, 15, 9, 30, tzinfo=timezone(timedelta(hours=1)))
    del ds.TimezoneOffsetFromUTC
    assert pipeline.performed_at(ds) == datetime(2024, 1, 15, 9, 30).astimezone()
    assert pipeline.performed_at(pydicom.Dataset()) is None


def test_an_exam_time_that_cannot_be_placed_is_read_without_its_offset_or_not_at_all() -> None:
    """'+2400' (DICOM's range is -1200..+1400) and a date of year 1 raised out of the job's commit, after the
    results were written: the job stayed 'running' and a hemorrhage found in the study was never alerted."""
    ds = pydicom.Dataset()
    ds.AcquisitionDate, ds.AcquisitionTime, ds.TimezoneOffsetFromUTC = "20240115", "093000", "+2400"
    assert pipeline.performed_at(ds) == datetime(2024, 1, 15, 9, 30).astimezone()
    ds.TimezoneOffsetFromUTC = "+0160"
    assert pipeline.performed_at(ds) == datetime(2024, 1, 15, 9, 30).astimezone()
    ds.AcquisitionDate, ds.AcquisitionTime, ds.TimezoneOffsetFromUTC = "00010101", "000000", "+0100"
    assert pipeline.performed_at(ds) is None  # it would lie in the year 0 in UTC
    del ds.TimezoneOffsetFromUTC
    assert pipeline.performed_at(ds) is None  # the local zone cannot place it either
    ds.AcquisitionDate, ds.AcquisitionTime, ds.TimezoneOffsetFromUTC = "99991231", "233000", "-0500"
    assert pipeline.performed_at(ds) is None  # it would lie beyond the year 9999 in UTC


@pytest.mark.parametrize(("patched", "error", "step"), [
    ("build_seg", ValueError("SEG builder refused the series"), "writing the results"),
    # recording them raised out of the job (e.g. a date UTC cannot hold), leaving it 'running', the study unalerted
    ("report_deliveries", OverflowError("date value out of range"), "recording the results"),
])
def test_an_urgent_hemorrhage_is_alerted_although_its_results_cannot_be_written_or_recorded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, patched: str, error: Exception, step: str) -> None:
    service, job_id = _bleed_job(tmp_path, alert_channels=["ed"])

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise error

    monkeypatch.setattr(pipeline, patched, refuse)
    assert service.runner.claim(job_id)
    service.runner.run(job_id)
    with service.db.session() as session:
        job = session.get(Job, job_id)
        alert = session.scalars(select(Alert)).one()
        assert job.state == "failed"
        assert job.error == (f"{step} failed: {type(error).__name__}: {error}; "
                             f"the study's hemorrhage alert {alert.id} stands without them")
        assert alert.payload["kind"] == "ich_alert" and alert.job_id == job_id
        assert datetime.fromisoformat(alert.payload["acquisition_datetime"]).tzinfo  # before: the modality's clock
        delivery = session.scalars(select(Delivery)).one()
        assert (delivery.kind, delivery.target, delivery.state) == ("webhook", "ed", "pending")
        assert session.scalars(select(Artifact)).all() == []


def test_a_job_queued_before_a_channel_was_removed_still_alerts_the_channels_that_remain(tmp_path: Path) -> None:
    """The job was queued when 'pager' and the report destination 'emr' were configured; it runs after a restart
    without them. Before: KeyError, no alert at all, the job left running for good."""
    service, job_id = _bleed_job(tmp_path, alert_channels=["ed", "pager"], report_destinations=["emr", "ed"])
    assert service.runner.claim(job_id)
    service.runner.run(job_id)
    with service.db.session() as session:
        assert session.get(Job, job_id).state == "done"
        alert = session.scalars(select(Alert)).one()
        assert [(d.kind, d.target) for d in session.scalars(select(Delivery).where(Delivery.alert_id == alert.id))] \
            == [("webhook", "ed")]
        audits = session.scalars(select(AuditEvent.detail).where(AuditEvent.kind == "target_not_told")).all()
        assert sorted(audits) == ["alert channel 'pager' is no longer configured",  # 'ed' names a channel only
                                  "report destination 'ed' is no longer configured",
                                  "report destination 'emr' is no longer configured"]


def test_a_job_for_a_detector_the_routing_no_longer_serves_fails_with_the_reason(tmp_path: Path) -> None:
    """Queued for nodule_fusion, run after the routing stopped naming it. Before: KeyError outside the job's guard,
    the job running for good and its study blocked from reprocess and retention."""
    service, job_id = _bleed_job(tmp_path)
    with service.db.session() as session:
        job = session.get(Job, job_id)
        job.detector, job.study.state = "nodule_fusion", "processing"
    del service.runner._detectors["nodule_fusion"]  # as a service whose routing no longer names it
    assert service.runner.claim(job_id)
    service.runner.run(job_id)
    with service.db.session() as session:
        job = session.get(Job, job_id)
        assert job.state == "failed" and job.error.startswith("detector nodule_fusion is not served")
        assert job.study.state == "done"


def test_a_result_with_no_alert_due_audits_no_alert_channel(tmp_path: Path) -> None:
    """Review finding: every negative study audited and logged its removed alert channels as 'not told'."""
    service, job_id = _bleed_job(tmp_path, lesion=False, alert_channels=["pager"])
    assert service.runner.claim(job_id)
    service.runner.run(job_id)
    with service.db.session() as session:
        job = session.get(Job, job_id)
        assert job.state == "done" and job.result["positive"] is False
        assert session.scalars(select(AuditEvent).where(AuditEvent.kind == "target_not_told")).all() == []


@pytest.mark.parametrize("mapped", [False, True])
def test_an_issuer_with_no_fhir_identifier_system_gets_no_fhir_report(tmp_path: Path, mapped: bool) -> None:
    """The synthetic study's IssuerOfPatientID is RADFUSION-SYNTHETIC. Unmapped, its Patient ID is not the EMR's
    patient of that number (before: the report was posted under the default system, to whoever that is)."""
    emr = {"fhir_destinations": [{"name": "emr", "base_url": "http://127.0.0.1:9/fhir"}]}
    if mapped:
        emr["clinical"] = {"identifier_systems": {"RADFUSION-SYNTHETIC": "urn:oid:1.2.3.99"}}
    service, job_id = _bleed_job(tmp_path, emr, report_destinations=["emr"])
    assert service.runner.claim(job_id)
    service.runner.run(job_id)
    with service.db.session() as session:
        assert session.get(Job, job_id).state == "done"
        reports = session.scalars(select(Delivery).where(Delivery.kind == "fhir_report")).all()
        untold = session.scalars(select(AuditEvent.detail).where(AuditEvent.kind == "target_not_told")).all()
    assert len(reports) == int(mapped)
    assert untold == ([] if mapped else ["report destination 'emr' (FHIR) cannot be told which patient: "
                                         "IssuerOfPatientID 'RADFUSION-SYNTHETIC' has no FHIR identifier system "
                                         "(clinical.identifier_systems)"])


def test_a_study_s_second_reconstruction_with_the_bleed_does_not_page_again(tmp_path: Path) -> None:
    settings = load_settings(storage_path=tmp_path / "data", routing=[r.model_dump(mode="json") for r in
                                                                      default_routing([], ["ed"])],
                             alerts={"channels": [{"name": "ed", "url": "http://127.0.0.1:9/"}]})
    service = Service(settings)
    first = write_study("head_ct", tmp_path / "in", seed=14, lesion=True, rows=256, slices=24).paths
    second_series = generate_uid()
    second = []
    for index, path in enumerate(first):  # the same head reconstructed again: another series of the study
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID, ds.SOPInstanceUID = second_series, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        second.append(tmp_path / f"second-{index}.dcm")
        ds.save_as(second[-1])
    _store(service, first + second)
    with service.db.session() as session:
        jobs = [Job(study_id=series.study_id, series_id=series.id, detector="ich_fusion", model_version="test",
                    rule="test", alert_channels=["ed"]) for series in session.scalars(select(Series))]
        session.add_all(jobs)
        session.flush()
        job_ids = [job.id for job in jobs]
    for job_id in job_ids:
        assert service.runner.claim(job_id)
        service.runner.run(job_id)
    with service.db.session() as session:
        assert [session.get(Job, j).state for j in job_ids] == ["done", "done"]
        alert = session.scalars(select(Alert)).one()  # before: two alerts, two pages for one bleed
        assert alert.job_id == job_ids[0]
        assert [d.kind for d in session.scalars(select(Delivery).where(Delivery.alert_id.is_not(None)))] == ["webhook"]
        repeat = session.scalars(select(AuditEvent).where(AuditEvent.kind == "alert_not_repeated")).one()
        assert repeat.subject == f"job {job_ids[1]}" and f"alert {alert.id}" in repeat.detail
        assert len(session.scalars(select(Artifact).where(Artifact.kind == "sr")).all()) == 2  # both results kept
        session.scalars(select(Delivery).where(Delivery.alert_id == alert.id)).one().state = "failed"  # reached nobody
        again = Job(study_id=jobs[1].study_id, series_id=jobs[1].series_id, detector="ich_fusion", model_version="v2",
                    rule="test", alert_channels=["ed"])
        session.add(again)
        session.flush()
        again_id = again.id
    assert service.runner.claim(again_id)
    service.runner.run(again_id)
    with service.db.session() as session:  # a page that reached nobody does not silence the next one
        assert [a.job_id for a in session.scalars(select(Alert).order_by(Alert.id))] == [job_ids[0], again_id]


def test_a_finished_study_reprocessed_is_analysed_again_and_its_new_sr_replaces_the_old(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = load_settings(storage_path=tmp_path / "data",
                             routing=[r.model_dump(mode="json") for r in default_routing([], [])])
    service = Service(settings)
    uid, _ = store(service.db, service.spool,
                   write_study("head_ct", tmp_path / "in", seed=3, lesion=False, rows=128, slices=16).paths)

    def analyse(now: datetime) -> Job:
        assert service.assembler.tick(now) == 1
        with service.db.session() as session:
            job = session.scalars(select(Job).order_by(Job.id.desc())).first()
        assert service.runner.claim(job.id)
        service.runner.run(job.id)
        with service.db.session() as session:
            return session.get(Job, job.id)

    first = analyse(utcnow() + timedelta(hours=1))
    assert (first.state, first.revision) == ("done", 0)
    config = tmp_path / "radfusion.yaml"
    config.write_text(f"storage_path: {tmp_path / 'data'}\n")
    assert cli_main(["--config", str(config), "reprocess", "1.2.3.999", uid]) == 2  # all or nothing
    assert "1.2.3.999: unknown study" in capsys.readouterr().err
    assert cli_main(["--config", str(config), "reprocess", uid]) == 0
    assert f"re-opened 1 studies: {uid}" in capsys.readouterr().out
    assert cli_main(["--config", str(config), "reprocess", uid]) == 2  # not analysed yet: not again
    assert "still being received, analysed or purged (receiving)" in capsys.readouterr().err

    second = analyse(utcnow() + timedelta(hours=2))
    assert (second.state, second.revision, second.detector) == ("done", 1, first.detector)
    with service.db.session() as session:
        old, new = session.scalars(select(Artifact).where(Artifact.kind == "sr").order_by(Artifact.id)).all()
        assert (old.job_id, new.job_id, new.predecessor_id) == (first.id, second.id, old.id)
        assert session.scalars(select(AuditEvent.subject).where(AuditEvent.kind == "study_reprocess_requested")
                               ).one() == uid
    assert pydicom.dcmread(new.path).PredecessorDocumentsSequence[0].StudyInstanceUID == uid

    Path(new.path).unlink()  # an SR file lost from the results folder must not stop the next run
    assert cli_main(["--config", str(config), "reprocess", uid]) == 0
    third = analyse(utcnow() + timedelta(hours=3))
    assert third.state == "done", third.error
    with service.db.session() as session:
        latest = session.scalars(select(Artifact).where(Artifact.kind == "sr").order_by(Artifact.id.desc())).first()
    cited = pydicom.dcmread(latest.path).PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert cited.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == new.sop_instance_uid
    capsys.readouterr()

    purge_expired(service.db, service.spool, 1, now=utcnow() + timedelta(days=3))
    assert cli_main(["--config", str(config), "reprocess", uid]) == 2
    assert "its images are no longer stored" in capsys.readouterr().err


def test_a_scout_in_the_axial_series_does_not_hold_it_up_past_the_settle_time(tmp_path: Path) -> None:
    """A localizer (its own orientation) among the axial slices: the series is assembled once its association is
    released and settled, like one without it, instead of after the quiet timeout."""
    service = Service(load_settings(storage_path=tmp_path / "data",
                                    routing=[r.model_dump(mode="json") for r in default_routing([], [])]))
    paths = write_study("head_ct", tmp_path / "in", seed=3, lesion=False, rows=64, slices=10).paths
    scout = pydicom.dcmread(paths[0])
    scout.SOPInstanceUID, scout.ImageType = generate_uid(), ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    scout.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    scout.save_as(tmp_path / "scout.dcm")
    _store(service, [*paths, tmp_path / "scout.dcm"])
    with service.db.session() as session:
        session.add(Association(id="a-1", calling_ae="CT1", called_ae="RADFUSION", peer_address="10.0.0.5",
                                state="released", ended_at=utcnow()))
        series = session.scalars(select(Series)).one()
        series.last_association_id = "a-1"
        settled = series.last_received_at + timedelta(seconds=service.settings.stability.settle_s + 1)
    assert settled < series.last_received_at + timedelta(seconds=service.settings.stability.quiet_timeout_s)
    assert service.assembler.tick(settled) == 1


def test_a_series_of_scouts_only_gets_no_job(tmp_path: Path) -> None:
    """A scout series of its own that the rules' description test lets through (Canon calls it "Scanogram"): before,
    it was routed to the hemorrhage detector and its job failed ("all images are localizers") on every study."""
    service = Service(load_settings(storage_path=tmp_path / "data",
                                    routing=[r.model_dump(mode="json") for r in default_routing([], [])]))
    paths = write_study("head_ct", tmp_path / "in", seed=3, lesion=False, rows=64, slices=10).paths
    scouts = []
    for index, path in enumerate(paths[:2]):
        scout = pydicom.dcmread(path)
        scout.SOPInstanceUID, scout.ImageType = generate_uid(), ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        scout.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1" if index == 0 else scout.SeriesInstanceUID
        scout.SeriesDescription, scout.ImageOrientationPatient = "Scanogram", [0, 1, 0, 0, 0, -1]
        scouts.append(tmp_path / f"scout{index}.dcm")
        scout.save_as(scouts[-1])
    _store(service, [*paths, *scouts])
    assert service.assembler.tick(utcnow() + timedelta(hours=1)) == 1  # the axial series' job only
    with service.db.session() as session:
        job = session.scalars(select(Job)).one()
        assert job.series.series_uid != "1.2.826.0.1.3680043.8.498.1"
        audit = session.scalars(select(AuditEvent).where(AuditEvent.kind == "localizers_only")).one()
        assert (audit.subject, audit.detail) == ("1.2.826.0.1.3680043.8.498.1", "1 localizer image(s): not analysed")


@pytest.mark.parametrize("first_reached_the_ris", [True, False])
def test_a_revision_queued_by_late_images_waits_for_the_one_before_and_replaces_it(tmp_path: Path,
                                                                                  first_reached_the_ris: bool) -> None:
    """Two workers ran both revisions side by side: neither SR named the other as its predecessor, and both stood
    in the PACS, the one read from fewer images possibly sent last. The RIS is told the second is a correction, but
    only a RIS that got the first: a correction of an order it never saw may be refused, and then it gets nothing."""
    routing = [{**r.model_dump(mode="json"), "report_destinations": ["ris"]} for r in default_routing([], [])]
    service = Service(load_settings(storage_path=tmp_path / "data", routing=routing,
                                    hl7_destinations=[{"name": "ris", "host": "127.0.0.1", "port": 9}]))
    paths = sorted(write_study("head_ct", tmp_path / "in", seed=3, lesion=False, rows=128, slices=16).paths,
                   key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
    other = write_study("head_ct", tmp_path / "other", seed=4, lesion=False, rows=128, slices=16).paths
    _store(service, paths[:-2])
    assert service.assembler.tick(utcnow() + timedelta(hours=1)) == 1
    _store(service, paths[-2:])  # two late slices while the first job is still queued
    _store(service, other)  # another study, queued behind them
    assert service.assembler.tick(utcnow() + timedelta(hours=2)) == 2
    with service.db.session() as session:
        first, second, unrelated = session.scalars(select(Job.id).order_by(Job.study_id, Job.revision)).all()
    assert service.runner.runnable(10) == [first, unrelated]  # the second revision is not offered to a worker
    assert service.runner.claim(first)
    assert not service.runner.claim(second)  # nor may a worker take it while the first runs
    assert service.runner.runnable(10) == [unrelated]
    service.runner.run(first)
    if not first_reached_the_ris:
        with service.db.session() as session:
            session.scalars(select(Delivery).where(Delivery.kind == "hl7_report")).one().state = "failed"
    assert service.runner.claim(second)
    service.runner.run(second)
    with service.db.session() as session:
        srs = {a.job_id: a for a in session.scalars(select(Artifact).where(Artifact.kind == "sr"))}
        assert srs[second].predecessor_id == srs[first].id
        orus = {d.job_id: d.payload["message"]
                for d in session.scalars(select(Delivery).where(Delivery.kind == "hl7_report"))}
    obrs = [orus[job].split("\r")[2].split("|") for job in (first, second)]
    assert [obr[25] for obr in obrs] == ["P", "C" if first_reached_the_ris else "P"]  # OBR-25
    assert obrs[0][3] == obrs[1][3] != obrs[0][20]  # the same filler order, not the study's UID (OBR-20)
    for job in (first, second):  # MSH-10: the job, and a random part a database started afresh does not repeat
        assert re.fullmatch(rf"RF{job}R0-[0-9a-f]{{6}}", orus[job].split("\r")[0].split("|")[9])
    replaced = pydicom.dcmread(srs[second].path).PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert replaced.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == srs[first].sop_instance_uid


def test_a_job_whose_outcome_cannot_be_recorded_is_queued_again_then_failed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """It stayed 'running' until the next start, and since a job waits for the earlier one of its series, the
    revision behind it (the complete series, perhaps the one with the bleed) waited with it."""
    service, job_id = _bleed_job(tmp_path)

    def locked(_job_id: int) -> None:
        raise RuntimeError("database is locked")

    monkeypatch.setattr(service.runner, "run", locked)
    monkeypatch.setattr(service, "_wake", lambda _name: None)  # no scheduler runs in this test
    for start in (1, 2, 3):
        assert service.runner.claim(job_id)
        service._run_job(job_id)
        with service.db.session() as session:
            job = session.get(Job, job_id)
            assert (job.state, job.attempts) == (("queued", start) if start < 3 else ("failed", 3))
    assert job.error == ("its outcome could not be recorded in 3 starts; not started again (radfusion reprocess "
                         "tries it once more)")
    with service.db.session() as session:
        assert len(session.scalars(select(AuditEvent).where(AuditEvent.kind == "job_requeued")).all()) == 2


def _mammo_per_view(tmp_path: Path, routing: list[dict]) -> Service:
    """A service with ``routing`` (and DICOM destinations 'pacs' and 'archive') that stored a normal four-view
    exam sent as one series per view, each described by its side ('left' / 'right')."""
    service = Service(load_settings(storage_path=tmp_path / "data", routing=routing, destinations=[
        {"name": name, "ae_title": name.upper(), "host": "127.0.0.1", "port": 9} for name in ("pacs", "archive")]))
    paths = write_case_dicom(generate_case(1), tmp_path / "exam")
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = generate_uid()
        ds.SeriesDescription = {"L": "left", "R": "right"}[ds.ImageLaterality]
        ds.save_as(path)
    _store(service, paths)
    return service


def test_the_mammography_jobs_of_two_rules_replace_nothing_of_each_other_but_a_renamed_rule_s_do(
        tmp_path: Path) -> None:
    """Each reads the series of its own rule: the second's SR replaced the first's. A job of the same views under a
    rule renamed since replaces the SR of those views, whatever the rule was called."""
    service = _mammo_per_view(tmp_path, [
        {"name": side, "match": {"Modality": "MG", "SeriesDescription": side}, "detectors": ["mammo_fusion"]}
        for side in ("left", "right")])
    assert service.assembler.tick(utcnow() + timedelta(hours=1)) == 2
    for _ in range(2):  # one study: one of its mammography jobs at a time
        (job_id,) = service.runner.runnable(10)
        assert service.runner.claim(job_id)
        service.runner.run(job_id)
    with service.db.session() as session:
        srs = {job.rule: artifact for artifact, job in session.execute(
            select(Artifact, Job).join(Job, Artifact.job_id == Job.id).where(Artifact.kind == "sr"))}
        assert [sr.predecessor_id for sr in srs.values()] == [None, None]
        left = session.scalars(select(Job).where(Job.rule == "left")).one()
        renamed = Job(study_id=left.study_id, series_id=left.series_id, detector="mammo_fusion", model_version="x",
                      rule="left-renamed", revision=1)
        session.add(renamed)
        session.flush()
        renamed_id = renamed.id
    assert service.runner.claim(renamed_id)
    service.runner.run(renamed_id)
    with service.db.session() as session:
        sr = session.scalars(select(Artifact).where(Artifact.job_id == renamed_id, Artifact.kind == "sr")).one()
        assert sr.predecessor_id == srs["left"].id


def test_a_study_level_job_tells_the_targets_of_every_series_rule(tmp_path: Path) -> None:
    """The left views matched rule 'all' only and queued its job; the right views, matching 'all' and 'archive',
    were skipped as that job's, and the archive was never sent the result."""
    service = _mammo_per_view(tmp_path, [
        {"name": "all", "match": {"Modality": "MG"}, "detectors": ["mammo_fusion"], "destinations": ["pacs"]},
        {"name": "archive", "match": {"SeriesDescription": "right"}, "detectors": ["mammo_fusion"],
         "destinations": ["archive"]}])
    assert service.assembler.tick(utcnow() + timedelta(hours=1)) == 1
    with service.db.session() as session:
        assert session.scalars(select(Job.destinations)).one() == ["pacs", "archive"]


def test_images_gone_from_the_spool_are_read_without_and_the_result_says_so(tmp_path: Path) -> None:
    """A retention purge that failed after deleting the files left their rows: the job of the part sent again read
    them and failed (FileNotFoundError), so a bleed in it was neither reported nor alerted."""
    service, job_id = _bleed_job(tmp_path, alert_channels=["ed"])
    with service.db.session() as session:  # the two top slices: the part left is a whole stack
        gone = [row.path for row in sorted(session.execute(select(Instance.path, Instance.position)),
                                           key=lambda row: row.position[2])[-2:]]
    for path in gone:
        Path(path).unlink()
    assert service.runner.claim(job_id)
    service.runner.run(job_id)
    with service.db.session() as session:
        job = session.get(Job, job_id)
        assert job.state == "done", job.error
        assert ("2 image(s) recorded for what this job reads are gone from radfusion's spool (a retention purge that "
                "did not finish) and were not read") in job.result["notes"]  # the SR's comments show the result's notes
