"""The faults: their kinds, the seeded plan of which comes when and where it aims, and the injector that lands
each one on the running fleet and its services while the workload runs, and records what it did."""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass

from tests.chaos.broker import publisher_app, read_and_flush
from tests.chaos.coverage import FAULT_KINDS, Coverage, required_cells, targets
from tests.chaos.database import IN_FLIGHT, Db, job_states
from tests.chaos.fleet import PROCESS_KINDS, Fleet
from tests.chaos.modes import Mode
from tests.fault_services import PrivatePostgres, PrivateRedis, TcpRelay, wait_port_closed

__all__ = ["FAULT_KINDS", "Fault", "Injector", "measure_recovery", "plan_faults"]


@dataclass
class Fault:
    at: float  # seconds after the chaos run started
    t_wall: float
    kind: str
    target: str | None
    found_target: bool
    states: Counter
    in_flight: list[str]
    note: str = ""
    recovery_s: float | None = None
    recovery_job: str | None = None
    length_s: float = 0.0  # an outage's length, a killed process's restart delay


@dataclass
class Planned:
    gap_s: float  # wait before it
    kind: str
    target: str  # the job phase it waits for
    length: float  # restart delay / outage length
    extra: float
    required: bool  # a coverage cell: tried again until it lands in its phase


def plan_faults(seed: int, mode: Mode) -> list[Planned]:
    """The required cells (coverage.required_cells), then further rounds and extra faults at a seeded phase
    of their kind, in a seeded order, from the seed alone."""
    rng = random.Random(seed * 104729 + 3)
    picks = [(k, p, True) for k, p in required_cells(seed, mode.every_cell)]
    picks += [(k, rng.choice(targets(k)), False) for _ in range(mode.fault_rounds - 1) for k in FAULT_KINDS]
    picks += [(k, rng.choice(targets(k)), False) for k in [rng.choice(FAULT_KINDS) for _ in range(mode.extra_faults)]]
    rng.shuffle(picks)
    plan = []
    for k, target, required in picks:
        length = {"redis:restart": rng.uniform(1, 4), "pg:restart": rng.uniform(2, 6),
                  "s3:outage": rng.uniform(3, 10)}.get(k, rng.uniform(0.5, 5.0))
        plan.append(Planned(rng.uniform(*mode.gap_s), k, target, length, rng.random(), required))
    return plan


def phases_now(db: Db, key_prefix: str) -> Counter:
    """How many jobs of a run (by idempotency-key prefix) are in each in-flight phase now."""
    return Counter(dict(db.q("SELECT state, count(*) FROM jobs WHERE state = ANY(%s) AND idempotency_key LIKE %s "
                             "GROUP BY state", (list(IN_FLIGHT), key_prefix + "%"))))


