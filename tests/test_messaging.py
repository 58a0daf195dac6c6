"""The messages asrq writes to Redis itself (app/messaging.py, pipelined) are the ones Celery would write."""

from __future__ import annotations

import json
import uuid

from tests.conftest import REDIS_TEST_DB
from tests.services import fresh_celery_app, redis_db, wait_until


def _shape(v: object) -> object:
    """A message's structure: its keys at every level, and the type of each value."""
    if isinstance(v, dict):
        return {k: _shape(x) for k, x in v.items()}
    return type(v).__name__


def test_a_pipelined_message_is_the_one_celery_writes(monkeypatch):
    import redis

    from app.constants import SENT_HEADER, TASK_TRANSCRIBE
    from app.messaging import publisher, redis_list_key, send_transcribe
    from app.settings import get_settings
    from workers.inventory import task_and_arg

    with redis_db(REDIS_TEST_DB) as url:
        monkeypatch.setenv("ASRQ_BROKER_URL", url)
        get_settings.cache_clear()
        r = redis.Redis.from_url(url)
        try:
            with fresh_celery_app():
                app = publisher()
                item = str(uuid.uuid4())
                app.send_task(TASK_TRANSCRIBE, args=[item], queue="transcribe", routing_key="transcribe",
                              countdown=30, priority=3)
                theirs = json.loads(r.rpop(redis_list_key("transcribe", 3)))
                send_transcribe([item], countdown=30, levels=[3])
                ours = json.loads(r.rpop(redis_list_key("transcribe", 3)))
        finally:
            r.close()
            get_settings.cache_clear()
    assert _shape(ours) == _shape(theirs)
    assert task_and_arg(ours) == task_and_arg(theirs) == (TASK_TRANSCRIBE, item)
    for k in ("body_encoding", "delivery_mode", "delivery_info", "priority", "reply_to"):
        assert ours["properties"][k] == theirs["properties"][k], k
    for k in ("lang", "task", "retries", "timelimit", "kwargsrepr", "argsrepr", "origin"):
        assert ours["headers"][k] == theirs["headers"][k], k
    assert abs(ours["headers"][SENT_HEADER] - theirs["headers"][SENT_HEADER]) < 30
    assert ours["headers"]["eta"][:16] == theirs["headers"]["eta"][:16]  # the same minute, both UTC
    assert ours["headers"]["eta"].endswith("+00:00") and theirs["headers"]["eta"].endswith("+00:00")


def test_pipelined_sends_emit_task_sent_events_to_a_listener(monkeypatch):
    """Flower (and the soak's watcher) see each pipelined publish as Celery's task-sent event."""
    import threading

    import redis

    from app.constants import TASK_PREPARE
    from app.messaging import publisher, send_prepare
    from app.settings import get_settings

    with redis_db(REDIS_TEST_DB) as url:
        monkeypatch.setenv("ASRQ_BROKER_URL", url)
        get_settings.cache_clear()
        try:
            with fresh_celery_app():
                app = publisher()
                seen: list[dict] = []
                ready = threading.Event()

                def listen() -> None:
                    with app.connection_for_read() as conn:
                        recv = app.events.Receiver(conn, handlers={"task-sent": seen.append})
                        ready.set()
                        try:
                            recv.capture(limit=3, timeout=20, wakeup=False)
                        except TimeoutError:
                            pass

                r = redis.Redis.from_url(url)

                def subscribed_here() -> int:
                    # NUMPAT counts every database's listeners (another test's watcher would do): count this
                    # database's pattern subscribers, before and after the receiver starts
                    return sum(1 for c in r.client_list() if c.get("db") == str(REDIS_TEST_DB)
                               and int(c.get("psub", 0)) > 0)

                before = subscribed_here()
                t = threading.Thread(target=listen, daemon=True)
                t.start()
                assert ready.wait(10)
                items = [str(uuid.uuid4()) for _ in range(3)]
                wait_until(lambda: subscribed_here() > before, 10, 0.05, "the receiver's subscription")
                r.close()
                send_prepare(items)
                t.join(25)
        finally:
            get_settings.cache_clear()
    assert sorted(e["args"] for e in seen) == sorted(repr([i]) for i in items)
    assert {e["name"] for e in seen} == {TASK_PREPARE}
