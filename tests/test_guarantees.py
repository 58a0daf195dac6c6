"""Guarantees per state, on real Postgres and a real Redis broker: whatever holder vanishes, something
moves each job and chunk on; the reconciler re-sends what was lost and never what is only waiting;
writes are fenced by the claim that holds a chunk; one lock order everywhere."""

from __future__ import annotations

import threading
import time
import types
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select, update

from app.db.models import Chunk, ChunkState, Job, JobState, utcnow
from tests.conftest import REDIS_TEST_DB
from tests.services import fresh_celery_app, postgres_database, redis_db, wait_until

STALE_S = 2.0


@dataclass
class Live:
    db_url: str
    broker_url: str
    redis: redis.Redis
    objects: Path

    def queue_len(self, queue: str) -> int:
        from app.messaging import redis_queue_keys

        return sum(int(self.redis.llen(k)) for k in redis_queue_keys(queue))


@pytest.fixture()
def live(tmp_path, monkeypatch):
    """This process's settings on a fresh Postgres database and a Redis db, with a Celery app built for
    them (the module-level app is bound at import to whatever settings were current then)."""
    from app import storage
    from app.db import session
    from app.db.migrate import upgrade
    from app.settings import get_settings

    with postgres_database() as db_url, redis_db(REDIS_TEST_DB) as broker:
        upgrade(db_url)
        for k, v in {"ASRQ_HOME": str(tmp_path), "ASRQ_DATABASE_URL": db_url, "ASRQ_BROKER_URL": broker,
                     "ASRQ_STORAGE_URL": f"file://{tmp_path / 'objects'}",
                     "ASRQ_RECONCILE_STALE_S": str(STALE_S)}.items():
            monkeypatch.setenv(k, v)
        get_settings.cache_clear()
        session.reset_engines()
        storage._store.cache_clear()
        r = redis.Redis.from_url(broker)
        try:
            with fresh_celery_app():
                yield Live(db_url, broker, r, tmp_path / "objects")
        finally:
            r.close()
            session.reset_engines()
            get_settings.cache_clear()
            storage._store.cache_clear()


def _session():
    from app.db.session import session_scope

    return session_scope()


def _add_job(state: JobState = JobState.QUEUED, options: dict | None = None, stale: bool = True,
             tenant: str = "t") -> uuid.UUID:
    then = utcnow() - timedelta(seconds=STALE_S * 5 if stale else 0)
    with _session() as s:
        job = Job(tenant=tenant, state=state, source_uri="upload:x.wav", filename="x.wav", options=options or {},
                  params_hash="0" * 64, created_at=then, updated_at=then)
        s.add(job)
        s.flush()
        return job.id


def _add_chunks(job_id: uuid.UUID, n: int, stale: bool = True) -> list[uuid.UUID]:
    then = utcnow() - timedelta(seconds=STALE_S * 5 if stale else 0)
    with _session() as s:
        rows = [Chunk(job_id=job_id, index=i, start_ms=i * 1000, end_ms=i * 1000 + 900, updated_at=then)
                for i in range(n)]
        s.add_all(rows)
        s.flush()
        s.execute(update(Job).where(Job.id == job_id).values(chunks_total=n))
        return [c.id for c in rows]


def _job(job_id: uuid.UUID) -> Job:
    with _session() as s:
        return s.get(Job, job_id)


def _age_everything() -> None:
    """Make every row look still for longer than the stale period (instead of sleeping through it)."""
    then = utcnow() - timedelta(seconds=STALE_S * 5)
    with _session() as s:
        s.execute(update(Job).values(updated_at=then))
        s.execute(update(Chunk).values(updated_at=then))


# ---- a holder that dies ------------------------------------------------------------------------------------------


def test_prepare_that_died_is_taken_over_and_bounded(live):
    """Finding 1: the reconciler's re-send used to refresh the very timestamp that take-over waited on, so
    a prepare killed mid-way stayed PREPARING forever. Now the lease decides, and attempts run out."""
    from app.lifecycle import begin_prepare
    from workers.tasks.reconcile import reconcile_once

    jid = _add_job()
    for attempt in (1, 2, 3):
        with _session() as s:
            job = begin_prepare(s, jid, max_attempts=3, lease_s=0.5)  # then the worker "dies"
            assert job is not None and job.prepare_attempts == attempt
        with _session() as s:
            assert begin_prepare(s, jid, max_attempts=3, lease_s=0.5) is None  # a live lease is not taken over
        time.sleep(0.6)
        _age_everything()
        assert reconcile_once()["prepare"] == 1
        assert reconcile_once().get("prepare", 0) == 0  # sent once per stale period, not once per run
        _age_everything()
        assert reconcile_once().get("prepare", 0) == 0  # ... and not while that message waits in the queue
        assert live.queue_len("prepare") == 1
        from app.messaging import redis_queue_keys

        assert any(live.redis.rpop(k) for k in redis_queue_keys("prepare"))  # delivered: the next worker takes it
    with _session() as s:
        assert begin_prepare(s, jid, max_attempts=3, lease_s=0.5) is None
    job = _job(jid)
    assert job.state == JobState.FAILED and "failed 3 times" in job.error


def test_retry_after_a_database_outage_resumes_its_attempt(live):
    """Found by the chaos soak: a prepare that met a Postgres restart could not give its attempt back,
    so its retry took the job over as if the worker had died, and outages used up a good file's
    attempts. The retry now resumes the attempt, unless somebody took the job over meanwhile."""
    from app.lifecycle import begin_prepare

    jid = _add_job()
    with _session() as s:
        first = begin_prepare(s, jid, max_attempts=3, lease_s=60)
        assert (first.prepare_attempts, first.prepare_fence) == (1, 1)
        # the transient error's give-back failed (database down); the retry comes back with token 1: the
        # same attempt, a new token
        resumed = begin_prepare(s, jid, max_attempts=3, lease_s=60, resume_fence=1)
        assert (resumed.prepare_attempts, resumed.prepare_fence) == (1, 2)
        assert begin_prepare(s, jid, max_attempts=3, lease_s=60, resume_fence=1) is None  # a duplicate of it
        assert begin_prepare(s, jid, max_attempts=3, lease_s=-1) is None  # the resumed lease is live
    with _session() as s:
        s.execute(update(Job).where(Job.id == jid).values(lease_until=utcnow() - timedelta(seconds=1)))
    with _session() as s:
        taken = begin_prepare(s, jid, max_attempts=3, lease_s=60)
        assert (taken.prepare_attempts, taken.prepare_fence) == (2, 3)
        assert begin_prepare(s, jid, max_attempts=3, lease_s=60, resume_fence=2) is None


