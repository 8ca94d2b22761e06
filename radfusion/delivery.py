"""Sends pending deliveries (DICOM results, alert webhooks) with persistent retries.

Each due delivery is tried; a failure schedules the next attempt with exponential backoff,
and only after ``retry.give_up_after_h`` does it become ``failed`` (visible in status and
audit). Results of one job for one destination travel in one association.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import timedelta
from pathlib import Path

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_node.errors import DicomNodeError
from dicom_node.retry import backoff_delay
from dicom_node.scu import send_files
from hl7_fhir.errors import Hl7FhirError
from hl7_fhir.fhir_client import parse_resource
from hl7_fhir.mllp import MllpClient
from radfusion.clinical import fhir_client
from radfusion.db import Database
from radfusion.destinations import remote_node, tls_context
from radfusion.models import AuditEvent, Delivery, utcnow
from radfusion.settings import Settings
from reports.alerts import WebhookChannel
from reports.errors import ReportsError

log = logging.getLogger(__name__)

BATCH_LIMIT = 200


class DeliveryWorker:
    """Tries every due delivery once per call of :meth:`run_due`."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self._db = db
        self._settings = settings

    def run_due(self) -> int:
        """Attempt all due deliveries; returns how many succeeded."""
        now = utcnow()
        with self._db.session() as session:
            due = session.scalars(select(Delivery).where(Delivery.state == "pending", Delivery.next_attempt_at <= now)
                                  .order_by(Delivery.id).limit(BATCH_LIMIT)).all()
            batches: dict[tuple, list[Delivery]] = defaultdict(list)
            for delivery in due:  # DICOM results of one job travel in one association; the rest one by one
                batches[(delivery.kind, delivery.target, delivery.job_id if delivery.kind == "dicom" else delivery.id)
                        ].append(delivery)
            work = [(kind, target, [(d.id, d.artifact.path if d.artifact else None, _body(d)) for d in items])
                    for (kind, target, _), items in batches.items()]
        delivered = 0
        for kind, target, items in work:
            error = self._send(kind, target, items)
            with self._db.session() as session:
                self._record(session, [item[0] for item in items], error)
            delivered += 0 if error else len(items)
        return delivered

    def _send(self, kind: str, target: str, items: list[tuple[int, str | None, dict | None]]) -> str | None:
        """Send one batch; the error text, or None on success."""
        settings = self._settings
        timeout = settings.retry.timeout_s
        try:
            if kind == "dicom":
                dest = settings.destination(target)
                send_files(remote_node(dest), [Path(path) for _, path, _ in items if path], settings.dicom.ae_title,
                           timeout, tls_context=tls_context(settings, dest))
                return None
            (_, _, body), = items
            if kind == "webhook":
                channel = settings.channel(target)
                WebhookChannel(channel.url, timeout, channel.headers).send(body)  # type: ignore[union-attr]
            elif kind in ("fhir_report", "fhir_alert"):
                server = settings.fhir_destination(target if kind == "fhir_report" else _channel_destination(settings, target))
                with fhir_client(server) as client:
                    client.post_transaction_once(parse_resource(body))
            else:
                dest = settings.hl7_destination(target if kind == "hl7_report" else _channel_destination(settings, target))
                with MllpClient(dest.host, dest.port, timeout_s=timeout) as client:
                    client.send(body["message"])
        except KeyError:
            return f"{kind} target {target!r} is no longer configured"
        except (DicomNodeError, ReportsError, Hl7FhirError, httpx.HTTPError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    def _record(self, session: Session, ids: list[int], error: str | None) -> None:
        now = utcnow()
        retry = self._settings.retry
        for delivery in session.scalars(select(Delivery).where(Delivery.id.in_(ids))):
            delivery.attempts += 1
            if error is None:
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
            delivery.last_error = error
            if now - delivery.created_at > timedelta(hours=retry.give_up_after_h):
                delivery.state = "failed"
                session.add(AuditEvent(kind="delivery_failed", subject=f"delivery {delivery.id}",
                                       detail=f"gave up after {delivery.attempts} attempts: {error}"))
                log.error("delivery %d to %s failed for good: %s", delivery.id, delivery.target, error)
            else:
                delay = backoff_delay(delivery.attempts, retry.initial_s, retry.factor, retry.max_s)
                delivery.next_attempt_at = now + timedelta(seconds=delay)
                log.warning("delivery %d to %s failed (attempt %d, next in %.0f s): %s", delivery.id,
                            delivery.target, delivery.attempts, delay, error)


def _body(delivery: Delivery) -> dict:
    """What a delivery sends: the alert's JSON for a webhook, else the payload built with the job."""
    if delivery.kind == "webhook" and delivery.alert is not None:
        return delivery.alert.payload
    return delivery.payload or {}


def _channel_destination(settings: Settings, channel: str) -> str:
    return settings.channel(channel).destination  # type: ignore[union-attr] - fhir/hl7 channels name one
