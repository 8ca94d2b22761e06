"""Spool retention: old finished studies lose their image files and rows, nothing else does."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import os
import threading
from collections.abc import Callable

import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE
from sqlalchemy import func, select, update

from ai_engine.synthetic.studies import write_study
from dicom_node.errors import SpoolPathError
from dicom_node.scp import ScpConfig, StorageScp
from dicom_node.spool import Spool, _SharedExclusiveLock
from radfusion.assembly import reopen_studies
from radfusion.db import Database
from radfusion.errors import ConfigError, RadfusionError
from radfusion.ingest import IngestRecorder
from radfusion.models import AuditEvent, Instance, Job, Quarantine, Series, Study, utcnow
from radfusion.recovery import read_stored_instance, reconcile_spool, recover
from radfusion.retention import purge_expired
from radfusion.settings import load_settings
from tests.peers import wait_until
from tests.unit.dicom_node.helpers import ct_dataset
from tests.unit.radfusion.stored import store

DAYS = 14


def receive(db: Database, spool: Spool, tmp_path: Path, seed: int) -> tuple[str, list[Path]]:
    """Store a small head CT as the SCP would (durable file, then its row); its Study UID and spool paths."""
    return store(db, spool, write_study("head_ct", tmp_path / f"in{seed}", seed=seed, lesion=False, rows=64,
                                        slices=8).paths)


def age(db: Database, study_uid: str, days: float, state: str = "done") -> None:
    with db.session() as session:
        session.execute(update(Study).where(Study.study_uid == study_uid)
                        .values(state=state, last_received_at=utcnow() - timedelta(days=days)))


def rows_of(db: Database, study_uid: str) -> int:
    with db.session() as session:
        return int(session.scalar(select(func.count()).select_from(Instance).join(Series).join(Study)
                                  .where(Study.study_uid == study_uid)))


@pytest.fixture
def node(tmp_path: Path) -> tuple[Database, Spool]:
    return Database(f"sqlite:///{tmp_path / 'db.sqlite'}"), Spool(tmp_path / "spool")


def test_an_old_finished_study_loses_its_files_rows_and_folders_and_says_so(node, tmp_path: Path) -> None:
    db, spool = node
    old_uid, old_paths = receive(db, spool, tmp_path, seed=1)
    new_uid, new_paths = receive(db, spool, tmp_path, seed=2)
    age(db, old_uid, DAYS + 1)
    age(db, new_uid, DAYS - 1)
    result = spool.results / "sr.dcm"
    result.write_bytes(b"a result object")
    size = sum(p.stat().st_size for p in old_paths)

    report = purge_expired(db, spool, DAYS)

    assert (report.studies, report.instances, report.bytes_freed) == (1, len(old_paths), size)
    assert not any(p.exists() for p in old_paths)
    assert not old_paths[0].parent.exists() and not old_paths[0].parent.parent.exists()
    assert all(p.exists() for p in new_paths) and result.exists()
    assert rows_of(db, old_uid) == 0 and rows_of(db, new_uid) == len(new_paths)
    with db.session() as session:
        assert session.scalar(select(Series.instance_count).join(Study).where(Study.study_uid == old_uid)) == 0
        assert session.scalar(select(Study.state).where(Study.study_uid == old_uid)) == "done"
        [event] = session.scalars(select(AuditEvent).where(AuditEvent.kind == "study_purged")).all()
    assert event.subject == old_uid and f"retention: {len(old_paths)} instance(s)" in event.detail
    assert purge_expired(db, spool, DAYS) == purge_expired(db, spool, DAYS + 5)  # nothing left to do: both empty
    assert reconcile_spool(db, spool, IngestRecorder(db, spool)) == 0  # a restart records nothing back


@pytest.mark.parametrize("state", ["receiving", "processing"])
def test_a_study_still_being_received_or_analysed_is_kept_however_old(node, tmp_path: Path, state: str) -> None:
    db, spool = node
    uid, paths = receive(db, spool, tmp_path, seed=3)
    age(db, uid, DAYS * 10, state=state)
    assert purge_expired(db, spool, DAYS).studies == 0
    assert all(p.exists() for p in paths) and rows_of(db, uid) == len(paths)


def test_a_study_sent_again_after_its_purge_is_received_as_new(node, tmp_path: Path) -> None:
    db, spool = node
    sources = write_study("head_ct", tmp_path / "in", seed=4, lesion=False, rows=64, slices=8).paths
    uid, paths = store(db, spool, sources)
    age(db, uid, DAYS + 1)
    purge_expired(db, spool, DAYS)
    again_uid, again = store(db, spool, sources)  # the PACS sends the same study again
    assert again_uid == uid and again == paths and all(p.exists() for p in again)
    with db.session() as session:
        study = session.scalars(select(Study).where(Study.study_uid == uid)).one()
        assert study.state == "receiving"
        assert [s.instance_count for s in study.series] == [len(paths)]


def test_rows_whose_files_a_crash_already_deleted_are_removed_too(node, tmp_path: Path) -> None:
    db, spool = node
    uid, paths = receive(db, spool, tmp_path, seed=5)
    for path in paths[:4]:  # the last pass deleted these files, then the process died before the rows went
        path.unlink()
    size = sum(p.stat().st_size for p in paths[4:])
    age(db, uid, DAYS + 1)
    report = purge_expired(db, spool, DAYS)
    assert (report.instances, report.bytes_freed) == (len(paths), size) and rows_of(db, uid) == 0
    assert not paths[0].parent.exists()


def test_discard_keeps_a_folder_that_a_late_instance_has_entered(node, tmp_path: Path) -> None:
    db, spool = node
    _, paths = receive(db, spool, tmp_path, seed=6)
    late = paths[0].parent / "1.2.3.4.dcm"
    late.write_bytes(b"arrived after the purge chose its files")
    spool.discard(paths)
    assert late.exists() and not any(p.exists() for p in paths)


def test_discard_refuses_anything_outside_the_instance_folders_before_deleting(node, tmp_path: Path) -> None:
    db, spool = node
    _, paths = receive(db, spool, tmp_path, seed=7)
    kept = spool.quarantine_dir / "x.dcm"
    kept.write_bytes(b"quarantined")
    for outside in (kept, paths[0].parent / ".." / ".." / ".." / "quarantine" / "x.dcm", tmp_path / "elsewhere.dcm"):
        with pytest.raises(SpoolPathError):
            spool.discard([paths[0], outside])
    assert kept.exists() and paths[0].exists()


def test_retention_of_zero_days_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "r.yaml"
    config.write_text("retention_days: 0\n")
    with pytest.raises(ConfigError, match=r"retention_days: Input should be greater than or equal to 1"):
        load_settings(config)
    config.write_text("retention_days: null\n")
    assert load_settings(config).retention_days is None


def scp_on(db: Database, spool: Spool) -> tuple[StorageScp, Callable[[Dataset], int]]:
    """The real listener, recording into ``db``, and a C-STORE of one dataset to it (its status)."""
    scp = StorageScp(ScpConfig(ae_title="RADFUSION", bind_address="127.0.0.1", port=0,
                               allowed_calling_aes=frozenset({"PYSCU"}), min_free_disk_bytes=0), spool,
                     IngestRecorder(db, spool))
    port = scp.start()
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)

    def send(ds: Dataset) -> int:
        assoc = ae.associate("127.0.0.1", port, ae_title="RADFUSION")
        status = int(assoc.send_c_store(ds).Status)
        assoc.release()
        return status
    return scp, send


def during_discard(spool: Spool, monkeypatch: pytest.MonkeyPatch, action: Callable[[], None]) -> None:
    """Run ``action`` inside the purge, just before it deletes the study's files."""
    real = spool.discard

    def discard(paths):  # noqa: ANN001, ANN202
        action()
        return real(paths)
    monkeypatch.setattr(spool, "discard", discard)


