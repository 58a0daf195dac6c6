"""Webhook delivery never delays recovery or prepare (issue 17, finding 3): with a receiver that accepts
connections and never answers, and many tries due, a real worker started as a deployment starts it
(`asrq worker`, its default CPU queues, the beat) still runs reconcile passes and prepares at once, and
the tries wait side by side in a pool of their own (real Postgres, Redis, Celery worker processes)."""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import update

from tests.conftest import REDIS_TEST_DB
from tests.services import ROOT, Proc, cpu_worker_argv, postgres_database, redis_db, wait_until

TRIES = 200
# each try holds its thread this long: the webhook pool stays full of tries to the receiver for the whole
# test (200 tries, 8 at a time: 25 minutes), and a shared pool would need over 3 hours to reach the rest
WEBHOOK_TIMEOUT_S = 60.0
WEBHOOK_CONCURRENCY = 8
STARTUP_S = 240.0  # the worker's start-up on a busy 2-core box
DEADLINE_S = 60.0  # a reconcile pass runs every second: ten times what a loaded box needs


class Blackhole:
    """A loopback receiver that accepts every connection, reads what is sent, and never answers. It
    counts the connections open at once: a try holds one until its timeout ends it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.open_now = 0
        self.most_open = 0
        self._stop = threading.Event()
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.sock, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._sel.select(timeout=0.1):
                if key.fileobj is self.sock:
                    with contextlib.suppress(BlockingIOError):
                        conn, _ = self.sock.accept()
                        conn.setblocking(False)
                        self._sel.register(conn, selectors.EVENT_READ)
                        self.accepted += 1
                        self.open_now += 1
                        self.most_open = max(self.most_open, self.open_now)
                    continue
                try:
                    data = key.fileobj.recv(65536)
                except BlockingIOError:
                    continue
                except ConnectionError:
                    data = b""
                if data == b"":  # the client gave up: its try timed out
                    self._sel.unregister(key.fileobj)
                    key.fileobj.close()
                    self.open_now -= 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for key in list(self._sel.get_map().values()):
            key.fileobj.close()


@pytest.fixture()
def services(tmp_path, monkeypatch):
    from app import storage
    from app.db import session
    from app.db.migrate import upgrade
    from app.settings import get_settings
    from tests.services import fresh_celery_app

    with postgres_database() as db_url, redis_db(REDIS_TEST_DB) as broker:
        upgrade(db_url)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ASRQ_")}
        env.update({"ASRQ_HOME": str(tmp_path / "home"), "ASRQ_DATABASE_URL": db_url, "ASRQ_BROKER_URL": broker,
                    "ASRQ_STORAGE_URL": f"file://{tmp_path / 'objects'}", "ASRQ_ALLOW_PRIVATE_SOURCES": "true",
                    "ASRQ_RECONCILE_INTERVAL_S": "1", "ASRQ_RECONCILE_STALE_S": "3",
                    "ASRQ_WEBHOOK_TIMEOUT_S": str(WEBHOOK_TIMEOUT_S), "ASRQ_WEBHOOK_MAX_TRIES": "1",
                    "ASRQ_WEBHOOK_CONCURRENCY": str(WEBHOOK_CONCURRENCY),
                    "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
        for k in [k for k in os.environ if k.startswith("ASRQ_")]:
            monkeypatch.delenv(k)
        for k, v in env.items():
            if k.startswith("ASRQ_"):
                monkeypatch.setenv(k, v)
        get_settings.cache_clear()
        session.reset_engines()
        storage._store.cache_clear()
        try:
            with fresh_celery_app():
                yield env
        finally:
            session.reset_engines()
            get_settings.cache_clear()
            storage._store.cache_clear()


def _job(webhook_url: str | None = None):  # noqa: ANN202
    from app.db.session import session_scope
    from app.jobs import NewJob, create_job
    from app.schemas import JobOptions
    from app.settings import get_settings

    with session_scope() as s:
        job, _ = create_job(s, "acme", NewJob("upload:missing.wav", "missing.wav", JobOptions(), webhook_url),
                            get_settings())
        return job.id


def _taken_by_a_prepare(job_id) -> bool:  # noqa: ANN001
    from app.db.models import Job
    from app.db.session import session_scope

    with session_scope() as s:
        return s.get(Job, job_id).prepare_fence > 0


def test_a_blackholed_webhook_receiver_delays_neither_reconcile_nor_prepare(services, tmp_path):
    from app.constants import CPU_QUEUES
    from app.db.models import Job, utcnow
    from app.db.session import session_scope
    from app.lifecycle import fail_job
    from app.messaging import send_prepare, send_webhook_tries
    from app.settings import get_settings
    from app.webhooks import dispatch_due

    hole = Blackhole()
    worker = None
    try:
        # TRIES jobs end, each with a webhook to the receiver that never answers: their tries are queued
        # first, as they would be when a burst of jobs ends
        ended = [_job(f"http://127.0.0.1:{hole.port}/hook") for _ in range(TRIES)]
        with session_scope() as s:
            for jid in ended:
                fail_job(s, jid, "ended for this test")
            due = dispatch_due(s, get_settings())
        assert len(due) == TRIES
        send_webhook_tries(due)
        # the worker a deployment runs: its default CPU queues, and the beat
        worker = Proc("cpu", cpu_worker_argv(1, beat=True, queues=",".join(CPU_QUEUES)), services,
                      tmp_path / "logs" / "cpu.log").start()
        # a new job is prepared (this waits for the worker's start-up, its prepare process loading the VAD
        # included: a minute on a busy box)
        fresh = _job()
        send_prepare([fresh])
        wait_until(lambda: _taken_by_a_prepare(fresh), STARTUP_S, what=f"the new job's prepare\n{worker.tail()}")
        # the webhook pool starts beside the others, not before them: the test begins once it holds tries
        wait_until(lambda: hole.open_now >= 1, STARTUP_S, what=f"tries held by the receiver\n{worker.tail()}")
        # now a job whose prepare message was lost: only a reconcile pass can send it again, and it must,
        # within a few passes, while the receiver still holds the tries
        lost = _job()
        with session_scope() as s:
            s.execute(update(Job).where(Job.id == lost).values(updated_at=utcnow() - timedelta(seconds=60)))
        t_lost = time.monotonic()
        wait_until(lambda: _taken_by_a_prepare(lost), DEADLINE_S,
                   what=f"the lost job re-sent by a reconcile pass and prepared\n{worker.tail()}")
        print(f"lost job re-sent and prepared in {time.monotonic() - t_lost:.1f} s, with {hole.accepted} of "
              f"{TRIES} tries begun and {hole.open_now} open")
        assert hole.open_now >= 1 and hole.accepted < TRIES  # meanwhile the receiver held tries all along
        # the tries wait side by side, each for its own timeout
        wait_until(lambda: hole.most_open >= WEBHOOK_CONCURRENCY, DEADLINE_S,
                   what=f"tries in flight at once (most {hole.most_open})")
    finally:
        hole.close()  # the tries in flight end at once: the worker's warm shutdown does not wait for them
        if worker is not None:
            worker.stop()


def test_each_kind_of_cpu_work_gets_a_pool_of_its_own(tmp_path):
    """`asrq worker` on the CPU queues: prepare/finalize/maintenance in the prefork pool, the reconciler in
    a one-process pool with the beat, the webhook tries in a thread pool of ASRQ_WEBHOOK_CONCURRENCY; the
    beat's reconcile message expires rather than pile up behind a slow pass."""
    from app.constants import CPU_QUEUES, QUEUE_RECONCILE, QUEUE_WEBHOOK, TASK_RECONCILE
    from app.settings import Settings
    from workers.celery_app import make_celery
    from workers.launcher import cpu_specs

    settings = Settings(home=tmp_path, broker_url=f"filesystem://{tmp_path / 'broker'}", webhook_concurrency=48,
                        reconcile_interval_s=30)
    specs = {s.name.split("@")[0]: s for s in cpu_specs(list(CPU_QUEUES), 4, True, settings)}
    assert specs["cpu"].queues == ["prepare", "finalize", "maintenance"] and specs["cpu"].concurrency == 4
    assert (specs["reconcile"].queues, specs["reconcile"].pool, specs["reconcile"].concurrency) == \
        ([QUEUE_RECONCILE], "prefork", 1)
    assert (specs["webhook"].queues, specs["webhook"].pool, specs["webhook"].concurrency) == \
        ([QUEUE_WEBHOOK], "threads", 48)
    assert [n for n, s in specs.items() if s.beat] == ["reconcile"]
    # a host that runs only some kinds
    assert [s.queues for s in cpu_specs(["prepare", "webhook"], 2, False, settings)] == [["prepare"], ["webhook"]]
    app = make_celery(settings)
    try:
        beat = app.conf.beat_schedule["reconcile"]
        assert beat["task"] == TASK_RECONCILE and 0 < beat["options"]["expires"] <= 2 * 30
        routes = app.conf.task_routes
        assert routes["asrq.reconcile"]["queue"] == QUEUE_RECONCILE and routes["asrq.webhook"]["queue"] == QUEUE_WEBHOOK
    finally:
        app.close()


