"""The database side of C-STORE: records associations, instances and rejections.

Implements ``dicom_node.contracts.StoreSink``. ``instance_stored`` commits before it returns,
so the SCP acknowledges an instance only once its row is durable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dicom_node.contracts import AssociationInfo, StoredInstance
from radfusion.db import Database
from radfusion.models import Association, AuditEvent, Instance, Quarantine, Series, Study, utcnow

log = logging.getLogger(__name__)

SERIES_ATTRIBUTES = (
    "Modality", "BodyPartExamined", "SeriesDescription", "StudyDescription", "ProtocolName",
    "SliceThickness", "ImageType", "Rows", "Columns", "Laterality", "SeriesNumber", "Manufacturer",
)
INSERT_RETRIES = 3


def _text(value: object) -> str:
    return "" if value is None else str(value)


class IngestRecorder:
    """Writes ingest events to the database; ``on_instance`` is called after each commit."""

    def __init__(self, db: Database, on_instance: Callable[[], None] = lambda: None) -> None:
        self._db = db
        self._on_instance = on_instance

    def association_opened(self, info: AssociationInfo) -> None:
        with self._db.session() as session:
            session.add(Association(
                id=info.association_id, calling_ae=info.calling_ae, called_ae=info.called_ae,
                peer_address=f"{info.peer_address}:{info.peer_port}", started_at=info.started_at,
            ))

    def association_rejected(self, calling_ae: str, called_ae: str, peer: str, reason: str) -> None:
        with self._db.session() as session:
            session.add(AuditEvent(kind="association_rejected", subject=f"{calling_ae}->{called_ae}",
                                   detail=f"from {peer}: {reason}"))

    def association_closed(self, association_id: str, released: bool) -> None:
        with self._db.session() as session:
            session.execute(update(Association).where(Association.id == association_id).values(
                state="released" if released else "aborted", ended_at=utcnow()))

    def instance_rejected(self, association_id: str, reason: str, quarantine_path: Path | None,
                          sop_instance_uid: str | None) -> None:
        with self._db.session() as session:
            session.add(Quarantine(association_id=association_id, sop_instance_uid=sop_instance_uid,
                                   reason=reason, path=None if quarantine_path is None else str(quarantine_path)))
            session.execute(update(Association).where(Association.id == association_id).values(
                instances_failed=Association.instances_failed + 1))

    def instance_stored(self, instance: StoredInstance) -> bool:
        """Commit the instance's row; False when the SOP Instance UID was already stored."""
        for attempt in range(INSERT_RETRIES):
            try:
                with self._db.session() as session:
                    is_new = self._record(session, instance)
                break
            except IntegrityError:  # a concurrent association created the same study/series first
                if attempt == INSERT_RETRIES - 1:
                    raise
        self._on_instance()
        return is_new

    def _record(self, session: Session, instance: StoredInstance) -> bool:
        attrs = instance.attributes
        now = utcnow()
        study = session.scalar(select(Study).where(Study.study_uid == instance.study_instance_uid))
        if study is None:
            study = Study(study_uid=instance.study_instance_uid,
                          accession_number=_text(attrs.get("AccessionNumber")),
                          patient_id=_text(attrs.get("PatientID")),
                          issuer_of_patient_id=_text(attrs.get("IssuerOfPatientID")),
                          study_date=_text(attrs.get("StudyDate")))
            session.add(study)
            session.flush()
        elif study.state != "receiving":
            log.info("study %s re-opened by a late instance (accession %s)", study.study_uid, study.accession_number)
            session.add(AuditEvent(kind="study_reopened", subject=study.study_uid, detail=f"was {study.state}"))
            study.state = "receiving"
        study.last_received_at = now

        series = session.scalar(select(Series).where(Series.series_uid == instance.series_instance_uid))
        if series is None:
            series = Series(study_id=study.id, series_uid=instance.series_instance_uid,
                            modality=_text(attrs.get("Modality")),
                            attributes={k: attrs.get(k) for k in SERIES_ATTRIBUTES})
            session.add(series)
            session.flush()
        series.state = "receiving"
        series.last_received_at = now
        series.last_association_id = instance.association_id

        existing = session.scalar(select(Instance).where(Instance.sop_instance_uid == instance.sop_instance_uid))
        if existing is None:
            session.add(Instance(
                series_id=series.id, sop_instance_uid=instance.sop_instance_uid,
                sop_class_uid=instance.sop_class_uid, transfer_syntax_uid=instance.transfer_syntax_uid,
                path=str(instance.path), size_bytes=instance.size_bytes,
                instance_number=_int_or_none(attrs.get("InstanceNumber")),
                position=_floats_or_none(attrs.get("ImagePositionPatient")),
                orientation=_floats_or_none(attrs.get("ImageOrientationPatient")),
                association_id=instance.association_id,
            ))
            series.instance_count += 1
        else:
            existing.times_received += 1
            existing.path = str(instance.path)
        session.execute(update(Association).where(Association.id == instance.association_id).values(
            instances_stored=Association.instances_stored + 1))
        return existing is None


def _int_or_none(value: object) -> int | None:
    try:
        return None if value is None else int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _floats_or_none(value: object) -> list[float] | None:
    if not isinstance(value, (list, tuple)):
        return None
    try:
        return [float(v) for v in value]
    except (TypeError, ValueError):
        return None