def test_finalize_that_died_is_taken_over(live):
    from app.lifecycle import begin_finalize
    from workers.tasks.reconcile import reconcile_once

    jid = _add_job(JobState.FINALIZING)
    with _session() as s:
        assert begin_finalize(s, jid, max_attempts=3, lease_s=0.5) == 1
        assert begin_finalize(s, jid, max_attempts=3, lease_s=0.5) is None
    time.sleep(0.6)
    _age_everything()
    assert reconcile_once()["finalize"] == 1
    with _session() as s:
        assert begin_finalize(s, jid, max_attempts=3, lease_s=0.5) == 2


def test_running_chunk_whose_holder_died_is_sent_again(live):
    from app.lifecycle import claim_chunks
    from workers.tasks.reconcile import reconcile_once

    jid = _add_job(JobState.TRANSCRIBING)
    (cid,) = _add_chunks(jid, 1)
    with _session() as s:
        claimed, _ = claim_chunks(s, [cid], lease_s=0.3, max_attempts=3)
    assert [w.chunk_id for w in claimed] == [cid]
    time.sleep(0.4)
    _age_everything()
    assert reconcile_once()["transcribe"] == 1
    with _session() as s:
        again, _ = claim_chunks(s, [cid], lease_s=60, max_attempts=3)
    assert [w.attempts for w in again] == [2]


# ---- lost or only waiting -----------------------------------------------------------------------------------------


def test_backlog_is_not_resent_but_a_flush_is(live):
    """Finding 4: a long queue used to be re-published every stale period. Messages waiting in Redis are
    left alone; after a flush every job is sent exactly once more."""
    from app.db.session import session_scope
    from app.messaging import send_prepare
    from workers.tasks.reconcile import reconcile_once

    n = 2000
    then = utcnow() - timedelta(seconds=STALE_S * 5)
    ids = [uuid.uuid4() for _ in range(n)]
    with session_scope() as s:
        s.execute(Job.__table__.insert(), [
            {"id": i, "tenant": "t", "state": JobState.QUEUED, "source_uri": "upload:x.wav", "filename": "x.wav",
             "options": {}, "params_hash": "0" * 64, "chunks_done": 0, "prepare_attempts": 0,
             "finalize_attempts": 0, "created_at": then, "updated_at": then} for i in ids])
    send_prepare(ids)
    assert live.queue_len("prepare") == n
    for _ in range(3):
        assert reconcile_once().get("prepare", 0) == 0
        _age_everything()
    assert live.queue_len("prepare") == n
    live.redis.flushdb()
    assert reconcile_once()["prepare"] == n
    assert live.queue_len("prepare") == n
    _age_everything()
    assert reconcile_once().get("prepare", 0) == 0  # the re-sent messages now wait; not sent a third time


def _age_sent(live: Live, task: str, by_s: float) -> None:
    """Make every message of ``task`` look published ``by_s`` earlier (its sent-index field), as if it had
    been handed to a worker that long ago."""
    from app.sent_index import parse_sent_mark, sent_index_key, sent_mark

    key = sent_index_key(task)
    for item, raw in live.redis.hgetall(key).items():
        m = parse_sent_mark(raw)
        live.redis.hset(key, item, sent_mark(m.sent - by_s, m.due - by_s, m.level))


def test_message_handed_to_a_worker_that_never_took_the_job(live):
    """A prepare message delivered to a worker (unacknowledged) counts while that worker can still be
    about to take the job; held for longer than the stale period without the job moving, that worker is
    dead or stuck and the job is sent again (it used to wait for Redis's visibility timeout)."""
    from app.constants import TASK_PREPARE
    from app.messaging import send_prepare
    from workers.celery_app import app
    from workers.tasks.reconcile import reconcile_once

    jid = _add_job()
    send_prepare([jid])
    with app.connection_for_read() as conn:
        queue = conn.SimpleQueue(app.amqp.queues["prepare"])
        queue.get(timeout=5)  # delivered to this "worker", never acknowledged
        assert live.queue_len("prepare") == 0 and live.redis.hlen("unacked") == 1
        assert reconcile_once().get("prepare", 0) == 0
        long_ago = time.time() - 10 * STALE_S
        live.redis.zadd("unacked_index", {tag: long_ago for tag in live.redis.zrange("unacked_index", 0, -1)})
        _age_sent(live, TASK_PREPARE, 10 * STALE_S)
        _age_everything()
        assert reconcile_once()["prepare"] == 1
        assert live.queue_len("prepare") == 1
        queue.close()


def test_a_pass_costs_the_same_behind_any_backlog(live):
    """Issue 17 finding 4: a pass used to read and parse every message of every queue whenever anything was
    stale (about 26 us and some 150 bytes of Python objects a message). Now it asks about its suspects
    alone: behind 100,000 waiting messages it holds a few MB at its peak, and still tells the waiting
    (early, in the middle and last in the queue) from the lost."""
    import tracemalloc

    from app.constants import TASK_PREPARE
    from app.messaging import send_prepare
    from app.sent_index import sent_index_key
    from workers.tasks.reconcile import reconcile_once

    waiting = [_add_job() for _ in range(30)]
    lost = [_add_job() for _ in range(5)]
    backlog = [uuid.uuid4() for _ in range(100_000)]  # other jobs' messages (rows not needed)
    send_prepare(waiting[:10])
    send_prepare(backlog[:50_000])
    send_prepare(waiting[10:20])
    send_prepare(backlog[50_000:])
    send_prepare(waiting[20:])
    assert live.queue_len("prepare") == 100_030
    live.redis.hdel(sent_index_key(TASK_PREPARE), *[str(i) for i in backlog])  # only the rows' fields matter
    _age_everything()
    tracemalloc.start()
    try:
        t0 = time.perf_counter()
        counts = reconcile_once()
        took_s = time.perf_counter() - t0
        peak_mb = tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()
    print(f"one pass behind 100,030 messages: {took_s:.2f} s, peak {peak_mb:.1f} MB of Python objects")
    assert counts.get("prepare") == len(lost)
    assert peak_mb < 8, peak_mb  # reading the whole backlog peaked at 55 MB behind 200,000 messages
    assert live.queue_len("prepare") == 100_035


