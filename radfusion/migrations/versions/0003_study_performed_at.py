"""Studies record when they were performed (Study Date + Study Time), so their clinical data is read as of then.
Rows received before hold NULL and are read as of the present, as before.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # a nullable column: SQLite adds it in place, no copy of the studies table
    with op.batch_alter_table('studies', schema=None, recreate='never') as batch_op:
        batch_op.add_column(sa.Column('performed_at', sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.drop_column('performed_at')
