"""The faults: their kinds, the seeded plan of which comes when and where it aims, and the injector that lands
each one on the running fleet and its services while the workload runs, and records what it did."""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass

from tests.chaos.broker import lost_targets, publisher_app, queue_depths
from tests.chaos.database import IN_FLIGHT, Db, job_states
from tests.chaos.fleet import PROCESS_KINDS, Fleet
from tests.chaos.modes import Mode
from tests.fault_services import PrivatePostgres, PrivateRedis, TcpRelay, wait_port_closed

FAULT_KINDS = tuple(f"{sig}:{p}" for p in PROCESS_KINDS for sig in ("kill9", "sigterm")) + (
    "kill9:cpu-child", "kill9:gpu-child", "redis:restart", "redis:flush", "pg:restart", "s3:outage",
    "dup:deliver")


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


def plan_faults(seed: int, mode: Mode) -> list[tuple[float, str, str | None, float, float]]:
    """(gap before, kind, target phase, restart delay / outage length, extra) from the seed alone."""
    rng = random.Random(seed * 104729 + 3)
    kinds = [k for _ in range(mode.fault_rounds) for k in FAULT_KINDS]
    kinds += [rng.choice(FAULT_KINDS) for _ in range(mode.extra_faults)]
    rng.shuffle(kinds)
    plan = []
    for k in kinds:
        if k.endswith(("cpu", "cpu-child")):
            target = rng.choice(["PREPARING", "PREPARING", "PREPARING", "FINALIZING", "QUEUED"])
        elif k.endswith(("gpu", "gpu-child")):
            target = "TRANSCRIBING"
        elif k.endswith(("api", "beat")):
            target = rng.choice([None, "QUEUED", "TRANSCRIBING"])
        else:
            target = rng.choice(list(IN_FLIGHT))
        length = {"redis:restart": rng.uniform(1, 4), "pg:restart": rng.uniform(2, 6),
                  "s3:outage": rng.uniform(3, 10)}.get(k, rng.uniform(0.5, 5.0))
        plan.append((rng.uniform(*mode.gap_s), k, target, length, rng.random()))
    return plan


class Injector:
    """Runs the plan against one fleet and the campaign's services; keeps the record the report reads: the
    faults injected, those skipped, what Redis flushes lost, and the publishes it added per job."""

    def __init__(self, seed: int, mode: Mode, fleet: Fleet, db: Db, pg: PrivatePostgres, redis: PrivateRedis,
                 relay: TcpRelay) -> None:
        self.seed, self.mode, self.fleet, self.db = seed, mode, fleet, db
        self.pg, self.redis, self.relay = pg, redis, relay
        self.faults: list[Fault] = []
        self.skipped: list[str] = []
        self.flush_lost: list[dict] = []
        self.flush_targets: list[int] = []
        self.injected: dict[str, Counter] = defaultdict(Counter)

    def run(self, subs, stop: threading.Event, t_start: float) -> None:  # noqa: ANN001
        fleet = self.fleet
        rng = random.Random(self.seed * 15485863 + 5)
        threads: list[threading.Thread] = []
        for gap, kind, target, length, extra in plan_faults(self.seed, self.mode):
            if stop.wait(gap):
                break
            what, _, who = kind.partition(":")
            lock = fleet.locks.get(who) if what in ("kill9", "sigterm") else None
            if lock is not None and not lock.acquire(timeout=120):
                self.skipped.append(f"{kind} (still recovering from the previous one)")
                continue
            handed_over = False  # a process fault's restart thread releases the lock once it restarted it
            try:
                handed_over = self._one_fault(subs, stop, t_start, rng, threads, kind, target, length, extra, lock)
            finally:
                if lock is not None and not handed_over:
                    lock.release()
        for t in threads:
            t.join(120)

    def _one_fault(self, subs, stop: threading.Event, t_start: float, rng: random.Random,  # noqa: ANN001
                   threads: list, kind: str, target: str | None, length: float, extra: float,
                   lock: threading.Lock | None) -> bool:
        db = self.db
        # wait (briefly) for a job in the target phase: faults land in every phase, not only where the
        # run happens to be
        found = target is None
        t_wait = time.monotonic() + self.mode.phase_wait_s
        while not found and time.monotonic() < t_wait and not stop.is_set():
            with contextlib.suppress(Exception):
                found = target in job_states(db, [s.job_id for s in subs.values() if s.job_id]).values()
            if not found:
                time.sleep(0.05)
        if stop.is_set():
            return False
        try:
            st = job_states(db, [s.job_id for s in subs.values() if s.job_id])
        except Exception:  # noqa: BLE001
            st = {}
        states = Counter(st.values())
        states["unsubmitted"] = sum(1 for s in subs.values() if not s.job_id)
        in_flight = [j for j, v in st.items() if v in IN_FLIGHT]
        if not in_flight and not states["unsubmitted"] and kind != "dup:deliver":
            self.skipped.append(kind)
            return False
        f = Fault(time.time() - t_start, time.time(), kind, target, found, states, in_flight)
        self.fleet.mark(f"+{f.at:.1f}s {kind} (target {target})")
        self.faults.append(f)
        try:
            f.note = self._inject(kind, length, extra, rng, st, threads, lock)
            return lock is not None
        except Exception as e:  # noqa: BLE001 - an injection that fails is reported, the run goes on
            f.note = f"injection error {type(e).__name__}: {e}"
            return False

    def _inject(self, kind: str, length: float, extra: float, rng: random.Random, st: dict[str, str],
                threads: list, lock: threading.Lock | None) -> str:
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
            lost = queue_depths(self.redis.port)
            targets = lost_targets(self.redis.port)
            self.redis.flush()
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
            return self._duplicate(st, rng)
        raise ValueError(kind)

    def _duplicate(self, st: dict[str, str], rng: random.Random) -> str:
        """Publish the work of a few live (or just finished) jobs again, 1-3 times: what a redelivery,
        a publish retry or a second reconciler would do."""
        from app.messaging import send_finalize, send_prepare, send_transcribe

        live = sorted(j for j, v in st.items() if v != "FAILED")
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
        return len(plan_faults(self.seed, self.mode)) - len(self.faults) - len(self.skipped)


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
