"""Punctuation batched across jobs: one finalize takes the other punctuated jobs that wait, and their texts
go through the punctuation model in one call (real Postgres, moto S3, a tiny random CT-Transformer)."""

from __future__ import annotations

import json
import os
import uuid

import pytest
from sqlalchemy import insert

from tests.tiny_ct_punc import _tokens, build_tiny_ct_punc

VOCAB = [t for t in _tokens() if not t.startswith("<")]


@pytest.fixture()
def own_pg():  # noqa: ANN201
    """A database of this test's own: a finalize takes along every waiting punctuated job of its database,
    so jobs another test left FINALIZING in a shared one would join the group and change the counts."""
    from app.db.migrate import upgrade
    from tests.services import postgres_database

    with postgres_database() as url:
        upgrade(url)
        yield url


@pytest.fixture()
def env(tmp_path, monkeypatch, own_pg, s3):  # noqa: ANN001, ANN201
    from app import storage
    from app.db import session
    from app.settings import get_settings

    endpoint, _ = s3
    models = tmp_path / "models"
    build_tiny_ct_punc(models / "tiny-punc")
    for k in [k for k in os.environ if k.startswith("ASRQ_")]:
        monkeypatch.delenv(k)
    for k, v in {"ASRQ_HOME": str(tmp_path / "home"), "ASRQ_DATABASE_URL": own_pg,
                 "ASRQ_STORAGE_URL": f"s3://asrq-test/grp-{tmp_path.name}", "ASRQ_S3_ENDPOINT_URL": endpoint,
                 "ASRQ_BROKER_URL": f"filesystem://{tmp_path / 'broker'}", "ASRQ_MODELS_DIR": str(models),
                 "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    session.reset_engines()
    storage._store.cache_clear()
    from tests.services import fresh_celery_app

    with fresh_celery_app():
        yield get_settings()
    get_settings.cache_clear()
    session.reset_engines()
    storage._store.cache_clear()


def _finalizing_job(punc: str, n_words: int = 40, attempts: int = 0, seed: int = 0) -> uuid.UUID:
    import random

    from app.db.models import Chunk, ChunkState, Job, JobState, utcnow
    from app.db.session import session_scope

    rnd = random.Random(seed)
    words = [[i * 0.3, i * 0.3 + 0.2, rnd.choice(VOCAB)] for i in range(n_words)]
    jid = uuid.uuid4()
    with session_scope() as s:
        s.execute(insert(Job), [{"id": jid, "tenant": "t", "state": JobState.FINALIZING, "source_uri": "s3://b/x.wav",
                                 "filename": "x.wav", "params_hash": "h", "duration_s": n_words * 0.3 + 1,
                                 "options": {"engine": "funasr", "model": "m", "punc_model": punc, "formats": ["json", "srt"]},
                                 "chunks_total": 1, "chunks_done": 1, "finalize_attempts": attempts,
                                 "created_at": utcnow(), "updated_at": utcnow()}])
        s.execute(insert(Chunk), [{"id": uuid.uuid4(), "job_id": jid, "index": 0, "start_ms": 0,
                                   "end_ms": int(n_words * 300 + 1000), "state": ChunkState.DONE, "attempts": 1,
                                   "updated_at": utcnow(), "text": "".join(w[2] for w in words), "words": words,
                                   "language": "zh"}])
        s.commit()
    return jid


def test_one_finalize_punctuates_the_waiting_jobs_in_one_call(env, monkeypatch):
    from app.db.models import Job, JobState
    from app.db.session import session_scope
    from app.storage import get_store
    from workers.tasks import finalize as fin

    calls: list[int] = []
    real = fin.punctuate
    monkeypatch.setattr(fin, "punctuate", lambda model, texts: calls.append(len(texts)) or real(model, texts))

    lead = _finalizing_job("tiny-punc", seed=1)
    mates = [_finalizing_job("tiny-punc", seed=2 + i) for i in range(4)]
    plain = _finalizing_job("none", seed=9)  # not punctuated: nothing to gain, never grouped
    retried = _finalizing_job("tiny-punc", attempts=1, seed=10)  # its finalize died once: runs alone
    fin.finalize_job(lead)
    assert calls == [5]  # the lead and its four mates, one model call
    with session_scope() as s:
        states = {j: s.get(Job, j).state for j in [lead, *mates, plain, retried]}
    assert all(states[j] == JobState.COMPLETED for j in [lead, *mates]), states
    assert states[plain] == JobState.FINALIZING and states[retried] == JobState.FINALIZING
    # each grouped job's transcript is its own, with the marks the model gives it alone
    store = get_store()
    calls.clear()
    alone = fin.restore_all({mates[0]: fin._load(mates[0])})[mates[0]]
    doc = json.loads(store.get_bytes(f"jobs/{mates[0]}/transcript.json"))
    assert [w["word"] for seg in doc["segments"] for w in seg["words"]] == [w.word for w in alone]
    # the mates' own messages, when they come, find their jobs done: nothing runs twice
    calls.clear()
    fin.finalize_job(mates[1])
    assert calls == []
    fin.finalize_job(plain)
    fin.finalize_job(retried)
    with session_scope() as s:
        assert s.get(Job, plain).state == s.get(Job, retried).state == JobState.COMPLETED
        assert s.get(Job, retried).finalize_attempts == 2


def test_a_grouped_job_that_fails_fails_alone(env, monkeypatch):
    """A mate whose transcript cannot be written fails with its reason; the task's own job and the other
    mates complete. If the task's own job fails first, its mates are given back, not left held."""
    from app.db.models import Job, JobState
    from app.db.session import session_scope
    from app.errors import PermanentError
    from workers.tasks import finalize as fin

    lead, bad, good = (_finalizing_job("tiny-punc", seed=s) for s in (1, 2, 3))
    real = fin._write_transcript

    def write(job, words):  # noqa: ANN001, ANN202
        if job.job_id == bad:
            raise PermanentError("the transcript of this job cannot be stored")
        return real(job, words)

    monkeypatch.setattr(fin, "_write_transcript", write)
    fin.finalize_job(lead)
    with session_scope() as s:
        assert s.get(Job, lead).state == s.get(Job, good).state == JobState.COMPLETED
        failed = s.get(Job, bad)
        assert failed.state == JobState.FAILED and "cannot be stored" in failed.error

    lead2, mate2 = _finalizing_job("tiny-punc", seed=4), _finalizing_job("tiny-punc", seed=5)

    def lead_fails(job, words):  # noqa: ANN001, ANN202
        if job.job_id == lead2:
            raise PermanentError("the lead's transcript cannot be stored")
        return real(job, words)

    monkeypatch.setattr(fin, "_write_transcript", lead_fails)
    with pytest.raises(PermanentError):
        fin.finalize_job(lead2)  # the task's policy fails it (tasks/policy.run_job_step)
    with session_scope() as s:
        m = s.get(Job, mate2)
        # given back at once: free for its own message, its attempt returned
        assert m.state == JobState.FINALIZING and m.lease_until is None and m.finalize_attempts == 0
    monkeypatch.setattr(fin, "_write_transcript", real)
    fin.finalize_job(mate2)
    with session_scope() as s:
        assert s.get(Job, mate2).state == JobState.COMPLETED
