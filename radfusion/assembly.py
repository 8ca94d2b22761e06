"""Study assembly on the database: decides when series are complete and queues their jobs.

Called periodically by the scheduler. A series becomes a candidate when the association that
carried it was released and it has been quiet for ``settle_s`` (or quiet for ``quiet_timeout_s``
whatever the association does); a candidate with a slice gap waits for the quiet timeout and
is then processed with the gap noted. A study is dispatched when none of its series is still
receiving; each stable series gets one job per detector its routing rules choose, except for a
study-level detector (mammography: many modalities send each view as a series of its own), which
gets one job per study and rule, anchored on the first such series; the job reads them all
(``radfusion.pipeline.JobRunner.input_series``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from ai_engine.orientation import is_axial
from ai_engine.volume import image_direction
from dicom_node.assembly import SlicePosition, check_series_geometry, series_is_candidate
from radfusion.db import Database
from radfusion.errors import RadfusionError
from radfusion.models import Association, AuditEvent, Instance, Job, Series, Study, utcnow
from radfusion.routing import TARGETS, RouteMatch, Router, union
from radfusion.settings import StabilitySettings

StudySeen = Callable[[Study, set[str]], None]

log = logging.getLogger(__name__)


class StudyAssembler:
    """Moves series from receiving to stable and studies from receiving to processing."""

    def __init__(self, db: Database, router: Router, stability: StabilitySettings, model_versions: dict[str, str],
                 on_study_seen: StudySeen = lambda study, detectors: None,
                 study_level: frozenset[str] = frozenset()) -> None:
        self._db = db
        self._router = router
        self._study_level = study_level
        self._stability = stability
        self._model_versions = model_versions
        self._on_study_seen = on_study_seen
        self._seen: set[int] = set()
        self._failed: set[int] = set()  # studies whose assembly raised, logged once

    def tick(self, now: datetime | None = None) -> int:
        """One pass over receiving studies; returns the number of jobs queued."""
        now = now or utcnow()
        queued = 0
        with self._db.session() as session:
            studies = session.scalars(select(Study).where(Study.state == "receiving")).all()
            for study in studies:
                if study.id not in self._seen:  # first sight: e.g. start fetching the patient's record
                    self._seen.add(study.id)
                    self._on_study_seen(study, {m.detector for s in study.series for m in self._router.select(s.attributes)})
                try:
                    with session.begin_nested():  # one study's error must not hold up the others
                        queued += self._assemble(session, study, now)
                except Exception as exc:  # noqa: BLE001 - logged and audited once; the study waits, the rest go on
                    self._failed_once(session, study, exc)
        return queued

    def _assemble(self, session: Session, study: Study, now: datetime) -> int:
        """Settle the study's receiving series; dispatch it once none is receiving. Jobs queued."""
        for series in [s for s in study.series if s.state == "receiving"]:
            self._settle(session, series, now)
        if all(s.state != "receiving" for s in study.series):
            return self._dispatch(session, study, now)
        return 0

    def _failed_once(self, session: Session, study: Study, exc: Exception) -> None:
        """Log and audit a study whose assembly raised, the first time it does in this process."""
        if study.id in self._failed:
            return
        self._failed.add(study.id)
        log.exception("study %s cannot be assembled; it waits, the other studies go on", study.study_uid)
        session.add(AuditEvent(kind="assembly_failed", subject=study.study_uid, detail=f"{type(exc).__name__}: {exc}"))

    def _settle(self, session: Session, series: Series, now: datetime) -> None:
        # Only a released association ends a send; after an abort (or a crash of ours) the sender is
        # likely to retry, so such a series waits for the quiet timeout like one still arriving.
        released = session.scalar(
            select(Association.state).where(Association.id == series.last_association_id)) == "released"
        if released and session.scalar(  # another association still sending this series holds it back too
                select(Association.id).join(Instance, Instance.association_id == Association.id)
                .where(Instance.series_id == series.id, Association.state == "open").limit(1)) is not None:
            released = False
        if not series_is_candidate(series.last_received_at, released, now,
                                   self._stability.settle_s, self._stability.quiet_timeout_s):
            return
        rows = session.execute(select(Instance.position, Instance.orientation, Instance.instance_number)
                               .where(Instance.series_id == series.id, Instance.localizer.is_(False))).all()
        slices = [SlicePosition(tuple(p) if p else None, tuple(o) if o else None, n) for p, o, n in rows]
        report = check_series_geometry(slices, gap_factor=self._stability.gap_factor)
        quiet_for = (now - series.last_received_at).total_seconds()
        if not report.ok and quiet_for < self._stability.quiet_timeout_s:
            if series.geometry_note != report.reason:
                log.info("series %s waits: %s", series.series_uid, report.reason)
                series.geometry_note = report.reason
            return
        series.geometry_note = report.reason
        series.state = "stable"
        series.stable_at = now

    def _dispatch(self, session: Session, study: Study, now: datetime) -> int:
        queued = 0
        study_jobs: dict[tuple[str, str], Job] = {}  # the study-level jobs queued, by (rule, detector)
        for series in sorted(study.series, key=lambda s: s.id):
            if series.state != "stable":
                continue
            if series.instance_count == 0:  # every instance was received again in another series: nothing to read
                log.info("series %s stable with no instances left (moved to another series): no job",
                         series.series_uid)
                series.state = "processed"
                continue
            first = session.execute(select(Instance.orientation).where(Instance.series_id == series.id,
                                                                       Instance.localizer.is_(False))
                                    .order_by(Instance.instance_number, Instance.id).limit(1)).first()
            if first is None:
                # a scout series of its own (a Canon "Scanogram" passes the rules' description test): no detector
                # reads one, so it gets no job instead of a job that fails
                session.add(AuditEvent(kind="localizers_only", subject=series.series_uid,
                                       detail=f"{series.instance_count} localizer image(s): not analysed"))
                series.state = "processed"
                continue
            matches = self._router.select(series.attributes)
            if not matches:
                session.add(AuditEvent(kind="no_rule_matched", subject=series.series_uid,
                                       detail=f"modality {series.modality}"))
            elif plane := _reformatted_plane(first.orientation):  # a job would only fail: the CT detectors read axial
                skipped = [m.detector for m in matches if m.detector not in self._study_level]
                matches = [m for m in matches if m.detector in self._study_level]
                if skipped:
                    session.add(AuditEvent(kind="not_axial", subject=series.series_uid,
                                           detail=f"a {plane} series: not analysed by {', '.join(skipped)}, which "
                                                  f"read axial series"))
            released_at = session.scalar(select(Association.ended_at).where(Association.id == series.last_association_id))
            jobs = 0
            for match in matches:
                key = (match.route.name, match.detector)
                if key in study_jobs:  # one job reads the study: it tells the targets of every series' rules
                    _add_targets(study_jobs[key], match)
                    continue
                jobs += 1
                job = Job(
                    study_id=study.id, series_id=series.id, detector=match.detector,
                    model_version=self._model_versions[match.detector], revision=series.revision,
                    rule=match.route.name, destinations=list(match.destinations),
                    report_destinations=list(match.report_destinations),
                    alert_channels=list(match.alert_channels), trigger_released_at=released_at,
                )
                session.add(job)
                if match.detector in self._study_level:
                    study_jobs[key] = job
            queued += jobs
            log.info("series %s stable (%d instances, accession %s): %d job(s)%s", series.series_uid,
                     series.instance_count, study.accession_number, jobs,
                     f"; note: {series.geometry_note}" if series.geometry_note else "")
            series.state = "processed"
            series.revision += 1
        busy = queued or session.scalar(select(Job.id).where(Job.study_id == study.id,
                                                             Job.state.in_(("queued", "running"))).limit(1))
        study.state = "processing" if busy else "done"  # a late unmatched series leaves earlier jobs running
        study.stable_at = now
        return queued


