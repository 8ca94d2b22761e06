"""The schema is built and upgraded by migrations: models and migrations agree, a 0.1.0 database is adopted with its
rows, and a database this version cannot understand is refused by name before anything is written."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, select, text

from radfusion.db import Database, make_engine
from radfusion.models import AuditEvent, Base
from radfusion.schema import BASELINE, SchemaError, _config, head_revision
from tests.integration.servers import postgresql

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.peers)]


@contextmanager
def _url(backend: str, tmp_path: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'db.sqlite'}"
    else:
        with postgresql() as url:
            yield url


def _revision(engine: Engine) -> tuple[str, ...]:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_heads()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_new_database_gets_exactly_the_models_schema(backend: str, tmp_path: Path) -> None:
    """The guard for every future model change: it must come with a migration, or this fails."""
    with _url(backend, tmp_path) as url:
        db = Database(url)
        with db.engine.connect() as connection:
            assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
        assert _revision(db.engine) == (head_revision(),)
        db.dispose()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_database_radfusion_0_1_0_made_is_adopted_with_its_rows(backend: str, tmp_path: Path) -> None:
    with _url(backend, tmp_path) as url:
        engine = make_engine(url)
        config = _config()
        with engine.begin() as connection:  # the baseline tables without a revision table, as 0.1.0's create_all left
            config.attributes["connection"] = connection
            command.upgrade(config, BASELINE)
            connection.execute(text("DROP TABLE alembic_version"))
            connection.execute(AuditEvent.__table__.insert().values(kind="study_purged", subject="1.2.3", detail=""))
        engine.dispose()
        db = Database(url)
        assert _revision(db.engine) == (head_revision(),)
        with db.session() as session:
            assert session.scalars(select(AuditEvent.subject)).all() == ["1.2.3"]
        db.dispose()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_database_a_newer_radfusion_wrote_is_refused_untouched(backend: str, tmp_path: Path) -> None:
    with _url(backend, tmp_path) as url:
        Database(url).dispose()
        engine = make_engine(url)
        with engine.begin() as connection:
            connection.execute(text("UPDATE alembic_version SET version_num = '0099'"))
        with pytest.raises(SchemaError, match=r"at schema revision 0099, which this radfusion does not know .* "
                                              r"a newer radfusion wrote it"):
            Database(url)
        assert _revision(engine) == ("0099",)
        engine.dispose()


def test_a_database_with_only_some_of_radfusion_s_tables_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    engine = make_engine(url)
    Base.metadata.tables["studies"].create(engine)
    with pytest.raises(SchemaError, match=r"holds radfusion's tables \['studies'\] but not \['alerts', "):
        Database(url)
    assert inspect(engine).get_table_names() == ["studies"]  # nothing created beside it
    engine.dispose()


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_processes_starting_on_a_new_database_both_come_up(backend: str, tmp_path: Path) -> None:
    """``radfusion serve`` and ``radfusion status`` started together on a fresh install: one migrates, the other
    waits for it and finds the schema at head."""
    with _url(backend, tmp_path) as url:
        errors: list[BaseException] = []

        def start() -> None:
            try:
                Database(url).dispose()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=start) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        engine = make_engine(url)
        assert _revision(engine) == (head_revision(),)
        engine.dispose()
