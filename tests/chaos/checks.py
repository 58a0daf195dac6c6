"""The guarantees, each checked on what a run left behind (its submissions, the job states at the deadline,
the transcripts, the audit table), and the numbers printed beside them: duplicate publishes, recovery,
tenant isolation."""

from __future__ import annotations

import contextlib
from collections import Counter, defaultdict
from collections.abc import Callable

import httpx

from tests.chaos.broker import PublishWatcher, reconcile_resends
from tests.chaos.database import TERMINAL, Db
from tests.chaos.diagnosis import describe_job
from tests.chaos.faults import Fault, Injector
from tests.chaos.report import Report, fmt_s
from tests.chaos.submission import Sub
from tests.chaos.workload import TENANTS

TIME_TOLERANCE_S = 0.5  # as tests/test_faults.py: a chunk's first word moves when its batch-mates differ


def _good(subs: dict[int, Sub]) -> list[Sub]:
    return [s for s in subs.values() if s.item.expect == "ok"]


def _job_of(subs: dict[int, Sub]) -> dict[str, Sub]:
    return {s.job_id: s for s in subs.values() if s.job_id}


def good_inputs_completed(r: Report, db: Db, subs: dict[int, Sub], states: dict) -> None:
    good = _good(subs)
    not_completed = [s for s in good if states.get(s.job_id) != "COMPLETED"]
    r.check("every good input COMPLETED", not not_completed,
            f"{len(good) - len(not_completed)}/{len(good)}" + "".join(
                f"\n      {s.item.label}: {describe_job(db, s, states)}" for s in not_completed))


def bad_inputs_failed(r: Report, db: Db, subs: dict[int, Sub], states: dict) -> None:
    bad = [s for s in subs.values() if s.item.expect == "fail"]
    errors = dict(db.q("SELECT id::text, coalesce(error, '') FROM jobs WHERE id = ANY(%s::uuid[])",
                       ([s.job_id for s in bad if s.job_id],))) if bad else {}
    bad_wrong = []
    for s in bad:
        if s.status == "refused":
            continue  # refused at the door with a 4xx and a reason: the best outcome
        if states.get(s.job_id) != "FAILED" or not errors.get(s.job_id):
            bad_wrong.append(s)
    r.check("every bad input FAILED with a stored reason (or refused with a 4xx)", not bad_wrong,
            f"{len(bad) - len(bad_wrong)}/{len(bad)}" + "".join(
                f"\n      {s.item.label} ({s.item.note or s.item.name}): {describe_job(db, s, states)}"
                for s in bad_wrong) + "".join(
                f"\n      {s.item.label}: refused {s.http_status} {s.detail[:100]}" for s in bad
                if s.status == "refused") + "".join(
                f"\n      {s.item.label}: FAILED: {errors.get(s.job_id, '')[:110]}" for s in bad
                if s not in bad_wrong and s.status != "refused"))


def compare_transcripts(doc: dict, ref: dict) -> tuple[str, float]:
    """('' when equal, else what differs; the largest time shift)."""
    a, b = doc.get("segments", []), ref.get("segments", [])
    shift = max([abs(x["start"] - y["start"]) for x, y in zip(a, b)] +
                [abs(x["end"] - y["end"]) for x, y in zip(a, b)] + [0.0])
    if doc.get("text") != ref.get("text"):
        return f"text differs:\n        got  {doc.get('text', '')[:160]!r}\n        want {ref.get('text', '')[:160]!r}", shift
    if [s["text"] for s in a] != [s["text"] for s in b]:
        return f"segments differ ({len(a)} vs {len(b)} segments)", shift
    if shift > TIME_TOLERANCE_S:
        return f"a segment time moved {shift:.2f} s", shift
    return "", shift


def transcripts_as_baseline(r: Report, subs: dict[int, Sub], tr: dict, b_tr: dict) -> None:
    diffs, compared, worst_dt, no_base = [], 0, 0.0, []
    for idx, doc in tr.items():
        ref = b_tr.get(idx)
        if ref is None:
            no_base.append(subs[idx].item.label)
            continue
        compared += 1
        why = compare_transcripts(doc, ref)
        if why[0]:
            diffs.append(f"{subs[idx].item.label} (job {subs[idx].job_id}): {why[0]}")
        worst_dt = max(worst_dt, why[1])
    r.check("every transcript identical to the fault-free run (texts; times within 0.5 s)",
            not diffs and not no_base and compared > 0,
            f"{compared - len(diffs)}/{compared} identical, largest time shift {worst_dt:.2f} s"
            + "".join(f"\n      {d}" for d in diffs)
            + (f"\n      no baseline transcript to compare (the baseline run did not complete them): "
               f"{', '.join(no_base)}" if no_base else ""))