def test_a_pass_with_suspects_of_several_steps_reads_them_all(live):
    """A pass that suspects a waiting prepare and a lost chunk at once: the chunk is sent again, the waiting
    prepare is not. The chaos soak (seed 7, quick) found every pass failing once suspects of two steps
    coexisted ("broker inventory unreadable (TypeError); re-sending nothing this run": the inventory reused
    the name of its per-queue table for one list's oldest time), so after a Redis flush nothing recovered."""
    from app.lifecycle import claim_chunks
    from app.messaging import send_prepare
    from workers.tasks.reconcile import reconcile_once

    waiting = _add_job()
    send_prepare([waiting])  # its message waits in the queue: not lost
    jid = _add_job(JobState.TRANSCRIBING)
    (cid,) = _add_chunks(jid, 1)
    with _session() as s:
        claim_chunks(s, [cid], lease_s=0.01, max_attempts=3)  # its holder died; its message is gone
    time.sleep(0.05)
    _age_everything()
    counts = reconcile_once()
    assert counts.get("transcribe") == 1 and counts.get("prepare", 0) == 0, counts
    assert live.queue_len("prepare") == 1


def test_a_countdown_held_by_a_worker_is_not_lost(live):
    """Issue 17 finding 4: a retry's countdown (up to retry_backoff_max_s) is held by the worker that
    received it, unacknowledged, until it comes due; it used to count as lost after the stale period.
    Within its backoff it is not re-sent; once due and still not run, it is."""
    from app.constants import TASK_TRANSCRIBE
    from app.messaging import send_transcribe
    from workers.celery_app import app
    from workers.tasks.reconcile import reconcile_once

    jid = _add_job(JobState.TRANSCRIBING)
    chunks = _add_chunks(jid, 2)
    send_transcribe(chunks, countdown=200)
    with app.connection_for_read() as conn:
        queue = conn.SimpleQueue(app.amqp.queues["transcribe"])
        queue.get(timeout=5), queue.get(timeout=5)  # received by a worker that waits for the countdown
        assert live.queue_len("transcribe") == 0
        held_s = 20 * STALE_S  # received that long ago, still counting down
        live.redis.zadd("unacked_index", {t: time.time() - held_s for t in live.redis.zrange("unacked_index", 0, -1)})
        _age_sent(live, TASK_TRANSCRIBE, held_s)
        _age_everything()
        assert reconcile_once().get("transcribe", 0) == 0
        _age_sent(live, TASK_TRANSCRIBE, 200)  # due for some time now, and still not run: its holder died
        assert reconcile_once()["transcribe"] == 2
        queue.close()


def test_a_message_taken_off_its_queue_and_lost_is_sent_again(live):
    """A worker that dies between popping a message and recording it as unacknowledged loses it. Its field
    in the sent index still says "sent"; once the oldest message still waiting in its list was published
    well after it (or the list is empty), it has left the list, and it is sent again."""
    from app.constants import TASK_PREPARE
    from app.messaging import send_prepare
    from workers.tasks.reconcile import reconcile_once

    first, second = _add_job(), _add_job()
    send_prepare([first, second])
    live.redis.rpop("prepare")  # the oldest (first's) message, popped and gone
    _age_everything()
    assert reconcile_once().get("prepare", 0) == 0  # second still waits, first was published with it
    _age_sent(live, TASK_PREPARE, 10 * STALE_S)
    send_prepare([uuid.uuid4()])  # the queue moves on: second is taken as well, and the last one waits
    live.redis.rpop("prepare")
    _age_everything()
    assert reconcile_once()["prepare"] == 2
    assert live.queue_len("prepare") == 3


def test_a_batch_answered_before_its_publish_is_not_resent(live, monkeypatch):
    """Issue 17 finding 12: the API answers a batch and publishes its messages after; a reconcile pass in
    between used to count every job not yet published as lost. Each is promised until published, and a
    promise whose publisher died lapses."""
    from fastapi.testclient import TestClient

    from app.api import routes_jobs
    from app.api.main import create_app
    from app.settings import get_settings
    from workers.tasks.reconcile import reconcile_once

    monkeypatch.setenv("ASRQ_API_KEYS", "t:k")
    monkeypatch.setenv("ASRQ_S3_SOURCE_ALLOW", "inbox/")
    get_settings.cache_clear()
    go = threading.Event()
    real_send = routes_jobs.send_prepare

    def publish_later(ids, levels=None):  # noqa: ANN001, ANN202 - the background publish, held back
        assert go.wait(60)
        return real_send(ids, levels)

    monkeypatch.setattr(routes_jobs, "send_prepare", publish_later)
    n = 50
    with TestClient(create_app(get_settings())) as c, ThreadPoolExecutor(1) as pool:
        post = pool.submit(c.post, "/v1/jobs/batch", headers={"Authorization": "Bearer k"},
                           json={"jobs": [{"source_uri": f"s3://inbox/a{i}.wav"} for i in range(n)]})
        from tests.services import wait_until

        with _session() as s:
            wait_until(lambda: s.scalar(select(func.count()).select_from(Job)) == n, 30, what="the batch's rows")
        _age_everything()
        assert reconcile_once().get("prepare", 0) == 0  # promised, on their way
        go.set()
        assert post.result(60).status_code == 202
    assert live.queue_len("prepare") == n
    _age_everything()
    assert reconcile_once().get("prepare", 0) == 0
    # a promise kept by nobody (the API died before publishing): it lapses, and the job is sent
    from app.constants import TASK_PREPARE
    from app.sent_index import promise_sent

    jid = _add_job()
    promise_sent(TASK_PREPARE, [jid], within_s=3600)
    assert reconcile_once().get("prepare", 0) == 0
    promise_sent(TASK_PREPARE, [jid], within_s=-1)
    assert reconcile_once()["prepare"] == 1


def test_the_sent_index_holds_only_work_still_to_run(live):
    """A worker that handled a message drops its field, unless a message was published for that item
    since (its retry); the reconciler sweeps up the fields of finished items a dead worker left."""
    from app.constants import TASK_PREPARE
    from app.messaging import send_prepare
    from app.sent_index import forget_handled, promise_sent, sent_index_key
    from workers.tasks.reconcile import reconcile_once

    index = sent_index_key(TASK_PREPARE)
    queued, done, promised = _add_job(stale=False), _add_job(JobState.COMPLETED), _add_job(stale=False)
    send_prepare([queued, done])
    # marks hold milliseconds: the worker starts, and the retry is published, a few of them apart
    time.sleep(0.01)
    started = time.time()
    time.sleep(0.01)
    send_prepare([queued])  # its retry, published while the first run was under way
    promise_sent(TASK_PREPARE, [promised])
    assert forget_handled(TASK_PREPARE, [queued, done, promised], started) == 1  # done's alone
    assert live.redis.hexists(index, str(queued)) and live.redis.hexists(index, str(promised))
    send_prepare([done])  # a finished job's field left behind by a worker that died
    live.redis.hset(index, "not-an-id", "1 1 0")
    reconcile_once()
    assert sorted(k.decode() for k in live.redis.hkeys(index)) == sorted([str(queued), str(promised)])


