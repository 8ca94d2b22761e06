"""The database side of C-STORE: records associations, instances and rejections.

Implements ``dicom_node.contracts.StoreSink``. ``instance_stored`` commits before it returns,
so the SCP acknowledges an instance only once its row is durable.

A SOP Instance UID received again in another series (a PACS study merge or correction resends
instances under new Study/Series UIDs) moves its row to the new series; the old file is set aside
in the quarantine, so the old series never reads the new bytes and a restart cannot record it again.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from sqlalchemy import Connection, Row, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import InstrumentedAttribute

from ai_engine.contrast import unnamed_agent
from ai_engine.volume import is_localizer
from dicom_node.contracts import AssociationInfo, StoredInstance
from dicom_node.spool import Spool
from radfusion.db import Database
from radfusion.dicom_time import study_datetime
from radfusion.models import Association, AuditEvent, Instance, Quarantine, Series, Study, utcnow
from reports.sources import dicom_date

log = logging.getLogger(__name__)

SERIES_ATTRIBUTES = (
    "Modality", "BodyPartExamined", "SeriesDescription", "StudyDescription", "ProtocolName",
    "SliceThickness", "ImageType", "Rows", "Columns", "Laterality", "SeriesNumber", "Manufacturer",
    "ContrastBolusAgent", "ConvolutionKernel", "SOPClassUID",
)  # the keywords routing rules may test (radfusion.routing); add one here and to dicom_node.header to route by it
INSERT_RETRIES = 3
SERIES_ID_CACHE = 10_000

# Built once: constructing statements costs more than SQLite takes to run them.
_REOPEN_STUDY = (update(Study).where(Study.id == bindparam("study_id"), Study.state.not_in(("receiving", "purging")))
                 .values(state="receiving", last_received_at=bindparam("now")))
_TOUCH_STUDY = update(Study).where(Study.id == bindparam("study_id")).values(last_received_at=bindparam("now"))
_FIND_INSTANCE = (select(Instance.id, Instance.series_id, Instance.path)
                  .where(Instance.sop_instance_uid == bindparam("uid")))
_INSERT_INSTANCE = insert(Instance)
_HEADER_COLUMNS = ("instance_number", "position", "orientation", "localizer")  # ``_header_values``
_NEW_HEADER = {column: bindparam(f"new_{column}") for column in _HEADER_COLUMNS}
_RECEIVED_AGAIN = (update(Instance).where(Instance.sop_instance_uid == bindparam("uid"))  # the new bytes' header
                   .values(times_received=Instance.times_received + 1, path=bindparam("path"),
                           transfer_syntax_uid=bindparam("transfer_syntax_uid"), size_bytes=bindparam("size_bytes"),
                           sop_class_uid=bindparam("sop_class"), **_NEW_HEADER))
_MOVE_INSTANCE = (update(Instance).where(Instance.id == bindparam("instance_id"))  # and the new bytes' header
                  .values(series_id=bindparam("new_series_id"), path=bindparam("new_path"),
                          times_received=Instance.times_received + 1, received_at=bindparam("now"),
                          association_id=bindparam("new_association"), sop_class_uid=bindparam("new_sop_class"),
                          transfer_syntax_uid=bindparam("new_transfer_syntax"), size_bytes=bindparam("new_size"),
                          **_NEW_HEADER))
_LEAVE_SERIES = (update(Series).where(Series.id == bindparam("old_series_id"))
                 .values(instance_count=Series.instance_count - 1))
_REOPEN_SERIES = (update(Series).where(Series.id == bindparam("old_series_id"), Series.instance_count > 0)
                  .values(state="receiving", last_received_at=bindparam("now")))
_TOUCH_SERIES = (update(Series).where(Series.id == bindparam("series_id"))
                 .values(state="receiving", last_received_at=bindparam("now"),
                         last_association_id=bindparam("association_id"),
                         instance_count=Series.instance_count + bindparam("added")))
_COUNT_STORED = (update(Association).where(Association.id == bindparam("association_id"))
                 .values(instances_stored=Association.instances_stored + 1))


def _series_attributes(attrs: dict[str, object]) -> dict[str, object]:
    """What the routing rules read of a series (its first instance's ``SERIES_ATTRIBUTES``); an empty Contrast/Bolus
    Agent that the rest of the module contradicts reads as the agent 'not named (...)' (``unnamed_agent``)."""
    series = {k: attrs.get(k) for k in SERIES_ATTRIBUTES}
    if not series["ContrastBolusAgent"]:
        series["ContrastBolusAgent"] = unnamed_agent(attrs) or None
    return series


def _text(value: object, column: InstrumentedAttribute[str] | None = None) -> str:
    """A header value as ``column`` holds it: cut to the column's length (a sender that breaks the value's
    length limit must not get the study refused by a database that enforces the column's)."""
    text = "" if value is None else str(value)
    return text if column is None else text[:column.type.length]


@dataclass(frozen=True)
class _SeriesIds:
    """A series' committed rows as the id cache keeps them."""

    study_id: int
    series_id: int
    identity: tuple[str, str]  # the patient identity last recorded for its study
    study_uid: str
    described_by_scout: bool  # its routing attributes came from a scout: its first axial image describes it


class IngestRecorder:
    """Writes ingest events to the database."""

    def __init__(self, db: Database, spool: Spool) -> None:
        self._db = db
        self._spool = spool
        self._series_ids: dict[str, _SeriesIds] = {}  # series UID -> its rows, filled only after a commit

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
                with self._db.connection() as conn:
                    is_new, moved_from, ids = self._record(conn, instance)
                break
            except BaseException as exc:  # rolled back: ids the database may hand out again must not stay cached
                self._series_ids.pop(instance.series_instance_uid, None)
                # an IntegrityError: a concurrent association created the same study/series/instance first
                if not isinstance(exc, IntegrityError) or attempt == INSERT_RETRIES - 1:
                    raise
        if len(self._series_ids) >= SERIES_ID_CACHE:
            self._series_ids.clear()
        self._series_ids[instance.series_instance_uid] = ids  # committed: now later instances may use them
        if moved_from is not None and moved_from != instance.path:
            try:
                self.set_aside(moved_from, instance.sop_instance_uid, instance.association_id,
                               f"superseded: SOP Instance {instance.sop_instance_uid} was received again in series "
                               f"{instance.series_instance_uid}")
            except FileNotFoundError:  # gone already: a crash after the move, or a retention purge of its old study
                pass
        return is_new

    def set_aside(self, path: Path, sop_instance_uid: str | None, association_id: str | None, reason: str) -> None:
        """Move a spool file that no row points at (any more) into the quarantine, with a row saying why."""
        target = self._spool.quarantine_file(path, reason, "", association_id or "", sop_instance_uid)
        with self._db.session() as session:
            session.add(Quarantine(association_id=association_id, sop_instance_uid=sop_instance_uid, reason=reason,
                                   path=str(target)))
        log.warning("set aside %s: %s", target.name, reason)

    def _record(self, conn: Connection, instance: StoredInstance) -> tuple[bool, Path | None, _SeriesIds]:
        """Prepared Core statements only: this runs once per received instance, before its status goes out.

        Returns whether the SOP Instance UID is new, the file an earlier row of it in another series
        pointed at (None unless the instance moved series), and its series' rows for the cache."""
        now = utcnow()
        ids = self._series_ids.get(instance.series_instance_uid)
        identity = patient_identity(instance.attributes)
        if ids is None or (ids.identity, ids.study_uid) != (identity, instance.study_instance_uid):
            ids = self._create_series(conn, instance, identity)
        study_id, series_id = ids.study_id, ids.series_id
        if conn.execute(_REOPEN_STUDY, {"study_id": study_id, "now": now}).rowcount:
            log.info("study %s re-opened by a late instance", instance.study_instance_uid)
            conn.execute(insert(AuditEvent).values(kind="study_reopened", subject=instance.study_instance_uid,
                                                   detail=f"by instance {instance.sop_instance_uid}", at=now))
        else:
            conn.execute(_TOUCH_STUDY, {"study_id": study_id, "now": now})
        uid = instance.sop_instance_uid
        attrs = instance.attributes
        if ids.described_by_scout and not is_localizer(attrs.get("ImageType")):
            # the series' first image was a scout: its first axial image describes it for the routing rules
            conn.execute(update(Series).where(Series.id == series_id).values(attributes=_series_attributes(attrs)))
            ids = replace(ids, described_by_scout=False)
        earlier = conn.execute(_FIND_INSTANCE, {"uid": uid}).first()
        moved_from = None
        if earlier is None:
            conn.execute(_INSERT_INSTANCE, {
                "series_id": series_id, "sop_instance_uid": uid, "sop_class_uid": instance.sop_class_uid,
                "transfer_syntax_uid": instance.transfer_syntax_uid, "path": str(instance.path),
                "size_bytes": instance.size_bytes, "received_at": now, "times_received": 1,
                "association_id": instance.association_id, **_header_values(attrs),
            })
        elif earlier.series_id == series_id:
            conn.execute(_RECEIVED_AGAIN, {
                "uid": uid, "path": str(instance.path), "transfer_syntax_uid": instance.transfer_syntax_uid,
                "size_bytes": instance.size_bytes, "sop_class": instance.sop_class_uid, **_new(_header_values(attrs))})
            if earlier.path != str(instance.path):  # the same series sent again under a corrected Study UID
                moved_from = Path(earlier.path)
        else:
            self._move(conn, earlier, series_id, instance, now)
            moved_from = Path(earlier.path)
        conn.execute(_TOUCH_SERIES, {"series_id": series_id, "now": now, "association_id": instance.association_id,
                                     "added": int(earlier is None or earlier.series_id != series_id)})
        if instance.association_id is not None:
            conn.execute(_COUNT_STORED, {"association_id": instance.association_id})
        return earlier is None, moved_from, ids

    def _move(self, conn: Connection, earlier: Row, series_id: int, instance: StoredInstance, now: datetime) -> None:
        """Move an instance's row to the series it was received in now; its old series, if not emptied, is
        assembled and analysed again without it."""
        conn.execute(_MOVE_INSTANCE, {
            "instance_id": earlier.id, "new_series_id": series_id, "new_path": str(instance.path), "now": now,
            "new_association": instance.association_id, "new_sop_class": instance.sop_class_uid,
            "new_transfer_syntax": instance.transfer_syntax_uid, "new_size": instance.size_bytes,
            **_new(_header_values(instance.attributes))})
        conn.execute(_LEAVE_SERIES, {"old_series_id": earlier.series_id})
        if conn.execute(_REOPEN_SERIES, {"old_series_id": earlier.series_id, "now": now}).rowcount:
            old_study = conn.scalar(select(Series.study_id).where(Series.id == earlier.series_id))
            conn.execute(_REOPEN_STUDY, {"study_id": old_study, "now": now})
        conn.execute(insert(AuditEvent).values(
            kind="instance_moved", subject=instance.sop_instance_uid, at=now,
            detail=f"received again in series {instance.series_instance_uid}; moved from series {earlier.series_id}"))

    def _create_series(self, conn: Connection, instance: StoredInstance, identity: tuple[str, str]) -> _SeriesIds:
        """The rows of the instance's study and series, created the first time. A study already known under
        another patient identity (the PACS corrected the patient and sent it again) takes the new one: its results
        and clinical data then follow the corrected patient."""
        attrs = instance.attributes
        now = utcnow()
        patient_id, issuer = identity
        study = conn.execute(select(Study.id, Study.patient_id, Study.issuer_of_patient_id)
                             .where(Study.study_uid == instance.study_instance_uid)).first()
        if study is None:
            study_id = conn.execute(insert(Study).values(
                study_uid=instance.study_instance_uid,
                accession_number=_text(attrs.get("AccessionNumber"), Study.accession_number),
                patient_id=patient_id, issuer_of_patient_id=issuer,
                study_date=dicom_date(_text(attrs.get("StudyDate"))) or "", first_received_at=now,
                performed_at=study_datetime(_text(attrs.get("StudyDate")), _text(attrs.get("StudyTime")),
                                            _text(attrs.get("TimezoneOffsetFromUTC"))),
                last_received_at=now)).inserted_primary_key[0]
        else:
            study_id = study.id
            old_id, old_issuer = study[1:]
            # A series that leaves the issuer out names the same patient; one that adds it completes the record.
            if old_id == patient_id and issuer in ("", old_issuer):
                changed = []
            elif old_id == patient_id and not old_issuer:
                changed = ["Issuer of Patient ID added"]
            else:
                changed = [f"{name} changed" for name, old, new in zip(
                    ("Patient ID", "Issuer of Patient ID"), (old_id, old_issuer), identity, strict=True) if old != new]
            if changed:  # names the attributes, never their values
                conn.execute(update(Study).where(Study.id == study_id).values(
                    patient_id=patient_id, issuer_of_patient_id=issuer))
                conn.execute(insert(AuditEvent).values(
                    kind="patient_identity_changed", subject=instance.study_instance_uid, at=now,
                    detail=f"{', '.join(changed)} by instance {instance.sop_instance_uid}"))
                log.warning("study %s: %s by a later instance; its results follow the new values",
                            instance.study_instance_uid, ", ".join(changed))
        series = conn.execute(select(Series.id, Series.study_id, Series.attributes)
                              .where(Series.series_uid == instance.series_instance_uid)).first()
        if series is None:
            series_id = conn.execute(insert(Series).values(
                study_id=study_id, series_uid=instance.series_instance_uid,
                modality=_text(attrs.get("Modality"), Series.modality),
                attributes=_series_attributes(attrs), last_received_at=now)).inserted_primary_key[0]
            described = attrs
        else:
            series_id, described = series.id, series.attributes or {}
            if series.study_id != study_id:  # sent again under a corrected Study UID: the series goes with it
                self._move_series(conn, series_id, series.study_id, study_id, instance, now)
        return _SeriesIds(study_id, series_id, identity, instance.study_instance_uid,
                          is_localizer(described.get("ImageType")))

    @staticmethod
    def _move_series(conn: Connection, series_id: int, old_study_id: int, study_id: int, instance: StoredInstance,
                     now: datetime) -> None:
        """Move a series to the study it was sent again under; the study it left is assembled again without it
        (before, it stayed there: analysed and purged as that study, its new files deleted with it)."""
        conn.execute(update(Series).where(Series.id == series_id).values(study_id=study_id))
        conn.execute(_REOPEN_STUDY, {"study_id": old_study_id, "now": now})
        conn.execute(insert(AuditEvent).values(
            kind="series_moved", subject=instance.series_instance_uid, at=now,
            detail=f"received under study {instance.study_instance_uid}; moved there from study {old_study_id}"))
        log.warning("series %s moved to study %s, under which it was sent again", instance.series_instance_uid,
                    instance.study_instance_uid)


def patient_identity(attrs: dict[str, object]) -> tuple[str, str]:
    """Patient ID and Issuer of Patient ID as the study row holds them (an Accession Number may differ between
    the series of one study, a patient may not)."""
    return (_text(attrs.get("PatientID"), Study.patient_id),
            _text(attrs.get("IssuerOfPatientID"), Study.issuer_of_patient_id))


def _header_values(attrs: dict[str, object]) -> dict[str, object]:
    """The ``_HEADER_COLUMNS`` of an instance's row, read from its header attributes."""
    return {"instance_number": _int_or_none(attrs.get("InstanceNumber")),
            "position": _floats_or_none(attrs.get("ImagePositionPatient"), 3),
            "orientation": _floats_or_none(attrs.get("ImageOrientationPatient"), 6),
            "localizer": is_localizer(attrs.get("ImageType"))}


def _new(values: dict[str, object]) -> dict[str, object]:
    """``values`` under the ``new_`` names an UPDATE's bind parameters take (they may not be the columns')."""
    return {f"new_{column}": value for column, value in values.items()}


def _int_or_none(value: object) -> int | None:
    """An integer a 32-bit column holds (IS allows 12 digits, and pydicom reads longer ones), else None."""
    try:
        number = None if value is None else int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None
    return number if number is not None and -(2**31) <= number < 2**31 else None


def _floats_or_none(value: object, length: int) -> list[float] | None:
    """``length`` finite numbers, or None: a position of two values or an orientation with a NaN is no geometry
    (the completeness check then waits for the quiet timeout) rather than one it cannot compute with."""
    if not isinstance(value, (list, tuple)) or len(value) != length:
        return None
    try:
        numbers = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    return numbers if all(math.isfinite(v) for v in numbers) else None
