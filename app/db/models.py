"""Database tables: jobs, chunks, batches, API keys. Postgres is the source of truth for every job."""

from __future__ import annotations

import enum
import uuid
from datetime import date, datetime, timezone

from sqlalchemy import (
    JSON,
    Date,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class JobState(str, enum.Enum):
    QUEUED = "QUEUED"
    PREPARING = "PREPARING"
    TRANSCRIBING = "TRANSCRIBING"
    FINALIZING = "FINALIZING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_JOB_STATES


TERMINAL_JOB_STATES = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED})


class ChunkState(str, enum.Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    DONE = "DONE"
    FAILED = "FAILED"


class Base(DeclarativeBase):
    pass


def _enum(cls: type[enum.Enum]) -> Enum:
    # stored as plain strings so adding a state is a one-line migration, not an ALTER TYPE
    return Enum(cls, native_enum=False, length=16, validate_strings=True)


class TZDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps no zone, so it stores naive UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):  # noqa: ANN001, ANN201
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use timezone-aware UTC")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):  # noqa: ANN001, ANN201
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value


TZ = TZDateTime()


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant: Mapped[str] = mapped_column(String(128), index=True)
    state: Mapped[JobState] = mapped_column(_enum(JobState), default=JobState.QUEUED)
    source_uri: Mapped[str] = mapped_column(Text)
    filename: Mapped[str] = mapped_column(String(255))
    options: Mapped[dict] = mapped_column(JSON, default=dict)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    params_hash: Mapped[str] = mapped_column(String(64))
    webhook_url: Mapped[str | None] = mapped_column(Text)

    duration_s: Mapped[float | None] = mapped_column(Float)
    chunks_total: Mapped[int | None] = mapped_column(Integer)
    chunks_done: Mapped[int] = mapped_column(Integer, default=0)
    language: Mapped[str | None] = mapped_column(String(16))
    # prepares (finalizes) that never finished: a take-over counts one, a transient failure gives it back
    prepare_attempts: Mapped[int] = mapped_column(Integer, default=0)
    finalize_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # the fencing token of the holder: raised by every take-over, never lowered (app/lifecycle.py)
    prepare_fence: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    finalize_fence: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # the holder's lease while PREPARING or FINALIZING, kept alive by its heartbeat: an expired lease
    # means the process holding the job died, and the reconciler hands the job to another worker
    lease_until: Mapped[datetime | None] = mapped_column(TZ)
    error: Mapped[str | None] = mapped_column(Text)

    created_at: Mapped[datetime] = mapped_column(TZ, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(TZ, default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(TZ)
    transcribing_at: Mapped[datetime | None] = mapped_column(TZ)
    finished_at: Mapped[datetime | None] = mapped_column(TZ)

    # the POST /v1/jobs/batch call that created the job, so a client can follow its batch as one
    batch_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    # retention (workers/tasks/maintenance.py): when the decoded PCM and an uploaded source were
    # removed from storage, and when the client deleted the finished job's transcript
    audio_deleted_at: Mapped[datetime | None] = mapped_column(TZ)
    source_deleted_at: Mapped[datetime | None] = mapped_column(TZ)
    deleted_at: Mapped[datetime | None] = mapped_column(TZ)
    # storage kept some of this finished job's objects when the sweep deleted them: tried again from then
    retention_retry_at: Mapped[datetime | None] = mapped_column(TZ)

    chunks: Mapped[list["Chunk"]] = relationship(back_populates="job", cascade="all, delete-orphan")

    __table_args__ = (
        UniqueConstraint("tenant", "idempotency_key", name="uq_jobs_tenant_idem"),
        Index("ix_jobs_tenant_created", "tenant", "created_at", "id"),
        Index("ix_jobs_state_updated", "state", "updated_at"),
        # a tenant's jobs of a batch or of a state, in the listing's order (a page is one index range); the
        # latter also counts a tenant's work in flight (app/fair_share.py)
        Index("ix_jobs_tenant_batch_created", "tenant", "batch_id", "created_at", "id"),
        Index("ix_jobs_tenant_state_created", "tenant", "state", "created_at", "id"),
        Index("ix_jobs_finished", "finished_at"),
        # the maintenance sweeps read the oldest finished jobs whose objects are still stored: partial
        # indexes keep that a short scan however many jobs were already swept
        Index("ix_jobs_audio_kept", "finished_at", postgresql_where=text("audio_deleted_at IS NULL"),
              sqlite_where=text("audio_deleted_at IS NULL")),
        Index("ix_jobs_source_kept", "finished_at", postgresql_where=text("source_deleted_at IS NULL"),
              sqlite_where=text("source_deleted_at IS NULL")),
    )


class Chunk(Base):
    __tablename__ = "chunks"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)
    start_ms: Mapped[int] = mapped_column(Integer)
    end_ms: Mapped[int] = mapped_column(Integer)
    state: Mapped[ChunkState] = mapped_column(_enum(ChunkState), default=ChunkState.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # reads of the prepared audio that failed (storage down): retried with backoff, not charged as attempts
    storage_failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    lease_until: Mapped[datetime | None] = mapped_column(TZ)
    # fencing token of the claim that holds the chunk: only that claim may store, release or fail it
    claim_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    batch_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    text: Mapped[str | None] = mapped_column(Text)
    # [[start_s, end_s, word], ...] relative to chunk, then {"emotion", "event"} if the model tagged it
    # (workers/merge.py stored_words)
    words: Mapped[list | None] = mapped_column(JSON)
    language: Mapped[str | None] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
    # this chunk's share of its batch's inference time, by audio length (usage: engine seconds)
    engine_s: Mapped[float | None] = mapped_column(Float)
    updated_at: Mapped[datetime] = mapped_column(TZ, default=utcnow, onupdate=utcnow)

    job: Mapped[Job] = relationship(back_populates="chunks")

    __table_args__ = (
        UniqueConstraint("job_id", "index", name="uq_chunks_job_index"),
        Index("ix_chunks_state_updated", "state", "updated_at"),
        Index("ix_chunks_batch", "batch_id"),
    )


class Batch(Base):
    """One inference call on a transcribe worker: which chunks of which jobs went together."""

    __tablename__ = "batches"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    worker: Mapped[str] = mapped_column(String(255))
    engine: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(Integer)
    job_count: Mapped[int] = mapped_column(Integer)
    audio_s: Mapped[float] = mapped_column(Float)
    infer_s: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(TZ, default=utcnow)


class UsageDaily(Base):
    """Usage of jobs that retention has removed, per tenant and UTC day: billing outlives transcripts.
    GET /v1/usage adds these to what the live rows say (app/usage.py)."""

    __tablename__ = "usage_daily"

    tenant: Mapped[str] = mapped_column(String(128), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    jobs_submitted: Mapped[int] = mapped_column(Integer, default=0)
    audio_submitted_s: Mapped[float] = mapped_column(Float, default=0.0)
    jobs_completed: Mapped[int] = mapped_column(Integer, default=0)
    audio_transcribed_s: Mapped[float] = mapped_column(Float, default=0.0)
    engine_s: Mapped[float] = mapped_column(Float, default=0.0)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant: Mapped[str] = mapped_column(String(128))
    key_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(TZ, default=utcnow)
    # kept, not deleted: a revoked key still counts as "keys exist" (revoking the last key never
    # opens the API) and its hash stops ASRQ_API_KEYS from adding it again at start-up
    revoked_at: Mapped[datetime | None] = mapped_column(TZ)


class WebhookState(str, enum.Enum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class WebhookDelivery(Base):
    """One notification of a job's end (COMPLETED, FAILED, CANCELLED), written in the transaction that
    ended the job, so it survives a broker or a worker that is down. The maintenance beat sends the
    due ones; every try is kept in ``tries``."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    tenant: Mapped[str] = mapped_column(String(128))
    url: Mapped[str] = mapped_column(Text)
    event: Mapped[str] = mapped_column(String(32))  # job.completed, job.failed, job.cancelled
    payload: Mapped[dict] = mapped_column(JSON)
    state: Mapped[WebhookState] = mapped_column(_enum(WebhookState), default=WebhookState.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # tries started; fences each try's result
    next_attempt_at: Mapped[datetime] = mapped_column(TZ, default=utcnow)
    tries: Mapped[list] = mapped_column(JSON, default=list)  # [{"at", "status_code", "error", "duration_ms"}]
    created_at: Mapped[datetime] = mapped_column(TZ, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(TZ)

    __table_args__ = (Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),)


class WebhookSecret(Base):
    """A tenant's webhook signing secret ("whsec_" + base64), kept in the clear: signing needs it."""

    __tablename__ = "webhook_secrets"

    tenant: Mapped[str] = mapped_column(String(128), primary_key=True)
    secret: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(TZ, default=utcnow)


class TenantShare(Base):
    """A tenant's recent usage for fair share (app/fair_share.py): audio seconds of finished jobs,
    halved every ASRQ_FAIR_SHARE_HALF_LIFE_S, as of ``updated_at``. Kept by the reconciler beat; the row
    of tenant "" is its cursor (how far finished jobs were counted)."""

    __tablename__ = "tenant_shares"

    tenant: Mapped[str] = mapped_column(String(128), primary_key=True)
    usage_s: Mapped[float] = mapped_column(Float, default=0.0)
    updated_at: Mapped[datetime] = mapped_column(TZ, default=utcnow)
