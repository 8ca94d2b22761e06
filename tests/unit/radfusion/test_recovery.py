"""Start-up recovery: dead associations closed, running jobs requeued, lost rows rebuilt from the spool."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from ai_engine.synthetic.studies import write_study
from dicom_node.spool import Spool
from radfusion.db import Database
from radfusion.ingest import IngestRecorder
from radfusion.models import AuditEvent, Instance, Job, Quarantine, Series, Study, utcnow
from radfusion.recovery import read_stored_instance, reconcile_spool, recover


def spool_study(tmp_path: Path) -> tuple[Database, Spool, IngestRecorder, list[Path]]:
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    spool = Spool(tmp_path / "spool")
    study = write_study("head_ct", tmp_path / "in", seed=1, lesion=False, rows=64, slices=8)
    paths = []
    for source in study.paths:
        ds = pydicom.dcmread(source, stop_before_pixels=True)
        target = spool.instance_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        spool.write_durably(target, source.read_bytes())
        paths.append(target)
    return db, spool, IngestRecorder(db, spool), paths


def count(db: Database) -> int:
    with db.session() as session:
        return int(session.scalar(select(func.count()).select_from(Instance)))


def test_files_whose_rows_were_lost_are_recorded_again(tmp_path: Path) -> None:
    db, spool, recorder, paths = spool_study(tmp_path)
    for path in paths[:3]:  # these rows survived; the other five were in the lost tail of the WAL
        recorder.instance_stored(read_stored_instance(path))
    assert reconcile_spool(db, spool, recorder) == 5
    assert count(db) == 8
    with db.session() as session:
        rows = session.scalars(select(Instance).order_by(Instance.instance_number)).all()
        assert [r.position[2] for r in rows] == sorted(r.position[2] for r in rows)
        assert "5 spool file(s)" in session.scalars(select(AuditEvent.detail)).one()
    assert reconcile_spool(db, spool, recorder) == 0  # idempotent


def test_series_untouched_since_long_before_the_newest_row_are_not_read(tmp_path: Path) -> None:
    db, spool, recorder, paths = spool_study(tmp_path)
    recorder.instance_stored(read_stored_instance(paths[0]))
    old = paths[0].parent.stat().st_mtime - 3600
    os.utime(paths[0].parent, (old, old))
    assert reconcile_spool(db, spool, recorder) == 0
    assert count(db) == 1


def test_an_unreadable_file_is_set_aside_and_start_up_goes_on(tmp_path: Path) -> None:
    db, spool, recorder, paths = spool_study(tmp_path)
    paths[0].write_bytes(b"not DICOM at all")
    ds = pydicom.dcmread(paths[1])  # the SCP takes the SOP class from the request: the dataset may lack it
    del ds.SOPClassUID
    ds.save_as(paths[1])
    assert reconcile_spool(db, spool, recorder) == 7
    with db.session() as session:
        [set_aside] = session.scalars(select(Quarantine)).all()
    assert "could not be read" in set_aside.reason and Path(set_aside.path).parent == spool.quarantine_dir
    assert not paths[0].exists()


def test_an_instance_resent_in_another_series_moves_and_its_old_file_is_set_aside(tmp_path: Path) -> None:
    db, spool, recorder, paths = spool_study(tmp_path)
    for path in paths:
        recorder.instance_stored(read_stored_instance(path))
    ds = pydicom.dcmread(paths[0])  # a PACS study merge resends it under new Study and Series UIDs
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    moved = spool.instance_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    spool.write_durably(moved, _bytes(ds))
    assert recorder.instance_stored(read_stored_instance(moved)) is False
    with db.session() as session:
        row = session.scalars(select(Instance).where(Instance.sop_instance_uid == ds.SOPInstanceUID)).one()
        counts = {s.series_uid: s.instance_count for s in session.scalars(select(Series))}
        old = session.scalars(select(Series).where(Series.instance_count == 7)).one()
    assert row.path == str(moved) and counts[ds.SeriesInstanceUID] == 1 and old.state == "receiving"
    assert not paths[0].exists()  # set aside: the old series can no longer read the new bytes
    assert reconcile_spool(db, spool, recorder) == 0  # and a restart does not flip the row back


def test_a_move_whose_commit_a_power_loss_took_follows_the_surviving_file(tmp_path: Path) -> None:
    """The resend in another series was acknowledged and its old file set aside; then the power loss took the row's
    move (synchronous=NORMAL). Before: start-up set the new file aside too, and the row pointed at nothing."""
    db, spool, recorder, paths = spool_study(tmp_path)
    for path in paths:
        recorder.instance_stored(read_stored_instance(path))
    ds = pydicom.dcmread(paths[0])
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    moved = spool.instance_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    spool.write_durably(moved, _bytes(ds))
    recorder.set_aside(paths[0], ds.SOPInstanceUID, None, "superseded")  # what survived of the move: the files
    assert reconcile_spool(db, spool, recorder) == 1
    with db.session() as session:
        row = session.scalars(select(Instance).where(Instance.sop_instance_uid == ds.SOPInstanceUID)).one()
    assert row.path == str(moved) and moved.is_file()


def _bytes(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_a_job_the_dead_process_was_running_is_queued_again_without_its_start_time(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with db.session() as session:
        series = Series(study=Study(study_uid="1.2.3"), series_uid="1.2.3.1")
        session.add(series)
        session.flush()
        session.add(Job(study_id=series.study_id, series_id=series.id, detector="ich_fusion", model_version="1",
                        rule="head", state="running", started_at=utcnow()))
    assert recover(db)["jobs_requeued"] == 1
    with db.session() as session:
        assert session.execute(select(Job.state, Job.started_at)).one() == ("queued", None)


def test_a_job_the_process_died_under_three_times_is_failed_not_started_again(tmp_path: Path) -> None:
    """A job that kills the process (the memory limit) was requeued at every start and run first: a crash loop that
    took the other jobs down with it."""
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with db.session() as session:
        study = Study(study_uid="1.2.3", state="processing")
        series = Series(study=study, series_uid="1.2.3.1")
        session.add(series)
        session.flush()
        session.add(Job(study_id=series.study_id, series_id=series.id, detector="ich_fusion", model_version="1",
                        rule="head", state="running", started_at=utcnow(), attempts=3))
    assert recover(db)["jobs_requeued"] == 0
    with db.session() as session:
        job = session.scalars(select(Job)).one()
        assert job.state == "failed" and "stopped during this job 3 times" in job.error
        assert session.scalars(select(Study.state)).one() == "done"  # so reprocess may try it again
