"""Start-up recovery: whatever the last process left unfinished is resumed, and said so."""

from __future__ import annotations

import logging

from sqlalchemy import update

from radfusion.db import Database
from radfusion.models import Association, AuditEvent, Job, utcnow

log = logging.getLogger(__name__)


def recover(db: Database) -> dict[str, int]:
    """Close associations of a dead process and requeue jobs it was running."""
    with db.session() as session:
        aborted = session.execute(update(Association).where(Association.state == "open")
                                  .values(state="aborted", ended_at=utcnow())).rowcount
        requeued = session.execute(update(Job).where(Job.state == "running").values(state="queued")).rowcount
        if aborted or requeued:
            session.add(AuditEvent(kind="recovered", subject="startup",
                                   detail=f"{aborted} association(s) closed as aborted, {requeued} job(s) requeued"))
    if aborted or requeued:
        log.warning("recovered after an unclean stop: %d association(s) closed as aborted, %d job(s) requeued",
                    aborted, requeued)
    return {"associations_aborted": aborted, "jobs_requeued": requeued}
