"""Best-effort completion webhooks: a few tries, short timeouts, the same SSRF rules as sources."""

from __future__ import annotations

import logging
import time
from urllib.parse import urlparse

import httpx

from app.errors import BadSource
from app.settings import Settings
from app.sources import check_public_host

log = logging.getLogger("asrq.webhooks")


def notify(url: str, payload: dict, settings: Settings, tries: int = 3) -> bool:
    parsed = urlparse(url)
    try:
        check_public_host(parsed.hostname or "", parsed.port or 443, settings)
    except BadSource as e:
        log.warning("webhook for job=%s refused: %s", payload.get("job_id"), e)
        return False
    for attempt in range(tries):
        try:
            resp = httpx.post(url, json=payload, timeout=settings.webhook_timeout_s, follow_redirects=False)
            if resp.status_code < 300:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(min(8.0, 0.5 * 2**attempt))
    log.warning("webhook for job=%s not delivered after %d tries", payload.get("job_id"), tries)
    return False
