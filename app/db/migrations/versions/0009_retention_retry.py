"""jobs.retention_retry_at: storage kept some of a finished job's objects when the retention sweep deleted
them (an object lock, a bucket policy, an error per key), so its rows stay; the sweep tries that job again
from this time on and goes on with the others meanwhile

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 15:20:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("retention_retry_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("retention_retry_at")
