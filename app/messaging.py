"""Messaging: publishing work to the broker, and what asrq knows of the broker's layout.

Every send happens after the database commit that makes it meaningful; a send that is lost (crash,
broker down) is re-sent by the reconciler from what the database says. Tasks are sent by name: this
module never imports the workers that consume them. Worker processes publish through their own Celery
app (workers/celery_app.py registers it with ``use``); every other process (API, CLI) through a
publish-only app built from the same settings, created on first use (no connection at import).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

from celery import Celery
from kombu import Queue

from app.constants import (
    ALL_QUEUES,
    PRIORITY_STEPS,
    QUEUE_FINALIZE,
    QUEUE_MAINTENANCE,
    QUEUE_PREPARE,
    QUEUE_RECONCILE,
    QUEUE_TRANSCRIBE,
    QUEUE_WEBHOOK,
    SENT_HEADER,
    TASK_FINALIZE,
    TASK_MAINTENANCE,
    TASK_PREPARE,
    TASK_RECONCILE,
    TASK_TRANSCRIBE,
    TASK_WEBHOOK,
    TASK_WEBHOOK_SWEEP,
)
from app.sent_index import is_redis, redis_client, sent_index_key, sent_mark
from app.settings import Settings, get_settings

log = logging.getLogger("asrq.dispatch")


# --- the broker's configuration, shared by the workers' app and the publisher ---------------------------

def broker_transport_options(settings: Settings) -> dict:
    if settings.broker_url.startswith("filesystem://"):
        folder = settings.broker_url[len("filesystem://") :]
        return {
            "data_folder_in": f"{folder}/queue",
            "data_folder_out": f"{folder}/queue",
            "processed_folder": f"{folder}/processed",
            "store_processed": False,
            "control_folder": f"{folder}/control",
            "polling_interval": 0.05,
        }
    return {
        # Redis redelivers an unacked message after this long. A twin of a task still running finds its
        # work held by a live lease or claim and does nothing; a message whose worker died before
        # taking the work comes back within this bound (workers/tasks/reconcile.py)
        "visibility_timeout": settings.visibility_timeout_s,
        "socket_keepalive": True,
        "socket_timeout": 30,
        "health_check_interval": 25,
        # fair share (app/fair_share.py): ten levels, one Redis list each, level 0 served first; kombu's
        # default has four (0, 3, 6, 9), which this includes, so messages sent before an upgrade still arrive
        "priority_steps": list(PRIORITY_STEPS),
    }


def celery_conf(settings: Settings) -> dict:
    """What every asrq Celery app shares: transport, queues, routing and how a message is sent."""
    opts = broker_transport_options(settings)
    if settings.broker_url.startswith("filesystem://"):
        for key in ("data_folder_in", "processed_folder", "control_folder"):
            Path(opts[key]).mkdir(parents=True, exist_ok=True)
    return dict(
        broker_transport_options=opts,
        # the result backend is off: Postgres holds every outcome; results in Redis would only leak memory
        task_ignore_result=True,
        result_backend=None,
        task_queues=[Queue(q, routing_key=q) for q in ALL_QUEUES],
        task_default_queue=QUEUE_PREPARE,
        task_routes={
            TASK_PREPARE: {"queue": QUEUE_PREPARE, "routing_key": QUEUE_PREPARE},
            TASK_TRANSCRIBE: {"queue": QUEUE_TRANSCRIBE, "routing_key": QUEUE_TRANSCRIBE},
            TASK_FINALIZE: {"queue": QUEUE_FINALIZE, "routing_key": QUEUE_FINALIZE},
            TASK_RECONCILE: {"queue": QUEUE_RECONCILE, "routing_key": QUEUE_RECONCILE},
            TASK_WEBHOOK: {"queue": QUEUE_WEBHOOK, "routing_key": QUEUE_WEBHOOK},
            TASK_WEBHOOK_SWEEP: {"queue": QUEUE_WEBHOOK, "routing_key": QUEUE_WEBHOOK},
            TASK_MAINTENANCE: {"queue": QUEUE_MAINTENANCE, "routing_key": QUEUE_MAINTENANCE},
        },
        # Postgres is the source of truth; a publish that fails is retried, and the reconciler
        # re-sends anything that still slipped through
        task_publish_retry=True,
        task_publish_retry_policy={"max_retries": 5, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 3},
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # a worker waits for Redis to come back rather than exit
        # Flower needs task events to show tasks
        task_send_sent_event=True,
        task_serializer="json",
        accept_content=["json"],
        enable_utc=True,
    )


_lock = threading.Lock()
_app: Celery | None = None
_app_pid: int | None = None


def use(app: Celery | None) -> Celery | None:
    """Publish through this app (a worker process's own) instead of a publish-only one; None: a
    publish-only one, made on next use. Returns the app used until now (None if none was made yet)."""
    global _app, _app_pid
    with _lock:
        previous = _app
        _app, _app_pid = app, None
        return previous


def publisher() -> Celery:
    """The Celery app messages are sent with: the worker's own, or one made here on first use (again
    after a fork: a child never reuses its parent's broker connections)."""
    global _app, _app_pid
    with _lock:
        if _app is None or (_app_pid is not None and _app_pid != os.getpid()):
            settings = get_settings()
            app = Celery("asrq", broker=settings.broker_url, set_as_current=False)
            app.conf.update(celery_conf(settings))
            _app, _app_pid = app, os.getpid()
        return _app


def ping_broker(timeout_s: float = 2.0) -> None:
    """Raises when the broker cannot be reached (the API's /healthz)."""
    with publisher().connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=timeout_s)


