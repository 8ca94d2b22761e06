"""Start-up recovery: whatever the last process left unfinished is resumed, and said so."""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from pathlib import Path

import pydicom
from sqlalchemy import func, select, update

from dicom_node.contracts import StoredInstance
from dicom_node.header import instance_attributes
from dicom_node.spool import Spool
from radfusion.db import Database
from radfusion.ingest import IngestRecorder
from radfusion.models import Association, AuditEvent, Instance, Job, Study, utcnow
from radfusion.pipeline import MAX_JOB_STARTS, finish_study_if_idle

log = logging.getLogger(__name__)


def recover(db: Database) -> dict[str, int]:
    """Close associations of a dead process, requeue jobs it was running (failing one it was running for the
    ``MAX_JOB_STARTS``-th time) and hand back the studies it was purging (``radfusion.retention``: the next pass
    finishes them)."""
    with db.session() as session:
        aborted = session.execute(update(Association).where(Association.state == "open")
                                  .values(state="aborted", ended_at=utcnow())).rowcount
        stopped = session.scalars(select(Job).where(Job.state == "running", Job.attempts >= MAX_JOB_STARTS)).all()
        for job in stopped:  # the process died under it every time: a crash loop, not bad luck
            error = (f"the process stopped during this job {job.attempts} times (a crash or the memory limit); not "
                     f"started again (radfusion reprocess tries it once more)")
            job.state, job.finished_at, job.error = "failed", utcnow(), error
            session.add(AuditEvent(kind="job_failed", subject=f"job {job.id}", detail=error))
            log.error("job %d failed: %s", job.id, error)
        session.flush()
        for study_id in {job.study_id for job in stopped}:
            finish_study_if_idle(session, study_id)
        requeued = session.execute(update(Job).where(Job.state == "running")
                                   .values(state="queued", started_at=None)).rowcount  # its next run sets it again
        purging = session.execute(update(Study).where(Study.state == "purging").values(state="done")).rowcount
        if aborted or requeued or purging:
            session.add(AuditEvent(kind="recovered", subject="startup",
                                   detail=f"{aborted} association(s) closed as aborted, {requeued} job(s) requeued, "
                                          f"{purging} study purge(s) left to the next retention pass"))
    if aborted or requeued or purging:
        log.warning("recovered after an unclean stop: %d association(s) closed as aborted, %d job(s) requeued, "
                    "%d study purge(s) left to the next retention pass", aborted, requeued, purging)
    return {"associations_aborted": aborted, "jobs_requeued": requeued, "purges_interrupted": purging}


RECONCILE_MARGIN = timedelta(minutes=10)


def reconcile_spool(db: Database, spool: Spool, recorder: IngestRecorder) -> int:
    """Give every spool file written since shortly before the newest row a row of its own.

    An instance is acknowledged only once its file is fsynced, renamed and its directory
    fsynced, so the spool is the durable record; the row is its index. SQLite commits with
    ``synchronous=NORMAL`` (safe against process crashes), so a power loss can take the last
    rows, never the files: they are re-recorded here from their headers. Only series folders
    changed since the newest surviving row (less a margin) are read. A file whose SOP Instance UID
    has a row elsewhere whose file is still there (the instance moved series and the crash came before its
    old file was set aside) and a file whose header cannot be read are set aside in the quarantine with the
    reason: one bad file must not keep the listener from starting. A row elsewhere whose file is gone follows
    the file.
    """
    with db.session() as session:
        newest = session.scalar(select(func.max(Instance.received_at)))
    cutoff = (newest - RECONCILE_MARGIN).timestamp() if newest else 0.0
    restored = 0
    for study_dir in _subdirs(spool.instances):
        for series_dir in _subdirs(Path(study_dir.path)):
            if series_dir.stat().st_mtime < cutoff:
                continue
            files = {Path(entry.path) for entry in os.scandir(series_dir.path) if entry.name.endswith(".dcm")}
            with db.session() as session:
                known = set(session.scalars(select(Instance.path).where(Instance.path.in_([str(f) for f in files]))))
            for path in sorted(files - {Path(p) for p in known}):
                restored += _restore(db, recorder, path)
    if restored:
        with db.session() as session:
            session.add(AuditEvent(kind="reconciled", subject="startup",
                                   detail=f"{restored} spool file(s) without a row were recorded again"))
        log.warning("recorded %d spool file(s) whose database rows were lost (power loss?)", restored)
    return restored


def _restore(db: Database, recorder: IngestRecorder, path: Path) -> int:
    """Record one spool file without a row (1), or set it aside (0)."""
    try:
        instance = read_stored_instance(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is set aside, never a reason not to start
        recorder.set_aside(path, None, None, f"spool file without a row could not be read: {type(exc).__name__}")
        return 0
    with db.session() as session:
        elsewhere = session.scalar(select(Instance.path).where(Instance.sop_instance_uid == instance.sop_instance_uid))
    if elsewhere is not None and Path(elsewhere).is_file():
        recorder.set_aside(path, instance.sop_instance_uid, None, f"superseded: SOP Instance "
                           f"{instance.sop_instance_uid} has a row in another series ({elsewhere})")
        return 0
    # No row, or a row whose file is gone: the power loss took the commit that moved the instance here, but not
    # the move of its old file into the quarantine. This file is the acknowledged copy; its row follows it.
    recorder.instance_stored(instance)
    return 1


def _subdirs(directory: Path) -> list[os.DirEntry[str]]:
    return [entry for entry in os.scandir(directory) if entry.is_dir()]


def read_stored_instance(path: Path) -> StoredInstance:
    """The ingest record of a spool file, read back from its header."""
    dataset = pydicom.dcmread(path, stop_before_pixels=True)
    sop_class = dataset.get("SOPClassUID") or dataset.file_meta.MediaStorageSOPClassUID  # the SCP accepts either
    return StoredInstance(
        association_id=None, path=path, sop_class_uid=str(sop_class),
        sop_instance_uid=str(dataset.SOPInstanceUID), study_instance_uid=str(dataset.StudyInstanceUID),
        series_instance_uid=str(dataset.SeriesInstanceUID),
        transfer_syntax_uid=str(dataset.file_meta.TransferSyntaxUID), size_bytes=path.stat().st_size,
        attributes=instance_attributes(dataset),
    )
