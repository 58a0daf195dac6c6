"""finalize: chunk results -> one transcript in every format -> COMPLETED (+ webhook). Idempotent."""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from concurrent.futures import wait
from dataclasses import dataclass

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import select

from app import metrics
from app.catalog.postprocess import NONE as NO_PUNCTUATION
from app.catalog.postprocess import itn_applies
from app.constants import TASK_FINALIZE, pcm_key, transcript_key
from app.db.models import Chunk, ChunkState, Job, JobState, utcnow
from app.db.session import session_scope
from app.errors import PermanentError
from app.lifecycle import begin_finalize_more, complete_job, fail_job, requeue_finalize, take_finalize
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
        job = take_finalize(s, job_id, settings.max_attempts, settings.reconcile_stale_s)
        if job is None:
            return
        attempt = job.finalize_fence
        if attempt == 1 and job.transcribing_at is not None:
            # once per job: chunks planned -> the last one transcribed (and this finalize taken)
            metrics.TRANSCRIBE_SECONDS.labels(metrics.engine_of(job.options)).observe(
                max(0.0, (utcnow() - job.transcribing_at).total_seconds()))
        # Punctuation runs batched across jobs: the first finalize of a punctuated job also takes other
        # punctuated jobs that are waiting and that nobody holds, and their texts go through the model in
        # one call. Only first attempts are grouped; a job that needs another attempt (its finalize died)
        # runs alone, so whatever kills a worker is charged to its group once at most.
        mates: list[tuple[uuid.UUID, int]] = []
        punc_model = (job.options.get("punc_model") or NO_PUNCTUATION) if job is not None else NO_PUNCTUATION
        if attempt == 1 and settings.finalize_group_max > 1 and punc_model != NO_PUNCTUATION:
            mates = begin_finalize_more(s, job_id, settings.finalize_group_max - 1, settings.reconcile_stale_s,
                                        punc_model)
        # the task's own job, read on this session (the job row is in hand): its errors go to the task's
        # retry policy, as every error of its own before the lease's heartbeat starts
        own = _load_in(s, job_id, job)
    t0 = time.monotonic()
    with JobLease(job_id, JobState.FINALIZING, attempt, settings.reconcile_stale_s, settings.finalize_time_limit_s), \
            _Mates(mates, settings) as group:
        loaded = {job_id: own}
        mates_chars = 0
        for jid, _ in mates:
            # each mate's steps run under _Mates.run: whatever goes wrong is that mate's outcome alone
            if group.over_budget(t0):
                break  # the rest are given back on the way out
            mate = group.run(jid, _load, jid)
            if mate is None:
                continue
            if mates_chars + mate.text_chars > settings.finalize_group_chars_max:
                # too long to ride along: its own finalize runs it alone. Held only this moment, so its own
                # message is still to come (were it lost, the reconciler sends another): none is added, or a
                # long job would collect one from every finalize that takes it and gives it back
                group.give_back(jid, resend=False)
                continue
            mates_chars += mate.text_chars
            loaded[jid] = mate
        punctuated = punctuate_all(loaded)
        own_words = punctuated[job_id]
        if isinstance(own_words, BaseException):
            raise own_words
        _complete(job_id, attempt, own, normalize(own, own_words), settings, t0)
        for jid, fence in mates:
            if jid not in loaded or not group.holds(jid):
                continue
            if group.over_budget(t0):
                break
            if group.run(jid, _complete_mate, jid, fence, loaded[jid], punctuated[jid], settings, t0):
                group.done(jid)


