"""Sends pending deliveries (DICOM results, alert webhooks) with persistent retries.

Each due delivery is tried; a failure schedules the next attempt with exponential backoff,
and only after ``retry.give_up_after_h`` does it become ``failed`` (visible in status and
audit). A receiver that refuses the message itself (an HTTP 4xx other than 408, 425 and 429; a
C-STORE failure status such as 0xA9xx or 0x0122, or a SOP class the PACS did not accept; an
association rejected-permanent), a destination that is no longer configured, or a stored body that
is not the message its kind sends (a FHIR Bundle that is not valid R4, an HL7 body without text), fails it at once:
the same message would be refused again, so it waits for a person, who fixes the cause and runs
``radfusion requeue``. Results of one job for one destination travel in one association, and each
instance's outcome is recorded on its own delivery (a PACS may keep the SR and refuse the SEG).
Alerts (webhook, FHIR Communication, HL7 critical result) have their own lane, run by its own
scheduler job, so an urgent alert never waits behind results for a slow or unreachable PACS. Within
a lane each target (a PACS, a channel, a FHIR or HL7 receiver) is worked by its own thread, so one
that does not answer delays only its own messages in that round.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session

from dicom_node.errors import DicomNodeError
from dicom_node.retry import backoff_delay
from dicom_node.scu import AssociationRejected, SendFailed, send_files
from hl7_fhir.errors import Hl7FhirError
from hl7_fhir.fhir_client import parse_resource, transaction_identity
from hl7_fhir.mllp import MllpClient, MllpNegativeAck
from radfusion.clinical import fhir_client
from radfusion.db import Database
from radfusion.destinations import remote_node, tls_context
from radfusion.errors import RadfusionError
from radfusion.models import AuditEvent, Delivery, utcnow
from radfusion.settings import (AlertChannel, DestinationSettings, FhirServerSettings, Hl7DestinationSettings,
                                Settings)
from reports.alerts import WebhookChannel
from reports.errors import ReportsError

log = logging.getLogger(__name__)

BATCH_LIMIT = 200
MAX_PARALLEL_TARGETS = 8  # threads per lane and round; targets beyond that wait for a free one
MAX_OVERLAPPING_ROUNDS = 3  # per lane: later rounds run while an earlier one still waits on a silent target
RETRYABLE_HTTP_STATUS = frozenset({408, 425, 429})  # client errors that time can cure
ALERT_KINDS = ("webhook", "fhir_alert", "hl7_alert")
FHIR_KINDS = ("fhir_report", "fhir_alert")
CHANNEL_KINDS = {"webhook": "webhook", "fhir_alert": "fhir", "hl7_alert": "hl7"}  # delivery kind -> channel kind
LANES = ("alerts", "results")  # alerts: ALERT_KINDS; results: every other kind
Batch = list[tuple[int, str | None, dict | None]]  # (delivery id, artifact path, body), sent together
TargetSettings = DestinationSettings | AlertChannel | FhirServerSettings | Hl7DestinationSettings


@dataclass(frozen=True)
class SendFailure:
    """Why a batch was not delivered, and whether retrying the same message can help."""

    error: str
    rejected: bool  # refused for what it is (or where it goes): retrying cannot help
    retry_after_s: float | None = None  # how long the receiver asked to be left alone (HTTP Retry-After)


def is_rejection(exc: Exception) -> bool:
    """True for an HTTP 4xx answer other than 408, 425 and 429 and for a redirect, which is not followed (FhirError,
    AlertDeliveryError), for a DICOM association rejected-permanent (AssociationRejected) and for an HL7 AR/CR
    (MllpNegativeAck)."""
    if isinstance(exc, AssociationRejected):
        return exc.permanent
    if isinstance(exc, MllpNegativeAck):
        return exc.rejected
    status = getattr(exc, "status", None)
    return status is not None and 300 <= status < 500 and status not in RETRYABLE_HTTP_STATUS


def _stored_message(kind: str, items: Batch) -> Any:
    """What a batch sends, from its stored body: None for DICOM (the files), the webhook JSON, the FHIR
    Bundle, or the HL7 message text. Raises when the body is not one: retrying cannot mend it."""
    if kind == "dicom":
        return None
    (_, _, body), = items
    if not isinstance(body, dict):
        raise TypeError(f"body is {type(body).__name__}, not a JSON object")
    if kind in FHIR_KINDS:
        bundle = parse_resource(body)
        transaction_identity(bundle)
        return bundle
    if kind == "webhook":
        return body
    message = body["message"]
    if not isinstance(message, str):
        raise TypeError(f"message is {type(message).__name__}, not text")
    return message


def instance_failures(items: Batch, exc: SendFailed) -> dict[int, SendFailure | None]:
    """Per delivery of a DICOM batch: None if the peer kept the instance, else why not (refused or not)."""
    results = {result.path: result for result in exc.report.results}
    outcome: dict[int, SendFailure | None] = {}
    for delivery_id, path, _ in items:
        result = results.get(Path(path)) if path else None
        if result is None:  # not tried: the association was lost before it
            outcome[delivery_id] = SendFailure(f"SendFailed: {exc}", rejected=False)
        elif result.delivered:
            outcome[delivery_id] = None
        else:
            status = "no status" if result.status is None else f"status 0x{result.status:04X}"
            outcome[delivery_id] = SendFailure(f"SendFailed: {Path(path).name}: {status} ({result.category})",
                                               rejected=result.refused)
    return outcome


class DeliveryWorker:
    """Tries every due delivery of a lane once per call of :meth:`run_due`.

    Calls may overlap (the scheduler starts a new round while an earlier one still waits on a
    target that does not answer): a target is sent to by one round at a time, so a later round
    delivers to the other targets and leaves the busy one's deliveries to a round after it.
    """

    def __init__(self, db: Database, settings: Settings) -> None:
        self._db = db
        self._settings = settings
        self._busy: set[tuple[str, str]] = set()  # (kind, target) being sent to by some round
        self._busy_lock = threading.Lock()

    def run_due(self, lane: str) -> int:
        """Attempt the due deliveries of ``lane`` ("alerts" or "results"); returns how many succeeded."""
        if lane not in LANES:
            raise ValueError(f"delivery lane must be one of {LANES}, got {lane!r}")
        kinds = Delivery.kind.in_(ALERT_KINDS) if lane == "alerts" else Delivery.kind.not_in(ALERT_KINDS)
        now = utcnow()
        # Select and claim under one lock: a target another round frees meanwhile has recorded its outcomes,
        # and the deliveries of targets still busy neither go out twice nor use up BATCH_LIMIT.
        with self._busy_lock, self._db.session() as session:
            query = select(Delivery).where(Delivery.state == "pending", Delivery.next_attempt_at <= now, kinds)
            if self._busy:
                query = query.where(tuple_(Delivery.kind, Delivery.target).not_in(sorted(self._busy)))
            batches: dict[tuple, list[Delivery]] = defaultdict(list)
            for delivery in session.scalars(query.order_by(Delivery.id).limit(BATCH_LIMIT)):
                # DICOM results of one job travel in one association; the rest one by one
                batches[(delivery.kind, delivery.target, delivery.job_id if delivery.kind == "dicom" else delivery.id)
                        ].append(delivery)
            per_target: dict[tuple[str, str], list[Batch]] = defaultdict(list)
            for (kind, target, _), items in batches.items():
                per_target[(kind, target)].append([(d.id, d.artifact.path if d.artifact else None, _body(d))
                                                   for d in items])
            self._busy.update(per_target)
        if not per_target:
            return 0
        with ThreadPoolExecutor(max_workers=min(len(per_target), MAX_PARALLEL_TARGETS),
                                thread_name_prefix=f"deliver-{lane}") as pool:
            return sum(pool.map(lambda entry: self._deliver_claimed(*entry), per_target.items()))

    def _deliver_claimed(self, key: tuple[str, str], batches: list[Batch]) -> int:
        """:meth:`_deliver` to a target this round claimed; frees the target for other rounds when done."""
        try:
            return self._deliver(*key, batches)
        finally:
            with self._busy_lock:
                self._busy.discard(key)

    def _deliver(self, kind: str, target: str, batches: list[Batch]) -> int:
        """Send one target's batches in order, recording each outcome; how many deliveries succeeded."""
        delivered = 0
        for items in batches:
            outcome = self._send(kind, target, items)
            with self._db.session() as session:
                self._record(session, outcome)
            delivered += sum(failure is None for failure in outcome.values())
        return delivered

    def _send(self, kind: str, target: str, items: Batch) -> dict[int, SendFailure | None]:
        """Send one batch; per delivery id, why it failed, or None on success."""
        ids = [delivery_id for delivery_id, _, _ in items]
        try:
            config = _target_settings(self._settings, kind, target)
        except KeyError:  # only these lookups mean "no longer configured"
            return dict.fromkeys(ids, SendFailure(f"{kind} target {target!r} is no longer configured", rejected=True))
        if kind == "dicom":  # a result file gone from the spool must not hold back the batch's others
            gone = {delivery_id: SendFailure(f"result file {Path(path).name if path else '(none)'} is not in the "
                                             "spool (retried: a disk mounted late comes back; radfusion reprocess "
                                             "writes the results again)", rejected=False)
                    for delivery_id, path, _ in items if not path or not os.path.isfile(path)}
            rest = [item for item in items if item[0] not in gone]
            if gone:
                return {**gone, **(self._send(kind, target, rest) if rest else {})}
        try:
            message = _stored_message(kind, items)
        except (Hl7FhirError, KeyError, TypeError) as exc:
            return dict.fromkeys(ids, SendFailure(f"stored {kind} body is malformed: {type(exc).__name__}: {exc}",
                                                  rejected=True))
        try:
            self._transmit(kind, config, items, message)
        except SendFailed as exc:
            return instance_failures(items, exc)
        except (DicomNodeError, ReportsError, Hl7FhirError, httpx.HTTPError, OSError) as exc:
            return dict.fromkeys(ids, SendFailure(f"{type(exc).__name__}: {exc}", rejected=is_rejection(exc),
                                                  retry_after_s=getattr(exc, "retry_after_s", None)))
        except Exception as exc:  # noqa: BLE001 - an error no sender expects is still recorded, retried, given up on
            log.exception("delivery to %s %r raised an unexpected error", kind, target)
            return dict.fromkeys(ids, SendFailure(f"unexpected {type(exc).__name__}: {exc}", rejected=False))
        return dict.fromkeys(ids)

    def _transmit(self, kind: str, config: TargetSettings, items: Batch, message: Any) -> None:
        """Send one batch (``message``: its :func:`_stored_message`) to its target's ``config``; raises why it
        was not delivered."""
        settings = self._settings
        timeout = settings.retry.timeout_s
        if kind == "dicom":
            paths = [Path(path) for _, path, _ in items if path]
            send_files(remote_node(config), paths, settings.dicom.ae_title, timeout,  # type: ignore[arg-type]
                       tls_context=tls_context(settings, config))  # type: ignore[arg-type]
            return
        if kind == "webhook":
            WebhookChannel(config.url, timeout, config.headers).send(message)  # type: ignore[union-attr]
        elif kind in FHIR_KINDS:
            with fhir_client(config) as client:  # type: ignore[arg-type]
                client.post_transaction_once(message)
        else:
            with MllpClient(config.host, config.port, timeout_s=timeout) as client:  # type: ignore[union-attr]
                client.send(message)

    def _record(self, session: Session, outcome: dict[int, SendFailure | None]) -> None:
        now = utcnow()
        retry = self._settings.retry
        for delivery in session.scalars(select(Delivery).where(Delivery.id.in_(outcome))):
            failure = outcome[delivery.id]
            delivery.attempts += 1
            if failure is None:
                delivery.state = "delivered"
                delivery.delivered_at = now
                delivery.last_error = None
                if delivery.alert is not None and delivery.alert.delivered_at is None:
                    alert = delivery.alert
                    alert.delivered_at = now
                    if alert.released_at is not None:
                        alert.latency_s = (now - alert.released_at).total_seconds()
                    log.info("alert %d delivered to %s, %.2f s after association release", alert.id,
                             delivery.target, alert.latency_s or -1.0)
                continue
            delivery.last_error = failure.error
            if failure.rejected or now - delivery.created_at > timedelta(hours=retry.give_up_after_h):
                delivery.state = "failed"
                kind, detail = (("delivery_rejected", f"refused, not retried: {failure.error}") if failure.rejected
                                else ("delivery_failed", f"gave up after {delivery.attempts} attempts: {failure.error}"))
                session.add(AuditEvent(kind=kind, subject=f"delivery {delivery.id}", detail=detail))
                log.error("delivery %d to %s failed for good (radfusion requeue %d once the cause is fixed): %s",
                          delivery.id, delivery.target, delivery.id, failure.error)
            else:
                delay = backoff_delay(delivery.attempts, retry.initial_s, retry.factor, retry.max_s)
                if failure.retry_after_s is not None:  # what the receiver asked for, within the longest pause
                    delay = max(delay, min(failure.retry_after_s, retry.max_s))
                delivery.next_attempt_at = now + timedelta(seconds=delay)
                log.warning("delivery %d to %s failed (attempt %d, next in %.0f s): %s", delivery.id,
                            delivery.target, delivery.attempts, delay, failure.error)


