"""Spool retention: the received images of a finished study are deleted once they are old enough.

radfusion keeps copies of what the PACS sent only until its results are made: without a retention
period the spool grows until the free-disk floor refuses every instance (0xA700). A study is
purged when it is ``done`` (no job queued or running) and both its last instance and its last
finished job are more than ``retention_days`` old, so a study whose job failed can still be
reprocessed for that long once the cause is fixed.

One study at a time, under the spool's ``purging`` lock for it, so no instance of the study is
being received meanwhile (a resend waits and is then received as new): the study is claimed
(``purging``, which ``radfusion reprocess`` refuses), its files are deleted, then its rows, and it is
``done`` again. A purge that fails hands the study back at once. A crash leaves rows whose files are
gone, never files without rows that start-up would record again; start-up returns a claimed study to
``done`` and the next pass finishes it.
Results, jobs, deliveries, alerts and audit events stay. A study sent again later is assembled
and analysed like any other, as the next revision of its series. Files in the quarantine go after
the same period, counted from when they were set aside; their rows keep the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import ColumnElement, Row, and_, delete, select, update

from dicom_node.spool import Spool
from radfusion.db import Database
from radfusion.models import AuditEvent, Instance, Job, Quarantine, Series, Study, utcnow

log = logging.getLogger(__name__)

BATCH_STUDIES = 50  # studies chosen per query
DELETE_CHUNK = 500  # instance rows per DELETE (bound parameters stay far below any database's limit)


@dataclass(frozen=True)
class PurgeReport:
    """What one retention pass deleted."""

    studies: int = 0
    instances: int = 0
    bytes_freed: int = 0
    quarantined: int = 0


def _expired(cutoff: datetime) -> ColumnElement[bool]:
    """A finished study last received, and last analysed, before ``cutoff``."""
    recent_job = select(Job.id).where(Job.study_id == Study.id, Job.finished_at >= cutoff).exists()
    return and_(Study.state == "done", Study.last_received_at < cutoff, ~recent_job)


def purge_expired(db: Database, spool: Spool, retention_days: int, now: datetime | None = None) -> PurgeReport:
    """Delete the instance files and rows of every expired study, and old quarantined files (module docstring)."""
    cutoff = (now or utcnow()) - timedelta(days=retention_days)
    studies = instances = freed = last_id = 0
    while True:
        with db.session() as session:
            batch = session.execute(
                select(Study.id, Study.study_uid).where(
                    Study.id > last_id, _expired(cutoff),
                    select(Instance.id).join(Series).where(Series.study_id == Study.id).exists())
                .order_by(Study.id).limit(BATCH_STUDIES)).all()
        if not batch:
            break
        for study_id, study_uid in batch:
            last_id = study_id
            try:
                count, size = _purge_study(db, spool, study_id, study_uid, cutoff)
            except Exception:  # noqa: BLE001 - one study that cannot be purged must not keep the others
                log.exception("retention: study %d could not be purged; the next pass tries again", study_id)
                continue
            studies += count > 0
            instances += count
            freed += size
    quarantined = _purge_quarantine(db, spool, cutoff)
    if studies:
        log.info("retention: deleted %d instance(s) of %d study(ies) expired before %s, %.1f MB freed",
                 instances, studies, cutoff.isoformat(timespec="seconds"), freed / 1e6)
    return PurgeReport(studies, instances, freed, quarantined)


def _purge_quarantine(db: Database, spool: Spool, cutoff: datetime) -> int:
    """Delete quarantined files set aside before ``cutoff``; their rows keep the reason, without a path."""
    removed = [str(path) for path in spool.discard_quarantined(cutoff.timestamp())]
    if removed:
        with db.session() as session:
            for start in range(0, len(removed), DELETE_CHUNK):
                session.execute(update(Quarantine).where(Quarantine.path.in_(removed[start:start + DELETE_CHUNK]))
                                .values(path=None))
            session.add(AuditEvent(kind="quarantine_purged", subject="retention",
                                   detail=f"{len(removed)} quarantined file(s) set aside before "
                                          f"{cutoff.isoformat(timespec='seconds')}"))
        log.info("retention: deleted %d quarantined file(s)", len(removed))
    return len(removed)


def _purge_study(db: Database, spool: Spool, study_id: int, study_uid: str, cutoff: datetime) -> tuple[int, int]:
    """Claim one expired study, delete its instance files, then their rows; (rows deleted, bytes freed)."""
    with spool.purging(study_uid):
        with db.session() as session:
            claimed = session.execute(update(Study).where(Study.id == study_id, _expired(cutoff))
                                      .values(state="purging")).rowcount
            if not claimed:  # re-opened or reprocessed since the batch was chosen
                return 0, 0
            rows = session.execute(select(Instance.id, Instance.series_id, Instance.path).join(Series)
                                   .where(Series.study_id == study_id)).all()
        try:
            return _delete_claimed(db, spool, study_id, study_uid, cutoff, rows)
        finally:  # done again; after a failure the rows left, whose files may be gone, go in the next pass
            with db.session() as session:
                session.execute(update(Study).where(Study.id == study_id, Study.state == "purging")
                                .values(state="done"))


def _delete_claimed(db: Database, spool: Spool, study_id: int, study_uid: str, cutoff: datetime,
                    rows: Sequence[Row[tuple[int, int, str]]]) -> tuple[int, int]:
    """Delete a claimed study's files, then their rows; (rows deleted, bytes freed)."""
    freed = spool.discard(Path(path) for _, _, path in rows)
    deleted = 0
    with db.session() as session:
        for series_id in {series_id for _, series_id, _ in rows}:
            ids = [row_id for row_id, of_series, _ in rows if of_series == series_id]
            # A row that moved to another study meanwhile (a PACS merge resend) is that study's now.
            gone = sum(session.execute(delete(Instance).where(Instance.id.in_(ids[start:start + DELETE_CHUNK]),
                                                              Instance.series_id == series_id)).rowcount
                       for start in range(0, len(ids), DELETE_CHUNK))
            session.execute(update(Series).where(Series.id == series_id)
                            .values(instance_count=Series.instance_count - gone))
            deleted += gone
        # A series left empty is not analysed again, even if a merge resend re-opened it meanwhile.
        session.execute(update(Series).where(Series.study_id == study_id, Series.instance_count == 0)
                        .values(state="processed"))
        session.add(AuditEvent(kind="study_purged", subject=study_uid,
                               detail=f"retention: {deleted} instance(s), {freed} bytes, received and analysed "
                                      f"before {cutoff.isoformat(timespec='seconds')}"))
    return deleted, freed
