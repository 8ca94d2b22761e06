"""Instances record whether Image Type says LOCALIZER, so a scout in an axial series does not hold up its slice
geometry check. Rows received before hold false: their series were assembled already.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # SQLite adds a NOT NULL column with a constant default in place; no copy of the instances table
    with op.batch_alter_table('instances', schema=None, recreate='never') as batch_op:
        batch_op.add_column(sa.Column('localizer', sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_column('localizer')