def test_pending_chunks_waiting_or_held_are_not_resent(live):
    from app.constants import TASK_TRANSCRIBE
    from app.messaging import send_transcribe
    from workers.lease import HeldChunks
    from workers.tasks.reconcile import reconcile_once

    jid = _add_job(JobState.TRANSCRIBING)
    waiting = _add_chunks(jid, 3)
    send_transcribe(waiting)
    assert reconcile_once().get("transcribe", 0) == 0
    live.redis.delete("transcribe")  # lost: nothing waits for them now
    # a transcribe worker that was handed them keeps them fresh while it works on the batch before them
    held = HeldChunks(waiting, lease_s=60, stale_s=0.4, max_hold_s=60)
    aged, beat_since = threading.Event(), threading.Event()
    beat = held._beat_fn

    def observed_beat() -> bool:
        after = aged.is_set()  # begun after the ageing committed: its write is the later one
        ok = beat()
        if after:
            beat_since.set()
        return ok

    held._beat_fn = observed_beat
    with held:
        _age_everything()
        aged.set()
        assert beat_since.wait(30), "the heartbeat never beat"  # an event, not a sleep the beat may miss
        assert reconcile_once().get("transcribe", 0) == 0
    _age_everything()  # that worker died: its heartbeat stopped
    _age_sent(live, TASK_TRANSCRIBE, 10 * STALE_S)  # and its messages were handed over that long ago
    assert reconcile_once()["transcribe"] == 3
    assert live.queue_len("transcribe") == 3


# ---- fencing ------------------------------------------------------------------------------------------------------


def test_expired_claim_cannot_touch_a_live_claim(live):
    """Finding 5: a worker whose lease expired must not store, release or fail a chunk another worker
    now holds."""
    from app.lifecycle import claim_chunks, fail_chunks, release_chunks, save_results

    jid = _add_job(JobState.TRANSCRIBING)
    (cid,) = _add_chunks(jid, 1)
    with _session() as s:
        (old,), _ = claim_chunks(s, [cid], lease_s=-1, max_attempts=3)  # its lease is already over
        (new,), _ = claim_chunks(s, [cid], lease_s=60, max_attempts=3)
        assert old.claim_id != new.claim_id
        assert save_results(s, None, [(old, "stale words", [], "en")]) == []
        release_chunks(s, [old], "stale release")
        fail_chunks(s, [old], "stale failure")
        chunk = s.get(Chunk, cid, populate_existing=True)
        assert (chunk.state, chunk.claim_id, chunk.text) == (ChunkState.RUNNING, new.claim_id, None)
        assert s.get(Job, jid, populate_existing=True).state == JobState.TRANSCRIBING
        assert save_results(s, None, [(new, "live words", [], "en")]) == [jid]
        chunk = s.get(Chunk, cid, populate_existing=True)
        assert (chunk.state, chunk.text) == (ChunkState.DONE, "live words")


def test_prepare_taken_over_cannot_store_its_plan(live):
    from app.lifecycle import begin_prepare, save_plan
    from workers.chunking import ChunkPlan

    jid = _add_job()
    with _session() as s:
        first = begin_prepare(s, jid, max_attempts=3, lease_s=-1).prepare_fence
        second = begin_prepare(s, jid, max_attempts=3, lease_s=60).prepare_fence
        assert save_plan(s, jid, first, [ChunkPlan(0, 0, 1000)], 1.0) == []
        assert len(save_plan(s, jid, second, [ChunkPlan(0, 0, 1000), ChunkPlan(1, 1000, 2000)], 2.0)) == 2
    assert _job(jid).chunks_total == 2


def _expire_lease(job_id: uuid.UUID) -> None:
    with _session() as s:
        s.execute(update(Job).where(Job.id == job_id).values(lease_until=utcnow() - timedelta(seconds=1)))


def test_a_prepare_that_lost_its_job_cannot_hand_its_token_on(live, monkeypatch):
    """Issue 17 item 6: a prepare whose lease ran out meets a transient error after another worker took
    the job over. Its give-back used to be unfenced: it put the live holder's job back in the queue and
    lowered the attempt, so the next taker got the live holder's own token, and two prepares ran with it.
    Now the give-back is fenced by the token, and tokens only go up."""
    from celery.exceptions import Retry

    from app.errors import TransientError
    from app.lifecycle import begin_prepare
    from workers.tasks import prepare

    jid = _add_job()
    taken_over = {}

    def stale_holder_meets_an_outage(job_id, *_a, **_kw):  # noqa: ANN001, ANN202
        _expire_lease(job_id)  # this holder stalled; another worker takes the job over meanwhile
        with _session() as s:
            taken_over["job"] = begin_prepare(s, job_id, max_attempts=3, lease_s=60)
        raise TransientError("storage unreachable")

    monkeypatch.setattr(prepare, "_decode_and_plan", stale_holder_meets_an_outage)
    # the task as a worker runs it (its error policy included); called directly, its retry raises here
    with pytest.raises((TransientError, Retry)):
        prepare.prepare(str(jid))
    assert taken_over["job"] is not None
    with _session() as s:
        job = s.get(Job, jid)
        assert job.state == JobState.PREPARING and job.lease_until > utcnow()  # still the new holder's
        # the stale holder's retry, or any duplicate message, finds the job held: no third holder
        assert begin_prepare(s, jid, max_attempts=3, lease_s=60) is None


def test_a_duplicated_resume_does_not_run_twice(live, monkeypatch):
    """Issue 17 item 6: the retry of a prepare whose give-back failed (database down) resumes its attempt;
    it used to match on the attempt number alone, ignoring the live lease it had itself just taken, so a
    duplicate of that retry message resumed the same attempt again: two prepares with one token."""
    from app.errors import TransientError
    from workers.tasks import prepare

    jid = _add_job()
    runs: list[int] = []

    def outage(*_a, **_kw):  # noqa: ANN002, ANN003, ANN202
        raise TransientError("database unreachable")

    monkeypatch.setattr(prepare, "_decode_and_plan", outage)
    monkeypatch.setattr(prepare, "requeue_prepare", outage)  # the give-back fails too
    with pytest.raises(TransientError) as failed:
        prepare.prepare_job(jid)
    retry = failed.value.asrq_retry_kwargs

    def resumed(job_id, *_a, **_kw):  # noqa: ANN001, ANN202
        runs.append(1)
        if len(runs) == 1:  # while the retry runs, its duplicate is delivered to another worker
            prepare.prepare_job(job_id, **retry)
        raise TransientError("the test ends here")

    monkeypatch.setattr(prepare, "_decode_and_plan", resumed)
    with pytest.raises(TransientError):
        prepare.prepare_job(jid, **retry)
    assert runs == [1]
    assert _job(jid).prepare_attempts == 1  # the outage cost no attempt