def no_chunk_done_twice(r: Report, db: Db, subs: dict[int, Sub]) -> None:
    job_of = _job_of(subs)
    rows = db.q("SELECT kind, chunk_id::text, job_id::text, count(*) FROM chaos_audit WHERE "
                "job_id = ANY(%s::uuid[]) AND kind <> 'job' GROUP BY 1, 2, 3", (list(job_of),))
    done_once = sum(1 for k, _, _, n in rows if k == "chunk_done" and n == 1)
    twice = [(c, j, n) for k, c, j, n in rows if k == "chunk_done" and n > 1]
    others = Counter(k for k, *_ in rows if k != "chunk_done")
    r.check("no chunk DONE twice", not twice and not others.get("chunk_redone"),
            f"{done_once + len(twice)} chunks reached DONE, {len(twice)} of them more than once"
            + (f"; also {dict(others)}" if others else "")
            + "".join(f"\n      chunk {c} of {job_of[j].item.label} (job {j}): DONE {n} times"
                      for c, j, n in twice[:10]))


def completed_jobs_whole(r: Report, db: Db, subs: dict[int, Sub]) -> None:
    job_of = _job_of(subs)
    bad_counts = db.q(
        "SELECT j.id::text, j.chunks_total, count(c.id) FILTER (WHERE c.state = 'DONE'), count(c.id) "
        "FROM jobs j LEFT JOIN chunks c ON c.job_id = j.id WHERE j.id = ANY(%s::uuid[]) AND j.state = 'COMPLETED' "
        "GROUP BY j.id, j.chunks_total HAVING count(c.id) FILTER (WHERE c.state = 'DONE') <> coalesce(j.chunks_total, 0) "
        "OR count(c.id) <> coalesce(j.chunks_total, 0)", (list(job_of),))
    r.check("every COMPLETED job has exactly chunks_total chunks, all DONE", not bad_counts,
            "".join(f"\n      {job_of[j].item.label} (job {j}): total {t}, done {d}, rows {n}"
                    for j, t, d, n in bad_counts))


def nothing_left_moving(r: Report, db: Db) -> None:
    left = db.q("SELECT state, count(*) FROM jobs WHERE state IN ('PREPARING', 'TRANSCRIBING', 'FINALIZING', "
                "'QUEUED') GROUP BY state")
    r.check("nothing left QUEUED, PREPARING, TRANSCRIBING or FINALIZING (both runs)", not left,
            ", ".join(f"{n} {s}" for s, n in left))


def finished_by_deadline(r: Report, db: Db, subs: dict[int, Sub], states: dict, deadline_s: float) -> None:
    stuck = [s for s in subs.values() if s.job_id and states.get(s.job_id) not in TERMINAL]
    unsubmitted = [s for s in subs.values() if s.status in ("pending", "error")]
    r.check(f"every job finished before the deadline ({deadline_s:.0f} s)",
            not stuck and not unsubmitted,
            "".join(f"\n      STUCK {s.item.label}: {describe_job(db, s, states)}" for s in stuck)
            + "".join(f"\n      NOT SUBMITTED {s.item.label}: {s.detail}" for s in unsubmitted))


def no_good_input_refused(r: Report, subs: dict[int, Sub]) -> None:
    refused_good = [s for s in _good(subs) if s.status == "refused"]
    r.check("no good input refused at submission", not refused_good,
            "".join(f"\n      {s.item.label}: {s.http_status} {s.detail[:160]}" for s in refused_good))


