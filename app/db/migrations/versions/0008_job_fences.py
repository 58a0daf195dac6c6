"""jobs.prepare_fence and jobs.finalize_fence: the fencing token of the holder of a PREPARING or FINALIZING
job, raised by every take-over and never lowered, so no two holders ever have the same one (the attempt
counts go down again when a transient failure gives its attempt back, so they cannot be the token)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 14:40:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("prepare_fence", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("finalize_fence", sa.Integer(), server_default="0", nullable=False))
    # a holder that started before the upgrade fenced itself with its attempt number: it keeps its job
    op.execute("UPDATE jobs SET prepare_fence = prepare_attempts, finalize_fence = finalize_attempts")


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("finalize_fence")
        batch.drop_column("prepare_fence")
