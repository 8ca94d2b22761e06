"""ICH alert: payload without patient identity; webhook delivers once or names the failure."""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator
from http.server import ThreadingHTTPServer

import pytest

from ai_engine.results import DetectorResult, Task
from reports.alerts import AlertDeliveryError, WebhookChannel, build_ich_alert
from reports.errors import ReportsError
from tests.peers import free_port, webhook_receiver
from tests.unit.reports.report_checks import ich_result

CREATED = datetime.datetime(2026, 11, 20, 10, 31, tzinfo=datetime.UTC)
ACQUIRED = datetime.datetime(2026, 11, 20, 10, 16, tzinfo=datetime.UTC)


def _payload(head_ct, algorithm) -> dict[str, object]:
    return build_ich_alert(ich_result(algorithm, head_ct), study_instance_uid=head_ct[0].StudyInstanceUID,
                           series_instance_uid=head_ct[0].SeriesInstanceUID,
                           accession_number=head_ct[0].AccessionNumber, acquisition_datetime=ACQUIRED,
                           job_id="job-17", created_at=CREATED)


def test_payload_describes_the_hemorrhage_without_patient_identity(head_ct, algorithm):
    payload = _payload(head_ct, algorithm)
    text = json.dumps(payload)

    assert str(head_ct[0].PatientID) not in text
    for part in str(head_ct[0].PatientName).split("^"):
        assert part not in text
    assert not {"patient_id", "patient_name", "PatientID", "PatientName"} & set(payload)
    assert payload["study_instance_uid"] == head_ct[0].StudyInstanceUID
    assert payload["series_instance_uid"] == head_ct[0].SeriesInstanceUID  # which reconstruction (not its free-text
    # description, which an operator may have typed anything into)
    assert payload["accession_number"] == head_ct[0].AccessionNumber
    assert payload["acquisition_datetime"] == "2026-11-20T10:16:00+00:00"
    assert payload["total_volume_ml"] == 1.6
    assert payload["findings"][0] == {"type": "hemorrhage", "location": "left frontal", "volume_ml": 1.2,
                                      "score": 0.93, "subtype": "subdural"}
    assert payload["findings"][1]["subtype"] is None
    assert payload["algorithm"]["kind"] == "classical baseline"
    assert "AI-generated" in payload["disclaimer"] and "radiologist" in payload["disclaimer"]


def test_alert_is_only_for_hemorrhage_results(algorithm):
    nodules = DetectorResult(Task.LUNG_NODULE, algorithm, [], case_score=0.1, positive=False)
    with pytest.raises(ReportsError, match="task must be 'ich', got 'lung_nodule'"):
        build_ich_alert(nodules, study_instance_uid="1.2.3", series_instance_uid="1.2.3.4", accession_number="A1",
                        acquisition_datetime=None,
                        job_id="job-1", created_at=CREATED)


@pytest.fixture()
def receiver() -> Iterator[ThreadingHTTPServer]:
    with webhook_receiver() as server:
        yield server


def test_webhook_delivers_the_json_payload(head_ct, algorithm, receiver):
    payload = _payload(head_ct, algorithm)
    channel = WebhookChannel(f"http://127.0.0.1:{receiver.server_port}/alerts", timeout_s=5,
                             headers={"X-Radfusion-Token": "t0k"})
    channel.send(payload)

    [(headers, body)] = receiver.received
    assert body == payload
    assert headers["X-Radfusion-Token"] == "t0k"
    assert headers["Content-Type"] == "application/json"


def test_webhook_refusal_is_a_delivery_error_with_the_status(head_ct, algorithm, receiver):
    receiver.status = 503
    url = f"http://127.0.0.1:{receiver.server_port}/alerts/T0SECRET?apikey=URLSECRET"  # a key in path and query
    with pytest.raises(AlertDeliveryError, match="503") as caught:
        WebhookChannel(url, timeout_s=5).send(_payload(head_ct, algorithm))
    assert caught.value.channel == f"webhook http://127.0.0.1:{receiver.server_port}"  # logged, stored, shown
    assert "SECRET" not in str(caught.value)
    assert len(receiver.received) == 1  # one attempt: retries belong to the application


def test_closed_port_is_a_delivery_error_naming_the_channel(head_ct, algorithm):
    port = free_port()
    url = f"http://127.0.0.1:{port}/alerts"
    with pytest.raises(AlertDeliveryError, match=f"webhook http://127.0.0.1:{port}.*ConnectError"):
        WebhookChannel(url, timeout_s=2).send(_payload(head_ct, algorithm))


def test_webhook_url_must_be_http():
    with pytest.raises(ReportsError, match="must start with http"):
        WebhookChannel("ftp://example.invalid/x")
