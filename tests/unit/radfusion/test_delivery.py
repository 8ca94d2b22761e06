"""Persistent retries: backoff after a failure, delivered when the receiver is back, failed only after the limit."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sqlalchemy import select

from radfusion.db import Database
from radfusion.delivery import DeliveryWorker
from radfusion.models import Alert, AuditEvent, Delivery, Job, Series, Study, utcnow
from radfusion.settings import load_settings
from tests.peers import free_port


class Receiver(BaseHTTPRequestHandler):
    bodies: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802
        type(self).bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return


def setup(tmp_path: Path, port: int) -> tuple[Database, DeliveryWorker, int]:
    settings = load_settings(storage_path=tmp_path, alerts={"channels": [{"name": "ed", "url": f"http://127.0.0.1:{port}/"}]},
                             retry={"initial_s": 10, "factor": 3, "max_s": 60, "give_up_after_h": 1, "timeout_s": 2})
    db = Database(settings.effective_database_url)
    with db.session() as session:
        study = Study(study_uid="1.2.3", accession_number="A1")
        session.add(study)
        session.flush()
        series = Series(study_id=study.id, series_uid="1.2.3.4")
        session.add(series)
        session.flush()
        job = Job(study_id=study.id, series_id=series.id, detector="ich_baseline", model_version="1", rule="r")
        session.add(job)
        session.flush()
        alert = Alert(job_id=job.id, payload={"kind": "ich_alert", "study_instance_uid": "1.2.3"},
                      released_at=utcnow() - timedelta(seconds=3))
        session.add(alert)
        session.flush()
        delivery = Delivery(kind="webhook", target="ed", job_id=job.id, alert_id=alert.id)
        session.add(delivery)
        session.flush()
        delivery_id = delivery.id
    return db, DeliveryWorker(db, settings), delivery_id


def test_failure_backs_off_then_delivers_when_the_receiver_is_back(tmp_path: Path) -> None:
    port = free_port()
    db, worker, delivery_id = setup(tmp_path, port)
    assert worker.run_due() == 0
    with db.session() as session:
        delivery = session.get(Delivery, delivery_id)
        assert (delivery.state, delivery.attempts) == ("pending", 1)
        assert "127.0.0.1" in delivery.last_error
        wait = (delivery.next_attempt_at - utcnow()).total_seconds()
        assert 5 < wait <= 10  # first retry after initial_s
    assert worker.run_due() == 0  # not due yet: nothing is tried
    with db.session() as session:
        assert session.get(Delivery, delivery_id).attempts == 1
        session.get(Delivery, delivery_id).next_attempt_at = utcnow()

    Receiver.bodies = []
    server = ThreadingHTTPServer(("127.0.0.1", port), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert worker.run_due() == 1
    finally:
        server.shutdown()
    assert Receiver.bodies == [{"kind": "ich_alert", "study_instance_uid": "1.2.3"}]
    with db.session() as session:
        delivery = session.get(Delivery, delivery_id)
        alert = session.get(Alert, delivery.alert_id)
        assert (delivery.state, delivery.attempts, delivery.last_error) == ("delivered", 2, None)
        assert alert.latency_s == pytest.approx((alert.delivered_at - alert.released_at).total_seconds())


def test_gives_up_only_after_the_configured_time_and_says_so(tmp_path: Path) -> None:
    db, worker, delivery_id = setup(tmp_path, free_port())
    with db.session() as session:
        session.get(Delivery, delivery_id).created_at = utcnow() - timedelta(hours=2)
    worker.run_due()
    with db.session() as session:
        assert session.get(Delivery, delivery_id).state == "failed"
        event = session.scalars(select(AuditEvent).where(AuditEvent.kind == "delivery_failed")).one()
    assert "gave up after 1 attempts" in event.detail
