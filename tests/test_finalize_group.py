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


def _state(job_id: uuid.UUID):  # noqa: ANN202
    from app.db.models import Job
    from app.db.session import session_scope

    with session_scope() as s:
        j = s.get(Job, job_id)
        return j.state, j.lease_until, j.finalize_attempts, j.error


def test_a_mate_whose_punctuation_model_is_missing_does_not_fail_the_task_job(env):
    """Issue 17 finding 2: a waiting job that names a punctuation model this worker lacks never fails the
    finalize that would take it along: the task's own job completes, and the other job gets its own clear
    outcome (FAILED with the missing model named) from its own finalize."""
    from app.db.models import JobState
    from workers.tasks import finalize as fin

    lead = _finalizing_job("tiny-punc", seed=1)
    missing = _finalizing_job("no-such-punc", seed=2)
    good = _finalizing_job("tiny-punc", seed=3)
    fin.finalize.apply(args=[str(lead)])  # the task, with its retry policy (tasks/policy.run_job_step)
    assert _state(lead)[0] == JobState.COMPLETED, _state(lead)
    assert _state(good)[0] == JobState.COMPLETED
    state, lease, attempts, _ = _state(missing)
    assert (state, lease, attempts) == (JobState.FINALIZING, None, 0)  # not held by anyone: free for its own
    fin.finalize.apply(args=[str(missing)])
    state, _, _, error = _state(missing)
    assert state == JobState.FAILED and "'no-such-punc' is not installed" in error


def test_each_mates_error_is_its_own(env, monkeypatch):
    """A mate whose rows cannot be read fails with its reason, one whose text the model chokes on fails
    alone (the others' texts are punctuated again without it), one whose ITN meets a transient error is
    given back to be finalized again; the task's own job and a sound mate complete."""
    from app.db.models import JobState
    from app.errors import PermanentError
    from workers.tasks import finalize as fin

    lead = _finalizing_job("tiny-punc", seed=1)
    unreadable, choking, flaky, sound = (_finalizing_job("tiny-punc", seed=s) for s in (2, 3, 4, 5))
    real_load, real_punctuate, real_normalize = fin._load, fin.punctuate, fin.normalize_words
    texts: dict = {}

    def plain(text: str) -> str:  # a text without the marks punctuation adds
        return "".join(c for c in text if c.isalnum()).lower()

    def load(job_id):  # noqa: ANN001, ANN202
        if job_id == unreadable:
            raise PermanentError("the chunk results of this job cannot be read")
        loaded = real_load(job_id)
        texts[job_id] = plain(loaded.chunks[0].text)
        return loaded

    def punctuate(model, words):  # noqa: ANN001, ANN202
        if any(plain("".join(w.word for w in t)) == texts[choking] for t in words):
            raise RuntimeError("this text breaks the model")
        return real_punctuate(model, words)

    def normalize_words(words, char_level):  # noqa: ANN001, ANN202
        if plain("".join(w.word for w in words)) == texts[flaky]:
            raise ConnectionError("the ITN service blinked")
        return real_normalize(words, char_level)

    monkeypatch.setattr(fin, "_load", load)
    monkeypatch.setattr(fin, "punctuate", punctuate)
    monkeypatch.setattr(fin, "normalize_words", normalize_words)
    fin.finalize.apply(args=[str(lead)])
    assert _state(lead)[0] == _state(sound)[0] == JobState.COMPLETED, (_state(lead), _state(sound))
    state, _, _, error = _state(unreadable)
    assert state == JobState.FAILED and "cannot be read" in error
    state, _, _, error = _state(choking)
    assert state == JobState.FAILED and "internal error (RuntimeError)" in error
    assert _state(flaky)[:3] == (JobState.FINALIZING, None, 0)  # given back, its attempt returned
    monkeypatch.setattr(fin, "normalize_words", real_normalize)
    fin.finalize.apply(args=[str(flaky)])
    assert _state(flaky)[0] == JobState.COMPLETED


@pytest.mark.parametrize("bound", ["chars", "time"])
def test_the_mates_work_is_bounded(env, monkeypatch, bound):
    """The mates never eat the task's own time limit: mates whose texts would bring the group past
    ASRQ_FINALIZE_GROUP_CHARS_MAX ride alone, and once the task has run ASRQ_FINALIZE_GROUP_BUDGET_S no
    further mate is started. Those left out are given back (free, first attempt) for their own finalize."""
    from app.db.models import JobState
    from app.settings import get_settings
    from workers.tasks import finalize as fin

    calls: list[int] = []
    real = fin.punctuate
    monkeypatch.setattr(fin, "punctuate", lambda model, texts: calls.append(len(texts)) or real(model, texts))
    lead = _finalizing_job("tiny-punc", seed=1)
    mates = [_finalizing_job("tiny-punc", n_words=40, seed=2 + i) for i in range(3)]
    if bound == "chars":
        chars = [sum(len(c.text) for c in fin._load(m).chunks) for m in mates]
        assert 2 * min(chars) > max(chars)
        monkeypatch.setenv("ASRQ_FINALIZE_GROUP_CHARS_MAX", str(max(chars)))  # room for exactly one mate
    else:
        monkeypatch.setenv("ASRQ_FINALIZE_GROUP_BUDGET_S", "0")
    get_settings.cache_clear()
    fin.finalize.apply(args=[str(lead)])
    assert _state(lead)[0] == JobState.COMPLETED
    done = [m for m in mates if _state(m)[0] == JobState.COMPLETED]
    left = [m for m in mates if _state(m)[:3] == (JobState.FINALIZING, None, 0)]
    assert (len(done), len(left)) == ((1, 2) if bound == "chars" else (0, 3)), [_state(m) for m in mates]
    assert calls == ([2] if bound == "chars" else [1])
    # one left out for its size was held a moment only: its own message is still to come, none is added (a
    # long job would otherwise collect one from every finalize that takes it); one left out when the time
    # was up may have seen its message come and go meanwhile: it gets another
    from app.messaging import queue_depths

    assert queue_depths(get_settings())["finalize"] == (0 if bound == "chars" else 3)
    for m in left:
        fin.finalize.apply(args=[str(m)])
    assert all(_state(m)[0] == JobState.COMPLETED for m in mates)


def test_a_finalize_is_three_statements_and_a_request_per_object(env):
    """A job's finalize, counted on real Postgres and S3 (no webhook, no punctuation): take the job (its row
    comes back with the take-over), read its chunks, complete it (what its end needs comes back with the
    move); one PUT per format and the deletion of its decoded audio. Each round trip is CPU on the worker."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    from app.db.models import Job, JobState
    from app.db.session import session_scope
    from app.storage import get_store
    from workers.tasks import finalize as fin

    jobs = [_finalizing_job("none", seed=n) for n in range(2)]
    fin.finalize_job(jobs[0])  # connections open, clients made
    statements: list[str] = []
    requests: list[str] = []

    def count(_conn, _cur, statement, *_a) -> None:  # noqa: ANN001
        statements.append(statement.split()[0])

    event.listen(Engine, "before_cursor_execute", count)
    get_store().client.meta.events.register("before-call.s3.*", lambda model, **_: requests.append(model.name))
    try:
        fin.finalize_job(jobs[1])
    finally:
        event.remove(Engine, "before_cursor_execute", count)
    with session_scope() as s:
        assert s.get(Job, jobs[1]).state == JobState.COMPLETED
    assert statements == ["UPDATE", "SELECT", "UPDATE"], statements
    assert sorted(requests) == ["DeleteObject", "PutObject", "PutObject"], requests  # json, srt; the PCM