def test_finalize_tokens_are_unique_and_monotonic(live):
    """Issue 17 item 6: a finalize that gives its attempt back (transient error) lowered the number that
    was also its token, so the next take-over repeated the token of a live holder. The token is now a
    column of its own that only goes up; attempts still count finalizes that never finished."""
    from app.lifecycle import begin_finalize, complete_job, requeue_finalize

    jid = _add_job(JobState.FINALIZING)
    with _session() as s:
        a = begin_finalize(s, jid, max_attempts=3, lease_s=60)
    _expire_lease(jid)  # holder a stalls; b takes over
    with _session() as s:
        b = begin_finalize(s, jid, max_attempts=3, lease_s=60)
        requeue_finalize(s, jid)  # a meets a transient error and gives back (as workers/tasks/finalize.py does)
        c = begin_finalize(s, jid, max_attempts=3, lease_s=60)
        assert None not in (a, b, c) and a < b < c
        assert not complete_job(s, jid, "en", b)  # b was fenced out by c
        assert not requeue_finalize(s, jid, b)  # nor can it give c's lease away
        assert s.get(Job, jid, populate_existing=True).finalize_attempts == 2  # a's was given back
        assert complete_job(s, jid, "en", c)


# ---- one transaction, or repaired ---------------------------------------------------------------------------------


def test_failed_chunk_fails_its_job_in_the_same_transaction(live):
    from app.lifecycle import claim_chunks, fail_chunks

    jid = _add_job(JobState.TRANSCRIBING)
    cids = _add_chunks(jid, 2)
    with _session() as s:
        claimed, _ = claim_chunks(s, cids[:1], lease_s=60, max_attempts=3)
        fail_chunks(s, claimed, "undecodable")
    job = _job(jid)
    assert job.state == JobState.FAILED and job.error == "chunk 0 failed: undecodable"


def test_reconciler_repairs_a_job_left_transcribing_with_a_failed_chunk(live):
    """Finding 3: a process that died between failing a chunk and failing its job (as the old code could)
    left the job TRANSCRIBING with nobody to move it."""
    from workers.tasks.reconcile import reconcile_once

    jid = _add_job(JobState.TRANSCRIBING)
    cids = _add_chunks(jid, 2)
    with _session() as s:
        s.execute(update(Chunk).where(Chunk.id == cids[1]).values(state=ChunkState.FAILED, error="bad audio"))
    reconcile_once()
    job = _job(jid)
    assert job.state == JobState.FAILED and job.error == "chunk 1 failed: bad audio"


def test_reconciler_finalizes_a_job_whose_completion_was_missed(live):
    from workers.tasks.reconcile import reconcile_once

    jid = _add_job(JobState.TRANSCRIBING)
    _add_chunks(jid, 2)
    with _session() as s:
        s.execute(update(Chunk).values(state=ChunkState.DONE, text="x"))
    _age_everything()
    assert reconcile_once()["finalize"] == 1
    assert _job(jid).state == JobState.FINALIZING
    assert live.queue_len("finalize") == 1


# ---- a batch claimed ahead of its turn (issue 17, finding 1) -------------------------------------------------------


def _add_gated_job(n: int) -> tuple[uuid.UUID, list[uuid.UUID]]:
    """A TRANSCRIBING job of ``n`` one-second chunks for tests/gated_engine.py, its PCM in storage."""
    from app.constants import pcm_key
    from app.storage import get_store
    from tests.gated_engine import OPTIONS, chunk_pcm

    jid = _add_job(JobState.TRANSCRIBING, dict(OPTIONS), stale=False)
    ids = _add_chunks(jid, n, stale=False)
    get_store().put_bytes(pcm_key(jid), chunk_pcm(n))
    return jid, ids


def _chunk_rows(ids: list[uuid.UUID]) -> dict[int, tuple]:
    """index -> (state, attempts, lease_until)"""
    with _session() as s:
        rows = s.execute(select(Chunk.index, Chunk.state, Chunk.attempts, Chunk.lease_until)
                         .where(Chunk.id.in_(ids))).all()
    return {r[0]: tuple(r[1:]) for r in rows}


def _two_per_batch(monkeypatch, lease_s: float | None = None) -> None:  # noqa: ANN001
    from app.settings import get_settings

    monkeypatch.setenv("ASRQ_BATCH_MAX_REQUESTS", "2")
    if lease_s is not None:
        monkeypatch.setenv("ASRQ_CHUNK_LEASE_S", str(lease_s))
    get_settings.cache_clear()


def test_a_batch_claimed_ahead_is_held_while_the_one_before_outlasts_the_lease(live, monkeypatch):
    """The worker claims batch n+1 while batch n runs. Its claim used to be renewed only from its own
    turn, so a batch n longer than the chunk lease let it lapse: a second worker took those chunks and
    the engine ran them twice. Every claim is now heartbeated from the moment it is made."""
    from tests.gated_engine import GatedEngine, install
    from workers.tasks.transcribe import process_chunks

    _two_per_batch(monkeypatch, lease_s=1.5)
    engine = GatedEngine()
    install(engine, monkeypatch)
    _, ids = _add_gated_job(4)
    handed = [str(c) for c in ids]
    a = threading.Thread(target=process_chunks, args=(handed, "worker-a"), daemon=True)
    a.start()
    try:
        assert engine.first_running.wait(60), "the first batch never reached the engine"
        rows = wait_until(lambda: (r := _chunk_rows(ids)) and
                          all(st == ChunkState.RUNNING for st, _, _ in r.values()) and r,
                          30, 0.05, "the batch ahead claimed")
        # the first batch outlasts every lease as it was claimed: a claim nobody renews has run out now
        time.sleep(max(0.0, (max(lease for _, _, lease in rows.values()) - utcnow()).total_seconds()) + 1.0)
        # a second worker is handed the same chunks (the reconciler re-sends a chunk whose lease ran out)
        process_chunks(handed, "worker-b")
    finally:
        engine.release_first.set()
        a.join(60)
    assert engine.ran() == [0, 1, 2, 3], engine.batches  # each chunk ran once
    assert {st for st, _, _ in _chunk_rows(ids).values()} == {ChunkState.DONE}


