"""Fixtures for hl7_fhir tests: the FHIR peer seeded with one patient's record."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fhir_peer.fixture import fhir_peer


@pytest.fixture(scope="module")
def peer_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A FHIR peer (Medplum router, in-memory) for the module's tests."""
    with fhir_peer(Path(tmp_path_factory.mktemp("fhir-peer"))) as url:
        yield url
