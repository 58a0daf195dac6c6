"""The lifecycle of jobs and chunks: every state transition, each a conditional SQL update, with its
fencing, the webhook outbox row a job's end writes, and the one lock order (``lock_jobs``).

Every transition names the state it leaves, so a redelivered or duplicated message finds nothing to
do instead of doing it twice. The API (cancel), the workers and the reconciler all move jobs through
here; the README's state table says who owns each state.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import (
    JSON,
    Float,
    String,
    Text,
    Uuid,
    bindparam,
    case,
    cast,
    delete,
    false,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from app import metrics
from app.db.models import (
    TERMINAL_JOB_STATES,
    Batch,
    Chunk,
    ChunkState,
    Job,
    JobState,
    WebhookDelivery,
    WebhookState,
    utcnow,
)
from app.webhooks import EVENTS

log = logging.getLogger("asrq.state")


def log_state(job: Job | uuid.UUID, state: JobState, *, created_at: datetime | None = None, **extra: object) -> None:
    """The one log line of a state change; ``created_at``: the job's, where only its id is in hand."""
    job_id = job.id if isinstance(job, Job) else job
    started = job.created_at if isinstance(job, Job) else created_at
    elapsed = (utcnow() - started).total_seconds() if started else 0.0
    tail = " ".join(f"{k}={v}" for k, v in extra.items())
    log.info("job=%s state=%s elapsed_s=%.3f %s", job_id, state.value, elapsed, tail)


def begin_prepare(session: Session, job_id: uuid.UUID, max_attempts: int, lease_s: float,
                  resume_fence: int | None = None) -> Job | None:
    """QUEUED -> PREPARING with one more attempt, a lease and a new fencing token (``Job.prepare_fence``,
    which every later write of this holder must match); None when the job needs no preparing.

    A job already PREPARING is taken over only when its holder's lease ran out (the holder died: its
    heartbeat stopped). A duplicate message meets a live lease and does nothing, so there is never a
    second prepare beside a live one, and a prepare that died is always taken over, charging an attempt.
    ``resume_fence``: the retry of a prepare that stopped on a transient error and could not give its
    attempt back (the database was what failed) continues that attempt, uncharged, if the job is still
    that prepare's: its token is still the job's. Only the holder that stopped sends that retry, so its
    live lease is its own; the resumed prepare gets a new token all the same, so a duplicate of the retry
    message finds the token moved on and a live lease, and does nothing.
    """
    job_id = uuid.UUID(str(job_id))
    now = utcnow()
    resumable = ((Job.state == JobState.PREPARING) & (Job.prepare_fence == resume_fence)
                 if resume_fence is not None else false())
    # RETURNING: the take-over and the row it hands back are one round trip
    job = session.scalars(
        update(Job)
        .where(Job.id == job_id,
               (Job.state == JobState.QUEUED)
               | ((Job.state == JobState.PREPARING) & ((Job.lease_until < now) | Job.lease_until.is_(None)))
               | resumable)
        .values(state=JobState.PREPARING,
                prepare_attempts=case((resumable, Job.prepare_attempts), else_=Job.prepare_attempts + 1),
                prepare_fence=Job.prepare_fence + 1,
                lease_until=now + timedelta(seconds=lease_s),
                started_at=func.coalesce(Job.started_at, now), updated_at=now)
        .returning(Job),
        execution_options={"populate_existing": True},
    ).first()
    session.commit()
    if job is None:
        log.debug("job=%s prepare: nothing to do (not QUEUED, or held by a live lease)", job_id)
        return None
    if job.prepare_attempts > max_attempts:
        fail_job(session, job_id, f"preparing the audio failed {max_attempts} times; last attempt did not finish")
        return None
    log_state(job, JobState.PREPARING, attempt=job.prepare_attempts, fence=job.prepare_fence)
    return job


def _fence(state: JobState):  # noqa: ANN202
    return Job.prepare_fence if state == JobState.PREPARING else Job.finalize_fence


