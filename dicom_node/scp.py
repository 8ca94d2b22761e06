"""Storage SCP + Verification (pynetdicom 3): receive instances into the spool and tell the sink.

C-STORE statuses this SCP answers (every failure is logged and reported to
``sink.instance_rejected``):

========  ==========================================================================
status    meaning
========  ==========================================================================
0x0000    stored (also for a duplicate SOP Instance UID: the file is replaced atomically)
0x0124    refused, not authorized: the association was refused (``calling_ae_hosts``) and is being
          aborted; nothing read or written (pynetdicom drops such messages; this is the backstop)
0xA700    refused, out of resources: free disk below ``min_free_disk_bytes``; nothing written
0xA701    refused, out of resources: writing the spool file failed (OSError); nothing kept
0xA702    refused, out of resources: the sink (database) could not record the instance;
          the bytes are kept in quarantine, a later resend can succeed
0xA900    refused, data set does not match SOP class: the dataset's SOP Class UID differs from the
          C-STORE request's (the presentation context's), or an image storage SOP class's dataset has no
          pixel data; quarantined
0xC210    cannot understand: the dataset cannot be parsed (or is truncated, or is not encoded as
          the negotiated transfer syntax says); quarantined
0xC212    cannot understand: Study, Series, SOP Class or SOP Instance UID missing; quarantined
0xC213    cannot understand: dataset SOP Instance UID differs from the C-STORE request's;
          quarantined
0xC214    cannot understand: a UID is not a valid DICOM UID (e.g. ``1.2/../../x``);
          quarantined, never used as a path
0xC2FF    cannot understand: unexpected error inside the handler (logged with traceback)
========  ==========================================================================

0xC211 is deliberately unused: pynetdicom answers it when a handler raises, which this one
does not.

Memory: the dataset as pynetdicom received it is written to a spool temp file from its buffer (no copy) and the
checks read the header back from that file, leaving the pixel data on disk; a store holds about one instance's
size in memory (pynetdicom's receive buffer) instead of three.
"""

from __future__ import annotations

import io
import logging
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    UID,
    RLELossless,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
)
from pydicom.valuerep import VR
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_node.contracts import AssociationInfo, StoredInstance, StoreSink
from dicom_node.errors import ConfigError, InvalidUidError, SpoolPathError
from dicom_node.header import instance_attributes
from dicom_node.peers import Network, address_allowed, parse_calling_ae_hosts
from dicom_node.rejection import describe_rejection
from dicom_node.sockets import set_tcp_nodelay
from dicom_node.spool import Spool

if TYPE_CHECKING:
    from pynetdicom.association import Association
    from pynetdicom.events import Event
    from pynetdicom.transport import ThreadedAssociationServer

    from dicom_node.tls import TlsConfig

LOG = logging.getLogger(__name__)

ACCEPTED_TRANSFER_SYNTAXES: tuple[str, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGLSLossless,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLossless,
    RLELossless,
    JPEGLSNearLossless,
    JPEG2000,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
)
"""Transfer syntaxes accepted for every storage SOP class (stored as received, never transcoded), in the order of
preference: of those a context proposes, the first here is accepted (pynetdicom negotiates in the acceptor's
order). Explicit VR comes first (it keeps the VR of private elements), uncompressed before lossless compressed
(no decoding on the detectors' path), and lossy last: where a sender also offers a lossless syntax, it is used."""

_PREAMBLE = b"\x00" * 128 + b"DICM"
_UNDEFINED_LENGTH = 0xFFFFFFFF
_DEFER_BYTES = 64 * 1024  # values longer than this (pixel data) stay in the file while the header is checked
_PIXEL_DATA = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_SHOWN_UID_LIMIT = 80
_VR_NAMES = frozenset(vr.value for vr in VR)
INSTANCE_LOCK_STRIPES = 64  # locks shared by hash of the instance's path: two stores of one instance share one


class StoreStatus(IntEnum):
    """C-STORE response statuses; the module docstring says when each is sent."""

    SUCCESS = 0x0000
    NOT_AUTHORIZED = 0x0124
    DISK_FLOOR = 0xA700
    SPOOL_WRITE_FAILED = 0xA701
    SINK_FAILED = 0xA702
    SOP_CLASS_MISMATCH = 0xA900
    UNPARSABLE = 0xC210
    MISSING_UID = 0xC212
    SOP_UID_MISMATCH = 0xC213
    INVALID_UID = 0xC214
    INTERNAL_ERROR = 0xC2FF


