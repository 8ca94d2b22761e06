"""A hemorrhage alert goes out while the PACS that should receive the results does not answer."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from sqlalchemy import select

from ai_engine.synthetic.studies import write_study
from radfusion.models import Alert, Delivery
from tests.integration.servers import radfusion_server, routing_to
from tests.peers import storescu, wait_until, webhook_receiver

pytestmark = [pytest.mark.slow, pytest.mark.peers]

PACS_TIMEOUT_S = 20.0  # each association attempt to the silent PACS blocks this long


def test_alert_does_not_wait_behind_results_for_a_silent_pacs(tmp_path: Path) -> None:
    study = write_study("head_ct", tmp_path / "in", seed=14, lesion=True, rows=256, slices=24)
    silent = socket.create_server(("127.0.0.1", 0))  # accepts TCP connections (backlog), never answers
    with silent, webhook_receiver() as webhook, radfusion_server(
            tmp_path / "rf", routing=routing_to(["pacs"], alert_channels=["ed"]),
            destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": silent.getsockname()[1]}],
            alerts={"channels": [{"name": "ed", "url": f"http://127.0.0.1:{webhook.server_port}/"}]},
            retry={"timeout_s": PACS_TIMEOUT_S}) as server:
        assert storescu(server.port, study.paths).returncode == 0

        def alert_delivered() -> bool:
            with server.db.session() as session:
                return session.scalar(select(Alert.delivered_at)) is not None

        wait_until(alert_delivered, timeout=120, what="the alert")
        with server.db.session() as session:
            results = session.scalars(select(Delivery).where(Delivery.kind == "dicom")).all()
            # the results are still on their first attempt to the silent PACS: the alert did not wait for it
            assert results and all(d.state == "pending" and d.attempts == 0 for d in results)
        assert webhook.received and webhook.received[0][1]["kind"] == "ich_alert"