class _Mates:
    """The jobs a finalize took along with its own (their leases renewed while it holds them), and what
    became of each. A mate's error is its own: a permanent one fails that mate with its reason, a transient
    one gives it back to be finalized again by its own message, and neither touches the task's own job
    or the other mates. Mates still held on the way out (the own job failed first, the budget ran out) are
    given back, not left to a lease."""

    def __init__(self, mates: list[tuple[uuid.UUID, int]], settings) -> None:  # noqa: ANN001
        self._settings = settings
        self._held = dict(mates)  # job id -> fencing token, while this task still holds the job
        self._leases = {jid: JobLease(jid, JobState.FINALIZING, fence, settings.reconcile_stale_s,
                                      settings.finalize_time_limit_s) for jid, fence in mates}

    def __enter__(self) -> "_Mates":
        for lease in self._leases.values():
            lease.__enter__()
        return self

    def __exit__(self, *_exc: object) -> None:
        for job_id in list(self._held):
            self.give_back(job_id)

    def holds(self, job_id: uuid.UUID) -> bool:
        return job_id in self._held

    def over_budget(self, t0: float) -> bool:
        """The task has run long enough: no further mate is started (its own finalize will run it)."""
        return bool(self._held) and time.monotonic() - t0 >= self._settings.finalize_group_budget_s

    def run(self, job_id: uuid.UUID, step, *args):  # noqa: ANN001, ANN202
        """``step(*args)`` for one mate; its value, or None when the step failed (the mate's outcome is
        settled here). The task's own time limit is not the mate's: it goes up, and the mates still held are
        given back."""
        try:
            return step(*args)
        except SoftTimeLimitExceeded:
            raise
        except PermanentError as e:
            self._fail(job_id, str(e))
        except TRANSIENT as e:
            log.warning("job=%s finalize (grouped) transient error %s; given back", job_id, type(e).__name__)
            self.give_back(job_id)
        except Exception as e:  # noqa: BLE001 - a bug in one job's transcript must not fail its group
            log.exception("job=%s finalize (grouped) failed unexpectedly", job_id)
            self._fail(job_id, f"finalizing the transcript failed: internal error ({type(e).__name__})")
        return None

    def done(self, job_id: uuid.UUID) -> None:
        """This task has no more business with the mate: its heartbeat stops."""
        self._held.pop(job_id, None)
        lease = self._leases.pop(job_id, None)
        if lease is not None:
            lease.__exit__(None, None, None)

    def _fail(self, job_id: uuid.UUID, reason: str) -> None:
        try:
            with session_scope() as s:
                fail_job(s, job_id, reason)
            self.done(job_id)
        except TRANSIENT:
            self.give_back(job_id)  # the database is down: its lease runs out and the reconciler takes it

    def give_back(self, job_id: uuid.UUID, resend: bool = True) -> None:
        fence = self._held.get(job_id)
        self.done(job_id)  # its heartbeat stops first, or it would renew the lease given back
        if fence is not None:
            _give_back(job_id, fence, resend)


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
    webhook: bool = False  # the job has a webhook_url: its end writes a delivery to send

    @property
    def text_chars(self) -> int:
        return sum(len(c.text) for c in self.chunks)


def _load(job_id: uuid.UUID) -> Loaded:
    with session_scope() as s:
        return _load_in(s, job_id, s.get(Job, job_id))


def _load_in(s, job_id: uuid.UUID, job: Job) -> Loaded:  # noqa: ANN001
    # the columns a transcript needs, not whole ORM rows
    rows = s.execute(select(Chunk.index, Chunk.start_ms, Chunk.end_ms, Chunk.text, Chunk.words, Chunk.language)
                     .where(Chunk.job_id == job_id, Chunk.state == ChunkState.DONE).order_by(Chunk.index)).all()
    chunks = [chunk_result(c.index, c.start_ms, c.end_ms, c.text or "", c.words, c.language) for c in rows]
    langs = Counter(c.language for c in rows if c.language)
    language = job.options.get("language") or (langs.most_common(1)[0][0] if langs else None)
    char_level = is_cjk(" ".join(c.text for c in chunks))
    return Loaded(job_id, chunks, language, job.duration_s or 0.0, job.options.get("formats") or ["json"],
                  job.options.get("punc_model") or NO_PUNCTUATION,
                  itn_applies(job.options.get("itn"), language), char_level, bool(job.webhook_url))


def restore_all(jobs: dict[uuid.UUID, Loaded]) -> dict[uuid.UUID, list[Word]]:
    """Every job's whole timeline, punctuated and normalized once (never per chunk). Raises the first
    job's error: for a group whose errors must stay apart, ``punctuate_all`` and ``normalize``."""
    out = {}
    for jid, words in punctuate_all(jobs).items():
        if isinstance(words, BaseException):
            raise words
        out[jid] = normalize(jobs[jid], words)
    return out


