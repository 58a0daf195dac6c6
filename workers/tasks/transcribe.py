"""transcribe: a batch of chunk messages from many jobs -> batched inference -> chunk results.

celery-batches hands this task every chunk message that arrived within the flush interval (up to
``batch_max_requests``); the task hands them to this process's stream (workers/tasks/stream.py), which
plans, claims and reads the next batch while one runs, across flushes, and returns. celery-batches acks
the messages then, whatever happened, so the stream records every chunk's outcome itself: done, given
back and re-sent, or failed with its job. The pieces here (claim and read, start, run, store) are the
stream's; ``process_chunks`` runs one set of chunks to its end in the calling thread.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
from sqlalchemy.exc import DBAPIError, OperationalError

from app import metrics
from app.constants import pcm_key
from app.db.session import relax_commit, session_scope
from app.errors import ModelUnavailable, PermanentError
from app.lifecycle import (
    ChunkWork,
    claim_chunks,
    drop_chunks_of_finished,
    fail_chunks,
    live_jobs,
    open_chunks,
    record_batch,
    release_chunks,
    release_unreadable,
    save_results,
    start_chunks,
)
from app.messaging import send_finalize, send_transcribe, try_send
from app.settings import get_settings
from app.storage import ObjectNotFound, get_store
from workers.audio import ms_to_byte, pcm_to_float
from workers.batching import group_by, plan_batches, run_splitting_on_oom
from workers.engines.base import DecodeOptions, Engine, EngineOutOfMemory
from workers.engines.registry import get_engine
from workers.lease import HeldChunks
from workers.merge import stored_words
from workers.pools import ProcessPool
from workers.tasks.policy import TRANSIENT, backoff_s, transient_retry_limit

# the database failing under a result write: not the chunk's fault, so not charged to it
TRANSIENT_STORE = (OperationalError, DBAPIError)
# records one batch's results: (chunks, their texts, inference seconds, worker, engine spec)
Store = Callable[[list[ChunkWork], list, float, str, str], None]

log = logging.getLogger("asrq.transcribe")


def _options_key(w: ChunkWork) -> tuple:
    o = w.options
    return (o.get("engine"), o.get("model"), o.get("language"), tuple(o.get("hotwords") or ()), o.get("itn"))


def process_chunks(chunk_ids: list[str], worker: str, levels: dict[str, int] | None = None) -> None:
    settings = get_settings()
    with session_scope() as s:
        todo = open_chunks(s, [uuid.UUID(c) for c in chunk_ids])
    if not todo:
        return
    held = HeldChunks([w.chunk_id for w in todo], settings.chunk_lease_s, settings.reconcile_stale_s,
                      settings.transcribe_time_limit_s)
    engines = Engines()
    # held from here: loading a model (and measuring its memory on its first batch) may take a while
    with held, ThreadPoolExecutor(max_workers=1, thread_name_prefix="asrq-fetch") as pool:
        # A chunk claimed before that never finished may be what killed a worker: it runs alone, after
        # the others, so a poison chunk is charged its attempts and its batch-mates are not.
        fresh = [w for w in todo if w.attempts == 0]
        suspects = sorted((w for w in todo if w.attempts > 0), key=lambda w: w.attempts)
        level = (lambda w: (levels or {}).get(str(w.chunk_id), 0))
        batches = [b for group in group_by(fresh, _options_key) for band in group_by(group, level)
                   for b in _plan(band, engines)]
        # lowest level first (stable: within a level, the planned order); a batch holds one level only,
        # so a tenant with one job waits for the batches ahead of it in this flush, not for the whole flush
        batches.sort(key=lambda b: level(b[0]))
        batches += [[w] for w in suspects]
        # claim and fetch the next batch's audio while the current one runs on the accelerator
        pending: Future | None = pool.submit(_claim_and_read, batches[0], held)
        try:
            for n in range(len(batches)):
                claimed, audios = pending.result()
                pending = pool.submit(_claim_and_read, batches[n + 1], held) if n + 1 < len(batches) else None
                claimed, audios = _start(claimed, audios)
                if claimed:
                    _run_guarded(claimed, audios, worker, engines)
        finally:
            # an error that ends this task early must not leave the next batch claimed by nobody
            if pending is not None:
                _give_back_quietly(pending.result()[0], "the worker stopped before running this chunk")


class Engines:
    """The engines one task uses, by (engine, model): loaded (get_engine keeps them per process) or the
    ModelUnavailable that says why not, so a model that cannot load is tried once per task, not once
    for planning and again for each of its batches. Errors a retry may clear are not kept."""

    def __init__(self) -> None:
        self._got: dict[tuple[str, str], Engine | ModelUnavailable] = {}

    def get(self, o: dict) -> Engine:
        key = (o["engine"], o["model"])
        got = self._got.get(key)
        if got is None:
            try:
                got = get_engine(*key)
            except ModelUnavailable as e:
                got = e
            self._got[key] = got
        if isinstance(got, ModelUnavailable):
            raise got
        return got


def _plan(group: list[ChunkWork], engines: Engines) -> list[list[ChunkWork]]:
    """One option set's chunks -> batches, within the engine's budget: on CUDA sized from the card's
    free memory and the model's measured cost (engines/base.py), on CPU the configured one. An engine
    that cannot load is planned with the configured budget; its batches then meet the error."""
    budget, cost = _budget(group, engines)
    return plan_batches(group, lambda w: w.duration_s, budget, get_settings().batch_max_requests, cost)


def _budget(group: list[ChunkWork], engines: Engines) -> tuple[float, Callable[[ChunkWork], float]]:
    """(audio-seconds a batch of this option set may hold, what one chunk costs of them)."""
    settings = get_settings()
    budget, cost = settings.batch_audio_s, (lambda w: w.duration_s)
    try:
        engine = engines.get(group[0].options)
        budget, padded = engine.batch_plan(settings.batch_audio_s, settings.gpu_memory_fraction,
                                           settings.batch_max_requests)
        cost = (lambda w: padded(w.duration_s))
    except Exception as e:  # noqa: BLE001 - met again, and handled, when its batch runs
        log.debug("planning with the configured budget: %s", type(e).__name__)
    return budget, cost


def _claim_and_read(batch: list[ChunkWork],
                    held: HeldChunks | None = None) -> tuple[list[ChunkWork], list[np.ndarray | Exception]]:
    """Claim a batch ahead of its turn and read its audio. The claim is heartbeated from the moment it
    exists (a batch ahead of it may run longer than the chunk lease) and charges no attempt: that is
    counted when the batch's turn comes (_start)."""
    settings = get_settings()
    with session_scope() as s:
        relax_commit(s)
        claimed, exhausted = claim_chunks(s, [w.chunk_id for w in batch], settings.chunk_lease_s,
                                          settings.max_attempts, options={w.job_id: w.options for w in batch},
                                          charge=False)
        if held is not None and claimed:
            held.add_claim(claimed[0].claim_id, [w.chunk_id for w in claimed])
        if exhausted:
            fail_chunks(s, exhausted, f"gave up after {settings.max_attempts} attempts (the worker died or "
                                      "timed out on this audio each time)")
    return claimed, _read_all(claimed)


