"""MLLP transport: a threaded listener with persistent connections, and a persistent-connection client.

Framing is ``\\x0b message \\x1c\\x0d``. One connection carries many messages; each is
answered in order before the next is read. Bytes outside frames are logged and skipped;
an oversized, undecodable or unhandled frame is answered with an AR/AE ACK and the
connection carries on. Sockets set TCP_NODELAY so an ACK never waits on Nagle's algorithm.
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass

from hl7_fhir.er7 import HL7_CHARSETS, Er7Error, read_msh
from hl7_fhir.errors import Hl7FhirError
from hl7_fhir.hl7v2 import ERR_APPLICATION_INTERNAL, ERR_DATA_TYPE, error_ack

log = logging.getLogger(__name__)

START = b"\x0b"
END = b"\x1c"
CR = b"\r"
HEAD_BYTES = 4096
_ERROR_CODE = re.compile(r"[A-Za-z0-9]{1,10}")  # ERR-3.1, HL7 table 0357 (e.g. 204) or a site's own short code


class MllpError(Hl7FhirError):
    """A transport failure: refused, timed out, closed by the peer, or a negative ACK."""



def message_encoding(payload: bytes, default: str) -> str:
    """The codec MSH-18 names for a message (its first repetition), else ``default``. MSH is read as latin-1,
    which maps every byte, so a message in any charset can say which it is."""
    try:
        msh = read_msh(payload.decode("latin-1"))
    except Er7Error:
        return default
    return HL7_CHARSETS.get(msh.field(18).split(msh.encoding[1])[0].strip().upper(), default)


class MllpNegativeAck(MllpError):
    """The receiver answered AE/AR (or CE/CR); ``ack`` is its full ACK message, ``code`` its MSA-1, ``text`` its
    MSA-3. The message names the code and the ERR-3 error codes only: receivers often put the patient in their
    texts ("Patient 12345678 DOE^JANE not registered"), and the message goes to logs and the database."""

    def __init__(self, message: str, ack: str, code: str, text: str = ""):
        super().__init__(message)
        self.ack = ack
        self.code = code
        self.text = text

    @property
    def rejected(self) -> bool:
        """AR/CR: the receiver refuses the message itself; sending it again cannot help (AE/CE may pass later)."""
        return self.code in ("AR", "CR")


@dataclass(frozen=True)
class MllpReply:
    """What the listener sends back for one message: an ACK, or None when MSH-15/16 want none."""

    ack: str | None


@dataclass(frozen=True)
class Frame:
    """One decoded unit of the byte stream: a 'message', 'garbage' outside frames, or 'oversize'."""

    kind: str
    payload: bytes


class MllpFramer:
    """Incremental MLLP decoder: robust to partial reads and several frames in one read.

    A frame longer than ``max_bytes`` is skipped to its end marker and reported as
    'oversize' with its first bytes, so the MSH can still be read for the AR.
    """

    def __init__(self, max_bytes: int):
        self._max = max_bytes
        self._buffer = bytearray()
        self._in_frame = False
        self._oversize_head: bytes | None = None

    def feed(self, data: bytes) -> list[Frame]:
        """Frames completed by ``data`` (and any garbage found before them)."""
        self._buffer += data
        frames: list[Frame] = []
        while self._buffer:
            if not self._in_frame:
                start = self._buffer.find(START)
                junk = bytes(self._buffer if start < 0 else self._buffer[:start])
                if junk.strip():
                    frames.append(Frame("garbage", junk))
                if start < 0:
                    self._buffer.clear()
                    break
                del self._buffer[:start + 1]
                self._in_frame = True
                continue
            end = self._buffer.find(END)
            restart = self._buffer.find(START)
            if restart >= 0 and (end < 0 or restart < end):
                frames.append(Frame("garbage", bytes(self._buffer[:restart])))
                del self._buffer[:restart + 1]
                self._oversize_head = None
                continue
            if end < 0:
                if len(self._buffer) > self._max:
                    if self._oversize_head is None:
                        self._oversize_head = bytes(self._buffer[:HEAD_BYTES])
                    self._buffer.clear()
                break
            payload = bytes(self._buffer[:end])
            del self._buffer[:end + 1]
            if self._buffer[:1] == CR:
                del self._buffer[:1]
            self._in_frame = False
            if self._oversize_head is not None or len(payload) > self._max:
                frames.append(Frame("oversize", self._oversize_head or payload[:HEAD_BYTES]))
                self._oversize_head = None
            else:
                frames.append(Frame("message", payload))
        return frames


def frame(message: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``message`` wrapped in MLLP start/end blocks (``errors``: as ``str.encode`` takes it)."""
    return START + message.encode(encoding, errors) + END + CR


