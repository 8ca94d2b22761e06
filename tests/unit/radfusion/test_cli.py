"""The command line as an IT person uses it: config check, echo, status, requeue."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from radfusion.cli import main
from radfusion.db import Database
from radfusion.models import Alert, AuditEvent, Delivery, Instance, Job, Series, Study, utcnow
from radfusion.schema import head_revision
from radfusion.settings import load_settings
from radfusion.status import RECENT
from tests.peers import free_port, storescp


def write_config(tmp_path: Path, **values: object) -> Path:
    config = tmp_path / "radfusion.yaml"
    config.write_text(yaml.safe_dump({"storage_path": str(tmp_path / "data"), **values}))
    return config


def test_config_errors_name_the_key_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, dicom={"port": "eleven"})
    assert main(["--config", str(config), "config"]) == 2
    err = capsys.readouterr().err
    assert "radfusion: invalid configuration" in err and "dicom.port: Input should be a valid integer" in err


def test_config_refuses_routing_that_serve_would_refuse(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, routing=[{"name": "r", "match": {"Modality": "/[/"}, "detectors": ["ich_fusion"]}])
    assert main(["--config", str(config), "config"]) == 2  # before: 0, and then serve refused to start
    assert "routing[0] (r).match: match.Modality: bad regex '['" in capsys.readouterr().err
    config = write_config(tmp_path, routing=[{"name": "r", "match": {"Modality": "CT"}, "detectors": ["ich_fusoin"]}])
    assert main(["--config", str(config), "config"]) == 2
    assert "unknown detector 'ich_fusoin'" in capsys.readouterr().err


def test_tls_destination_needs_a_ca_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, destinations=[{"name": "pacs", "ae_title": "PACS", "host": "h", "port": 104,
                                                   "tls": True}])
    assert main(["--config", str(config), "config"]) == 2
    assert "destinations[0].tls needs dicom.tls.ca_file" in capsys.readouterr().err


def test_config_prints_the_effective_configuration(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RADFUSION_WORKERS", "5")
    assert main(["--config", str(write_config(tmp_path)), "config"]) == 0
    effective = json.loads(capsys.readouterr().out)
    assert effective["workers"] == 5 and effective["dicom"]["ae_title"] == "RADFUSION"


def test_config_masks_the_secrets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """What IT pastes into a ticket: before, the database password, the FHIR token and the webhook's Authorization
    header were printed in clear."""
    config = write_config(
        tmp_path, database_url="postgresql+psycopg://radfusion:S3cretPW@db/radfusion?sslpassword=S3cretSSL",
        clinical={"fhir": {"base_url": "https://emr/fhir", "auth": {"kind": "bearer", "token": "tok-123"}}},
        alerts={"channels": [{"name": "ed", "url": "https://ops:S3cretBasic@pager/hook?key=S3cretKey",
                              "headers": {"Authorization": "Bearer hdr-9"}}]})
    assert main(["--config", str(config), "config"]) == 0
    text = capsys.readouterr().out
    assert not any(secret in text for secret in ("S3cretPW", "S3cretSSL", "tok-123", "hdr-9", "S3cretBasic",
                                                 "S3cretKey"))
    effective = json.loads(text)
    assert effective["database_url"] == "postgresql+psycopg://radfusion:***@db/radfusion?sslpassword=***"
    assert effective["alerts"]["channels"][0]["url"] == "https://ops:***@pager/hook?key=***"
    assert effective["clinical"]["fhir"]["auth"]["token"] == "***"
    assert effective["alerts"]["channels"][0]["headers"] == {"Authorization": "***"}
    assert effective["clinical"]["fhir"]["auth"]["client_secret"] is None  # unset stays visibly unset


def test_a_refused_configuration_value_shows_no_secret(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A mistyped header or token was quoted in the error: 'got ['Bearer', 'SUPERSECRETHOOK']'."""
    config = write_config(
        tmp_path, clinical={"fhir": {"base_url": "https://emr/fhir", "auth": {"kind": "bearer", "token": ["tok-123"]}}},
        alerts={"channels": [{"name": "ed", "url": "https://pager/hook", "headers": {"Authorization": ["Bearer",
                                                                                                   "hdr-9"]}}]},
        hl7_destinations=[{"name": "ris", "host": "ris", "port": 2575, "receiving_application": ["app", "x-9"]}])
    assert main(["--config", str(config), "config"]) == 2
    err = capsys.readouterr().err
    assert "clinical.fhir.auth.token: Input should be a valid string (got ***)" in err
    assert "headers.Authorization: Input should be a valid string (got ***)" in err
    assert "receiving_application: Input should be a valid string (got a list)" in err
    assert not any(secret in err for secret in ("tok-123", "hdr-9", "x-9"))


