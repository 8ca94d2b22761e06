"""Storage SCU and C-ECHO: send files to a remote node over one association and say what happened.

Retries are the application's job (it keeps delivery rows); see :mod:`dicom_node.retry`.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.status import code_to_category

from dicom_node.contracts import RemoteNode
from dicom_node.errors import DeliveryError
from dicom_node.rejection import describe_rejection
from dicom_node.sockets import set_tcp_nodelay

if TYPE_CHECKING:
    from pynetdicom.association import Association

LOG = logging.getLogger(__name__)

MAX_PRESENTATION_CONTEXTS = 128
UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)  # pynetdicom re-encodes a file between these


@dataclass(frozen=True)
class InstanceResult:
    """The C-STORE outcome for one file; ``status`` is None when no response came back."""

    path: Path
    sop_instance_uid: str
    status: int | None
    category: str
    refused: bool = False  # the peer will refuse this instance again (see is_permanent_failure)

    @property
    def delivered(self) -> bool:
        """Success and warning statuses both mean the peer kept the instance."""
        return self.category in ("Success", "Warning")


TRANSIENT_FAILURES = (0x0110, 0x0213)  # processing failure, resource limitation: another attempt may succeed


def is_permanent_failure(status: int) -> bool:
    """A C-STORE failure that the same instance would get again (PS3.4 B.2.3, PS3.7 C).

    Refused: SOP class not supported (0x0122), not authorised (0x0124), invalid instance (0x0117),
    data set does not match the SOP class (0xA9xx), cannot understand (0xCxxx) and other failures.
    Not refused: out of resources (0xA7xx), processing failure (0x0110) and resource limitation (0x0213).
    """
    if code_to_category(status) != "Failure":
        return False
    return (status & 0xFF00) != 0xA700 and status not in TRANSIENT_FAILURES


@dataclass
class SendReport:
    """What one :func:`send_files` call did, instance by instance."""

    node: RemoteNode
    results: list[InstanceResult] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def delivered(self) -> list[InstanceResult]:
        return [result for result in self.results if result.delivered]

    @property
    def warnings(self) -> list[InstanceResult]:
        return [result for result in self.results if result.category == "Warning"]

    @property
    def failures(self) -> list[InstanceResult]:
        return [result for result in self.results if not result.delivered]


class SendFailed(DeliveryError):
    """Some instances got a failure status (or none); ``report`` says which were delivered."""

    def __init__(self, message: str, report: SendReport) -> None:
        super().__init__(message)
        self.report = report


class AssociationRejected(DeliveryError):
    """The peer answered A-ASSOCIATE-RJ; ``permanent`` for rejected-permanent (asking again gets the same)."""

    def __init__(self, message: str, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class _FileHeader:
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


def _read_header(path: Path) -> _FileHeader:
    try:
        dataset = dcmread(path, stop_before_pixels=True)
        return _FileHeader(Path(path), str(dataset.SOPClassUID), str(dataset.SOPInstanceUID),
                           str(dataset.file_meta.TransferSyntaxUID))
    except (OSError, AttributeError, ValueError, InvalidDicomError) as exc:
        raise DeliveryError(f"cannot send {path}: not a readable DICOM file with SOP class, "
                            f"instance and transfer syntax ({type(exc).__name__}: {exc})") from exc


def _describe(node: RemoteNode) -> str:
    return f"node {node.name!r} ({node.ae_title}@{node.host}:{node.port})"


def _associate(node: RemoteNode, calling_ae: str, timeout_s: float, contexts: Sequence[tuple[str, list[str]]],
               tls_context: ssl.SSLContext | None) -> Association:
    """Open an association or raise DeliveryError naming the node and why it failed."""
    if node.tls and tls_context is None:
        raise DeliveryError(f"{_describe(node)} requires TLS but no tls_context was given")
    ae = AE(ae_title=calling_ae)
    ae.connection_timeout = timeout_s
    ae.acse_timeout = timeout_s
    ae.dimse_timeout = timeout_s
    ae.network_timeout = timeout_s
    for abstract_syntax, transfer_syntaxes in contexts:
        ae.add_requested_context(abstract_syntax, transfer_syntaxes)
    tls_args = (tls_context, node.host) if node.tls and tls_context is not None else None
    connected: list[bool] = []
    try:
        assoc = ae.associate(node.host, node.port, ae_title=node.ae_title, tls_args=tls_args,
                             evt_handlers=[(evt.EVT_CONN_OPEN, set_tcp_nodelay),
                                           (evt.EVT_CONN_OPEN, lambda _event: connected.append(True))])
    except OSError as exc:  # e.g. a host name that does not resolve
        raise DeliveryError(f"{_describe(node)}: could not connect: {exc}") from exc
    if assoc.is_established:
        return assoc
    if not connected:
        raise DeliveryError(f"{_describe(node)}: could not connect (connection refused, timed out "
                            f"or TLS handshake failed) within {timeout_s}s")
    if assoc.is_rejected:
        response = assoc.acceptor.primitive
        reason = describe_rejection(response.result, response.result_source, response.diagnostic)
        raise AssociationRejected(f"{_describe(node)} rejected the association from {calling_ae}: {reason}",
                                  permanent=response.result == 0x01)
    if assoc.rejected_contexts and not assoc.accepted_contexts:  # accepted with no context (pynetdicom aborts)
        refused = ", ".join(f"{cx.abstract_syntax} in {'/'.join(cx.transfer_syntax)}" for cx in assoc.rejected_contexts)
        raise AssociationRejected(f"{_describe(node)} accepted the association from {calling_ae} but none of its "
                                  f"presentation contexts: {refused}", permanent=True)
    raise DeliveryError(f"{_describe(node)} aborted the association request from {calling_ae} "
                        f"or sent no answer within {timeout_s}s")


def send_files(node: RemoteNode, paths: Sequence[Path], calling_ae: str, timeout_s: float,
               tls_context: ssl.SSLContext | None = None) -> SendReport:
    """C-STORE ``paths`` to ``node`` over one association; raise DeliveryError if any is not delivered."""
    started = time.perf_counter()
    headers = [_read_header(path) for path in paths]
    contexts = {(h.sop_class_uid, _offered(h.transfer_syntax_uid)): None for h in headers}
    if len(contexts) > MAX_PRESENTATION_CONTEXTS:
        raise DeliveryError(f"sending to {_describe(node)} needs {len(contexts)} (SOP class, transfer syntax) "
                            f"presentation contexts; one association allows {MAX_PRESENTATION_CONTEXTS}")
    assoc = _associate(node, calling_ae, timeout_s, [(cls, list(ts)) for cls, ts in contexts], tls_context)
    report = SendReport(node=node)
    try:
        for header in headers:
            report.results.append(_store_one(assoc, header))
            if not assoc.is_established:
                break
    finally:
        if assoc.is_established:
            assoc.release()
    report.elapsed_s = time.perf_counter() - started
    unsent = headers[len(report.results):]
    if report.failures or unsent:
        first = report.failures[0] if report.failures else None
        detail = (f"first failure {first.path.name}: status "
                  f"{'none' if first.status is None else f'0x{first.status:04X}'} ({first.category})"
                  if first else "association lost")
        raise SendFailed(f"{_describe(node)}: {len(report.failures) + len(unsent)} of {len(headers)} instances "
                         f"not delivered; {detail}", report)
    for warning in report.warnings:
        LOG.warning("%s kept %s with warning status 0x%04X", _describe(node), warning.sop_instance_uid,
                    warning.status)
    LOG.info("sent %d instances to %s in %.2fs", len(headers), _describe(node), report.elapsed_s)
    return report


def _offered(transfer_syntax: str) -> tuple[str, ...]:
    """The transfer syntaxes proposed for a file: its own, and for an uncompressed one the other uncompressed one
    too (Implicit VR Little Endian is the one every SCP must accept, PS3.5 10.1)."""
    if transfer_syntax in UNCOMPRESSED:
        return (transfer_syntax, *(ts for ts in UNCOMPRESSED if ts != transfer_syntax))
    return (transfer_syntax,)


def _store_one(assoc: Association, header: _FileHeader) -> InstanceResult:
    accepted = {(cx.abstract_syntax, cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
    offered = _offered(header.transfer_syntax_uid)
    if not any((header.sop_class_uid, ts) in accepted for ts in offered):
        return InstanceResult(header.path, header.sop_instance_uid, None,
                              f"Not sent: peer did not accept {header.sop_class_uid} in {'/'.join(offered)}",
                              refused=True)
    response = assoc.send_c_store(header.path)
    if "Status" not in response:
        return InstanceResult(header.path, header.sop_instance_uid, None,
                              "No response (timeout, abort or connection lost)")
    status = int(response.Status)
    return InstanceResult(header.path, header.sop_instance_uid, status, code_to_category(status),
                          refused=is_permanent_failure(status))


def echo(node: RemoteNode, calling_ae: str, timeout_s: float, tls_context: ssl.SSLContext | None = None) -> float:
    """C-ECHO ``node``; return the round trip (association + echo + release) in seconds."""
    started = time.perf_counter()
    assoc = _associate(node, calling_ae, timeout_s, [(Verification, ["1.2.840.10008.1.2"])], tls_context)
    try:
        response = assoc.send_c_echo()
    finally:
        if assoc.is_established:
            assoc.release()
    if "Status" not in response:
        raise DeliveryError(f"{_describe(node)}: no C-ECHO response within {timeout_s}s")
    if int(response.Status) != 0x0000:
        raise DeliveryError(f"{_describe(node)}: C-ECHO status 0x{int(response.Status):04X}")
    return time.perf_counter() - started