class Injector:
    """Runs the plan against one fleet and the campaign's services; keeps the record the report reads: the
    faults injected, those skipped, the coverage of (kind, phase) cells, what Redis flushes lost, and the
    publishes it added per job.

    A fault waits (up to phase_wait_s) for a job of the run in its target phase, and is injected only then.
    One that saw none is skipped, unless it is a required cell: that one goes back to the end of the queue
    and is tried again until it lands, or until ``cover_until`` (time.monotonic()). While it waits,
    ``wanted`` names its phase, so that the workload can feed jobs into it."""

    def __init__(self, seed: int, mode: Mode, fleet: Fleet, db: Db, pg: PrivatePostgres, redis: PrivateRedis,
                 relay: TcpRelay, key_prefix: str) -> None:
        self.seed, self.mode, self.fleet, self.db = seed, mode, fleet, db
        self.pg, self.redis, self.relay = pg, redis, relay
        self.key_prefix = key_prefix
        self.faults: list[Fault] = []
        self.skipped: list[str] = []
        self.flush_lost: list[dict] = []
        self.flush_targets: list[int] = []
        self.injected: dict[str, Counter] = defaultdict(Counter)
        self.plan = plan_faults(seed, mode)
        self.coverage = Coverage(sorted({(p.kind, p.target) for p in self.plan if p.required}))
        self.wanted: str | None = None
        self.left: list[Planned] = []  # planned, neither injected nor skipped when the run ended
        self.cover_until = float("inf")

    def run(self, subs, stop: threading.Event, t_start: float, workload_done=lambda: False) -> None:  # noqa: ANN001
        """Until the plan is done, or stop; it stops early once every required cell is covered and
        ``workload_done()`` (the extra faults left are reported as not injected)."""
        fleet = self.fleet
        rng = random.Random(self.seed * 15485863 + 5)
        threads: list[threading.Thread] = []
        queue = deque(self.plan)
        while queue and not stop.is_set():
            if not self.coverage.missing() and workload_done():
                break
            p = queue.popleft()
            if p.required and self.coverage.hits[(p.kind, p.target)]:
                continue  # another fault of its kind landed there already
            if time.monotonic() > self.cover_until:
                self.left.append(p)
                if p.required:
                    self.coverage.miss(p.kind, p.target, "the coverage time ran out")
                continue
            if stop.wait(p.gap_s):
                queue.appendleft(p)
                break
            what, _, who = p.kind.partition(":")
            lock = fleet.locks.get(who) if what in ("kill9", "sigterm") else None
            if lock is not None and not lock.acquire(timeout=120):
                self._not_now(queue, p, "still recovering from the previous one")
                continue
            handed_over = False  # a process fault's restart thread releases the lock once it restarted it
            try:
                handed_over = self._one_fault(subs, stop, t_start, rng, threads, p, lock, queue)
            finally:
                if lock is not None and not handed_over:
                    lock.release()
        self.wanted = None
        self.left += list(queue)
        for t in threads:
            t.join(120)

    def _not_now(self, queue: deque, p: Planned, why: str) -> None:
        if p.required:
            self.coverage.miss(p.kind, p.target, why)
            queue.append(p)
        else:
            self.skipped.append(f"{p.kind}@{p.target} ({why})")

    def _one_fault(self, subs, stop: threading.Event, t_start: float, rng: random.Random,  # noqa: ANN001
                   threads: list, p: Planned, lock: threading.Lock | None, queue: deque) -> bool:
        db, kind, target = self.db, p.kind, p.target
        # wait for a job of the run in the target phase: faults land in every phase, not only where the
        # run happens to be
        found = False
        self.wanted = target
        t_wait = time.monotonic() + self.mode.phase_wait_s
        while not found and time.monotonic() < t_wait and not stop.is_set():
            with contextlib.suppress(Exception):
                found = phases_now(db, self.key_prefix)[target] > 0
            if not found:
                time.sleep(0.05)
        self.wanted = None
        if stop.is_set():
            queue.appendleft(p)
            return False
        if not found:
            self._not_now(queue, p, f"no job {target} within {self.mode.phase_wait_s:.0f} s")
            return False
        try:
            st = job_states(db, [s.job_id for s in subs.values() if s.job_id])
        except Exception:  # noqa: BLE001
            st = {}
        states = Counter(st.values())
        states["unsubmitted"] = sum(1 for s in subs.values() if not s.job_id)
        in_flight = [j for j, v in st.items() if v in IN_FLIGHT]
        f = Fault(time.time() - t_start, time.time(), kind, target, True, states, in_flight)
        self.fleet.mark(f"+{f.at:.1f}s {kind} (target {target})")
        self.faults.append(f)
        self.coverage.hit(kind, target)
        f.length_s = p.length
        try:
            f.note = self._inject(kind, p.length, p.extra, rng, st, threads, lock, target)
            return lock is not None
        except Exception as e:  # noqa: BLE001 - an injection that fails is reported, the run goes on
            f.note = f"injection error {type(e).__name__}: {e}"
            return False

    def _inject(self, kind: str, length: float, extra: float, rng: random.Random, st: dict[str, str],
                threads: list, lock: threading.Lock | None, target: str) -> str:
        fleet = self.fleet
        what, _, who = kind.partition(":")
        if what in ("kill9", "sigterm") and who in PROCESS_KINDS:
            t0 = time.monotonic()
            note = fleet.kill(who, what, self.mode.sigterm_grace_s)
            took = time.monotonic() - t0

            def restart() -> None:
                try:
                    time.sleep(length)
                    fleet.start(who)
                    fleet.restarts[who] += 1
                finally:
                    lock.release()

            t = threading.Thread(target=restart, daemon=True)
            t.start()
            threads.append(t)
            return f"{note}" + (f" after {took:.1f} s" if what == "sigterm" else "") + f"; restarted {length:.1f} s later"
        if what == "kill9" and who.endswith("-child"):
            return fleet.kill_child(who.split("-")[0], rng)
        if kind in ("redis:restart", "pg:restart"):
            service = self.redis if kind == "redis:restart" else self.pg
            service.stop()
            time.sleep(length)
            service.start()
            return f"down {length:.1f} s"
        if kind == "redis:flush":
            lost, targets = read_and_flush(self.redis.port)
            self.flush_lost.append(lost)
            self.flush_targets.append(len(targets))
            return f"flushed {sum(lost.values())} messages ({', '.join(f'{k}={v}' for k, v in lost.items() if v)}) " \
                   f"for {len(targets)} distinct jobs/chunks"
        if kind == "s3:outage":
            self.relay.cut()
            wait_port_closed(self.relay.port)
            time.sleep(length)
            self.relay.restore()
            return f"cut {length:.1f} s"
        if kind == "dup:deliver":
            return self._duplicate(st, rng, target)
        raise ValueError(kind)

    def _duplicate(self, st: dict[str, str], rng: random.Random, target: str) -> str:
        """Publish the work of a few live (or just finished) jobs again, 1-3 times: what a redelivery,
        a publish retry or a second reconciler would do. Jobs in the target phase first."""
        from app.messaging import send_finalize, send_prepare, send_transcribe

        live = sorted(j for j, v in st.items() if v == target) or sorted(j for j, v in st.items() if v != "FAILED")
        if not live:
            return "no job to duplicate"
        picks = rng.sample(live, min(len(live), rng.randint(1, 3)))
        parts = []
        with publisher_app():
            for jid in picks:
                n = rng.randint(1, 3)
                state = st[jid]
                if state in ("QUEUED", "PREPARING"):
                    for _ in range(n):
                        send_prepare([jid])
                    self.injected[jid]["prepare"] += n
                elif state == "TRANSCRIBING":
                    chunks = [r[0] for r in self.db.q("SELECT id::text FROM chunks WHERE job_id = %s", (jid,))]
                    for _ in range(n):
                        send_transcribe(chunks)
                    self.injected[jid]["transcribe"] += n * len(chunks)
                else:
                    for _ in range(n):
                        send_finalize([jid])
                    self.injected[jid]["finalize"] += n
                parts.append(f"{jid[:8]}({state})x{n}")
        return "re-published " + " ".join(parts)

    @property
    def not_injected(self) -> int:
        """Planned faults neither injected nor skipped: the run ended before their turn."""
        return len(self.left)


def measure_recovery(faults: list[Fault], moves: dict[str, list[float]]) -> None:
    """Each fault's recovery: among the jobs in flight at its injection, the longest wait until that job's next
    progress event (never, if it had none); ``moves`` as database.progress_times gives them."""
    for f in faults:
        worst, who = 0.0, None
        for jid in f.in_flight:
            nxt = next((t for t in moves.get(jid, []) if t > f.t_wall), None)
            if nxt is None:
                worst, who = float("inf"), jid
                break
            if nxt - f.t_wall > worst:
                worst, who = nxt - f.t_wall, jid
        f.recovery_s, f.recovery_job = (worst, who) if f.in_flight else (None, None)
