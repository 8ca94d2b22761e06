"""Real peers for tests: free ports, processes stopped by PID, dcmtk and dciodvfy helpers.

Every peer binds a port found by binding port 0, is waited for by polling, and is
stopped by PID (SIGTERM, then SIGKILL) when the test ends.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

PEER_ENV = {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    """A TCP port that was free a moment ago on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _WebhookHandler(BaseHTTPRequestHandler):
    """Answers POSTs with the status the test chose and keeps what arrived."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append((dict(self.headers), json.loads(body)))  # type: ignore[attr-defined]
        self.send_response(self.server.status)  # type: ignore[attr-defined]
        for name, value in self.server.headers.items():  # type: ignore[attr-defined]
            self.send_header(name, value)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """Keep the test output quiet."""


@contextmanager
def webhook_receiver(port: int | None = None, status: int = 204,
                     headers: dict[str, str] | None = None) -> Iterator[ThreadingHTTPServer]:
    """An HTTP receiver on loopback (``port``, or a free one): ``.received`` lists (headers, JSON body)
    of each POST, ``.status`` is what it answers (settable while it runs), with ``headers``."""
    server = ThreadingHTTPServer(("127.0.0.1", port or 0), _WebhookHandler)
    server.received, server.status, server.headers = [], status, dict(headers or {})  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def wait_for_port(port: int, timeout: float = 30.0, host: str = "127.0.0.1") -> None:
    """Poll until something accepts TCP connections on ``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"):  # noqa: ANN001
    """Poll ``predicate`` until it returns a truthy value; return that value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached after {timeout}s")


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Stop a peer by PID: SIGTERM to its process group, SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)


def require_tool(name: str) -> str:
    """Path of a system peer executable (dcmtk, dicom3tools, Orthanc …); skipped (with the reason) when missing.

    The interpreter's own bin directory is left out of the search: pynetdicom installs console scripts named
    ``storescp``, ``storescu`` and ``echoscu`` there, with other options than dcmtk's, and an activated
    virtual environment would put them first on PATH.
    """
    own_bin = Path(sys.executable).parent.resolve()
    search = [d for d in os.environ.get("PATH", os.defpath).split(os.pathsep) if d and Path(d).resolve() != own_bin]
    path = shutil.which(name, path=os.pathsep.join(search))
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed; .ci/run must install it")
        pytest.skip(f"{name} is not installed")
    return path


@contextmanager
def running(cmd: Sequence[str], port: int | None = None, log: Path | None = None,
            env: dict[str, str] | None = None, timeout: float = 30.0) -> Iterator[subprocess.Popen]:
    """Start a process in its own group, wait for its port, stop it by PID afterwards."""
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT,
                            env=env or PEER_ENV, start_new_session=True)
    try:
        if port is not None:
            wait_for_port(port, timeout)
        yield proc
    finally:
        stop_process(proc)
        if log:
            out.close()


@contextmanager
def storescp(directory: Path, ae_title: str = "SINK", port: int | None = None,
             accept: str = "--accept-all") -> Iterator[int]:
    """dcmtk storescp accepting any storage SOP class into ``directory`` (``accept``: which transfer syntaxes,
    e.g. ``+xi`` Implicit VR Little Endian only); yields its port."""
    exe = require_tool("storescp")
    port = port or free_port()
    directory.mkdir(parents=True, exist_ok=True)
    cmd = [exe, "--aetitle", ae_title, "--output-directory", str(directory),
           "--promiscuous", accept, "--filename-extension", ".dcm", str(port)]
    with running(cmd, port=port, log=directory.parent / f"storescp-{port}.log"):
        yield port


def storescu(port: int, files: Sequence[Path], calling_ae: str = "STORESCU",
             called_ae: str = "RADFUSION", extra: Sequence[str] = ()) -> subprocess.CompletedProcess:
    """Send files with dcmtk storescu (-R: propose only the classes the files need)."""
    exe = require_tool("storescu")
    cmd = [exe, "-aet", calling_ae, "-aec", called_ae, "-R", *extra,
           "127.0.0.1", str(port), *map(str, files)]
    return subprocess.run(cmd, capture_output=True, text=True, env=PEER_ENV, timeout=300)


def mllp_send(port: int, path: Path) -> list[str]:
    """python-hl7's mllp_send on a file of messages, over one connection; the MSA segments it printed."""
    exe = shutil.which("mllp_send") or str(Path(sys.executable).parent / "mllp_send")
    proc = subprocess.run([exe, "--loose", "-p", str(port), "-f", str(path), "127.0.0.1"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return [line for line in proc.stdout.replace("\r", "\n").splitlines() if line.startswith("MSA")]


def dciodvfy_errors(path: Path) -> list[str]:
    """The 'Error' lines dciodvfy prints for one file (empty means it conforms)."""
    exe = require_tool("dciodvfy")
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]
