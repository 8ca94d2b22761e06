"""Runs one job: series → detector → SR/SEG files → artifact, delivery and alert rows.

A job's outputs are committed in one transaction together with its ``done`` state, so a crash
mid-job leaves it ``running``; recovery puts it back in the queue and the rerun rewrites the
same result files. When the result objects cannot be written (a source series the SR/SEG builders
refuse), the job fails, but an urgent hemorrhage finding still queues its alert: emergency staff are
told even when the PACS cannot be.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from sqlalchemy import ColumnElement, Row, exists, select, update
from sqlalchemy.orm import Session, aliased

from ai_engine.detectors.base import Detector
from ai_engine.detectors.registry import study_level_detectors
from ai_engine.inputs import load_inputs
from ai_engine.results import DetectorResult, Task
from dicom_node.spool import safe_uid_component
from hl7_fhir.context import ClinicalContext
from hl7_fhir.errors import Hl7FhirError
from hl7_fhir.gather import NOT_GATHERED
from hl7_fhir.findings import OutboundFinding, OutboundStudy
from radfusion.clinical import ClinicalGatherer, StudyPatient
from radfusion.db import Database
from radfusion.dicom_time import aware
from radfusion.errors import MixedPatientError
from radfusion.ingest import patient_identity
from radfusion.models import Alert, Artifact, AuditEvent, Delivery, Instance, Job, Study, same_input, utcnow
from radfusion.outbound import (alert_deliveries, outbound_findings, outbound_study, report_deliveries,
                                untold_targets)
from radfusion.routing import Router
from radfusion.settings import Settings
from reports.alerts import build_ich_alert
from reports.seg import build_heatmap_seg, build_seg
from reports.sr import SrReference, build_sr
from reports.writer import save_dataset

log = logging.getLogger(__name__)

SR_SERIES_NUMBER = 9901
SEG_SERIES_NUMBER = 9902
HEATMAP_SERIES_NUMBER = 9903
MAX_JOB_STARTS = 3  # a job started this many times (crashes, failures to record it) is failed, not started again


@dataclass(frozen=True)
class WrittenObject:
    """A result file written for a job, before its row exists."""

    kind: str
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    series_uid: str


def study_patient(study: Study) -> StudyPatient:
    """The identifiers that link a study to the EMR's record."""
    return StudyPatient(study.id, study.patient_id, study.issuer_of_patient_id, study.accession_number,
                        study.performed_at)