def test_a_worker_killed_mid_batch_charges_only_the_batch_that_ran(live, monkeypatch):
    """The batch a worker claimed ahead never ran when the worker dies in the batch before it (a poison
    chunk): it used to be charged an attempt all the same, so an innocent neighbour of a poison chunk
    could run out of attempts. An attempt is now counted when a batch's turn comes."""
    import os
    import subprocess
    import sys

    from tests.gated_engine import GatedEngine, install
    from workers.tasks.transcribe import process_chunks

    _two_per_batch(monkeypatch, lease_s=2.0)
    _, ids = _add_gated_job(4)
    root = Path(__file__).resolve().parent.parent
    worker = subprocess.Popen([sys.executable, "-m", "tests.gated_engine", *map(str, ids)], cwd=root,
                              env=dict(os.environ))
    try:
        # its first batch is in the engine (charged, committed first), the next one claimed ahead
        rows = wait_until(lambda: (r := _chunk_rows(ids)) and all(st == ChunkState.RUNNING for st, _, _ in r.values())
                          and sum(n for _, n, _ in r.values()) >= 2 and r, 120, 0.05, "a batch running, one ahead")
    finally:
        worker.kill()
        worker.wait(30)
    rows = _chunk_rows(ids)
    assert sorted(n for _, n, _ in rows.values()) == [0, 0, 1, 1], rows
    ran_first = {i for i, (_, n, _) in rows.items() if n == 1}
    # the leases of the dead worker's claims run out; the next worker runs everything
    time.sleep(max(0.0, (max(lease for _, _, lease in rows.values()) - utcnow()).total_seconds()) + 0.2)
    engine = GatedEngine()
    engine.release_first.set()
    install(engine, monkeypatch)
    process_chunks([str(c) for c in ids], "worker-b")
    assert engine.ran() == [0, 1, 2, 3]
    rows = _chunk_rows(ids)
    assert {i: (st, n) for i, (st, n, _) in rows.items()} == \
        {i: (ChunkState.DONE, 2 if i in ran_first else 1) for i in range(4)}


def test_the_stream_claims_the_next_flush_while_a_batch_runs(live, monkeypatch):
    """Issue 18: the next batch must be claimed and read while one runs, across flushes too (each flush
    used to be one task that claimed its first batch only after the previous flush's last batch ended)."""
    from tests.gated_engine import GatedEngine, install
    from workers.tasks.stream import ChunkStream

    _two_per_batch(monkeypatch)
    engine = GatedEngine()
    install(engine, monkeypatch)
    _, ids = _add_gated_job(4)
    stream = ChunkStream("worker-s")
    try:
        stream.intake([str(c) for c in ids[:2]], {}, {})  # a flush
        assert engine.first_running.wait(60), "the first batch never reached the engine"
        stream.intake([str(c) for c in ids[2:]], {}, {})  # the next flush, handed over while that batch runs
        ahead = wait_until(lambda: (r := _chunk_rows(ids)) and r[2][0] == r[3][0] == ChunkState.RUNNING and r,
                           30, 0.05, "the next flush's batch claimed ahead")
        assert (ahead[2][1], ahead[3][1]) == (0, 0)  # claimed, not yet charged: its turn has not come
        assert engine.ran() == [0, 1]
    finally:
        engine.release_first.set()
    wait_until(lambda: {st for st, _, _ in _chunk_rows(ids).values()} == {ChunkState.DONE}, 30, 0.05, "all done")
    stream.close()
    assert engine.ran() == [0, 1, 2, 3]


def test_a_stopping_stream_finishes_its_batch_and_gives_back_the_rest(live, monkeypatch):
    """Warm shutdown: the running batch is stored; the batch claimed ahead and the chunks waiting go back
    (PENDING, no attempt charged) with their messages sent again, at once rather than at lease end."""
    from tests.gated_engine import GatedEngine, install
    from workers.tasks.stream import ChunkStream

    from workers.tasks import transcribe

    _two_per_batch(monkeypatch)
    engine = GatedEngine()
    install(engine, monkeypatch)
    resent: list[str] = []
    send = transcribe.send_transcribe

    def record(chunk_ids, **kw):  # noqa: ANN001, ANN003, ANN202
        resent.extend(str(c) for c in chunk_ids)
        return send(chunk_ids, **kw)

    monkeypatch.setattr(transcribe, "send_transcribe", record)
    _, ids = _add_gated_job(4)
    stream = ChunkStream("worker-s")
    stream.intake([str(c) for c in ids], {}, {})
    assert engine.first_running.wait(60), "the first batch never reached the engine"
    wait_until(lambda: all(st == ChunkState.RUNNING for st, _, _ in _chunk_rows(ids).values()), 30, 0.05,
               "the next batch claimed ahead")
    closing = threading.Thread(target=stream.close, daemon=True)
    closing.start()
    engine.release_first.set()
    closing.join(60)
    assert not closing.is_alive()
    rows = _chunk_rows(ids)
    ran = set(engine.batches[0])
    assert len(engine.batches) == 1
    assert {i: (st, n) for i, (st, n, _) in rows.items()} == \
        {i: (ChunkState.DONE, 1) if i in ran else (ChunkState.PENDING, 0) for i in range(4)}
    assert sorted(resent) == sorted(str(ids[i]) for i in range(4) if i not in ran)  # their messages go again


def test_a_batch_that_fails_to_start_leaves_the_stream_and_runs_later(live, monkeypatch):
    """The database goes away as a batch's attempt is charged: its chunks must leave the stream (no
    heartbeat keeps them fresh, no later message for them is ignored as a duplicate), so a message sent
    again, or the reconciler once their lease lapses, brings them back and they run."""
    from sqlalchemy.exc import OperationalError

    from tests.gated_engine import GatedEngine, install
    from workers.tasks import transcribe
    from workers.tasks.stream import ChunkStream

    engine = GatedEngine()
    engine.release_first.set()
    install(engine, monkeypatch)
    start = transcribe._start
    failed = threading.Event()

    def start_once_down(claimed, audios):  # noqa: ANN001, ANN202
        if not failed.is_set():
            failed.set()
            raise OperationalError("UPDATE chunks", {}, Exception("server closed the connection unexpectedly"))
        return start(claimed, audios)

    monkeypatch.setattr(transcribe, "_start", start_once_down)
    _, ids = _add_gated_job(2)
    stream = ChunkStream("worker-f")
    try:
        stream.intake([str(c) for c in ids], {}, {})
        assert failed.wait(60), "the batch never reached its start"
        wait_until(lambda: not stream.held.chunk_ids and not stream.held.claims and not stream._inside, 30, 0.05,
                   "the failed batch out of the stream and its heartbeat")
        stream.intake([str(c) for c in ids], {}, {})  # the message sent again
        wait_until(lambda: all(st == ChunkState.DONE for st, _, _ in _chunk_rows(ids).values()), 60, 0.1,
                   f"the chunks run on their next message: {_chunk_rows(ids)}")
    finally:
        stream.close()


