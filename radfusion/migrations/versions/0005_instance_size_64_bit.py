"""An instance's size is a 64-bit integer: a breast tomosynthesis object can pass 2 GiB, which PostgreSQL's INTEGER
refused ('integer out of range'), so the listener answered 0xA702 to every resend of it. SQLite's INTEGER holds 64
bits already; its table is left as it is.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.alter_column('instances', 'size_bytes', type_=sa.BigInteger(), existing_type=sa.Integer(),
                        existing_nullable=False)


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.alter_column('instances', 'size_bytes', type_=sa.Integer(), existing_type=sa.BigInteger(),
                        existing_nullable=False)
