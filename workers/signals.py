"""Per-process set-up of worker processes: fresh DB pools after fork, models loaded once at start."""

from __future__ import annotations

import logging
import os
import time

from celery import signals

log = logging.getLogger("asrq.worker")


@signals.worker_process_init.connect
def _after_fork(**_kw: object) -> None:
    # a forked child must not reuse the parent's database sockets
    from app.db.session import reset_engines

    reset_engines()
    if os.environ.get("ASRQ_WARM_VAD") == "1":
        # each prepare process loads FSMN-VAD once, at start, not on its first job
        from app.settings import get_settings
        from workers.vad_onnx import warm_vad

        warm_vad(get_settings().vad_runtime)


@signals.worker_ready.connect
def _warm(**_kw: object) -> None:
    if os.environ.get("ASRQ_WARM_ENGINE") == "1":
        # transcribe workers run the solo pool: this is the process that serves tasks, no fork follows
        from app.settings import get_settings
        from workers.engines.registry import get_engine

        s = get_settings()
        engine = get_engine(s.engine, s.model)
        # on CUDA, the probe batches that size its batches for the card run now, before any task
        if hasattr(engine, "batch_budget_s"):
            engine.batch_budget_s(s.batch_audio_s, s.gpu_memory_fraction, s.batch_max_requests)


# --- who consumes each queue (app/consumers.py) ---------------------------------------------------------

_consuming: dict[str, object] = {}


def _consumed(consumer: object) -> list[str]:
    return sorted(consumer.app.amqp.queues.consume_from or {})  # type: ignore[attr-defined]


@signals.worker_ready.connect
def _say_consuming(sender: object = None, **_kw: object) -> None:
    """Every beat, this worker's queues; a thread, so a long task never silences it."""
    import threading

    from app.consumers import say_consuming
    from app.sent_index import is_redis
    from app.settings import get_settings

    settings, name, queues = get_settings(), sender.hostname, _consumed(sender)  # type: ignore[attr-defined]
    log.info("worker %s consumes %s", name, ", ".join(queues))
    if not is_redis(settings.broker_url):
        return  # the one-shot's embedded broker: its one worker consumes every queue
    stop = threading.Event()
    _consuming.update(name=name, queues=queues, stop=stop)

    def beat() -> None:
        while True:
            try:
                say_consuming(settings, name, queues)
            except Exception as e:  # noqa: BLE001 - the broker is away: the next beat says it again
                log.warning("queues consumed not said (%s)", type(e).__name__)
            if stop.wait(settings.consumer_beat_s):
                return

    threading.Thread(target=beat, name="asrq-consuming", daemon=True).start()


@signals.worker_shutdown.connect
def _say_gone(**_kw: object) -> None:
    from app.consumers import say_gone
    from app.settings import get_settings

    if not _consuming:
        return
    _consuming["stop"].set()  # type: ignore[attr-defined]
    try:
        say_gone(get_settings(), _consuming["name"], _consuming["queues"])  # type: ignore[arg-type]
    except Exception as e:  # noqa: BLE001 - it counts as gone three beats later
        log.warning("queues consumed not withdrawn (%s)", type(e).__name__)


# --- the sent index (app/sent_index.py): a message handled leaves it -------------------------------------

_started: dict[str, float] = {}


def _items(args: object) -> list[str]:
    """The job or chunk ids of one task run: its first argument, or each request's (a batch task)."""
    if not args:
        return []
    first = args[0]  # type: ignore[index]
    if isinstance(first, list):
        return [str(r.args[0]) for r in first if getattr(r, "args", None)]
    return [str(first)]


@signals.task_prerun.connect
def _note_start(task_id: str | None = None, task: object = None, **_kw: object) -> None:
    from app.sent_index import TRACKED

    if task_id and getattr(task, "name", None) in TRACKED:
        _started[task_id] = time.time()


@signals.task_postrun.connect
def _forget_handled(task_id: str | None = None, task: object = None, args: object = None,
                    **_kw: object) -> None:
    from app.sent_index import TRACKED, forget_handled

    started = _started.pop(task_id, None) if task_id else None
    name = getattr(task, "name", None)
    if started is None or name not in TRACKED:
        return
    try:
        forget_handled(name, _items(args), started)
    except Exception as e:  # noqa: BLE001 - a field left behind costs memory until the reconciler's sweep
        log.warning("sent index not updated after %s (%s)", name, type(e).__name__)
