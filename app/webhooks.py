"""Job-end webhooks, the database side: durable and signed (Standard Webhooks: webhook-id,
webhook-timestamp, webhook-signature = "v1," + base64 HMAC-SHA256 of "id.timestamp.body" with the
tenant's secret).

The transaction that moves a job to COMPLETED, FAILED or CANCELLED also writes its delivery row
(app/lifecycle.py, ``note_job_end``), so neither a broker that is down nor a worker that dies can lose it.
The beat's sweep (``dispatch_due``) sends a message for each row that is due, pushing the row's next
try out by a claim period first, so a lost message or a killed worker only delays it; the task
(workers/tasks/webhook.py, workers/webhooks.py) takes one try (``take_try``, fenced by the try number),
makes one POST, and records it here (``record_try``), scheduling the next try with backoff and jitter.
A POST happens only on the webhook queue, in a pool of its own: never inside prepare, finalize or the
reconciler.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import math
import random
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import metrics
from app.db.models import JobState, WebhookDelivery, WebhookSecret, WebhookState, utcnow
from app.settings import Settings

log = logging.getLogger("asrq.webhooks")

SECRET_PREFIX = "whsec_"
EVENTS = {JobState.COMPLETED: "job.completed", JobState.FAILED: "job.failed", JobState.CANCELLED: "job.cancelled"}


# ---- secrets and signatures ---------------------------------------------------------------------------------


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def tenant_secret(session: Session, tenant: str) -> str:
    """The tenant's signing secret, made on first use (committed): every delivery is signed."""
    row = session.get(WebhookSecret, tenant)
    if row is not None:
        return row.secret
    try:
        session.execute(insert(WebhookSecret), [{"tenant": tenant, "secret": new_secret(), "created_at": utcnow()}])
        session.commit()
    except IntegrityError:  # made by a concurrent delivery meanwhile
        session.rollback()
    return session.scalars(select(WebhookSecret.secret).where(WebhookSecret.tenant == tenant)).one()


def rotate_secret(session: Session, tenant: str) -> str:
    secret = new_secret()
    if session.get(WebhookSecret, tenant) is None:
        session.execute(insert(WebhookSecret), [{"tenant": tenant, "secret": secret, "created_at": utcnow()}])
    else:
        session.execute(update(WebhookSecret).where(WebhookSecret.tenant == tenant)
                        .values(secret=secret, created_at=utcnow()))
    session.commit()
    return secret


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def signed_headers(secret: str, msg_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    ts = int(time.time()) if timestamp is None else timestamp
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": sign(secret, msg_id, ts, body),
            "content-type": "application/json"}


# ---- sending the due ones -----------------------------------------------------------------------------------


def claim_s(settings: Settings) -> float:
    """How long a sent try holds its row: longer than a try can take (the task's hard time limit), so a
    row comes due again only when its message or its worker was lost."""
    return 120 + 4 * settings.webhook_timeout_s


def dispatch_due(session: Session, settings: Settings, job_id: uuid.UUID | None = None,
                 waiting_since: float | None = None) -> list[tuple[str, int]]:
    """Rows due now (of one job, or the oldest ``webhook_sweep_batch``), each pushed out by a claim period
    in this transaction; returns (delivery id, try number) for the caller to send once it commits.

    ``waiting_since``: the publish time of the oldest message still waiting on the webhook queue (epoch
    seconds; +inf when none waits). The queue is first in, first out, so a row sent after that message
    (its claim began then) still has its own message waiting, however long a backlog of tries to slow
    receivers makes it wait: such a row is not sent again when its claim runs out. Rows are sent again
    only once their message has left the queue and its try never came."""
    now = utcnow()
    until = now
    if waiting_since is not None and waiting_since != math.inf:
        # publishers' clocks blur publish times by up to the reconciler's margin (workers/inventory.py)
        sent_before = waiting_since - settings.reconcile_stale_s + claim_s(settings)
        until = min(now, datetime.fromtimestamp(max(sent_before, 0.0), timezone.utc))
    q = (select(WebhookDelivery.id, WebhookDelivery.attempts)
         .where(WebhookDelivery.state == WebhookState.PENDING, WebhookDelivery.next_attempt_at <= until)
         .order_by(WebhookDelivery.next_attempt_at).limit(settings.webhook_sweep_batch))
    if job_id is not None:
        q = q.where(WebhookDelivery.job_id == job_id)
    if session.get_bind().dialect.name == "postgresql":
        # two beats (a second one started by mistake) or a finalize's kick take disjoint rows
        q = q.with_for_update(skip_locked=True)
    rows = session.execute(q).all()
    if rows:
        session.execute(update(WebhookDelivery).where(WebhookDelivery.id.in_([r.id for r in rows]))
                        .values(next_attempt_at=now + timedelta(seconds=claim_s(settings)))
                        .execution_options(synchronize_session=False))
    session.commit()
    return [(str(r.id), r.attempts + 1) for r in rows]


