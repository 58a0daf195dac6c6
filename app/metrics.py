"""Prometheus metrics: every name asrq exposes, in base units, and how processes serve them.

Counters and histograms are updated where the event happens (state changes in app/lifecycle.py, batches
in workers/tasks/transcribe.py, re-sends in workers/tasks/reconcile.py, webhook tries). A process that
forks (Celery's prefork pool, uvicorn with several workers) writes them to files under
``PROMETHEUS_MULTIPROC_DIR``, which its parent sets and cleans at start (workers/launcher.py, `asrq api`);
whoever serves /metrics sums those files. Jobs by state and queue depths are read at scrape time, by the
API only, with one GROUP BY, one LLEN per queue and one count of its consumers (app/consumers.py), cached
for ``ASRQ_METRICS_CACHE_S``.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE  # noqa: F401 - the API serves it
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from app.consumers import consumer_counts
from app.messaging import queue_depths

log = logging.getLogger("asrq.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# seconds of a whole job: from a second (a short clip on a warm worker) to a day (a backlog)
_JOB_S = (1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
_STEP_S = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800)

JOBS_SUBMITTED = Counter("asrq_jobs_submitted_total", "Jobs accepted by the API", ["tenant", "engine"])
JOBS_COMPLETED = Counter("asrq_jobs_completed_total", "Jobs that reached COMPLETED", ["tenant", "engine"])
JOBS_FAILED = Counter("asrq_jobs_failed_total", "Jobs that reached FAILED", ["tenant", "engine"])
JOBS_CANCELLED = Counter("asrq_jobs_cancelled_total", "Jobs cancelled by their client", ["tenant", "engine"])

QUEUED_SECONDS = Histogram("asrq_job_queued_seconds", "Submission to the start of the first prepare",
                           ["engine"], buckets=_JOB_S)
PREPARE_SECONDS = Histogram("asrq_prepare_seconds", "One prepare that finished: fetch, decode, VAD, chunking",
                            buckets=_STEP_S)
TRANSCRIBE_SECONDS = Histogram("asrq_job_transcribe_seconds", "A job's chunks planned to all transcribed",
                               ["engine"], buckets=_JOB_S)
FINALIZE_SECONDS = Histogram("asrq_finalize_seconds", "One finalize that finished: merge, render, store",
                             buckets=_STEP_S)
END_TO_END_SECONDS = Histogram("asrq_job_end_to_end_seconds", "Submission to COMPLETED", ["engine"],
                               buckets=_JOB_S)

CHUNK_ATTEMPTS = Counter("asrq_chunk_attempts_total", "Chunk claims, each an attempt", ["engine"])
CHUNK_FAILURES = Counter("asrq_chunk_failures_total",
                         "Chunk attempts that did not store a result: given back for a retry, audio unreadable, "
                         "or failed for good", ["kind"])
BATCH_CHUNKS = Histogram("asrq_batch_chunks", "Chunks per inference batch", ["engine"],
                         buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
BATCH_AUDIO_SECONDS = Histogram("asrq_batch_audio_seconds", "Audio seconds per inference batch", ["engine"],
                                buckets=(5, 15, 30, 60, 120, 240, 480, 960, 1920, 3840))
INFERENCE_SECONDS = Histogram("asrq_inference_seconds", "Wall time of one inference batch", ["engine"],
                              buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128))
REAL_TIME_FACTOR = Histogram("asrq_real_time_factor", "Inference seconds per audio second of a batch", ["engine"],
                             buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2))
# busy ratio = rate(asrq_engine_busy_seconds_total[1m]): the share of wall time the engine ran inference
ENGINE_BUSY_SECONDS = Counter("asrq_engine_busy_seconds_total", "Seconds an engine spent in inference",
                              ["worker", "engine"])

RECONCILER_RESENDS = Counter("asrq_reconciler_resends_total", "Messages the reconciler sent again", ["kind"])
WEBHOOK_DELIVERIES = Counter("asrq_webhook_deliveries_total",
                             "Webhook tries by outcome: delivered, retrying (a later try follows), failed",
                             ["outcome"])


def engine_of(options: dict | None) -> str:
    return str((options or {}).get("engine") or "unknown")


def observe_batch(worker: str, engine: str, chunks: int, audio_s: float, infer_s: float) -> None:
    BATCH_CHUNKS.labels(engine).observe(chunks)
    BATCH_AUDIO_SECONDS.labels(engine).observe(audio_s)
    INFERENCE_SECONDS.labels(engine).observe(infer_s)
    if audio_s > 0:
        REAL_TIME_FACTOR.labels(engine).observe(infer_s / audio_s)
    ENGINE_BUSY_SECONDS.labels(worker, engine).inc(infer_s)


def count_submitted(tenant: str, options: list[dict]) -> None:
    for o in options:
        JOBS_SUBMITTED.labels(tenant, engine_of(o)).inc()


# ---- observations that must wait for their transaction ------------------------------------------------------

_PENDING_KEY = "asrq_metrics_after_commit"


def after_commit(session, observe: Callable[[], None]) -> None:  # noqa: ANN001
    """Run ``observe`` once ``session``'s transaction commits, and never if it rolls back: a counter of
    jobs FAILED must agree with the database, not with attempts that were undone."""
    from sqlalchemy import event

    pending = session.info.get(_PENDING_KEY)
    if pending is None:
        pending = session.info[_PENDING_KEY] = []

        def commit(s) -> None:  # noqa: ANN001
            for fn in s.info.pop(_PENDING_KEY, []):
                try:
                    fn()
                except Exception:  # noqa: BLE001 - a metric must never break a state change
                    log.exception("metric observation failed")

        def rollback(s) -> None:  # noqa: ANN001
            s.info.pop(_PENDING_KEY, None)

        event.listen(session, "after_commit", commit, once=True)
        event.listen(session, "after_soft_rollback", rollback, once=True)
    pending.append(observe)


def observe_job_end(state: str, tenant: str, options: dict | None, created_at, started_at,  # noqa: ANN001
                    finished_at) -> None:  # noqa: ANN001
    engine = engine_of(options)
    counter = {"COMPLETED": JOBS_COMPLETED, "FAILED": JOBS_FAILED, "CANCELLED": JOBS_CANCELLED}[state]
    counter.labels(tenant, engine).inc()
    if state == "COMPLETED" and created_at and finished_at:
        END_TO_END_SECONDS.labels(engine).observe(max(0.0, (finished_at - created_at).total_seconds()))
        if started_at:
            QUEUED_SECONDS.labels(engine).observe(max(0.0, (started_at - created_at).total_seconds()))


# ---- serving ------------------------------------------------------------------------------------------------


def prepare_multiproc_dir(folder: Path) -> Path:
    """An empty folder for the metric files of a process tree about to start: files left by a previous
    run would add its counts to this one's."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def process_registry() -> CollectorRegistry:
    """This process's metrics, or every process's under PROMETHEUS_MULTIPROC_DIR where that is set."""
    folder = os.environ.get(MULTIPROC_ENV)
    if not folder:
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=folder)
    return registry


