"""SQLAlchemy 2 models: the database is the source of truth for every piece of work.

States are plain strings, listed per model; every unfinished state is resumed at start-up
(see radfusion.recovery).
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timezone

from sqlalchemy import (
    JSON, BigInteger, DateTime, Dialect, Float, ForeignKey, Integer, String, Text, TypeDecorator, UniqueConstraint,
    ColumnElement, and_, false, or_,
)
from sqlalchemy import text as sql_text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    """Timezone-aware now; every timestamp in the database is UTC."""
    return datetime.now(timezone.utc)


class UtcDateTime(TypeDecorator[datetime]):
    """Stores UTC without a zone (SQLite has none) and returns aware UTC datetimes on every backend."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} given to the database; use aware UTC")
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=timezone.utc)


class Base(DeclarativeBase):
    """Declarative base; all timestamps are timezone-aware UTC."""

    type_annotation_map = {datetime: UtcDateTime()}


class Association(Base):
    """One DICOM association. state: open, released, aborted, rejected."""

    __tablename__ = "associations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    calling_ae: Mapped[str] = mapped_column(String(16))
    called_ae: Mapped[str] = mapped_column(String(16))
    peer_address: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default="open", index=True)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None]
    instances_stored: Mapped[int] = mapped_column(default=0)
    instances_failed: Mapped[int] = mapped_column(default=0)


class Study(Base):
    """A study as received. state: receiving, stable, processing, done (a late instance sets receiving),
    purging (``radfusion.retention`` is deleting its images; done again after)."""

    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), unique=True)
    accession_number: Mapped[str] = mapped_column(String(64), default="")
    patient_id: Mapped[str] = mapped_column(String(64), default="")
    issuer_of_patient_id: Mapped[str] = mapped_column(String(64), default="")
    study_date: Mapped[str] = mapped_column(String(8), default="")
    performed_at: Mapped[datetime | None]  # Study Date + Time (its day's end without a time; None without a date)
    state: Mapped[str] = mapped_column(String(16), default="receiving", index=True)
    first_received_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_received_at: Mapped[datetime] = mapped_column(default=utcnow)
    stable_at: Mapped[datetime | None]

    series: Mapped[list[Series]] = relationship(back_populates="study")


class Series(Base):
    """A series. state: receiving, stable (ready), processed; geometry_note says why it is incomplete.

    ``revision`` counts how often the series was dispatched; a late instance re-opens the series
    and its next dispatch re-issues the results with the next revision.
    """

    __tablename__ = "series"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    series_uid: Mapped[str] = mapped_column(String(64), unique=True)
    modality: Mapped[str] = mapped_column(String(16), default="")
    attributes: Mapped[dict] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(16), default="receiving", index=True)
    instance_count: Mapped[int] = mapped_column(default=0)
    last_received_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_association_id: Mapped[str | None] = mapped_column(String(36))
    geometry_note: Mapped[str | None] = mapped_column(Text)
    revision: Mapped[int] = mapped_column(default=0)
    stable_at: Mapped[datetime | None]

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")


class Instance(Base):
    """A stored instance: its bytes are durably in the spool at ``path``."""

    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    # 64 bits: a breast tomosynthesis object can pass 2 GiB (SQLite's INTEGER is 64 bits already)
    size_bytes: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"))
    instance_number: Mapped[int | None]
    position: Mapped[list | None] = mapped_column(JSON)
    orientation: Mapped[list | None] = mapped_column(JSON)
    localizer: Mapped[bool] = mapped_column(default=False, server_default=false())  # Image Type LOCALIZER (a scout)
    association_id: Mapped[str | None] = mapped_column(String(36))
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    times_received: Mapped[int] = mapped_column(default=1)

    series: Mapped[Series] = relationship(back_populates="instances")


class Quarantine(Base):
    """An instance we refused, kept with the reason."""

    __tablename__ = "quarantine"

    id: Mapped[int] = mapped_column(primary_key=True)
    association_id: Mapped[str | None] = mapped_column(String(36))
    sop_instance_uid: Mapped[str | None] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text)
    path: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    """One detector run on one series. state: queued, running, done, failed.

    Keyed for idempotency by (series, detector, model version, study revision). ``acknowledged_at``: when an operator
    acknowledged its failure (``radfusion acknowledge``; the reason is in the audit trail).
    """

    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("series_id", "detector", "model_version", "revision"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    detector: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(32))
    revision: Mapped[int] = mapped_column(default=0)
    rule: Mapped[str] = mapped_column(String(128))
    destinations: Mapped[list] = mapped_column(JSON, default=list)
    report_destinations: Mapped[list] = mapped_column(JSON, default=list)
    alert_channels: Mapped[list] = mapped_column(JSON, default=list)
    state: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    attempts: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict | None] = mapped_column(JSON)
    clinical_context: Mapped[dict | None] = mapped_column(JSON)
    trigger_released_at: Mapped[datetime | None]
    acknowledged_at: Mapped[datetime | None]

    study: Mapped[Study] = relationship()
    series: Mapped[Series] = relationship()


