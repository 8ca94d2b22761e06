"""MLLP listener and client on loopback, with python-hl7's mllp_send as a real sender."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hl7_fhir.hl7v2 import Demographics, Header, LabReport, Merge, Order
from hl7_fhir.inbox import Hl7Inbox
from hl7_fhir.mllp import MllpClient, MllpError, MllpFramer, MllpNegativeAck, MllpReply, MllpServer, frame
from tests.peers import mllp_send
from tests.unit.hl7_fhir.messages import adt, orm, oru


@dataclass
class FakeStore:
    """The application's side: stores per message and remembers control ids, like its db would."""

    labs: list[LabReport] = field(default_factory=list)
    demographics: list[Demographics] = field(default_factory=list)
    orders: list[list[Order]] = field(default_factory=list)
    merges: list[list[Merge]] = field(default_factory=list)
    stored_ids: set[tuple[str, str]] = field(default_factory=set)
    connections: set[str] = field(default_factory=set)
    fail_next: bool = False

    def seen(self, header: Header) -> bool:
        self.connections.add(threading.current_thread().name)
        return (header.control_id, header.sender) in self.stored_ids

    def _commit(self, header: Header, rows: list, item: object) -> None:
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("database is locked")
        rows.append(item)
        self.stored_ids.add((header.control_id, header.sender))

    def inbox(self) -> Hl7Inbox:
        return Hl7Inbox(self.seen, lambda h, r: self._commit(h, self.labs, r) or [],
                        lambda h, d: self._commit(h, self.demographics, d),
                        lambda h, o: self._commit(h, self.orders, o), lambda h, m: self._commit(h, self.merges, m))


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


@pytest.fixture
def port(store: FakeStore) -> Iterator[int]:
    server = MllpServer("127.0.0.1", 0, store.inbox().handle, idle_timeout_s=5, max_message_bytes=4096)
    bound = server.start()
    yield bound
    server.stop()


def test_mllp_send_file_of_messages_over_one_connection(tmp_path: Path, store: FakeStore, port: int) -> None:
    path = tmp_path / "batch.hl7"
    path.write_text(oru("L1") + adt("A1") + orm("O1") + oru("L2", platelets="90"))
    msas = mllp_send(port, path)
    assert [m.split("|")[1:3] for m in msas] == [["AA", "L1"], ["AA", "A1"], ["AA", "O1"], ["AA", "L2"]]
    assert "stored 3 values; 1 OBX with codes radfusion does not use" in msas[0]
    assert len(store.connections) == 1
    assert [r.values[0].value for r in store.labs] == [150.0, 90.0]
    assert store.orders[0][0].accession == "ACC123" and store.demographics[0].sex == "F"


def test_malformed_messages_get_ae_or_ar_and_the_connection_carries_on(
        tmp_path: Path, store: FakeStore, port: int) -> None:
    unsupported = "MSH|^~\\&|LAB|HOSP|RADFUSION|RAD|2026||ZZZ^Z99|BAD1|P|2.5.1\nPID|1||1^^^H^MR\n"
    no_patient = "MSH|^~\\&|LAB|HOSP|RADFUSION|RAD|2026||ORU^R01|BAD2|P|2.5.1\nPID|1\nOBR|1\n"
    path = tmp_path / "mixed.hl7"
    path.write_text(oru("G1") + unsupported + no_patient + oru("G2"))
    msas = [m.split("|")[1:3] for m in mllp_send(port, path)]
    assert msas == [["AA", "G1"], ["AR", "BAD1"], ["AE", "BAD2"], ["AA", "G2"]]
    assert len(store.labs) == 2 and len(store.connections) == 1


def test_a_message_is_decoded_in_the_charset_its_msh_18_names(store: FakeStore, port: int) -> None:
    """An 8859/1 sender's umlaut made the whole message an AR ('not valid utf-8'), never resent."""
    message = oru("LAT1").replace("Doe^Jane", "Müller^Jürgen").replace("|P|2.5.1\n", "|P|2.5.1||||||8859/1\n")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(b"\x0b" + message.replace("\n", "\r").encode("latin-1") + b"\x1c\r")
        reply = raw.recv(4096).decode("ascii")
    assert "MSA|AA|LAT1" in reply and len(store.labs) == 1


