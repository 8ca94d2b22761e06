"""Database engine and sessions for SQLite (embedded default) and PostgreSQL."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from radfusion.errors import RadfusionError
from radfusion.schema import require_current, upgrade_schema

BUSY_TIMEOUT_S = 30.0  # how long a SQLite writer waits for another before 'database is locked'


def make_engine(url: str) -> Engine:
    """An engine configured for durable, concurrent use of ``url``. Its errors never quote the statement's
    parameters (patient IDs, accession numbers) into a log line.

    SQLite: WAL journal with synchronous=NORMAL (a committed row survives a crash of the
    process; after a power loss the last rows are rebuilt from the spool, see
    radfusion.recovery.reconcile_spool), a busy timeout, foreign keys on, and ``BEGIN
    IMMEDIATE`` so writers queue instead of deadlocking.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20, hide_parameters=True)
    if parsed.database:
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_S}, pool_size=10,
                           max_overflow=20, hide_parameters=True)

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_conn.cursor()
        _use_wal(cursor)
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin_immediate(conn) -> None:  # noqa: ANN001
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _use_wal(cursor: sqlite3.Cursor) -> None:
    """Put the file in WAL mode, which it keeps: the first connection to a new database does it. One that races
    another's first write is answered 'database is locked' at once, without the busy timeout (three starts on a
    fresh install: one failed); it waits and tries again for as long as the busy timeout would."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class Database:
    """An engine plus a session factory; ``session()`` commits on success, rolls back on error.

    ``migrate``: bring the schema to this code's (the server does); otherwise a schema that is not this code's is
    refused and left as it is.
    """

    def __init__(self, url: str, migrate: bool = True) -> None:
        self.url = url
        self.engine = make_engine(url)
        if migrate:
            upgrade_schema(self.engine)
        else:
            require_current(self.engine)
        self._factory = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed when the block ends, rolled back if it raises."""
        with self._factory() as session, session.begin():
            yield session

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """A Core transaction, for hot paths that run prepared statements and need no ORM objects."""
        with self.engine.begin() as conn:
            yield conn

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()


def open_existing(url: str) -> Database:
    """The server's database for an operator command (status, requeue, reprocess): never created here (a missing
    SQLite file is an error naming it) and never migrated."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and not Path(parsed.database).is_file():
        raise RadfusionError(f"no database at {parsed.database}: radfusion serve has not run with this configuration "
                             "(run the command with the server's --config or RADFUSION_CONFIG)")
    return Database(url, migrate=False)
