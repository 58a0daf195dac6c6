"""The index of sent messages: which prepare, transcribe and finalize messages are on the broker, kept in
Redis beside them, so the reconciler asks about the few items it suspects instead of reading every queue
(workers/inventory.py). Publishing writes the marks (app/messaging.py); workers drop them once they
handled a message (workers/signals.py); the reconciler's sweep prunes what is left of finished items.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from celery.signals import after_task_publish, before_task_publish

from app.constants import (
    QUEUE_FINALIZE,
    QUEUE_PREPARE,
    QUEUE_TRANSCRIBE,
    SENT_HEADER,
    SENT_INDEX_PREFIX,
    TASK_FINALIZE,
    TASK_PREPARE,
    TASK_TRANSCRIBE,
    TASK_WEBHOOK,
)
from app.settings import get_settings

log = logging.getLogger("asrq.dispatch")

#: the tasks whose messages the sent index follows, and their queues
TRACKED = {TASK_PREPARE: QUEUE_PREPARE, TASK_TRANSCRIBE: QUEUE_TRANSCRIBE, TASK_FINALIZE: QUEUE_FINALIZE}

def is_redis(url: str) -> bool:
    return url.startswith(("redis://", "rediss://"))


_clients: dict[tuple[int, str], object] = {}
_clients_lock = threading.Lock()


def redis_client(url: str):  # noqa: ANN202
    """One Redis client (a connection pool) per process and broker URL."""
    import redis

    key = (os.getpid(), url)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = redis.Redis.from_url(url, socket_timeout=30, socket_keepalive=True)
        return client


# --- the index of sent messages -------------------------------------------------------------------------
#
# Redis holds, beside each prepare, transcribe and finalize message, one field of the hash
# "asrq:sent:<task>" named by the job or chunk id: "<sent> <due> <level>" once published (the publish time,
# the end of its countdown, and its priority list; -1 when not known), or "due <until>" while its publish is
# promised and not yet made. The reconciler reads the fields of the few items it suspects, not the queues
# (workers/inventory.py). A field is written after its message, so a crash between the two leaves a
# message without a field (at worst one duplicate), never a field without a message; a promise expires.


@dataclass(frozen=True)
class SentMark:
    sent: float  # for a promise: when it was made
    due: float  # when the message can run (its countdown's end); for a promise: until when it holds
    level: int  # its priority list; -1: not known
    promised: bool = False


def sent_index_key(task: str) -> str:
    return SENT_INDEX_PREFIX + task


def sent_mark(sent: float, due: float, level: int) -> str:
    return f"{sent:.3f} {due:.3f} {level}"


def parse_sent_mark(raw: bytes | str | None) -> SentMark | None:
    if raw is None:
        return None
    try:
        a, b, *rest = (raw.decode() if isinstance(raw, bytes) else raw).split()
        if a == "due":
            return SentMark(float(rest[0]) if rest else float(b), float(b), -1, promised=True)
        return SentMark(float(a), float(b), int(rest[0]) if rest else -1)
    except (ValueError, IndexError):
        return None


def promise_sent(task: str, ids: Iterable[uuid.UUID | str], within_s: float | None = None) -> None:
    """Before answering with work that is published only after the answer: each id's message counts as
    on its way for ``within_s`` (settings.publish_promise_s), so the reconciler does not send it meanwhile.
    Raises if the broker cannot be reached (then nothing was promised, and nothing will be missed: the
    reconciler sends what is not published, as before)."""
    settings = get_settings()
    if not is_redis(settings.broker_url):
        return
    now = time.time()
    mark = f"due {now + (within_s or settings.publish_promise_s):.3f} {now:.3f}"
    ids = [str(i) for i in ids]
    with redis_client(settings.broker_url).pipeline(transaction=False) as p:
        for n in range(0, len(ids), 5000):
            p.hset(sent_index_key(task), mapping={i: mark for i in ids[n:n + 5000]})
        p.execute()


def try_promise(task: str, ids: list) -> None:
    try:
        promise_sent(task, ids)
    except Exception as e:  # noqa: BLE001 - without the promise the reconciler may send a duplicate, no more
        log.warning("publish of %d messages not promised (%s)", len(ids), type(e).__name__)


@before_task_publish.connect(weak=False)
def _stamp(sender: str | None = None, headers: dict | None = None, **_: object) -> None:
    """Every message of ours carries its publish time (the reconciler, and the webhook sweep, compare it with
    the oldest waiting)."""
    if (sender in TRACKED or sender == TASK_WEBHOOK) and headers is not None:
        headers.setdefault(SENT_HEADER, time.time())


@after_task_publish.connect(weak=False)
def _index_one(sender: str | None = None, headers: dict | None = None, body: object = None,
               **_: object) -> None:
    """A message sent through Celery itself (a task's retry) enters the sent index too."""
    url = get_settings().broker_url
    if sender not in TRACKED or not is_redis(url):
        return
    try:
        item = str(body[0][0])  # type: ignore[index]
        sent = float((headers or {}).get(SENT_HEADER) or time.time())
        due = sent
        if eta := (headers or {}).get("eta"):
            due = max(sent, datetime.fromisoformat(eta).timestamp())
        redis_client(url).hset(sent_index_key(sender), item, sent_mark(sent, due, -1))
    except Exception as e:  # noqa: BLE001 - without its field the message may get one duplicate, no more
        log.warning("%s message not indexed (%s)", sender, type(e).__name__)


# a field goes only if it still says what the caller saw: a message published meanwhile keeps its own. A
# mark holds its time to the millisecond (rounded), so one within a millisecond of the start stays, for
# the reconciler's sweep: kept when unsure, a field costs a look; dropped, a retry's would go unguarded
_FORGET_HANDLED = """
local n = 0
for i = 2, #ARGV do
  local v = redis.call('HGET', KEYS[1], ARGV[i])
  local sent = v and tonumber(string.match(v, '^(%S+) '))
  if sent and sent + 0.001 <= tonumber(ARGV[1]) then
    redis.call('HDEL', KEYS[1], ARGV[i])
    n = n + 1
  end
end
return n
"""
_FORGET_SEEN = """
local n = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HDEL', KEYS[1], ARGV[i])
    n = n + 1
  end
end
return n
"""


def forget_handled(task: str, ids: Iterable[uuid.UUID | str], started: float) -> int:
    """A worker handled these items' messages (whatever came of it), having started at ``started``: their
    fields go, unless a message was published for them since (a retry, a re-send). A job that still needs
    a message is then found without one, and sent again after the stale period."""
    ids = [str(i) for i in ids]
    url = get_settings().broker_url
    if not ids or not is_redis(url):
        return 0
    return int(redis_client(url).eval(_FORGET_HANDLED, 1, sent_index_key(task), repr(started), *ids))


def forget_seen(task: str, fields: dict[str, bytes]) -> int:
    """Drop these fields if each still holds the value seen (the reconciler's sweep of finished items)."""
    url = get_settings().broker_url
    if not fields or not is_redis(url):
        return 0
    flat = [x for kv in fields.items() for x in kv]
    return int(redis_client(url).eval(_FORGET_SEEN, 1, sent_index_key(task), *flat))
