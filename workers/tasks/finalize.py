"""finalize: chunk results -> one transcript in every format -> COMPLETED (+ webhook). Idempotent."""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from concurrent.futures import wait
from contextlib import ExitStack
from dataclasses import dataclass

from sqlalchemy import select

from app import metrics
from app.catalog.postprocess import NONE as NO_PUNCTUATION
from app.catalog.postprocess import itn_applies
from app.constants import TASK_FINALIZE, pcm_key, transcript_key
from app.db.models import Chunk, ChunkState, Job, JobState, utcnow
from app.db.session import session_scope
from app.errors import PermanentError
from app.lifecycle import begin_finalize, begin_finalize_more, complete_job, fail_job, requeue_finalize
from app.messaging import send_finalize, try_send
from app.messaging import send_webhook_tries as send_deliveries
from app.settings import get_settings
from app.storage import get_store
from app.webhooks import dispatch_due
from workers.celery_app import app
from workers.engines.base import Word
from workers.formats import CONTENT_TYPES, render
from workers.itn import normalize_words
from workers.lease import JobLease
from workers.merge import MergeOptions, absolute_words, chunk_result, merge
from workers.pools import ProcessPool
from workers.punctuation import get_punc_model, punctuate, punctuates_itself
from workers.tasks.policy import TRANSIENT, run_job_step

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
        job = s.get(Job, job_id)
        if attempt == 1 and job is not None and job.transcribing_at is not None:
            # once per job: chunks planned -> the last one transcribed (and this finalize taken)
            metrics.TRANSCRIBE_SECONDS.labels(metrics.engine_of(job.options)).observe(
                max(0.0, (utcnow() - job.transcribing_at).total_seconds()))
        # Punctuation runs batched across jobs: the first finalize of a punctuated job also takes other
        # punctuated jobs that are waiting and that nobody holds, and their texts go through the model in
        # one call. Only first attempts are grouped; a job that needs another attempt (its finalize died)
        # runs alone, so whatever kills a worker is charged to its group once at most.
        mates: list[tuple[uuid.UUID, int]] = []
        if (attempt == 1 and job is not None and settings.finalize_group_max > 1
                and (job.options.get("punc_model") or NO_PUNCTUATION) != NO_PUNCTUATION):
            mates = begin_finalize_more(s, job_id, settings.finalize_group_max - 1, settings.reconcile_stale_s)
    held = [(job_id, attempt)] + mates
    t0 = time.monotonic()
    finished: set[uuid.UUID] = set()
    try:
        with ExitStack() as leases:
            for jid, att in held:
                leases.enter_context(JobLease(jid, JobState.FINALIZING, att, settings.reconcile_stale_s,
                                              settings.finalize_time_limit_s))
            loaded = {jid: _load(jid) for jid, _ in held}
            restored = restore_all(loaded)
            for jid, att in held:
                if jid == job_id:  # the task's own job: its errors go to the task's retry policy
                    _complete(jid, att, loaded[jid], restored[jid], settings, t0)
                else:
                    _complete_mate(jid, att, loaded[jid], restored[jid], settings, t0)
                finished.add(jid)
    finally:
        # the task's own job failed before its mates were done: they are given back, not left to a lease
        for jid, _ in mates:
            if jid not in finished:
                _give_back(jid)


@dataclass
class Loaded:
    """What finalize reads of one job: its chunk results and the options the transcript depends on."""

    job_id: uuid.UUID
    chunks: list
    language: str | None
    duration_s: float
    formats: list[str]
    punc_model: str
    itn: bool
    char_level: bool


def _load(job_id: uuid.UUID) -> Loaded:
    with session_scope() as s:
        job = s.get(Job, job_id)
        rows = s.scalars(select(Chunk).where(Chunk.job_id == job_id, Chunk.state == ChunkState.DONE)
                         .order_by(Chunk.index)).all()
        chunks = [chunk_result(c.index, c.start_ms, c.end_ms, c.text or "", c.words, c.language) for c in rows]
        langs = Counter(c.language for c in rows if c.language)
        language = job.options.get("language") or (langs.most_common(1)[0][0] if langs else None)
        char_level = is_cjk(" ".join(c.text for c in chunks))
        return Loaded(job_id, chunks, language, job.duration_s or 0.0, job.options.get("formats") or ["json"],
                      job.options.get("punc_model") or NO_PUNCTUATION,
                      itn_applies(job.options.get("itn"), language), char_level)


