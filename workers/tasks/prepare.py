"""prepare: source -> 16 kHz PCM object -> speech segments -> chunk rows -> transcribe messages."""

from __future__ import annotations

import logging
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from app import fair_share, metrics
from app.catalog.plugins import MAX_CHUNK_S
from app.constants import PCM_BYTES_PER_SAMPLE, PCM_SAMPLE_RATE, TASK_PREPARE, pcm_key
from app.db.models import Job, JobState
from app.db.session import session_scope
from app.lifecycle import begin_prepare, requeue_prepare, save_plan
from app.messaging import send_finalize, send_transcribe, try_send
from app.settings import Settings, get_settings
from app.storage import ObjectStore, get_store
from workers.audio import decode_to_pcm, pcm_to_float
from workers.celery_app import app
from workers.chunking import ChunkingOptions, ChunkPlan, plan_chunks
from workers.fetch import fetch_source
from workers.lease import JobLease
from workers.tasks.policy import TRANSIENT, run_job_step
from workers.vad_onnx import vad_segments

log = logging.getLogger("asrq.prepare")

MAX_DURATION_S = 12 * 3600.0


# max_retries=None: the task's own limit (policy.transient_retry_limit) bounds retries; Celery's default
# of 3 would end them early with MaxRetriesExceededError and leave the job QUEUED
@app.task(name=TASK_PREPARE, bind=True, max_retries=None)
def prepare(self, job_id: str, resume_fence: int | None = None,  # noqa: ANN001
            resume_attempt: int | None = None) -> None:  # noqa: ARG001 - sent by versions before fences: ignored
    run_job_step(self, job_id, lambda jid: prepare_job(jid, resume_fence), "preparing the audio")


def pcm_windows(f: BinaryIO, window_s: float) -> Iterator:
    block = int(window_s * PCM_SAMPLE_RATE) * PCM_BYTES_PER_SAMPLE
    while data := f.read(block):
        yield pcm_to_float(data)


def prepare_job(job_id: uuid.UUID, resume_fence: int | None = None) -> None:
    settings = get_settings()
    store = get_store()
    with session_scope() as s:
        job = begin_prepare(s, job_id, settings.max_attempts, settings.reconcile_stale_s, resume_fence)
        if job is None:
            return
        fence, tenant = job.prepare_fence, job.tenant
        source_uri, filename, options = job.source_uri, job.filename, dict(job.options)
    t0 = time.monotonic()
    try:
        _prepare_held(job_id, fence, tenant, source_uri, filename, options, store, settings)
        metrics.PREPARE_SECONDS.observe(time.monotonic() - t0)
    except TRANSIENT as e:
        # the attempt is given back (a retry can clear this error); if that cannot be done now (the database
        # is what failed), the retry resumes this prepare's attempt instead of taking the job over as if its
        # worker had died: an outage costs time, not attempts
        if not _give_back(job_id, fence):
            e.asrq_retry_kwargs = {"resume_fence": fence}  # type: ignore[attr-defined]
        raise


def _give_back(job_id: uuid.UUID, fence: int) -> bool:
    """PREPARING -> QUEUED for the retry, if this prepare still holds the job; False if the database
    could not be reached."""
    try:
        with session_scope() as s:
            requeue_prepare(s, job_id, fence)
        return True
    except TRANSIENT:
        return False


def _prepare_held(job_id: uuid.UUID, fence: int, tenant: str, source_uri: str, filename: str, options: dict,
                  store: ObjectStore, settings: Settings) -> None:
    with JobLease(job_id, JobState.PREPARING, fence, settings.reconcile_stale_s,
                  settings.prepare_time_limit_s) as lease:
        plans, duration_s = _decode_and_plan(job_id, tenant, source_uri, filename, options, store, settings)
        chunk_ids: list[uuid.UUID] = []
        if not lease.lost:
            with session_scope() as s:
                chunk_ids = save_plan(s, job_id, fence, plans, duration_s)
    if lease.lost or (plans and not chunk_ids):
        _drop_audio_of_finished(job_id, store)
        # logged once the audio is gone: what follows this line finds nothing of the attempt left
        log.info("job=%s prepare (fence %d) lost the job; dropping its plan", job_id, fence)
        return
    if chunk_ids:
        # the chunks' broker level: the tenant's standing now (app/fair_share.py)
        levels = fair_share.job_level(tenant, options.get("priority"), settings)
        try_send(lambda ids: send_transcribe(ids, levels=levels), chunk_ids)
    elif not plans:
        try_send(send_finalize, [job_id])  # no speech: an empty transcript, still COMPLETED


def _drop_audio_of_finished(job_id: uuid.UUID, store: ObjectStore) -> None:
    """A job cancelled or failed while this prepare ran has no use for the PCM it just uploaded (the
    cancel deleted the job's objects before it existed). A job taken over by a live prepare keeps it:
    that prepare writes the same object."""
    with session_scope() as s:
        job = s.get(Job, job_id)
        finished = job is None or job.state.terminal
    if finished:
        store.delete_prefix(pcm_key(job_id))


def _decode_and_plan(job_id: uuid.UUID, tenant: str, source_uri: str, filename: str, options: dict,
                     store: ObjectStore, settings: Settings) -> tuple[list[ChunkPlan], float]:
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="asrq-prepare-") as tmp:
        src = fetch_source(job_id, source_uri, filename, store, settings, Path(tmp) / "source", tenant)
        pcm = Path(tmp) / "audio.s16le"
        with open(pcm, "wb") as out:
            info = decode_to_pcm(src, out, MAX_DURATION_S)
        src.unlink()  # keep only one copy of a long recording on local disk
        store.put_file(pcm_key(job_id), pcm, "application/octet-stream")
        with open(pcm, "rb") as f:
            segments = vad_segments(pcm_windows(f, settings.vad_window_s), settings.vad_max_end_silence_ms,
                                    settings.vad_runtime)
    max_chunk_s = min(settings.max_chunk_s, MAX_CHUNK_S.get(options.get("engine", ""), settings.max_chunk_s))
    plans = plan_chunks(
        segments,
        int(info.duration_s * 1000),
        ChunkingOptions(max_chunk_ms=int(max_chunk_s * 1000), overlap_ms=int(settings.hard_cut_overlap_s * 1000)),
    )
    log.info("job=%s decoded %.1f s (%s/%s %d Hz %d ch), %d speech segments, %d chunks in %.2f s", job_id,
             info.duration_s, info.container, info.codec, info.source_rate, info.source_channels, len(segments),
             len(plans), time.monotonic() - t0)
    return plans, info.duration_s
