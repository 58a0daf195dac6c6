"""a tenant's jobs listed by state or by batch, newest first: (tenant, state) and (tenant, batch_id) extended
by (created_at, id), so a page of GET /v1/jobs?state= (with since= and a cursor) or ?batch= is one
index range in the listing's order, as the unfiltered listing is. Before, a state filter walked the
tenant's whole newest-first index dropping the other states (10,000 queued rows before the first finished
one on a tenant with that backlog), or read every row of that state of every tenant and sorted them.
The extended indexes still serve what the old ones did (their leading columns are the same).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 19:40:00
"""
from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_jobs_tenant_state_created", "jobs", ["tenant", "state", "created_at", "id"])
    op.create_index("ix_jobs_tenant_batch_created", "jobs", ["tenant", "batch_id", "created_at", "id"])
    op.drop_index("ix_jobs_tenant_state", table_name="jobs")
    op.drop_index("ix_jobs_tenant_batch", table_name="jobs")


def downgrade() -> None:
    op.create_index("ix_jobs_tenant_batch", "jobs", ["tenant", "batch_id"])
    op.create_index("ix_jobs_tenant_state", "jobs", ["tenant", "state"])
    op.drop_index("ix_jobs_tenant_batch_created", table_name="jobs")
    op.drop_index("ix_jobs_tenant_state_created", table_name="jobs")