class JobRunner:
    """Executes claimed jobs on worker threads."""

    def __init__(self, db: Database, results_dir: Path, detectors: Mapping[str, Detector], settings: Settings,
                 clinical: ClinicalGatherer, router: Router) -> None:
        self._db = db
        self._results_dir = results_dir
        self._detectors = detectors
        self._study_level = study_level_detectors()
        self._router = router
        self._settings = settings
        self._clinical = clinical

    def runnable(self, limit: int) -> list[int]:
        """Up to ``limit`` queued jobs that may start now, oldest first (see ``_no_earlier_unfinished``)."""
        with self._db.session() as session:
            return list(session.scalars(select(Job.id).where(Job.state == "queued", self._no_earlier_unfinished())
                                        .order_by(Job.id).limit(limit)))

    def claim(self, job_id: int) -> bool:
        """Move a queued job to running; False if another worker got it first, or it must wait for an earlier job
        of its series and detector."""
        with self._db.session() as session:
            claimed = session.execute(update(Job).where(Job.id == job_id, Job.state == "queued",
                                                        self._no_earlier_unfinished()).values(
                state="running", started_at=utcnow(), attempts=Job.attempts + 1)).rowcount
        return claimed == 1

    def release(self, job_id: int) -> None:
        """A job whose run raised (its outcome could not be recorded: the database was locked, say) goes back to
        the queue while it has starts left (``MAX_JOB_STARTS``), else fails; either way the jobs waiting behind it
        (``_no_earlier_unfinished``) are not held until the next start. Raises when the database still fails."""
        with self._db.session() as session:
            job = session.get(Job, job_id)
            if job is None or job.state != "running":
                return
            if job.attempts < MAX_JOB_STARTS:
                job.state, job.started_at = "queued", None
                session.add(AuditEvent(kind="job_requeued", subject=f"job {job_id}",
                                       detail=f"its outcome could not be recorded (start {job.attempts})"))
            else:
                _record_failure(session, job_id, job.study_id,
                                f"its outcome could not be recorded in {job.attempts} starts; not started again "
                                "(radfusion reprocess tries it once more)")

    def _no_earlier_unfinished(self) -> ColumnElement[bool]:
        """No earlier job of the same detector on the same series (the same study, for a study-level detector) is
        queued or running. A revision queued by a late instance starts only when the one before it has ended, so
        its SR names that one's as its predecessor; run side by side, both SRs stood in the PACS, unlinked."""
        earlier = aliased(Job)
        return ~exists().where(earlier.detector == Job.detector, earlier.id < Job.id,
                               earlier.state.in_(("queued", "running")), same_input(earlier, self._study_level))

    def run(self, job_id: int) -> None:
        """Run a claimed job to done or failed; never raises (the failure is recorded)."""
        started = time.monotonic()
        with self._db.session() as session:
            job = session.get(Job, job_id)
            assert job is not None
            if job.detector not in self._detectors:  # the routing changed after the job was queued
                _record_failure(session, job_id, job.study_id,
                                f"detector {job.detector} is not served by the current routing rules; "
                                f"radfusion reprocess analyses the study with the rules as they are now")
                return
            series_ids = self.input_series(job)
            paths = [Path(p) for p in session.scalars(select(Instance.path).where(Instance.series_id.in_(series_ids)))]
            gone = [path for path in paths if not os.path.isfile(path)]  # never raises
            if gone:  # a retention purge that failed after deleting the files: the images sent again are read
                paths = [path for path in paths if path not in gone]
                log.warning("job %d: %d image(s) of its rows are gone from the spool; read without them", job_id,
                            len(gone))
            detector = self._detectors[job.detector]
            patient = study_patient(job.study)
            identity = (job.study.patient_id, job.study.issuer_of_patient_id)
            study_uid, accession = job.study.study_uid, job.study.accession_number
            current = self._current_results(session, job, series_ids)
        # Outside any transaction: this may wait for the EMR (at most what is left of the time budget).
        context = self._clinical.context_for(patient, self._settings.clinical.analytes.get(detector.task.value, []))
        gone_note = [f"{len(gone)} image(s) recorded for what this job reads are gone from radfusion's spool (a "
                     "retention purge that did not finish) and were not read"] if gone else []
        try:
            inputs = load_inputs(detector.task, paths, context)
            sources, frames = _sources(inputs)
            _one_patient(sources, identity)
            result = detector.detect(inputs)
            if inputs.notes or gone_note:  # images the loader left out (a tomosynthesis object beside the 2D views)
                result = replace(result, notes=[*result.notes, *inputs.notes, *gone_note])
            predecessors, result = self._successor(job_id, current, sources, result)
        except Exception as exc:  # noqa: BLE001 - any failure of a job is recorded on the job, never lost
            log.exception("job %d (%s, study %s) failed", job_id, job.detector, study_uid)
            with self._db.session() as session:
                _record_failure(session, job_id, job.study_id,
                                "; ".join([f"{type(exc).__name__}: {exc}", *gone_note]))
            return
        try:
            written = self._write_reports(job_id, study_uid, sources, frames, result, predecessors, context)
        except Exception as exc:  # noqa: BLE001 - the reports failed; an urgent finding still alerts
            self._fail_after_detection(job_id, job.study_id, result, sources, "writing the results", exc)
            return
        try:
            with self._db.session() as session:
                replaced_all = predecessors[0] if predecessors and len(predecessors) == len(current) else None
                self._commit_outputs(session, job_id, result, written, sources, context, replaced_all)
        except Exception as exc:  # noqa: BLE001 - recording them failed (rolled back); an urgent finding still alerts
            self._fail_after_detection(job_id, job.study_id, result, sources, "recording the results", exc)
            return
        log.info("job %d done: %s on study %s (accession %s): %d finding(s), %.2f s", job_id, job.detector,
                 study_uid, accession, len(result.findings), time.monotonic() - started)

    def input_series(self, job: Job) -> list[int]:
        """The series a job reads: its own, or for a study-level detector every series of the study that the
        job's rule routes to that detector (the views of a mammogram sent as one series each)."""
        if job.detector not in self._study_level:
            return [job.series_id]
        return [series.id for series in job.study.series
                if any((m.route.name, m.detector) == (job.rule, job.detector)
                       for m in self._router.select(series.attributes))] or [job.series_id]

    def _current_results(self, session: Session, job: Job, series_ids: list[int]) -> list[SrReference]:
        """The earlier SRs of this detector on this series (or study, for a study-level one) that still stand, newest
        first: the latest, and before it every one that a later SR did not replace (a part of a purged study sent
        again stands beside the result of the whole; see ``_successor``). For a study-level detector, only SRs that
        read some of the images this job reads: another rule's reading of other views stands beside this one, and a
        rule renamed or added above it since does not hide the SR this one replaces. ``series_ids``: what the job
        reads (``input_series``)."""
        mine: set[str] | None = None
        if job.detector in self._study_level:
            earlier = (Job.study_id == job.study_id, Job.id < job.id)
            mine = set(session.scalars(select(Instance.sop_instance_uid).where(Instance.series_id.in_(series_ids))))
        else:
            earlier = (Job.series_id == job.series_id, Job.revision < job.revision)
        rows = session.execute(
            select(Artifact.path, Artifact.sop_class_uid, Artifact.sop_instance_uid, Artifact.series_uid,
                   Artifact.predecessor_id).join(Job, Artifact.job_id == Job.id)
            .where(*earlier, Job.detector == job.detector, Job.state == "done", Artifact.kind == "sr")
            .order_by(Job.id.desc())).all()
        current = []
        for row in rows:
            reference = _sr_reference(row, job.study.study_uid)
            if mine is not None and reference.source_instance_uids and not reference.source_instance_uids & mine:
                continue
            current.append(reference)
            if row.predecessor_id is not None:  # it replaced every SR that stood before it
                break
        return current

    def _successor(self, job_id: int, current: list[SrReference], sources: list[pydicom.Dataset],
                   result: DetectorResult) -> tuple[list[SrReference], DetectorResult]:
        """The standing SRs the new one replaces: not one whose images are gone from radfusion (the retention pass
        purged them) and were not sent again, when fewer images came than it read. That one stays the result of
        the whole study, and the new SR, standing beside it, says why."""
        sent = {str(ds.SOPInstanceUID) for ds in sources}
        missing = {uid for sr in current for uid in sr.source_instance_uids} - sent
        with self._db.session() as session:
            kept = set(session.scalars(select(Instance.sop_instance_uid)
                                       .where(Instance.sop_instance_uid.in_(sorted(missing))))) if missing else set()
        gone = {sr.sop_instance_uid: sr.source_instance_uids - sent - kept for sr in current}
        standing = [sr for sr in current if len(sent) < len(sr.source_instance_uids) and gone[sr.sop_instance_uid]]
        if not standing:
            return current, result
        notes = [f"reads only the {len(sent)} image(s) sent again after the study's images were purged: "
                 f"{len(gone[sr.sop_instance_uid])} of the {len(sr.source_instance_uids)} image(s) that "
                 f"the earlier result SR {sr.sop_instance_uid} read are no longer here, so this result does not "
                 "replace it; send the whole study to analyse it again" for sr in standing]
        for note in notes:
            log.warning("job %d: %s", job_id, note)
        return [sr for sr in current if sr not in standing], replace(result, notes=[*result.notes, *notes])

    def _write_reports(self, job_id: int, study_uid: str, sources: list[pydicom.Dataset], frames: list[int] | None,
                       result: DetectorResult, predecessors: list[SrReference],
                       context: ClinicalContext) -> list[WrittenObject]:
        out_dir = self._results_dir / safe_uid_component(study_uid) / f"job-{job_id}"
        segs = build_seg(sources, result, series_number=SEG_SERIES_NUMBER, frames=frames)
        sr = build_sr(sources, result, series_number=SR_SERIES_NUMBER, predecessors=predecessors,
                      segmentations=segs, clinical_summary=clinical_summary(context), frames=frames)
        written = [_save(ds, "seg", out_dir / f"seg-{index}.dcm") for index, ds in enumerate(segs)]
        heatmaps = build_heatmap_seg(sources, result, series_number=HEATMAP_SERIES_NUMBER, masks=segs, frames=frames)
        written.extend(_save(ds, "heatmap", out_dir / f"heatmap-{index}.dcm") for index, ds in enumerate(heatmaps))
        written.append(_save(sr, "sr", out_dir / "sr.dcm"))
        return written

    def _commit_outputs(self, session: Session, job_id: int, result: DetectorResult, written: list[WrittenObject],
                        sources: list[pydicom.Dataset], context: ClinicalContext,
                        replaced_all: SrReference | None) -> None:
        """Record the written objects and queue their deliveries. ``replaced_all``: the newest of the standing SRs
        when the new SR replaced every one of them (its ``predecessor_id``; left empty while an earlier one stands)."""
        job = session.get(Job, job_id)
        assert job is not None
        predecessor_id = None if replaced_all is None else session.scalar(
            select(Artifact.id).where(Artifact.sop_instance_uid == replaced_all.sop_instance_uid))
        for obj in written:
            artifact = Artifact(job_id=job_id, kind=obj.kind, sop_class_uid=obj.sop_class_uid,
                                sop_instance_uid=obj.sop_instance_uid, series_uid=obj.series_uid, path=str(obj.path),
                                predecessor_id=predecessor_id if obj.kind == "sr" else None)
            session.add(artifact)
            session.flush()
            for destination in job.destinations:
                session.add(Delivery(kind="dicom", target=destination, job_id=job_id, artifact_id=artifact.id))
        now = utcnow()
        urgent = self._is_urgent(result)
        findings = outbound_findings(result, urgent)
        sr_uid = next(obj.sop_instance_uid for obj in written if obj.kind == "sr")
        study = self._emr_study(session, job, result, bool(job.report_destinations) or urgent, sources, sr_uid,
                                "" if replaced_all is None else replaced_all.sop_instance_uid)
        _audit_untold(session, job, untold_targets(job, self._settings, study, reports=True, alerts=urgent))
        if study is not None:
            told = set() if predecessor_id is None else set(session.scalars(
                select(Delivery.target).join(Artifact, Artifact.job_id == Delivery.job_id).where(
                    Artifact.id == predecessor_id, Delivery.kind == "hl7_report", Delivery.state != "failed")))
            session.add_all(report_deliveries(job, study, findings, self._settings, now, hl7_told=told))
        if urgent:
            self._queue_alert(session, job, result, study, findings, sources, now)
        job.state = "done"
        job.finished_at = utcnow()
        job.error = None
        job.result = result.summary()
        job.clinical_context = context.to_dict()
        finish_study_if_idle(session, job.study_id)

    def _emr_study(self, session: Session, job: Job, result: DetectorResult, needed: bool,
                   sources: list[pydicom.Dataset], result_uid: str,
                   replaces_result_uid: str = "") -> OutboundStudy | None:
        """The study as FHIR/HL7 messages name it; None (audited when ``needed``) if the EMR cannot be told."""
        try:
            return outbound_study(job.study, result.task, result.algorithm.name, self._settings,
                                  performed_at=performed_at(sources[0]), result_uid=result_uid,
                                  patient_name=str(sources[0].get("PatientName", "") or ""), notes=result.notes,
                                  replaces_result_uid=replaces_result_uid,
                                  order_scope="" if job.detector in self._study_level
                                  else str(sources[0].SeriesInstanceUID))
        except Hl7FhirError as exc:  # e.g. no PatientID: the EMR cannot be told, the PACS and webhooks still are
            if needed:
                session.add(AuditEvent(kind="emr_message_skipped", subject=f"job {job.id}", detail=str(exc)))
                log.warning("job %d: no FHIR/HL7 messages for study %s: %s", job.id, job.study.study_uid, exc)
            return None

    def _queue_alert(self, session: Session, job: Job, result: DetectorResult, study: OutboundStudy | None,
                     findings: list[OutboundFinding], sources: list[pydicom.Dataset], now: datetime) -> int:
        """Add the hemorrhage alert and its deliveries to every alert channel of the job; the alert's id.

        One alert per study and channel: a channel that an earlier alert of the study reaches (delivered or still
        trying; a second reconstruction, a re-issued result) is not paged again. When the study has an alert and
        no channel is left to tell, that is audited and the earlier alert's id returned. Two jobs of one study
        decide this one after the other (the study's row is locked; SQLite's writes are serialised anyway).
        """
        session.execute(select(Study.id).where(Study.id == job.study_id).with_for_update())
        told = set(session.scalars(select(Delivery.target).join(Alert, Delivery.alert_id == Alert.id)
                                   .join(Job, Alert.job_id == Job.id)
                                   .where(Job.study_id == job.study_id, Delivery.state != "failed")))
        deliveries = alert_deliveries(job, study, findings, self._settings, now, already_told=told)
        earlier = None if deliveries else session.scalar(
            select(Alert.id).join(Job, Alert.job_id == Job.id).where(Job.study_id == job.study_id)
            .order_by(Alert.id).limit(1))
        if earlier is not None:
            session.add(AuditEvent(kind="alert_not_repeated", subject=f"job {job.id}",
                                   detail=f"hemorrhage on a study already alerted (alert {earlier})"))
            log.warning("hemorrhage found again on study %s (job %d): alert %d was raised for it, not paged twice",
                        job.study.study_uid, job.id, earlier)
            return earlier
        payload = build_ich_alert(result, study_instance_uid=job.study.study_uid,
                                  series_instance_uid=job.series.series_uid,
                                  accession_number=job.study.accession_number,
                                  acquisition_datetime=performed_at(sources[0]), job_id=job.id,
                                  created_at=now)
        alert = Alert(job_id=job.id, payload=payload, released_at=job.trigger_released_at)
        session.add(alert)
        session.flush()
        for delivery in deliveries:
            delivery.alert_id = alert.id
        session.add_all(deliveries)
        log.warning("URGENT: hemorrhage alert %d for study %s (accession %s)", alert.id, job.study.study_uid,
                    job.study.accession_number)
        return alert.id

    def _fail_after_detection(self, job_id: int, study_id: int, result: DetectorResult,
                              sources: list[pydicom.Dataset], step: str, exc: Exception) -> None:
        """Record that ``step`` failed after detection, and raise an urgent finding's alert all the same."""
        log.error("job %d: %s failed", job_id, step, exc_info=exc)
        error = f"{step} failed: {type(exc).__name__}: {exc}"
        try:
            with self._db.session() as session:
                alert = self._alert_without_reports(session, job_id, result, sources)
                sent = "" if alert is None else f"; the study's hemorrhage alert {alert} stands without them"
                _record_failure(session, job_id, study_id, error + sent)
        except Exception as alert_exc:  # noqa: BLE001 - the job must still end failed, never stay running
            log.error("job %d: the alert without results failed", job_id, exc_info=alert_exc)
            with self._db.session() as session:
                _record_failure(session, job_id, study_id,
                                f"{error}; the hemorrhage alert could not be queued either: {type(alert_exc).__name__}")

    def _alert_without_reports(self, session: Session, job_id: int, result: DetectorResult,
                               sources: list[pydicom.Dataset]) -> int | None:
        """When the results could not be written: the urgent finding's alert all the same (its id), else None."""
        if not self._is_urgent(result):
            return None
        job = session.get(Job, job_id)
        assert job is not None
        study = self._emr_study(session, job, result, True, sources, "")  # no SR: the alert names the study only
        _audit_untold(session, job, untold_targets(job, self._settings, study, reports=False, alerts=True))
        return self._queue_alert(session, job, result, study, outbound_findings(result, True), sources, utcnow())

    def _is_urgent(self, result: DetectorResult) -> bool:
        total_ml = sum(f.volume_ml or 0.0 for f in result.findings)
        alerts = self._settings.alerts
        return (result.task == Task.ICH and result.positive and bool(result.findings)
                and result.case_score >= alerts.ich_min_score and total_ml >= alerts.ich_min_volume_ml)


