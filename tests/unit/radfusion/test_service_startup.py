"""What `radfusion serve` tells IT at start-up: every detector it serves, with the version and Device UID a PACS
shows on its results; and a port it cannot listen on, named by its key."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import pytest

import dicom_node.tls as tls_module

from radfusion.errors import ConfigError
from radfusion.service import Service
from radfusion.settings import default_routing, load_settings


def test_start_up_names_each_detector_with_its_version_and_device_uid(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    settings = load_settings(storage_path=tmp_path / "data",
                             dicom={"bind_address": "127.0.0.1", "port": 0},
                             routing=[r.model_dump(mode="json") for r in default_routing([], [])])
    service = Service(settings)
    with caplog.at_level(logging.INFO, logger="radfusion"):
        service.start()
        service.stop()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("detector ")]
    assert len(lines) == len(service.detectors) == 3
    for name, detector in service.detectors.items():
        algorithm = detector.algorithm
        assert (f"detector {name}: version {algorithm.version}, Device UID {algorithm.device_uid}, {algorithm.kind}; "
                "bundle built in") in lines
    unpaged = [r.getMessage() for r in caplog.records if "nobody is paged" in r.getMessage()]
    assert unpaged == ["routing[0] (head-ct-hemorrhage) runs ich_fusion with no alert_channels: a hemorrhage is "
                       "logged and recorded, nobody is paged"]  # the defaults page no one: IT is told at start-up


def test_a_port_already_in_use_is_named_by_its_key(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        service = Service(load_settings(storage_path=tmp_path / "data",
                                        dicom={"bind_address": "127.0.0.1", "port": port}))
        try:
            with pytest.raises(ConfigError, match=rf"dicom\.bind_address '127\.0\.0\.1' / dicom\.port {port}: "
                                                  "cannot listen there: Address already in use"):
                service.start()  # before: an OSError traceback
        finally:
            service.stop()


def test_key_material_the_service_cannot_load_is_named_by_its_key(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The config check skips what the user running it may not read; the service itself must then say which key it
    cannot load (review finding: it was reported as a port that could not be listened on)."""
    for name in ("cert.pem", "key.pem"):
        (tmp_path / name).write_text("not PEM")
    monkeypatch.setattr(tls_module, "_readable", lambda *paths: False)  # as an operator would see them
    settings = load_settings(storage_path=tmp_path / "data", dicom={"tls": {
        "enabled": True, "cert_file": str(tmp_path / "cert.pem"), "key_file": str(tmp_path / "key.pem"),
        "require_client_cert": False}})
    with pytest.raises(ConfigError, match=r"dicom\.tls: cert_file '.*cert\.pem' / key_file '.*key\.pem' cannot be "
                                          r"loaded by this process"):
        Service(settings)


def test_the_hl7_message_size_limit_is_a_setting(tmp_path: Path) -> None:
    """It was fixed at 1 MiB in code: an ORU carrying a report PDF was refused, with its INR, and nothing could
    change that."""
    from sqlalchemy import select

    from hl7_fhir.mllp import MllpClient, MllpNegativeAck
    from radfusion.models import AuditEvent
    from tests.unit.hl7_fhir.messages import oru

    message = oru("BIG1").replace("\n", "\r") + "NTE|1||" + "x" * 3000 + "\r"
    for limit, accepted in ((2048, False), (1 << 20, True)):
        service = Service(load_settings(storage_path=tmp_path / f"data{limit}", dicom={"bind_address": "127.0.0.1",
                                                                                       "port": 0},
                                        hl7={"listen": True, "bind_address": "127.0.0.1", "port": 0,
                                             "max_message_bytes": limit}))
        try:
            service.start()
            client = MllpClient("127.0.0.1", service.hl7_port, timeout_s=10)
            try:
                if accepted:
                    assert "MSA|AA|BIG1" in client.send(message)
                else:
                    with pytest.raises(MllpNegativeAck) as refused:
                        client.send(message)
                    assert "exceeds the 2048-byte limit" in refused.value.text
                    with service.db.session() as session:  # audited, as a refusal by the inbox is
                        audit = session.scalars(select(AuditEvent).where(AuditEvent.kind == "hl7_rejected")).one()
                    assert (audit.subject, audit.detail) == ("LAB^HOSP BIG1", "AR: message exceeds the 2048-byte limit")
            finally:
                client.close()
        finally:
            service.stop()


