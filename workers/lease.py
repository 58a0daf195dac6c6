"""Heartbeats of work in hand: the lease a worker holds on a job while it prepares or finalizes it, and
the chunks a transcribe worker has been handed but not yet claimed. Each runs on a thread.

A thread, not calls sprinkled through the work: every phase (download, decode, upload of the PCM,
VAD, a long batch ahead in the same task) keeps the heartbeat going, however long it blocks, and the
heartbeat stops the moment the process dies, whatever kills it (SIGKILL, OOM killer, time limit,
lost host). What the reconciler does with a silent item is in workers/tasks/reconcile.py.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable

from app.db.models import JobState
from app.db.session import relax_commit, session_scope
from app.lifecycle import renew_job_lease, touch_held

log = logging.getLogger("asrq.lease")


class Heartbeat:
    """Calls ``beat`` every ``every_s`` until stopped, until ``beat`` returns False, or for at most
    ``max_hold_s``: past the task's own time limit the work is hung, not slow, and even a pool that
    cannot enforce time limits must then let the work go to another worker."""

    def __init__(self, name: str, every_s: float, max_hold_s: float, beat: Callable[[], bool]) -> None:
        self.every_s, self.max_hold_s, self._beat_fn = every_s, max_hold_s, beat
        self.stopped_by_beat = False
        self._deadline = time.monotonic() + max_hold_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._deadline = time.monotonic() + self.max_hold_s
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def progress(self) -> None:
        """The work moved on (a long-running holder began its next piece): ``max_hold_s`` counts from now.
        A holder silent past it gets no beats until it moves again."""
        self._deadline = time.monotonic() + self.max_hold_s

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            if time.monotonic() > self._deadline:
                continue  # hung: let the leases run out
            try:
                if not self._beat_fn():
                    self.stopped_by_beat = True
                    return
            except Exception as e:  # noqa: BLE001 - the next beat tries again; the lease bounds the damage
                log.warning("%s: heartbeat failed: %s", self._thread.name, type(e).__name__)


class JobLease(Heartbeat):
    """Renews a PREPARING or FINALIZING job's lease four times per lease (one failed beat does not
    lose it), while the job's fencing token is still ``fence``. ``lost`` turns True when the job was
    cancelled, failed or taken over."""

    def __init__(self, job_id: uuid.UUID, state: JobState, fence: int, lease_s: float, max_hold_s: float) -> None:
        def renew() -> bool:
            with session_scope() as s:
                return renew_job_lease(s, job_id, state, fence, lease_s)

        super().__init__(f"asrq-lease-{job_id}", lease_s / 4, max_hold_s, renew)

    @property
    def lost(self) -> bool:
        return self.stopped_by_beat


class HeldChunks(Heartbeat):
    """The chunks a transcribe task holds: those it was handed and has not claimed yet are kept fresh
    (a batch ahead of them may run for minutes), so the reconciler does not take them for lost; those
    it claimed have their lease renewed from the moment of the claim (add_claim), including a batch
    claimed ahead of its turn while the one before it runs, so a short lease still hands a dead
    worker's chunks on quickly without taking them from a slow, live one."""

    def __init__(self, chunk_ids: list[uuid.UUID], lease_s: float, stale_s: float, max_hold_s: float) -> None:
        self.claims: dict[uuid.UUID, set[uuid.UUID] | None] = {}  # claim id -> its chunks (None: not told)
        self.chunk_ids: set[uuid.UUID] = set(chunk_ids)
        self._lock = threading.Lock()

        def beat() -> bool:
            with self._lock:
                claims, ids = set(self.claims), list(self.chunk_ids)
            if ids:
                with session_scope() as s:
                    relax_commit(s)
                    touch_held(s, ids, claims, lease_s)
            return True

        # four beats per lease and per stale period: the reconciler must never see a held chunk as still
        super().__init__("asrq-held-chunks", min(lease_s, stale_s) / 4, max_hold_s, beat)

    def __enter__(self) -> "HeldChunks":
        # at once, not a quarter period later: the chunks may already look still to the reconciler
        try:
            self._beat_fn()
        except Exception as e:  # noqa: BLE001 - the thread's beats retry
            log.warning("held chunks: first heartbeat failed: %s", type(e).__name__)
        super().__enter__()
        return self

    def add_claim(self, claim_id: uuid.UUID | None, chunk_ids: list[uuid.UUID] | None = None) -> None:
        if claim_id is not None:
            with self._lock:
                self.claims[claim_id] = set(chunk_ids) if chunk_ids is not None else None

    def hold(self, chunk_ids: list[uuid.UUID]) -> None:
        """More chunks handed to this holder (a long-running consumer's next messages)."""
        with self._lock:
            self.chunk_ids.update(chunk_ids)

    def drop(self, chunk_ids: list[uuid.UUID]) -> None:
        """Chunks this holder is done with (stored, failed or given back): no longer touched; a claim
        whose chunks are all dropped is forgotten."""
        gone = set(chunk_ids)
        with self._lock:
            self.chunk_ids -= gone
            for claim, ids in list(self.claims.items()):
                if ids is not None:
                    ids -= gone
                    if not ids:
                        del self.claims[claim]