def test_a_database_that_cannot_be_reached_is_one_clear_line(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """status, requeue and reprocess printed a 120-line traceback."""
    config = write_config(tmp_path, database_url="postgresql+psycopg://radfusion:S3cret@127.0.0.1:1/radfusion")
    assert main(["--config", str(config), "status"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("radfusion: the database cannot be used: OperationalError: ") and "Traceback" not in err
    assert "S3cret" not in err


@pytest.mark.peers
def test_echo_a_destination(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with storescp(tmp_path / "sink", ae_title="PACS") as port:
        config = write_config(tmp_path, destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1",
                                                       "port": port}])
        assert main(["--config", str(config), "echo", "pacs"]) == 0
    assert "C-ECHO pacs (PACS@127.0.0.1:" in capsys.readouterr().out


def test_echo_failures_are_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1",
                                                   "port": free_port()}])
    assert main(["--config", str(config), "echo", "pacs"]) == 2
    assert "pacs" in capsys.readouterr().err
    assert main(["--config", str(config), "echo", "ris"]) == 2
    assert "no destination named 'ris' (destinations: pacs)" in capsys.readouterr().err
    config = write_config(tmp_path, destinations=[{"name": "pacs", "ae_title": "PACS", "host": "pacs-host.invalid",
                                                   "port": 104}])
    assert main(["--config", str(config), "echo", "pacs"]) == 2  # before: a socket.gaierror traceback
    assert "PACS@pacs-host.invalid:104" in capsys.readouterr().err


def test_operator_commands_do_not_create_a_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Run in the wrong folder (or with the wrong config), status made an empty database and reported nothing
    wrong: no jobs, no failures."""
    config = write_config(tmp_path)
    for command in (["status"], ["requeue", "--all-failed"], ["reprocess", "1.2.3"]):
        assert main(["--config", str(config), *command]) == 2
        assert f"no database at {tmp_path / 'data' / 'radfusion.db'}: radfusion serve has not run" in (
            capsys.readouterr().err)
    assert not (tmp_path / "data").exists()


def test_operator_commands_do_not_migrate_the_server_s_database(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A newer radfusion's status beside an older running server would have migrated the schema under it."""
    config = write_config(tmp_path)
    db = Database(load_settings(config).effective_database_url)
    with db.connection() as connection:
        connection.exec_driver_sql("UPDATE radfusion_alembic_version SET version_num = '0002'")
    assert main(["--config", str(config), "status"]) == 2
    assert (f"is at schema revision 0002 and this radfusion reads revision {head_revision()}: start"
            in capsys.readouterr().err)
    with db.connection() as connection:
        assert connection.exec_driver_sql("SELECT version_num FROM radfusion_alembic_version").scalar() == "0002"