def test_duplicate_control_id_is_acknowledged_but_stored_once(store: FakeStore, port: int) -> None:
    with MllpClient("127.0.0.1", port, timeout_s=5) as client:
        client.send(oru("D1"))
        second = client.send(oru("D1"))
    assert "duplicate message control id D1, ignored" in second
    assert len(store.labs) == 1


def test_failed_store_gives_ae_then_the_resend_is_stored(store: FakeStore, port: int) -> None:
    store.fail_next = True
    with MllpClient("127.0.0.1", port, timeout_s=5) as client:
        with pytest.raises(MllpNegativeAck, match="answered AE") as refused:
            client.send(oru("F1"))
        assert refused.value.text == "storing failed: RuntimeError: database is locked"
        client.send(oru("F1"))
    assert len(store.labs) == 1


def test_garbage_split_frames_and_oversize_do_not_break_the_connection(store: FakeStore, port: int) -> None:
    wire = b"junk before\r\n" + frame(oru("S1")) + frame(adt("S2"))
    big = frame(oru("S3") + "NTE|1||" + "x" * 8000 + "\n")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        for i in range(0, len(wire), 7):  # partial reads: 7 bytes at a time
            sock.sendall(wire[i:i + 7])
            time.sleep(0.0005)
        sock.sendall(big + frame(adt("S4")))
        acks = read_acks(sock, 4)
    assert [a.split("\r")[1].split("|")[1:3] for a in acks] == [
        ["AA", "S1"], ["AA", "S2"], ["AR", "S3"], ["AA", "S4"]]
    assert "exceeds the 4096-byte limit" in acks[2]


def read_acks(sock: socket.socket, count: int) -> list[str]:
    framer, acks = MllpFramer(1 << 20), []
    while len(acks) < count:
        data = sock.recv(65536)
        assert data, f"connection closed after {len(acks)} ACKs"
        acks += [f.payload.decode() for f in framer.feed(data) if f.kind == "message"]
    return acks


def test_framer_reports_garbage_and_restarted_frames() -> None:
    framer = MllpFramer(1024)
    units = framer.feed(b"xx\x0bpartial\x0bwhole\x1c\r\x0bnext")
    assert [(u.kind, u.payload) for u in units] == [("garbage", b"xx"), ("garbage", b"partial"),
                                                    ("message", b"whole")]
    assert [(u.kind, u.payload) for u in framer.feed(b"\x1c\r")] == [("message", b"next")]


def test_client_errors_name_the_peer() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    with pytest.raises(MllpError, match=f"127.0.0.1:{closed_port} failed"):
        MllpClient("127.0.0.1", closed_port, timeout_s=1).send(adt("X"))
    silent = MllpServer("127.0.0.1", 0, lambda text: MllpReply(None))
    port = silent.start()
    try:
        with pytest.raises(MllpError, match="no ACK for message X .* within 0.3 s"):
            MllpClient("127.0.0.1", port, timeout_s=0.3).send(adt("X"))
    finally:
        silent.stop()