def _control_id(text: str) -> str:
    """MSH-10 for log lines, or '?' when the text has no readable MSH."""
    try:
        return read_msh(text).field(10) or "?"
    except Hl7FhirError:
        return "?"


class MllpServer:
    """Threaded MLLP listener: one thread per connection, many messages per connection.

    ``handler`` turns one message's text into the reply; it should not raise, but if it
    does the sender gets an AE naming the error and the connection carries on. ``on_refused(text, code, reason)``
    hears of each message refused before it reaches the handler (over the size limit, not in its charset): the
    start of its text as far as it could be decoded, the ACK code and why.
    """

    def __init__(self, host: str, port: int, handler: Callable[[str], MllpReply], *,
                 tls_context: ssl.SSLContext | None = None, max_message_bytes: int = 1 << 20,
                 idle_timeout_s: float = 300.0, encoding: str = "utf-8",
                 on_refused: Callable[[str, str, str], None] = lambda text, code, reason: None):
        if max_message_bytes < 1024:
            raise MllpError(f"max_message_bytes must be >= 1024, got {max_message_bytes}")
        if idle_timeout_s <= 0:
            raise MllpError(f"idle_timeout_s must be > 0, got {idle_timeout_s}")
        self._address = (host, port)
        self._handler = handler
        self._on_refused = on_refused
        self._tls = tls_context
        self._max = max_message_bytes
        self._idle = idle_timeout_s
        self._encoding = encoding
        self._listener: socket.socket | None = None
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._accept_thread: threading.Thread | None = None

    def start(self) -> int:
        """Bind and listen (port 0 picks a free one); returns the bound port."""
        listener = socket.create_server(self._address, reuse_port=False)
        listener.settimeout(0.2)
        self._listener = listener
        self._stopping.clear()
        self._accept_thread = threading.Thread(target=self._accept_loop, name="mllp-accept", daemon=True)
        self._accept_thread.start()
        port = int(listener.getsockname()[1])
        log.info("MLLP listener on %s:%d (tls=%s)", self._address[0], port, self._tls is not None)
        return port

    def stop(self) -> None:
        """Stop accepting, close every open connection, wait for the accept thread."""
        self._stopping.set()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=5)
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            for conn in list(self._connections):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    log.debug("connection already closed at stop")
                conn.close()
            self._connections.clear()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                conn, peer = self._listener.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if not self._stopping.is_set():
                    log.error("MLLP accept failed: %s", exc)
                return
            threading.Thread(target=self._serve, args=(conn, peer), name=f"mllp-{peer[0]}:{peer[1]}",
                             daemon=True).start()

    def _serve(self, raw: socket.socket, peer: tuple[str, int]) -> None:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        raw.settimeout(self._idle)
        try:
            conn = self._tls.wrap_socket(raw, server_side=True) if self._tls else raw
        except (ssl.SSLError, OSError) as exc:
            log.warning("MLLP TLS handshake with %s failed: %s", peer[0], exc)
            raw.close()
            return
        with self._lock:
            self._connections.add(conn)
        framer = MllpFramer(self._max)
        try:
            while not self._stopping.is_set():
                data = conn.recv(65536)
                if not data:
                    break
                for unit in framer.feed(data):
                    reply = self._reply(unit, peer)
                    if reply is not None:  # in the charset of the message it answers; what it cannot hold is '?'
                        conn.sendall(frame(reply, message_encoding(unit.payload, self._encoding), "replace"))
        except TimeoutError:
            log.info("MLLP connection from %s idle for %.0f s, closed", peer[0], self._idle)
        except (OSError, ssl.SSLError) as exc:
            if not self._stopping.is_set():
                log.info("MLLP connection from %s ended: %s", peer[0], exc)
        finally:
            with self._lock:
                self._connections.discard(conn)
            conn.close()

    def _reply(self, unit: Frame, peer: tuple[str, int]) -> str | None:
        """The ACK text for one frame, or None (garbage, or an ACK the sender did not ask for)."""
        if unit.kind == "garbage":
            log.warning("MLLP from %s: %d bytes outside any frame skipped", peer[0], len(unit.payload))
            return None
        if unit.kind == "oversize":
            head = unit.payload.decode(self._encoding, errors="replace")
            log.warning("MLLP from %s: message %s over %d bytes rejected", peer[0], _control_id(head), self._max)
            return self._refused(head, f"message exceeds the {self._max}-byte limit")
        encoding = message_encoding(unit.payload, self._encoding)
        try:
            text = unit.payload.decode(encoding)
        except UnicodeDecodeError as exc:
            head = unit.payload.decode(encoding, errors="replace")
            log.warning("MLLP from %s: message %s is not %s: %s", peer[0], _control_id(head), encoding, exc)
            return self._refused(head, f"message is not valid {encoding}: {exc.reason} at byte {exc.start}")
        try:
            return self._handler(text).ack
        except Exception as exc:  # a handler must never take the connection down
            log.exception("MLLP handler failed on message %s", _control_id(text))
            return error_ack(text, "AE", f"{type(exc).__name__}: {exc}", ERR_APPLICATION_INTERNAL)

    def _refused(self, head: str, reason: str) -> str | None:
        """The AR for a message refused before the handler, after telling ``on_refused`` (whose failure must not
        cost the sender its ACK)."""
        try:
            self._on_refused(head, "AR", reason)
        except Exception:  # noqa: BLE001 - logged; the ACK still goes out
            log.exception("recording a refused HL7 message failed")
        return error_ack(head, "AR", reason, ERR_DATA_TYPE)


