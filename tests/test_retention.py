"""Retention: decoded audio removed once a job is finished, uploaded sources after ASRQ_SOURCE_RETENTION_DAYS,
everything else after ASRQ_RETENTION_DAYS by the maintenance beat, in bounded, idempotent batches; DELETE of a
finished job removes its text too. In-process API on real Postgres and S3 (moto), and one whole-stack test."""

from __future__ import annotations

import secrets
import threading
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import create_engine, select, text, update

from app.constants import pcm_key, transcript_key
from app.db.models import Batch, Chunk, ChunkState, Job, JobState, UsageDaily
from app.db.session import session_scope
from tests.pg_api import complete, pg_api, prepare, run_batch  # noqa: F401  (pg_api: fixture)
from tests.services import AUDIO, base_env, postgres_database, redis_db, running_stack, wait_until

WAV = b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(256)) * 4
DAY = timedelta(days=1)


def _store():  # noqa: ANN202
    from app.storage import get_store

    return get_store()


def _finished_job(pg_api, state: JobState = JobState.COMPLETED, finished_ago: timedelta = timedelta(0),  # noqa: ANN001
                  chunks_s: tuple[float, ...] = (4.0, 3.0)) -> str:
    """An uploaded job taken through the pipeline, with every object a real one leaves: source, PCM,
    transcripts; finished ``finished_ago``."""
    jid = pg_api.upload(WAV)
    chunk_ids = prepare(jid, list(chunks_s))
    store = _store()
    store.put_bytes(pcm_key(uuid.UUID(jid)), b"\0" * 64)
    run_batch(chunk_ids, 0.5)
    if state == JobState.COMPLETED:
        complete(jid)
    for fmt in ("json", "srt"):
        store.put_bytes(transcript_key(uuid.UUID(jid), fmt), b"{}")
    with session_scope() as s:
        s.execute(update(Job).where(Job.id == uuid.UUID(jid))
                  .values(state=state, finished_at=datetime.now(timezone.utc) - finished_ago))
    return jid


def _job(jid: str) -> Job | None:
    with session_scope() as s:
        return s.get(Job, uuid.UUID(jid))


def _rows_mentioning(job_id: str) -> dict[str, int]:
    """Every table of the database, searched whole (each row as text) for the job's id."""
    from app.settings import get_settings

    engine = create_engine(get_settings().database_url)
    out = {}
    with engine.connect() as c:
        tables = c.execute(text("SELECT table_name FROM information_schema.tables "
                                "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'")).scalars().all()
        for t in tables:
            n = c.execute(text(f'SELECT count(*) FROM "{t}" AS r WHERE r::text LIKE :id'),
                          {"id": f"%{job_id}%"}).scalar()
            if n:
                out[t] = n
    engine.dispose()
    assert "jobs" in tables and "chunks" in tables
    return out


def test_decoded_audio_goes_when_the_job_is_finished(pg_api):
    from workers.tasks.maintenance import maintain_once

    failed = _finished_job(pg_api, JobState.FAILED)
    cancelled = _finished_job(pg_api, JobState.CANCELLED)
    live = pg_api.upload(WAV)
    prepare(live, [5.0])
    _store().put_bytes(pcm_key(uuid.UUID(live)), b"\0" * 64)
    counts = maintain_once()
    assert counts["audio"] >= 2
    for jid in (failed, cancelled):
        assert pg_api.keys(jid) == ["source/talk.wav", "transcript.json", "transcript.srt"]
        assert _job(jid).audio_deleted_at is not None
    # a job still running keeps what its chunks read
    assert pg_api.keys(live) == ["audio.s16le", "source/talk.wav"] and _job(live).audio_deleted_at is None
    assert maintain_once()["audio"] == 0  # nothing left to do: the sweep does not revisit