def same_input(other: type[Job], study_level: Collection[str]) -> ColumnElement[bool]:
    """``other`` (an alias of Job) reads what Job reads: the same series, or for a study-level detector (names in
    ``study_level``) the same study. Its revisions and re-runs are such jobs."""
    return or_(other.series_id == Job.series_id, and_(Job.detector.in_(sorted(study_level)),
                                                      other.study_id == Job.study_id))


class Artifact(Base):
    """A result object written by a job: kind sr, seg or heatmap (a fractional SEG).

    ``predecessor_id`` links a re-issued SR.
    """

    __tablename__ = "artifacts"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    kind: Mapped[str] = mapped_column(String(8))
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    series_uid: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    predecessor_id: Mapped[int | None] = mapped_column(ForeignKey("artifacts.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Alert(Base):
    """An urgent finding. ``latency_s``: association release to first successful delivery."""

    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), unique=True)
    payload: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    released_at: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]
    latency_s: Mapped[float | None] = mapped_column(Float)


class Delivery(Base):
    """Something to send somewhere. state: pending, delivered, failed.

    kind: dicom (``artifact_id`` to a DICOM destination), webhook (``alert_id``'s payload),
    fhir_report / hl7_report (``payload``, built once so every retry sends the same message),
    fhir_alert / hl7_alert (``payload`` for ``alert_id``). ``target`` names the destination or channel.
    ``created_at`` starts the give-up clock: when it was queued, or re-queued by ``radfusion requeue``.
    ``acknowledged_at``: when an operator acknowledged its failure (``radfusion acknowledge``); a requeue clears it.
    """

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("artifact_id", "target"),
        UniqueConstraint("alert_id", "target"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    target: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"), index=True)
    artifact_id: Mapped[int | None] = mapped_column(ForeignKey("artifacts.id"))
    alert_id: Mapped[int | None] = mapped_column(ForeignKey("alerts.id"))
    payload: Mapped[dict | None] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    acknowledged_at: Mapped[datetime | None]

    artifact: Mapped[Artifact | None] = relationship()
    alert: Mapped[Alert | None] = relationship()


class AuditEvent(Base):
    """Something a person may need to reconstruct later: rejections, recoveries, deliveries, failures."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(48), index=True)
    subject: Mapped[str] = mapped_column(String(128), default="")
    detail: Mapped[str] = mapped_column(Text, default="")


class Hl7Message(Base):
    """An inbound HL7 v2 message we stored; (control id, sending facility) and its ``digest`` (``Header.digest``;
    NULL for rows stored before migration 0007) detect resends. A control id the sender used before for other
    content is stored as ``<control id>#<digest prefix>``."""

    __tablename__ = "hl7_messages"
    __table_args__ = (UniqueConstraint("control_id", "sending_facility"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    control_id: Mapped[str] = mapped_column(String(64))
    sending_facility: Mapped[str] = mapped_column(String(128))
    message_type: Mapped[str] = mapped_column(String(16))
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    digest: Mapped[str | None] = mapped_column(String(64))


class ClinicalValue(Base):
    """A normalized value from HL7 for one patient (PID-3 id + assigning authority).

    kind: lab (``value`` in ``unit``), coded (``code`` in ``system``, ``text``), birth_date (``text``
    ISO date), sex (``text``), reason_for_exam (``text``, with ``accession``).
    """

    __tablename__ = "clinical_values"

    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("hl7_messages.id"), index=True)
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    patient_authority: Mapped[str] = mapped_column(String(64), default="")
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(32), default="")
    code: Mapped[str] = mapped_column(String(64), default="")
    system: Mapped[str] = mapped_column(String(128), default="")
    value: Mapped[float | None] = mapped_column(Float)
    unit: Mapped[str] = mapped_column(String(32), default="")
    text: Mapped[str] = mapped_column(Text, default="")
    flags: Mapped[str] = mapped_column(String(16), default="")
    accession: Mapped[str] = mapped_column(String(64), default="")
    order_number: Mapped[str] = mapped_column(String(200), default="", server_default=sql_text("''"))  # OBR-3, -2
    observed_at: Mapped[datetime | None]


class PatientMerge(Base):
    """A patient merge (ADT A40, A34, A18): what is sent later under the prior identifier (PID-3 id + assigning
    authority) is the surviving patient's. One row per form of each."""

    __tablename__ = "patient_merges"

    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("hl7_messages.id"))
    prior_id: Mapped[str] = mapped_column(String(64), index=True)
    prior_authority: Mapped[str] = mapped_column(String(64), default="")
    surviving_id: Mapped[str] = mapped_column(String(64))
    surviving_authority: Mapped[str] = mapped_column(String(64), default="")
