"""What the broker carries and what was published: the messages in Redis now (by queue, and by the job or
chunk they carry), Celery's task-sent events, and the reconciler's re-sends from its log lines."""

from __future__ import annotations

import ast
import contextlib
import json
import re
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

from app.messaging import redis_queue_keys

RESENT_RE = re.compile(r"reconcile re-sent (\{[^}]*\})")
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@contextlib.contextmanager
def publisher_app():
    """app.messaging.send_* on this campaign's broker. The publisher is made on first use from the settings
    of that moment; under pytest another module may have made one for another broker first."""
    from app import messaging
    from app.settings import get_settings

    old = messaging.use(None)
    if old is not None and old.conf.broker_url == get_settings().broker_url:
        messaging.use(old)
    try:
        yield messaging.publisher()
    finally:
        made = messaging.use(old)
        if made is not old and made is not None:
            made.close()


class PublishWatcher(threading.Thread):
    """Celery's task-sent events (task_send_sent_event is on): every publish, by task and argument.
    Events published while Redis is down are not seen; the reconciler's log lines count those."""

    def __init__(self, app) -> None:  # noqa: ANN001
        super().__init__(daemon=True)
        self.app = app
        self.events: list[tuple[float, str, str, str]] = []  # (time, task, arg, sender)
        self.active = True
        self.errors = 0

    def _on(self, ev: dict) -> None:
        if not self.active:
            return
        m = UUID_RE.search(str(ev.get("args", "")))
        if m:
            self.events.append((time.time(), ev.get("name", "?"), m.group(0), ev.get("hostname", "?")))


    def run(self) -> None:
        while self.active:
            try:
                with self.app.connection_for_read() as conn:
                    recv = self.app.events.Receiver(conn, handlers={"task-sent": self._on})
                    recv.capture(limit=None, timeout=None, wakeup=False)
            except Exception:  # noqa: BLE001 - Redis restarting: reconnect
                self.errors += 1
                time.sleep(0.5)


def _message_target(item: bytes, short: bool = False) -> tuple[str, str] | None:
    """(task name, or its last part if short; the job or chunk id it carries) of a message in a queue or in
    the unacked hash."""
    with contextlib.suppress(ValueError, TypeError, AttributeError, KeyError):
        doc = json.loads(item)
        msg = doc[0] if isinstance(doc, list) else doc  # unacked holds [message, exchange, routing_key]
        headers = msg.get("headers") or {}
        m = UUID_RE.search(str(headers.get("argsrepr", "")))
        if m:
            task = headers.get("task", "?")
            return (task.split(".")[-1] if short else task), m.group(0)
    return None


def queue_depths(redis_port: int) -> dict[str, int]:
    """Messages in Redis now: each queue's list (with kombu's priority sub-lists) and the unacked hash."""
    import redis

    from app.constants import ALL_QUEUES

    r = redis.Redis(port=redis_port)
    out = {}
    for q in ALL_QUEUES:
        out[q] = sum(r.llen(k) for k in redis_queue_keys(q))
    out["unacked"] = r.hlen("unacked")
    return out


RESENT_TASKS = ("asrq.prepare", "asrq.transcribe", "asrq.finalize")  # what the reconciler re-sends


def _all_messages(redis_port: int) -> tuple[list[bytes], dict[str, int]]:
    import redis

    from app.constants import ALL_QUEUES

    r = redis.Redis(port=redis_port)
    raw, depths = [], {}
    for q in ALL_QUEUES:
        depths[q] = 0
        for k in redis_queue_keys(q):
            items = r.lrange(k, 0, -1)
            raw += items
            depths[q] += len(items)
    unacked = r.hvals("unacked")
    depths["unacked"] = len(unacked)
    return raw + unacked, depths


def targets_of(raw: list[bytes]) -> set[tuple[str, str]]:
    """The distinct (task, job or chunk id) of the reconciler's kinds that messages carry: what losing them
    needs re-sent, a message and its duplicates counted once (maintenance messages are never re-sent)."""
    return {got for item in raw if (got := _message_target(item)) and got[0] in RESENT_TASKS}