def _add_targets(job: Job, match: RouteMatch) -> None:
    """Add the targets of ``match`` that ``job`` does not name yet."""
    for column in TARGETS:
        setattr(job, column, list(union([getattr(job, column), getattr(match, column)])))


def reopen_studies(db: Database, study_uids: Sequence[str], now: datetime | None = None) -> list[str]:
    """Put finished studies back to receiving, so the server analyses them again with its current rules and
    models (``radfusion reprocess``); the results are re-issued as the next revision, each new SR naming the
    one it replaces. Refused as a whole, changing nothing, when a UID is unknown, a study is still being
    received, analysed or purged, or its images are no longer stored (retention)."""
    now = now or utcnow()
    uids = list(dict.fromkeys(study_uids))
    with db.session() as session:
        studies = {s.study_uid: s for s in session.scalars(select(Study).where(Study.study_uid.in_(uids)))}
        stored = dict(session.execute(select(Series.study_id, func.count(Instance.id)).join(Instance)
                                      .where(Series.study_id.in_([s.id for s in studies.values()]))
                                      .group_by(Series.study_id)).all())
        problems = [f"{uid}: unknown study" for uid in uids if uid not in studies]
        problems += [f"{uid}: still being received, analysed or purged ({study.state})"
                     for uid, study in studies.items() if study.state != "done"]
        problems += [f"{uid}: its images are no longer stored (retention_days); send the study again"
                     for uid, study in studies.items() if study.state == "done" and not stored.get(study.id)]
        if not problems:
            problems = [problem for uid in uids if (problem := _reopen(session, studies[uid], now))]
        if problems:  # raised inside the transaction: it rolls back whatever was re-opened
            raise RadfusionError("nothing re-opened: " + "; ".join(problems))
    return uids