def test_a_resend_during_a_purge_waits_for_it_and_is_then_received_as_new(node, monkeypatch) -> None:
    db, spool = node
    scp, send = scp_on(db, spool)
    datasets = [ct_dataset("1.2.3.4", "1.2.3.4.1", index=i) for i in (1, 2)]
    assert [send(ds) for ds in datasets] == [0, 0]
    age(db, "1.2.3.4", DAYS + 1)
    statuses: list[int] = []
    resend = threading.Thread(target=lambda: statuses.append(send(datasets[0])))

    def start_resend() -> None:
        resend.start()
        resend.join(timeout=1.0)
        assert resend.is_alive() and not statuses  # held back until the study's files and rows are gone

    during_discard(spool, monkeypatch, start_resend)
    assert purge_expired(db, spool, DAYS).instances == 2
    resend.join(timeout=30)
    scp.stop()
    assert statuses == [0]
    path = spool.instance_path("1.2.3.4", "1.2.3.4.1", datasets[0].SOPInstanceUID)
    assert path.exists() and rows_of(db, "1.2.3.4") == 1  # the acknowledged resend is kept, to be analysed
    with db.session() as session:
        study = session.scalars(select(Study)).one()
        assert study.state == "receiving" and [s.instance_count for s in study.series] == [1]