@dataclass(frozen=True)
class ScpConfig:
    """Listener settings, validated at construction so a bad config fails before listening.

    ``max_pdu_bytes`` 0 means unlimited (the peer picks; dcmtk sends 128 KiB PDUs). 0, 16382
    and 131072 measured the same within noise for 300 512x512 CT slices from storescu.
    """

    ae_title: str
    bind_address: str = "0.0.0.0"
    port: int = 11112
    allowed_calling_aes: frozenset[str] = frozenset()
    accept_any_calling_ae: bool = False
    require_called_ae: bool = True
    min_free_disk_bytes: int = 1 << 30
    max_pdu_bytes: int = 0
    network_timeout_s: float = 60.0
    acse_timeout_s: float = 30.0
    dimse_timeout_s: float = 60.0
    max_associations: int = 10
    tls: TlsConfig | None = None
    calling_ae_hosts: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.ae_title.strip() or len(self.ae_title) > 16:
            raise ConfigError(f"ae_title {self.ae_title!r} must be 1 to 16 characters")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} is outside 0..65535")
        if self.accept_any_calling_ae and self.allowed_calling_aes:
            raise ConfigError(
                "accept_any_calling_ae is true and allowed_calling_aes is set "
                f"({sorted(self.allowed_calling_aes)}): choose one"
            )
        for calling_ae in self.allowed_calling_aes:
            if not calling_ae.strip() or len(calling_ae) > 16:
                raise ConfigError(f"allowed_calling_aes entry {calling_ae!r} must be 1 to 16 characters")
        for name in ("min_free_disk_bytes", "max_pdu_bytes"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} {getattr(self, name)} must be >= 0")
        for name in ("network_timeout_s", "acse_timeout_s", "dimse_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} {getattr(self, name)} must be > 0")
        if self.max_associations < 1:
            raise ConfigError(f"max_associations {self.max_associations} must be >= 1")

    def calling_ae_networks(self) -> dict[str, tuple[Network, ...]]:
        """The networks each calling AE title of ``calling_ae_hosts`` may come from."""
        return parse_calling_ae_hosts(self.calling_ae_hosts, self.allowed_calling_aes, self.accept_any_calling_ae)


