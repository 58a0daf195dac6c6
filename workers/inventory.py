"""What the broker holds right now: which jobs and chunks have a message waiting in a queue, and which
have one delivered to a worker but not yet acknowledged.

The reconciler asks this before it re-sends anything, so that it re-sends only what was lost (a Redis
flush, a crash between commit and publish) and never what is merely waiting behind a long backlog.
Read straight from the transport's own structures: kombu's Redis transport keeps each queue as a list
(one per priority step) and delivered, unacknowledged messages in the ``unacked`` hash; its filesystem
transport keeps one file per waiting message.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from app.constants import PRIORITY_STEPS, QUEUE_FINALIZE, QUEUE_PREPARE, QUEUE_TRANSCRIBE
from app.settings import Settings

log = logging.getLogger("asrq.inventory")

QUEUES = (QUEUE_PREPARE, QUEUE_TRANSCRIBE, QUEUE_FINALIZE)
_REDIS_PRIORITY_SEP = "\x06\x16"  # kombu.transport.redis: "<queue><sep><level>" for levels above 0
_REDIS_UNACKED = "unacked"
_REDIS_UNACKED_INDEX = "unacked_index"  # delivery tag -> time of delivery
_PAGE = 2000


@dataclass
class Inventory:
    """(task name, argument) pairs: ``waiting`` in a queue, and ``delivered`` to a worker but not yet
    acknowledged, with the time (epoch seconds) of the latest such delivery."""

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


def redis_queue_keys(queue: str) -> list[str]:
    """The Redis lists of one queue, its level 0 (served first) to its last priority level."""
    return [queue] + [f"{queue}{_REDIS_PRIORITY_SEP}{p}" for p in PRIORITY_STEPS if p]


def read_inventory(settings: Settings) -> Inventory | None:
    """The broker's messages, or None for a transport this cannot read (then the reconciler falls back to
    re-sending what has been still for a stale period)."""
    url = settings.broker_url
    if url.startswith(("redis://", "rediss://")):
        return _redis_inventory(url)
    if url.startswith("filesystem://"):
        return _filesystem_inventory(url[len("filesystem://"):])
    return None


def _redis_inventory(url: str) -> Inventory:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=30)
    try:
        inv = Inventory()
        for queue in QUEUES:
            for key in redis_queue_keys(queue):
                inv.waiting.update(_parse_all(_lrange_all(client, key)))
        since = dict(client.zscan_iter(_REDIS_UNACKED_INDEX, count=_PAGE))
        for tag, raw in client.hscan_iter(_REDIS_UNACKED, count=_PAGE):
            for key in _parse_all([json.loads(raw)[0]], raw=True):
                inv.delivered[key] = max(inv.delivered.get(key, 0.0), float(since.get(tag, 0.0)))
        return inv
    finally:
        client.close()


def _lrange_all(client, key: str) -> Iterator[bytes]:  # noqa: ANN001
    start = 0
    while True:
        page = client.lrange(key, start, start + _PAGE - 1)
        yield from page
        if len(page) < _PAGE:
            return
        start += _PAGE


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