def test_sources_are_kept_for_their_retention_then_removed(pg_api):
    from app.settings import get_settings
    from workers.tasks.maintenance import maintain_once

    days = get_settings().source_retention_days
    jid = _finished_job(pg_api, finished_ago=timedelta(days=days) - timedelta(hours=1))
    # a source given by URI belongs to the client: never touched
    pg_api.s3.put_object(Bucket="asrq-test", Key="inbox/call-00000.wav", Body=WAV)
    _, (by_uri,) = pg_api.batch(1)
    with session_scope() as s:
        s.execute(update(Job).where(Job.id == uuid.UUID(by_uri))
                  .values(state=JobState.FAILED, finished_at=datetime.now(timezone.utc) - 2 * days * DAY))
    maintain_once()
    assert "source/talk.wav" in pg_api.keys(jid) and _job(jid).source_deleted_at is None
    maintain_once(now=datetime.now(timezone.utc) + timedelta(hours=2))
    assert pg_api.keys(jid) == ["transcript.json", "transcript.srt"] and _job(jid).source_deleted_at is not None
    assert pg_api.get(f"/v1/jobs/{jid}/transcript").status_code == 200  # the transcript stays
    assert _job(by_uri).source_deleted_at is not None
    assert pg_api.s3.head_object(Bucket="asrq-test", Key="inbox/call-00000.wav")["ContentLength"] == len(WAV)


def test_an_expired_job_leaves_nothing_in_postgres_or_storage(pg_api):
    from app.settings import get_settings
    from workers.tasks.maintenance import maintain_once

    days = get_settings().retention_days
    expired = _finished_job(pg_api, finished_ago=timedelta(days=days, hours=1))
    kept = _finished_job(pg_api, finished_ago=timedelta(days=days) - timedelta(hours=1))
    assert set(_rows_mentioning(expired)) == {"jobs", "chunks"}
    with session_scope() as s:
        batch_ids = set(s.scalars(select(Chunk.batch_id).where(Chunk.job_id == uuid.UUID(expired))))
        s.execute(update(Batch).where(Batch.id.in_(batch_ids))
                  .values(created_at=datetime.now(timezone.utc) - timedelta(days=days, hours=2)))
    counts = maintain_once()
    assert counts["expired"] >= 1 and counts["batches"] >= 1
    assert _rows_mentioning(expired) == {}
    assert pg_api.keys(expired) == []
    with session_scope() as s:
        assert s.scalars(select(Batch.id).where(Batch.id.in_(batch_ids))).all() == []
    assert pg_api.get(f"/v1/jobs/{expired}").status_code == 404
    # the one still inside its retention is whole
    assert _job(kept) is not None and "transcript.json" in pg_api.keys(kept)
    assert pg_api.get(f"/v1/jobs/{kept}/transcript").status_code == 200
    # and the expired one's usage is in its tenant's daily totals
    with session_scope() as s:
        u = s.scalars(select(UsageDaily).where(UsageDaily.tenant == pg_api.tenant)).all()
    assert sum(r.jobs_submitted for r in u) == 1 and sum(r.audio_transcribed_s for r in u) == 7.0