def lost_targets(redis_port: int) -> set[tuple[str, str]]:
    """The distinct targets the messages in Redis carry now (see targets_of)."""
    return targets_of(_all_messages(redis_port)[0])


def read_and_flush(redis_port: int) -> tuple[dict[str, int], set[tuple[str, str]]]:
    """FLUSHALL, and what it lost: the depth of every queue and of ``unacked``, and their distinct targets,
    read in the same MULTI/EXEC as the flush, so that no message is published in between and missed."""
    import redis

    from app.constants import ALL_QUEUES

    r = redis.Redis(port=redis_port)
    keys = [(q, k) for q in ALL_QUEUES for k in redis_queue_keys(q)]
    pipe = r.pipeline(transaction=True)
    for _, k in keys:
        pipe.lrange(k, 0, -1)
    pipe.hvals("unacked")
    pipe.flushall()
    out = pipe.execute()
    depths: Counter = Counter()
    for (q, _), items in zip(keys, out):
        depths[q] += len(items)
    depths["unacked"] = len(out[len(keys)])
    raw = [m for items in out[: len(keys) + 1] for m in items]
    return dict(depths), targets_of(raw)


def broker_messages(redis_port: int) -> dict[str, list[str]]:
    """Where each job's or chunk's messages are in Redis now: waiting in a queue, or delivered to a worker
    and not acknowledged (kombu's ``unacked`` hash, with how long ago)."""
    import redis

    from app.constants import ALL_QUEUES

    r = redis.Redis(port=redis_port)
    out: dict[str, list[str]] = defaultdict(list)
    for q in ALL_QUEUES:
        for k in redis_queue_keys(q):
            for item in r.lrange(k, 0, -1):
                if (got := _message_target(item, short=True)):
                    out[got[1]].append(f"{got[0]} waiting in {q}")
    since = {k.decode(): v for k, v in r.zrange("unacked_index", 0, -1, withscores=True)}
    for tag, item in r.hscan_iter("unacked"):
        if (got := _message_target(item, short=True)):
            age = time.time() - since.get(tag.decode(), time.time())
            out[got[1]].append(f"{got[0]} delivered, unacked for {age:.0f} s")
    return out


def per_target_duplicates(watcher: PublishWatcher, lost: set[tuple[str, str]]) -> int:
    """Publishes of each job's prepare/finalize and each chunk beyond its first, less one for each target
    whose message a flush lost (its one needed re-send)."""
    per_target: Counter = Counter((task, arg) for _, task, arg, _ in watcher.events if task in RESENT_TASKS)
    return sum(max(0, n - 1 - ((task, arg) in lost)) for (task, arg), n in per_target.items())


RECONCILE_DONE_RE = re.compile(rb"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}): \w+/[^\]]*\] "
                               rb"Task asrq\.reconcile\[[0-9a-f-]+\] succeeded in ([0-9.]+)s")


def reconcile_starts(logs: list[Path]) -> list[float]:
    """When each reconcile pass started (its end, less its run time), from the worker logs' 'Task
    asrq.reconcile[...] succeeded in Xs' lines: the logs, unlike Celery's events, miss none across a Redis
    restart. Worker log times are local."""
    out = []
    for log in logs:
        with contextlib.suppress(OSError):
            for m in RECONCILE_DONE_RE.finditer(log.read_bytes()):
                end = time.mktime(time.strptime(m.group(1).decode(), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000
                out.append(end - float(m.group(3)))
    return sorted(out)


def reconcile_resends(logs: list[Path], offsets: dict[Path, int] | None = None,
                      until: dict[Path, int] | None = None) -> Counter:
    """The reconciler's re-sends by task, from its 'reconcile re-sent {...}' log lines (from offsets, up to until)."""
    total: Counter = Counter()
    for log in logs:
        try:
            with open(log, "rb") as f:
                f.seek((offsets or {}).get(log, 0))
                end = (until or {}).get(log)
                data = f.read() if end is None else f.read(max(0, end - f.tell()))
        except OSError:
            continue
        for m in RESENT_RE.finditer(data.decode(errors="replace")):
            with contextlib.suppress(ValueError, SyntaxError):
                total.update({k: int(v) for k, v in ast.literal_eval(m.group(1)).items()})
    return total
