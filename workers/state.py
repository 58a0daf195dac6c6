"""Worker-side state transitions of jobs and chunks, each a conditional SQL update.

Every transition names the state it leaves, so a redelivered or duplicated message finds nothing to
do instead of doing it twice.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import case, delete, func, insert, select, update
from sqlalchemy.orm import Session

from app.db.models import TERMINAL_JOB_STATES, Batch, Chunk, ChunkState, Job, JobState, utcnow
from workers.chunking import ChunkPlan

log = logging.getLogger("asrq.state")


def log_state(job: Job | uuid.UUID, state: JobState, **extra: object) -> None:
    job_id = job.id if isinstance(job, Job) else job
    started = job.created_at if isinstance(job, Job) else None
    elapsed = (utcnow() - started).total_seconds() if started else 0.0
    tail = " ".join(f"{k}={v}" for k, v in extra.items())
    log.info("job=%s state=%s elapsed_s=%.3f %s", job_id, state.value, elapsed, tail)


def begin_prepare(session: Session, job_id: uuid.UUID, max_attempts: int, stale_s: float) -> Job | None:
    """QUEUED -> PREPARING with one more attempt; None when the job needs no preparing.

    A job already PREPARING is taken over only when its heartbeat stopped (its worker died): a
    duplicate message must not start a second prepare beside a live one.
    """
    job_id = uuid.UUID(str(job_id))
    stale = utcnow() - timedelta(seconds=stale_s)
    res = session.execute(
        update(Job)
        .where(Job.id == job_id,
               (Job.state == JobState.QUEUED) | ((Job.state == JobState.PREPARING) & (Job.updated_at < stale)))
        .values(state=JobState.PREPARING, prepare_attempts=Job.prepare_attempts + 1,
                started_at=func.coalesce(Job.started_at, utcnow()), updated_at=utcnow())
    )
    session.commit()
    if not res.rowcount:
        return None
    job = session.get(Job, job_id, populate_existing=True)
    assert job is not None
    if job.prepare_attempts > max_attempts:
        fail_job(session, job_id, f"preparing the audio failed {max_attempts} times; last attempt did not finish")
        return None
    log_state(job, JobState.PREPARING, attempt=job.prepare_attempts)
    return job


def requeue_prepare(session: Session, job_id: uuid.UUID) -> None:
    """PREPARING -> QUEUED after a transient failure, so the retried message may take it again.

    The attempt is given back: attempts count prepares that never finished (a dead worker, a poison
    file), and this one finished with an error a retry can clear. The message's own retry count
    bounds transient retries (tasks/policy.py)."""
    session.execute(update(Job).where(Job.id == job_id, Job.state == JobState.PREPARING)
                    .values(state=JobState.QUEUED, updated_at=utcnow(),
                            prepare_attempts=case((Job.prepare_attempts > 0, Job.prepare_attempts - 1), else_=0)))
    session.commit()


def save_plan(session: Session, job_id: uuid.UUID, plans: list[ChunkPlan], duration_s: float) -> list[uuid.UUID]:
    """Write the chunk rows and move PREPARING -> TRANSCRIBING (or FINALIZING when there is no speech)."""
    job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
    if job is None or job.state != JobState.PREPARING:
        session.rollback()
        return []
    session.execute(delete(Chunk).where(Chunk.job_id == job_id))  # a re-run prepare replaces its plan
    rows = [
        {"id": uuid.uuid4(), "job_id": job_id, "index": p.index, "start_ms": p.start_ms, "end_ms": p.end_ms,
         "state": ChunkState.PENDING, "attempts": 0, "updated_at": utcnow()}
        for p in plans
    ]
    if rows:
        session.execute(insert(Chunk), rows)
    state = JobState.TRANSCRIBING if rows else JobState.FINALIZING
    job.state = state
    job.duration_s = duration_s
    job.chunks_total = len(rows)
    job.chunks_done = 0
    job.transcribing_at = utcnow()
    session.commit()
    log_state(job, state, chunks=len(rows), audio_s=round(duration_s, 3))
    return [r["id"] for r in rows]


@dataclass(frozen=True)
class ChunkWork:
    chunk_id: uuid.UUID
    job_id: uuid.UUID
    index: int
    start_ms: int
    end_ms: int
    attempts: int
    options: dict

    @property
    def duration_s(self) -> float:
        return (self.end_ms - self.start_ms) / 1000


def _work_query(ids: list[uuid.UUID]):  # noqa: ANN202
    return (select(Chunk.id, Chunk.job_id, Chunk.index, Chunk.start_ms, Chunk.end_ms, Chunk.attempts, Job.options)
            .join(Job, Job.id == Chunk.job_id).where(Chunk.id.in_(ids)))


def open_chunks(session: Session, chunk_ids: list[uuid.UUID]) -> list[ChunkWork]:
    """The chunks among these that still need a result (nothing is claimed yet)."""
    ids = [uuid.UUID(str(c)) for c in chunk_ids]
    rows = session.execute(
        _work_query(ids).where(Chunk.state.in_([ChunkState.PENDING, ChunkState.RUNNING]),
                               Job.state == JobState.TRANSCRIBING)
    ).all()
    return [ChunkWork(*r) for r in rows]


def claim_chunks(session: Session, chunk_ids: list[uuid.UUID], lease_s: float,
                 max_attempts: int) -> tuple[list[ChunkWork], list[ChunkWork]]:
    """Take a lease on chunks nobody holds. Returns (claimed, exhausted): exhausted ones ran out of attempts.

    The conditional UPDATE is the lock: of two workers handed the same chunk, one wins, the other
    gets nothing back. Each claim counts an attempt, so a chunk that kills its worker runs out.
    """
    now = utcnow()
    ids = [uuid.UUID(str(c)) for c in chunk_ids]
    live_jobs = select(Job.id).where(Job.state == JobState.TRANSCRIBING)
    res = session.execute(
        update(Chunk)
        .where(
            Chunk.id.in_(ids),
            Chunk.job_id.in_(live_jobs),
            (Chunk.state == ChunkState.PENDING) | ((Chunk.state == ChunkState.RUNNING) & (Chunk.lease_until < now)),
        )
        .values(state=ChunkState.RUNNING, attempts=Chunk.attempts + 1,
                lease_until=now + timedelta(seconds=lease_s), updated_at=now)
        .returning(Chunk.id)
        .execution_options(synchronize_session=False)
    )
    claimed_ids = [r[0] for r in res]
    session.commit()
    if not claimed_ids:
        return [], []
    work = [ChunkWork(*r) for r in session.execute(_work_query(claimed_ids)).all()]
    return [w for w in work if w.attempts <= max_attempts], [w for w in work if w.attempts > max_attempts]


def record_batch(session: Session, worker: str, engine: str, work: list[ChunkWork], infer_s: float) -> uuid.UUID:
    batch_id = uuid.uuid4()
    session.execute(insert(Batch), [{
        "id": batch_id, "worker": worker, "engine": engine, "size": len(work),
        "job_count": len({w.job_id for w in work}), "audio_s": round(sum(w.duration_s for w in work), 3),
        "infer_s": round(infer_s, 4), "created_at": utcnow(),
    }])
    return batch_id


def save_results(session: Session, batch_id: uuid.UUID | None,
                 results: list[tuple[ChunkWork, str, list, str | None]]) -> list[uuid.UUID]:
    """Store chunk results (first result wins) and return the jobs this call moved to FINALIZING."""
    for work, text, words, language in results:
        # a chunk no longer RUNNING was finished by a twin, failed, or cancelled: its result is dropped
        session.execute(
            update(Chunk)
            .where(Chunk.id == work.chunk_id, Chunk.state == ChunkState.RUNNING)
            .values(state=ChunkState.DONE, text=text, words=words, language=language, batch_id=batch_id,
                    error=None, lease_until=None, updated_at=utcnow())
        )
    finished = [jid for jid in sorted({r[0].job_id for r in results}) if _advance(session, jid)]
    session.commit()
    return finished


def _advance(session: Session, job_id: uuid.UUID) -> bool:
    """Refresh the job's progress; True when this transaction moved it TRANSCRIBING -> FINALIZING.

    The row lock makes the count see every chunk committed before it: two batches finishing a job's
    last two chunks at once cannot both miss the completion.
    """
    job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
    if job is None or job.state != JobState.TRANSCRIBING:
        return False
    done = session.scalar(select(func.count()).where(Chunk.job_id == job_id, Chunk.state == ChunkState.DONE)) or 0
    job.chunks_done = done
    if job.chunks_total is not None and done >= job.chunks_total:
        job.state = JobState.FINALIZING
        log_state(job, JobState.FINALIZING, chunks=done)
        return True
    return False


def release_chunks(session: Session, work: list[ChunkWork], error: str) -> None:
    """Give chunks back for another attempt (their message is re-sent by the caller)."""
    _give_back(session, [w.chunk_id for w in work], error)


def release_unreadable(session: Session, work: list[ChunkWork], error: str) -> dict[uuid.UUID, int]:
    """Give back chunks whose audio could not be read (storage down) without charging the attempt their
    claim counted; returns each chunk's count of such failures, which bounds and paces its retries."""
    ids = [w.chunk_id for w in work]
    _give_back(session, ids, error, attempts=Chunk.attempts - 1, storage_failures=Chunk.storage_failures + 1)
    return dict(session.execute(select(Chunk.id, Chunk.storage_failures).where(Chunk.id.in_(ids))).all())