def test_objects_storage_keeps_keep_their_job(pg_api):
    """Issue 17 item 7: S3's DeleteObjects answers 200 and lists under Errors the keys it did not delete (an
    object lock, a legal hold, a bucket policy); those used to be ignored, and the job's rows went while its
    transcript stayed in storage, owned by nobody. On moto with a bucket policy that denies deleting one
    job's objects: that job keeps its rows, and a client's DELETE of it answers 503 and changes nothing;
    the sweep goes on with the other jobs and tries the held one again later, when it goes."""
    import json

    from app.settings import get_settings
    from workers.tasks.maintenance import RETRY_AFTER_S, maintain_once

    days = get_settings().retention_days
    held, free = (_finished_job(pg_api, finished_ago=timedelta(days=days, hours=1)) for _ in range(2))
    policy = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Deny", "Principal": "*", "Action": "s3:DeleteObject",
        "Resource": f"arn:aws:s3:::asrq-test/{pg_api.prefix}/jobs/{held}/*"}]}
    pg_api.s3.put_bucket_policy(Bucket="asrq-test", Policy=json.dumps(policy))
    try:
        r = pg_api.c.delete(f"/v1/jobs/{held}", headers=pg_api.auth)
        assert r.status_code == 503, r.text
        assert _job(held).deleted_at is None and pg_api.get(f"/v1/jobs/{held}/transcript").status_code == 200
        maintain_once()
        assert _job(free) is None and pg_api.keys(free) == []
        job = _job(held)
        assert job is not None and "transcript.json" in pg_api.keys(held)
        assert job.retention_retry_at is not None and job.audio_deleted_at is None
        assert _usage_jobs(pg_api.tenant) == 1  # only the job that went was rolled up
    finally:
        pg_api.s3.delete_bucket_policy(Bucket="asrq-test")
    maintain_once()  # the held job waits for its retry time: not tried at every run
    assert _job(held) is not None
    maintain_once(now=datetime.now(timezone.utc) + timedelta(seconds=RETRY_AFTER_S + 60))
    assert _job(held) is None and pg_api.keys(held) == []
    assert _usage_jobs(pg_api.tenant) == 2


def _expired_jobs(pg_api, n: int) -> list[str]:  # noqa: ANN001
    """n jobs, each with a chunk and objects, finished long enough ago to expire, through the batch API."""
    _, ids = pg_api.batch(n)
    store = _store()
    for jid in ids:
        run_batch(prepare(jid, [2.0]), 0.1)
        complete(jid)
        store.put_bytes(transcript_key(uuid.UUID(jid), "json"), b"{}")
    with session_scope() as s:
        s.execute(update(Job).where(Job.id.in_([uuid.UUID(j) for j in ids]))
                  .values(finished_at=datetime.now(timezone.utc) - timedelta(days=400)))
    return ids


def _usage_jobs(tenant: str) -> int:
    with session_scope() as s:
        return sum(r.jobs_submitted for r in s.scalars(select(UsageDaily).where(UsageDaily.tenant == tenant)))


def test_expiry_works_in_bounded_batches_and_survives_a_kill_midway(pg_api):
    from workers.tasks.maintenance import expire_jobs

    ids = _expired_jobs(pg_api, 25)
    cutoff = datetime.now(timezone.utc) - timedelta(days=30)
    store = _store()
    real = store.delete_prefix
    calls = {"n": 0}

    def dies_on_the_15th(prefix: str) -> int:
        calls["n"] += 1
        if calls["n"] == 15:
            raise SystemExit("killed")  # as a worker killed in the middle of a batch
        return real(prefix)

    assert expire_jobs(store, cutoff, 10) == 10
    left = [j for j in ids if _job(j) is not None]
    assert len(left) == 15 and _usage_jobs(pg_api.tenant) == 10
    store.delete_prefix = dies_on_the_15th
    try:
        calls["n"] = 10
        with pytest.raises(SystemExit):
            expire_jobs(store, cutoff, 10)
    finally:
        del store.delete_prefix
    # the killed batch committed nothing: its rows are all there (some of its objects may be gone)
    assert len([j for j in ids if _job(j) is not None]) == 15 and _usage_jobs(pg_api.tenant) == 10
    assert expire_jobs(store, cutoff, 10) == 10
    assert expire_jobs(store, cutoff, 10) == 5
    assert expire_jobs(store, cutoff, 10) == 0
    assert all(_job(j) is None and pg_api.keys(j) == [] for j in ids)
    assert _usage_jobs(pg_api.tenant) == 25  # each job counted exactly once