def renew_job_lease(session: Session, job_id: uuid.UUID, state: JobState, fence: int, lease_s: float) -> bool:
    """The holder's heartbeat: extend the lease if this holder (state + fencing token) still has the job.
    False means the job was cancelled, failed or taken over: the holder should stop."""
    res = session.execute(
        update(Job).where(Job.id == job_id, Job.state == state, _fence(state) == fence)
        .values(lease_until=utcnow() + timedelta(seconds=lease_s))
    )
    session.commit()
    return bool(res.rowcount)


def _given_back(attempts):  # noqa: ANN001, ANN202
    return case((attempts > 0, attempts - 1), else_=0)


def requeue_prepare(session: Session, job_id: uuid.UUID, fence: int) -> bool:
    """PREPARING -> QUEUED after a transient failure, so the retried message may take it again; False when
    this holder (``fence``) no longer has the job (taken over, cancelled): then it changes nothing.

    The attempt is given back: attempts count prepares that never finished (a dead worker, a poison
    file), and this one finished with an error a retry can clear. The message's own retry count
    bounds transient retries (tasks/policy.py). The token is not: the next holder gets a new one."""
    res = session.execute(update(Job).where(Job.id == job_id, Job.state == JobState.PREPARING,
                                            Job.prepare_fence == fence)
                          .values(state=JobState.QUEUED, updated_at=utcnow(), lease_until=None,
                                  prepare_attempts=_given_back(Job.prepare_attempts)))
    session.commit()
    return bool(res.rowcount)


class PlannedChunk(Protocol):
    """A chunk as prepare planned it (workers/chunking.py ChunkPlan)."""

    index: int
    start_ms: int
    end_ms: int


def save_plan(session: Session, job_id: uuid.UUID, fence: int, plans: Sequence[PlannedChunk],
              duration_s: float) -> list[uuid.UUID]:
    """Write the chunk rows and move PREPARING -> TRANSCRIBING (or FINALIZING when there is no speech).

    Fenced by the prepare's token: a prepare whose lease ran out and was taken over stores nothing."""
    now = utcnow()
    state = JobState.TRANSCRIBING if plans else JobState.FINALIZING
    # the fence and the move in one statement: the row lock it takes holds off a cancel or a take-over
    # until the plan below is committed with it
    job = session.scalars(
        update(Job)
        .where(Job.id == job_id, Job.state == JobState.PREPARING, Job.prepare_fence == fence)
        .values(state=state, lease_until=None, duration_s=duration_s, chunks_total=len(plans), chunks_done=0,
                transcribing_at=now, updated_at=now)
        .returning(Job),
        execution_options={"populate_existing": True},
    ).first()
    if job is None:
        session.rollback()
        return []
    session.execute(delete(Chunk).where(Chunk.job_id == job_id))  # a re-run prepare replaces its plan
    rows = [
        {"id": uuid.uuid4(), "job_id": job_id, "index": p.index, "start_ms": p.start_ms, "end_ms": p.end_ms,
         "state": ChunkState.PENDING, "attempts": 0, "updated_at": now}
        for p in plans
    ]
    if rows:
        session.execute(insert(Chunk), rows)
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
    claim_id: uuid.UUID | None = None  # set once claimed: the fencing token every later write must match

    @property
    def duration_s(self) -> float:
        return (self.end_ms - self.start_ms) / 1000


def open_chunks(session: Session, chunk_ids: list[uuid.UUID]) -> list[ChunkWork]:
    """The chunks among these that still need a result (nothing is claimed yet)."""
    ids = [uuid.UUID(str(c)) for c in chunk_ids]
    rows = session.execute(
        select(Chunk.id, Chunk.job_id, Chunk.index, Chunk.start_ms, Chunk.end_ms, Chunk.attempts)
        .join(Job, Job.id == Chunk.job_id)
        .where(Chunk.id.in_(ids), Chunk.state.in_([ChunkState.PENDING, ChunkState.RUNNING]),
               Job.state == JobState.TRANSCRIBING)
    ).all()
    if not rows:
        return []
    # each job's options once, not once per chunk: 1,000 hotwords are 21 KB of JSON (measured, 64 chunks of
    # one such job on Postgres, 2 busy cores: 97 ms read joined per chunk; this way 19-23 ms, as without them)
    options = dict(session.execute(select(Job.id, Job.options).where(Job.id.in_({r[1] for r in rows}))).all())
    return [ChunkWork(*r, options=options[r[1]]) for r in rows if r[1] in options]