# --- sending --------------------------------------------------------------------------------------------

#: one broker priority level for every message, or one per message (in the order of the ids)
Levels = int | Sequence[int] | None

_PIPELINE = 1000  # messages per Redis round trip


def _send_many(name: str, queue: str, ids: Iterable[uuid.UUID | str], countdown: float | None = None,
               levels: Levels = None) -> int:
    ids = [str(i) for i in ids]
    if not ids:
        return 0
    each = levels if isinstance(levels, Sequence) else None

    def level(n: int) -> int:
        # the broker priority (app/fair_share.py): 0, served first, unless the sender says otherwise
        return int(each[n] if each is not None else (levels or 0))

    url = get_settings().broker_url
    if is_redis(url):
        return _redis_send_many(url, name, queue, ids, countdown, level)
    app = publisher()
    # one producer (one connection) for the whole loop: 10,000 sends must not open 10,000 connections
    with app.producer_or_acquire() as producer:
        for n, i in enumerate(ids):
            app.send_task(name, args=[i], queue=queue, routing_key=queue, countdown=countdown,
                          producer=producer, priority=level(n))
    return len(ids)


def _redis_send_many(url: str, name: str, queue: str, ids: list[str], countdown: float | None,
                     level) -> int:  # noqa: ANN001
    """Each message written as kombu's Redis transport writes it (LPUSH of its JSON on the list of its
    priority level), a thousand to a round trip, each followed by its field in the sent index. Through
    Celery's send_task this cost about 1 ms of CPU a message (10,000 took 12 to 22 s on a busy 2-core
    machine, pipelined or not); built here it is a few tens of microseconds. No task-sent event is
    emitted while nobody listens for them (Redis pub/sub keeps nothing for later)."""
    sent = time.time()
    due = sent + (countdown or 0.0)
    eta = (datetime.now(timezone.utc) + timedelta(seconds=countdown)).isoformat() if countdown else None
    message = _Messages(name, queue, eta, sent, _origin(), publisher().thread_oid)
    index = sent_index_key(name)
    client = redis_client(url)
    # Celery's task-sent events go out on Redis pub/sub, where nobody hears what is published while nobody
    # listens: sent only while someone does (Flower, a watcher)
    topic = f"/{client.connection_pool.connection_kwargs.get('db', 0)}.celeryev/task.sent"
    listened = bool(client.pubsub_numpat() or client.pubsub_numsub(topic)[0][1])
    with client.pipeline(transaction=False) as p:
        for start in range(0, len(ids), _PIPELINE):
            lists: dict[str, list[str]] = {}
            marks: dict[str, str] = {}
            events: list[str] = []
            for n in range(start, min(start + _PIPELINE, len(ids))):
                lvl = max(0, min(PRIORITY_STEPS[-1], level(n)))
                lists.setdefault(redis_list_key(queue, lvl), []).append(message(ids[n], lvl))
                marks[ids[n]] = sent_mark(sent, due, lvl)
                if listened:
                    events.append(message.sent_event(ids[n], message.last_id))
            for key, messages in lists.items():
                p.lpush(key, *messages)  # in this order, as one LPUSH each would
            p.hset(index, mapping=marks)  # after their messages: never a mark without one
            for event in events:
                p.publish(topic, event)
            p.execute()
    return len(ids)