def test_an_instance_moved_to_another_study_during_a_purge_stays_with_it(node, tmp_path: Path, monkeypatch) -> None:
    db, spool = node
    uid, paths = receive(db, spool, tmp_path, seed=8)
    age(db, uid, DAYS + 1)
    moved_path = spool.instance_path("1.2.3.9", "1.2.3.9.1", paths[0].stem)

    def merge_resend() -> None:  # a PACS merge resends one instance under another study, as the listener stores it
        ds = pydicom.dcmread(paths[0])
        ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3.9", "1.2.3.9.1"
        ds.save_as(tmp_path / "moved.dcm")
        with spool.receiving("1.2.3.9"):
            spool.write_durably(moved_path, (tmp_path / "moved.dcm").read_bytes())
            IngestRecorder(db, spool).instance_stored(read_stored_instance(moved_path))

    during_discard(spool, monkeypatch, merge_resend)
    assert purge_expired(db, spool, DAYS).instances == len(paths) - 1
    assert moved_path.exists() and rows_of(db, "1.2.3.9") == 1 and rows_of(db, uid) == 0
    with db.session() as session:
        series = {s.series_uid: s for s in session.scalars(select(Series))}
        purged = session.scalars(select(Study).where(Study.study_uid == uid)).one()
        assert (purged.state, series[paths[0].parent.name].instance_count) == ("done", 0)
        assert series[paths[0].parent.name].state == "processed"  # nothing left to analyse there
        assert series["1.2.3.9.1"].instance_count == 1


def test_a_study_being_purged_cannot_be_reprocessed(node, tmp_path: Path, monkeypatch) -> None:
    db, spool = node
    uid, paths = receive(db, spool, tmp_path, seed=9)
    age(db, uid, DAYS + 1)
    refusals: list[str] = []

    def reprocess() -> None:
        with pytest.raises(RadfusionError) as refused:
            reopen_studies(db, [uid])
        refusals.append(str(refused.value))

    during_discard(spool, monkeypatch, reprocess)
    assert purge_expired(db, spool, DAYS).instances == len(paths)
    assert refusals == [f"nothing re-opened: {uid}: still being received, analysed or purged (purging)"]


def test_a_purge_that_fails_between_files_and_rows_hands_the_study_back(node, tmp_path: Path, monkeypatch) -> None:
    db, spool = node
    uid, paths = receive(db, spool, tmp_path, seed=10)
    age(db, uid, DAYS + 1)
    real = spool.discard

    def discard_then_fail(paths):  # noqa: ANN001, ANN202
        real(paths)
        raise OSError("disk went away between the files and the rows")
    monkeypatch.setattr(spool, "discard", discard_then_fail)
    assert purge_expired(db, spool, DAYS).studies == 0  # logged, the pass goes on
    monkeypatch.undo()
    assert rows_of(db, uid) == len(paths)  # rows without files, never the reverse
    assert not any(p.exists() for p in paths)
    with db.session() as session:
        assert session.scalar(select(Study.state)) == "done"  # not left claimed: the next pass takes it
    assert purge_expired(db, spool, DAYS).instances == len(paths) and rows_of(db, uid) == 0


def test_a_purge_killed_between_files_and_rows_is_finished_after_the_restart(node, tmp_path: Path) -> None:
    db, spool = node
    uid, paths = receive(db, spool, tmp_path, seed=12)
    age(db, uid, DAYS + 1, state="purging")  # kill -9 after the claim and the files, before the rows
    spool.discard(paths)
    assert recover(db)["purges_interrupted"] == 1
    assert reconcile_spool(db, spool, IngestRecorder(db, spool)) == 0  # nothing recorded back
    assert purge_expired(db, spool, DAYS).instances == len(paths) and rows_of(db, uid) == 0


def test_a_late_instance_between_choosing_and_claiming_a_study_keeps_it(node, tmp_path: Path, monkeypatch) -> None:
    db, spool = node
    sources = write_study("head_ct", tmp_path / "in", seed=13, lesion=False, rows=64, slices=8).paths
    uid, paths = store(db, spool, sources[:-1])
    age(db, uid, DAYS + 1)
    real = spool.purging
    late: list[Path] = []

    def late_then_purging(study_uid: str):  # noqa: ANN202 - the pass has chosen the study, not yet claimed it
        late.extend(store(db, spool, sources[-1:])[1])
        return real(study_uid)
    monkeypatch.setattr(spool, "purging", late_then_purging)
    assert purge_expired(db, spool, DAYS).studies == 0
    assert late[0].exists() and all(p.exists() for p in paths) and rows_of(db, uid) == len(sources)