def claim_chunks(session: Session, chunk_ids: list[uuid.UUID], lease_s: float, max_attempts: int,
                 options: dict[uuid.UUID, dict] | None = None,
                 charge: bool = True) -> tuple[list[ChunkWork], list[ChunkWork]]:
    """Take a lease on chunks nobody holds. Returns (claimed, exhausted): exhausted ones ran out of attempts.

    The conditional UPDATE is the lock: of two workers handed the same chunk, one wins, the other
    gets nothing back. It writes a fresh claim id: a worker whose lease ran out can no longer store,
    release or fail it. With ``charge``, the claim counts an attempt, so a chunk that kills its worker
    runs out; the transcribe worker claims a batch ahead of its turn and passes False, then counts
    the attempt when the batch's turn comes (start_chunks), so a batch claimed ahead by a worker that
    died before running it is not charged. Either way, a chunk already started ``max_attempts`` times
    without a result is exhausted.
    ``options`` (job id -> the job's options, as open_chunks read them) saves reading them again: the
    claim is then one statement, whatever the batch size.
    """
    now = utcnow()
    claim_id = uuid.uuid4()
    ids = [uuid.UUID(str(c)) for c in chunk_ids]
    live_jobs = select(Job.id).where(Job.state == JobState.TRANSCRIBING)
    res = session.execute(
        update(Chunk)
        .where(
            Chunk.id.in_(ids),
            Chunk.job_id.in_(live_jobs),
            (Chunk.state == ChunkState.PENDING) | ((Chunk.state == ChunkState.RUNNING) & (Chunk.lease_until < now)),
        )
        .values(state=ChunkState.RUNNING, attempts=Chunk.attempts + (1 if charge else 0), claim_id=claim_id,
                lease_until=now + timedelta(seconds=lease_s), updated_at=now)
        .returning(Chunk.id, Chunk.job_id, Chunk.index, Chunk.start_ms, Chunk.end_ms, Chunk.attempts)
        .execution_options(synchronize_session=False)
    )
    claimed = [tuple(r) for r in res]
    session.commit()
    if not claimed:
        return [], []
    known = dict(options or {})
    missing = {r[1] for r in claimed} - known.keys()
    if missing:
        known.update(session.execute(select(Job.id, Job.options).where(Job.id.in_(missing))).all())
    work = [ChunkWork(*r, options=known[r[1]], claim_id=claim_id) for r in claimed if r[1] in known]
    limit = max_attempts if charge else max_attempts - 1
    return [w for w in work if w.attempts <= limit], [w for w in work if w.attempts > limit]


def start_chunks(session: Session, work: list[ChunkWork], lease_s: float) -> list[ChunkWork]:
    """Inference on these claimed chunks begins: count the attempt (committed before the engine runs, so
    a chunk that kills its worker is charged) and renew the lease. Returns the chunks still held by these
    claims, with their new attempt counts; one whose lease ran out and was taken over, or whose job
    ended, is left out: another holder may be running it, and it must not run twice."""
    if not work:
        return []
    now = utcnow()
    res = session.execute(
        update(Chunk)
        .where(*_held(work))
        .values(attempts=Chunk.attempts + 1, lease_until=now + timedelta(seconds=lease_s))
        .returning(Chunk.id, Chunk.attempts)
        .execution_options(synchronize_session=False)
    )
    attempts = dict(tuple(r) for r in res)
    session.commit()
    return [replace(w, attempts=attempts[w.chunk_id]) for w in work if w.chunk_id in attempts]


def _held(work: list[ChunkWork]):  # noqa: ANN202
    """The rows of these chunks that are still held by the claims these work items came from."""
    return (Chunk.id.in_([w.chunk_id for w in work]), Chunk.state == ChunkState.RUNNING,
            Chunk.claim_id.in_({w.claim_id for w in work}))


