"""The soak part: the seeded workload once without faults (the baseline), then again while the injector lands
faults at seeded random moments; then every guarantee is checked against the baseline, and the faults and
what they cost are reported."""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING

from tests.chaos import checks
from tests.chaos.broker import PublishWatcher, publisher_app
from tests.chaos.database import Db, create_database, longest_gap, progress_times
from tests.chaos.diagnosis import diagnose
from tests.chaos.faults import Injector, measure_recovery
from tests.chaos.modes import QUICK
from tests.chaos.report import fault_table
from tests.chaos.submission import LiveSubs, Sub, Submitter, all_terminal, fetch_transcripts, wait_terminal
from tests.chaos.workload import TENANTS, build_workload, publish_sources, s3_source_setting, tls_trust_setting

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
        db_url = create_database(camp.pg, "soak")
        self.db = Db(db_url)
        env = camp.env_for(db_url, "soak", {})
        self.fleet = camp.start_fleet(env, "soak", cpu_concurrency=2)
        self.client = functools.partial(camp.client, self.fleet)
        self.submitter = Submitter(self.client, self.db, self.seed, self.notes)
        self.inj = Injector(self.seed, mode, self.fleet, self.db, camp.pg, camp.redis, camp.relay)
        kinds = Counter(it.kind for it in items)
        srcs = Counter("batch" if it.batch is not None else it.source for it in items)
        r.add(f"workload: {len(items)} jobs ({', '.join(f'{v} {k}' for k, v in kinds.items())}), tenants "
              f"{'/'.join(TENANTS)}; sources {', '.join(f'{k} {v}' for k, v in srcs.items())}; "
              f"s3 source allow-list setting: {allow or 'none in this tree'}; CA setting for https sources: "
              f"{trust or 'none in this tree (no https source can be trusted: only an untrusted one, meant to fail)'}")
        r.add(f"settings: {' '.join(f'{k}={v}' for k, v in mode.env.items())}; CPU worker concurrency 2, "
              f"beat in its own process; setup {time.time() - t_setup:.0f} s")

    def _baseline(self) -> None:
        """The same workload without faults: what every transcript of the chaos run must equal."""
        mode, db = self.mode, self.db
        t_b = time.time()
        base = self.base = self.submitter.submit_all(self.items, "base", t_b + mode.baseline_deadline_s)
        self.b_states = wait_terminal(db, base, t_b + mode.baseline_deadline_s, bad_grace_s=10.0)
        self.b_dur = time.time() - t_b
        self.b_tr = fetch_transcripts(self.client, base, self.b_states, self.notes)
        self.b_gap = longest_gap(db, _job_ids(base))
        self.r.add(f"baseline: {len(base)} jobs in {self.b_dur:.0f} s: {dict(Counter(self.b_states.values()))}; "
                   f"longest progress gap of a job {self.b_gap:.1f} s")

    def _under_faults(self) -> None:
        """The same workload, submitted over a window while the injector runs its plan, until every job has
        ended (or the deadline)."""
        mode, db, fleet, inj = self.mode, self.db, self.fleet, self.inj
        self.offsets = {fleet.proc(n).log: fleet.log_size(n) for n in ("cpu", "beat")}
        watcher = self.watcher = None
        with contextlib.suppress(Exception), publisher_app() as app:
            watcher = self.watcher = PublishWatcher(app)
            watcher.start()
        t_c = time.time()
        deadline = t_c + mode.deadline_s
        stop, submitted = threading.Event(), threading.Event()
        box: dict = {}

        def submitter() -> None:
            try:
                box["subs"] = self.submitter.submit_all(self.items, "chaos", deadline, mode.submit_window_s, stop)
            finally:
                submitted.set()

        live_subs: dict[int, Sub] = {}
        th_sub = threading.Thread(target=submitter, daemon=True)
        th_sub.start()
        # the scheduler reads the ids as they are accepted
        th_f = threading.Thread(target=inj.run, args=(LiveSubs(db, self.seed, self.items, box, live_subs), stop, t_c),
                                daemon=True)
        th_f.start()
        while th_f.is_alive() and time.time() < deadline:
            th_f.join(1.0)
            if submitted.is_set() and all_terminal(db, box.get("subs", {})):
                break
        stop.set()
        th_f.join(180)
        th_sub.join(60)
        started = fleet.ensure_all_up()
        if started:
            self.notes.append(f"still down when the faults stopped, started again: {', '.join(started)}")
        subs = self.subs = box.get("subs") or {}
        states = self.states = wait_terminal(db, subs, deadline)
        self.c_dur = time.time() - t_c
        if watcher:
            time.sleep(1.0)
            watcher.active = False
        with contextlib.suppress(Exception):
            fleet.wait_ready(["api"], 60)
        self.tr = fetch_transcripts(self.client, subs, states, self.notes)
        self.r.add(f"chaos run: {len(subs)} jobs in {self.c_dur:.0f} s (deadline {mode.deadline_s:.0f} s): "
                   f"{dict(Counter(states.values()))}; {len(inj.faults)} faults"
                   + (f", {len(inj.skipped)} not injected (nothing left in flight): {', '.join(inj.skipped)}"
                      if inj.skipped else "")
                   + (f"; not injected (run ended first): {inj.not_injected}" if inj.not_injected > 0 else ""))

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
        checks.duplicate_publishes(r, db, subs, self.offsets, self.watcher, inj, 8 if self.mode is QUICK else 15)
        checks.longest_recovery(r, inj.faults, labels, self.b_gap)
        r.add(f"  tenant isolation: {checks.tenant_isolation(self.client, subs)}")
        for n in self.notes:
            r.add(f"  note: {n}")
        r.metrics.update(baseline_s=self.b_dur, chaos_s=self.c_dur, faults=len(inj.faults))
        if not r.ok:
            diagnose(r, self.fleet, db, self.camp.redis.port, subs, self.states, self.b_states, self.base)
