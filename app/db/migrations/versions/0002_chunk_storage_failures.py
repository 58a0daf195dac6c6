"""chunks.storage_failures: failed reads of the prepared audio, retried without charging an attempt

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 00:30:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("chunks") as batch:
        batch.add_column(sa.Column("storage_failures", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("chunks") as batch:
        batch.drop_column("storage_failures")
