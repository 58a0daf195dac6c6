"""maintenance (beat): retention of what finished jobs leave in storage and in Postgres.

* decoded audio (the PCM prepare wrote): removed once the job is finished; finalize removes it at
  COMPLETED, and this sweep catches every other end (failed, cancelled, a finalize that died after
  committing). A chunk still reading it meets a missing object and closes quietly (transcribe.py).
* uploaded sources: kept ASRQ_SOURCE_RETENTION_DAYS after the job finished.
* everything else (transcripts, job and chunk rows): ASRQ_RETENTION_DAYS after the job finished. The
  job's usage moves to the tenant's daily totals in the transaction that deletes its rows.

Every step takes the oldest ``maintenance_batch_jobs`` items, deletes their objects, then records that in
one short transaction: a run killed midway leaves rows that the next run finds again, and deleting an
object twice is harmless. Rows are deleted last, and only a job's whose objects storage confirmed gone
(S3's DeleteObjects answers 200 and lists the keys it kept under Errors: an object lock, a bucket policy),
so nothing in storage outlives its job's rows. A job whose objects were kept stays as it is, is logged,
and is tried again ``RETRY_AFTER_S`` later; the sweep goes on with the others meanwhile.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

from sqlalchemy import delete, exists, or_, select, update
from sqlalchemy.orm import Session

from app.constants import TASK_MAINTENANCE, job_prefix, pcm_key
from app.db.models import TERMINAL_JOB_STATES, Batch, Chunk, Job, utcnow
from app.db.session import session_scope
from app.lifecycle import mark_audio_deleted
from app.settings import get_settings
from app.sources import UPLOAD_SCHEME
from app.storage import ObjectStore, get_store
from app.usage import roll_up
from workers.celery_app import app

log = logging.getLogger("asrq.maintenance")

DELETE_THREADS = 8  # S3 deletes of one batch side by side (boto3's pool holds 10 connections)
#: a job whose objects storage kept is tried again this much later, not at every run: a hold can last years
RETRY_AFTER_S = 3600.0
_FINISHED = list(TERMINAL_JOB_STATES)


def _due(now: datetime):  # noqa: ANN202
    """Finished jobs the sweep may take now: those whose objects storage kept wait for their retry time."""
    return (Job.state.in_(_FINISHED), or_(Job.retention_retry_at.is_(None), Job.retention_retry_at <= now))


@app.task(name=TASK_MAINTENANCE, ignore_result=True)
def maintenance() -> dict:
    try:
        return maintain_once()
    except Exception as e:  # noqa: BLE001 - the next beat tries again, from what the rows say
        log.warning("maintenance stopped early: %s: %s", type(e).__name__, e)
        return {}


def maintain_once(now: datetime | None = None) -> dict:
    settings = get_settings()
    store = get_store()
    now = now or utcnow()
    limit, rounds = settings.maintenance_batch_jobs, settings.maintenance_max_batches
    source_cutoff = now - timedelta(days=settings.source_retention_days)
    cutoff = now - timedelta(days=settings.retention_days)
    counts = {
        "audio": _repeat(lambda: drop_decoded_audio(store, limit, now), limit, rounds),
        "sources": _repeat(lambda: drop_sources(store, source_cutoff, limit, now), limit, rounds),
        "expired": _repeat(lambda: expire_jobs(store, cutoff, limit, now), limit, rounds),
        "batches": _repeat(lambda: drop_unused_batches(cutoff, limit), limit, rounds),
    }
    if any(counts.values()):
        log.info("maintenance removed %s", counts)
    return counts


def _repeat(step, limit: int, rounds: int) -> int:  # noqa: ANN001
    total = 0
    for _ in range(rounds):
        n = step()
        total += n
        if n < limit:
            break
    return total


def _delete_all(store: ObjectStore, prefixes: dict[uuid.UUID, str | None]) -> dict[uuid.UUID, Exception]:
    """Delete each job's prefix (None: nothing of it in storage), side by side. Returns the jobs whose
    objects are not all gone, with why (logged). An error that is not the storage's (a worker being
    killed) propagates, once every deletion under way has ended."""
    def one(item: tuple[uuid.UUID, str | None]) -> Exception | None:
        if item[1] is None:
            return None
        try:
            store.delete_prefix(item[1])
            return None
        except Exception as e:  # noqa: BLE001 - this job's objects stay, and so do its rows
            return e

    items = list(prefixes.items())
    if len(items) <= 1:
        errors = [one(i) for i in items]
    else:
        with ThreadPoolExecutor(DELETE_THREADS, thread_name_prefix="asrq-retention") as pool:
            errors = list(pool.map(one, items))
    failed = {job_id: e for (job_id, _), e in zip(items, errors) if e is not None}
    for job_id, e in failed.items():
        log.warning("job=%s retention: storage kept objects (%s: %s); rows kept, tried again in %.0f s",
                    job_id, type(e).__name__, e, RETRY_AFTER_S)
    return failed


def _retry_later(session: Session, job_ids: Iterable[uuid.UUID], now: datetime) -> None:
    if ids := list(job_ids):
        session.execute(update(Job).where(Job.id.in_(ids))
                        .values(retention_retry_at=now + timedelta(seconds=RETRY_AFTER_S))
                        .execution_options(synchronize_session=False))


def drop_audio(job_ids: list[uuid.UUID], store: ObjectStore | None = None, now: datetime | None = None) -> None:
    """Delete the decoded audio of these finished jobs now and record it (for those storage let go)."""
    kept = _delete_all(store or get_store(), {j: pcm_key(j) for j in job_ids})
    with session_scope() as s:
        _retry_later(s, kept, now or utcnow())
        mark_audio_deleted(s, [j for j in job_ids if j not in kept])


def drop_decoded_audio(store: ObjectStore, limit: int, now: datetime | None = None) -> int:
    now = now or utcnow()
    with session_scope() as s:
        ids = list(s.scalars(select(Job.id).where(Job.audio_deleted_at.is_(None), Job.finished_at.is_not(None),
                                                  *_due(now))
                             .order_by(Job.finished_at).limit(limit)))
    drop_audio(ids, store, now)
    return len(ids)


def drop_sources(store: ObjectStore, cutoff: datetime, limit: int, now: datetime | None = None) -> int:
    now = now or utcnow()
    with session_scope() as s:
        rows = s.execute(select(Job.id, Job.source_uri)
                         .where(Job.source_deleted_at.is_(None), Job.finished_at < cutoff, *_due(now))
                         .order_by(Job.finished_at).limit(limit)).all()
    # only uploads live in the service's storage; a URI source belongs to the client
    kept = _delete_all(store, {j: f"{job_prefix(j)}source/" if uri.startswith(f"{UPLOAD_SCHEME}:") else None
                               for j, uri in rows})
    gone = [j for j, _ in rows if j not in kept]
    with session_scope() as s:
        _retry_later(s, kept, now)
        if gone:
            s.execute(update(Job).where(Job.id.in_(gone), Job.source_deleted_at.is_(None))
                      .values(source_deleted_at=utcnow()).execution_options(synchronize_session=False))
    return len(rows)


def expire_jobs(store: ObjectStore, cutoff: datetime, limit: int, now: datetime | None = None) -> int:
    """Delete the oldest jobs finished before ``cutoff``: their objects, then (rolling their usage up) the
    rows of those whose objects are gone. The job rows stay locked from the moment they are chosen to the
    commit, so a second sweep running at the same time skips them instead of counting their usage twice.
    Returns how many jobs it took (gone or kept for a later try)."""
    now = now or utcnow()
    with session_scope() as s:
        ids = list(s.scalars(select(Job.id).where(Job.finished_at < cutoff, *_due(now))
                             .order_by(Job.finished_at).limit(limit).with_for_update(skip_locked=True)))
        if not ids:
            return 0
        kept = _delete_all(store, {j: job_prefix(j) for j in ids})
        _retry_later(s, kept, now)
        gone = [j for j in ids if j not in kept]
        if gone:
            roll_up(s, gone)
            s.execute(delete(Chunk).where(Chunk.job_id.in_(gone)).execution_options(synchronize_session=False))
            s.execute(delete(Job).where(Job.id.in_(gone)).execution_options(synchronize_session=False))
    return len(ids)


def drop_unused_batches(cutoff: datetime, limit: int) -> int:
    """Batch records older than the retention whose chunks are all gone (kept while any chunk names one:
    usage reads a chunk's day from its batch)."""
    with session_scope() as s:
        old = (select(Batch.id).where(Batch.created_at < cutoff, ~exists().where(Chunk.batch_id == Batch.id))
               .limit(limit).scalar_subquery())
        res = s.execute(delete(Batch).where(Batch.id.in_(old)).execution_options(synchronize_session=False))
        return res.rowcount or 0