def touch_held(session: Session, chunk_ids: list[uuid.UUID], claims: set[uuid.UUID], lease_s: float) -> None:
    """A transcribe worker's heartbeat: chunks it was handed but has not claimed yet stay fresh, and the
    leases of the claims it holds are renewed."""
    now = utcnow()
    session.execute(update(Chunk).where(Chunk.id.in_(chunk_ids), Chunk.state == ChunkState.PENDING)
                    .values(updated_at=now).execution_options(synchronize_session=False))
    if claims:
        session.execute(update(Chunk).where(Chunk.id.in_(chunk_ids), Chunk.state == ChunkState.RUNNING,
                                            Chunk.claim_id.in_(claims))
                        .values(lease_until=now + timedelta(seconds=lease_s))
                        .execution_options(synchronize_session=False))
    session.commit()


def lock_jobs(session: Session, job_ids: set[uuid.UUID]) -> None:
    """Lock order, everywhere: job rows first (in id order), then their chunk rows. Cancel, results,
    failures and the reconciler all follow it, so two of them can never wait on each other in a cycle."""
    if job_ids:
        session.execute(select(Job.id).where(Job.id.in_(job_ids)).order_by(Job.id).with_for_update())


def record_batch(session: Session, worker: str, engine: str, work: list[ChunkWork], infer_s: float) -> uuid.UUID:
    batch_id = uuid.uuid4()
    session.execute(insert(Batch), [{
        "id": batch_id, "worker": worker, "engine": engine, "size": len(work),
        "job_count": len({w.job_id for w in work}), "audio_s": round(sum(w.duration_s for w in work), 3),
        "infer_s": round(infer_s, 4), "created_at": utcnow(),
    }])
    return batch_id


def engine_shares(work: list[ChunkWork], infer_s: float) -> dict[uuid.UUID, float]:
    """A batch's inference time shared among its chunks by audio length (usage: engine seconds). Padding
    makes a short chunk cost nearly what a long one does, but a tenant pays for its own audio."""
    total = sum(w.duration_s for w in work)
    if not work:
        return {}
    return {w.chunk_id: infer_s * (w.duration_s / total if total > 0 else 1 / len(work)) for w in work}


def save_results(session: Session, batch_id: uuid.UUID | None,
                 results: list[tuple[ChunkWork, str, list, str | None]],
                 infer_s: float | None = None) -> list[uuid.UUID]:
    """Store chunk results and return the jobs this call moved to FINALIZING, in one transaction.

    A chunk no longer held by this claim (finished by a twin, failed, cancelled, or re-claimed after
    this worker's lease ran out) keeps what it has: the result is dropped. Whatever the batch size, a
    handful of statements: lock the jobs, store every result, refresh the jobs' progress. ``infer_s``:
    the batch's inference time, stored as each chunk's share of it."""
    job_ids = {r[0].job_id for r in results}
    lock_jobs(session, job_ids)
    _store_results(session, batch_id, results, infer_s)
    finished = _advance_jobs(session, job_ids)
    session.commit()
    return finished


def _array(name: str, item):  # noqa: ANN001, ANN202
    return cast(bindparam(name, type_=ARRAY(item)), ARRAY(item))


_RESULTS = func.unnest(_array("r_ids", Uuid), _array("r_claims", Uuid), _array("r_texts", Text),
                       _array("r_words", Text), _array("r_languages", String), _array("r_shares", Float),
                       ).table_valued("id", "claim_id", "text", "words", "language", "engine_s"
                                      ).render_derived(name="results")
_STORE_RESULTS = (
    update(Chunk)
    .where(Chunk.id == _RESULTS.c.id, Chunk.state == ChunkState.RUNNING, Chunk.claim_id == _RESULTS.c.claim_id)
    .values(text=_RESULTS.c.text, words=cast(_RESULTS.c.words, JSON), language=_RESULTS.c.language,
            engine_s=_RESULTS.c.engine_s, state=ChunkState.DONE, batch_id=bindparam("f_batch_id"),
            error=None, lease_until=None, updated_at=bindparam("f_updated_at"))
    .execution_options(synchronize_session=False)
)