def test_a_suspect_runs_only_once_the_batches_before_it_are_stored(live, monkeypatch):
    """A suspect (a chunk that was running when its worker died) may kill this worker too. The stream
    stores a batch's results while the next batch runs, so a suspect started meanwhile could take an
    innocent batch's unstored results down with it, charging those chunks for its crash each time until
    they gave up. The suspect starts once the batches before it are stored."""
    from tests.gated_engine import GatedEngine, install
    from workers.tasks import transcribe
    from workers.tasks.stream import ChunkStream

    _two_per_batch(monkeypatch)  # chunks 0 and 1 fill a batch, which goes first (the suspect waits 2 s more)
    engine = GatedEngine()
    engine.release_first.set()
    install(engine, monkeypatch)
    events: list[str] = []
    store_gate = threading.Event()
    store, start = transcribe._store_results, transcribe._start

    def slow_store(work, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        store_gate.wait(30)
        store(work, *a, **kw)
        events.append("stored " + ",".join(sorted(str(w.index) for w in work)))

    def record_start(claimed, audios):  # noqa: ANN001, ANN202
        events.append("start " + ",".join(sorted(str(w.index) for w in claimed)))
        return start(claimed, audios)

    monkeypatch.setattr(transcribe, "_store_results", slow_store)
    monkeypatch.setattr(transcribe, "_start", record_start)
    _, ids = _add_gated_job(3)
    with _session() as s:  # chunk 2 was running when a worker died
        s.execute(update(Chunk).where(Chunk.id == ids[2]).values(attempts=1))
        s.commit()
    stream = ChunkStream("worker-p")
    try:
        stream.intake([str(c) for c in ids], {}, {})
        wait_until(lambda: "start 0,1" in events, 60, 0.05, f"the fresh batch started: {events}")
        time.sleep(1.5)  # time for the suspect to start too early, were it allowed to
        store_gate.set()
        wait_until(lambda: all(st == ChunkState.DONE for st, _, _ in _chunk_rows(ids).values()), 60, 0.1,
                   f"every chunk stored: {events}")
        assert events.index("stored 0,1") < events.index("start 2"), events
    finally:
        store_gate.set()
        stream.close()


def test_between_two_batches_the_engine_thread_runs_alone(live, monkeypatch):
    """Issue 18 (the gap between batches): when a batch ended, the store thread (its results) and the feeder
    (the batch after next) started at once, while the engine thread charged the next batch's attempt; each of
    its database round trips then waited for the GIL they held (measured on the feeding bench: 18 ms (p50)
    from one batch's end to the next one's start, 2 ms of it the engine thread's own CPU). Both now begin
    once the next batch is in the engine. The next batch's start here waits for either of them to begin,
    as they did."""
    from tests.gated_engine import GatedEngine, install
    from workers.tasks import transcribe
    from workers.tasks.stream import ChunkStream

    _two_per_batch(monkeypatch)
    engine = GatedEngine()  # holds its first batch until the second one is claimed and read
    install(engine, monkeypatch)
    events: list[tuple[str, frozenset]] = []
    moved = threading.Condition()
    store, claim, start, run = (transcribe._store_results, transcribe._claim_and_read, transcribe._start,
                                engine.transcribe_batch)

    def note(kind: str, work) -> None:  # noqa: ANN001
        with moved:
            events.append((kind, frozenset(w.index for w in work)))
            moved.notify_all()

    def noted_store(work, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        note("store", work)
        return store(work, *a, **kw)

    def noted_claim(batch, held=None):  # noqa: ANN001, ANN202
        note("claim", batch)
        return claim(batch, held)

    def second_start_waits(claimed, audios):  # noqa: ANN001, ANN202
        with moved:
            if sum(k == "start" for k, _ in events) == 1:  # the second batch's turn: the first one has ended
                moved.wait_for(lambda: any(k == "store" for k, _ in events)
                               or sum(k == "claim" for k, _ in events) >= 3, timeout=3.0)
            events.append(("start", frozenset(w.index for w in claimed)))
        return start(claimed, audios)

    def noted_run(audios, options):  # noqa: ANN001, ANN202
        out = run(audios, options)
        note("run", [types.SimpleNamespace(index=i) for i in engine.batches[-1]])
        return out

    monkeypatch.setattr(transcribe, "_store_results", noted_store)
    monkeypatch.setattr(transcribe, "_claim_and_read", noted_claim)
    monkeypatch.setattr(transcribe, "_start", second_start_waits)
    monkeypatch.setattr(engine, "transcribe_batch", noted_run)
    _, ids = _add_gated_job(6)
    stream = ChunkStream("worker-g")
    try:
        stream.intake([str(c) for c in ids], {}, {})
        assert engine.first_running.wait(60), "the first batch never reached the engine"
        wait_until(lambda: stream._ready.qsize() == 1, 30, 0.05, "the second batch claimed and read")
        engine.release_first.set()
        wait_until(lambda: all(st == ChunkState.DONE for st, _, _ in _chunk_rows(ids).values()), 60, 0.1,
                   f"every chunk stored: {events}")
    finally:
        engine.release_first.set()
        stream.close()
    runs = [b for k, b in events if k == "run"]
    claims = [b for k, b in events if k == "claim"]
    assert len(runs) == 3 and len(claims) == 3, events
    second_ran = events.index(("run", runs[1]))
    assert events.index(("store", runs[0])) > second_ran, events  # the first batch stored once the second ran
    assert events.index(("claim", claims[2])) > second_ran, events  # the third claimed once the second ran


def test_a_batch_s_audio_is_freed_by_the_store_thread(live, monkeypatch):
    """Issue 18 (the gap between batches): the engine thread dropped the last reference to a batch's audio as
    it took the next batch, and freeing the arrays (30 MB for 24 chunks of 8-30 s) cost it 2 ms of CPU
    there, between two batches (measured on the feeding bench, with the thread's CPU clock). The store
    thread drops them now, once the next batch runs."""
    import weakref

    from tests.gated_engine import GatedEngine, install
    from workers.tasks import transcribe

    _two_per_batch(monkeypatch)
    engine = GatedEngine()
    engine.release_first.set()
    install(engine, monkeypatch)
    freed_by: dict[int, str] = {}
    read = transcribe._read_all

    def watched_read(work):  # noqa: ANN001, ANN202
        audios = read(work)
        for w, a in zip(work, audios):
            weakref.finalize(a, lambda i=w.index: freed_by.setdefault(i, threading.current_thread().name))
        return audios

    monkeypatch.setattr(transcribe, "_read_all", watched_read)
    _, ids = _add_gated_job(6)
    _stream_until_stored("worker-a", ids)
    assert set(freed_by) == set(range(6)), freed_by
    assert set(freed_by.values()) == {"asrq-stream-store"}, freed_by


def _stream_until_stored(worker: str, ids: list) -> None:
    """A stream handed these chunks, run until every one is stored."""
    from workers.tasks.stream import ChunkStream

    stream = ChunkStream(worker)
    try:
        stream.intake([str(c) for c in ids], {}, {})
        wait_until(lambda: all(st == ChunkState.DONE for st, _, _ in _chunk_rows(ids).values()), 60, 0.1,
                   "every chunk stored")
    finally:
        stream.close()


def test_the_stream_runs_the_fullest_batch_first(live, monkeypatch):
    """Issue 18 (batch fill): the stream ran the planned batch holding the oldest chunk, cut from the longest
    chunk down, so a run that straddled a gap in the lengths went first half empty (the feeding bench: 18 %
    of batches under 90 % of the budget in audio). It now runs the fullest batch the pool holds first."""
    from app.constants import pcm_key
    from app.settings import get_settings
    from app.storage import get_store
    from tests.gated_engine import OPTIONS, GatedEngine, chunk_pcm, install

    monkeypatch.setenv("ASRQ_BATCH_AUDIO_S", "10")
    monkeypatch.setenv("ASRQ_BATCH_MAX_REQUESTS", "8")
    get_settings.cache_clear()
    engine = GatedEngine()
    engine.release_first.set()
    install(engine, monkeypatch)
    jid = _add_job(JobState.TRANSCRIBING, dict(OPTIONS), stale=False)
    get_store().put_bytes(pcm_key(jid), chunk_pcm(18))
    # a 6 s chunk (a batch of its own: two would take 12 s of the 10) and three of 3.3 s (9.9 s together)
    spans_ms = [(0, 6000), (6000, 9300), (10000, 13300), (14000, 17300)]
    with _session() as s:
        rows = [Chunk(job_id=jid, index=i, start_ms=a, end_ms=b, updated_at=utcnow()) for i, (a, b) in enumerate(spans_ms)]
        s.add_all(rows)
        s.flush()
        s.execute(update(Job).where(Job.id == jid).values(chunks_total=len(rows)))
        ids = [c.id for c in rows]
    _stream_until_stored("worker-f", ids)
    # the engine reports each chunk by the second it starts at
    assert [sorted(b) for b in engine.batches] == [[6, 10, 14], [0]]


# ---- lock order ---------------------------------------------------------------------------------------------------


def test_cancel_against_saving_results_never_deadlocks(live):
    """Finding 6: cancel locked the job then its chunks while saving results locked chunks then the job,
    a cycle Postgres breaks by aborting one of them. Both now lock the job first."""
    from app.jobs import cancel_or_delete
    from app.lifecycle import claim_chunks, save_results
    from app.storage import LocalStore

    store = LocalStore(live.objects)
    rounds, per_round = 6, 12
    errors: list[BaseException] = []
    for _ in range(rounds):
        work = {}
        for _ in range(per_round):
            jid = _add_job(JobState.TRANSCRIBING)
            cids = _add_chunks(jid, 4)
            with _session() as s:
                work[jid] = claim_chunks(s, cids, lease_s=60, max_attempts=3)[0]
        barrier = threading.Barrier(2 * per_round)

        def cancel(jid: uuid.UUID) -> None:
            barrier.wait()
            with _session() as s:
                cancel_or_delete(s, store, "t", jid)

        def save(jid: uuid.UUID) -> None:
            barrier.wait()
            with _session() as s:
                save_results(s, None, [(w, "words", [], "en") for w in reversed(work[jid])])

        with ThreadPoolExecutor(2 * per_round) as pool:
            futures = [pool.submit(f, jid) for jid in work for f in (cancel, save)]
            for f in futures:
                if f.exception() is not None:
                    errors.append(f.exception())
        with _session() as s:
            for jid in work:
                job = s.get(Job, jid)
                states = dict(s.execute(select(Chunk.state, func.count()).where(Chunk.job_id == jid)
                                        .group_by(Chunk.state)).all())
                # the results won (all four stored; a cancel after them still cancels the finalize), or the
                # cancel did (none stored): never a mix
                assert (job.state, states) in ((JobState.FINALIZING, {ChunkState.DONE: 4}),
                                               (JobState.CANCELLED, {ChunkState.DONE: 4}),
                                               (JobState.CANCELLED, {ChunkState.FAILED: 4})), (job.state, states)
    assert not errors, [repr(e)[:300] for e in errors]



# ---- one job's bad option charges nobody else ---------------------------------------------------------------------


@pytest.mark.slow
def test_model_that_cannot_load_fails_only_the_jobs_naming_it(live):
    """Finding 2: a model that fails to load on a worker used to escape the batch's error handling; the
    claimed chunks stayed RUNNING, were charged attempts and looped. Now the jobs that named it fail at
    once with the reason, and a job with a good model handed over in the same task completes."""
    import io

    from app.constants import pcm_key
    from app.storage import get_store
    from tests.services import AUDIO
    from workers.audio import decode_to_pcm
    from workers.tasks.transcribe import process_chunks

    buf = io.BytesIO()
    info = decode_to_pcm(AUDIO / "en_jfk_ask_not_11s.flac", buf)
    good = _add_job(JobState.TRANSCRIBING, {"engine": "whisper", "model": "bundled:tiny.en"})
    bad = _add_job(JobState.TRANSCRIBING, {"engine": "whisper", "model": "bundled:no-such-model"})
    chunk_ids = []
    for jid in (good, bad):
        get_store().put_bytes(pcm_key(jid), buf.getvalue())
        with _session() as s:
            c = Chunk(job_id=jid, index=0, start_ms=0, end_ms=int(info.duration_s * 1000))
            s.add(c)
            s.flush()
            chunk_ids.append(str(c.id))
            s.execute(update(Job).where(Job.id == jid).values(chunks_total=1))
    process_chunks(chunk_ids, "test-worker")
    bad_job, good_job = _job(bad), _job(good)
    assert bad_job.state == JobState.FAILED and "no-such-model" in bad_job.error, bad_job.error
    assert good_job.state == JobState.FINALIZING
    with _session() as s:
        attempts = dict(s.execute(select(Chunk.job_id, Chunk.attempts)).all())
    assert attempts == {good: 1, bad: 1}
