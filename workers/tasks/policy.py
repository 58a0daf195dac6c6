"""What a task does with an error: permanent ones fail the job at once; transient ones retry with
capped exponential backoff; a task never dies silently and never loops forever."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

from celery import Task
from celery.exceptions import Retry, SoftTimeLimitExceeded
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError, OperationalError

from app.db.session import session_scope
from app.errors import PermanentError, TransientError
from app.lifecycle import fail_job
from app.settings import get_settings

log = logging.getLogger("asrq.tasks")

TRANSIENT = (TransientError, OperationalError, DBAPIError, RedisError, KombuOperationalError, ConnectionError,
             TimeoutError, OSError)


def backoff_s(retries: int) -> float:
    return min(get_settings().retry_backoff_max_s, 2.0 ** retries)


def transient_retry_limit() -> int:
    """How many times a step retries an error that a retry can clear (an outage) before it gives up:
    with the capped backoff, about 23 minutes of outage at the defaults."""
    return get_settings().max_attempts * 4


def run_job_step(task: Task, job_id: str, step: Callable[[uuid.UUID], None], what: str,
                 on_transient: Callable | None = None) -> None:
    jid = uuid.UUID(job_id)
    try:
        step(jid)
    except Retry:
        raise
    except PermanentError as e:
        _fail(jid, str(e))
    except SoftTimeLimitExceeded:
        _fail(jid, f"{what} exceeded its time limit")
    except TRANSIENT as e:
        # retries are counted on the message; a transient error that never clears still ends
        if task.request.retries + 1 >= transient_retry_limit():
            _fail(jid, f"{what} failed: {type(e).__name__} persisted over {task.request.retries + 1} retries")
            return
        log.warning("job=%s %s transient error %s, retry %d", jid, what, type(e).__name__, task.request.retries + 1)
        if on_transient is not None:
            try:
                with session_scope() as s:
                    on_transient(s, jid)
            except TRANSIENT:
                pass  # database down too: the heartbeat goes stale and the reconciler takes over
        kwargs = {**(task.request.kwargs or {}), **getattr(e, "asrq_retry_kwargs", {})}
        raise task.retry(countdown=backoff_s(task.request.retries), max_retries=None, kwargs=kwargs) from e
    except Exception as e:  # noqa: BLE001 - an unknown error is a bug: record it, do not crash the worker
        log.exception("job=%s %s failed unexpectedly", jid, what)
        _fail(jid, f"{what} failed: internal error ({type(e).__name__})")


def _fail(job_id: uuid.UUID, reason: str) -> None:
    try:
        with session_scope() as s:
            fail_job(s, job_id, reason)
    except TRANSIENT:
        # the database is down: the job stays where it is and the reconciler retries the step later
        log.warning("job=%s could not record failure now: %s", job_id, reason)
