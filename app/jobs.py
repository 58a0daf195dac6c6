"""Job submission, lookup, listing and cancellation: the data layer the API and the CLI share."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.constants import job_prefix
from app.db.models import TERMINAL_JOB_STATES, Chunk, ChunkState, Job, JobState, utcnow
from app.errors import ModelNotInstalled, PermanentError
from app.schemas import JobCreate, JobOptions, JobOut, Progress, Timings
from app.settings import Settings
from app.storage import ObjectStore

log = logging.getLogger("asrq.jobs")


class IdempotencyConflict(PermanentError):
    """The Idempotency-Key was used before with different parameters."""


class JobNotFound(PermanentError):
    pass


@dataclass(frozen=True)
class NewJob:
    source_uri: str
    filename: str
    options: JobOptions
    webhook_url: str | None = None
    idempotency_key: str | None = None
    content_sha256: str | None = None  # for uploads: the bytes are part of "the same parameters"


def resolved_options(opts: JobOptions, settings: Settings) -> dict:
    """Options with the deployment's defaults filled in, stored on the job so a job never changes engine."""
    from workers.engines.registry import engines, installed_models, missing_model_reason, unknown_engine_reason

    engine = opts.engine or settings.engine
    if (unknown := unknown_engine_reason(engine)) is not None:
        raise ModelNotInstalled(unknown)
    model = opts.model or (settings.model if engine == settings.engine else engines()[engine].default_model)
    if model is None:
        have = ", ".join(installed_models(engine, settings)) or "none"
        raise ModelNotInstalled(f"engine {engine!r} needs a model name on this deployment; installed: {have}")
    # refused here, at the door: a job naming a model no worker can load would only fail later
    reason = missing_model_reason(engine, model, settings)
    if reason is not None:
        raise ModelNotInstalled(reason)
    return {
        "engine": engine,
        "model": model,
        "language": opts.language,
        "hotwords": list(opts.hotwords),
        "formats": sorted(set(opts.formats)),
    }


def params_hash(new: NewJob, options: dict) -> str:
    doc = {"source": new.source_uri, "sha256": new.content_sha256, "options": options, "webhook": new.webhook_url}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _row(new: NewJob, tenant: str, settings: Settings, job_id: uuid.UUID | None = None) -> dict:
    options = resolved_options(new.options, settings)
    now = utcnow()
    return {
        "id": job_id or uuid.uuid4(),
        "tenant": tenant,
        "state": JobState.QUEUED,
        "source_uri": new.source_uri,
        "filename": new.filename,
        "options": options,
        "idempotency_key": new.idempotency_key,
        "params_hash": params_hash(new, options),
        "webhook_url": new.webhook_url,
        "chunks_done": 0,
        "prepare_attempts": 0,
        "created_at": now,
        "updated_at": now,
    }


def create_job(session: Session, tenant: str, new: NewJob, settings: Settings,
               job_id: uuid.UUID | None = None) -> tuple[Job, bool]:
    """Insert a job (committed). Returns (job, created); created is False for an idempotent replay."""
    row = _row(new, tenant, settings, job_id)
    if new.idempotency_key:
        existing = _by_idempotency_key(session, tenant, new.idempotency_key)
        if existing is not None:
            return _replay(existing, row), False
    try:
        session.execute(insert(Job), [row])
        session.commit()
    except IntegrityError:
        # a concurrent request with the same key won the race
        session.rollback()
        existing = _by_idempotency_key(session, tenant, new.idempotency_key or "")
        if existing is None:
            raise
        return _replay(existing, row), False
    job = session.get(Job, row["id"])
    assert job is not None
    log.info("job=%s state=QUEUED elapsed_s=0.000 source=%s", job.id, job.filename)
    return job, True


def _by_idempotency_key(session: Session, tenant: str, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.tenant == tenant, Job.idempotency_key == key))


def _replay(existing: Job, row: dict) -> Job:
    if existing.params_hash != row["params_hash"]:
        raise IdempotencyConflict("Idempotency-Key was already used with different parameters")
    return existing


