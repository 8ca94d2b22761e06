"""What `radfusion serve` tells IT at start-up: every detector it serves, with the version and Device UID a PACS
shows on its results."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

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
