"""jobs.lease_until and jobs.finalize_attempts (a holder's lease while PREPARING/FINALIZING, and the
bound on finalizes that never finished); chunks.claim_id (fencing token of the claim holding a chunk)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 21:10:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("finalize_attempts", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("chunks") as batch:
        batch.add_column(sa.Column("claim_id", sa.Uuid(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("chunks") as batch:
        batch.drop_column("claim_id")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("lease_until")
        batch.drop_column("finalize_attempts")