def study_uids_of_accessions(db: Database, accessions: Sequence[str]) -> list[str]:
    """The Study Instance UID each accession number names; RadfusionError naming every number that names no
    study or more than one (say which by UID)."""
    if not accessions:
        return []
    with db.session() as session:
        rows = session.execute(select(Study.accession_number, Study.study_uid)
                               .where(Study.accession_number.in_(accessions))).all()
    found: dict[str, list[str]] = {number: [] for number in accessions}
    for number, uid in rows:
        found[number].append(uid)
    problems = [f"accession {number!r}: {'no study' if not uids else 'names ' + ', '.join(sorted(uids))}"
                for number, uids in found.items() if len(uids) != 1]
    if problems:
        raise RadfusionError("nothing re-opened: " + "; ".join(problems))
    return [uids[0] for uids in found.values()]


def _reopen(session: Session, study: Study, now: datetime) -> str | None:
    """Re-open one finished study and its stored series; why not, if a retention purge claimed it since it was read."""
    if not session.execute(update(Study).where(Study.id == study.id, Study.state == "done")
                           .values(state="receiving", last_received_at=now)).rowcount:
        return f"{study.study_uid}: claimed by a retention purge meanwhile"
    reopened = session.execute(update(Series).where(Series.study_id == study.id, Series.instance_count > 0)
                               .values(state="receiving", last_received_at=now)).rowcount
    session.add(AuditEvent(kind="study_reprocess_requested", subject=study.study_uid,
                           detail=f"{reopened} series re-opened for analysis"))
    return None


def _reformatted_plane(orientation: list[float] | None) -> str | None:
    """"sagittal", "coronal" or "oblique" when a series' first image (not a localizer) of ``orientation`` is not
    axial (the CT detectors refuse such a series: an MPR of the axial one); None for an axial image or one without
    orientation."""
    if not orientation:
        return None
    direction = image_direction(orientation)
    if is_axial(direction):
        return None
    return {0: "sagittal", 1: "coronal"}.get(int(abs(direction[2]).argmax()), "oblique")