def _error_code(err: list[str], component: str, subcomponent: str) -> str:
    """An ERR segment's error code: ERR-3.1 (v2.5), else the code of ERR-1 (v2.3/2.4: segment^sequence^field^
    code&text); "" when it has none."""
    if len(err) > 3 and err[3]:
        return err[3].split(component)[0]
    location = err[1].split(component) if len(err) > 1 else []
    return location[3].split(subcomponent)[0] if len(location) > 3 else ""


class MllpClient:
    """Sends messages over one persistent MLLP connection and checks each ACK.

    ``send`` returns the ACK text on AA/CA and raises MllpNegativeAck on AE/AR/CE/CR,
    MllpError on refused connections, timeouts or an ACK for another message.
    """

    def __init__(self, host: str, port: int, *, timeout_s: float = 10.0,
                 tls_context: ssl.SSLContext | None = None, encoding: str = "utf-8"):
        self._address = (host, port)
        self._timeout = timeout_s
        self._tls = tls_context
        self._encoding = encoding
        self._sock: socket.socket | None = None
        self._framer = MllpFramer(1 << 24)

    def __enter__(self) -> MllpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (the next send opens a new one)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _connect(self) -> socket.socket:
        host, port = self._address
        try:
            sock = socket.create_connection(self._address, timeout=self._timeout)
        except OSError as exc:
            raise MllpError(f"MLLP connection to {host}:{port} failed: {exc}") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._tls is not None:
            sock = self._tls.wrap_socket(sock, server_hostname=host)
        self._framer = MllpFramer(1 << 24)
        return sock

    def send(self, message: str) -> str:
        """Send one message and wait for its ACK (MSA-2 must echo MSH-10)."""
        control_id = read_msh(message).field(10)
        if self._sock is None:
            self._sock = self._connect()
        host, port = self._address
        try:
            self._sock.sendall(frame(message, self._encoding))
            ack = self._read_frame()
        except TimeoutError as exc:
            self.close()
            raise MllpError(f"no ACK for message {control_id} from {host}:{port} within {self._timeout} s") from exc
        except OSError as exc:
            self.close()
            raise MllpError(f"MLLP send of message {control_id} to {host}:{port} failed: {exc}") from exc
        return self._check(ack, control_id)

    def _read_frame(self) -> str:
        assert self._sock is not None
        while True:
            data = self._sock.recv(65536)
            if not data:
                raise ConnectionResetError("connection closed by the receiver before the ACK")
            for unit in self._framer.feed(data):
                if unit.kind == "message":  # only MSA's ASCII codes are read: a stray byte must not lose the ACK
                    return unit.payload.decode(message_encoding(unit.payload, self._encoding), errors="replace")

    def _check(self, ack: str, control_id: str) -> str:
        separators = ack[3:8] if ack.startswith("MSH") and len(ack) >= 8 else "|^~\\&"  # MSH-1 and MSH-2
        segments = [line.split(separators[0]) for line in ack.replace("\n", "\r").split("\r") if line]
        msa = next((fields for fields in segments if fields[0] == "MSA"), None)
        if msa is None or len(msa) < 3:
            raise MllpError(f"reply to message {control_id} has no MSA segment: {ack[:80]!r}")
        code, acked = msa[1], msa[2]
        if acked != control_id:
            raise MllpError(f"ACK names message {acked!r}, expected {control_id!r}")
        if code not in ("AA", "CA"):
            errors = [_error_code(fields, separators[1], separators[4]) for fields in segments if fields[0] == "ERR"]
            named = [error for error in errors if _ERROR_CODE.fullmatch(error)]
            detail = f" (error code {', '.join(named)})" if named else ""
            raise MllpNegativeAck(f"message {control_id} answered {code}{detail}; its text is not shown, it may name "
                                  "the patient", ack, code, msa[3] if len(msa) > 3 else "")
        return ack
