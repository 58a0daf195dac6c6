"""The two sizes of a campaign: how many jobs of each kind, how many faults and how far apart, the deadlines,
and the asrq settings the fleet runs with."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mode:
    name: str
    n_short: int
    n_medium: int  # 30-120 s of clips and short pauses
    n_long: int  # minutes of clips between long silences
    long_s: tuple[float, float]
    short_max_s: float  # the longest real clip a short job may be
    medium_s: tuple[float, float]
    long_pause_s: tuple[float, float]
    n_batches: int  # POST /v1/jobs/batch calls among the URI jobs
    batch_size: int
    every_cell: bool  # coverage: every fault kind in every phase it targets, or (False) each kind once
    cover_s: float  # from the chaos run's start, missed coverage cells are tried again for this long
    feed_max: int  # copies of short recordings fed in to reach a phase a fault waits for, at most
    feed_every_s: float  # at most one feed (one job, three for QUEUED) this often
    feed_in_flight: int  # no feed while the run has this many jobs in flight
    webhook_share: float  # of the jobs, with a webhook_url to a receiver that never answers
    fault_rounds: int  # every fault kind this many times (then extra random ones)
    extra_faults: int
    gap_s: tuple[float, float]  # between faults
    phase_wait_s: float  # how long a fault waits for a job in its target phase
    submit_window_s: float  # chaos-run submissions are spread over this long
    sigterm_grace_s: float  # then SIGKILL, as an orchestrator would
    deadline_s: float  # chaos run, from its first submission
    baseline_deadline_s: float
    env: dict
    backlog_jobs: int
    backlog_stale_s: float
    backlog_interval_s: float
    backlog_deadline_s: float
    backlog_webhook_every: int  # every this many backlog jobs, one with a webhook_url that never answers
    timing_jobs: int  # timing part: recordings through two transcribe workers on a card slower than the lease
    timing_kills: int  # kill -9 of a transcribe worker mid-batch (a poison chunk, an OOM kill)
    timing_deadline_s: float


QUICK = Mode("quick", n_short=14, n_medium=2, n_long=1, long_s=(300, 360), short_max_s=20,
             medium_s=(20, 40), long_pause_s=(90, 240), n_batches=1, batch_size=4,
             every_cell=False, cover_s=240.0, feed_max=40, feed_every_s=3.0, feed_in_flight=8, webhook_share=0.5, fault_rounds=1, extra_faults=2, gap_s=(2.0, 6.0), phase_wait_s=12.0, submit_window_s=45.0,
             sigterm_grace_s=20.0, deadline_s=360.0, baseline_deadline_s=150.0,
             env={"ASRQ_RECONCILE_INTERVAL_S": "2", "ASRQ_RECONCILE_STALE_S": "6", "ASRQ_CHUNK_LEASE_S": "30",
                  "ASRQ_VISIBILITY_TIMEOUT_S": "90"},
             backlog_jobs=300, backlog_stale_s=5.0, backlog_interval_s=1.0, backlog_deadline_s=300.0,
             backlog_webhook_every=5, timing_jobs=20, timing_kills=1, timing_deadline_s=240.0)
FULL = Mode("full", n_short=200, n_medium=40, n_long=12, long_s=(300, 1200), short_max_s=60,
            medium_s=(30, 90), long_pause_s=(10.0, 60.0), n_batches=5, batch_size=12,
            every_cell=True, cover_s=2700.0, feed_max=300, feed_every_s=3.0, feed_in_flight=12, webhook_share=0.3,
            fault_rounds=4, extra_faults=12, gap_s=(5.0, 25.0), phase_wait_s=20.0, submit_window_s=600.0,
            sigterm_grace_s=60.0, deadline_s=3600.0, baseline_deadline_s=2400.0,
            env={"ASRQ_RECONCILE_INTERVAL_S": "3", "ASRQ_RECONCILE_STALE_S": "15", "ASRQ_CHUNK_LEASE_S": "90",
                 "ASRQ_VISIBILITY_TIMEOUT_S": "900"},
            backlog_jobs=2000, backlog_stale_s=20.0, backlog_interval_s=2.0, backlog_deadline_s=1800.0,
            backlog_webhook_every=5, timing_jobs=120, timing_kills=3, timing_deadline_s=900.0)
