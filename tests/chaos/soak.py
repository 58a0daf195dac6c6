"""The soak part: the seeded workload once without faults (the baseline), then again while the injector lands
faults at seeded random moments; then every guarantee is checked against the baseline, and the faults and
what they cost are reported."""

from __future__ import annotations

import contextlib
import functools
import random
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING

from tests.chaos import checks
from tests.chaos.broker import PublishWatcher, publisher_app, reconcile_starts
from tests.chaos.database import Db, create_database, longest_gap, progress_times
from tests.chaos.diagnosis import diagnose
from tests.chaos.faults import Injector, measure_recovery, phases_now
from tests.chaos.modes import QUICK
from tests.chaos.report import fault_table
from tests.chaos.submission import (
    LiveSubs,
    Sub,
    Submitter,
    all_terminal,
    fetch_transcripts,
    idempotency_key,
    wait_terminal,
)
from tests.chaos.workload import (
    TENANTS,
    Item,
    build_workload,
    copy_item,
    feed_candidates,
    give_webhooks,
    publish_sources,
    s3_source_setting,
    tls_trust_setting,
)

if TYPE_CHECKING:
    from tests.chaos.campaign import Campaign


def _job_ids(subs: dict[int, Sub]) -> list[str]:
    return [s.job_id for s in subs.values() if s.job_id]


