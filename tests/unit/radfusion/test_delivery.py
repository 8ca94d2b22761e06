"""Persistent retries: backoff after a failure, delivered when the receiver is back, failed only after the limit;
a refusal by the receiver fails at once and waits for ``requeue``."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from sqlalchemy import select
from sqlalchemy.orm import Session

from hl7_fhir.fhir_client import FhirError
from hl7_fhir.mllp import MllpNegativeAck
from radfusion.db import Database
from radfusion.delivery import DeliveryWorker, is_rejection, requeue_failed
from radfusion.errors import RadfusionError
from radfusion.models import Alert, Artifact, AuditEvent, Delivery, Job, Series, Study, utcnow
from radfusion.settings import load_settings
from reports.alerts import AlertDeliveryError
from tests.peers import free_port, wait_until, webhook_receiver
from tests.unit.dicom_node.helpers import write_ct


def add_job(session: Session) -> Job:
    """A study, its series and a job of it, flushed."""
    study = Study(study_uid="1.2.3", accession_number="A1")
    session.add(study)
    session.flush()
    series = Series(study_id=study.id, series_uid="1.2.3.4")
    session.add(series)
    session.flush()
    job = Job(study_id=study.id, series_id=series.id, detector="ich_baseline", model_version="1", rule="r")
    session.add(job)
    session.flush()
    return job


def setup(tmp_path: Path, port: int, silent_port: int | None = None, timeout_s: float = 2
          ) -> tuple[Database, DeliveryWorker, int]:
    """One alert for channel "ed" on ``port``; with ``silent_port``, first a delivery to channel "pager" there."""
    channels = [{"name": "ed", "url": f"http://127.0.0.1:{port}/"}]
    if silent_port is not None:
        channels.append({"name": "pager", "url": f"http://127.0.0.1:{silent_port}/"})
    settings = load_settings(storage_path=tmp_path, alerts={"channels": channels},
                             retry={"initial_s": 10, "factor": 3, "max_s": 60, "give_up_after_h": 1,
                                    "timeout_s": timeout_s})
    db = Database(settings.effective_database_url)
    with db.session() as session:
        job = add_job(session)
        alert = Alert(job_id=job.id, payload={"kind": "ich_alert", "study_instance_uid": "1.2.3"},
                      released_at=utcnow() - timedelta(seconds=3))
        session.add(alert)
        session.flush()
        if silent_port is not None:
            session.add(Delivery(kind="webhook", target="pager", job_id=job.id, alert_id=alert.id))
            session.flush()
        delivery = Delivery(kind="webhook", target="ed", job_id=job.id, alert_id=alert.id)
        session.add(delivery)
        session.flush()
        delivery_id = delivery.id
    return db, DeliveryWorker(db, settings), delivery_id


def _state(db: Database, delivery_id: int) -> str:
    with db.session() as session:
        return session.get(Delivery, delivery_id).state


def test_failure_backs_off_then_delivers_when_the_receiver_is_back(tmp_path: Path) -> None:
    port = free_port()
    db, worker, delivery_id = setup(tmp_path, port)
    assert worker.run_due("alerts") == 0
    with db.session() as session:
        delivery = session.get(Delivery, delivery_id)
        assert (delivery.state, delivery.attempts) == ("pending", 1)
        assert "127.0.0.1" in delivery.last_error
        wait = (delivery.next_attempt_at - utcnow()).total_seconds()
        assert 5 < wait <= 10  # first retry after initial_s
    assert worker.run_due("alerts") == 0  # not due yet: nothing is tried
    with db.session() as session:
        assert session.get(Delivery, delivery_id).attempts == 1
        session.get(Delivery, delivery_id).next_attempt_at = utcnow()

    with webhook_receiver(port) as receiver:
        assert worker.run_due("alerts") == 1
    assert [body for _, body in receiver.received] == [{"kind": "ich_alert", "study_instance_uid": "1.2.3",
                                                        "alert_id": 1}]  # the same on every retry: a repeat shows
    with db.session() as session:
        delivery = session.get(Delivery, delivery_id)
        alert = session.get(Alert, delivery.alert_id)
        assert (delivery.state, delivery.attempts, delivery.last_error) == ("delivered", 2, None)
        assert alert.latency_s == pytest.approx((alert.delivered_at - alert.released_at).total_seconds())


def test_gives_up_only_after_the_configured_time_and_says_so(tmp_path: Path) -> None:
    db, worker, delivery_id = setup(tmp_path, free_port())
    with db.session() as session:
        session.get(Delivery, delivery_id).created_at = utcnow() - timedelta(hours=2)
    worker.run_due("alerts")
    with db.session() as session:
        assert session.get(Delivery, delivery_id).state == "failed"
        event = session.scalars(select(AuditEvent).where(AuditEvent.kind == "delivery_failed")).one()
    assert "gave up after 1 attempts" in event.detail


@pytest.mark.parametrize("status", [408, 429, 503])
def test_answers_that_time_can_cure_are_retried(tmp_path: Path, status: int) -> None:
    port = free_port()
    db, worker, delivery_id = setup(tmp_path, port)
    with webhook_receiver(port, status):
        assert worker.run_due("alerts") == 0
    with db.session() as session:
        delivery = session.get(Delivery, delivery_id)
        assert delivery.state == "pending" and f"HTTP {status}" in delivery.last_error


def test_a_receiver_s_retry_after_is_honoured_within_the_longest_pause(tmp_path: Path) -> None:
    """A 429 asking for a minute was tried again after the backoff (here 10 s), against the receiver's word."""
    port = free_port()
    db, worker, delivery_id = setup(tmp_path, port)
    with webhook_receiver(port, 429, {"Retry-After": "45"}):
        worker.run_due("alerts")
    with db.session() as session:
        delivery = session.get(Delivery, delivery_id)
        assert delivery.state == "pending" and delivery.next_attempt_at > utcnow() + timedelta(seconds=40)
        delivery.next_attempt_at = utcnow()
    with webhook_receiver(port, 503, {"Retry-After": "86400"}):
        worker.run_due("alerts")
    with db.session() as session:  # never longer than retry.max_s (here 60 s): an alert must not wait a day
        delivery = session.get(Delivery, delivery_id)
        assert utcnow() + timedelta(seconds=55) < delivery.next_attempt_at < utcnow() + timedelta(seconds=61)


