"""Start the Medplum FHIR peer on a free loopback port, stop it by PID.

Use ``fhir_peer()`` as a context manager, or the ``fhir_peer_url`` fixture. Without
``node_modules`` (run ``npm ci`` in tests/fhir_peer) the test is skipped, or fails under CI=1.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.peers import PEER_ENV, free_port, running, wait_until

PEER_DIR = Path(__file__).resolve().parent


def _require_peer() -> str:
    node = shutil.which("node")
    if node is None or not (PEER_DIR / "node_modules" / "@medplum" / "fhir-router").is_dir():
        message = f"FHIR peer needs node and `npm ci` in {PEER_DIR}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return node


@contextmanager
def fhir_peer(log_dir: Path, *, delay_ms: int = 0, token: str = "") -> Iterator[str]:
    """A running FHIR peer; yields its base URL. ``delay_ms`` slows every answer, ``token`` requires it."""
    node = _require_peer()
    port = free_port()
    env = {**PEER_ENV, "FHIR_PEER_DELAY_MS": str(delay_ms), "FHIR_PEER_TOKEN": token}
    cmd = [node, "--experimental-websocket", str(PEER_DIR / "server.mjs"), str(port)]
    with running(cmd, port=port, log=log_dir / f"fhir-peer-{port}.log", env=env, timeout=60):
        base = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        answer_s = 5 + delay_ms / 1000
        wait_until(lambda: httpx.get(f"{base}/Patient?_count=1", headers=headers, timeout=answer_s).status_code == 200,
                   timeout=30, what="FHIR peer answering searches")
        yield base


def seed(base_url: str, resources: list[dict], token: str = "") -> list[dict]:
    """POST each resource (in order) to the peer; the stored copies with their ids."""
    headers = {"Content-Type": "application/fhir+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    stored = []
    with httpx.Client(base_url=base_url, headers=headers, timeout=10) as http:
        for resource in resources:
            response = http.post(f"/{resource['resourceType']}", json=resource)
            response.raise_for_status()
            stored.append(response.json())
    return stored