def test_two_sweeps_at_once_count_each_job_once(pg_api):
    from workers.tasks.maintenance import expire_jobs

    ids = _expired_jobs(pg_api, 30)
    cutoff = datetime.now(timezone.utc) - timedelta(days=30)
    store = _store()
    barrier = threading.Barrier(2)
    done: list[int] = []

    def sweep() -> None:
        barrier.wait()
        while n := expire_jobs(store, cutoff, 4):
            done.append(n)

    threads = [threading.Thread(target=sweep) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sum(done) >= 30 and all(_job(j) is None for j in ids)
    assert _usage_jobs(pg_api.tenant) == 30


def test_delete_of_a_finished_job_removes_its_text_and_words(pg_api):
    jid = _finished_job(pg_api)
    with session_scope() as s:
        assert {c.text for c in s.scalars(select(Chunk).where(Chunk.job_id == uuid.UUID(jid)))} == {"hello"}
    r = pg_api.c.delete(f"/v1/jobs/{jid}", headers=pg_api.auth)
    assert r.status_code == 200 and r.json()["state"] == "COMPLETED"
    assert pg_api.keys(jid) == []
    with session_scope() as s:
        rows = s.execute(select(Chunk.text, Chunk.words, Chunk.engine_s).where(Chunk.job_id == uuid.UUID(jid))).all()
    assert len(rows) == 2 and all(t is None and w is None and e is not None for t, w, e in rows)  # usage stays
    r = pg_api.get(f"/v1/jobs/{jid}/transcript")
    assert r.status_code == 410 and "deleted" in r.text
    job = _job(jid)
    assert job.deleted_at and job.audio_deleted_at and job.source_deleted_at
    # another tenant cannot delete it, or learn it exists
    other = _finished_job(pg_api)
    assert pg_api.c.delete(f"/v1/jobs/{other}", headers=pg_api.other_auth).status_code == 404
    assert pg_api.get(f"/v1/jobs/{other}/transcript").status_code == 200


def test_delete_locks_the_job_before_its_chunks(pg_api):
    """Issue 17 item 11: the DELETE of a finished job updated its chunks, then the job: the reverse of the
    order every other transaction follows (lifecycle.lock_jobs). Against one that follows it (here the
    retention sweep's: the job row locked, then its chunks changed) the two waited on each other and
    Postgres killed one of them. Real transactions: the sweep's holds the job row while the DELETE runs
    into it, then changes the chunks; both must complete."""
    from sqlalchemy import create_engine

    from app.jobs import cancel_or_delete
    from app.settings import get_settings

    jid = _finished_job(pg_api)
    engine = create_engine(get_settings().database_url)
    outcome: dict = {}

    def client_delete() -> None:
        try:
            with session_scope() as s:
                s.execute(text("SET lock_timeout = '20s'"))
                outcome["job"] = cancel_or_delete(s, _store(), pg_api.tenant, uuid.UUID(jid))
        except Exception as e:  # noqa: BLE001 - reported below
            outcome["error"] = e

    def waiting_on_a_lock(conn) -> bool:  # noqa: ANN001
        return bool(conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                      "AND datname = current_database()")).scalar())

    with engine.connect() as sweep, engine.connect() as watch:
        sweep.execute(text("SET lock_timeout = '20s'"))
        sweep.execute(text("SELECT id FROM jobs WHERE id = :j FOR UPDATE"), {"j": jid})
        t = threading.Thread(target=client_delete)
        t.start()
        wait_until(lambda: waiting_on_a_lock(watch), 30, what="the DELETE to meet the sweep's lock")
        sweep.execute(text("UPDATE chunks SET words = NULL WHERE job_id = :j"), {"j": jid})
        sweep.commit()
        t.join(60)
    engine.dispose()
    assert "error" not in outcome, outcome
    assert outcome["job"].deleted_at is not None