def test_the_charset_of_hl7_messages_without_msh_18_is_a_setting(tmp_path: Path) -> None:
    """Many LIS send 8859/1 and leave MSH-18 empty: every result of a patient with an umlaut was refused (AR),
    and nothing could change that."""
    import socket

    from sqlalchemy import func, select

    from radfusion.models import ClinicalValue
    from tests.unit.hl7_fhir.messages import oru

    message = oru("LAT2").replace("Doe^Jane", "Müller^Jürgen").replace("\n", "\r").encode("latin-1")
    for charset, answer, stored in (("UNICODE UTF-8", "MSA|AR|LAT2", False), ("8859/1", "MSA|AA|LAT2", True)):
        service = Service(load_settings(storage_path=tmp_path / charset.replace("/", "_").replace(" ", "_"),
                                        dicom={"bind_address": "127.0.0.1", "port": 0},
                                        hl7={"listen": True, "bind_address": "127.0.0.1", "port": 0,
                                             "default_charset": charset}))
        try:
            service.start()
            with socket.create_connection(("127.0.0.1", service.hl7_port), timeout=10) as raw:
                raw.sendall(b"\x0b" + message + b"\x1c\r")
                assert answer in raw.recv(4096).decode("latin-1")
            with service.db.session() as session:
                assert bool(session.scalar(select(func.count()).select_from(ClinicalValue))) is stored
        finally:
            service.stop()


def test_a_spool_folder_linked_outside_the_storage_path_is_refused_naming_the_key(tmp_path: Path) -> None:
    """instances/ linked to a larger disk made every store fail as a path escape, answered 0xC214 ('not a valid
    UID'), which a PACS takes as permanent and drops the images."""
    elsewhere = tmp_path / "big-disk"
    elsewhere.mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "instances").symlink_to(elsewhere)
    with pytest.raises(ConfigError, match=r"storage_path: .*instances links to .*big-disk, outside the spool .*: "
                                          r".*point the storage path itself at it"):
        Service(load_settings(storage_path=tmp_path / "data"))
    (tmp_path / "data" / "instances").unlink()
    (tmp_path / "data" / "results").rmdir()
    (tmp_path / "data" / "results").symlink_to(elsewhere)  # results are written in place, never renamed: allowed
    Service(load_settings(storage_path=tmp_path / "data"))


def test_a_second_serve_on_the_same_storage_path_is_refused_before_it_recovers_or_runs_anything(tmp_path: Path) -> None:
    """It recovered first, taking the live server's running jobs and open associations for a dead one's, ran those
    jobs a second time, and only then found the port taken."""
    from sqlalchemy import select

    from radfusion.models import AuditEvent, Job, Series, Study

    settings = load_settings(storage_path=tmp_path / "data", dicom={"bind_address": "127.0.0.1", "port": 0})
    live = Service(settings)
    live.start()
    try:
        with live.db.session() as session:
            series = Series(study=Study(study_uid="1.2.3"), series_uid="1.2.3.1")
            session.add(Job(study=series.study, series=series, detector="ich_fusion", model_version="x", rule="r",
                            state="running"))
        with pytest.raises(ConfigError, match=rf"storage_path: another radfusion serve \(process {os.getpid()}\) "
                                              r"runs on .*data; stop it first"):
            Service(settings)
        with live.db.session() as session:
            assert session.scalars(select(Job.state)).one() == "running"
            assert session.scalars(select(AuditEvent).where(AuditEvent.kind == "recovered")).all() == []
    finally:
        live.stop()
    after = Service(settings)  # the lock went with the live server
    after.start()
    after.stop()


def test_a_second_serve_does_not_open_or_migrate_the_database_of_the_running_one(tmp_path: Path) -> None:
    """The lock was taken only at start, after the database had been opened and migrated: a newer version started
    before the old one was stopped upgraded the schema under the running server."""
    import fcntl

    root = tmp_path / "data"
    root.mkdir(mode=0o700)
    with open(root / "serve.lock", "a+") as held:  # a running serve's lock
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ConfigError, match="another radfusion serve"):
            Service(load_settings(storage_path=root))
    assert not (root / "radfusion.db").exists()
