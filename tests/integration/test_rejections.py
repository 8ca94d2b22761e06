"""Bad input through `radfusion serve`: a clear answer, nothing lost, every rejection in the log and the database."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from ai_engine.synthetic.studies import write_study
from radfusion.models import AuditEvent, Instance, Quarantine
from tests.integration.servers import radfusion_server
from tests.peers import PEER_ENV, require_tool, storescu, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.peers]


def test_unknown_calling_ae_is_rejected_and_recorded(tmp_path: Path) -> None:
    with radfusion_server(tmp_path / "rf") as server:
        echo = subprocess.run([require_tool("echoscu"), "-aet", "INTRUDER", "-aec", "RADFUSION", "127.0.0.1",
                               str(server.port)], capture_output=True, text=True, env=PEER_ENV, timeout=30)
        assert echo.returncode != 0
        assert "Calling AE Title Not Recognized" in echo.stderr + echo.stdout

        def rejections() -> list[str]:
            with server.db.session() as session:
                query = select(AuditEvent.subject).where(AuditEvent.kind == "association_rejected")
                return list(session.scalars(query))

        # the server records the rejection after the A-ASSOCIATE-RJ has gone out, so echoscu can exit first
        assert wait_until(rejections, timeout=10, what="rejection audited") == ["INTRUDER->RADFUSION"]
        assert "INTRUDER" in server.log()


def test_a_known_calling_ae_from_a_foreign_address_is_aborted_and_recorded(tmp_path: Path) -> None:
    study = write_study("head_ct", tmp_path / "in", seed=22, lesion=False, rows=64, slices=8)
    with radfusion_server(tmp_path / "rf", dicom={"calling_ae_hosts": {"STORESCU": ["192.0.2.10"]}}) as server:
        sent = storescu(server.port, study.paths)  # STORESCU, but from loopback, not from its CT's address
        assert sent.returncode != 0

        def refusals() -> list[str]:
            with server.db.session() as session:
                return list(session.scalars(select(AuditEvent.detail).where(AuditEvent.kind == "association_rejected")))

        [detail] = wait_until(refusals, timeout=10, what="refusal audited")
        assert "calling AE title 'STORESCU' is not allowed from 127.0.0.1" in detail
        with server.db.session() as session:
            assert session.scalars(select(Instance)).all() == []


def test_malformed_and_path_climbing_instances_are_quarantined_and_the_rest_stored(tmp_path: Path) -> None:
    study = write_study("head_ct", tmp_path / "in", seed=21, lesion=False, rows=128, slices=8)
    no_study = pydicom.dcmread(study.paths[0])
    del no_study.StudyInstanceUID
    no_study.SOPInstanceUID = "1.2.3.4.5.6.7"
    no_study.save_as(tmp_path / "no-study.dcm", enforce_file_format=True)
    climbing = pydicom.dcmread(study.paths[1])
    climbing.SOPInstanceUID = "1.2.3/../../../../../tmp/radfusion-escape"
    climbing.file_meta.MediaStorageSOPInstanceUID = climbing.SOPInstanceUID
    climbing.save_as(tmp_path / "climbing.dcm", enforce_file_format=True)
    outside_before = sorted(p.name for p in Path("/tmp").iterdir())

    with radfusion_server(tmp_path / "rf") as server:
        sent = storescu(server.port, [tmp_path / "no-study.dcm", tmp_path / "climbing.dcm", study.paths[2]],
                        extra=["--no-halt", "-v"])
        responses = [line for line in (sent.stdout + sent.stderr).splitlines() if "Received Store Response" in line]
        assert len(responses) == 3, sent.stdout + sent.stderr
        assert ["Success" in r for r in responses] == [False, False, True]
        with server.db.session() as session:
            stored = session.scalars(select(Instance.sop_instance_uid)).all()
            quarantined = session.scalars(select(Quarantine).order_by(Quarantine.id)).all()
        assert stored == [pydicom.dcmread(study.paths[2]).SOPInstanceUID]
        assert len(quarantined) == 2
        assert "StudyInstanceUID" in quarantined[0].reason
        assert "not a valid DICOM UID" in quarantined[1].reason
        for row in quarantined:
            assert Path(row.path).is_file() and Path(row.path).parent == tmp_path / "rf" / "data" / "quarantine"
        assert "1.2.3/../" not in "".join(str(p) for p in (tmp_path / "rf" / "data").rglob("*"))
    assert sorted(p.name for p in Path("/tmp").iterdir() if p.name.startswith("radfusion-escape")) == []
    assert "radfusion-escape" not in outside_before
