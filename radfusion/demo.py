"""``radfusion demo``: the whole server path on synthetic phantoms, on free loopback ports.

Starts radfusion, a local DICOM sink (standing in for the PACS) and a local webhook (standing
in for the emergency department's alert receiver); sends a head CT with a bleed, a chest CT
with a nodule and a two-view mammogram over C-STORE; waits for the results and prints them.
"""

from __future__ import annotations

import json
import socket
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from sqlalchemy import select

from ai_engine.synthetic.studies import write_study
from dicom_node.contracts import AssociationInfo, RemoteNode, StoredInstance
from dicom_node.scp import ScpConfig, StorageScp
from dicom_node.scu import send_files
from dicom_node.spool import Spool
from radfusion.errors import RadfusionError
from radfusion.logs import configure_logging
from radfusion.models import Alert, Artifact, Delivery, Job, Study
from radfusion.service import Service
from radfusion.settings import default_routing, load_settings

MODALITY_AE = "DEMO-MODALITY"
SINK_AE = "DEMO-PACS"
TIMEOUT_S = 120.0
STUDIES = (("head_ct", "head CT with a hemorrhage"), ("chest_ct", "chest CT with a nodule"),
           ("mammo", "two-view mammogram with a mass"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SinkRecorder:
    """The demo PACS: remembers what arrived (a StoreSink without a database)."""

    def __init__(self) -> None:
        self.received: list[StoredInstance] = []

    def association_opened(self, info: AssociationInfo) -> None: ...

    def association_rejected(self, calling_ae: str, called_ae: str, peer: str, reason: str) -> None: ...

    def association_closed(self, association_id: str, released: bool) -> None: ...

    def instance_rejected(self, association_id, reason, quarantine_path, sop_instance_uid) -> None:  # noqa: ANN001
        raise RadfusionError(f"the demo sink rejected a result: {reason}")

    def instance_stored(self, instance: StoredInstance) -> bool:
        self.received.append(instance)
        return True


class WebhookRecorder(BaseHTTPRequestHandler):
    """The demo alert receiver: keeps every JSON body it is POSTed."""

    payloads: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).payloads.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return


def run_demo(workdir: Path | None, rows: int = 256) -> int:
    """Run the demo; returns 0 when every study produced its results and the alert arrived."""
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="radfusion-demo-") as tmp:
            return _run(Path(tmp), rows)
    return _run(workdir, rows)


def _run(workdir: Path, rows: int) -> int:
    configure_logging("WARNING")
    started = time.monotonic()
    sink = SinkRecorder()
    sink_scp = StorageScp(ScpConfig(ae_title=SINK_AE, bind_address="127.0.0.1", port=0,
                                    allowed_calling_aes=frozenset({"RADFUSION"})), Spool(workdir / "pacs"), sink)
    sink_port = sink_scp.start()
    WebhookRecorder.payloads = []
    webhook = ThreadingHTTPServer(("127.0.0.1", 0), WebhookRecorder)
    threading.Thread(target=webhook.serve_forever, daemon=True).start()
    settings = load_settings(
        storage_path=workdir / "radfusion",
        dicom={"ae_title": "RADFUSION", "bind_address": "127.0.0.1", "port": _free_port(),
               "allowed_calling_aes": [MODALITY_AE], "min_free_disk_mb": 10},
        destinations=[{"name": "pacs", "ae_title": SINK_AE, "host": "127.0.0.1", "port": sink_port}],
        alerts={"channels": [{"name": "ed", "url": f"http://127.0.0.1:{webhook.server_port}/alerts"}]},
        routing=default_routing(destinations=["pacs"], alert_channels=["ed"]),
        stability={"settle_s": 1.0, "check_interval_s": 0.25},
    )
    service = Service(settings)
    port = service.start()
    try:
        node = RemoteNode("radfusion", "RADFUSION", "127.0.0.1", port)
        for index, (kind, label) in enumerate(STUDIES):
            study = write_study(kind, workdir / "inputs" / kind, seed=index, lesion=True, rows=rows)
            send_files(node, study.paths, MODALITY_AE, 60.0)
            print(f"sent {label}: {len(study.paths)} instance(s) over C-STORE")
        ok = _wait_for_results(service, len(STUDIES))
        _print_results(service, sink, workdir)
    finally:
        service.stop()
        sink_scp.stop()
        webhook.shutdown()
    print(f"\ndemo finished in {time.monotonic() - started:.1f} s; files under {workdir}")
    return 0 if ok and WebhookRecorder.payloads else 1


def _wait_for_results(service: Service, studies: int) -> bool:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        with service.db.session() as session:
            done = session.scalars(select(Study.state)).all()
            open_deliveries = session.scalars(select(Delivery.id).where(Delivery.state != "delivered")).all()
        if len(done) == studies and all(s == "done" for s in done) and not open_deliveries:
            return True
        time.sleep(0.2)
    print(f"timed out after {TIMEOUT_S:.0f} s waiting for results")
    return False


def _print_results(service: Service, sink: SinkRecorder, workdir: Path) -> None:
    with service.db.session() as session:
        for job in session.scalars(select(Job).order_by(Job.id)):
            result = job.result or {}
            algo = result.get("algorithm", {})
            print(f"\njob {job.id}: {job.detector} ({algo.get('kind', '?')}) on accession "
                  f"{job.study.accession_number}: {job.state}" + (f" - {job.error}" if job.error else ""))
            for finding in result.get("findings", []):
                sizes = [f"{finding['diameter_mm']:.1f} mm" if finding.get("diameter_mm") is not None else "",
                         f"{finding['volume_ml']:.2f} mL" if finding.get("volume_ml") is not None else ""]
                size = " / ".join(s for s in sizes if s)
                print(f"  {finding['type']:<22} {finding['location']:<36} {size:>18}  score {finding['score']:.2f}")
            for artifact in session.scalars(select(Artifact).where(Artifact.job_id == job.id)):
                print(f"  {artifact.kind.upper():<7} {artifact.path}")
        for alert in session.scalars(select(Alert)):
            latency = f"{alert.latency_s:.2f} s" if alert.latency_s is not None else "not delivered"
            print(f"\nURGENT alert {alert.id} (association release -> webhook: {latency}):")
    for payload in WebhookRecorder.payloads:
        print(json.dumps(payload, indent=2))
    print(f"\nthe demo PACS received {len(sink.received)} result object(s):")
    for instance in sink.received:
        print(f"  {instance.attributes.get('Modality')}  {instance.path.relative_to(workdir)}")