def _start(claimed: list[ChunkWork],
           audios: list[np.ndarray | Exception]) -> tuple[list[ChunkWork], list[np.ndarray | Exception]]:
    """A batch's turn: charge an attempt to each chunk whose audio was read (an unreadable one is given
    back uncharged), committed before the engine runs. A chunk whose claim was lost meanwhile (taken
    over, its job ended) is dropped: it must not run twice."""
    readable = [w for w, a in zip(claimed, audios) if not isinstance(a, Exception)]
    if not readable:
        return claimed, audios
    with session_scope() as s:
        relax_commit(s)
        started = {w.chunk_id: w for w in start_chunks(s, readable, get_settings().chunk_lease_s)}
    for w in started.values():
        metrics.CHUNK_ATTEMPTS.labels(metrics.engine_of(w.options)).inc()
    if len(started) < len(readable):
        log.warning("%d claimed chunks were taken over before their turn; not running them",
                    len(readable) - len(started))
    keep = [(started.get(w.chunk_id, w), a) for w, a in zip(claimed, audios)
            if isinstance(a, Exception) or w.chunk_id in started]
    return [w for w, _ in keep], [a for _, a in keep]


# ranged GETs of one batch's chunks run side by side (boto3's client is thread-safe; its pool holds 10
# connections): a batch's audio arrives in about the time of its slowest read, not of all of them in a row
READ_THREADS = 8
_READS = ProcessPool(READ_THREADS, "asrq-read")


