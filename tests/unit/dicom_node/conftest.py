"""Fixtures: a running StorageScp on a free loopback port with a recording sink."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dicom_node.scp import ScpConfig, StorageScp
from dicom_node.spool import Spool
from tests.unit.dicom_node.helpers import RecordingSink


@dataclass
class RunningScp:
    scp: StorageScp
    port: int
    spool: Spool
    sink: RecordingSink


@pytest.fixture
def start_scp(tmp_path: Path) -> Iterator[Callable[..., RunningScp]]:
    """Start an SCP (AE RADFUSION, allows STORESCU and PYSCU) with config overrides; stopped after."""
    started: list[StorageScp] = []

    def start(sink: RecordingSink | None = None, **overrides: object) -> RunningScp:
        settings: dict[str, object] = {
            "ae_title": "RADFUSION", "bind_address": "127.0.0.1", "port": 0,
            "allowed_calling_aes": frozenset({"STORESCU", "PYSCU"}), "min_free_disk_bytes": 0,
            "network_timeout_s": 10.0, "acse_timeout_s": 10.0, "dimse_timeout_s": 10.0,
        }
        settings.update(overrides)
        spool = Spool(tmp_path / "spool")
        sink = sink or RecordingSink()
        scp = StorageScp(ScpConfig(**settings), spool, sink)  # type: ignore[arg-type]
        port = scp.start()
        started.append(scp)
        return RunningScp(scp, port, spool, sink)

    yield start
    for scp in started:
        scp.stop()
