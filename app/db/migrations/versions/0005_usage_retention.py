"""usage and retention (issue 12): jobs.batch_id; when a job's decoded audio, uploaded source and
transcript were removed; chunks.engine_s (a chunk's share of its batch's inference time); usage_daily
(usage of jobs retention removed, per tenant and UTC day)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 01:00:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("batch_id", sa.Uuid(), nullable=True))
        batch.add_column(sa.Column("audio_deleted_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("source_deleted_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_index("ix_jobs_tenant_batch", ["tenant", "batch_id"], unique=False)
        batch.create_index("ix_jobs_finished", ["finished_at"], unique=False)
    # partial indexes, outside the batch (SQLite's table copy does not carry their WHERE clause)
    op.create_index("ix_jobs_audio_kept", "jobs", ["finished_at"], unique=False,
                    postgresql_where=sa.text("audio_deleted_at IS NULL"),
                    sqlite_where=sa.text("audio_deleted_at IS NULL"))
    op.create_index("ix_jobs_source_kept", "jobs", ["finished_at"], unique=False,
                    postgresql_where=sa.text("source_deleted_at IS NULL"),
                    sqlite_where=sa.text("source_deleted_at IS NULL"))
    with op.batch_alter_table("chunks") as batch:
        batch.add_column(sa.Column("engine_s", sa.Float(), nullable=True))
        batch.create_index("ix_chunks_batch", ["batch_id"], unique=False)
    op.create_table(
        "usage_daily",
        sa.Column("tenant", sa.String(length=128), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("jobs_submitted", sa.Integer(), nullable=False),
        sa.Column("audio_submitted_s", sa.Float(), nullable=False),
        sa.Column("jobs_completed", sa.Integer(), nullable=False),
        sa.Column("audio_transcribed_s", sa.Float(), nullable=False),
        sa.Column("engine_s", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "day"),
    )


def downgrade() -> None:
    op.drop_table("usage_daily")
    with op.batch_alter_table("chunks") as batch:
        batch.drop_index("ix_chunks_batch")
        batch.drop_column("engine_s")
    op.drop_index("ix_jobs_source_kept", table_name="jobs")
    op.drop_index("ix_jobs_audio_kept", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_finished")
        batch.drop_index("ix_jobs_tenant_batch")
        batch.drop_column("deleted_at")
        batch.drop_column("source_deleted_at")
        batch.drop_column("audio_deleted_at")
        batch.drop_column("batch_id")
