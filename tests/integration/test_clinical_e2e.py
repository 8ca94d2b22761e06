"""Clinical data end to end: HL7 labs and FHIR record in, a head CT through storescu, reports and alerts out."""

from __future__ import annotations

import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pydicom
import pytest
from hl7apy.parser import parse_message
from sqlalchemy import select

from ai_engine.synthetic.studies import write_study
from hl7_fhir.hl7v2 import build_ack, read_header
from hl7_fhir.mllp import MllpReply, MllpServer
from radfusion.models import Alert, Delivery, Job
from tests.fhir_peer.fixture import fhir_peer, seed
from tests.integration.servers import radfusion_server, routing_to
from tests.peers import free_port, mllp_send, require_tool, storescp, storescu

pytestmark = [pytest.mark.slow, pytest.mark.peers]

SYSTEM = "urn:oid:1.2.840.99999.7"
MRN = "E2E0001"
ISSUER = "RADFUSION-SYNTHETIC"  # IssuerOfPatientID the synthetic studies carry


def hl7_messages(now: datetime) -> str:
    """ADT^A01 then ORU^R01 (INR, platelets) for the patient, as an interface engine would send them."""
    ts = (now - timedelta(hours=1)).strftime("%Y%m%d%H%M%S")
    return (
        f"MSH|^~\\&|ADT|HOSP|RADFUSION|RAD|{ts}||ADT^A01|E2EADT1|P|2.5.1\r"
        f"EVN|A01|{ts}\r"
        f"PID|1||{MRN}^^^{ISSUER}^MR||Synthetic^Patient||19480305|M\r"
        f"MSH|^~\\&|LAB|HOSP|RADFUSION|RAD|{ts}||ORU^R01^ORU_R01|E2EORU1|P|2.5.1\r"
        f"PID|1||{MRN}^^^{ISSUER}^MR||Synthetic^Patient||19480305|M\r"
        f"OBR|1|PL1|FL1|34528-0^Coagulation panel^LN|||{ts}\r"
        f"OBX|1|NM|6301-6^INR^LN||3.4|{{INR}}|0.8-1.2|H|||F|||{ts}\r"
        f"OBX|2|NM|777-3^Platelets^LN||88|10*3/uL|150-400|L|||F|||{ts}\r"
    )


