"""webhook tasks, on a queue and a thread pool of their own (workers/launcher.py), so a slow receiver never
holds the workers that prepare and finalize jobs, nor delays a reconcile pass: the beat's sweep sends the
deliveries that are due, and each delivery task makes one signed POST and schedules the next try
(workers/webhooks.py, app/webhooks.py). Neither raises: the rows carry every retry."""

from __future__ import annotations

import logging
import uuid

from app.constants import QUEUE_WEBHOOK, TASK_WEBHOOK, TASK_WEBHOOK_SWEEP
from app.db.session import session_scope
from app.messaging import send_webhook_tries as send_deliveries
from app.settings import get_settings
from app.webhooks import dispatch_due
from workers.celery_app import app
from workers.inventory import oldest_waiting
from workers.webhooks import deliver

log = logging.getLogger("asrq.webhooks")


@app.task(name=TASK_WEBHOOK, ignore_result=True)
def webhook(delivery_id: str, n: int) -> str | None:
    try:
        with session_scope() as s:
            result = deliver(s, uuid.UUID(str(delivery_id)), int(n), get_settings())
        return result.outcome if result else None
    except Exception as e:  # noqa: BLE001 - the row comes due again after its claim period
        log.warning("webhook delivery=%s try %s not made: %s", delivery_id, n, type(e).__name__)
        return None


@app.task(name=TASK_WEBHOOK_SWEEP, ignore_result=True)
def webhook_sweep() -> int:
    try:
        with session_scope() as s:
            settings = get_settings()
            # a try still waiting behind a backlog is not sent again (app/webhooks.py)
            due = dispatch_due(s, settings, waiting_since=oldest_waiting(settings, QUEUE_WEBHOOK))
        send_deliveries(due)
        return len(due)
    except Exception as e:  # noqa: BLE001 - the next beat tries again
        log.warning("webhook sweep skipped: %s", type(e).__name__)
        return 0