def _read_all(work: list[ChunkWork]) -> list[np.ndarray | Exception]:
    """Every chunk's audio, in order; a chunk whose read failed gets its exception in its place."""
    if len(work) <= 1:
        return [_read_one(w) for w in work]
    return list(_READS.get().map(_read_one, work))


def _read_one(w: ChunkWork) -> np.ndarray | Exception:
    try:
        return pcm_to_float(get_store().get_range(pcm_key(w.job_id), ms_to_byte(w.start_ms), ms_to_byte(w.end_ms)))
    except Exception as e:  # noqa: BLE001 - returned and handled per chunk by the caller
        return e


def _give_back_quietly(work: list[ChunkWork], reason: str) -> None:
    """Release claimed chunks and send their messages again; if even that fails (database down), their
    lease runs out and the reconciler sends them again."""
    if not work:
        return
    try:
        with session_scope() as s:
            release_chunks(s, work, reason)
        try_send(lambda ids: send_transcribe(ids, countdown=backoff_s(1)), [w.chunk_id for w in work])
    except Exception as e:  # noqa: BLE001
        log.warning("could not give back %d chunks (%s); their lease will expire", len(work), type(e).__name__)


def _run_guarded(batch: list[ChunkWork], audios: list[np.ndarray | Exception], worker: str,
                 engines: Engines | None = None, store: Store | None = None,
                 launching: Callable[[], None] | None = None) -> None:
    """One batch's outcome is recorded whatever goes wrong: a bug or an outage while handling it gives
    its chunks back instead of leaving them claimed until their lease ends. ``store`` records a batch's
    results (default: at once, here; the stream hands them to a thread so the next batch starts)."""
    try:
        _run_batch(batch, audios, worker, engines or Engines(), store or _store_results, launching)
    except Exception as e:  # noqa: BLE001
        log.warning("batch of %d chunks could not be handled (%s); giving it back", len(batch), type(e).__name__,
                    exc_info=not isinstance(e, TRANSIENT))
        _give_back_quietly(batch, f"the batch could not be handled: {type(e).__name__}")