class StateCollector:
    """Jobs by state and queue depth per queue, read at scrape time and kept ``cache_s``: a scrape every
    few seconds from several Prometheus servers costs one GROUP BY and a few LLENs per period.

    Jobs in flight are counted at every refresh (an index range, as large as the work under way). Finished
    jobs are most of a big table, and counting them grows with it (about 135 ms at 20,000 rows here):
    counted with the rest while that takes under FINISHED_INLINE_S, and from then on in the background,
    at most every FINISHED_EVERY_S, so a scrape never waits for them (their gauges are then that old)."""

    FINISHED_INLINE_S = 0.1
    FINISHED_EVERY_S = 60.0

    def __init__(self, settings, sessions, cache_s: float) -> None:  # noqa: ANN001
        self.settings, self.sessions, self.cache_s = settings, sessions, cache_s
        self._lock = threading.Lock()
        self._read_at = float("-inf")
        self._states: dict[str, int] = {}
        self._queues: dict[str, int] = {}
        self._consumers: dict[str, int] = {}
        self._finished: dict[str, int] = {}
        self._finished_took_s = 0.0
        self._finished_at = float("-inf")
        self._finished_busy = threading.Lock()

    def _count(self, finished: bool) -> dict[str, int]:
        from sqlalchemy import func, select

        from app.db.models import TERMINAL_JOB_STATES, Job, JobState

        which = Job.state.in_([st for st in JobState if (st in TERMINAL_JOB_STATES) == finished])
        with self.sessions() as s:
            return {st.value: n for st, n in s.execute(select(Job.state, func.count()).where(which).group_by(Job.state))}

    def _count_finished(self) -> None:
        if not self._finished_busy.acquire(blocking=False):
            return  # one count at a time
        try:
            t0 = time.monotonic()
            self._finished = self._count(finished=True)
            self._finished_took_s = time.monotonic() - t0
            self._finished_at = time.monotonic()
        except Exception as e:  # noqa: BLE001 - the last counts stay; the next refresh tries again
            log.warning("finished jobs not counted: %s", type(e).__name__)
        finally:
            self._finished_busy.release()

    def _refresh(self) -> None:
        from app.db.models import JobState

        in_flight = self._count(finished=False)
        if self._finished_at == float("-inf") or self._finished_took_s <= self.FINISHED_INLINE_S:
            self._count_finished()  # the first time, and while it is cheap: exact at every refresh
        elif time.monotonic() - self._finished_at >= self.FINISHED_EVERY_S:
            threading.Thread(target=self._count_finished, name="asrq-metrics-finished", daemon=True).start()
        self._states = {st.value: 0 for st in JobState} | self._finished | in_flight
        try:
            self._queues = queue_depths(self.settings)
            self._consumers = consumer_counts(self.settings)
        except Exception as e:  # noqa: BLE001 - a broker that is down: the job states are still worth a scrape
            log.warning("queue depths unreadable: %s", type(e).__name__)
            self._queues, self._consumers = {}, {}
        self._read_at = time.monotonic()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            if time.monotonic() - self._read_at >= self.cache_s:
                self._refresh()
            states, queues, consumers = dict(self._states), dict(self._queues), dict(self._consumers)
        jobs = GaugeMetricFamily("asrq_jobs", "Jobs by state, read from the database", labels=["state"])
        for state, n in sorted(states.items()):
            jobs.add_metric([state], n)
        yield jobs
        depth = GaugeMetricFamily("asrq_queue_depth", "Messages waiting in each broker queue", labels=["queue"])
        for queue, n in sorted(queues.items()):
            depth.add_metric([queue], n)
        yield depth
        workers = GaugeMetricFamily("asrq_queue_consumers", "Workers consuming each queue (0: its messages wait "
                                    "for good; see app/consumers.py)", labels=["queue"])
        for queue, n in sorted(consumers.items()):
            workers.add_metric([queue], n)
        yield workers


