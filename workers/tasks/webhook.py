"""webhook: one completion POST per run, on the maintenance queue so a slow receiver never holds the
workers that prepare and finalize jobs. Retried by Celery a bounded number of times; never raises."""

from __future__ import annotations

import logging

from app.constants import TASK_WEBHOOK
from app.errors import PermanentError, TransientError
from app.settings import get_settings
from workers.celery_app import app
from workers.webhooks import post_webhook, retry_delay_s

log = logging.getLogger("asrq.webhooks")


@app.task(name=TASK_WEBHOOK, bind=True)
def webhook(self, url: str, payload: dict) -> bool:  # noqa: ANN001
    settings = get_settings()
    job, tries = payload.get("job_id"), self.request.retries + 1
    try:
        post_webhook(url, payload, settings)
        return True
    except TransientError as e:
        if tries >= settings.webhook_max_tries:
            log.warning("webhook for job=%s not delivered after %d tries: %s", job, tries, e)
            return False
        log.info("webhook for job=%s try %d failed (%s); retrying", job, tries, e)
        raise self.retry(countdown=retry_delay_s(self.request.retries, settings), max_retries=None) from e
    except PermanentError as e:
        log.warning("webhook for job=%s refused: %s", job, e)
        return False
    except Exception:  # noqa: BLE001 - a bug here must cost one webhook, not the worker
        log.exception("webhook for job=%s failed unexpectedly", job)
        return False