def _answered(ack: str, message: str) -> str:
    """What MllpClient returns for ``message`` from a receiver that answers ``ack`` (in Latin-1)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)

        def answer() -> None:
            connection, _ = listener.accept()
            with connection:
                while b"\x1c\r" not in connection.recv(65536):
                    pass
                connection.sendall(frame(ack, "latin-1"))

        thread = threading.Thread(target=answer)
        thread.start()
        try:
            with MllpClient("127.0.0.1", listener.getsockname()[1], timeout_s=5) as client:
                return client.send(message)
        finally:
            thread.join(timeout=5)


def test_an_ack_in_another_charset_is_still_read() -> None:
    """A receiver answering in Latin-1 (MSA-3 'Nachricht übernommen'): before, UnicodeDecodeError, and the
    delivery was neither recorded nor given up on."""
    ack = "MSH|^~\\&|EMR|H|RF|H|20240101||ACK|A1|P|2.5.1\rMSA|AA|L1|Nachricht übernommen\r"
    assert "Nachricht" in _answered(ack, adt("L1"))


def test_a_negative_ack_s_texts_stay_out_of_the_error_message() -> None:
    """A receiver's MSA-3 ('Patient 12345678 DOE^JANE not registered') went into the delivery's error, the audit
    trail and the log."""
    ack = ("MSH|^~\\&|EMR|H|RF|H|20240101||ACK|A1|P|2.5.1\rMSA|AE|N1|Patient 12345678 DOE^JANE not registered\r"
           "ERR|||204^Unknown key identifier^HL70357|E||||Patient 12345678 DOE^JANE not registered\r")
    with pytest.raises(MllpNegativeAck) as refused:
        _answered(ack, adt("N1"))
    assert str(refused.value) == ("message N1 answered AE (error code 204); its text is not shown, it may name the "
                                  "patient")
    assert refused.value.text == "Patient 12345678 DOE^JANE not registered"
    v23 = ("MSH|^~\\&|EMR|H|RF|H|20240101||ACK|A2|P|2.3\rMSA|AE|N2|Patient DOE^JANE unknown\r"
           "ERR|PID^1^3^204&Unknown key identifier\r")  # version 2.3 gives the code in ERR-1
    with pytest.raises(MllpNegativeAck, match=r"^message N2 answered AE \(error code 204\); its text"):
        _answered(v23, adt("N2"))


def test_handler_exception_becomes_ae() -> None:
    def broken(text: str) -> MllpReply:
        raise KeyError("boom")

    server = MllpServer("127.0.0.1", 0, broken)
    port = server.start()
    try:
        with MllpClient("127.0.0.1", port, timeout_s=5) as client:
            with pytest.raises(MllpNegativeAck) as refused:
                client.send(adt("H1"))
            assert "KeyError" in refused.value.text
            with pytest.raises(MllpNegativeAck):
                client.send(adt("H2"))  # same connection still answers
    finally:
        server.stop()


def test_tls_listener_and_client(tmp_path: Path, store: FakeStore) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    server = MllpServer("127.0.0.1", 0, store.inbox().handle, tls_context=server_ctx)
    port = server.start()
    try:
        with MllpClient("127.0.0.1", port, timeout_s=5, tls_context=client_ctx) as client:
            client.send(oru("T1"))
            client.send(adt("T2"))
        with pytest.raises(MllpError):  # a plain-text sender gets no ACK from a TLS listener
            MllpClient("127.0.0.1", port, timeout_s=0.5).send(adt("T3"))
    finally:
        server.stop()
    assert len(store.labs) == 1 and len(store.demographics) == 1


def test_an_ack_goes_out_in_the_charset_of_the_message_it_answers() -> None:
    """With a Latin-1 default every ACK was encoded in Latin-1: one quoting a unit such as '×10⁹/L' raised
    UnicodeEncodeError, the connection's thread died without an ACK, and the sender resent the message for ever."""
    def answer(text: str) -> MllpReply:
        control_id = text.split("\r")[0].split("|")[9]
        return MllpReply(f"MSH|^~\\&|RF|H|LAB|H|20240101||ACK|{control_id}|P|2.5.1\r"
                         f"MSA|AA|{control_id}|unit ×10⁹/L\r")

    server = MllpServer("127.0.0.1", 0, answer, encoding="latin-1")
    port = server.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            raw.sendall(frame(adt("U1").replace("|P|2.3\n", "|P|2.3||||||UNICODE UTF-8\n").replace("\n", "\r")))
            assert "MSA|AA|U1|unit ×10⁹/L" in raw.recv(4096).decode("utf-8")
            raw.sendall(frame(adt("L1").replace("\n", "\r"), "latin-1"))  # no MSH-18: the default, Latin-1
            assert "MSA|AA|L1|unit ×10?/L" in raw.recv(4096).decode("latin-1")
    finally:
        server.stop()
