"""Inbound HL7 messages keep a digest of their content: a sender that reuses a control id for another message (a
sequence number reset when its interface restarted) is no longer taken for a resend, whose content was acknowledged
and dropped. Rows stored before hold NULL and are taken for resends of their control id, as before.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # a nullable column: SQLite adds it in place, no copy of the table
    with op.batch_alter_table('hl7_messages', schema=None, recreate='never') as batch_op:
        batch_op.add_column(sa.Column('digest', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('hl7_messages', schema=None) as batch_op:
        batch_op.drop_column('digest')