_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def _message(name: str, queue: str, item: str, level: int, eta: str | None, sent: float, origin: str,
             reply_to: str, task_id: str | None = None, delivery_tag: str | None = None) -> str:
    """A Celery protocol-2 task message in kombu's Redis envelope; tests/test_messaging.py holds it
    against the one Celery builds."""
    task_id = task_id or str(uuid.uuid4())
    body = json.dumps([[item], {}, _EMBED]).encode()
    return json.dumps({
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py", "task": name, "id": task_id, "shadow": None, "eta": eta, "expires": None,
            "group": None, "group_index": None, "retries": 0, "timelimit": [None, None], "root_id": task_id,
            "parent_id": None, "argsrepr": repr([item]), "kwargsrepr": "{}", "origin": origin,
            "ignore_result": False, "replaced_task_nesting": 0, "stamped_headers": None, "stamps": {},
            SENT_HEADER: sent,
        },
        "properties": {
            "correlation_id": task_id, "reply_to": reply_to, "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue}, "priority": level,
            "body_encoding": "base64", "delivery_tag": delivery_tag or str(uuid.uuid4()),
        },
    })


class _Messages:
    """``_message`` for many items that differ only in their id, task id and delivery tag: the JSON is
    written once with markers and filled in per message (a tenth of the cost of encoding each)."""

    _ITEM, _TASK, _TAG, _BODY, _REPR = "\x01i\x01", "\x01t\x01", "\x01g\x01", "\x01b\x01", "\x01r\x01"

    def __init__(self, name: str, queue: str, eta: str | None, sent: float, origin: str, reply_to: str) -> None:
        self.args = (name, queue, eta, sent, origin, reply_to)
        self.templates: dict[int, str] = {}
        self.last_id = ""  # the task id of the latest message made

    def __call__(self, item: str, level: int) -> str:
        tpl = self.templates.get(level)
        if tpl is None:
            name, queue, eta, sent, origin, reply_to = self.args
            raw = json.loads(_message(name, queue, self._ITEM, level, eta, sent, origin, reply_to, self._TASK,
                                      self._TAG))
            raw["body"], raw["headers"]["argsrepr"] = self._BODY, self._REPR
            tpl = json.dumps(raw).replace("%", "%%")
            for marker in (self._TASK, self._TAG, self._BODY, self._REPR):
                tpl = tpl.replace(json.dumps(marker)[1:-1], "%(" + marker[1] + ")s")
            self.templates[level] = tpl
        task_id = str(uuid.uuid4())
        body = base64.b64encode(json.dumps([[item], {}, _EMBED]).encode()).decode()
        self.last_id = task_id
        return tpl % {"t": task_id, "g": str(uuid.uuid4()), "b": body, "r": json.dumps(repr([item]))[1:-1]}

    def sent_event(self, item: str, task_id: str) -> str:
        """Celery's task-sent event for one message (Flower shows the task as sent), in kombu's envelope."""
        name, queue, eta, sent, origin, _ = self.args
        event = {"hostname": origin, "utcoffset": 0, "pid": os.getpid(), "clock": 0, "uuid": task_id,
                 "root_id": task_id, "parent_id": None, "name": name, "args": repr([item]), "kwargs": "{}",
                 "retries": 0, "eta": eta, "expires": None, "queue": queue, "exchange": "", "routing_key": queue,
                 "timestamp": sent, "type": "task-sent"}
        return json.dumps({
            "body": base64.b64encode(json.dumps(event).encode()).decode(), "content-encoding": "utf-8",
            "content-type": "application/json", "headers": {"hostname": origin},
            "properties": {"delivery_mode": 1, "delivery_info": {"exchange": "celeryev", "routing_key": "task.sent"},
                           "priority": 0, "body_encoding": "base64", "delivery_tag": str(uuid.uuid4())},
        })