def _run_batch(batch: list[ChunkWork], audios: list[np.ndarray | Exception], worker: str,
               engines: Engines, store: Store | None = None, launching: Callable[[], None] | None = None) -> None:
    store = store or _store_results
    settings = get_settings()
    ok = [(w, a) for w, a in zip(batch, audios) if not isinstance(a, Exception)]
    missing = [w for w, a in zip(batch, audios) if isinstance(a, ObjectNotFound)]
    unreadable = [(w, a) for w, a in zip(batch, audios)
                  if isinstance(a, Exception) and not isinstance(a, ObjectNotFound)]
    with session_scope() as s:
        # a job that ended while its chunk was read (failed by another chunk, cancelled) has its audio
        # deleted: that is its end, not this chunk's failure; for a live job the audio is really lost
        live = live_jobs(s, {w.job_id for w in missing})
        drop_chunks_of_finished(s, [w for w in missing if w.job_id not in live],
                                "the job finished before this chunk ran")
        fail_chunks(s, [w for w in missing if w.job_id in live], "the prepared audio is missing from storage")
    if unreadable:
        _retry_unreadable([w for w, _ in unreadable], unreadable[0][1])
    if not ok:
        return
    o = ok[0][0].options
    try:
        engine = engines.get(o)
    except ModelUnavailable as e:
        # every chunk of a batch names the same model (batches are grouped by options): only the jobs
        # that asked for this model fail, at once, with the reason; nobody else is charged
        log.warning("model %s/%s cannot be loaded: %s", o["engine"], o["model"], e)
        with session_scope() as s:
            fail_chunks(s, [w for w, _ in ok], str(e))
        return
    if o.get("hotwords") and not engine.supports_hotwords:
        # the API refuses this where the model's folder tells (app/catalog/hotwords.py); an engine it
        # cannot judge says so once loaded, and the job fails rather than silently ignore its hotwords
        with session_scope() as s:
            fail_chunks(s, [w for w, _ in ok], f"model {o['model']!r} of engine {o['engine']!r} does not "
                                               "support hotwords; send the job without them or name a model that does")
        return
    options = DecodeOptions(language=o.get("language"), hotwords=tuple(o.get("hotwords") or ()), itn=o.get("itn"))

    def infer(pairs: list[tuple[ChunkWork, np.ndarray]]) -> list:
        if launching is not None:
            launching()
        t0 = time.monotonic()
        texts = engine.transcribe_batch([a for _, a in pairs], options)
        store([w for w, _ in pairs], texts, time.monotonic() - t0, worker, str(engine.spec))
        return texts

    try:
        run_splitting_on_oom(infer, ok, _is_oom)
    except TRANSIENT_STORE as e:
        raise e  # storing the results failed (database down): _run_guarded gives the chunks back
    except Exception as e:  # noqa: BLE001
        if len(ok) > 1:
            # one bad chunk must not sink its batch-mates: retry each alone to isolate it
            log.warning("batch of %d failed (%s); retrying chunks one by one", len(ok), type(e).__name__)
            for pair in ok:
                _run_guarded([pair[0]], [pair[1]], worker, engines, store, launching)
            return
        w = ok[0][0]
        reason = str(e) if isinstance(e, PermanentError) else f"inference failed: {type(e).__name__}"
        log.warning("job=%s chunk=%d attempt %d failed: %s", w.job_id, w.index, w.attempts, reason)
        with session_scope() as s:
            if w.attempts >= settings.max_attempts or isinstance(e, PermanentError):
                fail_chunks(s, [w], reason)
                return
            release_chunks(s, [w], reason)
        try_send(lambda ids: send_transcribe(ids, countdown=backoff_s(w.attempts)), [w.chunk_id])


def _retry_unreadable(work: list[ChunkWork], error: Exception) -> None:
    """Storage is down or flaky: not the audio's fault, so no attempt is charged; retried with backoff
    until the outage has lasted too long, then the job fails with the reason."""
    reason = f"the prepared audio could not be read from storage ({type(error).__name__})"
    limit = transient_retry_limit()
    with session_scope() as s:
        failures = release_unreadable(s, work, reason, limit, charged=False)
    retry = [w for w in work if failures.get(w.chunk_id, 0) < limit]
    for w in retry:
        log.warning("job=%s chunk=%d %s, retry %d", w.job_id, w.index, reason, failures.get(w.chunk_id, 0))
    # one publish per backoff step, not one per chunk
    for group in group_by(retry, lambda w: failures.get(w.chunk_id, 0)):
        n = failures.get(group[0].chunk_id, 0)
        try_send(lambda ids, n=n: send_transcribe(ids, countdown=backoff_s(n)), [w.chunk_id for w in group])


def _is_oom(e: Exception) -> bool:
    if isinstance(e, EngineOutOfMemory):
        log.warning("out of memory on a batch (%s); halving it", e)
        return True
    return False


def _store_results(work: list[ChunkWork], texts: list, infer_s: float, worker: str, engine: str) -> None:
    with session_scope() as s:
        batch_id = record_batch(s, worker, engine, work, infer_s)
        finished = save_results(
            s, batch_id,
            [(w, t.text, stored_words(t.words, t.emotion, t.event), t.language) for w, t in zip(work, texts)],
            infer_s,
        )
    audio_s = sum(w.duration_s for w in work)
    log.info("batch=%s worker=%s chunks=%d jobs=%d audio_s=%.1f infer_s=%.2f", batch_id, worker, len(work),
             len({w.job_id for w in work}), audio_s, infer_s)
    # labelled by engine name, as the job counters are (the spec also names the model)
    metrics.observe_batch(worker, metrics.engine_of(work[0].options) if work else engine, len(work), audio_s, infer_s)
    try_send(send_finalize, finished)
