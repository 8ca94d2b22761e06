"""HL7 values record the order they belong to (OBR-3 filler, else OBR-2 placer number), so a deleted, withdrawn or
corrected result takes back the value of its own order whatever time each message gives it. Rows received before
hold '' and are taken back by their time, as before.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # a column with a constant default: SQLite adds it in place, no copy of the clinical_values table
    with op.batch_alter_table('clinical_values', schema=None, recreate='never') as batch_op:
        batch_op.add_column(sa.Column('order_number', sa.String(length=200), server_default=sa.text("''"),
                                      nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('clinical_values', schema=None) as batch_op:
        batch_op.drop_column('order_number')