def duplicate_publishes(r: Report, db: Db, subs: dict[int, Sub], offsets: dict, watcher: PublishWatcher | None,
                        inj: Injector, top_n: int) -> None:
    """Measured, not asserted: the reconciler's re-sends, the injected publishes, what flushes really lost,
    and per job the publishes beyond the first that Celery's task-sent events saw."""
    resent = reconcile_resends(list(offsets), offsets)
    injected = Counter()
    for c in inj.injected.values():
        injected.update(c)
    lost = sum(sum(d.values()) for d in inj.flush_lost)
    lost_distinct = sum(inj.flush_targets)
    r.add(f"  duplicate publishes: reconciler re-sent {dict(resent) or 0} (from 'reconcile re-sent' in the "
          f"cpu and beat logs); injected {dict(injected) or 0}; messages really lost at Redis flushes {lost} "
          f"({lost_distinct} distinct jobs/chunks) "
          f"(queues + unacked just before FLUSHALL; Redis restarts lose an unknown number more)")
    r.metrics.update(resent=sum(resent.values()), injected=sum(injected.values()))
    if watcher is None:
        r.add("    per job: unavailable (no task-sent events)")
        return
    ids = _job_of(subs)
    chunk_job = dict(db.q("SELECT id::text, job_id::text FROM chunks WHERE job_id = ANY(%s::uuid[]) UNION "
                          "SELECT chunk_id::text, job_id::text FROM chaos_audit WHERE chunk_id IS NOT NULL "
                          "AND job_id = ANY(%s::uuid[])", (list(ids), list(ids))))
    per_target: Counter = Counter()
    for _, task, arg, _sender in watcher.events:
        per_target[(task, arg)] += 1
    per_job: dict[str, Counter] = defaultdict(Counter)
    for (task, arg), n in per_target.items():
        jid = arg if arg in ids else chunk_job.get(arg)
        if jid in ids and n > 1:
            per_job[jid][task.split(".")[-1]] += n - 1
    total = sum(sum(c.values()) for c in per_job.values())
    r.add(f"    per job (task-sent events: publishes beyond the first of each job's prepare/finalize and of "
          f"each chunk; injected ones included): {total} in all, {len(per_job)}/{len(ids)} jobs had any")
    top = sorted(per_job.items(), key=lambda kv: -sum(kv[1].values()))
    for jid, c in top[:top_n]:
        inj_j = inj.injected.get(jid, Counter())
        r.add(f"      {ids[jid].item.label:52s} {dict(c)}" + (f"  (injected {dict(inj_j)})" if inj_j else ""))
    r.metrics["dup_publishes_observed"] = total


def longest_recovery(r: Report, faults: list[Fault], labels: dict[str, str], b_gap: float) -> None:
    rec = [(f.recovery_s, f) for f in faults if f.recovery_s is not None]
    if rec:
        worst, f = max(rec, key=lambda x: x[0])
        r.add(f"  recovery: longest {fmt_s(worst)} after {f.kind} at +{f.at:.1f} s (job {f.recovery_job}, "
              f"{labels.get(f.recovery_job, '?')}); the "
              f"fault-free run's longest progress gap of a job: {b_gap:.1f} s")
        r.metrics["longest_recovery_s"] = worst


def tenant_isolation(client: Callable[[str], httpx.Client], subs: dict[int, Sub]) -> str:
    """Up to 10 jobs asked for with another tenant's key: each must be a 404."""
    pairs = [(s.job_id, s.item.tenant) for s in subs.values() if s.job_id and s.item.batch is None][:10]
    seen = 0
    leaks = []
    for jid, tenant in pairs:
        other = next(t for t in TENANTS if t != tenant)
        with client(other) as c, contextlib.suppress(httpx.HTTPError):
            code = c.get(f"/v1/jobs/{jid}").status_code
            seen += 1
            if code != 404:
                leaks.append(f"{jid} read by {other}: {code}")
    return f"{seen} jobs asked for with another tenant's key: " + (", ".join(leaks) if leaks else "all 404")


def backlog_drained(r: Report, n: int, states: Counter, strict: int, dups: int) -> bool:
    """The backlog part's two checks; True when both held."""
    not_done = n - states.get("COMPLETED", 0)
    r.check("backlog: every job COMPLETED (the flush lost nothing)", not_done == 0,
            f"{states.get('COMPLETED', 0)}/{n}" + (f"; others {dict(states)}" if not_done else ""))
    ok_dups = strict < 0.01 * n
    r.check("backlog: duplicate publishes under 1 % of jobs", ok_dups,
            f"{strict} for {n} jobs (re-sent - distinct lost; re-sent - lost messages: {dups})")
    return not_done == 0 and ok_dups