def _give_back(session: Session, ids: list[uuid.UUID], error: str, **counters: object) -> None:
    session.execute(
        update(Chunk)
        .where(Chunk.id.in_(ids), Chunk.state == ChunkState.RUNNING)
        .values(state=ChunkState.PENDING, lease_until=None, error=error[:2000], updated_at=utcnow(), **counters)
    )
    session.commit()


def fail_chunks(session: Session, work: list[ChunkWork], error: str) -> None:
    """Chunks that cannot succeed: fail them and their jobs, with the reason stored."""
    session.execute(
        update(Chunk)
        .where(Chunk.id.in_([w.chunk_id for w in work]), Chunk.state != ChunkState.DONE)
        .values(state=ChunkState.FAILED, error=error[:2000], lease_until=None, updated_at=utcnow())
    )
    session.commit()
    for job_id in sorted({w.job_id for w in work}):
        idx = sorted(w.index for w in work if w.job_id == job_id)
        fail_job(session, job_id, f"chunk {idx[0]} failed: {error}")


def fail_job(session: Session, job_id: uuid.UUID, reason: str) -> bool:
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state.not_in(list(TERMINAL_JOB_STATES)))
        .values(state=JobState.FAILED, error=reason[:4000], finished_at=utcnow(), updated_at=utcnow())
    )
    session.commit()
    if res.rowcount:
        log_state(session.get(Job, job_id) or job_id, JobState.FAILED, reason=repr(reason[:200]))
    return bool(res.rowcount)


def complete_job(session: Session, job_id: uuid.UUID, language: str | None) -> bool:
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == JobState.FINALIZING)
        .values(state=JobState.COMPLETED, language=language, finished_at=utcnow(), updated_at=utcnow())
    )
    session.commit()
    if res.rowcount:
        job = session.get(Job, job_id, populate_existing=True)
        log_state(job or job_id, JobState.COMPLETED)
    return bool(res.rowcount)
