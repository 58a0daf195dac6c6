"""api_keys.revoked_at: `asrq keys revoke` marks a key instead of deleting it, so the listing shows it and
ASRQ_API_KEYS, synced at start-up, cannot bring a revoked key back

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 10:00:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("revoked_at")
