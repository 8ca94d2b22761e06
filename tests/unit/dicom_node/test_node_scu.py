"""Storage SCU and echo against dcmtk storescp and our own SCP; TLS between our SCU and SCP."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ImplicitVRLittleEndian, RLELossless
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, MRImageStorage  # type: ignore[attr-defined]

from dicom_node.contracts import RemoteNode
from dicom_node.errors import DeliveryError
from dicom_node.scu import AssociationRejected, SendFailed, echo, is_permanent_failure, send_files
from dicom_node.tls import TlsConfig, client_context
from tests.peers import free_port, require_tool, storescp
from tests.unit.dicom_node.helpers import ct_dataset, write_ct


def test_send_files_to_storescp_delivers_each_file(tmp_path: Path) -> None:
    files = [write_ct(tmp_path, f"ct{i}.dcm", index=i) for i in range(3)]
    rle = ct_dataset(index=9)
    rle.compress(RLELossless)
    rle_path = tmp_path / "rle.dcm"
    rle.save_as(rle_path, enforce_file_format=True)
    with storescp(tmp_path / "received") as port:
        node = RemoteNode("pacs", "SINK", "127.0.0.1", port)
        report = send_files(node, [p for p, _ in files] + [rle_path], "RADFUSION", timeout_s=10)
        assert echo(node, "RADFUSION", timeout_s=10) < 5
    assert [r.status for r in report.results] == [0, 0, 0, 0] and report.failures == []
    received = {dcmread(p).SOPInstanceUID: dcmread(p) for p in (tmp_path / "received").glob("*.dcm")}
    assert set(received) == {ds.SOPInstanceUID for _, ds in files} | {rle.SOPInstanceUID}
    assert received[rle.SOPInstanceUID].file_meta.TransferSyntaxUID == RLELossless


def test_a_pacs_that_accepts_only_implicit_vr_gets_the_results(tmp_path: Path) -> None:
    """Implicit VR Little Endian is the transfer syntax every SCP must accept; before, only the file's own
    (Explicit VR) was proposed, the association carried no context, and the delivery was retried for 72 h."""
    path, sent = write_ct(tmp_path, "ct.dcm")
    with storescp(tmp_path / "received", accept="+xi") as port:
        report = send_files(RemoteNode("pacs", "SINK", "127.0.0.1", port), [path], "RADFUSION", timeout_s=10)
    assert [r.status for r in report.results] == [0]
    received, = (dcmread(p) for p in (tmp_path / "received").glob("*.dcm"))
    assert received.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert received.SOPInstanceUID == sent.SOPInstanceUID and received.PixelData == sent.PixelData


def test_a_peer_that_accepts_none_of_the_contexts_is_a_refusal_naming_them(tmp_path: Path) -> None:
    path, _ = write_ct(tmp_path, "ct.dcm")
    ae = AE("MRONLY")
    ae.add_supported_context(MRImageStorage)
    server = ae.start_server(("127.0.0.1", 0), block=False)
    try:
        remote = RemoteNode("mr-archive", "MRONLY", "127.0.0.1", server.server_address[1])
        with pytest.raises(AssociationRejected, match=f"mr-archive.*none of its presentation contexts: "
                                                      f"{CTImageStorage}") as caught:
            send_files(remote, [path], "RADFUSION", timeout_s=5)
    finally:
        server.shutdown()
    assert caught.value.permanent  # before: "aborted ... or sent no answer", retried as if the network failed


def test_closed_port_raises_delivery_error_naming_the_node(tmp_path: Path) -> None:
    path, _ = write_ct(tmp_path, "ct.dcm")
    node = RemoteNode("nightly-pacs", "PACS", "127.0.0.1", free_port())
    with pytest.raises(DeliveryError, match="nightly-pacs.*could not connect"):
        send_files(node, [path], "RADFUSION", timeout_s=2)
    with pytest.raises(DeliveryError, match="nightly-pacs"):
        echo(node, "RADFUSION", timeout_s=2)


def test_rejected_association_names_the_reason(start_scp, tmp_path: Path) -> None:
    node = start_scp()
    path, _ = write_ct(tmp_path, "ct.dcm")
    remote = RemoteNode("ours", "RADFUSION", "127.0.0.1", node.port)
    with pytest.raises(AssociationRejected, match="rejected-permanent.*calling AE title not recognised") as caught:
        send_files(remote, [path], "STRANGER", timeout_s=5)
    assert caught.value.permanent


def test_failure_status_raises_with_a_report_of_what_was_delivered(start_scp, tmp_path: Path) -> None:
    node = start_scp()
    good, _ = write_ct(tmp_path, "good.dcm")
    bad_ds = ct_dataset()
    del bad_ds.SeriesInstanceUID
    bad = tmp_path / "bad.dcm"
    bad_ds.save_as(bad, enforce_file_format=True)
    remote = RemoteNode("ours", "RADFUSION", "127.0.0.1", node.port)
    with pytest.raises(SendFailed, match="1 of 2 instances not delivered.*bad.dcm.*0xC212") as caught:
        send_files(remote, [good, bad], "PYSCU", timeout_s=5)
    assert [(r.delivered, r.refused) for r in caught.value.report.results] == [(True, False), (False, True)]


@pytest.mark.parametrize(("status", "permanent"), [
    (0x0000, False), (0xB000, False), (0xA700, False), (0xA7FF, False), (0x0110, False), (0x0213, False),
    (0xA900, True), (0xC000, True), (0xC212, True), (0x0122, True), (0x0124, True), (0x0117, True)])
def test_which_store_failures_the_same_instance_would_get_again(status: int, permanent: bool) -> None:
    assert is_permanent_failure(status) is permanent


def test_unreadable_file_is_refused_before_connecting(tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom")
    with pytest.raises(DeliveryError, match="junk.dcm"):
        send_files(RemoteNode("x", "X", "127.0.0.1", free_port()), [junk], "RADFUSION", timeout_s=1)


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    openssl = require_tool("openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def test_tls_association_works_and_plain_client_is_refused(start_scp, tmp_path: Path, certificate) -> None:
    cert, key = certificate
    node = start_scp(tls=TlsConfig(cert_file=cert, key_file=key))
    path, ds = write_ct(tmp_path, "ct.dcm")
    remote = RemoteNode("tls", "RADFUSION", "127.0.0.1", node.port, tls=True)
    report = send_files(remote, [path], "PYSCU", timeout_s=5, tls_context=client_context(cert))
    assert report.results[0].status == 0 and node.sink.stored[0].sop_instance_uid == ds.SOPInstanceUID

    plain = AE(ae_title="PYSCU")
    plain.add_requested_context(CTImageStorage)
    plain.acse_timeout = plain.network_timeout = 5
    assoc = plain.associate("127.0.0.1", node.port, ae_title="RADFUSION")
    assert not assoc.is_established
    with pytest.raises(DeliveryError, match="requires TLS"):
        send_files(remote, [path], "PYSCU", timeout_s=5)
    assert len(node.sink.opened) == 1


def test_an_idle_connection_does_not_hold_up_other_tls_associations(start_scp, tmp_path: Path, certificate) -> None:
    cert, key = certificate
    node = start_scp(tls=TlsConfig(cert_file=cert, key_file=key))
    path, ds = write_ct(tmp_path, "ct.dcm")
    remote = RemoteNode("tls", "RADFUSION", "127.0.0.1", node.port, tls=True)
    with socket.create_connection(("127.0.0.1", node.port)):  # a port scanner or health check: connects, says nothing
        time.sleep(0.3)
        started = time.monotonic()
        report = send_files(remote, [path], "PYSCU", timeout_s=5, tls_context=client_context(cert))
        assert report.results[0].status == 0 and time.monotonic() - started < 4  # before: blocked behind it
    assert node.sink.stored[0].sop_instance_uid == ds.SOPInstanceUID


def test_tls_client_that_does_not_trust_the_server_fails(start_scp, tmp_path: Path, certificate) -> None:
    cert, key = certificate
    node = start_scp(tls=TlsConfig(cert_file=cert, key_file=key))
    other = tmp_path / "other"
    other.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(other / "k.pem"),
                    "-out", str(other / "c.pem"), "-days", "1", "-subj", "/CN=other"], check=True,
                   capture_output=True, timeout=60)
    path, _ = write_ct(tmp_path, "ct.dcm")
    remote = RemoteNode("tls", "RADFUSION", "127.0.0.1", node.port, tls=True)
    with pytest.raises(DeliveryError, match="could not connect"):
        send_files(remote, [path], "PYSCU", timeout_s=5, tls_context=client_context(other / "c.pem"))
    assert node.sink.stored == []


def test_tls_config_requires_a_ca_to_verify_clients(certificate) -> None:
    from dicom_node.errors import ConfigError
    cert, key = certificate
    with pytest.raises(ConfigError, match="ca_file"):
        TlsConfig(cert_file=cert, key_file=key, require_client_cert=True)


def test_our_sockets_have_tcp_nodelay(start_scp) -> None:
    """Checks the SCU side socket option through the event handler on a real connection."""
    node = start_scp()
    seen: list[int] = []
    from pynetdicom import evt

    from dicom_node.sockets import set_tcp_nodelay

    def record(event) -> None:  # noqa: ANN001
        seen.append(event.assoc.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="RADFUSION",
                         evt_handlers=[(evt.EVT_CONN_OPEN, set_tcp_nodelay), (evt.EVT_CONN_OPEN, record)])
    assoc.release()
    assert seen == [1]
