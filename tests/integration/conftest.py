"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.servers import postgresql


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """The embedded default (None: SQLite under the storage path), and a real PostgreSQL."""
    if request.param == "sqlite":
        yield None
    else:
        with postgresql() as url:
            yield url