def punctuate_all(jobs: dict[uuid.UUID, Loaded]) -> dict[uuid.UUID, list[Word] | Exception]:
    """Every job's whole timeline, punctuated once (never per chunk): the texts of jobs with the same
    punctuation model go through it in one call. A job's value is the error it met instead, its own: a
    model that cannot be loaded is the error of the jobs that name it, and a call that fails for the
    group is made again for each text alone, so the error lands on the text that causes it."""
    t0 = time.monotonic()
    words: dict[uuid.UUID, list[Word] | Exception] = {}
    by_model: dict[str, list[uuid.UUID]] = {}
    for jid, j in jobs.items():
        try:
            words[jid] = absolute_words(j.chunks, j.duration_s)
        except SoftTimeLimitExceeded:
            raise
        except Exception as e:  # noqa: BLE001 - this job's, handed to its owner
            words[jid] = e
            continue
        if j.punc_model != NO_PUNCTUATION and words[jid] and not punctuates_itself(words[jid]):
            by_model.setdefault(j.punc_model, []).append(jid)
    for name, ids in by_model.items():
        try:
            model = get_punc_model(name)
        except SoftTimeLimitExceeded:
            raise
        except Exception as e:  # noqa: BLE001 - the error of every job that names this model
            words.update((jid, e) for jid in ids)
            continue
        try:
            words.update(zip(ids, punctuate(model, [words[jid] for jid in ids])))
        except SoftTimeLimitExceeded:
            raise
        except Exception as e:  # noqa: BLE001 - whose it is, each text alone tells
            if len(ids) == 1:
                words[ids[0]] = e
                continue
            for jid in ids:
                try:
                    words[jid] = punctuate(model, [words[jid]])[0]
                except SoftTimeLimitExceeded:
                    raise
                except Exception as e1:  # noqa: BLE001 - this job's alone
                    words[jid] = e1
    log.info("jobs=%d punctuated=%d punctuation_s=%.3f", len(jobs), sum(map(len, by_model.values())),
             time.monotonic() - t0)
    return words


def normalize(job: Loaded, words: list[Word]) -> list[Word]:
    """Inverse text normalization of one job's punctuated timeline, where its options and language ask."""
    if not (job.itn and words):
        return words
    t0 = time.monotonic()
    out = normalize_words(words, job.char_level)
    log.info("job=%s words=%d itn_s=%.3f", job.job_id, len(words), time.monotonic() - t0)
    return out


def _complete(job_id: uuid.UUID, attempt: int, job: Loaded, words: list[Word], settings, t0: float) -> None:  # noqa: ANN001
    _write_transcript(job, words)
    audio_deleted = _drop_decoded_audio(job_id)
    with session_scope() as s:
        moved = complete_job(s, job_id, job.language, attempt, audio_deleted)
        # the webhook row was written with COMPLETED; sent now rather than at the next sweep (a job without a
        # webhook has none: nothing to look for)
        due = dispatch_due(s, settings, job_id) if moved and job.webhook else []
    if moved:
        metrics.FINALIZE_SECONDS.observe(time.monotonic() - t0)
    send_deliveries(due)


def _complete_mate(job_id: uuid.UUID, fence: int, job: Loaded, words: list[Word] | Exception, settings,  # noqa: ANN001
                   t0: float) -> bool:
    """A mate's own finalize, from its punctuated words (or the error it met there) on; its errors are its
    own (``_Mates.run``)."""
    if isinstance(words, BaseException):
        raise words
    _complete(job_id, fence, job, normalize(job, words), settings, t0)
    return True


def _give_back(job_id: uuid.UUID, fence: int | None = None, resend: bool = True) -> None:
    """Release a job this task holds (while ``fence`` is still its token): its own finalize message (sent
    again with ``resend``: it may have come and gone while this task held the job), or the reconciler's
    re-send, runs it."""
    try:
        with session_scope() as s:
            released = requeue_finalize(s, job_id, fence)
        if released and resend:
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
