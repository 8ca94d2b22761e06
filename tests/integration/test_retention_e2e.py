"""Spool retention in the running server: a finished study past its retention period is purged at start-up,
and the same study sent again afterwards is received and finished like a new one."""

from __future__ import annotations

import stat
from datetime import timedelta
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import func, select, update

from ai_engine.synthetic.studies import write_study
from radfusion.models import Artifact, AuditEvent, Instance, Job, Study, utcnow
from tests.integration.servers import RadfusionServer
from tests.peers import storescu, wait_until
from tests.unit.reports.report_checks import content_items

pytestmark = [pytest.mark.slow, pytest.mark.peers]


def instances(server: RadfusionServer) -> int:
    with server.db.session() as session:
        return int(session.scalar(select(func.count()).select_from(Instance)) or 0)


def study_state(server: RadfusionServer) -> str | None:
    with server.db.session() as session:
        return session.scalar(select(Study.state))


def test_an_expired_study_is_purged_by_the_server_and_a_resend_is_received_again(
        tmp_path: Path, database_url: str | None) -> None:
    study = write_study("head_ct", tmp_path / "in", seed=3, lesion=False, rows=64, slices=10)
    server = RadfusionServer(tmp_path / "rf", routing=[], retention_days=7,  # no rules: ingest and assembly only
                             database_url=database_url)
    server.start()
    try:
        assert storescu(server.port, study.paths).returncode == 0
        wait_until(lambda: study_state(server) == "done", timeout=30, what="study done")
        spool = tmp_path / "rf" / "data" / "instances"
        assert instances(server) == len(study.paths) == len(list(spool.rglob("*.dcm")))
        private = [spool.parent, *spool.rglob("*")] + ([] if database_url else [spool.parent / "radfusion.db"])
        assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in private} <= {"0o700", "0o600"}  # before: 0644 db, 0755
        server.stop()
        with server.db.session() as session:  # eight days pass
            session.execute(update(Study).values(last_received_at=utcnow() - timedelta(days=8)))

        server.start()
        wait_until(lambda: instances(server) == 0, timeout=30, what="the start-up retention pass")
        assert not list(spool.rglob("*.dcm")) and not list(spool.iterdir())
        with server.db.session() as session:
            assert session.scalar(select(func.count()).select_from(AuditEvent)
                                  .where(AuditEvent.kind == "study_purged")) == 1

        assert storescu(server.port, study.paths).returncode == 0  # the PACS sends the study again
        wait_until(lambda: study_state(server) == "done" and instances(server) == len(study.paths), timeout=30,
                   what="the resent study received and finished")
        assert len(list(spool.rglob("*.dcm"))) == len(study.paths)
        assert "Traceback" not in server.log()
    finally:
        server.stop()


def _srs(server: RadfusionServer) -> list[pydicom.Dataset]:
    with server.db.session() as session:
        paths = session.scalars(select(Artifact.path).where(Artifact.kind == "sr").order_by(Artifact.id)).all()
    return [pydicom.dcmread(path) for path in paths]


def _texts(sr: pydicom.Dataset) -> list[str]:
    return [str(item.TextValue) for item in content_items(sr) if "TextValue" in item]


def test_part_of_a_purged_study_sent_again_does_not_replace_the_result_of_the_whole(tmp_path: Path) -> None:
    """After the purge only 6 of 10 slices come again: their result stands beside the whole study's and says why;
    when the whole study comes again, its result replaces both."""
    study = write_study("head_ct", tmp_path / "in", seed=3, lesion=False, rows=64, slices=10)
    server = RadfusionServer(tmp_path / "rf", retention_days=7,
                             routing=[{"name": "head", "match": {"Modality": "CT"}, "detectors": ["ich_baseline"]}])
    server.start()
    try:
        assert storescu(server.port, study.paths).returncode == 0
        wait_until(lambda: len(_srs(server)) == 1, timeout=60, what="the whole study's SR")
        server.stop()
        with server.db.session() as session:  # eight days pass
            session.execute(update(Study).values(last_received_at=utcnow() - timedelta(days=8)))
            session.execute(update(Job).values(finished_at=utcnow() - timedelta(days=8)))
        server.start()
        wait_until(lambda: instances(server) == 0, timeout=30, what="the start-up retention pass")

        assert storescu(server.port, study.paths[:6]).returncode == 0
        wait_until(lambda: len(_srs(server)) == 2, timeout=60, what="the part's SR")
        whole, part = _srs(server)
        assert "PredecessorDocumentsSequence" not in part
        assert any("reads only the 6 image(s) sent again" in text and whole.SOPInstanceUID in text
                   for text in _texts(part))

        assert storescu(server.port, study.paths).returncode == 0  # the whole study again: it replaces the part
        wait_until(lambda: len(_srs(server)) == 3, timeout=60, what="the whole study's new SR")
        again = _srs(server)[2]
        replaced = {sop.ReferencedSOPInstanceUID for study in again.PredecessorDocumentsSequence
                    for series in study.ReferencedSeriesSequence for sop in series.ReferencedSOPSequence}
        assert replaced == {whole.SOPInstanceUID, part.SOPInstanceUID}  # both stood until now
        assert not any("reads only" in text for text in _texts(again))
        assert "Traceback" not in server.log()
    finally:
        server.stop()
