"""What the broker holds of the items the reconciler suspects: which have a message waiting in a queue,
and which had one handed to a worker lately.

The reconciler asks this before it re-sends anything, so that it re-sends only what was lost (a Redis
flush, a crash between commit and publish, a worker that died holding a message) and never what is merely
waiting behind a long backlog. Its cost follows the number of suspects, never the backlog:

* Redis: each message of ours has a field in the sent index (app/sent_index.py: its publish time, the end
  of its countdown, its priority list). Kombu's lists are first in, first out, so a message published
  well before the oldest one still waiting in its list has left that list (handed to a worker); one
  published after it is still waiting. So a pass reads one field per suspect and the oldest message of
  each list, whatever the queues hold. A suspect without a field has no message (a flush took both, or
  its publish never happened); a handed-over message counts while it may still be about to run: handed
  over lately, or held for a countdown that is still within the retry backoff.
* The filesystem transport (the embedded default): one file per waiting message, read whole.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from app.constants import (
    PRIORITY_STEPS,
    QUEUE_FINALIZE,
    QUEUE_PREPARE,
    QUEUE_TRANSCRIBE,
    SENT_HEADER,
)
from app.messaging import redis_list_key
from app.sent_index import TRACKED, parse_sent_mark, sent_index_key
from app.settings import Settings

log = logging.getLogger("asrq.inventory")

QUEUES = (QUEUE_PREPARE, QUEUE_TRANSCRIBE, QUEUE_FINALIZE)
_PAGE = 2000

#: (task name, item ids) the reconciler suspects
Asked = dict[str, list]


@dataclass
class Inventory:
    """(task name, argument) pairs: ``waiting`` in a queue (or due to be: a promised publish, a countdown
    a worker holds), and ``delivered`` to a worker but not yet taken, with the (latest possible) time of
    that delivery."""

    waiting: set[tuple[str, str]] = field(default_factory=set)
    delivered: dict[tuple[str, str], float] = field(default_factory=dict)

    def has_waiting(self, task: str, arg: object) -> bool:
        return (task, str(arg)) in self.waiting

    def has_pending(self, task: str, arg: object, delivered_since: float) -> bool:
        """Waiting, or handed to a worker since ``delivered_since``. A worker takes what it is handed
        at once; one handed it earlier and still has not is busy for long, or dead: its copy does not
        count (a duplicate is a no-op against the lease of whoever takes the work first)."""
        key = (task, str(arg))
        return key in self.waiting or self.delivered.get(key, 0.0) >= delivered_since


def read_inventory(settings: Settings, asked: Asked, since: float, now: float | None = None) -> Inventory | None:
    """What the broker holds for the ``asked`` items, or None for a transport this cannot read (then the
    reconciler falls back to re-sending what has been still for a stale period). ``since``: the start of
    the stale period (epoch seconds)."""
    url = settings.broker_url
    if url.startswith(("redis://", "rediss://")):
        import redis

        client = redis.Redis.from_url(url, socket_timeout=30)
        try:
            return redis_inventory(client, asked, since, now or time.time(), settings)
        finally:
            client.close()
    if url.startswith("filesystem://"):
        return _filesystem_inventory(url[len("filesystem://"):])
    return None


def redis_inventory(client, asked: Asked, since: float, now: float, settings: Settings) -> Inventory:  # noqa: ANN001
    # publishers' clocks and concurrent publishes blur the order of publish times by up to this much
    margin_s = settings.reconcile_stale_s
    # a countdown held by a worker counts up to the longest retry backoff (a longer one is not ours)
    eta_cap_s = settings.retry_backoff_max_s
    inv = Inventory()
    oldest_of = _oldest_waiting(client, {TRACKED[t] for t in asked if t in TRACKED})
    for task, ids in asked.items():
        if task not in TRACKED or not ids:
            continue
        lists = oldest_of[TRACKED[task]]
        every_list = min(lists.values())
        keys = [str(i) for i in ids]
        for item, raw in zip(keys, _hmget(client, sent_index_key(task), keys)):
            mark = parse_sent_mark(raw)
            if mark is None:
                continue  # no message: lost, or never published
            key = (task, item)
            if mark.promised:
                if mark.due >= now:
                    inv.waiting.add(key)  # its publish is still on its way
                continue
            oldest = lists.get(mark.level, every_list) if mark.level >= 0 else every_list
            still_listed = mark.sent >= oldest - margin_s
            held_countdown = mark.due > mark.sent and min(mark.due, mark.sent + eta_cap_s) >= since
            if still_listed or held_countdown:
                inv.waiting.add(key)
            else:
                inv.delivered[key] = mark.sent  # handed over no earlier than it was published
    return inv


def _hmget(client, key: str, fields: list[str]) -> Iterator:  # noqa: ANN001
    with client.pipeline(transaction=False) as p:
        for n in range(0, len(fields), _PAGE):
            p.hmget(key, fields[n:n + _PAGE])
        for page in p.execute():
            yield from page


def oldest_waiting(settings: Settings, queue: str) -> float | None:
    """The publish time of the oldest message still waiting on ``queue``, over its priority lists: +inf
    when it is empty, -inf when that message does not say; None where the broker cannot be read so."""
    if not settings.broker_url.startswith(("redis://", "rediss://")):
        return None
    import redis

    client = redis.Redis.from_url(settings.broker_url, socket_timeout=10)
    try:
        return min(_oldest_waiting(client, {queue})[queue].values())
    finally:
        client.close()


def _oldest_waiting(client, queues: Iterable[str]) -> dict[str, dict[int, float]]:  # noqa: ANN001
    """Per queue and priority level, the publish time of the oldest message still waiting (the list's tail):
    +inf for an empty list (nothing waits), -inf for a message that does not say (sent before the sent
    index existed: then nothing is taken to have left that list)."""
    keys = [(q, p) for q in sorted(queues) for p in PRIORITY_STEPS]
    with client.pipeline(transaction=False) as pipe:
        for q, p in keys:
            pipe.lindex(redis_list_key(q, p), -1)
        tails = pipe.execute()
    out: dict[str, dict[int, float]] = {q: {} for q in queues}
    for (q, p), raw in zip(keys, tails):
        if raw is None:
            out[q][p] = math.inf
            continue
        try:
            out[q][p] = float(json.loads(raw)["headers"][SENT_HEADER])
        except (ValueError, KeyError, TypeError):
            out[q][p] = -math.inf
    return out


def _filesystem_inventory(folder: str) -> Inventory:
    inbox = os.path.join(folder, "queue")
    inv = Inventory()
    try:
        names = os.listdir(inbox)
    except FileNotFoundError:
        return inv

    def payloads() -> Iterator[bytes]:
        for name in names:
            try:
                with open(os.path.join(inbox, name), "rb") as f:
                    yield f.read()
            except OSError:
                continue  # taken by a worker meanwhile

    inv.waiting.update(_parse_all(payloads()))
    return inv


def _parse_all(items: Iterable, raw: bool = False) -> Iterator[tuple[str, str]]:
    for item in items:
        try:
            parsed = task_and_arg(item if raw else json.loads(item))
        except (ValueError, KeyError, TypeError, IndexError):
            parsed = None  # not one of ours, or not a Celery message: ignore it
        if parsed:
            yield parsed


def task_and_arg(message: dict) -> tuple[str, str] | None:
    """(task name, first argument) of a Celery protocol-2 message as kombu stores it."""
    task = (message.get("headers") or {}).get("task")
    if not task:
        return None
    body = message["body"]
    if (message.get("properties") or {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    args = json.loads(body)[0]
    return (task, str(args[0])) if args else None
