"""Two reconstructions of one head finishing together page each channel once, on SQLite and on PostgreSQL (where
the 'already told?' check and the alert's insert are serialised by a lock on the study's row)."""

from __future__ import annotations

import threading
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from ai_engine.results import AlgorithmInfo, DetectorResult, Finding, FindingType, Task
from radfusion import pipeline
from radfusion.db import Database
from radfusion.models import Alert, Delivery, Job, Series, Study, utcnow
from radfusion.outbound import outbound_findings
from radfusion.settings import load_settings
from tests.integration.servers import database_url


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.peers)])
def test_two_jobs_of_one_study_alerting_at_once_page_the_channel_once(
        backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(storage_path=tmp_path, alerts={"channels": [{"name": "ed", "url": "http://127.0.0.1:9/"}]})
    result = DetectorResult(Task.ICH, AlgorithmInfo("ich_fusion", "1", "1.2.3.9", "test"),
                            [Finding(FindingType.HEMORRHAGE, 0.9, (1, 2, 3), "left frontal", volume_ml=5.0)], 0.9, True)
    both_inside = threading.Barrier(2)
    build = pipeline.build_ich_alert

    def meet_then_build(*args: object, **kwargs: object) -> dict:
        try:  # unserialised, both jobs get here with nothing told yet; serialised, the second waits at the lock
            both_inside.wait(timeout=3)
        except threading.BrokenBarrierError:
            pass
        return build(*args, **kwargs)

    monkeypatch.setattr(pipeline, "build_ich_alert", meet_then_build)
    with database_url(backend, tmp_path) as url:
        db = Database(url)
        with db.session() as session:
            study = Study(study_uid="1.2.3", accession_number="A1")
            session.add(study)
            session.flush()
            jobs = []
            for uid in ("1.2.3.1", "1.2.3.2"):
                series = Series(study_id=study.id, series_uid=uid)
                session.add(series)
                session.flush()
                jobs.append(Job(study_id=study.id, series_id=series.id, detector="ich_fusion", model_version="1",
                                rule="r", alert_channels=["ed"]))
            session.add_all(jobs)
            session.flush()
            ids = [job.id for job in jobs]
        runner = pipeline.JobRunner(db, tmp_path, {}, settings, None, None)  # type: ignore[arg-type]

        def alert(job_id: int) -> None:
            with db.session() as session:
                runner._queue_alert(session, session.get(Job, job_id), result, None, outbound_findings(result, True),
                                    [pydicom.Dataset()], utcnow())

        threads = [threading.Thread(target=alert, args=(job_id,)) for job_id in ids]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        with db.session() as session:
            assert len(session.scalars(select(Alert)).all()) == 1
            assert len(session.scalars(select(Delivery).where(Delivery.target == "ed")).all()) == 1
        db.dispose()
