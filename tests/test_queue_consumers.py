"""Issue 17 leftover: a worker started with a command line from before the ``reconcile`` and ``webhook``
queues existed (``--queues ...,maintenance``) consumes them too, says so, and /metrics shows each queue's
consumers, so a queue that nothing consumes is visible as 0 instead of silently holding its messages."""

from __future__ import annotations

import logging
import secrets

import pytest

from tests.conftest import REDIS_TEST_DB
from tests.services import Stack, apply_env, base_env, cpu_worker_argv, free_port, postgres_database, redis_db, wait_until


@pytest.mark.parametrize("given, meant", [
    # the lists of the units before the split: each also consumes reconcile and webhook, as maintenance did
    ("prepare,finalize,maintenance", "prepare,finalize,maintenance,reconcile,webhook"),
    ("maintenance", "maintenance,reconcile,webhook"),
    # lists that name either are read as written
    ("prepare,finalize", "prepare,finalize"),
    ("maintenance,reconcile", "maintenance,reconcile"),
    ("webhook", "webhook"),
    ("prepare,finalize,maintenance,reconcile,webhook", "prepare,finalize,maintenance,reconcile,webhook"),
])
def test_an_old_queue_list_still_gets_the_reconciler_and_the_webhooks(given, meant, caplog):
    from app.settings import Settings
    from workers.launcher import cpu_specs, upgraded_queues

    with caplog.at_level(logging.WARNING, logger="asrq.launcher"):
        names = upgraded_queues(given.split(","))
    assert names == meant.split(",")
    warned = [r.getMessage() for r in caplog.records if "a list from before" in r.getMessage()]
    assert bool(warned) == (given != meant)
    if warned:  # it says what to write
        assert f"--queues {meant}" in warned[0]
    specs = {s.name.split("@")[0]: s for s in cpu_specs(names, 1, True, Settings())}
    if "reconcile" in meant:
        assert specs["reconcile"].queues == ["reconcile"] and specs["reconcile"].beat  # the schedule goes with it
    if "webhook" in meant:
        assert specs["webhook"].queues == ["webhook"]


def test_metrics_show_a_queue_nobody_consumes(tmp_path):
    """A real worker started the old way (``--queues maintenance``): the reconcile and webhook queues get
    consumers, the queues it leaves alone show 0 on /metrics and in its start log, and its consumers go when
    it stops."""
    from app.consumers import consumer_counts
    from app.db.migrate import upgrade
    from app.db.session import reset_engines, session_factory
    from app.metrics import StateCollector
    from app.settings import get_settings

    key = secrets.token_urlsafe(16)
    with postgres_database() as db_url, redis_db(REDIS_TEST_DB) as broker:
        upgrade(db_url)
        env = base_env(db_url, broker, f"file://{tmp_path / 'objects'}", "http://127.0.0.1:9", tmp_path, key)
        st = Stack(env=env, tmp=tmp_path, api_url=f"http://127.0.0.1:{free_port()}", api_key=key)
        try:
            apply_env(env)
            settings = get_settings()

            def consumers() -> dict[str, float]:
                fam = next(f for f in StateCollector(settings, session_factory(), 0).collect()
                           if f.name == "asrq_queue_consumers")
                return {s.labels["queue"]: s.value for s in fam.samples}

            assert set(consumers().values()) == {0}  # nothing runs yet: every queue shows it
            worker = st.start("old-worker", cpu_worker_argv(1, beat=False, queues="maintenance"))
            wait_until(lambda: all(consumer_counts(settings)[q] for q in ("maintenance", "reconcile", "webhook")),
                       90, what=f"the old command line's worker to consume reconcile and webhook\n{worker.tail()}")
            assert consumers() == {"maintenance": 1, "reconcile": 1, "webhook": 1,
                                   "prepare": 0, "finalize": 0, "transcribe": 0}
            log = worker.log.read_text()
            assert "a list from before" in log
            assert "no worker consumes the 'prepare' queue" in log and "'finalize'" in log
            worker.stop()
            assert set(consumers().values()) == {0}  # said at shutdown, not left to expire
        finally:
            st.stop_all()
            reset_engines()
            get_settings.cache_clear()
