"""reconcile (beat): find jobs and chunks that stopped moving and send their work again.

Redis only carries messages; if it loses them (flush, restart without persistence, a crash between
commit and publish), this puts the system back in motion from what Postgres says. Every re-send
touches ``updated_at``, so an item is re-sent at most once per stale period.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import select, update

from app.constants import TASK_RECONCILE
from app.db.models import Chunk, ChunkState, Job, JobState, utcnow
from app.db.session import session_scope
from app.settings import get_settings
from workers.celery_app import app
from workers.dispatch import send_finalize, send_prepare, send_transcribe, try_send
from workers.state import _advance

log = logging.getLogger("asrq.reconcile")

LIMIT = 5000  # per state and run; the next run takes the rest


@app.task(name=TASK_RECONCILE, ignore_result=True)
def reconcile() -> dict:
    try:
        return reconcile_once()
    except Exception as e:  # noqa: BLE001 - the next beat tries again
        log.warning("reconcile skipped: %s", type(e).__name__)
        return {}


def reconcile_once() -> dict:
    settings = get_settings()
    now = utcnow()
    stale = now - timedelta(seconds=settings.reconcile_stale_s)
    with session_scope() as s:
        prepare_ids = list(s.scalars(
            select(Job.id).where(Job.state.in_([JobState.QUEUED, JobState.PREPARING]), Job.updated_at < stale)
            .limit(LIMIT)))
        chunk_ids = list(s.scalars(
            select(Chunk.id).join(Job, Job.id == Chunk.job_id)
            .where(Job.state == JobState.TRANSCRIBING,
                   ((Chunk.state == ChunkState.PENDING) & (Chunk.updated_at < stale))
                   | ((Chunk.state == ChunkState.RUNNING) & (Chunk.lease_until < now)))
            .limit(LIMIT)))
        # a job whose last chunk result was stored but whose completion was missed
        stuck = list(s.scalars(select(Job.id).where(Job.state == JobState.TRANSCRIBING, Job.updated_at < stale)
                               .limit(LIMIT)))
        finalize_ids = [jid for jid in stuck if _advance(s, jid)]
        s.commit()
        finalize_ids += list(s.scalars(
            select(Job.id).where(Job.state == JobState.FINALIZING, Job.updated_at < stale).limit(LIMIT)))
        if prepare_ids or finalize_ids:
            s.execute(update(Job).where(Job.id.in_(prepare_ids + finalize_ids)).values(updated_at=now))
        if chunk_ids:
            s.execute(update(Chunk).where(Chunk.id.in_(chunk_ids)).values(updated_at=now))
        if stuck:
            s.execute(update(Job).where(Job.id.in_(stuck)).values(updated_at=now))
    try_send(send_prepare, prepare_ids)
    try_send(send_transcribe, chunk_ids)
    try_send(send_finalize, finalize_ids)
    counts = {"prepare": len(prepare_ids), "transcribe": len(chunk_ids), "finalize": len(finalize_ids)}
    if any(counts.values()):
        log.info("reconcile re-sent %s", counts)
    return counts