def test_a_redirect_is_refused_not_followed(tmp_path: Path) -> None:
    """A 308 was neither followed nor refused: the alert stayed pending for the whole give-up time, logged only
    as warnings. Following it would send the patient's alert wherever the answer pointed."""
    port = free_port()
    db, worker, delivery_id = setup(tmp_path, port)
    with webhook_receiver(port, 308, {"Location": "https://elsewhere.example.org/hook"}):
        worker.run_due("alerts")
    with db.session() as session:
        delivery = session.get(Delivery, delivery_id)
        assert delivery.state == "failed" and "a redirect is not followed" in delivery.last_error
        assert session.scalars(select(AuditEvent).where(AuditEvent.kind == "delivery_rejected")).one()


def test_an_error_no_sender_expects_is_recorded_and_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    """Before: the error escaped the round, so the delivery stayed pending with 0 attempts and no error for good,
    sent again every round and never given up on."""
    db, worker, delivery_id = setup(tmp_path, free_port())

    def broken(*_args: object) -> None:
        raise UnicodeEncodeError("ascii", "Bearer é", 7, 8, "ordinal not in range(128)")

    monkeypatch.setattr(worker, "_transmit", broken)
    assert worker.run_due("alerts") == 0
    with db.session() as session:
        delivery = session.get(Delivery, delivery_id)
        assert (delivery.state, delivery.attempts) == ("pending", 1)
        assert delivery.last_error.startswith("unexpected UnicodeEncodeError") and delivery.next_attempt_at > utcnow()


