"""Completion webhooks, best effort: finalize only enqueues one; the task (workers/tasks/webhook.py) makes
one POST per run, to the address that passed the SSRF check, and Celery retries it with backoff.
Nothing here can fail a job."""

from __future__ import annotations

import logging
import random

import httpx

from app.constants import QUEUE_MAINTENANCE, TASK_WEBHOOK
from app.errors import BadSource, TransientError
from app.settings import Settings
from app.sources import validate_webhook_url
from workers.pinned_http import pinned_stream

log = logging.getLogger("asrq.webhooks")

FIRST_RETRY_S = 5.0  # a receiver that is restarting is usually back within seconds


def enqueue_webhook(url: str, payload: dict) -> None:
    """Queue the delivery; a broker that is down costs the webhook, never the job."""
    from workers.celery_app import app

    try:
        app.send_task(TASK_WEBHOOK, args=[url, payload], queue=QUEUE_MAINTENANCE, routing_key=QUEUE_MAINTENANCE)
    except Exception as e:  # noqa: BLE001 - the job is COMPLETED already; its webhook is best effort
        log.warning("webhook for job=%s not queued: %s", payload.get("job_id"), type(e).__name__)


def post_webhook(url: str, payload: dict, settings: Settings) -> None:
    """One POST. Returns on a 2xx; raises TransientError where a later try may succeed, BadSource where
    none can (a refused URL or address, a 4xx answer)."""
    validate_webhook_url(url, settings, resolve=False)  # again: the row may predate a config change
    try:
        with pinned_stream("POST", url, settings, settings.webhook_timeout_s, json=payload) as resp:
            status = resp.status_code
    except httpx.HTTPError as e:
        raise TransientError(f"webhook not delivered: {type(e).__name__}") from e
    if status < 300:
        return
    if status >= 500 or status in (408, 429):
        raise TransientError(f"webhook receiver answered {status}")
    raise BadSource(f"webhook receiver answered {status}")  # redirects are not followed either


def retry_delay_s(retries: int, settings: Settings, rng: random.Random | None = None) -> float:
    """Capped exponential backoff with jitter: receivers that failed together do not retry together."""
    delay = min(settings.webhook_backoff_max_s, FIRST_RETRY_S * 2.0**retries)
    return delay / 2 + (rng or random).uniform(0, delay / 2)
