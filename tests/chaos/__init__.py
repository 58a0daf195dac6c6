"""Chaos soak: a seeded, randomized fault campaign over the real stack (issue 9).

    python -m tests.chaos --seed N [--quick] [--part soak|timing|backlog|all] [--workdir DIR]

Three parts, on services this process owns (a private Postgres cluster and Redis server, moto S3 behind a
TCP relay, a loopback HTTP/HTTPS server for URI sources) and the real asrq processes:

soak     A seeded workload (uploads, http/https/s3 URIs, one or more POST /v1/jobs/batch, several tenants,
         bad inputs meant to fail) runs once without faults (the baseline), then again while a scheduler
         injects seeded faults at random moments: kill -9 and SIGTERM of every process kind (API, CPU
         prepare/finalize worker, transcribe worker, beat), kill -9 of one worker child, Redis restart and
         flush, Postgres restart, S3 outage, duplicate deliveries. Killed processes come back after a short
         random delay. A fault waits for a job of the run in its target phase and lands only then; the
         cells (fault kind x phase it targets: coverage.py) still missed go round again, and a feeder submits
         copies of short recordings into the phase a fault waits for, until every required cell is hit
         (make chaos: every cell; quick: every kind once, in a seeded one of its phases) or cover_s passes.
         Half the jobs (quick) carry a webhook_url to a receiver that accepts and never answers. Then it
         checks, and prints:
           - every good job COMPLETED, every bad input FAILED with a stored reason (or refused with a 4xx);
           - every transcript equal to the baseline's (text and segment texts identical; times within 0.5 s);
           - no chunk DONE twice (a Postgres trigger logs every transition into DONE into an audit table);
           - nothing left PREPARING, TRANSCRIBING or FINALIZING;
           - everything finished before a hard deadline (else: STUCK, with state, chunks and logs);
           - every required coverage cell hit (the matrix is printed);
           - no job, listing or bulk status readable with another tenant's key;
           - each job's prepare/finalize and each chunk published at most once, plus the injected copies,
             plus a bounded number for each fault during its job's life (Celery's task-sent events);
           - reconcile passes starting at least every max(10 s, 5 intervals) while webhooks blackhole,
             in the baseline and the chaos run (waits with the beat or Redis down excused);
         and reports the reconciler's re-sends, the longest recovery time, and the faults by kind and job
         state at injection.
timing   Issue 17, findings 1 and 2: jobs on the bench's simulated card (the `sim` engine) through two
         transcribe workers, every batch longer than a 3 s chunk lease, one worker killed mid-batch; a
         quarter of the jobs name a punctuation model the API has and the workers do not, among jobs with
         an installed one. Checks: the audio of every batch the card began equals the chunks' audio plus
         the batches killed mid-way (inference never ran twice); the chunks' attempts add up to the runs
         begun (a batch claimed ahead is not charged for a death before its turn); only the missing-model
         jobs FAILED, each with the error naming its own model. tests/chaos/HOLES.md: the fixes whose
         revert the soak catches.
backlog  Finding 4: N jobs in one POST /v1/jobs/batch drain through one CPU worker with a short
         reconcile_stale_s; Redis is flushed half-way. duplicates, per job or chunk from task-sent events:
         publishes beyond the first, less one if the flush lost its message (read in the FLUSHALL's own
         MULTI/EXEC); never less than re-sends - distinct targets lost. Target: under 1 % of the jobs, and
         every job COMPLETED.

Recovery time of a fault: among the jobs not finished when it was injected, the longest wait from the
injection to that job's next progress event (a job state change or one of its chunks reaching DONE, both
recorded by the audit triggers with the database clock). It includes ordinary queueing, so the report
prints the baseline's longest progress gap beside it for scale.

The exit status is 0 only when every guarantee held. The quick mode (CI, tests/test_chaos.py) asserts
nothing that depends on timing except the overall deadline.

Modules, in the order a campaign uses them:
    modes.py       the quick and full sizes (jobs, faults, deadlines, settings)
    workload.py    the seeded recordings and bad inputs (Item), and the servers of http(s)/s3 sources
    database.py    the campaign's Postgres connection, the audit triggers, job states and progress times
    fleet.py       the asrq processes (API, CPU worker, transcribe worker, beat): start, kill, restart
    submission.py  submitting through the API (single, batch, retried), waiting, reading transcripts
    broker.py      what Redis holds, Celery's task-sent events, the reconciler's re-sends
    coverage.py    the fault kinds, the phases each targets, the required cells and the coverage matrix
    faults.py      the seeded plan, the injector and its record, recovery times
    soak.py        the soak part: baseline, the run under faults, the verdict
    timing.py      the timing part and its checks
    backlog.py     the backlog part
    checks.py      each guarantee's check, and the measurements printed beside them
    report.py      Report (lines, checks, metrics), the fault table
    diagnosis.py   what a failed run prints about the jobs that went wrong
    campaign.py    the services a campaign owns, and run_campaign
"""

from tests.chaos.campaign import run_campaign
from tests.chaos.report import Check, Report

__all__ = ["Check", "Report", "run_campaign"]
