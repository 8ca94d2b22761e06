"""``radfusion status``: queue depth, recent jobs, failures, pending and failed deliveries, from the database;
the images kept in the spool and the disk left beside them; and what needs someone (``attention``: failures not
acknowledged, alerts not delivered), which ``--check`` turns into its exit code for a monitoring system."""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import exists, func, select
from sqlalchemy.orm import aliased

from ai_engine.detectors.registry import study_level_detectors
from radfusion.db import Database
from radfusion.models import Alert, Delivery, Instance, Job, Quarantine, Series, Study, same_input, utcnow

RECENT = 10
ALERT_GRACE_S = 60  # an alert still undelivered this long after it was raised needs someone (the target is 10 s)


def collect_status(db: Database, storage_path: Path) -> dict[str, object]:
    """A JSON-ready snapshot of the work in the database (no patient identifiers) and of the spool's disk."""
    now = utcnow()
    day_ago = now - timedelta(days=1)
    with db.session() as session:
        def count(model, *where) -> int:  # noqa: ANN001
            return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)

        recent_jobs = session.execute(
            select(Job.id, Job.detector, Job.state, Job.revision, Study.accession_number, Study.study_uid,
                   Job.started_at, Job.finished_at, Job.error, Job.result)
            .join(Study, Job.study_id == Study.id).order_by(Job.id.desc()).limit(RECENT)).all()
        # pending: those waiting longest first (the worker's order), so stuck ones stay in view; failed: latest first
        order = {"pending": Delivery.id.asc(), "failed": Delivery.id.desc()}
        def deliveries(state: str) -> list:
            return list(session.execute(
                select(Delivery.id, Delivery.kind, Delivery.target, Delivery.attempts, Delivery.next_attempt_at,
                       Delivery.last_error).where(Delivery.state == state, Delivery.acknowledged_at.is_(None))
                .order_by(order[state]).limit(RECENT)))
        later = aliased(Job)
        study_level = study_level_detectors()
        superseded = exists().where(same_input(later, study_level), later.detector == Job.detector, later.id > Job.id)
        open_failure = (Job.state == "failed", ~superseded, Job.acknowledged_at.is_(None))
        failed_jobs = session.execute(
            select(Job.id, Job.detector, Study.accession_number, Study.study_uid, Job.error, Series.attributes)
            .join(Study, Job.study_id == Study.id).outerjoin(Series, Job.series_id == Series.id)
            .where(*open_failure).order_by(Job.id.desc()).limit(RECENT)).all()
        undelivered_alerts = count(Alert, Alert.delivered_at.is_(None),
                                   Alert.created_at <= now - timedelta(seconds=ALERT_GRACE_S),
                                   exists().where(Delivery.alert_id == Alert.id, Delivery.state == "pending"))
        alerts = session.execute(select(Alert.id, Alert.job_id, Alert.created_at, Alert.delivered_at, Alert.latency_s)
                                 .order_by(Alert.id.desc()).limit(RECENT)).all()
        jobs_failed = count(Job, *open_failure)
        deliveries_failed = count(Delivery, Delivery.state == "failed", Delivery.acknowledged_at.is_(None))
        return {
            "attention": _attention(jobs_failed, deliveries_failed, undelivered_alerts),
            "studies_receiving": count(Study, Study.state == "receiving"),
            "jobs_queued": count(Job, Job.state == "queued"),
            "jobs_running": count(Job, Job.state == "running"),
            "jobs_failed": jobs_failed,
            "jobs_failed_since_rerun": count(Job, Job.state == "failed", superseded),
            "jobs_failed_acknowledged": count(Job, Job.state == "failed", ~superseded, Job.acknowledged_at.isnot(None)),
            "deliveries_pending": count(Delivery, Delivery.state == "pending"),
            "deliveries_failed": deliveries_failed,
            "deliveries_failed_acknowledged": count(Delivery, Delivery.state == "failed",
                                                    Delivery.acknowledged_at.isnot(None)),
            "alerts_undelivered": undelivered_alerts,
            "quarantined_last_24h": count(Quarantine, Quarantine.received_at >= day_ago),
            "instances_stored": count(Instance),
            "bytes_stored": int(session.scalar(select(func.sum(Instance.size_bytes))) or 0),
            "disk_free_bytes": shutil.disk_usage(storage_path).free if storage_path.exists() else None,
            "recent_jobs": [{
                "id": j.id, "detector": j.detector, "state": j.state, "revision": j.revision,
                "accession": j.accession_number, "study_uid": j.study_uid,
                "seconds": _seconds(j.state, j.started_at, j.finished_at, now),
                "findings": None if not j.result else len(j.result.get("findings", [])),
                "error": j.error,
            } for j in recent_jobs],
            "failed_jobs": [{"id": j.id, "detector": j.detector, "accession": j.accession_number,
                             "study_uid": j.study_uid, "error": j.error,
                             "series": None if j.detector in study_level else _series_label(j.attributes)}
                            for j in failed_jobs],
            **{f"{state}_deliveries": [{
                "id": d.id, "kind": d.kind, "target": d.target, "attempts": d.attempts,
                "next_attempt_at": d.next_attempt_at.isoformat(), "last_error": d.last_error,
            } for d in deliveries(state)] for state in ("pending", "failed")},
            "recent_alerts": [{
                "id": a.id, "job_id": a.job_id, "created_at": a.created_at.isoformat(),
                "delivered": a.delivered_at is not None, "release_to_delivery_s": a.latency_s,
            } for a in alerts],
        }


