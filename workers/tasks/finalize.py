"""finalize: chunk results -> one transcript in every format -> COMPLETED (+ webhook). Idempotent."""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections import Counter
from concurrent.futures import wait

from sqlalchemy import select

from app import metrics
from app.constants import TASK_FINALIZE, pcm_key, transcript_key
from app.db.models import Chunk, ChunkState, Job, JobState, utcnow
from app.db.session import session_scope
from app.settings import get_settings
from app.storage import get_store
from workers.celery_app import app
from workers.engines.base import Word
from workers.formats import CONTENT_TYPES, render
from workers.itn import itn_applies, normalize_words
from workers.merge import MergeOptions, chunk_result, merge
from workers.lease import JobLease
from workers.pools import ProcessPool
from workers.punctuation import NONE as NO_PUNCTUATION
from workers.punctuation import get_punc_model, punctuate, punctuates_itself
from workers.state import begin_finalize, complete_job, requeue_finalize
from workers.tasks.policy import run_job_step
from workers.webhooks import dispatch_due, send_deliveries

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
        if attempt == 1:  # once per job: chunks planned -> the last one transcribed (and this finalize taken)
            job = s.get(Job, job_id)
            if job is not None and job.transcribing_at is not None:
                metrics.TRANSCRIBE_SECONDS.labels(metrics.engine_of(job.options)).observe(
                    max(0.0, (utcnow() - job.transcribing_at).total_seconds()))
    t0 = time.monotonic()
    with JobLease(job_id, JobState.FINALIZING, attempt, settings.reconcile_stale_s, settings.finalize_time_limit_s):
        language = _write_transcript(job_id)
        audio_deleted = _drop_decoded_audio(job_id)
        with session_scope() as s:
            moved = complete_job(s, job_id, language, attempt, audio_deleted)
            # the webhook row was written with COMPLETED; sent now rather than at the next sweep
            due = dispatch_due(s, settings, job_id) if moved else []
    if moved:
        metrics.FINALIZE_SECONDS.observe(time.monotonic() - t0)
    send_deliveries(due)


def _drop_decoded_audio(job_id: uuid.UUID) -> bool:
    """The PCM is read only by chunks, and every chunk of a FINALIZING job is done (a job never goes back):
    it goes before COMPLETED is stored, so a client that sees COMPLETED finds it gone. If storage says no,
    the maintenance sweep removes it later. True when it is gone."""
    try:
        get_store().delete_prefix(pcm_key(job_id))
        return True
    except Exception as e:  # noqa: BLE001 - not the transcript's business; the sweep retries the deletion
        log.warning("job=%s decoded audio not deleted yet (%s); the maintenance sweep will", job_id,
                    type(e).__name__)
        return False


def _write_transcript(job_id: uuid.UUID) -> str | None:
    """Merge the chunk results and write every format; returns the job's language."""
    with session_scope() as s:
        job = s.get(Job, job_id)
        rows = s.scalars(select(Chunk).where(Chunk.job_id == job_id, Chunk.state == ChunkState.DONE)
                         .order_by(Chunk.index)).all()
        chunks = [
            chunk_result(c.index, c.start_ms, c.end_ms, c.text or "", c.words, c.language)
            for c in rows
        ]
        langs = Counter(c.language for c in rows if c.language)
        language = job.options.get("language") or (langs.most_common(1)[0][0] if langs else None)
        duration_s, formats = job.duration_s or 0.0, job.options.get("formats") or ["json"]
        punc_model, itn = job.options.get("punc_model") or NO_PUNCTUATION, job.options.get("itn")
    all_text = " ".join(c.text for c in chunks)
    char_level = is_cjk(all_text)
    rewrite = functools.partial(restore_text, job_id=job_id, punc_model=punc_model,
                                itn=itn_applies(itn, language), char_level=char_level)
    # restored marks are all sentence ends: each one closes a cue
    opts = MergeOptions(char_level=char_level, min_sentence_s=0.0 if punc_model != NO_PUNCTUATION else 1.0)
    transcript = merge(str(job_id), chunks, duration_s, language, opts, rewrite=rewrite)
    # every format is written on every run: a repeated finalize rewrites identical objects
    objects = [(transcript_key(job_id, fmt), render(transcript, fmt).encode("utf-8"), CONTENT_TYPES[fmt])
               for fmt in sorted(set(formats) | {"json"})]
    put_all(objects)
    return language


def restore_text(words: list[Word], job_id: uuid.UUID, punc_model: str, itn: bool, char_level: bool) -> list[Word]:
    """The job's whole timeline, punctuated and normalized once (never per chunk)."""
    t0 = time.monotonic()
    if punc_model != NO_PUNCTUATION and words and not punctuates_itself(words):
        words = punctuate(get_punc_model(punc_model), [words])[0]
    t1 = time.monotonic()
    if itn and words:
        words = normalize_words(words, char_level)
    log.info("job=%s words=%d punctuation_s=%.3f itn_s=%.3f", job_id, len(words), t1 - t0, time.monotonic() - t1)
    return words


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