def _origin() -> str:
    from celery.utils.nodenames import anon_nodename

    return anon_nodename()


def send_prepare(job_ids: Iterable[uuid.UUID | str], levels: Levels = None) -> int:
    return _send_many(TASK_PREPARE, QUEUE_PREPARE, job_ids, levels=levels)


def send_transcribe(chunk_ids: Iterable[uuid.UUID | str], countdown: float | None = None,
                    levels: Levels = None) -> int:
    return _send_many(TASK_TRANSCRIBE, QUEUE_TRANSCRIBE, chunk_ids, countdown, levels)


def send_finalize(job_ids: Iterable[uuid.UUID | str]) -> int:
    return _send_many(TASK_FINALIZE, QUEUE_FINALIZE, job_ids)


def send_webhook_tries(items: list[tuple[str, int]]) -> None:
    """Queue one webhook task per (delivery id, try number); one that cannot be queued comes due again
    after its claim period (app/webhooks.py)."""
    app = publisher()
    for delivery_id, n in items:
        try:
            app.send_task(TASK_WEBHOOK, args=[delivery_id, n], queue=QUEUE_WEBHOOK, routing_key=QUEUE_WEBHOOK)
        except Exception as e:  # noqa: BLE001 - the row is durable: the sweep sends it again
            log.warning("webhook delivery=%s not queued (%s); the sweep retries it", delivery_id, type(e).__name__)
            return


def try_send(fn, ids: list) -> None:  # noqa: ANN001
    """Publish after a commit; if the broker is down, the reconciler will send it later."""
    if not ids:
        return
    try:
        fn(ids)
    except Exception as e:  # noqa: BLE001 - any broker failure is recoverable from the database
        log.warning("publish of %d messages via %s failed (%s); the reconciler will re-send", len(ids),
                    fn.__name__, type(e).__name__)


# --- kombu's Redis layout: what the reconciler and the metrics read -------------------------------------

REDIS_PRIORITY_SEP = "\x06\x16"  # kombu.transport.redis: "<queue><sep><level>" for levels above 0
REDIS_UNACKED = "unacked"
REDIS_UNACKED_INDEX = "unacked_index"  # delivery tag -> time of delivery


def redis_list_key(queue: str, level: int) -> str:
    """The Redis list of one priority level of a queue (kombu's naming)."""
    return f"{queue}{REDIS_PRIORITY_SEP}{level}" if level else queue


def redis_queue_keys(queue: str) -> list[str]:
    """The Redis lists of one queue, its level 0 (served first) to its last priority level."""
    return [redis_list_key(queue, p) for p in PRIORITY_STEPS]


def queue_depths(settings: Settings) -> dict[str, int]:
    """Messages waiting per queue (delivered but unacknowledged ones are not waiting)."""
    url = settings.broker_url
    if url.startswith(("redis://", "rediss://")):
        import redis

        client = redis.Redis.from_url(url, socket_timeout=5)
        try:
            with client.pipeline(transaction=False) as p:
                keys = [(q, k) for q in ALL_QUEUES for k in redis_queue_keys(q)]
                for _, k in keys:
                    p.llen(k)
                out = {q: 0 for q in ALL_QUEUES}
                for (q, _), n in zip(keys, p.execute()):
                    out[q] += int(n)
                return out
        finally:
            client.close()
    if url.startswith("filesystem://"):
        # kombu names each message file <time>_<uuid>.<queue>.msg: counted without being opened
        folder = Path(url[len("filesystem://"):]) / "queue"
        out = {q: 0 for q in ALL_QUEUES}
        for name in os.listdir(folder) if folder.is_dir() else []:
            q = name.removesuffix(".msg").rsplit(".", 1)[-1]
            if name.endswith(".msg") and q in out:
                out[q] += 1
        return out
    return {}
