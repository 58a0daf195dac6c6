"""The Celery app: queues, routing and delivery settings, each one explained.

Importing this module connects to nothing; it only reads settings.
"""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from app.constants import (
    ALL_QUEUES,
    PRIORITY_STEPS,
    QUEUE_FINALIZE,
    QUEUE_MAINTENANCE,
    QUEUE_PREPARE,
    QUEUE_TRANSCRIBE,
    TASK_FINALIZE,
    TASK_MAINTENANCE,
    TASK_PREPARE,
    TASK_RECONCILE,
    TASK_TRANSCRIBE,
    TASK_WEBHOOK,
    TASK_WEBHOOK_SWEEP,
)
from app.settings import Settings, get_settings


def broker_transport_options(settings: Settings) -> dict:
    if settings.broker_url.startswith("filesystem://"):
        folder = settings.broker_url[len("filesystem://") :]
        return {
            "data_folder_in": f"{folder}/queue",
            "data_folder_out": f"{folder}/queue",
            "processed_folder": f"{folder}/processed",
            "store_processed": False,
            "control_folder": f"{folder}/control",
            "polling_interval": 0.05,
        }
    return {
        # Redis redelivers an unacked message after this long. A twin of a task still running finds its
        # work held by a live lease or claim and does nothing; a message whose worker died before
        # taking the work comes back within this bound (workers/tasks/reconcile.py)
        "visibility_timeout": settings.visibility_timeout_s,
        "socket_keepalive": True,
        "socket_timeout": 30,
        "health_check_interval": 25,
        # fair share (workers/fair_share.py): ten levels, one Redis list each, level 0 served first; kombu's
        # default has four (0, 3, 6, 9), which this includes, so messages sent before an upgrade still arrive
        "priority_steps": list(PRIORITY_STEPS),
    }


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery("asrq", broker=settings.broker_url, include=["workers.tasks"])
    opts = broker_transport_options(settings)
    if settings.broker_url.startswith("filesystem://"):
        from pathlib import Path

        for key in ("data_folder_in", "processed_folder", "control_folder"):
            Path(opts[key]).mkdir(parents=True, exist_ok=True)
    app.conf.update(
        broker_transport_options=opts,
        # the result backend is off: Postgres holds every outcome; results in Redis would only leak memory
        task_ignore_result=True,
        result_backend=None,
        task_queues=[Queue(q, routing_key=q) for q in ALL_QUEUES],
        task_default_queue=QUEUE_PREPARE,
        task_routes={
            TASK_PREPARE: {"queue": QUEUE_PREPARE, "routing_key": QUEUE_PREPARE},
            TASK_TRANSCRIBE: {"queue": QUEUE_TRANSCRIBE, "routing_key": QUEUE_TRANSCRIBE},
            TASK_FINALIZE: {"queue": QUEUE_FINALIZE, "routing_key": QUEUE_FINALIZE},
            TASK_RECONCILE: {"queue": QUEUE_MAINTENANCE, "routing_key": QUEUE_MAINTENANCE},
            TASK_WEBHOOK: {"queue": QUEUE_MAINTENANCE, "routing_key": QUEUE_MAINTENANCE},
            TASK_WEBHOOK_SWEEP: {"queue": QUEUE_MAINTENANCE, "routing_key": QUEUE_MAINTENANCE},
            TASK_MAINTENANCE: {"queue": QUEUE_MAINTENANCE, "routing_key": QUEUE_MAINTENANCE},
        },
        # ack only after the task ran: a worker killed mid-task leaves its messages to be redelivered
        task_acks_late=True,
        # ... and a child that died (OOM-killed, SIGKILL) counts as lost, so its message goes back
        task_reject_on_worker_lost=True,
        # one prepare at a time per process: a long decode must not hold other jobs hostage in prefetch
        worker_prefetch_multiplier=1,
        # a new pool process loads FSMN-VAD (FunASR and torch imports) before it reports in; Celery's
        # default 4 s was exceeded on a busy 2-core machine, and then it killed and re-forked the child
        # forever (observed: 150 restarts in 10 minutes, no task served)
        worker_proc_alive_timeout=120.0,
        # hard limits well above the longest measured run; the soft limit, a minute earlier, lets the task
        # store its failure. Transcribe workers run the solo pool, where Celery cannot enforce limits:
        # there the chunk lease (ASRQ_CHUNK_LEASE_S) hands a stuck batch's chunks to another worker.
        task_annotations={
            TASK_PREPARE: {"time_limit": settings.prepare_time_limit_s,
                           "soft_time_limit": max(1.0, settings.prepare_time_limit_s - 60)},
            TASK_FINALIZE: {"time_limit": settings.finalize_time_limit_s,
                            "soft_time_limit": max(1.0, settings.finalize_time_limit_s - 60)},
            TASK_RECONCILE: {"time_limit": 300, "soft_time_limit": 240},
            # bounded batches, each committed on its own: a run cut short loses at most one batch's work
            TASK_MAINTENANCE: {"time_limit": 600, "soft_time_limit": 540},
            # one POST is bounded by its timeouts, but name resolution is not (getaddrinfo has no timeout)
            TASK_WEBHOOK: {"time_limit": 60 + 4 * settings.webhook_timeout_s,
                           "soft_time_limit": 30 + 4 * settings.webhook_timeout_s},
            TASK_WEBHOOK_SWEEP: {"time_limit": 120, "soft_time_limit": 90},
        },
        # Postgres is the source of truth; a publish that fails is retried, and the reconciler
        # re-sends anything that still slipped through
        task_publish_retry=True,
        task_publish_retry_policy={"max_retries": 5, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 3},
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # a worker waits for Redis to come back rather than exit
        # Flower needs task events to show tasks
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_serializer="json",
        accept_content=["json"],
        enable_utc=True,
        # workers cancel long-running tasks on connection loss so they are redelivered, not duplicated
        worker_cancel_long_running_tasks_on_connection_loss=True,
        beat_schedule={
            "reconcile": {"task": TASK_RECONCILE, "schedule": settings.reconcile_interval_s},
            # job-end webhooks live in Postgres: each beat sends the ones that are due (workers/webhooks.py)
            "webhooks": {"task": TASK_WEBHOOK_SWEEP, "schedule": settings.webhook_sweep_interval_s,
                         # a sweep still queued when the next is due is redundant: it expires
                         "options": {"expires": max(30.0, 2 * settings.webhook_sweep_interval_s)}},
            # two sweeps at once are safe (skip-locked, idempotent), but a queued one behind a running one is
            # redundant: it expires
            "maintenance": {"task": TASK_MAINTENANCE, "schedule": settings.maintenance_interval_s,
                            "options": {"expires": max(30.0, 2 * settings.maintenance_interval_s)}},
        },
        worker_hijack_root_logger=False,
    )
    if settings.embedded:
        # the filesystem transport has no fanout: no remote control, gossip or mingle
        app.conf.worker_enable_remote_control = False
    return app


app = make_celery()
