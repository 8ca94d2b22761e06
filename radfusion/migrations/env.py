"""Alembic environment: runs on the connection ``radfusion.schema`` hands over, inside its transaction."""

from __future__ import annotations

from alembic import context

from radfusion.models import Base
from radfusion.schema import VERSION_TABLE

context.configure(connection=context.config.attributes["connection"], target_metadata=Base.metadata,
                  version_table=VERSION_TABLE, compare_server_default=True,
                  render_as_batch=True)  # batch mode: SQLite can only alter a table by copying it
with context.begin_transaction():
    context.run_migrations()