def test_a_refusal_fails_at_once_and_requeue_sends_it_again(tmp_path: Path) -> None:
    port = free_port()
    db, worker, delivery_id = setup(tmp_path, port)
    with webhook_receiver(port, 400):
        assert worker.run_due("alerts") == 0
    with db.session() as session:
        delivery = session.get(Delivery, delivery_id)
        assert (delivery.state, delivery.attempts) == ("failed", 1) and "HTTP 400" in delivery.last_error
        event = session.scalars(select(AuditEvent).where(AuditEvent.kind == "delivery_rejected")).one()
        assert "refused, not retried" in event.detail
        delivery.created_at = utcnow() - timedelta(hours=5)  # older than give_up_after_h

    with pytest.raises(RadfusionError, match=r"\[999\]"):
        requeue_failed(db, [delivery_id, 999])
    with db.session() as session:
        assert session.get(Delivery, delivery_id).state == "failed"  # nothing requeued

    assert requeue_failed(db, None) == [delivery_id]
    with db.session() as session:
        delivery = session.get(Delivery, delivery_id)
        assert delivery.state == "pending" and delivery.next_attempt_at <= utcnow()
        assert session.scalars(select(AuditEvent).where(AuditEvent.kind == "delivery_requeued")).one()
    with webhook_receiver(port, 503):
        assert worker.run_due("alerts") == 0
    with db.session() as session:  # the give-up clock restarted: 5 h after queueing, a 503 is retried again
        delivery = session.get(Delivery, delivery_id)
        assert (delivery.state, delivery.attempts) == ("pending", 2)
        delivery.next_attempt_at = utcnow()
    with webhook_receiver(port) as receiver:
        assert worker.run_due("alerts") == 1
    assert [body for _, body in receiver.received] == [{"kind": "ich_alert", "study_instance_uid": "1.2.3",
                                                        "alert_id": 1}]  # the same on every retry: a repeat shows
    with db.session() as session:
        delivery = session.get(Delivery, delivery_id)
        assert (delivery.state, delivery.attempts) == ("delivered", 3)
    with pytest.raises(RadfusionError, match="not failed"):
        requeue_failed(db, [delivery_id])


def test_only_client_errors_that_time_cannot_cure_are_refusals() -> None:
    assert is_rejection(FhirError("FHIR POST answered 422", 422)) and is_rejection(AlertDeliveryError("ed", "HTTP 404", 404))
    assert not any(is_rejection(exc) for exc in (FhirError("busy", 429), FhirError("down", 503), FhirError("no answer"),
                                                  AlertDeliveryError("ed", "refused connection"), OSError("unreachable")))
    assert is_rejection(MllpNegativeAck("answered AR", "MSH...", "AR"))  # the receiver refuses the message itself
    assert not is_rejection(MllpNegativeAck("answered AE", "MSH...", "AE"))  # its application may take it later


def test_a_removed_target_or_a_malformed_stored_body_is_refused_at_once(tmp_path: Path) -> None:
    """Retrying cannot mend either: a destination gone from the configuration, or a stored body that is not
    the message its kind sends (an HL7 body without text, a FHIR body that is not valid R4 or not a transaction)."""
    settings = load_settings(storage_path=tmp_path,
                             hl7_destinations=[{"name": "ris", "host": "127.0.0.1", "port": free_port()}],
                             fhir_destinations=[{"name": "emr", "base_url": f"http://127.0.0.1:{free_port()}/fhir"}])
    db = Database(settings.effective_database_url)
    with db.session() as session:
        no_text = Delivery(kind="hl7_report", target="ris", payload={})
        not_r4 = Delivery(kind="fhir_report", target="emr", payload={"resourceType": "Bundle", "entry": "none"})
        sideways = Delivery(kind="fhir_report", target="emr", payload={"resourceType": "Bundle", "type": "sideways"})
        removed = Delivery(kind="hl7_report", target="old-ris", payload={"message": "MSH|^~\\&|"})
        session.add_all([no_text, not_r4, sideways, removed])
        session.flush()
        ids = [no_text.id, not_r4.id, sideways.id, removed.id]
    assert DeliveryWorker(db, settings).run_due("results") == 0
    with db.session() as session:
        no_text, not_r4, sideways, removed = (session.get(Delivery, i) for i in ids)
        assert (no_text.state, no_text.last_error) == ("failed", "stored hl7_report body is malformed: KeyError: 'message'")
        assert not_r4.state == "failed" and not_r4.last_error.startswith(
            "stored fhir_report body is malformed: FhirError: Bundle/? is not valid R4")
        assert (sideways.state, sideways.last_error) == ("failed", "stored fhir_report body is malformed: FhirError: "
                                                         "post_transaction_once needs a non-empty transaction Bundle, "
                                                         "got type 'sideways'")
        assert (removed.state, removed.last_error) == ("failed", "hl7_report target 'old-ris' is no longer configured")
        events = session.scalars(select(AuditEvent).where(AuditEvent.kind == "delivery_rejected")).all()
    assert sorted(event.subject for event in events) == [f"delivery {i}" for i in sorted(ids)]