def _audit_untold(session: Session, job: Job, reasons: list[str]) -> None:
    """Audit and log why targets of ``job`` are not told of this result (``untold_targets``)."""
    for reason in reasons:
        session.add(AuditEvent(kind="target_not_told", subject=f"job {job.id}", detail=reason))
        log.warning("job %d: not told of this result: %s", job.id, reason)


def _record_failure(session: Session, job_id: int, study_id: int, error: str) -> None:
    """Mark the job failed with ``error``, audit it, and finish its study if nothing else runs on it."""
    session.execute(update(Job).where(Job.id == job_id).values(state="failed", finished_at=utcnow(), error=error))
    session.add(AuditEvent(kind="job_failed", subject=f"job {job_id}", detail=error))
    finish_study_if_idle(session, study_id)


def finish_study_if_idle(session: Session, study_id: int) -> None:
    """A processing study whose jobs have all ended is done."""
    session.flush()
    busy = session.scalar(select(Job.id).where(Job.study_id == study_id, Job.state.in_(("queued", "running"))).limit(1))
    if busy is None:
        session.execute(update(Study).where(Study.id == study_id, Study.state == "processing").values(state="done"))


def _sr_reference(row: Row, study_uid: str) -> SrReference:
    """An earlier SR read from its file, with the images it cites; from its row alone (citing nothing, so it is
    replaced as before this check existed) when the file is gone or unreadable, which must not stop the job."""
    try:
        return SrReference.from_dataset(pydicom.dcmread(row.path, stop_before_pixels=True))
    except (OSError, InvalidDicomError, AttributeError) as exc:
        log.warning("earlier SR %s unreadable (%s: %s): replaced without checking the images it read",
                    row.sop_instance_uid, type(exc).__name__, exc)
        return SrReference(row.sop_class_uid, row.sop_instance_uid, row.series_uid, study_uid)