def test_a_try_waiting_behind_a_backlog_is_not_sent_again_and_a_lost_one_is(services, monkeypatch):
    """A try whose message waits in the webhook queue longer than its claim period (a backlog of tries to a
    slow receiver) is not sent again by the sweep: the queue would otherwise gain one duplicate per row and
    claim period for as long as the backlog lasts. A try whose message left the queue without its try
    being taken (its worker died) is sent again, once, with the same try number. Real Postgres and Redis;
    the sweep's clock is moved past the claim period rather than waited for."""
    import base64
    import json

    import redis

    from app import webhooks
    from app.constants import QUEUE_WEBHOOK
    from app.db.models import utcnow
    from app.db.session import session_scope
    from app.lifecycle import fail_job
    from app.messaging import redis_queue_keys
    from app.settings import get_settings
    from workers.tasks.webhook import webhook_sweep

    # publish times closer than this are taken as concurrent (clock blur, and a row's claim begins a
    # moment before its message is published: more than 50 ms on a loaded box); the test's sends are
    # further apart
    monkeypatch.setenv("ASRQ_RECONCILE_STALE_S", "2")
    get_settings.cache_clear()
    r = redis.Redis.from_url(services["ASRQ_BROKER_URL"])

    def queued() -> list[tuple[str, int]]:
        raws = [raw for key in redis_queue_keys(QUEUE_WEBHOOK) for raw in r.lrange(key, 0, -1)]
        return sorted(tuple(json.loads(base64.b64decode(json.loads(raw)["body"]))[0]) for raw in raws)

    def ended(n: int) -> None:
        jobs = [_job("http://127.0.0.1:9/hook") for _ in range(n)]
        with session_scope() as s:
            for jid in jobs:
                fail_job(s, jid, "ended for this test")

    def sweep_later(periods: int = 1) -> int:  # the sweep once the claim periods taken so far are over
        later = utcnow() + periods * timedelta(seconds=webhooks.claim_s(get_settings()) + 1)
        with monkeypatch.context() as m:
            m.setattr(webhooks, "utcnow", lambda: later)
            return webhook_sweep()

    ended(1)
    assert webhook_sweep() == 1  # nothing consumes the webhook queue: the tries wait there
    first = queued()
    time.sleep(3.0)
    ended(2)
    assert webhook_sweep() == 2
    backlog = queued()
    assert len(backlog) == 3
    assert sweep_later() == 0, "tries still waiting in the queue were sent again"
    assert queued() == backlog

    # the oldest message is handed to a worker that dies before its try: it leaves the queue and its row
    # stays at try 0; that one alone is sent again, with the same try number
    taken = next(k for k in redis_queue_keys(QUEUE_WEBHOOK) if r.llen(k))
    assert [tuple(json.loads(base64.b64decode(json.loads(r.rpop(taken))["body"]))[0])] == first
    assert sweep_later() == 1
    assert queued() == backlog
    assert sweep_later(2) == 0  # and its new message waits like the others
