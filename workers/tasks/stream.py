"""Transcription as a stream: one long-running consumer per transcribe process keeps the accelerator fed.

celery-batches still gathers the chunk messages (a flush every ``batch_flush_interval_s`` or
``batch_max_requests`` messages), but its task only hands them to this stream and returns, so the next
flush is gathered while batches run. Three threads:

- the feeder picks the next batch from every chunk the stream holds (across flushes: the fullest run of
  the pool sorted by length, workers/batching.fullest_batch), claims it and reads its audio while the
  batch before it runs: one batch ahead, never more;
- the engine thread charges the attempt (transcribe._start) and runs the batch, then takes the next one
  at once;
- the store thread records each batch's results while the next batch runs.
Between two batches the engine thread runs alone: the store and the feeder go on once the next batch has
started (ChunkStream._handoff).

What keeps every chunk recoverable: a chunk handed to the stream is in Postgres, PENDING or RUNNING under
a claim, and the stream's heartbeat (workers/lease.HeldChunks) keeps the PENDING ones fresh and renews the
claims, from the moment of intake until its outcome is stored. The message is acked when the task
returns, so a process that dies loses nothing but its heartbeat: the reconciler re-sends what it held
(README, "what recovers what"). A worker asked to stop (warm shutdown) finishes the running batch,
stores it, and gives back the rest at once.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field

from celery import signals
from celery_batches import Batches

from app.constants import TASK_TRANSCRIBE
from app.db.session import session_scope
from app.lifecycle import ChunkWork, open_chunks
from app.messaging import send_transcribe, try_send
from app.settings import get_settings
from workers.batching import fullest_batch, group_by
from workers.celery_app import app
from workers.lease import HeldChunks
from workers.tasks import transcribe as t

log = logging.getLogger("asrq.stream")

# a suspect (a chunk that was running when a worker died) runs alone and after fresh chunks handed to the
# stream up to this long after it, so a poison chunk does not delay a backlog, nor wait behind all of it
SUSPECT_DELAY_S = 2.0
# a chunk waits at most this long for its batch to fill while full batches of others go first
MAX_WAIT_S = 10.0


class _Spent(list):
    """Batches the engine ran, with their audio: handed to the store thread only to be dropped there."""


@dataclass
class _Held:
    work: ChunkWork
    level: int
    since: float = field(default_factory=time.monotonic)


class ChunkStream:
    def __init__(self, worker: str) -> None:
        self._t = t
        s = get_settings()
        self.worker = worker
        self.window = 4 * s.batch_max_requests  # chunks held waiting for a batch; intake blocks above it
        self.wait_fill_s = s.batch_flush_interval_s
        self._pool: dict[uuid.UUID, _Held] = {}
        self._requests: dict[uuid.UUID, list[tuple[str, float]]] = {}  # chunk -> its messages (id, intake time)
        self._inside: set[uuid.UUID] = set()  # every chunk the stream holds: waiting, claimed, running, storing
        self._cond = threading.Condition()
        self._ahead = threading.Semaphore(1)  # one batch claimed ahead of the one running
        self._ready: queue.Queue = queue.Queue()
        self._stores: queue.Queue = queue.Queue()
        self._storing: set[uuid.UUID] = set()
        self._engine_busy = False
        self._stopping = False
        # the engine thread's own: results waiting for the next batch's start, and whether the feeder still
        # waits for that start to claim the batch after it (_handoff)
        self._deferred: list[tuple] = []
        self._spent: list = []  # batches run (their audio arrays), for the store thread to drop
        self._ahead_owed = False
        self.held = HeldChunks([], s.chunk_lease_s, s.reconcile_stale_s, s.transcribe_time_limit_s)
        self.held.__enter__()
        self._threads = [threading.Thread(target=fn, name=f"asrq-stream-{name}", daemon=True)
                         for name, fn in (("feeder", self._feed), ("engine", self._run), ("store", self._store_loop))]
        for th in self._threads:
            th.start()

    # --- intake (the celery-batches task, on the worker's main thread) ---------------------------------------

    def intake(self, chunk_ids: list[str], levels: dict[str, int], request_ids: dict[str, str]) -> None:
        """Take these chunks into the stream; returns once the stream holds them (their messages may then be
        acked), waiting while it already holds a full window, so a worker takes no more than it can run soon."""
        with session_scope() as s:
            todo = open_chunks(s, [uuid.UUID(c) for c in chunk_ids])
        now = time.monotonic()
        with self._cond:
            for c in chunk_ids:
                if (rid := request_ids.get(c)) is not None:
                    self._requests.setdefault(uuid.UUID(c), []).append((rid, now))
            # a message delivered twice for a chunk the stream already holds adds nothing
            fresh = [w for w in todo if w.chunk_id not in self._inside]
            self._inside.update(w.chunk_id for w in fresh)
            gone = {uuid.UUID(c) for c in chunk_ids} - self._inside
        self._finished(gone)  # done, failed or cancelled meanwhile: nothing to run
        if not fresh:
            return
        self.held.hold([w.chunk_id for w in fresh])
        self.held.progress()
        with self._cond:
            while len(self._pool) >= self.window and not self._stopping:
                self._cond.wait(0.5)
            if not self._stopping:
                for w in fresh:
                    self._pool[w.chunk_id] = _Held(w, int(levels.get(str(w.chunk_id), 0)))
                self._cond.notify_all()
                return
        self._give_back_pending(fresh)

    # --- the feeder: plan, claim and read one batch ahead --------------------------------------------------

    def _feed(self) -> None:
        while True:
            self._ahead.acquire()
            try:
                batch = self._next_batch()
            except Exception:  # noqa: BLE001 - the feeder must outlive a bad plan: it takes nothing from the pool
                log.exception("transcribe stream: planning the next batch failed")
                self._ahead.release()
                time.sleep(1.0)
                continue
            if batch is None:
                self._ready.put(None)
                return
            try:
                claimed, audios = self._t._claim_and_read(batch, self.held)
            except Exception as e:  # noqa: BLE001 - database or storage down: the messages go again later
                log.warning("claiming a batch of %d chunks failed (%s); sending them again", len(batch), type(e).__name__)
                self._give_back_pending(batch, countdown=self._t.backoff_s(3))
                self._ahead.release()
                continue
            self._finished({w.chunk_id for w in batch} - {w.chunk_id for w in claimed})
            if claimed:
                self._ready.put((claimed, audios))
            else:
                self._ahead.release()

    def _next_batch(self) -> list[ChunkWork] | None:
        """The batch to claim next, from the lowest fair-share level held (_pick); while the accelerator is busy
        and no batch is full, the pool waits (a flush interval at most) for chunks to fill one."""
        waited_from = None
        with self._cond:
            while True:
                if self._stopping:
                    return None
                if not self._pool:
                    self._cond.wait(1.0)
                    continue
                now = time.monotonic()
                waited_from = waited_from or now
                pick = self._pick(now, may_wait=self._engine_busy and now - waited_from < self.wait_fill_s)
                if pick is not None:
                    for w in pick:
                        del self._pool[w.chunk_id]
                    self._cond.notify_all()  # room for intake
                    return pick
                self._cond.wait(max(0.001, self.wait_fill_s - (now - waited_from)))

    def _pick(self, now: float, may_wait: bool) -> list[ChunkWork] | None:
        """From the lowest level held: a suspect (a chunk that was running when a worker died; it runs alone,
        counted as handed over SUSPECT_DELAY_S later) once no fresh chunk is older; the batch around the
        chunk waiting longest once it waited MAX_WAIT_S; else the fullest full batch (most audio for the
        budget: workers/batching.fullest_batch); else, unless ``may_wait``, the batch around the oldest."""
        t = self._t
        s = get_settings()
        level = min(h.level for h in self._pool.values())
        band = [h for h in self._pool.values() if h.level == level]
        since = {h.work.chunk_id: h.since + (SUSPECT_DELAY_S if h.work.attempts > 0 else 0.0) for h in band}
        suspects = sorted((h.work for h in band if h.work.attempts > 0), key=lambda w: since[w.chunk_id])
        fresh = [h.work for h in band if h.work.attempts == 0]
        oldest = min(fresh, key=lambda w: since[w.chunk_id], default=None)
        if suspects and (oldest is None or since[suspects[0].chunk_id] <= since[oldest.chunk_id]
                         or now - since[suspects[0].chunk_id] >= MAX_WAIT_S):
            return [suspects[0]]
        engines = t.Engines()
        best: tuple[float, list[ChunkWork]] | None = None
        fallback = None
        for group in group_by(fresh, t._options_key):
            budget, cost = t._budget(group, engines)
            if oldest in group and (now - since[oldest.chunk_id] >= MAX_WAIT_S or not may_wait):
                around, _ = fullest_batch(group, lambda w: w.duration_s, budget, s.batch_max_requests, cost,
                                          holding=oldest)
                if now - since[oldest.chunk_id] >= MAX_WAIT_S:
                    return around
                fallback = around
            batch, full = fullest_batch(group, lambda w: w.duration_s, budget, s.batch_max_requests, cost)
            fill = sum(w.duration_s for w in batch) / budget
            if full and (best is None or fill > best[0]):
                best = (fill, batch)
        if best is not None:
            return best[1]
        return None if may_wait else fallback

    # --- the engine thread ---------------------------------------------------------------------------------

    def _run(self) -> None:
        t = self._t
        while True:
            try:
                item = self._ready.get_nowait()
            except queue.Empty:
                self._handoff()  # idle: the store and the feeder may have every core
                item = self._ready.get()
            self._ahead_owed = True
            if item is None:
                self._handoff()
                return
            claimed, audios = item
            with self._cond:
                self._engine_busy = True
            try:
                self.held.progress()
                if self._stopping:
                    t._give_back_quietly(claimed, "the worker stopped before running this chunk")
                    self._finished({w.chunk_id for w in claimed})
                    continue
                if any(w.attempts > 0 for w in claimed):
                    # a suspect (its worker died running it) may kill this one too: the batches before it are
                    # stored first, or an innocent batch whose results were still being stored would be
                    # charged for the suspect's crash, again and again, until it gave up
                    self._handoff()
                    self._wait_stored()
                started, audios = t._start(claimed, audios)
                self._finished({w.chunk_id for w in claimed} - {w.chunk_id for w in started})
                if started:
                    t._run_guarded(started, audios, self.worker, t.Engines(), store=self._store_later,
                                   launching=self._handoff)
                    with self._cond:
                        done = {w.chunk_id for w in started} - self._storing
                    self._finished(done)
            except Exception:  # noqa: BLE001 - the stream goes on
                # (the database went away as the attempt was charged, say): what is not being stored leaves the
                # stream, so its heartbeat stops and a later message or the lapsed lease brings it back; kept
                # inside, it would be heartbeated forever and every message for it ignored as a duplicate
                log.exception("transcribe stream: a batch of %d chunks failed", len(claimed))
                with self._cond:
                    left = [w for w in claimed if w.chunk_id in self._inside and w.chunk_id not in self._storing]
                t._give_back_quietly(left, "the batch failed before it ran")
                self._finished({w.chunk_id for w in left})
            finally:
                # its audio is freed by the store thread, once the next batch runs: dropping a batch's arrays
                # (30 MB for 24 chunks) cost this thread 2 ms of CPU between two batches (measured)
                self._spent.append(item)
                item = audios = None
                if self._ahead_owed:  # this batch never reached the engine: nothing to keep the way clear for
                    self._handoff()
                with self._cond:
                    self._engine_busy = False
                    self._cond.notify_all()

    def _handoff(self) -> None:
        """Called as the engine starts a batch (or finds none to run): the work held back since the batch
        before it ended goes ahead now, while this one runs. Between one batch's end and the next one's
        start the engine thread charges the next batch's attempt (database round trips) and should run
        alone: the store thread (the last batch's results) and the feeder (claiming and reading the batch
        after next) used to start the moment a batch ended, and ran during 96 % and 99 % of the gaps
        between batches (the feeding bench at 1,000x and 5,000x), each holding the GIL for up to the switch
        interval (5 ms) whenever the engine thread came back from a round trip."""
        if self._deferred:
            items, self._deferred = self._deferred, []
            for item in items:
                self._stores.put(item)
        if self._spent:
            spent, self._spent = _Spent(self._spent), []
            self._stores.put(spent)
        if self._ahead_owed:
            self._ahead_owed = False
            self._ahead.release()

    # --- the store thread ----------------------------------------------------------------------------------

    def _store_later(self, work: list[ChunkWork], texts: list, infer_s: float, worker: str, engine: str) -> None:
        with self._cond:
            self._storing.update(w.chunk_id for w in work)
        # handed to the store thread when the next batch starts (_handoff)
        self._deferred.append((work, texts, infer_s, worker, engine))

    def _store_loop(self) -> None:
        t = self._t
        while True:
            item = self._stores.get()
            if item is None:
                return
            if isinstance(item, _Spent):
                continue  # freed here, as the next item replaces it
            work = item[0]
            try:
                t._store_results(*item)
            except Exception as e:  # noqa: BLE001 - not the chunks' fault: given back, no attempt charged
                log.warning("results of %d chunks not stored (%s); giving them back", len(work), type(e).__name__)
                t._give_back_quietly(work, f"the results could not be stored: {type(e).__name__}")
            with self._cond:
                self._storing.difference_update(w.chunk_id for w in work)
                self._cond.notify_all()
            self._finished({w.chunk_id for w in work})

    def _wait_stored(self) -> None:
        with self._cond:
            while self._storing:
                self._cond.wait(0.5)

    # --- bookkeeping ---------------------------------------------------------------------------------------

    def _finished(self, chunk_ids: set[uuid.UUID]) -> None:
        """These chunks left the stream (stored, failed, given back, not ours): no longer heartbeated, and
        their messages are reported to the monitors (Flower) as handled."""
        if not chunk_ids:
            return
        self.held.drop(list(chunk_ids))
        with self._cond:
            self._inside.difference_update(chunk_ids)
            done = [r for c in chunk_ids for r in self._requests.pop(c, ())]
        if done:
            report_handled(done, self.worker)

    def _give_back_pending(self, work: list[ChunkWork], countdown: float | None = None) -> None:
        """Chunks held but not claimed: only their messages need sending again."""
        try_send(lambda ids: send_transcribe(ids, countdown=countdown), [w.chunk_id for w in work])
        self._finished({w.chunk_id for w in work})

    def close(self, timeout_s: float = 600.0) -> None:
        """Warm shutdown: the running batch finishes and is stored; the batch claimed ahead and every chunk
        waiting are given back (released, their messages sent again) at once."""
        with self._cond:
            self._stopping = True
            pending = [h.work for h in self._pool.values()]
            self._pool.clear()
            self._cond.notify_all()
        self._give_back_pending(pending)
        for th in self._threads[:2]:
            th.join(timeout_s)
        # a batch claimed ahead that the engine thread did not take
        while not self._ready.empty():
            item = self._ready.get_nowait()
            if item is not None:
                self._t._give_back_quietly(item[0], "the worker stopped before running this chunk")
                self._finished({w.chunk_id for w in item[0]})
        self._stores.put(None)
        self._threads[2].join(timeout_s)
        self.held.__exit__(None, None, None)


_stream: ChunkStream | None = None
_lock = threading.Lock()


def get_stream(worker: str) -> ChunkStream:
    global _stream  # noqa: PLW0603 - one stream per process, started by its first messages
    with _lock:
        if _stream is None:
            _stream = ChunkStream(worker)
        return _stream


def close_stream() -> None:
    global _stream  # noqa: PLW0603
    with _lock:
        s, _stream = _stream, None
    if s is not None:
        s.close()


# --- the Celery side: celery-batches hands each flush to the stream --------------------------------------------

_settings = get_settings()


class ReconnectSafeBatches(Batches):
    """celery-batches arms its flush timer once, on the first message. When the broker connection drops,
    the worker clears its timers and rebuilds task strategies; the old timer entry is gone but still
    looks armed, so buffered chunks would wait until a full batch arrives (measured: minutes after a
    Redis restart). A fresh strategy starts with a fresh timer."""

    def Strategy(self, task, app, consumer):  # noqa: ANN001, ANN201, N802
        if self._tref is not None:
            self._tref.cancel()
        self._tref = None
        return super().Strategy(task, app, consumer)


@app.task(name=TASK_TRANSCRIBE, base=ReconnectSafeBatches, flush_every=_settings.batch_max_requests,
          flush_interval=_settings.batch_flush_interval_s, acks_late=True)
def transcribe(requests) -> None:  # noqa: ANN001
    """Hand a flush's chunks to this process's stream (workers/tasks/stream.py) and return, so the next
    flush is gathered while batches run; returns once the stream holds them (it heartbeats them from then
    on, so their messages may be acked)."""
    chunk_ids = [r.args[0] for r in requests if r.args]
    # each message's fair-share level (app/fair_share.py): the batches of the least served tenants run first
    levels = {str(r.args[0]): int((r.delivery_info or {}).get("priority") or 0) for r in requests if r.args}
    request_ids = {str(r.args[0]): r.id for r in requests if r.args}
    worker = (requests[0].hostname if requests else None) or socket.gethostname()
    try:
        get_stream(worker).intake(chunk_ids, levels, request_ids)
    except t.TRANSIENT as e:
        # could not even read the chunks (database down): send the messages again later
        log.warning("transcribe of %d chunks deferred: %s", len(chunk_ids), type(e).__name__)
        try_send(lambda ids: send_transcribe(ids, countdown=t.backoff_s(3)), chunk_ids)
    except Exception:  # noqa: BLE001 - the messages are acked whatever happens; the reconciler re-sends
        log.exception("transcribe intake of %d chunks failed", len(chunk_ids))


def report_handled(done: list[tuple[str, float]], worker: str) -> None:
    """celery-batches runs one task for many messages and sends no per-message events, so Flower would
    show every chunk task as pending forever. Send what a plain task would, once the stream is done with
    the chunk (stored, failed or given back): task-succeeded with the time since it was handed over (the
    chunk's own outcome lives in the database; the message itself was handled)."""
    if not app.conf.worker_send_task_events or not done:
        return
    now = time.monotonic()
    try:
        with app.events.default_dispatcher(hostname=worker) as dispatcher:
            for rid, since in done:
                dispatcher.send("task-succeeded", uuid=rid, result="None", runtime=round(now - since, 3))
    except Exception as e:  # noqa: BLE001 - monitoring must never fail the work
        log.debug("task events not sent: %s", e)


@signals.worker_shutdown.connect
def _stop_stream(**_kw: object) -> None:
    # warm shutdown: the running batch finishes and is stored, the rest is given back at once
    close_stream()
