"""What the DICOM node hands to the application: plain records and the sink protocol.

``dicom_node`` imports no other project package; the application implements
:class:`StoreSink` (database rows) and passes it to the SCP at start.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class AssociationInfo:
    """One accepted association."""

    association_id: str
    calling_ae: str
    called_ae: str
    peer_address: str
    peer_port: int
    started_at: datetime


@dataclass(frozen=True)
class StoredInstance:
    """An instance whose bytes are durably in the spool (fsynced and renamed).

    ``attributes`` holds the header values the application needs for assembly and routing,
    keyed by DICOM keyword (Modality, BodyPartExamined, SeriesDescription, SliceThickness,
    ImagePositionPatient, ImageOrientationPatient, InstanceNumber, PatientID,
    IssuerOfPatientID, AccessionNumber, StudyDate, ...). Multi-valued ones are lists.
    """

    association_id: str | None  # None: recorded again from the spool, not received just now
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    size_bytes: int
    attributes: dict[str, object] = field(default_factory=dict)


class StoreSink(Protocol):
    """Receives ingest events from the SCP. Called on association threads.

    ``instance_stored`` must commit before returning: the SCP answers C-STORE success only
    after it returns. If it raises, the SCP answers a failure status and keeps the file
    in quarantine with the reason.
    """

    def association_opened(self, info: AssociationInfo) -> None: ...

    def instance_stored(self, instance: StoredInstance) -> bool:
        """Record the instance; return False if this SOP Instance UID was already stored."""
        ...

    def instance_rejected(
        self, association_id: str, reason: str, quarantine_path: Path | None, sop_instance_uid: str | None
    ) -> None: ...

    def association_closed(self, association_id: str, released: bool) -> None: ...

    def association_rejected(self, calling_ae: str, called_ae: str, peer: str, reason: str) -> None:
        """Record an association the SCP refused (A-ASSOCIATE-RJ) before any data was sent.

        ``peer`` is ``host:port``; ``reason`` names the rule, e.g. "calling AE title not
        recognised". Hospital IT needs to see these: a misconfigured modality looks exactly
        like a silent modality otherwise.
        """
        ...


@dataclass(frozen=True)
class RemoteNode:
    """A DICOM peer we send to."""

    name: str
    ae_title: str
    host: str
    port: int
    tls: bool = False
