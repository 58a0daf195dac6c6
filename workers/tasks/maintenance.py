"""maintenance (beat): retention of what finished jobs leave in storage and in Postgres.

* decoded audio (the PCM prepare wrote): removed once the job is finished; finalize removes it at
  COMPLETED, and this sweep catches every other end (failed, cancelled, a finalize that died after
  committing). A chunk still reading it meets a missing object and closes quietly (transcribe.py).
* uploaded sources: kept ASRQ_SOURCE_RETENTION_DAYS after the job finished.
* everything else (transcripts, job and chunk rows): ASRQ_RETENTION_DAYS after the job finished. The
  job's usage moves to the tenant's daily totals in the transaction that deletes its rows.

Every step takes the oldest ``maintenance_batch_jobs`` items, deletes their objects, then records that in
one short transaction: a run killed midway leaves rows that the next run finds again, and deleting an
object twice is harmless. Rows are deleted last, so nothing in storage outlives its job's rows.
"""

from __future__ import annotations

import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

from sqlalchemy import delete, exists, select, update

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
_FINISHED = list(TERMINAL_JOB_STATES)


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
        "audio": _repeat(lambda: drop_decoded_audio(store, limit), limit, rounds),
        "sources": _repeat(lambda: drop_sources(store, source_cutoff, limit), limit, rounds),
        "expired": _repeat(lambda: expire_jobs(store, cutoff, limit), limit, rounds),
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


def _delete_all(store: ObjectStore, prefixes: list[str]) -> None:
    """Delete every prefix; raises the first error once all have been tried (the rows then stay as they
    are, and the next run deletes again)."""
    if len(prefixes) <= 1:
        for p in prefixes:
            store.delete_prefix(p)
        return
    with ThreadPoolExecutor(DELETE_THREADS, thread_name_prefix="asrq-retention") as pool:
        for _ in pool.map(store.delete_prefix, prefixes):
            pass


def drop_audio(job_ids: list[uuid.UUID], store: ObjectStore | None = None) -> None:
    """Delete the decoded audio of these finished jobs now and record it."""
    _delete_all(store or get_store(), [pcm_key(j) for j in job_ids])
    with session_scope() as s:
        mark_audio_deleted(s, job_ids)


def drop_decoded_audio(store: ObjectStore, limit: int) -> int:
    with session_scope() as s:
        ids = list(s.scalars(select(Job.id).where(Job.audio_deleted_at.is_(None), Job.finished_at.is_not(None),
                                                  Job.state.in_(_FINISHED))
                             .order_by(Job.finished_at).limit(limit)))
    drop_audio(ids, store)
    return len(ids)


def drop_sources(store: ObjectStore, cutoff: datetime, limit: int) -> int:
    with session_scope() as s:
        rows = s.execute(select(Job.id, Job.source_uri)
                         .where(Job.source_deleted_at.is_(None), Job.finished_at < cutoff, Job.state.in_(_FINISHED))
                         .order_by(Job.finished_at).limit(limit)).all()
    # only uploads live in the service's storage; a URI source belongs to the client
    _delete_all(store, [f"{job_prefix(j)}source/" for j, uri in rows if uri.startswith(f"{UPLOAD_SCHEME}:")])
    ids = [j for j, _ in rows]
    if ids:
        with session_scope() as s:
            s.execute(update(Job).where(Job.id.in_(ids), Job.source_deleted_at.is_(None))
                      .values(source_deleted_at=utcnow()).execution_options(synchronize_session=False))
    return len(ids)


def expire_jobs(store: ObjectStore, cutoff: datetime, limit: int) -> int:
    """Delete the oldest jobs finished before ``cutoff``: their objects, then (rolling their usage up) their
    rows. The job rows stay locked from the moment they are chosen to the commit, so a second sweep running
    at the same time skips them instead of counting their usage twice."""
    with session_scope() as s:
        ids = list(s.scalars(select(Job.id).where(Job.finished_at < cutoff, Job.state.in_(_FINISHED))
                             .order_by(Job.finished_at).limit(limit).with_for_update(skip_locked=True)))
        if not ids:
            return 0
        _delete_all(store, [job_prefix(j) for j in ids])
        roll_up(s, ids)
        s.execute(delete(Chunk).where(Chunk.job_id.in_(ids)).execution_options(synchronize_session=False))
        s.execute(delete(Job).where(Job.id.in_(ids)).execution_options(synchronize_session=False))
    return len(ids)


def drop_unused_batches(cutoff: datetime, limit: int) -> int:
    """Batch records older than the retention whose chunks are all gone (kept while any chunk names one:
    usage reads a chunk's day from its batch)."""
    with session_scope() as s:
        old = (select(Batch.id).where(Batch.created_at < cutoff, ~exists().where(Chunk.batch_id == Batch.id))
               .limit(limit).scalar_subquery())
        res = s.execute(delete(Batch).where(Batch.id.in_(old)).execution_options(synchronize_session=False))
        return res.rowcount or 0