def _store_results(session: Session, batch_id: uuid.UUID | None,
                   results: list[tuple[ChunkWork, str, list, str | None]], infer_s: float | None = None) -> None:
    """One UPDATE for every chunk of a batch, each row fenced by its own claim id: it changes only while
    the chunk is RUNNING under the claim its work item came from (as ``_held`` does for one chunk)."""
    first: dict[uuid.UUID, tuple[ChunkWork, str, list, str | None]] = {}
    for r in results:  # a chunk listed twice: the first result wins, as it would one UPDATE after another
        first.setdefault(r[0].chunk_id, r)
    # in id order, the order the claim's index scan locks them in
    rows = [first[cid] for cid in sorted(first)]
    if not rows:
        return
    shares = engine_shares([r[0] for r in rows], infer_s) if infer_s is not None else {}
    fixed = {"state": ChunkState.DONE, "batch_id": batch_id, "error": None, "lease_until": None,
             "updated_at": utcnow()}
    if session.get_bind().dialect.name == "postgresql":
        # the rows travel as arrays in one statement whose text never changes, so SQLAlchemy compiles it
        # once per process (a VALUES list with the rows in it was compiled anew for every batch: 20 ms of
        # CPU for 25 chunks, measured, on the transcribe worker's path between two batches)
        session.execute(_STORE_RESULTS, {
            "r_ids": [w.chunk_id for w, *_ in rows], "r_claims": [w.claim_id for w, *_ in rows],
            "r_texts": [text for _, text, _, _ in rows],
            "r_words": [None if words is None else json.dumps(words) for _, _, words, _ in rows],
            "r_languages": [language for *_, language in rows],
            "r_shares": [shares.get(w.chunk_id) for w, *_ in rows],
            "f_batch_id": batch_id, "f_updated_at": fixed["updated_at"],
        })
        return
    # SQLite (the embedded default, in-process: no round trips to save) has no named VALUES list:
    # one prepared UPDATE run over every row
    table = Chunk.__table__
    session.connection().execute(
        update(table)
        .where(table.c.id == bindparam("r_id"), table.c.state == ChunkState.RUNNING,
               table.c.claim_id == bindparam("r_claim"))
        .values(text=bindparam("r_text", type_=Text), words=bindparam("r_words", type_=JSON),
                language=bindparam("r_language", type_=String), engine_s=bindparam("r_engine_s", type_=Float),
                **fixed),
        [{"r_id": w.chunk_id, "r_claim": w.claim_id, "r_text": text, "r_words": words, "r_language": language,
          "r_engine_s": shares.get(w.chunk_id)}
         for w, text, words, language in rows],
    )


def _advance(session: Session, job_id: uuid.UUID) -> bool:
    """One job's progress (it locks the job row first); True when this transaction moved it to FINALIZING."""
    lock_jobs(session, {job_id})
    return bool(_advance_jobs(session, {job_id}))


def _advance_jobs(session: Session, job_ids: set[uuid.UUID]) -> list[uuid.UUID]:
    """Refresh the progress of these (locked) jobs; returns those this transaction moved TRANSCRIBING ->
    FINALIZING, in id order.

    The job row locks make the counts see every chunk committed before them: two batches finishing a
    job's last two chunks at once cannot both miss the completion. Three statements for any number of
    jobs: read the counts, store the changed ones, move the finished ones.
    """
    if not job_ids:
        return []
    done = (select(func.count()).where(Chunk.job_id == Job.id, Chunk.state == ChunkState.DONE)
            .correlate(Job).scalar_subquery())
    rows = session.execute(
        select(Job.id, Job.chunks_done, Job.chunks_total, Job.created_at, done.label("done"))
        .where(Job.id.in_(job_ids), Job.state == JobState.TRANSCRIBING)
        .order_by(Job.id)
    ).all()
    finished = [r for r in rows if r.chunks_total is not None and (r.done or 0) >= r.chunks_total]
    moving = {r.id for r in finished}
    changed = [r.id for r in rows if (r.done or 0) != r.chunks_done and r.id not in moving]
    if changed:
        session.execute(update(Job).where(Job.id.in_(changed)).values(chunks_done=done)
                        .execution_options(synchronize_session=False))
    if finished:
        session.execute(update(Job).where(Job.id.in_(moving), Job.state == JobState.TRANSCRIBING)
                        .values(chunks_done=done, state=JobState.FINALIZING, lease_until=None)
                        .execution_options(synchronize_session=False))
        for r in finished:
            elapsed = (utcnow() - r.created_at).total_seconds() if r.created_at else 0.0
            log.info("job=%s state=%s elapsed_s=%.3f chunks=%d", r.id, JobState.FINALIZING.value, elapsed, r.done)
    return [r.id for r in finished]