def test_an_alert_channel_now_of_another_kind_is_no_longer_configured_for_its_queued_alerts(tmp_path: Path) -> None:
    """A webhook alert queued for "pager" before "pager" became an HL7 channel is refused, not crashed on."""
    settings = load_settings(storage_path=tmp_path,
                             hl7_destinations=[{"name": "ris", "host": "127.0.0.1", "port": free_port()}],
                             alerts={"channels": [{"name": "pager", "kind": "hl7", "destination": "ris"}]})
    db = Database(settings.effective_database_url)
    with db.session() as session:
        queued = Delivery(kind="webhook", target="pager", payload={"text": "ICH suspected"})
        session.add(queued)
        session.flush()
        queued_id = queued.id
    assert DeliveryWorker(db, settings).run_due("alerts") == 0
    with db.session() as session:
        queued = session.get(Delivery, queued_id)
        assert (queued.state, queued.last_error) == ("failed", "webhook target 'pager' is no longer configured")


def test_alerts_and_results_are_separate_lanes(tmp_path: Path) -> None:
    port = free_port()
    db, worker, alert_delivery = setup(tmp_path, port)
    with db.session() as session:
        result = Delivery(kind="dicom", target="pacs", job_id=session.get(Delivery, alert_delivery).job_id)
        session.add(result)
        session.flush()
        result_delivery = result.id
    with webhook_receiver(port, 204):
        assert worker.run_due("alerts") == 1
    with db.session() as session:
        assert session.get(Delivery, result_delivery).attempts == 0  # not in the alert lane
    worker.run_due("results")
    with db.session() as session:
        assert session.get(Delivery, result_delivery).state == "failed"  # "pacs" is not configured: refused at once
        assert session.get(Delivery, alert_delivery).attempts == 1  # delivered once, not sent again
    with pytest.raises(ValueError, match="lane"):
        worker.run_due("urgent")


@contextmanager
def round_waiting_on_a_silent_pager(tmp_path: Path
                                    ) -> Iterator[tuple[Database, DeliveryWorker, threading.Thread, list]]:
    """A round started on a pager that accepts TCP and never answers, queued before channel "ed" (which
    answers); yields once the "ed" alert is recorded as delivered, joins the round on exit.
    Yields the database, the worker, the round's thread and the "ed" receiver's list of POSTs."""
    silent = socket.create_server(("127.0.0.1", 0))
    port = free_port()
    with silent, webhook_receiver(port) as receiver:
        db, worker, ed_delivery = setup(tmp_path, port, silent_port=silent.getsockname()[1], timeout_s=10)
        round_ = threading.Thread(target=worker.run_due, args=("alerts",))
        round_.start()
        wait_until(lambda: _state(db, ed_delivery) == "delivered", timeout=8, interval=0.05,
                   what="the alert on channel ed recorded as delivered")
        yield db, worker, round_, receiver.received
        round_.join(timeout=30)


def _pager(db: Database) -> tuple[str, int, str | None]:
    with db.session() as session:
        pager = session.scalars(select(Delivery).where(Delivery.target == "pager")).one()
        return pager.state, pager.attempts, pager.last_error


def test_a_silent_channel_does_not_hold_back_the_others(tmp_path: Path) -> None:
    with round_waiting_on_a_silent_pager(tmp_path) as (db, _, _, _):
        assert _pager(db)[:2] == ("pending", 0)  # queued first and still waiting: "ed" did not wait behind it
    state, attempts, error = _pager(db)
    assert (state, attempts) == ("pending", 1) and "timed out" in error.lower()


def test_a_later_round_delivers_while_an_earlier_one_waits_on_a_silent_channel(tmp_path: Path) -> None:
    """Overlapping rounds: the second delivers the new alert to "ed" and leaves the busy "pager" alone."""
    with round_waiting_on_a_silent_pager(tmp_path) as (db, worker, first, received):
        with db.session() as session:
            first_job = session.scalars(select(Job)).one()
            job = Job(study_id=first_job.study_id, series_id=first_job.series_id, detector="ich_baseline",
                      model_version="1", revision=1, rule="r")  # a rerun of the study
            session.add(job)
            session.flush()
            alert = Alert(job_id=job.id, payload={"kind": "ich_alert", "study_instance_uid": "1.2.3"},
                          released_at=utcnow())
            session.add(alert)
            session.flush()
            session.add(Delivery(kind="webhook", target="ed", job_id=job.id, alert_id=alert.id))
        assert worker.run_due("alerts") == 1  # the new "ed" delivery; "pager" belongs to the first round
        assert first.is_alive() and len(received) == 2  # returned while the first still waits
    assert _pager(db)[:2] == ("pending", 1)  # tried by one round only


