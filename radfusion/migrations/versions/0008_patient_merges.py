"""Patient merges are remembered: a value sent later under a merged-away identifier (a lab that had not yet
processed the merge) is stored under the surviving patient's, where it was left under the retired record that no
study reads.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('patient_merges',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('message_id', sa.Integer(), nullable=False),
    sa.Column('prior_id', sa.String(length=64), nullable=False),
    sa.Column('prior_authority', sa.String(length=64), nullable=False),
    sa.Column('surviving_id', sa.String(length=64), nullable=False),
    sa.Column('surviving_authority', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['message_id'], ['hl7_messages.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('patient_merges', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_patient_merges_prior_id'), ['prior_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('patient_merges', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_patient_merges_prior_id'))
    op.drop_table('patient_merges')
