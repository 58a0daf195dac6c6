"""Publishing work. Every send happens after the database commit that makes it meaningful; a send that
is lost (crash, broker down) is re-sent by the reconciler from what the database says."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Sequence

from app.constants import QUEUE_FINALIZE, QUEUE_PREPARE, QUEUE_TRANSCRIBE, TASK_FINALIZE, TASK_PREPARE, TASK_TRANSCRIBE

log = logging.getLogger("asrq.dispatch")


def _app():  # noqa: ANN202
    from workers.celery_app import app

    return app


def _send_many(name: str, queue: str, ids: Iterable[uuid.UUID | str], countdown: float | None = None,
               levels: Levels = None) -> int:
    app = _app()
    n = 0
    each = levels if isinstance(levels, Sequence) else None
    # one producer (one connection) for the whole loop: 10,000 sends must not open 10,000 connections
    with app.producer_or_acquire() as producer:
        for i in ids:
            # the broker priority (workers/fair_share.py): 0, served first, unless the sender says otherwise
            level = each[n] if each is not None else (levels or 0)
            app.send_task(name, args=[str(i)], queue=queue, routing_key=queue, countdown=countdown,
                          producer=producer, priority=level)
            n += 1
    return n


#: one broker priority level for every message, or one per message (in the order of the ids)
Levels = int | Sequence[int] | None


def send_prepare(job_ids: Iterable[uuid.UUID | str], levels: Levels = None) -> int:
    return _send_many(TASK_PREPARE, QUEUE_PREPARE, job_ids, levels=levels)


def send_transcribe(chunk_ids: Iterable[uuid.UUID | str], countdown: float | None = None,
                    levels: Levels = None) -> int:
    return _send_many(TASK_TRANSCRIBE, QUEUE_TRANSCRIBE, chunk_ids, countdown, levels)


def send_finalize(job_ids: Iterable[uuid.UUID | str]) -> int:
    return _send_many(TASK_FINALIZE, QUEUE_FINALIZE, job_ids)


def try_send(fn, ids: list) -> None:  # noqa: ANN001
    """Publish after a commit; if the broker is down, the reconciler will send it later."""
    if not ids:
        return
    try:
        fn(ids)
    except Exception as e:  # noqa: BLE001 - any broker failure is recoverable from the database
        log.warning("publish of %d messages via %s failed (%s); the reconciler will re-send", len(ids),
                    fn.__name__, type(e).__name__)