def restore_all(jobs: dict[uuid.UUID, Loaded]) -> dict[uuid.UUID, list[Word]]:
    """Every job's whole timeline, punctuated and normalized once (never per chunk); the texts of jobs
    with the same punctuation model go through it in one call."""
    t0 = time.monotonic()
    words = {jid: absolute_words(j.chunks, j.duration_s) for jid, j in jobs.items()}
    by_model: dict[str, list[uuid.UUID]] = {}
    for jid, j in jobs.items():
        if j.punc_model != NO_PUNCTUATION and words[jid] and not punctuates_itself(words[jid]):
            by_model.setdefault(j.punc_model, []).append(jid)
    for name, ids in by_model.items():
        for jid, punctuated in zip(ids, punctuate(get_punc_model(name), [words[jid] for jid in ids])):
            words[jid] = punctuated
    t1 = time.monotonic()
    for jid, j in jobs.items():
        if j.itn and words[jid]:
            words[jid] = normalize_words(words[jid], j.char_level)
    log.info("jobs=%d punctuated=%d punctuation_s=%.3f itn_s=%.3f", len(jobs), sum(map(len, by_model.values())),
             t1 - t0, time.monotonic() - t1)
    return words


def _complete(job_id: uuid.UUID, attempt: int, job: Loaded, words: list[Word], settings, t0: float) -> None:  # noqa: ANN001
    _write_transcript(job, words)
    audio_deleted = _drop_decoded_audio(job_id)
    with session_scope() as s:
        moved = complete_job(s, job_id, job.language, attempt, audio_deleted)
        # the webhook row was written with COMPLETED; sent now rather than at the next sweep
        due = dispatch_due(s, settings, job_id) if moved else []
    if moved:
        metrics.FINALIZE_SECONDS.observe(time.monotonic() - t0)
    send_deliveries(due)


def _complete_mate(job_id: uuid.UUID, attempt: int, job: Loaded, words: list[Word], settings, t0: float) -> None:  # noqa: ANN001
    """A job taken along with the task's own: what its own task's policy would do on an error, done here,
    so one job's failure is its own."""
    try:
        _complete(job_id, attempt, job, words, settings, t0)
    except PermanentError as e:
        with session_scope() as s:
            fail_job(s, job_id, str(e))
    except TRANSIENT as e:
        log.warning("job=%s finalize (grouped) transient error %s; given back", job_id, type(e).__name__)
        _give_back(job_id)
    except Exception as e:  # noqa: BLE001 - a bug in one job's transcript must not fail its group
        log.exception("job=%s finalize (grouped) failed unexpectedly", job_id)
        with session_scope() as s:
            fail_job(s, job_id, f"finalizing the transcript failed: internal error ({type(e).__name__})")


def _give_back(job_id: uuid.UUID) -> None:
    """Release a job this task holds: its own finalize message, or the reconciler's re-send, runs it."""
    try:
        with session_scope() as s:
            requeue_finalize(s, job_id)
        try_send(send_finalize, [job_id])
    except TRANSIENT:
        pass  # its lease runs out and the reconciler takes it


def _drop_decoded_audio(job_id: uuid.UUID) -> bool:
    """The PCM is read only by chunks, and every chunk of a FINALIZING job is done (a job never goes back):
    it goes before COMPLETED is stored, so a client that sees COMPLETED finds it gone. If storage says no,
    the maintenance sweep removes it later. True when it is gone."""
    try:
        get_store().delete(pcm_key(job_id))
        return True
    except Exception as e:  # noqa: BLE001 - not the transcript's business; the sweep retries the deletion
        log.warning("job=%s decoded audio not deleted yet (%s); the maintenance sweep will", job_id,
                    type(e).__name__)
        return False


def _write_transcript(job: Loaded, words: list[Word]) -> None:
    """Cut the restored timeline into segments and write every format."""
    # restored marks are all sentence ends: each one closes a cue
    opts = MergeOptions(char_level=job.char_level, min_sentence_s=0.0 if job.punc_model != NO_PUNCTUATION else 1.0)
    transcript = merge(str(job.job_id), job.chunks, job.duration_s, job.language, opts, rewrite=lambda _w: words)
    # every format is written on every run: a repeated finalize rewrites identical objects
    objects = [(transcript_key(job.job_id, fmt), render(transcript, fmt).encode("utf-8"), CONTENT_TYPES[fmt])
               for fmt in sorted(set(job.formats) | {"json"})]
    put_all(objects)


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
