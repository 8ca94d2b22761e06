"""Spool retention: old finished studies lose their image files and rows, nothing else does."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from ai_engine.synthetic.studies import write_study
from dicom_node.errors import SpoolPathError
from dicom_node.spool import Spool
from radfusion.db import Database
from radfusion.errors import ConfigError
from radfusion.ingest import IngestRecorder
from radfusion.models import AuditEvent, Instance, Series, Study, utcnow
from radfusion.recovery import reconcile_spool
from radfusion.retention import purge_expired
from radfusion.settings import load_settings
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
    assert event.subject == old_uid and f"{len(old_paths)} instance file(s)" in event.detail
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
