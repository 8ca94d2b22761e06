"""``radfusion acknowledge``: an operator marks failed jobs and deliveries whose cause cannot be fixed as seen, with
a reason kept in the audit trail, so ``radfusion status --check`` reports only what still needs someone."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select

from radfusion.db import Database
from radfusion.errors import RadfusionError
from radfusion.models import AuditEvent, Delivery, Job, utcnow


def acknowledge_failures(db: Database, job_ids: Sequence[int], delivery_ids: Sequence[int], reason: str) -> None:
    """Acknowledge the failed jobs and deliveries named (one audit event each, with ``reason``). An id that is
    unknown or not failed is an error, and then nothing is acknowledged."""
    if not reason.strip():
        raise RadfusionError("acknowledge needs a --reason: it is kept in the audit trail")
    if not job_ids and not delivery_ids:
        raise RadfusionError("acknowledge needs --job or --delivery ids (see radfusion status)")
    now = utcnow()
    with db.session() as session:
        rows = [*session.scalars(select(Job).where(Job.id.in_(job_ids), Job.state == "failed")),
                *session.scalars(select(Delivery).where(Delivery.id.in_(delivery_ids), Delivery.state == "failed"))]
        found = {(type(row), row.id) for row in rows}
        missing = [f"job {i}" for i in sorted(set(job_ids)) if (Job, i) not in found]
        missing += [f"delivery {i}" for i in sorted(set(delivery_ids)) if (Delivery, i) not in found]
        if missing:
            raise RadfusionError(f"not failed (unknown, or not failed): {', '.join(missing)}; nothing acknowledged")
        for row in rows:
            row.acknowledged_at = now
            error = row.error if isinstance(row, Job) else row.last_error
            session.add(AuditEvent(kind="failure_acknowledged", subject=f"{type(row).__name__.lower()} {row.id}",
                                   detail=f"reason: {reason.strip()}; its error: {error}"))
