"""reconcile (beat): find jobs and chunks that stopped moving and send their work again.

Redis only carries messages; if it loses them (flush, restart without persistence, a crash between
commit and publish), this puts the system back in motion from what Postgres says. Two questions for
each job or chunk that has been still for ``reconcile_stale_s``:

* does the holder still live? A job PREPARING or FINALIZING and a chunk RUNNING carry a lease that
  their holder's heartbeat keeps alive; an expired lease means the holder died, and the work is sent
  again (the next holder takes over, charging an attempt, so a poison input runs out of attempts).
* is its message lost, or only waiting? A job QUEUED and a chunk PENDING are re-sent only when the
  broker holds no message for them (workers/inventory.py): a backlog of hours is left alone. The broker
  is asked about these items alone (the sent index), so a pass costs the same behind any backlog.

Every re-send touches ``updated_at`` (a conditional update, skipping rows another transaction holds),
so an item is sent at most once per stale period, even by two reconcilers at once.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session

from app import fair_share, metrics
from app.constants import (
    SENT_INDEX_PREFIX,
    TASK_FINALIZE,
    TASK_PREPARE,
    TASK_RECONCILE,
    TASK_TRANSCRIBE,
)
from app.db.models import Chunk, ChunkState, Job, JobState, utcnow
from app.db.session import session_scope
from app.lifecycle import _advance, _fail_job_row, lock_jobs, log_state
from app.messaging import send_finalize, send_prepare, send_transcribe, try_send
from app.sent_index import forget_seen, sent_index_key
from app.settings import get_settings
from workers.celery_app import app
from workers.inventory import Inventory, read_inventory

log = logging.getLogger("asrq.reconcile")

LIMIT = 5000  # per kind and run, oldest first; the next run takes the rest


@app.task(name=TASK_RECONCILE, ignore_result=True)
def reconcile() -> dict:
    try:
        return reconcile_once()
    except Exception as e:  # noqa: BLE001 - the next beat tries again
        log.warning("reconcile skipped: %s", type(e).__name__)
        return {}


@dataclass
class Candidates:
    """Items still for a stale period, by what their state says about their message."""

    queued: list[uuid.UUID] = field(default_factory=list)  # jobs whose prepare message may be lost
    preparing: list[uuid.UUID] = field(default_factory=list)  # jobs whose preparer's lease expired
    finalize_free: list[uuid.UUID] = field(default_factory=list)  # FINALIZING, nobody took it yet
    finalize_dead: list[uuid.UUID] = field(default_factory=list)  # FINALIZING, its finalizer's lease expired
    pending: list[uuid.UUID] = field(default_factory=list)  # chunks nobody holds
    running: list[uuid.UUID] = field(default_factory=list)  # chunks whose holder's lease expired

    def empty(self) -> bool:
        return not any(vars(self).values())


def reconcile_once() -> dict:
    settings = get_settings()
    keep_usage(settings)
    prune_sent_index(settings)
    now = utcnow()
    stale = now - timedelta(seconds=settings.reconcile_stale_s)
    with session_scope() as s:
        finalize_now = repair_transcribing(s, stale)
        cand = find_candidates(s, now, stale)
    if cand.empty() and not finalize_now:
        return {}
    asked = {TASK_PREPARE: cand.queued + cand.preparing, TASK_TRANSCRIBE: cand.pending + cand.running,
             TASK_FINALIZE: cand.finalize_free + cand.finalize_dead}
    try:
        inventory = read_inventory(settings, asked, stale.timestamp())
    except Exception as e:  # noqa: BLE001 - the broker is down: nothing could be sent now anyway
        log.warning("broker inventory unreadable (%s); re-sending nothing this run", type(e).__name__)
        try_send(send_finalize, finalize_now)
        return {}
    prepare, transcribe, finalize = lost_messages(cand, inventory, stale)
    with session_scope() as s:
        prepare = touch_jobs(s, prepare, [JobState.QUEUED, JobState.PREPARING], stale, now)
        finalize = touch_jobs(s, finalize, [JobState.FINALIZING], stale, now) + finalize_now
        transcribe = touch_chunks(s, transcribe, stale, now)
        # re-sent at their tenants' levels: after a broker flush, one tenant's backlog must not go ahead
        # of another's work again
        prepare_levels = fair_share.levels_for_jobs(s, prepare, settings) if prepare else []
        transcribe_levels = fair_share.levels_for_chunks(s, transcribe, settings) if transcribe else []
    try_send(lambda ids: send_prepare(ids, prepare_levels), prepare)
    try_send(lambda ids: send_transcribe(ids, levels=transcribe_levels), transcribe)
    try_send(send_finalize, finalize)
    counts = {"prepare": len(prepare), "transcribe": len(transcribe), "finalize": len(finalize)}
    for kind, n in counts.items():
        metrics.RECONCILER_RESENDS.labels(kind).inc(n)
    if any(counts.values()):
        log.info("reconcile re-sent %s", counts)
    return counts


def keep_usage(settings) -> None:  # noqa: ANN001
    """Fold recently finished jobs into their tenants' decayed usage (fair share). Its own transaction:
    a failure here costs fair-share precision, never a re-send."""
    try:
        with session_scope() as s:
            fair_share.record_finished_usage(s, settings)
    except Exception as e:  # noqa: BLE001 - the next beat counts the same jobs
        log.warning("fair-share usage not updated this run: %s", type(e).__name__)


# what each task's message is for: an item in any other state needs none, and its field in the sent index goes
_NEEDS_MESSAGE = {
    TASK_PREPARE: (Job, (JobState.QUEUED, JobState.PREPARING)),
    TASK_TRANSCRIBE: (Chunk, (ChunkState.PENDING, ChunkState.RUNNING)),
    TASK_FINALIZE: (Job, (JobState.FINALIZING,)),
}
PRUNE_PAGE = 1000
PRUNE_BUDGET_S = 0.3  # per pass, all tasks together


def prune_sent_index(settings) -> int:  # noqa: ANN001
    """Drop the sent index's fields of items that wait for no message any more (done, failed, deleted): a
    worker tidies its own as it finishes (workers/signals.py), and this sweeps up after one that died
    first. A bounded slice per pass, resuming where the last pass stopped, so the index stays about as
    large as the work still queued, and a pass costs the same whatever it holds."""
    if not settings.broker_url.startswith(("redis://", "rediss://")):
        return 0
    import redis

    dropped = 0
    client = redis.Redis.from_url(settings.broker_url, socket_timeout=30)
    try:
        for task, (model, states) in _NEEDS_MESSAGE.items():
            key, at = sent_index_key(task), f"{SENT_INDEX_PREFIX}cursor:{task}"
            cursor = int(client.get(at) or 0)
            deadline = time.monotonic() + PRUNE_BUDGET_S / len(_NEEDS_MESSAGE)
            while True:
                cursor, page = client.hscan(key, cursor, count=PRUNE_PAGE)
                dropped += _drop_finished(task, model, states, page)
                if cursor == 0 or time.monotonic() > deadline:
                    break
            client.set(at, cursor)
    except Exception as e:  # noqa: BLE001 - fields left over cost memory, never a message; the next pass goes on
        log.warning("sent index not pruned this run: %s", type(e).__name__)
    finally:
        client.close()
    return dropped


def _drop_finished(task: str, model: type[Job | Chunk], states: tuple, page: dict[bytes, bytes]) -> int:
    if not page:
        return 0
    ids: dict[uuid.UUID | None, list[bytes]] = {}
    for name in page:
        try:
            ids.setdefault(uuid.UUID(name.decode()), []).append(name)
        except ValueError:
            ids.setdefault(None, []).append(name)  # not an id of ours
    with session_scope() as s:
        keep = set(s.scalars(select(model.id).where(model.id.in_([i for i in ids if i]), model.state.in_(states))))
    gone = {name.decode(): page[name] for i, names in ids.items() if i not in keep for name in names}
    return forget_seen(task, gone)


def repair_transcribing(s: Session, stale: datetime) -> list[uuid.UUID]:
    """Jobs TRANSCRIBING that no chunk result will move on: one with a failed chunk fails (with that
    chunk's reason); one whose chunks are all done but whose completion was missed moves to FINALIZING.
    Returns the jobs to finalize."""
    failed = s.execute(
        select(Chunk.job_id, Chunk.index, Chunk.error).join(Job, Job.id == Chunk.job_id)
        .where(Job.state == JobState.TRANSCRIBING, Chunk.state == ChunkState.FAILED)
        .order_by(Chunk.job_id, Chunk.index).limit(LIMIT)).all()
    reasons: dict[uuid.UUID, str] = {}
    for job_id, index, error in failed:
        reasons.setdefault(job_id, f"chunk {index} failed: {error or 'unknown error'}")
    if reasons:
        lock_jobs(s, set(reasons))
        moved = [jid for jid in sorted(reasons) if _fail_job_row(s, jid, reasons[jid])]
        s.commit()
        for jid in moved:
            log_state(jid, JobState.FAILED, reason=repr(reasons[jid][:200]), repaired=True)
    not_done = exists().where(Chunk.job_id == Job.id, Chunk.state != ChunkState.DONE)
    complete = list(s.scalars(
        select(Job.id).where(Job.state == JobState.TRANSCRIBING, Job.updated_at < stale,
                             Job.chunks_total.is_not(None), ~not_done).limit(LIMIT)))
    finalize = [jid for jid in complete if _advance(s, jid)]
    s.commit()
    return finalize


def find_candidates(s: Session, now: datetime, stale: datetime) -> Candidates:
    def job_ids(*where) -> list[uuid.UUID]:  # noqa: ANN002
        return list(s.scalars(select(Job.id).where(Job.updated_at < stale, *where)
                              .order_by(Job.updated_at).limit(LIMIT)))

    def chunk_ids(*where) -> list[uuid.UUID]:  # noqa: ANN002
        return list(s.scalars(select(Chunk.id).join(Job, Job.id == Chunk.job_id)
                              .where(Job.state == JobState.TRANSCRIBING, Chunk.updated_at < stale, *where)
                              .order_by(Chunk.updated_at).limit(LIMIT)))

    lease_gone = (Job.lease_until < now) | Job.lease_until.is_(None)
    return Candidates(
        queued=job_ids(Job.state == JobState.QUEUED),
        preparing=job_ids(Job.state == JobState.PREPARING, lease_gone),
        finalize_free=job_ids(Job.state == JobState.FINALIZING, Job.lease_until.is_(None)),
        finalize_dead=job_ids(Job.state == JobState.FINALIZING, Job.lease_until < now),
        pending=chunk_ids(Chunk.state == ChunkState.PENDING),
        running=chunk_ids(Chunk.state == ChunkState.RUNNING, Chunk.lease_until < now),
    )


def lost_messages(c: Candidates, inv: Inventory | None, stale: datetime) -> tuple[list, list, list]:
    """(prepare, transcribe, finalize) ids whose work must be sent again.

    Waiting in a queue: it will be delivered, leave it. Handed to a worker within the stale period for
    a job nobody holds yet: that worker is about to take it. Handed earlier and still not taken, or
    work whose holder's lease expired: that worker is gone (or stuck), so its copy counts for nothing.
    A transcribe worker keeps the chunks it holds fresh from the moment its task starts; between the
    delivery and that moment (its batch buffer's flush interval) the fresh delivery speaks for them.
    """
    if inv is None:  # a transport whose queues cannot be read: re-send what has been still too long
        return c.queued + c.preparing, c.pending + c.running, c.finalize_free + c.finalize_dead
    since = stale.timestamp()
    prepare = ([j for j in c.queued if not inv.has_pending(TASK_PREPARE, j, since)]
               + [j for j in c.preparing if not inv.has_waiting(TASK_PREPARE, j)])
    transcribe = ([ch for ch in c.pending if not inv.has_pending(TASK_TRANSCRIBE, ch, since)]
                  + [ch for ch in c.running if not inv.has_waiting(TASK_TRANSCRIBE, ch)])
    finalize = ([j for j in c.finalize_free if not inv.has_pending(TASK_FINALIZE, j, since)]
                + [j for j in c.finalize_dead if not inv.has_waiting(TASK_FINALIZE, j)])
    return prepare, transcribe, finalize


def touch_jobs(s: Session, ids: list[uuid.UUID], states: list[JobState], stale: datetime,
               now: datetime) -> list[uuid.UUID]:
    return _touch(s, Job, ids, states, stale, now)


def touch_chunks(s: Session, ids: list[uuid.UUID], stale: datetime, now: datetime) -> list[uuid.UUID]:
    return _touch(s, Chunk, ids, [ChunkState.PENDING, ChunkState.RUNNING], stale, now)


def _touch(s: Session, model: type[Job] | type[Chunk], ids: list[uuid.UUID], states: list, stale: datetime,
           now: datetime) -> list[uuid.UUID]:
    """Mark as sent now the rows among ``ids`` that are still in ``states`` and still stale, skipping rows
    another transaction holds; returns the ids to send."""
    if not ids:
        return []
    still = (select(model.id).where(model.id.in_(ids), model.state.in_(states), model.updated_at < stale)
             .with_for_update(skip_locked=True))
    res = s.execute(update(model).where(model.id.in_(still.scalar_subquery())).values(updated_at=now)
                    .returning(model.id).execution_options(synchronize_session=False))
    out = [r[0] for r in res]
    s.commit()
    return out
