"""The database schema, created and brought up to date at start-up by the Alembic migrations in radfusion/migrations.

A database radfusion 0.1.0 made (its tables, no revision table: it ran ``create_all``) is adopted as the baseline
revision; a database at a revision this code does not know, written by a newer radfusion, is refused, so an older
version never writes into a schema it does not understand. Every model change ships with a migration
(``tests/unit/radfusion/test_schema.py`` fails otherwise).
"""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection, Engine, inspect, text

from radfusion.errors import RadfusionError

BASELINE = "0001"
BASELINE_TABLES = frozenset({
    "alerts", "artifacts", "associations", "audit_events", "clinical_values", "deliveries", "hl7_messages", "instances",
    "jobs", "quarantine", "series", "studies",
})
"""The tables of revision 0001, as radfusion 0.1.0's ``create_all`` made them."""
_POSTGRES_LOCK = 0x7261_6466  # advisory lock key ("radf"): one process migrates at a time


class SchemaError(RadfusionError):
    """The database's schema cannot be brought to this version's; the message says why and what to do."""


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", "radfusion:migrations")
    return config


def head_revision() -> str:
    """The schema revision this code writes."""
    return str(ScriptDirectory.from_config(_config()).get_current_head())


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


def upgrade_schema(engine: Engine) -> None:
    """Bring the database to this code's schema, in one transaction that concurrent starts wait for."""
    config = _config()
    script = ScriptDirectory.from_config(config)
    with engine.begin() as connection:  # SQLite: BEGIN IMMEDIATE (radfusion.db), so a second start waits here
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _POSTGRES_LOCK})
        current = MigrationContext.configure(connection).get_current_heads()
        _check_known(connection, script, current)
        config.attributes["connection"] = connection
        if not current:
            _adopt_unversioned(connection, config)
        command.upgrade(config, "head")