def release_chunks(session: Session, work: list[ChunkWork], error: str) -> None:
    """Give chunks back for another attempt (their message is re-sent by the caller)."""
    _give_back(session, work, error)
    metrics.CHUNK_FAILURES.labels("retried").inc(len(work))


def release_unreadable(session: Session, work: list[ChunkWork], error: str,
                       limit: int | None = None, charged: bool = True) -> dict[uuid.UUID, int]:
    """Give back chunks whose audio could not be read (storage down) without charging an attempt (the one
    their claim counted is given back when ``charged``); returns each chunk's count of such failures,
    which bounds and paces its retries. A chunk whose count reaches ``limit`` fails its job instead (the
    outage lasted too long)."""
    ids = [w.chunk_id for w in work]
    before = dict(session.execute(select(Chunk.id, Chunk.storage_failures).where(Chunk.id.in_(ids))).all())
    counts = {cid: before.get(cid, 0) + 1 for cid in ids}
    gave_up = [w for w in work if limit is not None and counts[w.chunk_id] >= limit]
    _give_back(session, [w for w in work if w not in gave_up], error,
               attempts=Chunk.attempts - (1 if charged else 0), storage_failures=Chunk.storage_failures + 1)
    fail_chunks(session, gave_up, f"{error}; gave up after {limit} tries")
    metrics.CHUNK_FAILURES.labels("storage").inc(len(work) - len(gave_up))
    return counts


def _give_back(session: Session, work: list[ChunkWork], error: str, **counters: object) -> None:
    if not work:
        return
    session.execute(
        update(Chunk)
        .where(*_held(work))
        .values(state=ChunkState.PENDING, lease_until=None, error=error[:2000], updated_at=utcnow(), **counters)
    )
    session.commit()


def fail_chunks(session: Session, work: list[ChunkWork], error: str) -> None:
    """Chunks that cannot succeed: fail them and their jobs, with the reason stored, in one transaction
    (a worker dying between the two would leave a job TRANSCRIBING with a failed chunk)."""
    if not work:
        return
    lock_jobs(session, {w.job_id for w in work})
    res = session.execute(
        update(Chunk)
        .where(*_held(work))
        .values(state=ChunkState.FAILED, error=error[:2000], lease_until=None, updated_at=utcnow())
        .returning(Chunk.job_id, Chunk.index)
        .execution_options(synchronize_session=False)
    )
    failed: dict[uuid.UUID, list[int]] = {}
    for job_id, index in res:
        failed.setdefault(job_id, []).append(index)
    reasons = {job_id: f"chunk {min(idx)} failed: {error}" for job_id, idx in failed.items()}
    for job_id in sorted(reasons):
        _fail_job_row(session, job_id, reasons[job_id])
    session.commit()
    metrics.CHUNK_FAILURES.labels("failed").inc(len(work))
    for job_id in sorted(reasons):
        log_state(job_id, JobState.FAILED, reason=repr(reasons[job_id][:200]))


def live_jobs(session: Session, job_ids: set[uuid.UUID]) -> set[uuid.UUID]:
    """Those of these jobs that are still TRANSCRIBING."""
    if not job_ids:
        return set()
    return set(session.scalars(select(Job.id).where(Job.id.in_(job_ids), Job.state == JobState.TRANSCRIBING)))


def drop_chunks_of_finished(session: Session, work: list[ChunkWork], reason: str) -> None:
    """Held chunks of jobs that ended (failed, cancelled) while they ran: nothing will use their result, and
    their job already has its outcome, so they are closed without touching it."""
    if not work:
        return
    session.execute(update(Chunk).where(*_held(work))
                    .values(state=ChunkState.FAILED, error=reason[:2000], lease_until=None, updated_at=utcnow())
                    .execution_options(synchronize_session=False))
    session.commit()


