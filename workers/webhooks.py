"""Job-end webhooks, the network side: one signed POST per try (the rows, secrets and schedule are
app/webhooks.py). A receiver's answer decides the next step: 2xx delivered, 5xx/408/429 or no answer
retried later, any other answer (or a refused address) failed for good."""

from __future__ import annotations

import logging
import time
import uuid

import httpx
from sqlalchemy.orm import Session

from app.db.models import utcnow
from app.errors import BadSource, PermanentError, TransientError
from app.settings import Settings
from app.sources import validate_webhook_url
from app.webhooks import TryResult, record_try, take_try
from workers.pinned_http import pinned_stream

log = logging.getLogger("asrq.webhooks")


def post_webhook(url: str, body: bytes, headers: dict[str, str], settings: Settings) -> int:
    """One POST. Returns the status of a 2xx; raises TransientError where a later try may succeed,
    BadSource where none can (a refused URL or address, a 4xx answer)."""
    validate_webhook_url(url, settings, resolve=False)  # again: the row may predate a config change
    try:
        with pinned_stream("POST", url, settings, settings.webhook_timeout_s, content=body, headers=headers) as resp:
            status = resp.status_code
    except httpx.HTTPError as e:
        raise TransientError(f"webhook not delivered: {type(e).__name__}") from e
    if 200 <= status < 300:
        return status
    if status >= 500 or status in (408, 429):
        raise _Answered(status, f"webhook receiver answered {status}")
    raise _Refused(status, f"webhook receiver answered {status}")  # redirects are not followed either


class _Answered(TransientError):
    def __init__(self, status: int, msg: str) -> None:
        super().__init__(msg)
        self.status = status


class _Refused(BadSource):
    def __init__(self, status: int, msg: str) -> None:
        super().__init__(msg)
        self.status = status


def deliver(session: Session, delivery_id: uuid.UUID, n: int, settings: Settings) -> TryResult | None:
    """Try ``n`` of a delivery; None when that try was taken already (a duplicate message) or the
    delivery is over. Never raises for the receiver's sake."""
    now = utcnow()
    taken = take_try(session, delivery_id, n, settings)
    if taken is None:
        return None
    url, body, headers = taken
    t0 = time.monotonic()
    status: int | None = None
    try:
        status = post_webhook(url, body, headers, settings)
        result = TryResult("delivered", status, None)
    except TransientError as e:
        status = getattr(e, "status", None)
        result = TryResult("retrying" if n < settings.webhook_max_tries else "failed", status, str(e))
    except PermanentError as e:
        status = getattr(e, "status", None)
        result = TryResult("failed", status, str(e))
    except Exception as e:  # noqa: BLE001 - a bug here must cost one try, not the worker
        log.exception("webhook delivery=%s try %d failed unexpectedly", delivery_id, n)
        result = TryResult("retrying" if n < settings.webhook_max_tries else "failed", None, type(e).__name__)
    record_try(session, delivery_id, n, result, now, time.monotonic() - t0, settings)
    return result
