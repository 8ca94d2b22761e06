"""The database schema, created and brought up to date at start-up by the Alembic migrations in radfusion/migrations.

A database radfusion 0.1.0 made (its tables, no revision table: it ran ``create_all``) is adopted as the baseline
revision; a database at a revision this code does not know, written by a newer radfusion, is refused, so an older
version never writes into a schema it does not understand. Every model change ships with a migration
(``tests/unit/radfusion/test_schema.py`` fails otherwise); ``make migration MESSAGE="..."`` drafts one.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from collections import Counter
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection, Engine, create_engine, inspect, text

from radfusion.errors import RadfusionError

log = logging.getLogger(__name__)

SCRIPT_LOCATION = "radfusion:migrations"
VERSION_TABLE = "radfusion_alembic_version"  # its own name: a database shared with another Alembic app stays apart
BASELINE = "0001"
BASELINE_TABLES = frozenset({
    "alerts", "artifacts", "associations", "audit_events", "clinical_values", "deliveries", "hl7_messages", "instances",
    "jobs", "quarantine", "series", "studies",
})
"""The tables of revision 0001, as radfusion 0.1.0's ``create_all`` made them."""
_POSTGRES_LOCK = 0x7261_6466  # advisory lock key ("radf"): one process migrates at a time


class SchemaError(RadfusionError):
    """The database's schema cannot be brought to this version's; the message says why and what to do."""


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration for radfusion's migrations, run on ``connection`` (``migrations/env.py``)."""
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The schema revision this code writes."""
    return str(ScriptDirectory.from_config(alembic_config()).get_current_head())


def current_revisions(connection: Connection) -> tuple[str, ...]:
    """The revision(s) the database is at; empty when it has no revision table."""
    return MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE}).get_current_heads()


def _where(connection: Connection) -> str:
    return connection.engine.url.render_as_string(hide_password=True)


def _check_known(connection: Connection, script: ScriptDirectory, current: tuple[str, ...]) -> None:
    for revision in current:
        try:
            known = script.get_revision(revision) is not None
        except CommandError:
            known = False
        if not known:
            raise SchemaError(f"the database {_where(connection)} is at schema revision {revision}, which this "
                              f"radfusion does not know (it writes revision {script.get_current_head()}): a newer "
                              "radfusion wrote it. Run that version, or restore the backup taken before the upgrade.")


def _adopt_unversioned(connection: Connection, config: Config) -> None:
    """Stamp a database that 0.1.0 made as the baseline; refuse one that holds only some of its tables."""
    present = BASELINE_TABLES & set(inspect(connection).get_table_names())
    if present == BASELINE_TABLES:
        command.stamp(config, BASELINE)
    elif present:
        raise SchemaError(f"the database {_where(connection)} holds radfusion's tables {sorted(present)} but not "
                          f"{sorted(BASELINE_TABLES - present)}, and no schema revision: radfusion did not make it "
                          "this way. Point database_url at radfusion's own database or an empty one.")


def _migrate(connection: Connection) -> None:
    """Lock, check, adopt and upgrade, inside the caller's transaction."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _POSTGRES_LOCK})
    config = alembic_config(connection)
    script = ScriptDirectory.from_config(config)
    current = current_revisions(connection)
    _check_known(connection, script, current)
    if not current:
        _adopt_unversioned(connection, config)
    head = script.get_current_head()
    if current == (head,):
        return
    log.info("database schema: revision %s -> %s", ", ".join(current) or "none", head)
    orphans_before = _orphans(connection)
    command.upgrade(config, "head")
    added = _orphans(connection) - orphans_before
    if added:
        raise SchemaError(f"upgrading {_where(connection)} to revision {head} would leave {added.total()} more row(s) "
                          f"whose foreign key points nowhere (first: table {sorted(added)[0][0]}); nothing was changed")


def _orphans(connection: Connection) -> Counter[tuple[str, str]]:
    """How many rows of each (table, referenced table) have a foreign key that points nowhere: SQLite's keys are off
    during a migration; counted by table, since a table the migration copies gets new row ids."""
    if connection.dialect.name != "sqlite":
        return Counter()
    return Counter((str(row[0]), str(row[2])) for row in connection.exec_driver_sql("PRAGMA foreign_key_check"))


def require_current(engine: Engine) -> None:
    """Refuse a database whose schema is not this code's, changing nothing: the operator commands read the
    server's database as it is, and only ``radfusion serve`` migrates it."""
    with engine.connect() as connection:
        script = ScriptDirectory.from_config(alembic_config(connection))
        current = current_revisions(connection)
        _check_known(connection, script, current)
        head = script.get_current_head()
        if current != (head,):
            raise SchemaError(f"the database {_where(connection)} is at schema revision {', '.join(current) or 'none'} "
                              f"and this radfusion reads revision {head}: start this version's radfusion serve once to "
                              "migrate it, then run the command again")


def upgrade_schema(engine: Engine) -> None:
    """Bring the database to this code's schema, in one transaction that concurrent starts wait for.

    SQLite alters a table by copying it, which its foreign keys forbid while rows point at the table; they are off
    for the migration (a pragma only takes effect outside a transaction), and a migration that would leave rows
    pointing nowhere is rolled back. Rows that already did so before are not the migration's doing and stay.
    """
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            connection.connection.dbapi_connection.execute("PRAGMA foreign_keys=OFF")  # type: ignore[union-attr]
        try:
            with connection.begin():  # SQLite: BEGIN IMMEDIATE (radfusion.db), so a second start waits here
                _migrate(connection)
        finally:
            if sqlite:
                connection.connection.dbapi_connection.execute("PRAGMA foreign_keys=ON")  # type: ignore[union-attr]


def draft_revision(message: str) -> None:
    """Autogenerate a migration for what the models changed since the head revision, to review before committing."""
    with tempfile.TemporaryDirectory() as folder:
        engine = create_engine(f"sqlite:///{Path(folder) / 'head.db'}")
        upgrade_schema(engine)
        with engine.begin() as connection:
            command.revision(alembic_config(connection), message=message, autogenerate=True,
                             rev_id=f"{int(head_revision()) + 1:04d}")  # numbered in order: 0002 follows 0001
        engine.dispose()


if __name__ == "__main__":  # make migration MESSAGE="..."
    draft_revision(" ".join(sys.argv[1:]) or "describe the change")
