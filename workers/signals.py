"""Per-process set-up of worker processes: fresh DB pools after fork, models loaded once at start."""

from __future__ import annotations

import logging
import os

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