class Soak:
    """One soak on the campaign's services: set up, baseline, the run under faults, the verdict."""

    def __init__(self, camp: Campaign) -> None:
        self.camp, self.r, self.mode, self.seed = camp, camp.r, camp.mode, camp.seed
        self.notes: list[str] = []

    def run(self) -> None:
        self._set_up()
        self._baseline()
        self._under_faults()
        self._verdict()
        self.fleet.close()
        self.db.close()

    def _set_up(self) -> None:
        camp, r, mode = self.camp, self.r, self.mode
        t_setup = time.time()
        allow, trust = s3_source_setting(), tls_trust_setting()
        items = self.items = build_workload(mode, self.seed, camp.inputs, bool(trust and camp.sources.cafile), True,
                                            "https-untrusted" in camp.sources.servers)
        publish_sources(items, camp.sources, camp.inputs, camp.s3)
        self.n_webhooks = give_webhooks(items, self.seed, mode.webhook_share, camp.blackhole.url)
        db_url = create_database(camp.pg, "soak")
        self.db = Db(db_url)
        env = camp.env_for(db_url, "soak", {})
        self.fleet = camp.start_fleet(env, "soak", cpu_concurrency=2)
        self.client = functools.partial(camp.client, self.fleet)
        self.submitter = Submitter(self.client, self.db, self.seed, self.notes)
        self.inj = Injector(self.seed, mode, self.fleet, self.db, camp.pg, camp.redis, camp.relay,
                            idempotency_key(self.seed, "chaos", ""))
        kinds = Counter(it.kind for it in items)
        srcs = Counter("batch" if it.batch is not None else it.source for it in items)
        r.add(f"workload: {len(items)} jobs ({', '.join(f'{v} {k}' for k, v in kinds.items())}), tenants "
              f"{'/'.join(TENANTS)}; sources {', '.join(f'{k} {v}' for k, v in srcs.items())}; "
              f"{self.n_webhooks} with a webhook_url to a receiver that accepts and never answers; "
              f"s3 source allow-list setting: {allow or 'none in this tree'}; CA setting for https sources: "
              f"{trust or 'none in this tree (no https source can be trusted: only an untrusted one, meant to fail)'}")
        r.add(f"settings: {' '.join(f'{k}={v}' for k, v in mode.env.items())}; CPU worker concurrency 2, "
              f"beat in its own process; setup {time.time() - t_setup:.0f} s")

    def _baseline(self) -> None:
        """The same workload without faults: what every transcript of the chaos run must equal."""
        mode, db = self.mode, self.db
        # Celery's events from here on: publishes per job (the chaos run's), and when reconcile passes start
        self.watcher = None
        with contextlib.suppress(Exception), publisher_app() as app:
            self.watcher = PublishWatcher(app)
            self.watcher.start()
        t_b = self.t_b = time.time()
        base = self.base = self.submitter.submit_all(self.items, "base", t_b + mode.baseline_deadline_s)
        self.b_states = wait_terminal(db, base, t_b + mode.baseline_deadline_s, bad_grace_s=10.0)
        self.b_dur = time.time() - t_b
        self.t_b_end = time.time()
        self.b_tr = fetch_transcripts(self.client, base, self.b_states, self.notes)
        self.b_gap = longest_gap(db, _job_ids(base))
        self.r.add(f"baseline: {len(base)} jobs in {self.b_dur:.0f} s: {dict(Counter(self.b_states.values()))}; "
                   f"longest progress gap of a job {self.b_gap:.1f} s")

    def _under_faults(self) -> None:
        """The same workload, submitted over a window while the injector runs its plan, until every job has
        ended (or the deadline)."""
        mode, db, fleet, inj = self.mode, self.db, self.fleet, self.inj
        self.offsets = {fleet.proc(n).log: fleet.log_size(n) for n in ("cpu", "beat")}
        watcher = self.watcher
        t_c = self.t_c = time.time()
        deadline = t_c + mode.deadline_s
        inj.cover_until = time.monotonic() + mode.cover_s
        stop, submitted = threading.Event(), threading.Event()
        box: dict = {"fed": {}}
        run_items = list(self.items)  # and the copies the feeder adds

        def submitter() -> None:
            try:
                box["subs"] = self.submitter.submit_all(self.items, "chaos", deadline, mode.submit_window_s, stop)
            finally:
                submitted.set()

        def workload_done() -> bool:
            return submitted.is_set() and all_terminal(db, {**box.get("subs", {}), **box["fed"]})

        live_subs: dict[int, Sub] = {}
        th_sub = threading.Thread(target=submitter, daemon=True)
        th_sub.start()
        th_feed = threading.Thread(target=self._feed, args=(box["fed"], run_items, submitted, stop, deadline),
                                   daemon=True)
        th_feed.start()
        # the scheduler reads the ids as they are accepted
        th_f = threading.Thread(target=inj.run, daemon=True,
                                args=(LiveSubs(db, self.seed, run_items, box, live_subs), stop, t_c, workload_done))
        th_f.start()
        while th_f.is_alive() and time.time() < deadline:
            th_f.join(1.0)
        stop.set()
        th_f.join(180)
        th_sub.join(60)
        th_feed.join(120)
        started = fleet.ensure_all_up()
        if started:
            self.notes.append(f"still down when the faults stopped, started again: {', '.join(started)}")
        subs = self.subs = {**(box.get("subs") or {}), **box["fed"]}
        states = self.states = wait_terminal(db, subs, deadline)
        self.c_dur = time.time() - t_c
        self.t_end = time.time()
        if watcher:
            time.sleep(1.0)
            watcher.active = False
        with contextlib.suppress(Exception):
            fleet.wait_ready(["api"], 60)
        self.tr = fetch_transcripts(self.client, subs, states, self.notes)
        self.r.add(f"chaos run: {len(subs)} jobs in {self.c_dur:.0f} s (deadline {mode.deadline_s:.0f} s): "
                   f"{dict(Counter(states.values()))} ({len(box['fed'])} of them copies fed in while faults waited "
                   f"for a phase); {len(inj.faults)} faults"
                   + (f", {len(inj.skipped)} skipped: {', '.join(inj.skipped)}"
                      if inj.skipped else "")
                   + (f"; not injected (run ended first): {inj.not_injected}" if inj.not_injected > 0 else ""))

    def _feed(self, fed: dict[int, Sub], run_items: list[Item], submitted: threading.Event, stop: threading.Event,
              deadline: float) -> None:
        """Once the workload is submitted, while the injector waits for a phase that no job of the run is in
        or about to reach, submit copies of short recordings (as uploads): the run lasts until every
        required cell is covered, and the copies' transcripts must equal their originals' baseline ones."""
        mode, db, inj = self.mode, self.db, self.inj
        cands = feed_candidates(self.items)
        rng = random.Random(self.seed * 613 + 1)
        upstream = {"QUEUED": (), "PREPARING": ("QUEUED",), "TRANSCRIBING": ("QUEUED", "PREPARING"),
                    "FINALIZING": ("QUEUED", "PREPARING")}
        prefix = idempotency_key(self.seed, "chaos", "")
        clients = {t: self.client(t) for t in TENANTS}
        last = 0.0
        try:
            while not stop.wait(0.5):
                want = inj.wanted
                if want is None or not cands or not submitted.is_set() or len(fed) >= mode.feed_max \
                        or time.monotonic() - last < mode.feed_every_s:
                    continue
                try:
                    now = phases_now(db, prefix)
                except Exception:  # noqa: BLE001, S112 - Postgres restarting: try at the next turn
                    continue
                if now[want] or any(now[u] for u in upstream[want]) or sum(now.values()) >= mode.feed_in_flight:
                    continue
                # a burst for QUEUED: more than the CPU worker's concurrency, so one waits
                for _ in range(3 if want == "QUEUED" else 1):
                    it = copy_item(rng.choice(cands), len(run_items), rng.choice(TENANTS))
                    run_items.append(it)
                    fed[it.idx] = Sub(it)
                    self.submitter._submit_group(clients, [it], fed, "chaos", deadline)
                last = time.monotonic()
        finally:
            for c in clients.values():
                c.close()

    def _verdict(self) -> None:
        r, db, subs, inj = self.r, self.db, self.subs, self.inj
        labels = {s.job_id: s.item.label for s in subs.values() if s.job_id}
        measure_recovery(inj.faults, progress_times(db, _job_ids(subs)))
        fault_table(r, inj.faults, labels)
        r.add("")
        r.add("guarantees")
        checks.good_inputs_completed(r, db, subs, self.states)
        checks.bad_inputs_failed(r, db, subs, self.states)
        checks.transcripts_as_baseline(r, subs, self.tr, self.b_tr)
        checks.no_chunk_done_twice(r, db, subs)
        checks.completed_jobs_whole(r, db, subs)
        checks.nothing_left_moving(r, db)
        checks.finished_by_deadline(r, db, subs, self.states, self.mode.deadline_s)
        checks.no_good_input_refused(r, subs)
        checks.fault_coverage(r, inj.coverage, self.mode.every_cell)
        checks.duplicate_publishes(r, db, subs, self.offsets, self.watcher, inj, 8 if self.mode is QUICK else 15)
        checks.longest_recovery(r, inj.faults, labels, self.b_gap)
        checks.tenant_isolation(r, db, self.client, subs)
        logs = [self.fleet.proc(n).log for n in ("beat", "cpu")]
        checks.reconcile_on_schedule(r, reconcile_starts(logs), inj.faults,
                                     [(self.t_b, self.t_b_end), (self.t_c, self.t_end)],
                                     float(self.mode.env["ASRQ_RECONCILE_INTERVAL_S"]), self.camp.blackhole.accepted)
        for n in self.notes:
            r.add(f"  note: {n}")
        r.metrics.update(baseline_s=self.b_dur, chaos_s=self.c_dur, faults=len(inj.faults))
        if not r.ok:
            diagnose(r, self.fleet, db, self.camp.redis.port, subs, self.states, self.b_states, self.base)