# ---- one try ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TryResult:
    outcome: str  # delivered, retrying, failed
    status_code: int | None
    error: str | None


def retry_delay_s(tries: int, settings: Settings, rng: random.Random | None = None) -> float:
    """The wait after the ``tries``-th failed try: the schedule's entry, the last one repeated, jittered
    +-20% so receivers that failed together are not all retried at one instant."""
    delays = settings.webhook_retry_delays_s()
    return delays[min(tries, len(delays)) - 1] * (rng or random).uniform(0.8, 1.2)


def take_try(session: Session, delivery_id: uuid.UUID, n: int,
             settings: Settings) -> tuple[str, bytes, dict[str, str]] | None:
    """Take try ``n`` of a delivery (committed): (url, body, signed headers) to POST, or None when that try
    was taken already (a duplicate message) or the delivery is over. The try holds the row for a claim
    period; record_try stores its outcome."""
    now = utcnow()
    took = session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.state == WebhookState.PENDING,
               WebhookDelivery.attempts == n - 1)
        .values(attempts=n, next_attempt_at=now + timedelta(seconds=claim_s(settings)))
    ).rowcount
    session.commit()
    if not took:
        return None
    row = session.get(WebhookDelivery, delivery_id, populate_existing=True)
    body = json.dumps(row.payload, separators=(",", ":"), sort_keys=True).encode()
    # the delivery's id is the webhook-id on every try: a receiver that got it before can tell
    headers = signed_headers(tenant_secret(session, row.tenant), f"msg_{row.id.hex}", body)
    url = row.url
    session.rollback()  # no transaction stays open across the POST
    return url, body, headers


def record_try(session: Session, delivery_id: uuid.UUID, n: int, result: TryResult, at, duration_s: float,  # noqa: ANN001
               settings: Settings) -> None:
    row = session.scalar(select(WebhookDelivery).where(WebhookDelivery.id == delivery_id,
                                                       WebhookDelivery.attempts == n).with_for_update())
    if row is None:  # cannot happen while the claim holds; a try past its claim stores nothing
        session.rollback()
        return
    entry = {"try": n, "at": at.isoformat().replace("+00:00", "Z"), "status_code": result.status_code,
             "error": result.error, "duration_ms": round(duration_s * 1000, 1)}
    row.tries = [*row.tries, entry]
    if result.outcome == "retrying":
        row.next_attempt_at = utcnow() + timedelta(seconds=retry_delay_s(n, settings))
    else:
        row.state = WebhookState.DELIVERED if result.outcome == "delivered" else WebhookState.FAILED
        row.finished_at = utcnow()
    metrics.after_commit(session, lambda: metrics.WEBHOOK_DELIVERIES.labels(result.outcome).inc())
    session.commit()
    log.info("webhook delivery=%s try=%d outcome=%s status=%s", delivery_id, n, result.outcome, result.status_code)


def deliveries_of(session: Session, job_id: uuid.UUID) -> list[dict]:
    rows = session.scalars(select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)
                           .order_by(WebhookDelivery.created_at)).all()
    return [{"id": str(r.id), "event": r.event, "url": r.url, "state": r.state.value, "attempts": r.attempts,
             "next_attempt_at": r.next_attempt_at if r.state == WebhookState.PENDING else None,
             "created_at": r.created_at, "finished_at": r.finished_at, "tries": r.tries} for r in rows]