def exposition(*registries: CollectorRegistry) -> bytes:
    return b"".join(generate_latest(r) for r in registries)


class NvmlCollector:
    """GPU memory used/total and utilisation per card through NVML, where a GPU and its driver exist;
    elsewhere it reports nothing (``available`` is False) and costs nothing."""

    def __init__(self, worker: str) -> None:
        self.worker = worker
        self.handles: list = []
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception as e:  # noqa: BLE001 - no driver, no card, or no library: no GPU metrics
            log.debug("NVML unavailable: %s", type(e).__name__)
            self.handles = []

    @property
    def available(self) -> bool:
        return bool(self.handles)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if not self.handles:
            return
        used = GaugeMetricFamily("asrq_gpu_memory_used_bytes", "GPU memory in use", labels=["worker", "gpu"])
        total = GaugeMetricFamily("asrq_gpu_memory_total_bytes", "GPU memory in all", labels=["worker", "gpu"])
        util = GaugeMetricFamily("asrq_gpu_utilization_ratio", "Share of the last sample period the GPU was busy",
                                 labels=["worker", "gpu"])
        for i, h in enumerate(self.handles):
            try:
                mem = self._nvml.nvmlDeviceGetMemoryInfo(h)
                rates = self._nvml.nvmlDeviceGetUtilizationRates(h)
            except Exception as e:  # noqa: BLE001 - a card that fell off the bus: skip it, keep the rest
                log.warning("NVML read of gpu %d failed: %s", i, type(e).__name__)
                continue
            used.add_metric([self.worker, str(i)], float(mem.used))
            total.add_metric([self.worker, str(i)], float(mem.total))
            util.add_metric([self.worker, str(i)], rates.gpu / 100.0)
        yield used
        yield total
        yield util


def serve_worker_metrics(port: int, host: str, folder: Path, worker: str) -> None:
    """The launcher's /metrics: the sum of its Celery processes' files, and NVML's cards where there are
    any. Served from a daemon thread of the launcher, which outlives every worker it restarts."""
    from prometheus_client import start_http_server

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(folder))
    nvml = NvmlCollector(worker)
    if nvml.available:
        registry.register(nvml)
    start_http_server(port, addr=host, registry=registry)
    log.info("metrics on http://%s:%d/metrics (gpus via NVML: %d)", host, port, len(nvml.handles))
