"""Spool retention: the received images of a finished study are deleted once they are old enough.

radfusion keeps copies of what the PACS sent only until its results are made: without a retention
period the spool grows until the free-disk floor refuses every instance (0xA700). A study is
purged when it is ``done`` (no job queued or running) and its last instance arrived more than
``retention_days`` ago. Its instance files go first, then their rows, so a crash in between
leaves rows whose files are gone (the next pass removes them), never files without rows that
start-up would record again. Results, jobs, deliveries, alerts and audit events stay. A study
sent again later is a new receipt: it is assembled and analysed like any other, as the next
revision of its series.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, select, update

from dicom_node.spool import Spool
from radfusion.db import Database
from radfusion.models import AuditEvent, Instance, Series, Study, utcnow

log = logging.getLogger(__name__)

BATCH_STUDIES = 50  # studies chosen per query
DELETE_CHUNK = 500  # instance rows per DELETE (bound parameters stay far below any database's limit)


@dataclass(frozen=True)
class PurgeReport:
    """What one retention pass deleted."""

    studies: int = 0
    instances: int = 0
    bytes_freed: int = 0


def purge_expired(db: Database, spool: Spool, retention_days: int, now: datetime | None = None) -> PurgeReport:
    """Delete the instance files and rows of every done study last received before ``now - retention_days``."""
    cutoff = (now or utcnow()) - timedelta(days=retention_days)
    studies = instances = freed = last_id = 0
    while True:
        with db.session() as session:
            batch = session.scalars(
                select(Study.id).where(Study.id > last_id, Study.state == "done", Study.last_received_at < cutoff,
                                       select(Instance.id).join(Series).where(Series.study_id == Study.id).exists())
                .order_by(Study.id).limit(BATCH_STUDIES)).all()
        if not batch:
            break
        for study_id in batch:
            last_id = study_id
            try:
                count, size = _purge_study(db, spool, study_id, cutoff)
            except Exception:  # noqa: BLE001 - one study that cannot be purged must not keep the others
                log.exception("retention: study %d could not be purged; the next pass tries again", study_id)
                continue
            studies += count > 0
            instances += count
            freed += size
    report = PurgeReport(studies, instances, freed)
    if studies:
        log.info("retention: deleted %d instance(s) of %d study(ies) last received before %s, %.1f MB freed",
                 instances, studies, cutoff.isoformat(timespec="seconds"), freed / 1e6)
    return report


def _purge_study(db: Database, spool: Spool, study_id: int, cutoff: datetime) -> tuple[int, int]:
    """Delete one study's instance files, then its rows, if it is still done and old; (instances, bytes)."""
    with db.session() as session:
        study_uid = session.scalar(select(Study.study_uid).where(
            Study.id == study_id, Study.state == "done", Study.last_received_at < cutoff))
        if study_uid is None:  # re-opened by a late instance since the batch was chosen
            return 0, 0
        rows = session.execute(select(Instance.id, Instance.series_id, Instance.path).join(Series)
                               .where(Series.study_id == study_id)).all()
    freed = spool.discard(Path(path) for _, _, path in rows)
    ids = [row_id for row_id, _, _ in rows]
    with db.session() as session:
        for start in range(0, len(ids), DELETE_CHUNK):
            session.execute(delete(Instance).where(Instance.id.in_(ids[start:start + DELETE_CHUNK])))
        for series_id, count in Counter(series_id for _, series_id, _ in rows).items():
            session.execute(update(Series).where(Series.id == series_id)
                            .values(instance_count=Series.instance_count - count))
        session.add(AuditEvent(kind="study_purged", subject=study_uid,
                               detail=f"retention: {len(rows)} instance file(s), {freed} bytes, last received "
                                      f"before {cutoff.isoformat(timespec='seconds')}"))
    return len(rows), freed
