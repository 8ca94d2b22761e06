"""Time to alert: association release of a 40-slice 512x512 head CT with a bleed → webhook receives the alert.

    .venv/bin/python -m bench.time_to_alert [--runs 3]

`radfusion serve` runs as a subprocess with its default stability settings (settle 2 s) and the ICH
baseline; a local webhook records when the alert arrives. Two clocks are reported: from storescu's exit
(the association is released just before) to the webhook's receipt, measured here; and the server's own
record (association release → first successful delivery, the `latency_s` column of the alert).
Target: <= 10 s on the 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from sqlalchemy import select

from ai_engine.synthetic.studies import write_study
from radfusion.models import Alert
from tests.integration.servers import RadfusionServer, routing_to
from tests.peers import storescu, wait_until


class AlertReceiver(BaseHTTPRequestHandler):
    """Records the arrival time of each alert POST."""

    arrivals: list[tuple[float, dict]] = []

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        type(self).arrivals.append((time.perf_counter(), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return


def one_run(scratch: Path, files: list[Path], webhook_port: int, run: int) -> tuple[float, float]:
    AlertReceiver.arrivals = []
    server = RadfusionServer(
        scratch / f"run-{run}", log_level="WARNING",
        stability={"settle_s": 2.0, "quiet_timeout_s": 120.0, "check_interval_s": 0.5},
        alerts={"channels": [{"name": "ed", "url": f"http://127.0.0.1:{webhook_port}/alert"}]},
        routing=routing_to(alert_channels=["ed"]),
    )
    server.start()
    try:
        result = storescu(server.port, files)
        released = time.perf_counter()
        if result.returncode != 0:
            raise SystemExit(f"storescu failed: {result.stderr[-2000:]}")
        wait_until(lambda: AlertReceiver.arrivals, timeout=120, interval=0.01, what="the alert")
        measured = AlertReceiver.arrivals[0][0] - released

        def recorded_latency() -> float | None:
            with server.db.session() as session:
                return session.scalar(select(Alert.latency_s))

        return measured, wait_until(recorded_latency, timeout=10, what="the alert's latency row")
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    webhook = ThreadingHTTPServer(("127.0.0.1", 0), AlertReceiver)
    threading.Thread(target=webhook.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory(prefix="radfusion-bench-") as tmp:
        scratch = Path(tmp)
        files = write_study("head_ct", scratch / "study", seed=7, lesion=True, rows=512, slices=40).paths
        print(f"head CT 40 x 512x512 with a bleed; settle_s 2.0; {args.runs} run(s)")
        runs = [one_run(scratch, files, webhook.server_port, i) for i in range(args.runs)]
        for i, (measured, recorded) in enumerate(runs):
            print(f"  run {i}: storescu exit -> webhook {measured:.2f} s; server's release -> delivery {recorded:.2f} s")
        median = statistics.median(m for m, _ in runs)
        print(f"median time to alert {median:.2f} s (target <= 10 s; ratio to target {median / 10:.2f})")
    webhook.shutdown()


if __name__ == "__main__":
    main()