def _sources(inputs) -> tuple[list[pydicom.Dataset], list[int] | None]:  # noqa: ANN001 - DetectorInput
    """Source headers in the order the detector's masks index them, and for a volume read from one multi-frame
    image that image once with the frame number of each slice."""
    volume = inputs.volume
    if volume is not None and volume.frame_numbers is not None:
        return [pydicom.dcmread(volume.paths[0], stop_before_pixels=True)], list(volume.frame_numbers)
    paths = list(volume.paths) if volume is not None else [view.path for view in inputs.views]
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in paths], None


def _one_patient(sources: list[pydicom.Dataset], identity: tuple[str, str]) -> None:
    """Refuse images that name another patient than their study (``identity``: its Patient ID and issuer, which the
    newest image set) or than each other: a patient correction the PACS is still sending. The results would carry
    the identity of the first image, beside a study filed under the corrected one. The rest of the correction
    queues the study again."""
    ids = {patient_identity({"PatientID": ds.get("PatientID"), "IssuerOfPatientID": ds.get("IssuerOfPatientID")})
           for ds in sources}
    names = {str(ds.get("PatientName", "") or "").rstrip("^ ").upper() for ds in sources}  # "Doe^Jane^^" is DOE^JANE
    if len(names) > 1 or any(pid != identity[0] or issuer not in ("", identity[1]) for pid, issuer in ids):
        raise MixedPatientError(
            f"the {len(sources)} images read name {len(ids)} patient identities and {len(names)} patient names, not "
            "only their study's: a patient correction still being sent; the study is analysed again when the rest "
            "of it arrives")