class _Rejected(Exception):
    """An instance that fails a check: carries the status to answer and the reason to record."""

    def __init__(self, status: StoreStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _shown(uid: object) -> str:
    """A received UID for a log line: repr, truncated (it may be hostile)."""
    text = repr(uid)
    return text if len(text) <= _SHOWN_UID_LIMIT else text[:_SHOWN_UID_LIMIT] + "...'"


def _check_complete(dataset: Dataset, file_size: int) -> None:
    """Raise if the last element is shorter than its declared length (pydicom accepts that silently); a value
    left in the file (deferred) is measured against the file's size."""
    tags = list(dataset.keys())
    if not tags:
        raise ValueError("dataset has no elements")
    last = dataset.get_item(tags[-1], keep_deferred=True)
    if not isinstance(last, RawDataElement) or last.length == _UNDEFINED_LENGTH:
        return
    present = len(last.value) if last.value is not None else file_size - last.value_tell
    if present < last.length:
        raise ValueError(f"element {last.tag} truncated: {max(present, 0)} of {last.length} bytes")


def _encoding_mismatch(stream: memoryview, transfer_syntax: UID) -> str | None:
    """Why the dataset's first element is not encoded with the VR encoding of the negotiated transfer syntax, or
    None. pydicom reads either encoding silently, so such a file would be kept under a transfer syntax that other
    readers (dcmtk, a PACS) cannot parse it with."""
    if transfer_syntax.is_deflated or len(stream) < 6:
        return None
    explicit = bytes(stream[4:6]).decode("latin-1") in _VR_NAMES  # explicit VR: the VR follows the tag
    if explicit != transfer_syntax.is_implicit_VR:
        return None
    return (f"dataset is encoded with {'explicit' if explicit else 'implicit'} VR, but the negotiated transfer "
            f"syntax is {transfer_syntax.name}")


def _parse(staged: Path, size: int, transfer_syntax: UID, claimed_sop_class: str,
           claimed_sop_uid: str) -> tuple[Dataset, str, str, str]:
    """Parse the staged file's header (long values stay in the file; a deflated dataset is inflated in memory, so
    it is read whole: its positions are the inflated stream's, not the file's); return the dataset and its (study,
    series, SOP instance) UIDs."""
    try:
        dataset = dcmread(staged, defer_size=None if transfer_syntax.is_deflated else _DEFER_BYTES)
        _check_complete(dataset, size)
        study_uid, series_uid, sop_class, sop_uid = (
            str(dataset.get(keyword, "") or "")
            for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID")
        )
    except Exception as exc:  # pydicom raises many types on malformed input; all mean "cannot parse"
        raise _Rejected(StoreStatus.UNPARSABLE, f"dataset cannot be parsed: {type(exc).__name__}: {exc}") from exc
    missing = [name for name, uid in (("StudyInstanceUID", study_uid), ("SeriesInstanceUID", series_uid),
                                      ("SOPClassUID", sop_class), ("SOPInstanceUID", sop_uid)) if not uid]
    if missing:
        raise _Rejected(StoreStatus.MISSING_UID, f"dataset lacks {', '.join(missing)}")
    if sop_uid != claimed_sop_uid:
        raise _Rejected(
            StoreStatus.SOP_UID_MISMATCH,
            f"dataset SOPInstanceUID {_shown(sop_uid)} differs from the C-STORE request's {_shown(claimed_sop_uid)}",
        )
    if sop_class != claimed_sop_class:
        raise _Rejected(
            StoreStatus.SOP_CLASS_MISMATCH,
            f"dataset SOPClassUID {_shown(sop_class)} differs from the C-STORE request's {_shown(claimed_sop_class)}",
        )
    if " Image Storage" in UID(sop_class).name and not any(keyword in dataset for keyword in _PIXEL_DATA):
        raise _Rejected(StoreStatus.SOP_CLASS_MISMATCH, f"dataset of {UID(sop_class).name} has no pixel data")
    return dataset, study_uid, series_uid, sop_uid


def release_answered(assoc: Association) -> bool:
    """Whether this association has sent its A-RELEASE reply (pynetdicom sets ``_sent_release`` before the
    reply is queued; it has no public flag for it: ``is_released`` is set only after the reply is queued)."""
    return bool(getattr(assoc, "_sent_release", False))


class StorageScp:
    """A Storage + Verification SCP writing into a :class:`Spool` and reporting to a ``StoreSink``."""

    def __init__(self, config: ScpConfig, spool: Spool, sink: StoreSink) -> None:
        self.config = config
        self.spool = spool
        self.sink = sink
        self._networks = config.calling_ae_networks()
        self._ae: AE | None = None
        self._server: ThreadedAssociationServer | None = None
        self._associations: dict[Association, AssociationInfo] = {}
        self._lock = threading.Lock()
        # Stores of one SOP instance (two associations sending it at once) run one after the other: a store whose
        # row cannot be recorded must not set aside the file another store of it has just had acknowledged.
        self._instance_locks = tuple(threading.Lock() for _ in range(INSTANCE_LOCK_STRIPES))

    def start(self) -> int:
        """Recover the spool, start listening in the background; return the bound port."""
        if self._server is not None:
            raise RuntimeError(f"SCP {self.config.ae_title} is already listening")
        removed = self.spool.recover()
        if removed:
            LOG.warning("removed %d leftover temp files from %s", removed, self.spool.incoming_tmp)
        ae = self._build_ae()
        handlers = [
            (evt.EVT_CONN_OPEN, set_tcp_nodelay),
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_ABORTED, self._on_aborted),
            (evt.EVT_CONN_CLOSE, self._on_conn_close),
            (evt.EVT_C_STORE, self._handle_store),
        ]
        ssl_context = self.config.tls.server_context(self.config.acse_timeout_s) if self.config.tls else None
        server = ae.start_server((self.config.bind_address, self.config.port), block=False,
                                 evt_handlers=handlers, ssl_context=ssl_context)
        assert server is not None  # block=False always returns the server
        self._ae, self._server = ae, server
        port = int(server.server_address[1])
        LOG.info("SCP %s listening on %s:%d%s", self.config.ae_title, self.config.bind_address, port,
                 " (TLS)" if ssl_context else "")
        if not self.config.accept_any_calling_ae and not self.config.allowed_calling_aes:
            LOG.warning("no calling AE title is allowed: every association will be rejected "
                        "(list your modalities and PACS in dicom.allowed_calling_aes)")
        return port

    def stop(self) -> None:
        """Abort open associations and stop listening."""
        if self._ae is not None:
            self._ae.shutdown()
        self._ae = self._server = None

    def _build_ae(self) -> AE:
        config = self.config
        ae = AE(ae_title=config.ae_title)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, list(ACCEPTED_TRANSFER_SYNTAXES))
        ae.add_supported_context(Verification)
        # pynetdicom treats an empty list as "anyone": accept_any is the only way to get that here.
        if config.accept_any_calling_ae or config.allowed_calling_aes:
            ae.require_calling_aet = [] if config.accept_any_calling_ae else sorted(config.allowed_calling_aes)
        else:
            # Nobody is allowed. The setter refuses an empty title, and a requestor's calling AE is never
            # empty, so [""] (set past the setter) rejects every association with reason 3.
            ae._require_calling_aet = [""]  # noqa: SLF001 - tested in test_empty_allow_list_starts_and_rejects_everyone
        ae.require_called_aet = config.require_called_ae
        ae.maximum_pdu_size = config.max_pdu_bytes
        ae.maximum_associations = config.max_associations
        ae.network_timeout = config.network_timeout_s
        ae.acse_timeout = config.acse_timeout_s
        ae.dimse_timeout = config.dimse_timeout_s
        return ae

    # -- association events -------------------------------------------------------------

    def _on_established(self, event: Event) -> None:
        assoc = event.assoc
        networks = self._networks.get(assoc.requestor.ae_title)
        if networks is not None and not address_allowed(assoc.requestor.address, networks):
            self._refuse_address(assoc)
            return
        info = AssociationInfo(
            association_id=str(uuid.uuid4()),
            calling_ae=assoc.requestor.ae_title,
            called_ae=assoc.acceptor.ae_title,
            peer_address=assoc.requestor.address,
            peer_port=assoc.requestor.port,
            started_at=datetime.now(timezone.utc),
        )
        with self._lock:
            self._associations[assoc] = info
        LOG.info("association %s opened: %s -> %s from %s:%d", info.association_id, info.calling_ae,
                 info.called_ae, info.peer_address, info.peer_port)
        try:
            self.sink.association_opened(info)
        except Exception:
            LOG.exception("sink could not record association %s opened", info.association_id)

    def _refuse_address(self, assoc: Association) -> None:
        """Abort an association whose calling AE title may not come from the peer's address (nothing is
        received on it), and record it like a rejection."""
        calling_ae, called_ae = assoc.requestor.ae_title, assoc.acceptor.ae_title
        peer = f"{assoc.requestor.address}:{assoc.requestor.port}"
        reason = f"calling AE title {calling_ae!r} is not allowed from {assoc.requestor.address} (calling_ae_hosts)"
        LOG.warning("association aborted: calling AE %r, called AE %r, peer %s: %s", calling_ae, called_ae, peer,
                    reason)
        assoc.abort()
        try:
            self.sink.association_rejected(calling_ae, called_ae, peer, reason)
        except Exception:
            LOG.exception("sink could not record the refusal of %r from %s", calling_ae, peer)

    def _on_rejected(self, event: Event) -> None:
        assoc = event.assoc
        request = assoc.requestor.primitive
        response = assoc.acceptor.primitive
        calling_ae = str(request.calling_ae_title) if request else assoc.requestor.ae_title
        called_ae = str(request.called_ae_title) if request else ""
        peer = f"{assoc.requestor.address}:{assoc.requestor.port}"
        reason = describe_rejection(response.result, response.result_source, response.diagnostic)
        LOG.warning("association rejected: calling AE %r, called AE %r, peer %s: %s",
                    calling_ae, called_ae, peer, reason)
        try:
            self.sink.association_rejected(calling_ae, called_ae, peer, reason)
        except Exception:
            LOG.exception("sink could not record the rejection of %r from %s", calling_ae, peer)

    def _on_released(self, event: Event) -> None:
        self._close(event.assoc, released=True)

    def _on_aborted(self, event: Event) -> None:
        self._close(event.assoc, released=False)

    def _on_conn_close(self, event: Event) -> None:
        """The connection closed. Once the A-RELEASE reply has gone out this is the end of a release: the
        peer may close before EVT_RELEASED has run (pynetdicom sends the reply first), and whichever event
        comes first records the association. Without that reply (network error) it was not released.

        A connection that closes before its association request (a port probe, a health check, a failed TLS
        handshake, a PDU that is not one) ends at once: pynetdicom's AA-5 and AR-5 leave the acceptor waiting
        ``acse_timeout_s`` for a request that cannot come, holding one of ``max_associations``; an empty item on
        its queue is that wait's timeout."""
        dul = event.assoc.dul
        # Sta2: awaiting A-ASSOCIATE-RQ; Sta13: awaiting the close after aborting, here before any request came
        if dul.state_machine.current_state in ("Sta2", "Sta13") and event.assoc.requestor.primitive is None:
            LOG.info("connection from %s:%s closed before an association request", *event.address)
            dul.to_user_queue.put(None)  # type: ignore[arg-type]
            return
        self._close(event.assoc, released=release_answered(event.assoc))

    def _close(self, assoc: Association, released: bool) -> None:
        with self._lock:
            info = self._associations.pop(assoc, None)
        if info is None:
            return
        LOG.info("association %s %s", info.association_id, "released" if released else "aborted or dropped")
        try:
            self.sink.association_closed(info.association_id, released)
        except Exception:
            LOG.exception("sink could not record association %s closed", info.association_id)

    # -- C-STORE --------------------------------------------------------------------------

    def _handle_store(self, event: Event) -> int:
        """EVT_C_STORE handler: never raises; every outcome is a :class:`StoreStatus`."""
        started = time.perf_counter()
        with self._lock:
            info = self._associations.get(event.assoc)
        if info is None:  # refused in _on_established (calling_ae_hosts): its abort is on its way
            return StoreStatus.NOT_AUTHORIZED
        claimed_uid = str(event.request.AffectedSOPInstanceUID)
        try:
            status = self._store(event, info, claimed_uid)
        except Exception:
            LOG.exception("C-STORE of %s on association %s failed unexpectedly",
                          _shown(claimed_uid), info.association_id)
            self._report_rejection(info, "internal error in the C-STORE handler", None, claimed_uid)
            return StoreStatus.INTERNAL_ERROR
        LOG.debug("C-STORE %s -> 0x%04X in %.1f ms", _shown(claimed_uid), status,
                  1000 * (time.perf_counter() - started))
        return status

    def _store(self, event: Event, info: AssociationInfo, claimed_uid: str) -> StoreStatus:
        free = self.spool.free_bytes()
        if free < self.config.min_free_disk_bytes:
            reason = f"free disk {free} bytes is below the floor of {self.config.min_free_disk_bytes} bytes"
            LOG.error("refusing %s on association %s: %s", _shown(claimed_uid), info.association_id, reason)
            self._report_rejection(info, reason, None, claimed_uid)
            return StoreStatus.DISK_FLOOR

        try:
            staged, size = self.spool.stage(self._file_chunks(event))
        except OSError as exc:
            return self._write_failed(info, claimed_uid, f"writing the received instance failed: {exc}")
        try:
            mismatch = _encoding_mismatch(event.request.DataSet.getbuffer(), event.context.transfer_syntax)
            if mismatch:
                raise _Rejected(StoreStatus.UNPARSABLE, mismatch)
            dataset, study_uid, series_uid, sop_uid = _parse(staged, size, event.context.transfer_syntax,
                                                             str(event.request.AffectedSOPClassUID), claimed_uid)
            try:
                path = self.spool.instance_path(study_uid, series_uid, sop_uid)
            except (InvalidUidError, SpoolPathError) as exc:
                raise _Rejected(StoreStatus.INVALID_UID, str(exc)) from exc
            try:
                attributes = instance_attributes(dataset)
            except Exception as exc:  # pydicom converts values lazily: a broken element fails only when read
                raise _Rejected(StoreStatus.UNPARSABLE,
                                f"a header element cannot be read ({type(exc).__name__})") from exc
        except _Rejected as rejected:
            return self._quarantine(info, staged, rejected, claimed_uid)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise

        with self.spool.receiving(study_uid):  # a retention purge of the study waits, or is waited for
            return self._keep(event, info, staged, size, path, study_uid, series_uid, sop_uid, attributes)

    def _keep(self, event: Event, info: AssociationInfo, staged: Path, size: int, path: Path, study_uid: str,
              series_uid: str, sop_uid: str, attributes: dict[str, object]) -> StoreStatus:
        """Put the staged instance in place, record it, and replace an earlier copy only once its row is
        committed; stores of the same instance take turns."""
        with self._instance_locks[hash(path) % INSTANCE_LOCK_STRIPES]:
            return self._keep_alone(event, info, staged, size, path, study_uid, series_uid, sop_uid, attributes)

    def _keep_alone(self, event: Event, info: AssociationInfo, staged: Path, size: int, path: Path, study_uid: str,
                    series_uid: str, sop_uid: str, attributes: dict[str, object]) -> StoreStatus:
        existed = path.exists()  # a re-send replaces the acknowledged file only once its row is committed
        if not existed:
            try:
                self.spool.place(staged, path)
            except OSError as exc:
                return self._write_failed(info, sop_uid, f"writing {path} failed: {exc}")

        instance = StoredInstance(
            association_id=info.association_id,
            path=path,
            sop_class_uid=str(event.request.AffectedSOPClassUID),
            sop_instance_uid=sop_uid,
            study_instance_uid=study_uid,
            series_instance_uid=series_uid,
            transfer_syntax_uid=str(event.context.transfer_syntax),
            size_bytes=size,
            attributes=attributes,
        )
        try:
            is_new = self.sink.instance_stored(instance)
        except Exception as exc:
            reason = f"sink could not record the instance: {type(exc).__name__}: {exc}"
            LOG.exception("instance %s (accession %s) on association %s: %s", sop_uid,
                          attributes["AccessionNumber"], info.association_id, reason)
            # A re-sent instance's acknowledged file stays in place (its row points at it); keep a copy instead.
            try:
                quarantined: Path | None = self.spool.quarantine_file(staged if existed else path, reason,
                                                                      info.calling_ae, info.association_id, sop_uid)
            except OSError:  # the refused copy goes; a first copy stays where it is, for start-up to record
                LOG.exception("could not quarantine %s from association %s", sop_uid, info.association_id)
                if existed:
                    staged.unlink(missing_ok=True)
                quarantined = None
            self._report_rejection(info, reason, quarantined, sop_uid)
            return StoreStatus.SINK_FAILED
        if existed:
            try:
                self.spool.place(staged, path)
            except OSError as exc:
                return self._write_failed(info, sop_uid, f"replacing {path} failed: {exc}")
        LOG.info("stored %s (study %s, accession %s, %d bytes)%s on association %s", sop_uid, study_uid,
                 attributes["AccessionNumber"], size, "" if is_new else " again, replaced", info.association_id)
        return StoreStatus.SUCCESS

    def _write_failed(self, info: AssociationInfo, sop_uid: str, reason: str) -> StoreStatus:
        LOG.error("refusing %s on association %s: %s", _shown(sop_uid), info.association_id, reason)
        self._report_rejection(info, reason, None, sop_uid)
        return StoreStatus.SPOOL_WRITE_FAILED

    @staticmethod
    def _file_chunks(event: Event) -> tuple[bytes, memoryview, memoryview]:
        """Preamble, file meta and the dataset exactly as received (no decode, no re-encode, no copy)."""
        meta = io.BytesIO()
        write_file_meta_info(meta, event.file_meta, enforce_standard=True)
        return _PREAMBLE, meta.getbuffer(), event.request.DataSet.getbuffer()

    def _quarantine(self, info: AssociationInfo, staged: Path, rejected: _Rejected, claimed_uid: str) -> StoreStatus:
        LOG.warning("rejecting %s on association %s with 0x%04X: %s", _shown(claimed_uid), info.association_id,
                    rejected.status, rejected.reason)
        try:
            path: Path | None = self.spool.quarantine_file(staged, rejected.reason, info.calling_ae,
                                                           info.association_id, claimed_uid)
        except OSError:
            LOG.exception("could not quarantine %s from association %s", _shown(claimed_uid), info.association_id)
            staged.unlink(missing_ok=True)
            path = None
        self._report_rejection(info, rejected.reason, path, claimed_uid)
        return rejected.status

    def _report_rejection(self, info: AssociationInfo, reason: str, path: Path | None, sop_uid: str | None) -> None:
        try:
            self.sink.instance_rejected(info.association_id, reason, path, sop_uid)
        except Exception:
            LOG.exception("sink could not record a rejection on association %s", info.association_id)
