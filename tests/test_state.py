"""State transitions on real Postgres: what an outage may and may not charge, and the schema's migrations."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy.orm import Session

from app.db.models import Chunk, ChunkState, Job, JobState
from app.db.session import make_engine
from app.lifecycle import begin_prepare, claim_chunks, release_unreadable, requeue_prepare


@pytest.fixture()
def session(migrated_pg):
    engine = make_engine(migrated_pg)
    with Session(engine) as s:
        yield s
    engine.dispose()


def _job(s: Session, state: JobState = JobState.QUEUED) -> uuid.UUID:
    job = Job(tenant="t", state=state, source_uri="upload:x.wav", filename="x.wav", options={},
              params_hash="0" * 64)
    s.add(job)
    s.commit()
    return job.id


def test_schema_matches_models(migrated_pg):
    """The Alembic head creates exactly what the models declare (a column added without a migration
    would break every deployed database)."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from app.db.models import Base

    engine = make_engine(migrated_pg)
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diffs == []


def test_transient_prepare_errors_do_not_spend_attempts(session):
    jid = _job(session)
    for _ in range(5):  # an outage longer than max_attempts retries
        job = begin_prepare(session, jid, max_attempts=3, lease_s=300)
        assert job is not None
        assert requeue_prepare(session, jid, job.prepare_fence)
    job = session.get(Job, jid, populate_existing=True)
    # attempts given back; the fencing token is not: every holder had one of its own
    assert (job.state, job.prepare_attempts, job.prepare_fence) == (JobState.QUEUED, 0, 5)
    # prepares that never finish (a worker killed each time) do run out
    for _ in range(3):
        assert begin_prepare(session, jid, max_attempts=3, lease_s=-60) is not None
    assert begin_prepare(session, jid, max_attempts=3, lease_s=-60) is None
    job = session.get(Job, jid, populate_existing=True)
    assert job.state == JobState.FAILED and "failed 3 times" in job.error


def test_storage_read_failures_are_counted_apart_from_attempts(session):
    jid = _job(session, JobState.TRANSCRIBING)
    cid = uuid.uuid4()
    session.add(Chunk(id=cid, job_id=jid, index=0, start_ms=0, end_ms=5000, state=ChunkState.PENDING))
    session.commit()
    for n in range(1, 6):
        claimed, exhausted = claim_chunks(session, [cid], lease_s=60, max_attempts=3)
        assert [w.chunk_id for w in claimed] == [cid] and not exhausted
        assert release_unreadable(session, claimed, "storage down") == {cid: n}
    chunk = session.get(Chunk, cid, populate_existing=True)
    assert (chunk.state, chunk.attempts, chunk.storage_failures) == (ChunkState.PENDING, 0, 5)