def test_status_on_a_fresh_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    Database(load_settings(config).effective_database_url)  # the server made it
    assert main(["--config", str(config), "status"]) == 0
    text = capsys.readouterr().out
    assert "jobs queued: 0" in text and "pending deliveries:" in text
    assert "images stored: 0 instances, 0.0 MB   free disk: " in text and "MB" in text.split("free disk: ")[1]
    assert main(["--config", str(config), "status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert (status["deliveries_pending"], status["instances_stored"], status["bytes_stored"]) == (0, 0, 0)
    assert status["disk_free_bytes"] > 0


def test_train_and_evaluate_hand_their_arguments_to_the_model_tooling(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["evaluate", "--help"])
    assert done.value.code == 0
    assert "{ich,mammo,nodule}" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["status", "--epochs", "3"])
    assert "unrecognized arguments: --epochs 3" in capsys.readouterr().err


def test_status_lists_failed_deliveries_and_requeue_puts_them_back(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    db = Database(load_settings(config).effective_database_url)
    with db.session() as session:
        session.add(Delivery(kind="webhook", target="ed", state="failed", attempts=1,
                             last_error="AlertDeliveryError: HTTP 400 Bad Request"))
    assert main(["--config", str(config), "status"]) == 0
    text = capsys.readouterr().out
    assert "deliveries pending: 0   failed: 1 (and 0 acknowledged)" in text
    assert "HTTP 400 Bad Request" in text.split("failed deliveries (")[1]
    assert main(["--config", str(config), "requeue"]) == 2
    assert "delivery ids (see radfusion status) or --all-failed" in capsys.readouterr().err
    assert main(["--config", str(config), "requeue", "1"]) == 0
    assert "requeued 1 deliveries: 1" in capsys.readouterr().out
    assert main(["--config", str(config), "requeue", "--all-failed"]) == 0
    assert "requeued 0 deliveries: none" in capsys.readouterr().out
    assert main(["--config", str(config), "status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert (status["deliveries_pending"], status["deliveries_failed"]) == (1, 0)


def test_status_lists_the_longest_waiting_pending_deliveries_and_the_latest_failed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    db = Database(load_settings(config).effective_database_url)
    each = RECENT + 2  # more than are listed: pending ids 1, 3, 5 ..., failed ids 2, 4, 6 ...
    with db.session() as session:
        session.add_all([Delivery(kind="webhook", target="ed", state=state) for state in ("pending", "failed") * each])
    assert main(["--config", str(config), "status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert (status["deliveries_pending"], status["deliveries_failed"]) == (each, each)
    assert [d["id"] for d in status["pending_deliveries"]] == [1 + 2 * i for i in range(RECENT)]
    assert [d["id"] for d in status["failed_deliveries"]] == [2 * (each - i) for i in range(RECENT)]


def test_status_counts_a_failed_job_that_ran_again_apart(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before, a job that failed (a missing slice) and succeeded when the series was sent again counted as failed
    for ever."""
    config = write_config(tmp_path)
    db = Database(load_settings(config).effective_database_url)
    with db.session() as session:
        study = Study(study_uid="1.2.3")
        head, chest = Series(study=study, series_uid="1.2.3.1"), Series(study=study, series_uid="1.2.3.2")
        session.add_all([study, head, chest])
        session.flush()
        for series, detector, revision, state in ((head, "ich_fusion", 0, "failed"), (head, "ich_fusion", 1, "done"),
                                                  (head, "ich_baseline", 0, "failed"), (chest, "nodule_fusion", 0,
                                                                                         "failed")):
            session.add(Job(study_id=study.id, series_id=series.id, detector=detector, model_version="1",
                            revision=revision, rule="r", state=state))
    assert main(["--config", str(config), "status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert (status["jobs_failed"], status["jobs_failed_since_rerun"]) == (2, 1)
    assert main(["--config", str(config), "status"]) == 0
    assert "failed: 2 (and 1 run again since, 0 acknowledged)" in capsys.readouterr().out


def test_status_check_names_what_needs_someone_until_it_is_acknowledged(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """status exited 0 with failed jobs and deliveries, so a monitoring system could not watch it; and a failure
    whose cause cannot be fixed (a study purged before it was read again) could not be cleared."""
    config = write_config(tmp_path)
    db = Database(load_settings(config).effective_database_url)
    assert main(["--config", str(config), "status", "--check"]) == 0
    assert capsys.readouterr().out.strip() == "OK"
    with db.session() as session:
        study = Study(study_uid="1.2.3")
        series = Series(study=study, series_uid="1.2.3.1",
                        attributes={"SeriesNumber": 3, "SeriesDescription": "Bone 1.0 H70h"})
        session.add_all([study, series])
        session.flush()
        job = Job(study_id=study.id, series_id=series.id, detector="ich_fusion", model_version="1", rule="r",
                  state="failed", error="ValueError: 3 slices")
        session.add(job)
        session.flush()
        alert = Alert(job_id=job.id, payload={}, created_at=utcnow() - timedelta(minutes=5))
        session.add(alert)
        session.flush()
        session.add_all([Delivery(kind="webhook", target="ed", state="failed", last_error="HTTP 400"),
                         Delivery(kind="webhook", target="pager", state="pending", alert_id=alert.id)])
    assert main(["--config", str(config), "status", "--check"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[1].split()[0] for line in lines] == ["1", "1", "1"]
    assert "alert(s) not delivered 60 s" in lines[0] and "failed job(s)" in lines[1] and "deliveries" in lines[2]
    assert main(["--config", str(config), "status"]) == 0  # which series failed: IT tells a bone kernel at a glance
    assert "#1     ich_fusion       accession -            series 3 'Bone 1.0 H70h'  study 1.2.3  ValueError: 3 " \
           "slices" in capsys.readouterr().out
    with db.session() as session:  # a mammography job reads the study's views, whatever series its row names
        session.add(Job(study_id=1, series_id=1, detector="mammo_fusion", model_version="1", rule="r",
                        state="failed", error="no view"))
    assert main(["--config", str(config), "status"]) == 0
    assert "mammo_fusion     accession -            all series  study 1.2.3  no view" in capsys.readouterr().out
    with db.session() as session:
        session.get(Series, 1).attributes = {"SeriesNumber": 0}
        session.delete(session.get(Job, 2))
    assert main(["--config", str(config), "status"]) == 0
    assert "ich_fusion       accession -            series 0  study 1.2.3" in capsys.readouterr().out
    assert main(["--config", str(config), "acknowledge", "--job", "1", "--delivery", "2", "--reason", "x"]) == 2
    assert "not failed (unknown, or not failed): delivery 2; nothing acknowledged" in capsys.readouterr().err
    assert main(["--config", str(config), "acknowledge", "--job", "1", "--reason", " "]) == 2
    assert "--reason" in capsys.readouterr().err
    assert main(["--config", str(config), "acknowledge", "--job", "1", "--delivery", "1", "--reason",
                 "study purged before it could be sent again"]) == 0
    capsys.readouterr()
    assert main(["--config", str(config), "status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert (status["jobs_failed"], status["jobs_failed_acknowledged"]) == (0, 1)
    assert (status["deliveries_failed"], status["deliveries_failed_acknowledged"]) == (0, 1)
    assert len(status["attention"]) == 1 and status["failed_jobs"] == status["failed_deliveries"] == []
    with db.session() as session:
        assert session.scalars(select(AuditEvent.detail).where(AuditEvent.kind == "failure_acknowledged")).all() == [
            "reason: study purged before it could be sent again; its error: ValueError: 3 slices",
            "reason: study purged before it could be sent again; its error: HTTP 400"]
        session.get(Alert, 1).delivered_at = utcnow()
    assert main(["--config", str(config), "status", "--check"]) == 0
    assert main(["--config", str(config), "requeue", "1"]) == 0  # sent again: a new failure is not acknowledged
    with db.session() as session:
        session.get(Delivery, 1).state = "failed"
    capsys.readouterr()
    assert main(["--config", str(config), "status", "--check"]) == 1
    assert "1 failed deliveries" in capsys.readouterr().out


def test_status_shows_how_long_a_running_job_has_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    db = Database(load_settings(config).effective_database_url)
    with db.session() as session:
        study = Study(study_uid="1.2.3")
        series = Series(study=study, series_uid="1.2.3.1")
        session.add_all([study, series])
        session.flush()
        for state in ("running", "queued"):  # the queued one was requeued after a crash: it has a start time
            session.add(Job(study_id=study.id, series_id=series.id, detector=f"{state}_det", model_version="1",
                            rule="head", state=state, started_at=utcnow() - timedelta(minutes=30)))
    assert main(["--config", str(config), "status", "--json"]) == 0
    queued, running = json.loads(capsys.readouterr().out)["recent_jobs"]
    assert running["state"] == "running" and 1800 <= running["seconds"] < 1900  # a hung job shows its growing time
    assert queued["state"] == "queued" and queued["seconds"] is None


def test_reprocess_finds_studies_by_accession_number_and_names_unknown_or_shared_ones(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    db = Database(load_settings(config).effective_database_url)
    with db.session() as session:
        for uid, accession in (("1.2.1", "A100"), ("1.2.2", "A200"), ("1.2.3", "A200")):
            study = Study(study_uid=uid, accession_number=accession, state="done")
            series = Series(study=study, series_uid=f"{uid}.1", instance_count=1)
            session.add_all([study, series, Instance(series=series, sop_instance_uid=f"{uid}.1.1", sop_class_uid="1.2",
                                                     transfer_syntax_uid="1.2", path="x.dcm", size_bytes=1)])
    assert main(["--config", str(config), "reprocess"]) == 2
    assert "needs Study Instance UIDs or --accession numbers" in capsys.readouterr().err
    assert main(["--config", str(config), "reprocess", "--accession", "A999", "--accession", "A200"]) == 2
    assert ("accession 'A999': no study; accession 'A200': names 1.2.2, 1.2.3"
            in capsys.readouterr().err)  # and nothing was re-opened
    assert main(["--config", str(config), "reprocess", "--accession", "A100", "1.2.3"]) == 0
    assert "re-opened 2 studies: 1.2.3, 1.2.1" in capsys.readouterr().out
    with db.session() as session:
        assert dict(session.execute(select(Study.study_uid, Study.state)).all()) == {
            "1.2.1": "receiving", "1.2.2": "done", "1.2.3": "receiving"}