def create_batch(session: Session, tenant: str, items: Iterable[JobCreate], settings: Settings) -> list[uuid.UUID]:
    """Insert many jobs in one transaction (all or none)."""
    rows = [
        _row(NewJob(i.source_uri, _filename(i.source_uri), JobOptions(**_opts(i)), i.webhook_url, i.idempotency_key),
             tenant, settings)
        for i in items
    ]
    keys = [r["idempotency_key"] for r in rows if r["idempotency_key"]]
    if len(keys) != len(set(keys)):
        raise PermanentError("duplicate idempotency_key inside the batch")
    if keys:
        taken = set(session.scalars(select(Job.idempotency_key).where(Job.tenant == tenant, Job.idempotency_key.in_(keys))))
        if taken:
            raise IdempotencyConflict(f"{len(taken)} idempotency keys of this batch were already used")
    session.execute(insert(Job), rows)
    session.commit()
    log.info("batch of %d jobs state=QUEUED tenant=%s", len(rows), tenant)
    return [r["id"] for r in rows]


def _opts(item: JobCreate) -> dict:
    return item.model_dump(include=set(JobOptions.model_fields))


def _filename(uri: str) -> str:
    from app.sources import filename_from_uri

    return filename_from_uri(uri)


def get_job(session: Session, tenant: str, job_id: uuid.UUID) -> Job:
    job = session.get(Job, job_id)
    # another tenant's job is indistinguishable from a missing one
    if job is None or job.tenant != tenant:
        raise JobNotFound(f"job {job_id} not found")
    return job


def encode_cursor(job: Job) -> str:
    return base64.urlsafe_b64encode(f"{job.created_at.isoformat()}|{job.id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        created, jid = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        return datetime.fromisoformat(created), uuid.UUID(jid)
    except (ValueError, UnicodeDecodeError) as e:
        raise PermanentError("invalid cursor") from e


def list_jobs(session: Session, tenant: str, state: JobState | None, cursor: str | None,
              limit: int) -> tuple[list[Job], str | None]:
    q = select(Job).where(Job.tenant == tenant)
    if state is not None:
        q = q.where(Job.state == state)
    if cursor:
        created, jid = decode_cursor(cursor)
        q = q.where(or_(Job.created_at < created, and_(Job.created_at == created, Job.id < jid)))
    jobs = list(session.scalars(q.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)))
    more = len(jobs) > limit
    jobs = jobs[:limit]
    return jobs, (encode_cursor(jobs[-1]) if more and jobs else None)


def cancel_or_delete(session: Session, store: ObjectStore, tenant: str, job_id: uuid.UUID) -> Job:
    """Cancel a job still in flight; for a finished job, delete its stored objects."""
    job = get_job(session, tenant, job_id)
    if job.state not in TERMINAL_JOB_STATES:
        # conditional update: a worker finishing at this instant wins or loses cleanly
        res = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.state.not_in(list(TERMINAL_JOB_STATES)))
            .values(state=JobState.CANCELLED, finished_at=utcnow(), error="cancelled by client")
        )
        session.execute(
            update(Chunk).where(Chunk.job_id == job_id, Chunk.state != ChunkState.DONE).values(state=ChunkState.FAILED)
        )
        session.commit()
        if res.rowcount:
            log.info("job=%s state=CANCELLED", job_id)
    store.delete_prefix(job_prefix(job_id))
    session.refresh(job)
    return job


def _seconds(a: datetime | None, b: datetime | None) -> float | None:
    return round((b - a).total_seconds(), 3) if a and b else None


def job_out(job: Job) -> JobOut:
    return JobOut(
        id=str(job.id),
        state=job.state.value,
        source_uri=job.source_uri,
        filename=job.filename,
        options=job.options,
        progress=Progress(chunks_done=job.chunks_done, chunks_total=job.chunks_total, audio_s=job.duration_s),
        duration_s=job.duration_s,
        language=job.language,
        error=job.error,
        timings=Timings(
            created_at=job.created_at,
            started_at=job.started_at,
            transcribing_at=job.transcribing_at,
            finished_at=job.finished_at,
            queued_s=_seconds(job.created_at, job.started_at),
            processing_s=_seconds(job.started_at, job.finished_at),
        ),
        webhook_url=job.webhook_url,
    )