def _save(ds: pydicom.Dataset, kind: str, path: Path) -> WrittenObject:
    save_dataset(ds, path)
    return WrittenObject(kind, path, str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID))


def clinical_summary(context: ClinicalContext) -> dict[str, str]:
    """What the radiologist should see of the clinical inputs: each lab, and what could not be read (or why there
    are no labs)."""
    errors = _summary_errors(context.errors)
    if not context.labs:
        return {"Clinical data": f"not used ({'; '.join(errors) or context.status})"}
    summary = {lab.name: f"{lab.value:g} {lab.unit}" + (f" ({lab.observed_at:%Y-%m-%d})" if lab.observed_at else "")
               for lab in context.labs.values()}
    if errors:  # a partial record must not read as a complete one
        summary["Clinical data"] = f"partly read: {'; '.join(errors)}"
    return summary


def _summary_errors(errors: list[str]) -> list[str]:
    """``errors`` with the sections not gathered named in one line, not one each (every SR where no EMR is set)."""
    unread = {e: e.split(":")[0] for e in errors if e.endswith(f": {NOT_GATHERED}")}
    joined = [f"{', '.join(unread.values())}: {NOT_GATHERED}"] if unread else []
    return [e for e in errors if e not in unread] + joined


def performed_at(ds: pydicom.Dataset) -> datetime | None:
    """``acquisition_datetime`` made timezone-aware: with the source's Timezone Offset From UTC, else as the
    server's local time (the modality's clock is the hospital's)."""
    when = acquisition_datetime(ds)
    return None if when is None else aware(when, str(ds.get("TimezoneOffsetFromUTC", "") or ""))


def acquisition_datetime(ds: pydicom.Dataset) -> datetime | None:
    """When the images were acquired (the modality's local time, as DICOM records it), or None."""
    candidates = [
        str(ds.get("AcquisitionDateTime", "") or ""),
        str(ds.get("AcquisitionDate", "") or "") + str(ds.get("AcquisitionTime", "") or ""),
        str(ds.get("SeriesDate", "") or "") + str(ds.get("SeriesTime", "") or ""),
        str(ds.get("StudyDate", "") or "") + str(ds.get("StudyTime", "") or ""),
    ]
    for value in candidates:
        if len(value) >= 8:
            digits = value.split(".")[0][:14].ljust(14, "0")
            try:
                return datetime.strptime(digits, "%Y%m%d%H%M%S")
            except ValueError:
                continue
    return None
