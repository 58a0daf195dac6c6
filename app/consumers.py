"""Who consumes each queue. A queue that no worker consumes keeps its messages forever without an error
anywhere: a worker started with a command line from before a queue existed (``--queues
prepare,finalize,maintenance``, from before ``reconcile`` and ``webhook`` had queues of their own) would
leave the reconciler and every webhook waiting. So each worker process says, every
``settings.consumer_beat_s``, which queues it consumes (workers/signals.py), and /metrics shows
``asrq_queue_consumers`` per queue (app/metrics.py): 0 is a queue nothing takes messages from.

In Redis, beside the broker's lists: one sorted set per queue, the worker's name scored by when it last
said so; a worker silent for three beats counts as gone (it died without its farewell).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from app.constants import ALL_QUEUES, CONSUMERS_PREFIX
from app.sent_index import is_redis, redis_client
from app.settings import Settings

BEATS_TO_GONE = 3


def consumers_key(queue: str) -> str:
    return CONSUMERS_PREFIX + queue


def say_consuming(settings: Settings, worker: str, queues: Iterable[str], now: float | None = None) -> None:
    if not is_redis(settings.broker_url):
        return
    now = time.time() if now is None else now
    with redis_client(settings.broker_url).pipeline(transaction=False) as p:
        for q in queues:
            p.zadd(consumers_key(q), {worker: now})
            # the set forgets workers gone for good: nothing else ever removes a crashed one's name
            p.zremrangebyscore(consumers_key(q), "-inf", now - 100 * settings.consumer_beat_s)
        p.execute()


def say_gone(settings: Settings, worker: str, queues: Iterable[str]) -> None:
    if not is_redis(settings.broker_url):
        return
    with redis_client(settings.broker_url).pipeline(transaction=False) as p:
        for q in queues:
            p.zrem(consumers_key(q), worker)
        p.execute()


def consumer_counts(settings: Settings, now: float | None = None) -> dict[str, int]:
    """Workers consuming each queue now (heard from within three beats); empty where the broker is not
    Redis (the one-shot's embedded broker: its one worker consumes every queue)."""
    if not is_redis(settings.broker_url):
        return {}
    now = time.time() if now is None else now
    since = now - BEATS_TO_GONE * settings.consumer_beat_s
    with redis_client(settings.broker_url).pipeline(transaction=False) as p:
        for q in ALL_QUEUES:
            p.zcount(consumers_key(q), since, "+inf")
        return {q: int(n) for q, n in zip(ALL_QUEUES, p.execute())}