def mark_audio_deleted(session: Session, job_ids: list[uuid.UUID]) -> None:
    """The decoded PCM of these finished jobs is gone from storage (retention: nothing reads it any more)."""
    if job_ids:
        session.execute(update(Job).where(Job.id.in_(job_ids), Job.state.in_(list(TERMINAL_JOB_STATES)),
                                          Job.audio_deleted_at.is_(None))
                        .values(audio_deleted_at=utcnow()).execution_options(synchronize_session=False))
        session.commit()


# --- the webhook outbox row, written with the job's last state change -----------------------------------


#: what note_job_end reads of the job (a move may hand it over with RETURNING instead)
_END_COLUMNS = (Job.tenant, Job.webhook_url, Job.options, Job.error, Job.duration_s, Job.created_at, Job.started_at)


def note_job_end(session: Session, job_id: uuid.UUID, state: JobState, job=None) -> None:  # noqa: ANN001
    """Inside the transaction that just moved ``job_id`` to ``state``: write its webhook delivery (if it
    has a webhook) and count the job once that transaction commits. ``job``: its ``_END_COLUMNS`` as the
    move returned them (else they are read here)."""
    if job is None:
        job = session.execute(select(*_END_COLUMNS).where(Job.id == job_id)).one_or_none()
    if job is None:
        return
    now = utcnow()
    metrics.after_commit(session, lambda: metrics.observe_job_end(state.value, job.tenant, job.options,
                                                                  job.created_at, job.started_at, now))
    if not job.webhook_url:
        return
    event = EVENTS[state]
    data = {"job_id": str(job_id), "state": state.value}
    if state != JobState.COMPLETED and job.error:
        data["error"] = job.error[:2000]
    if job.duration_s is not None:
        data["duration_s"] = job.duration_s
    session.execute(insert(WebhookDelivery), [{
        "id": uuid.uuid4(), "job_id": job_id, "tenant": job.tenant, "url": job.webhook_url, "event": event,
        "payload": {"type": event, "timestamp": now.isoformat().replace("+00:00", "Z"), "data": data},
        "state": WebhookState.PENDING, "attempts": 0, "next_attempt_at": now, "tries": [], "created_at": now,
    }])


def _fail_job_row(session: Session, job_id: uuid.UUID, reason: str) -> bool:
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state.not_in(list(TERMINAL_JOB_STATES)))
        .values(state=JobState.FAILED, error=reason[:4000], lease_until=None, finished_at=utcnow(),
                updated_at=utcnow())
    )
    if res.rowcount:
        note_job_end(session, job_id, JobState.FAILED)  # its webhook row, in this same transaction
    return bool(res.rowcount)


def cancel_job(session: Session, job_id: uuid.UUID) -> bool:
    """Any state that is not final -> CANCELLED (the client's DELETE), its unfinished chunks FAILED, its
    webhook row written, in one transaction. A worker finishing at this instant wins or loses cleanly
    (conditional updates), and every later write of its holder is fenced out by the state."""
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state.not_in(list(TERMINAL_JOB_STATES)))
        .values(state=JobState.CANCELLED, finished_at=utcnow(), error="cancelled by client")
    )
    if res.rowcount:
        note_job_end(session, job_id, JobState.CANCELLED)  # its webhook row, in this same transaction
    session.execute(
        update(Chunk).where(Chunk.job_id == job_id, Chunk.state != ChunkState.DONE).values(state=ChunkState.FAILED)
    )
    session.commit()
    if res.rowcount:
        log.info("job=%s state=CANCELLED", job_id)
    return bool(res.rowcount)


def fail_job(session: Session, job_id: uuid.UUID, reason: str) -> bool:
    moved = _fail_job_row(session, job_id, reason)
    session.commit()
    if moved:
        log_state(session.get(Job, job_id) or job_id, JobState.FAILED, reason=repr(reason[:200]))
    return moved


def begin_finalize(session: Session, job_id: uuid.UUID, max_attempts: int, lease_s: float) -> int | None:
    """Take the lease of a FINALIZING job; returns the holder's fencing token (``Job.finalize_fence``: 1 for
    the job's first finalize, one more for each take-over since, never repeated), None when there is
    nothing to do (finished meanwhile, or a live finalize holds it). Finalizes that never finished (the
    attempts: a transient failure gives its attempt back) are bounded."""
    job = take_finalize(session, job_id, max_attempts, lease_s)
    return job.finalize_fence if job is not None else None