def test_transcribe_treats_missing_audio_of_a_finished_job_as_its_end(pg_api):
    """A chunk whose job failed (another chunk) while it ran finds the audio deleted: it closes quietly and the
    job keeps its own reason. For a live job, missing audio is a real failure."""
    from app.lifecycle import claim_chunks, fail_chunks
    from app.storage import ObjectNotFound
    from workers.tasks.transcribe import Engines, _run_batch

    def claimed(jid: str) -> list:
        with session_scope() as s:
            ids = list(s.scalars(select(Chunk.id).where(Chunk.job_id == uuid.UUID(jid)).order_by(Chunk.index)))
            return claim_chunks(s, ids, 60, 3)[0]

    gone = pg_api.upload(WAV)
    prepare(gone, [3.0, 3.0])
    w0, w1 = claimed(gone)
    with session_scope() as s:
        fail_chunks(s, [w0], "inference failed: RuntimeError")
    _run_batch([w1], [ObjectNotFound("no such key")], "worker-1", Engines())
    job = _job(gone)
    assert job.state == JobState.FAILED and job.error == "chunk 0 failed: inference failed: RuntimeError"
    with session_scope() as s:
        c1 = s.get(Chunk, w1.chunk_id)
        assert c1.state == ChunkState.FAILED and "finished before" in c1.error

    live = pg_api.upload(WAV)
    prepare(live, [3.0])
    (w,) = claimed(live)
    _run_batch([w], [ObjectNotFound("no such key")], "worker-1", Engines())
    job = _job(live)
    assert job.state == JobState.FAILED and "prepared audio is missing" in job.error


# ---- the whole stack -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def retention_stack(tmp_path_factory, s3):
    from app.db.migrate import upgrade
    from tests.conftest import REDIS_TEST_DB

    tmp = tmp_path_factory.mktemp("retention")
    endpoint, _ = s3
    key = secrets.token_urlsafe(16)
    with postgres_database() as db_url, redis_db(REDIS_TEST_DB) as broker:
        upgrade(db_url)
        env = base_env(db_url, broker, f"s3://asrq-test/{tmp.name}", endpoint, tmp, key)
        env["ASRQ_MAINTENANCE_INTERVAL_S"] = "2"
        with running_stack(env, tmp, key) as st:
            st.prefix = tmp.name
            yield st


@pytest.mark.slow
def test_whole_stack_pcm_goes_at_completion_and_an_expired_job_leaves_nothing(retention_stack, s3):
    import boto3

    from app.settings import get_settings

    st = retention_stack
    endpoint, _ = s3
    s3c = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")

    def keys(jid: str) -> list[str]:
        p = f"{st.prefix}/jobs/{jid}/"
        return sorted(o["Key"][len(p):] for o in s3c.list_objects_v2(Bucket="asrq-test", Prefix=p).get("Contents", []))

    with st.client() as c:
        jid = c.submit_file(AUDIO / "en_sr_one_two_three.wav")["id"]
        job = c.wait([jid], timeout_s=300)[jid]
        assert job["state"] == "COMPLETED", (job, st.logs())
        # the decoded PCM is gone as the job completes; the source and transcripts stay
        assert keys(jid) == ["source/en_sr_one_two_three.wav", "transcript.json", "transcript.srt",
                             "transcript.txt", "transcript.vtt"], st.logs()
        assert _job(jid).audio_deleted_at is not None
        assert "three" in c.transcript(jid, "txt").decode().lower()
        # a window that holds the completion day before and after it is moved back below
        window = (str(datetime.now(timezone.utc).date() - timedelta(days=60)), None)
        usage = c.usage(*window)
        assert usage["total"]["jobs_completed"] == 1 and usage["total"]["engine_s"] > 0
        assert abs(usage["total"]["audio_transcribed_s"] - 2.745) < 0.05
        # past its retention, the maintenance beat removes every trace of it
        with session_scope() as s:
            s.execute(update(Job).where(Job.id == uuid.UUID(jid)).values(
                finished_at=datetime.now(timezone.utc) - timedelta(days=get_settings().retention_days + 1)))
        wait_until(lambda: _job(jid) is None, 60, what=f"the expiry sweep\n{st.logs()}")
        assert keys(jid) == []
        assert _rows_mentioning(jid) == {}
        assert c.http.get(f"/v1/jobs/{jid}").status_code == 404
        assert c.usage(*window)["total"] == usage["total"]  # usage outlives the job
