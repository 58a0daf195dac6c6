"""fair share between tenants: tenant_shares (decayed usage per tenant) and an index for a tenant's jobs in
flight, read when prepare and transcribe messages are given their priority

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 01:10:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tenant_shares",
        sa.Column("tenant", sa.String(128), primary_key=True),
        sa.Column("usage_s", sa.Float, nullable=False, server_default="0"),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_jobs_tenant_state", "jobs", ["tenant", "state"])


def downgrade() -> None:
    op.drop_index("ix_jobs_tenant_state", table_name="jobs")
    op.drop_table("tenant_shares")