def test_a_waiting_purge_holds_back_new_receipts_of_its_stripe_not_running_ones() -> None:
    lock = _SharedExclusiveLock()
    events: list[str] = []
    first = threading.Event()

    def receive_one(name: str, hold: threading.Event | None = None) -> None:
        with lock.shared():
            events.append(name)
            if hold is not None:
                hold.wait(5)

    def purge() -> None:
        with lock.exclusive():
            events.append("purge")

    running = threading.Thread(target=receive_one, args=("running", first))
    running.start()
    wait_until(lambda: events == ["running"], timeout=5)
    purger = threading.Thread(target=purge)
    purger.start()
    wait_until(lambda: lock._waiting_exclusive == 1, timeout=5)  # noqa: SLF001
    newcomer = threading.Thread(target=receive_one, args=("new",))
    newcomer.start()
    newcomer.join(0.3)
    assert newcomer.is_alive() and events == ["running"]  # the purge goes first once the running one is done
    first.set()
    for thread in (running, purger, newcomer):
        thread.join(5)
    assert events == ["running", "purge", "new"]


def test_a_study_whose_last_job_finished_recently_is_kept(node, tmp_path: Path) -> None:
    db, spool = node
    uid, paths = receive(db, spool, tmp_path, seed=11)
    age(db, uid, DAYS + 1)  # received long ago, but its job (failed, say) ended a day ago: it can still be reprocessed
    with db.session() as session:
        study = session.scalars(select(Study)).one()
        session.add(Job(study_id=study.id, series_id=study.series[0].id, detector="ich_fusion", model_version="1",
                        rule="head", state="failed", finished_at=utcnow() - timedelta(days=1)))
    assert purge_expired(db, spool, DAYS).studies == 0 and all(p.exists() for p in paths)
    assert purge_expired(db, spool, DAYS, now=utcnow() + timedelta(days=DAYS)).instances == len(paths)


def test_an_instance_resent_elsewhere_after_its_old_copy_was_purged_is_stored(node, tmp_path: Path) -> None:
    db, spool = node
    uid, paths = receive(db, spool, tmp_path, seed=14)
    ds = pydicom.dcmread(paths[1])
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3.7", "1.2.3.7.1"  # a PACS merge resends it elsewhere
    ds.save_as(tmp_path / "merged.dcm")
    spool.discard(paths[1:2])
    _, [moved] = store(db, spool, [tmp_path / "merged.dcm"])  # its old copy is gone: nothing to set aside
    assert moved.exists() and rows_of(db, "1.2.3.7") == 1 and rows_of(db, uid) == len(paths) - 1
    with db.session() as session:
        assert session.scalars(select(Quarantine)).all() == []


def test_a_file_set_aside_while_a_purge_removes_its_folder_keeps_its_reason(node, tmp_path: Path, monkeypatch) -> None:
    db, spool = node
    _, [path] = store(db, spool, write_study("head_ct", tmp_path / "in", seed=15, lesion=False, rows=64,
                                             slices=8).paths[:1])
    real = os.replace

    def replace_then_purge_folder(source, target):  # noqa: ANN001, ANN202
        real(source, target)
        if Path(source) == path:
            path.parent.rmdir()  # the purge found the folder empty and removed it
    monkeypatch.setattr(os, "replace", replace_then_purge_folder)
    target = spool.quarantine_file(path, "superseded", "", "", None)
    assert target.exists() and target.with_suffix(".json").exists()


def test_quarantined_files_go_after_the_retention_period_and_their_rows_keep_the_reason(node) -> None:
    db, spool = node
    old = spool.quarantine_file(spool.stage(b"not DICOM")[0], "cannot parse", "CT1", "assoc-1")
    with db.session() as session:
        session.add(Quarantine(association_id="assoc-1", reason="cannot parse", path=str(old)))
    assert purge_expired(db, spool, DAYS).quarantined == 0  # set aside just now: kept
    assert purge_expired(db, spool, DAYS, now=utcnow() + timedelta(days=DAYS, hours=1)).quarantined == 1
    assert not old.exists() and not old.with_suffix(".json").exists()
    with db.session() as session:
        row = session.scalars(select(Quarantine)).one()
        assert (row.reason, row.path) == ("cannot parse", None)
        assert session.scalars(select(AuditEvent.kind).where(AuditEvent.kind == "quarantine_purged")).one()