def _series_label(attributes: dict | None) -> str:
    """'series 3 "Bone 1.0 H70h"' from a series' routing attributes (a failed job's series, for IT to tell which)."""
    attributes = attributes or {}
    number, description = attributes.get("SeriesNumber"), attributes.get("SeriesDescription")
    return f"series {'-' if number is None else number}" + (f" {description!r}" if description else "")


def _attention(jobs_failed: int, deliveries_failed: int, undelivered_alerts: int) -> list[str]:
    """What needs someone, one line each with what to do; empty when nothing does."""
    lines = []
    if undelivered_alerts:
        lines.append(f"{undelivered_alerts} hemorrhage alert(s) not delivered {ALERT_GRACE_S} s after they were "
                     "raised: their channels are still being retried (see pending deliveries)")
    if jobs_failed:
        lines.append(f"{jobs_failed} failed job(s) not run again: radfusion reprocess STUDY_UID once the cause is "
                     "fixed, or radfusion acknowledge --job ID --reason TEXT")
    if deliveries_failed:
        lines.append(f"{deliveries_failed} failed deliveries: radfusion requeue ID once the cause is fixed, or "
                     "radfusion acknowledge --delivery ID --reason TEXT")
    return lines


def format_check(status: dict[str, object]) -> str:
    """``--check``'s one-line-per-item answer: OK, or what needs someone."""
    return "\n".join(f"ATTENTION: {line}" for line in status["attention"]) or "OK"  # type: ignore[union-attr]


def format_status(status: dict[str, object]) -> str:
    """The snapshot as text for a terminal."""
    lines = [
        format_check(status),
        f"studies receiving: {status['studies_receiving']}   jobs queued: {status['jobs_queued']}   "
        f"running: {status['jobs_running']}   failed: {status['jobs_failed']} "
        f"(and {status['jobs_failed_since_rerun']} run again since, {status['jobs_failed_acknowledged']} "
        "acknowledged)",
        f"deliveries pending: {status['deliveries_pending']}   failed: {status['deliveries_failed']} "
        f"(and {status['deliveries_failed_acknowledged']} acknowledged)   "
        f"quarantined (24 h): {status['quarantined_last_24h']}",
        f"images stored: {status['instances_stored']} instances, {status['bytes_stored'] / 1e6:.1f} MB   "
        f"free disk: {_megabytes(status['disk_free_bytes'])}",
        "", "recent jobs (radfusion reprocess STUDY_UID analyses a finished study again):",
    ]
    for job in status["recent_jobs"] or []:  # type: ignore[union-attr]
        detail = job["error"] or f"{job['findings']} finding(s)" if job["state"] in ("done", "failed") else ""
        lines.append(f"  #{job['id']:<5} {job['detector']:<16} {job['state']:<8} rev {job['revision']}  "
                     f"accession {job['accession'] or '-':<12} {job['seconds'] or '':>6}s  study {job['study_uid']}  "
                     f"{detail}")
    lines.append("failed jobs (radfusion reprocess STUDY_UID once the cause is fixed):")
    for job in status["failed_jobs"] or []:  # type: ignore[union-attr]
        lines.append(f"  #{job['id']:<5} {job['detector']:<16} accession {job['accession'] or '-':<12} "
                     f"{job['series'] or 'all series'}  study {job['study_uid']}  {job['error']}")
    lines.append("pending deliveries:")
    for d in status["pending_deliveries"] or []:  # type: ignore[union-attr]
        lines.append(f"  #{d['id']:<5} {d['kind']:<8} -> {d['target']:<12} attempts {d['attempts']}  "
                     f"next {d['next_attempt_at']}  {d['last_error'] or ''}")
    lines.append("failed deliveries (radfusion requeue ID once the cause is fixed):")
    for d in status["failed_deliveries"] or []:  # type: ignore[union-attr]
        lines.append(f"  #{d['id']:<5} {d['kind']:<8} -> {d['target']:<12} attempts {d['attempts']}  {d['last_error']}")
    lines.append("recent alerts:")
    for a in status["recent_alerts"] or []:  # type: ignore[union-attr]
        latency = "" if a["release_to_delivery_s"] is None else f"{a['release_to_delivery_s']:.2f} s after release"
        lines.append(f"  #{a['id']:<5} job {a['job_id']}  {'delivered' if a['delivered'] else 'NOT delivered'}  {latency}")
    return "\n".join(lines)


def _seconds(state: str, started: datetime | None, finished: datetime | None, now: datetime) -> float | None:
    """How long a job ran, or has run so far while running (one that keeps growing is hung: a restart requeues
    it); None for a queued job, also one requeued after a crash."""
    if started is None or state == "queued":
        return None
    end = now if state == "running" or finished is None else finished
    return round((end - started).total_seconds(), 2)


def _megabytes(count: object) -> str:
    """Bytes as megabytes, or why they are unknown."""
    return f"{count / 1e6:.0f} MB" if isinstance(count, int) else "unknown (no storage folder yet)"
