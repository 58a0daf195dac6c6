"""finalize: chunk results -> one transcript in every format -> COMPLETED (+ webhook). Idempotent."""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from concurrent.futures import wait

from sqlalchemy import select

from app.constants import TASK_FINALIZE, transcript_key
from app.db.models import Chunk, ChunkState, Job, JobState
from app.db.session import session_scope
from app.settings import get_settings
from app.storage import get_store
from workers.celery_app import app
from workers.engines.base import Word
from workers.formats import CONTENT_TYPES, render
from workers.merge import ChunkResult, MergeOptions, merge
from workers.lease import JobLease
from workers.pools import ProcessPool
from workers.state import begin_finalize, complete_job, requeue_finalize
from workers.tasks.policy import run_job_step
from workers.webhooks import enqueue_webhook

log = logging.getLogger("asrq.finalize")


# max_retries=None: the task's own limit (policy.transient_retry_limit) bounds retries; Celery's default
# of 3 would end them early with MaxRetriesExceededError and leave the job QUEUED
@app.task(name=TASK_FINALIZE, bind=True, max_retries=None)
def finalize(self, job_id: str) -> None:  # noqa: ANN001
    run_job_step(self, job_id, finalize_job, "finalizing the transcript", on_transient=requeue_finalize)


def is_cjk(text: str) -> bool:
    letters = [c for c in text if c.isalpha()]
    cjk = sum(1 for c in letters if "\u3040" <= c <= "\u30ff" or "\u3400" <= c <= "\u9fff")
    return bool(letters) and cjk / len(letters) > 0.5


def finalize_job(job_id: uuid.UUID) -> None:
    settings = get_settings()
    with session_scope() as s:
        # finished, failed or cancelled meanwhile, or a live finalize holds it: nothing to do
        attempt = begin_finalize(s, job_id, settings.max_attempts, settings.reconcile_stale_s)
        if attempt is None:
            return
    with JobLease(job_id, JobState.FINALIZING, attempt, settings.reconcile_stale_s, settings.finalize_time_limit_s):
        language = _write_transcript(job_id)
        with session_scope() as s:
            moved = complete_job(s, job_id, language, attempt)
            webhook = s.get(Job, job_id).webhook_url if moved else None
    if webhook:
        enqueue_webhook(webhook, {"job_id": str(job_id), "state": JobState.COMPLETED.value})


def _write_transcript(job_id: uuid.UUID) -> str | None:
    """Merge the chunk results and write every format; returns the job's language."""
    with session_scope() as s:
        job = s.get(Job, job_id)
        rows = s.scalars(select(Chunk).where(Chunk.job_id == job_id, Chunk.state == ChunkState.DONE)
                         .order_by(Chunk.index)).all()
        chunks = [
            ChunkResult(c.index, c.start_ms, c.end_ms, c.text or "", [Word(*w) for w in (c.words or [])])
            for c in rows
        ]
        langs = Counter(c.language for c in rows if c.language)
        language = job.options.get("language") or (langs.most_common(1)[0][0] if langs else None)
        duration_s, formats = job.duration_s or 0.0, job.options.get("formats") or ["json"]
    all_text = " ".join(c.text for c in chunks)
    transcript = merge(str(job_id), chunks, duration_s, language, MergeOptions(char_level=is_cjk(all_text)))
    # every format is written on every run: a repeated finalize rewrites identical objects
    objects = [(transcript_key(job_id, fmt), render(transcript, fmt).encode("utf-8"), CONTENT_TYPES[fmt])
               for fmt in sorted(set(formats) | {"json"})]
    put_all(objects)
    return language


# the formats' PUTs go out side by side: a job's transcript costs about one storage round trip, not four
_PUTS = ProcessPool(len(CONTENT_TYPES), "asrq-put")


def put_all(objects: list[tuple[str, bytes, str]]) -> None:
    """Write (key, data, content type) objects concurrently. Returns once every PUT has finished; the
    first error (in the given order) is raised then, so a retry never races a write still under way."""
    store = get_store()
    if len(objects) <= 1:
        for key, data, ctype in objects:
            store.put_bytes(key, data, ctype)
        return
    futures = [_PUTS.get().submit(store.put_bytes, key, data, ctype) for key, data, ctype in objects]
    wait(futures)
    for f in futures:
        if f.exception() is not None:
            raise f.exception()
