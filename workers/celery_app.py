"""The Celery app: queues, routing and delivery settings, each one explained.

Importing this module connects to nothing; it only reads settings.
"""

from __future__ import annotations

from celery import Celery

from app import messaging
from app.catalog.plugins import check_engine_setting
from app.constants import (
    TASK_FINALIZE,
    TASK_MAINTENANCE,
    TASK_PREPARE,
    TASK_RECONCILE,
    TASK_WEBHOOK,
    TASK_WEBHOOK_SWEEP,
)
from app.settings import Settings, get_settings


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    check_engine_setting(settings)  # a worker with no such engine installed does not start
    app = Celery("asrq", broker=settings.broker_url, include=["workers.tasks"])
    # transport, queues, routing and sending: shared with every process that publishes (app/messaging.py)
    app.conf.update(messaging.celery_conf(settings))
    app.conf.update(
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
            # one POST is bounded by its timeouts, but name resolution is not (getaddrinfo has no timeout).
            # The webhook pool runs threads, where Celery enforces no limit: there each try is bounded by
            # ASRQ_WEBHOOK_TIMEOUT_S, and a try whose thread never comes back comes due again after its claim
            TASK_WEBHOOK: {"time_limit": 60 + 4 * settings.webhook_timeout_s,
                           "soft_time_limit": 30 + 4 * settings.webhook_timeout_s},
            TASK_WEBHOOK_SWEEP: {"time_limit": 120, "soft_time_limit": 90},
        },
        # Flower needs task events to show tasks
        worker_send_task_events=True,
        # workers cancel long-running tasks on connection loss so they are redelivered, not duplicated
        worker_cancel_long_running_tasks_on_connection_loss=True,
        beat_schedule={
            # on a queue and a one-process pool of its own (workers/launcher.py), so it never waits behind
            # prepares or webhook tries; a pass still queued when the next is due is redundant: it expires
            "reconcile": {"task": TASK_RECONCILE, "schedule": settings.reconcile_interval_s,
                          "options": {"expires": max(10.0, 2 * settings.reconcile_interval_s)}},
            # job-end webhooks live in Postgres: each beat sends the ones that are due (app/webhooks.py)
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
messaging.use(app)  # this process publishes through its own app
