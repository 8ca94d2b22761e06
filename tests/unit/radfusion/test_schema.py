"""The schema is built and upgraded by migrations: models and migrations agree, a 0.1.0 database is adopted with its
rows, an upgrade that rewrites a referenced SQLite table keeps every row, and a database this version cannot
understand is refused by name before anything is written."""

from __future__ import annotations

import shutil
import sqlite3
import threading
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, select, text

import radfusion.migrations
from radfusion import schema
from radfusion.db import Database, make_engine
from radfusion.models import AuditEvent, Base, Instance, Series, Study
from radfusion.schema import BASELINE, VERSION_TABLE, SchemaError, alembic_config, current_revisions, head_revision
from tests.integration.servers import database_url

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.peers)]
SCHEMA_0_1_0 = Path(__file__).parents[2] / "data" / "radfusion-0.1.0-sqlite-schema.sql"


def _revision(engine: Engine) -> tuple[str, ...]:
    with engine.connect() as connection:
        return current_revisions(connection)


def _differences(engine: Engine) -> list:
    """What Alembic would change to make the database match the models (server defaults compared too)."""
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE,
                                                               "compare_server_default": True})
        return compare_metadata(context, Base.metadata)


def _made_by_0_1_0(tmp_path: Path, row: str) -> str:
    """The URL of a SQLite database with radfusion 0.1.0's schema (tests/data) and ``row`` inserted."""
    path = tmp_path / "db.sqlite"
    with sqlite3.connect(path) as connection:
        connection.executescript(SCHEMA_0_1_0.read_text())
        connection.execute(row)
    return f"sqlite:///{path}"


def _store_a_study(db: Database) -> None:
    with db.session() as session:
        series = Series(study=Study(study_uid="1.2.3"), series_uid="1.2.3.1", instance_count=1)
        session.add_all([series, Instance(series=series, sop_instance_uid="1.2.3.1.1", sop_class_uid="1.2",
                                          transfer_syntax_uid="1.2", path="x.dcm", size_bytes=1)])


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_new_database_gets_exactly_the_models_schema(backend: str, tmp_path: Path) -> None:
    """The guard for every future model change: it must come with a migration, or this fails."""
    with database_url(backend, tmp_path) as url:
        db = Database(url)
        assert _differences(db.engine) == []
        assert _revision(db.engine) == (head_revision(),)
        db.dispose()


def test_the_sqlite_database_radfusion_0_1_0_made_is_adopted_with_its_rows(tmp_path: Path) -> None:
    db = Database(_made_by_0_1_0(tmp_path, "INSERT INTO audit_events (at, kind, subject, detail) "
                                           "VALUES ('2026-12-01 10:00:00', 'study_purged', '1.2.3', '')"))
    assert _revision(db.engine) == (head_revision(),)
    assert _differences(db.engine) == []
    with db.session() as session:
        assert session.scalars(select(AuditEvent.subject)).all() == ["1.2.3"]
    db.dispose()


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_unversioned_baseline_database_is_adopted_with_its_rows(backend: str, tmp_path: Path) -> None:
    with database_url(backend, tmp_path) as url:
        engine = make_engine(url)
        with engine.begin() as connection:  # the baseline tables without a revision table, as 0.1.0 left them
            command.upgrade(alembic_config(connection), BASELINE)
            connection.execute(text(f"DROP TABLE {VERSION_TABLE}"))
            connection.execute(AuditEvent.__table__.insert().values(kind="study_purged", subject="1.2.3", detail=""))
        engine.dispose()
        db = Database(url)
        assert _revision(db.engine) == (head_revision(),)
        with db.session() as session:
            assert session.scalars(select(AuditEvent.subject)).all() == ["1.2.3"]
        db.dispose()


def test_an_upgrade_that_rewrites_a_referenced_sqlite_table_keeps_every_row(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite alters a table by copying it; with rows pointing at it, that needs its foreign keys off meanwhile."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    db = Database(url)
    _store_a_study(db)
    db.dispose()
    scripts = tmp_path / "migrations"
    shutil.copytree(Path(radfusion.migrations.__file__).parent, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    (scripts / "versions" / "9001_widen.py").write_text(f'''"""Test revision: widen studies.study_date."""
import sqlalchemy as sa
from alembic import op

revision = "9001"
down_revision = "{head_revision()}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("studies") as batch_op:
        batch_op.alter_column("study_date", type_=sa.String(10), existing_nullable=False)
''')
    monkeypatch.setattr(schema, "SCRIPT_LOCATION", str(scripts))
    db = Database(url)
    assert _revision(db.engine) == ("9001",)
    with db.session() as session:
        assert session.scalars(select(Instance.sop_instance_uid)).all() == ["1.2.3.1.1"]
    with db.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1  # back on for the server's work
    db.dispose()


def test_rows_that_already_pointed_nowhere_do_not_stop_a_start(tmp_path: Path) -> None:
    """An orphan left by a hand edit (the sqlite3 shell keeps foreign keys off) is not the migration's doing."""
    url = _made_by_0_1_0(tmp_path, "INSERT INTO series (study_id, series_uid, modality, attributes, state, "
                                   "instance_count, last_received_at, revision) VALUES (42, '1.2.3.1', 'CT', '{}', "
                                   "'receiving', 0, '2026-12-01 10:00:00', 1)")  # study 42 does not exist
    db = Database(url)
    assert _revision(db.engine) == (head_revision(),)
    db.dispose()
    Database(url).dispose()  # and again, at head


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_database_a_newer_radfusion_wrote_is_refused_untouched(backend: str, tmp_path: Path) -> None:
    with database_url(backend, tmp_path) as url:
        Database(url).dispose()
        engine = make_engine(url)
        with engine.begin() as connection:
            connection.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '0099'"))
        with pytest.raises(SchemaError, match=r"at schema revision 0099, which this radfusion does not know .* "
                                              r"a newer radfusion wrote it"):
            Database(url)
        assert _revision(engine) == ("0099",)
        engine.dispose()


def test_another_application_s_alembic_table_does_not_count_as_radfusion_s(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)"))
        connection.execute(text("INSERT INTO alembic_version VALUES ('ae1027a6acf')"))
    Database(url).dispose()
    assert _revision(engine) == (head_revision(),)
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
def test_three_servers_starting_on_a_new_database_all_come_up(backend: str, tmp_path: Path) -> None:
    """Three starts at once on a fresh install (threads standing in for ``serve`` and ``status``): one migrates,
    the others wait for it and find the schema at head."""
    with database_url(backend, tmp_path) as url:
        errors: list[BaseException] = []

        def start() -> None:
            try:
                Database(url).dispose()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=start, daemon=True) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in threads), "a start is stuck waiting for another"
        assert errors == []
        engine = make_engine(url)
        assert _revision(engine) == (head_revision(),)
        engine.dispose()