STORE_STATUS = {1: 0x0000, 2: 0xA900, 3: 0xA700}  # by InstanceNumber: kept; refused (wrong SOP class); out of resources


@contextmanager
def status_pacs(require_calling_aet: list[str] | None = None) -> Iterator[int]:
    """A pynetdicom storage SCP (AE PACS) answering each CT instance with STORE_STATUS; its port."""
    ae = AE(ae_title="PACS")
    ae.add_supported_context(CTImageStorage)
    if require_calling_aet:
        ae.require_calling_aet = require_calling_aet
    handlers = [(evt.EVT_C_STORE, lambda event: STORE_STATUS[int(event.dataset.InstanceNumber)])]
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()


def dicom_deliveries(tmp_path: Path, port: int) -> tuple[Database, DeliveryWorker, list[int]]:
    """Three CT results of one job for destination "pacs", in InstanceNumber order; their delivery ids."""
    settings = load_settings(storage_path=tmp_path, retry={"initial_s": 10, "timeout_s": 5},
                             destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": port}])
    db = Database(settings.effective_database_url)
    ids = []
    with db.session() as session:
        job = add_job(session)
        for number in STORE_STATUS:
            path, ds = write_ct(tmp_path, f"result{number}.dcm", index=number)
            artifact = Artifact(job_id=job.id, kind="sr", sop_class_uid=ds.SOPClassUID,
                                sop_instance_uid=ds.SOPInstanceUID, series_uid=ds.SeriesInstanceUID, path=str(path))
            session.add(artifact)
            session.flush()
            delivery = Delivery(kind="dicom", target="pacs", job_id=job.id, artifact_id=artifact.id)
            session.add(delivery)
            session.flush()
            ids.append(delivery.id)
    return db, DeliveryWorker(db, settings), ids


def test_a_pacs_status_is_recorded_per_instance_and_a_refusal_is_not_retried(tmp_path: Path) -> None:
    with status_pacs() as port:
        db, worker, (kept, refused, busy) = dicom_deliveries(tmp_path, port)
        assert worker.run_due("results") == 1
    with db.session() as session:
        states = {i: (d.state, d.attempts, d.last_error)
                  for i in (kept, refused, busy) if (d := session.get(Delivery, i))}
        assert states[kept] == ("delivered", 1, None)
        assert states[refused][:2] == ("failed", 1) and "0xA900" in states[refused][2]  # waits for radfusion requeue
        assert states[busy][:2] == ("pending", 1) and "0xA700" in states[busy][2]  # out of resources: retried
        audit = session.scalars(select(AuditEvent.kind).where(AuditEvent.subject == f"delivery {refused}")).all()
        assert audit == ["delivery_rejected"]


def test_a_result_file_missing_from_the_spool_holds_back_no_other(tmp_path: Path) -> None:
    """A missing SEG file failed the whole batch before the association: the SR beside it never reached the PACS,
    retried for the whole give-up time. The missing one is retried (a disk mounted late comes back)."""
    with status_pacs() as port:
        db, worker, (kept, refused, busy) = dicom_deliveries(tmp_path, port)
        with db.session() as session:
            Path(session.get(Delivery, refused).artifact.path).unlink()
        worker.run_due("results")
    with db.session() as session:
        states = {i: (d.state, d.last_error) for i in (kept, refused, busy) if (d := session.get(Delivery, i))}
    assert states[kept] == ("delivered", None) and states[busy][0] == "pending"
    assert states[refused] == ("pending", "result file result2.dcm is not in the spool (retried: a disk mounted late "
                                          "comes back; radfusion reprocess writes the results again)")


def test_an_association_rejected_for_good_fails_at_once(tmp_path: Path) -> None:
    with status_pacs(require_calling_aet=["MODALITY"]) as port:  # rejected-permanent: calling AE not recognised
        db, worker, ids = dicom_deliveries(tmp_path, port)
        assert worker.run_due("results") == 0
    with db.session() as session:
        failed = [session.get(Delivery, i) for i in ids]
        assert {(d.state, d.attempts) for d in failed} == {("failed", 1)}
        assert all("calling AE title not recognised" in d.last_error for d in failed)