class Hl7Sink:
    """The RIS/EMR interface receiving our ORUs: acknowledges and keeps each message."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def handle(self, text: str) -> MllpReply:
        self.messages.append(text)
        return MllpReply(build_ack(read_header(text), "AA", "received"))


def test_labs_from_hl7_and_fhir_reach_the_job_and_the_reports(tmp_path: Path) -> None:
    now = datetime.now(timezone.utc)
    sink = Hl7Sink()
    ris = MllpServer("127.0.0.1", 0, sink.handle)
    ris_port = ris.start()
    study = write_study("head_ct", tmp_path / "in", seed=31, lesion=True, rows=256, slices=24, patient_id=MRN,
                        performed_at=now - timedelta(minutes=30))  # labs an hour before it count
    with fhir_peer(tmp_path) as fhir_url, storescp(tmp_path / "pacs", ae_title="PACS") as pacs_port:
        seed(fhir_url, [{"resourceType": "Patient", "identifier": [{"system": SYSTEM, "value": MRN}],
                         "gender": "male", "birthDate": "1948-03-05"}])
        patient_ref = f"Patient/{httpx.get(f'{fhir_url}/Patient', params={'identifier': f'{SYSTEM}|{MRN}'}).json()['entry'][0]['resource']['id']}"
        seed(fhir_url, [{"resourceType": "Observation", "status": "final", "subject": {"reference": patient_ref},
                         "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]},
                         "effectiveDateTime": (now - timedelta(hours=3)).isoformat(),
                         "valueQuantity": {"value": 131, "unit": "g/L"}}])
        hl7_port = free_port()
        routing = routing_to(["pacs"], ["ed-fhir", "ed-hl7"])
        for rule in routing:
            rule["report_destinations"] = ["emr", "ris"]
        with radfusion_server(
            tmp_path / "rf", routing=routing,
            destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port}],
            hl7={"listen": True, "bind_address": "127.0.0.1", "port": hl7_port, "sending_facility": "RAD"},
            clinical={"fhir": {"base_url": fhir_url}, "identifier_systems": {ISSUER: SYSTEM}},
            fhir_destinations=[{"name": "emr", "base_url": fhir_url}],
            hl7_destinations=[{"name": "ris", "host": "127.0.0.1", "port": ris_port, "receiving_application": "RIS"}],
            alerts={"channels": [{"name": "ed-fhir", "kind": "fhir", "destination": "emr"},
                                 {"name": "ed-hl7", "kind": "hl7", "destination": "ris"}]},
        ) as server:
            messages = tmp_path / "adt-oru.hl7"
            messages.write_text(hl7_messages(now))
            acks = [m.split("|")[1:3] for m in mllp_send(hl7_port, messages)]
            assert acks == [["AA", "E2EADT1"], ["AA", "E2EORU1"]]

            assert storescu(server.port, study.paths).returncode == 0
            server.wait_idle(studies=1)
            with server.db.session() as session:
                job = session.scalars(select(Job)).one()
                context = job.clinical_context
                findings = job.result["findings"]
                kinds = sorted(session.scalars(select(Delivery.kind)).all())
                alert = session.scalars(select(Alert)).one()

            assert context["status"] == "complete", context
            assert context["labs"]["inr"]["value"] == 3.4 and context["labs"]["inr"]["provenance"]["source"] == "hl7"
            assert context["labs"]["platelets"]["value"] == 88 and context["labs"]["platelets"]["unit"] == "10*9/L"
            assert context["labs"]["hemoglobin"]["provenance"]["source"] == "fhir"
            assert context["labs"]["hemoglobin"]["value"] == pytest.approx(13.1)
            assert context["sex"] == "male" and context["age_years"] > 75
            assert kinds == ["dicom", "dicom", "dicom", "fhir_alert", "fhir_report", "hl7_alert", "hl7_report"]
            assert alert.delivered_at is not None
            assert job.detector == "ich_fusion" and any(f["attributes"]["subtype"] == "intraparenchymal"
                                                        for f in findings)
        # The EMR can find the DiagnosticReport and the Communication again.
        reports = httpx.get(f"{fhir_url}/DiagnosticReport").json().get("entry", [])
        communications = httpx.get(f"{fhir_url}/Communication").json().get("entry", [])
        assert len(reports) == 1 and "hemorrhage" in reports[0]["resource"]["conclusion"].lower()
        assert len(reports[0]["resource"]["result"]) == len(findings)  # one Observation per finding
        assert len(communications) == 1 and communications[0]["resource"]["priority"] == "stat"

    # The SR in the PACS shows the labs it was given.
    sr = next(p for p in (tmp_path / "pacs").glob("*.dcm") if pydicom.dcmread(p).Modality == "SR")
    dump = subprocess.run([require_tool("dsrdump"), str(sr)], capture_output=True, text=True, check=True).stdout
    assert "inr" in dump.lower() and "3.4" in dump and "platelets" in dump.lower()
    # The RIS got a result ORU and a critical-result ORU, both parse back.
    ris.stop()
    results = [parse_message(m.replace("\n", "\r"), find_groups=False) for m in sink.messages]
    assert sorted(m.msh.msh_10.value.split("-")[0] for m in results) == [f"RF{job.id}A1", f"RF{job.id}R1"]
    assert {m.pid.pid_5.to_er7() for m in results} == {"SYNTHETIC^PHANTOM31^^^^^L"}  # the images' Patient Name
    critical = next(m for m in sink.messages if f"RF{job.id}A1-" in m)
    assert "|AA|" in critical


def test_slow_emr_does_not_delay_the_job_beyond_the_time_budget(tmp_path: Path) -> None:
    study = write_study("head_ct", tmp_path / "in", seed=32, lesion=True, rows=256, slices=24, patient_id=MRN)
    with fhir_peer(tmp_path, delay_ms=15000) as fhir_url, radfusion_server(
        tmp_path / "rf",
        clinical={"fhir": {"base_url": fhir_url, "timeout_s": 30.0}, "time_budget_s": 1.0,
                  "identifier_systems": {ISSUER: SYSTEM}},
    ) as server:
        assert storescu(server.port, study.paths).returncode == 0
        server.wait_idle(studies=1, timeout=60)
        with server.db.session() as session:
            job = session.scalars(select(Job)).one()
        assert job.clinical_context["status"] == "unavailable"
        assert job.clinical_context["errors"] == ["EMR did not answer within 1.0 s"]
        assert job.result["positive"] is True  # the image-only result is still there
        # The job waited at most the rest of the 1 s budget, never for the EMR's answers (15 s each).
        assert (job.finished_at - job.started_at).total_seconds() < 15.0
