"""Failed jobs and deliveries can be acknowledged (``radfusion acknowledge``): one whose cause cannot be fixed no
longer keeps ``radfusion status --check`` failing. Rows written before hold NULL: not acknowledged.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

TABLES = ('jobs', 'deliveries')


def upgrade() -> None:
    for table in TABLES:  # a nullable column: SQLite adds it in place, no copy of the table
        with op.batch_alter_table(table, schema=None, recreate='never') as batch_op:
            batch_op.add_column(sa.Column('acknowledged_at', sa.DateTime(), nullable=True))


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column('acknowledged_at')