def take_finalize(session: Session, job_id: uuid.UUID, max_attempts: int, lease_s: float) -> Job | None:
    """``begin_finalize``, returning the job row as the take-over left it (its token in ``finalize_fence``):
    the take-over and the read of the job are one round trip."""
    now = utcnow()
    job = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == JobState.FINALIZING,
               (Job.lease_until < now) | Job.lease_until.is_(None))
        .values(finalize_attempts=Job.finalize_attempts + 1, finalize_fence=Job.finalize_fence + 1,
                lease_until=now + timedelta(seconds=lease_s), updated_at=now)
        .returning(Job),
        execution_options={"populate_existing": True},
    ).scalars().first()
    session.commit()
    if job is None:
        return None
    if job.finalize_attempts > max_attempts:
        fail_job(session, job_id, f"finalizing the transcript failed {max_attempts} times; "
                                  "last attempt did not finish")
        return None
    return job


def begin_finalize_more(session: Session, exclude: uuid.UUID, limit: int, lease_s: float,
                        punc_model: str) -> list[tuple[uuid.UUID, int]]:
    """Take the leases of up to ``limit`` other FINALIZING jobs punctuated by ``punc_model`` (the one the
    caller's job uses: only texts of one model share a call, and a mate never makes this worker load a
    model its own job does not need), that were never taken (first attempt) and are held by nobody, oldest
    first, skipping rows another worker is locking: a finalize punctuates them with its own job in one
    model call. Returns (job id, fencing token) pairs."""
    now = utcnow()
    waiting = (select(Job.id)
               .where(Job.state == JobState.FINALIZING, Job.finalize_attempts == 0, Job.lease_until.is_(None),
                      Job.id != exclude, Job.options["punc_model"].as_string() == punc_model)
               .order_by(Job.updated_at).limit(limit).with_for_update(skip_locked=True))
    taken = session.execute(
        update(Job)
        .where(Job.id.in_(waiting.scalar_subquery()), Job.state == JobState.FINALIZING,
               Job.finalize_attempts == 0, Job.lease_until.is_(None))
        .values(finalize_attempts=1, finalize_fence=Job.finalize_fence + 1,
                lease_until=now + timedelta(seconds=lease_s), updated_at=now)
        .returning(Job.id, Job.finalize_fence)
    ).all()
    session.commit()
    return [(jid, fence) for jid, fence in taken]


def requeue_finalize(session: Session, job_id: uuid.UUID, fence: int | None = None) -> bool:
    """A finalize that met a transient error gives its lease and attempt back, so its retry may run; with
    ``fence`` (the holder's token) only while that holder still has the job. False: nothing changed.
    The token is not given back: whoever takes the job next gets a new one."""
    fenced = [Job.finalize_fence == fence] if fence is not None else []
    res = session.execute(update(Job).where(Job.id == job_id, Job.state == JobState.FINALIZING, *fenced)
                          .values(lease_until=None, finalize_attempts=_given_back(Job.finalize_attempts)))
    session.commit()
    return bool(res.rowcount)


def complete_job(session: Session, job_id: uuid.UUID, language: str | None, fence: int | None = None,
                 audio_deleted: bool = False) -> bool:
    """FINALIZING -> COMPLETED, fenced by the finalize's token when given. ``audio_deleted``: the caller
    removed the decoded audio already (recorded in the same update, so a client that sees COMPLETED sees
    the retention state that goes with it)."""
    fenced = [Job.finalize_fence == fence] if fence is not None else []
    now = utcnow()
    # RETURNING: the move and what the job's end needs of it (webhook row, counts, log) are one round trip
    job = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == JobState.FINALIZING, *fenced)
        .values(state=JobState.COMPLETED, language=language, lease_until=None, finished_at=now, updated_at=now,
                **({"audio_deleted_at": now} if audio_deleted else {}))
        .returning(*_END_COLUMNS)
    ).one_or_none()
    if job is not None:
        note_job_end(session, job_id, JobState.COMPLETED, job)  # its webhook row, in this same transaction
    session.commit()
    if job is not None:
        log_state(job_id, JobState.COMPLETED, created_at=job.created_at)
    return job is not None
