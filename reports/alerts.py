"""Urgent intracranial-hemorrhage alert: the JSON payload and the webhook channel.

The payload carries study UID and accession number, never patient name or ID, so it can
travel over channels that are not cleared for PHI. Each ``send`` is one attempt; the
application keeps delivery rows and decides on retries.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import httpx

from ai_engine.results import DetectorResult, Task
from hl7_fhir.fhir_client import retry_after_s
from reports.algorithm import DISCLAIMER
from reports.errors import ReportsError


class AlertDeliveryError(ReportsError):
    """An alert channel could not deliver a payload (non-2xx answer or no connection)."""

    def __init__(self, channel: str, reason: str, status: int | None = None,
                 retry_after_s: float | None = None) -> None:
        super().__init__(f"alert channel {channel!r} did not deliver: {reason}")
        self.channel = channel
        self.reason = reason
        self.status = status  # the HTTP status of the answer; None when there was none
        self.retry_after_s = retry_after_s  # what its Retry-After asked for, if it said


@dataclass(frozen=True)
class AlertFinding:
    """One hemorrhage finding as it appears in an alert."""

    type: str
    location: str
    volume_ml: float | None
    score: float
    subtype: str | None


@dataclass(frozen=True)
class IchAlert:
    """What emergency staff are told about a study with suspected hemorrhage."""

    study_instance_uid: str
    series_instance_uid: str  # the series the hemorrhage was read on (a study has several reconstructions)
    accession_number: str
    acquisition_datetime: str | None
    job_id: str
    created_at: str
    case_score: float
    total_volume_ml: float
    findings: list[AlertFinding]
    algorithm: dict[str, str]
    disclaimer: str = DISCLAIMER
    kind: str = "ich_alert"


def build_ich_alert(result: DetectorResult, *, study_instance_uid: str, series_instance_uid: str,
                    accession_number: str,
                    acquisition_datetime: datetime.datetime | None, job_id: str,
                    created_at: datetime.datetime) -> dict[str, object]:
    """JSON-ready alert payload for an ICH result (no patient name or ID)."""
    if result.task is not Task.ICH:
        raise ReportsError(f"build_ich_alert: result task must be {Task.ICH.value!r}, got {result.task.value!r}")
    findings = [
        AlertFinding(
            type=f.finding_type.value,
            location=f.location,
            volume_ml=None if f.volume_ml is None else round(float(f.volume_ml), 2),
            score=round(float(f.score), 3),
            subtype=f.attributes.get("subtype"),
        )
        for f in result.findings
    ]
    alert = IchAlert(
        study_instance_uid=study_instance_uid,
        series_instance_uid=series_instance_uid,
        accession_number=accession_number,
        acquisition_datetime=None if acquisition_datetime is None else acquisition_datetime.isoformat(),
        job_id=job_id,
        created_at=created_at.isoformat(),
        case_score=round(float(result.case_score), 3),
        total_volume_ml=round(sum(float(f.volume_ml or 0.0) for f in result.findings), 2),
        findings=findings,
        algorithm={
            "name": result.algorithm.name,
            "version": result.algorithm.version,
            "kind": result.algorithm.kind,
            "device_uid": result.algorithm.device_uid,
        },
    )
    return asdict(alert)


class WebhookChannel:
    """Delivers alert payloads as JSON POSTs to one URL."""

    def __init__(self, url: str, timeout_s: float = 10.0, headers: Mapping[str, str] | None = None) -> None:
        if not url.startswith(("http://", "https://")):
            raise ReportsError(f"webhook url must start with http:// or https://, got {url!r}")
        if timeout_s <= 0:
            raise ReportsError(f"webhook {url!r}: timeout_s must be positive, got {timeout_s}")
        self.url = url
        self.timeout_s = timeout_s
        self.headers = dict(headers or {})

    @property
    def name(self) -> str:
        """How logs, errors and ``radfusion status`` name this channel: its scheme, host and port only (a webhook's
        query or path may hold its key, as a chat service's URL does)."""
        url = httpx.URL(self.url)
        return f"webhook {url.scheme}://{url.host}{'' if url.port is None else f':{url.port}'}"

    def send(self, payload: Mapping[str, object]) -> None:
        """POST ``payload`` once; raise AlertDeliveryError unless the answer is 2xx."""
        try:
            response = httpx.post(self.url, json=payload, headers=self.headers, timeout=self.timeout_s)
        except httpx.HTTPError as exc:
            raise AlertDeliveryError(self.name, f"{type(exc).__name__}: {exc}") from exc
        if not response.is_success:  # a redirect is not followed: the payload names a patient
            moved = "; a redirect is not followed: set the channel's url to the receiver itself" \
                if response.is_redirect else ""
            raise AlertDeliveryError(self.name, f"HTTP {response.status_code} {response.reason_phrase}{moved}",
                                     response.status_code, retry_after_s(response.headers))