def requeue_failed(db: Database, ids: Sequence[int] | None) -> list[int]:
    """Put failed deliveries (``ids``, or all when None) back in the queue, due now; their ids.

    The give-up clock restarts (``created_at`` becomes now); attempts and the last error stay, and
    an audit event records the requeue. An id that is unknown or not failed is an error, and then
    nothing is requeued.
    """
    now = utcnow()
    with db.session() as session:
        query = select(Delivery).where(Delivery.state == "failed")
        if ids is not None:
            query = query.where(Delivery.id.in_(ids))
        failed = session.scalars(query.order_by(Delivery.id)).all()
        missing = sorted(set(ids or ()) - {d.id for d in failed})
        if missing:
            raise RadfusionError(f"not failed deliveries (unknown, pending or delivered): {missing}")
        for delivery in failed:
            session.add(AuditEvent(kind="delivery_requeued", subject=f"delivery {delivery.id}",
                                   detail=f"after {delivery.attempts} attempts; last error: {delivery.last_error}"))
            delivery.state = "pending"
            delivery.next_attempt_at = delivery.created_at = now
            delivery.acknowledged_at = None
        return [d.id for d in failed]


def _body(delivery: Delivery) -> dict:
    """What a delivery sends: the alert's JSON for a webhook, with its ``alert_id`` (the same on every retry, so a
    receiver that got it twice, after a crash between sending and recording, can tell), else the payload built
    with the job."""
    if delivery.kind == "webhook" and delivery.alert is not None:
        return {**delivery.alert.payload, "alert_id": delivery.alert.id}
    return delivery.payload or {}


def _target_settings(settings: Settings, kind: str, target: str) -> TargetSettings:
    """The configuration a delivery of ``kind`` to ``target`` is sent with; KeyError if it is no longer configured."""
    if kind == "dicom":
        return settings.destination(target)
    if kind == "webhook":
        return _alert_channel(settings, kind, target)
    name = (target if kind in ("fhir_report", "hl7_report")
            else _alert_channel(settings, kind, target).destination)  # type: ignore[union-attr]
    return settings.fhir_destination(name) if kind.startswith("fhir") else settings.hl7_destination(name)


def _alert_channel(settings: Settings, kind: str, name: str) -> AlertChannel:
    """Channel ``name`` if it still is of the kind the ``kind`` delivery was queued for (KeyError if not)."""
    channel = settings.channel(name)
    if channel.kind != CHANNEL_KINDS[kind]:
        raise KeyError(name)
    return channel
