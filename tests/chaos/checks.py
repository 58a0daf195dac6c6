"""The guarantees, each checked on what a run left behind (its submissions, the job states at the deadline,
the transcripts, the audit table), and the numbers printed beside them: duplicate publishes, recovery,
tenant isolation."""

from __future__ import annotations

import contextlib
import math
from collections import Counter, defaultdict
from collections.abc import Callable

import httpx

from tests.chaos.broker import PublishWatcher, reconcile_resends
from tests.chaos.coverage import Coverage
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
        base = subs[idx].item.base
        ref = b_tr.get(idx if base is None else base)
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
    _duplicates_bounded(r, db, ids, per_target, chunk_job, inj)


def fault_allowance(f: Fault) -> int:
    """The most publishes one fault may add to one job's prepare or finalize, or to one chunk: an outage,
    its task's retries while it lasts (backoff 1, 2, 4 ... s), one after it, and one reconciler re-send; any
    other fault, one give-back or retry and one reconciler re-send. A duplicate delivery adds none here
    (its publishes are counted apart); killing the beat loses no message."""
    if f.kind == "dup:deliver" or f.kind.endswith(":beat"):
        return 0
    if f.kind in ("redis:restart", "pg:restart", "s3:outage"):
        return math.ceil(math.log2(f.length_s + 1)) + 2
    return 2


def _duplicates_bounded(r: Report, db: Db, ids: dict[str, Sub], per_target: Counter, chunk_job: dict[str, str],
                        inj: Injector) -> None:
    """Each job's prepare and finalize, and each chunk, is published once, plus what was injected, plus at
    most fault_allowance for each fault injected during its job's life (from a minute before its creation,
    for an outage or restart already under way, to its end). Events published while Redis was down are not
    seen, so the count is a lower bound: the check never fails for a publish it missed."""
    life = {j: (float(a), float(b)) for j, a, b in db.q(
        "SELECT job_id::text, extract(epoch from min(at)), extract(epoch from max(at)) FROM chaos_audit "
        "WHERE kind = 'job' AND job_id = ANY(%s::uuid[]) GROUP BY 1", (list(ids),))}
    over, worst = [], (0, None)
    for (task, arg), n in per_target.items():
        jid = arg if arg in ids else chunk_job.get(arg)
        if jid not in ids or jid not in life:
            continue
        step = task.split(".")[-1]
        born, ended = life[jid]
        allowed = sum(fault_allowance(f) for f in inj.faults if born - 60 <= f.t_wall <= ended)
        # injected publishes are counted per job and step; a chunk's share is all of its job's transcribe ones
        # divided by its chunks, which the injector sent together
        extra = n - 1 - _injected_for(inj, jid, step, arg, chunk_job)
        if extra > allowed:
            over.append(f"{ids[jid].item.label}: {step} {arg[:8]} published {n} times, {extra} beyond the first "
                        f"and the injected ones; its job's faults allow {allowed}")
        if extra > 0 and (worst[1] is None or extra - allowed > worst[0]):
            worst = (extra - allowed, f"{extra} extra for {step} {arg[:8]} of {ids[jid].item.label}, {allowed} allowed")
    r.check("duplicate publishes within what the faults explain", not over,
            (f"closest to its bound: {worst[1]}" if worst[1] else "none beyond the first and the injected ones")
            + "".join(f"\n      {x}" for x in over[:15]))


def _injected_for(inj: Injector, jid: str, step: str, arg: str, chunk_job: dict[str, str]) -> int:
    c = inj.injected.get(jid, Counter())
    if step != "transcribe":
        return c.get(step, 0)
    chunks = sum(1 for v in chunk_job.values() if v == jid) or 1
    return -(-c.get("transcribe", 0) // chunks)


def reconcile_on_schedule(r: Report, starts: list[float], faults: list[Fault],
                          windows: list[tuple[float, float]], interval_s: float, blackholed: int,
                          part: str = "") -> None:
    """While jobs' webhooks go to a receiver that accepts and never answers (each try lasts the whole webhook
    timeout), reconcile passes keep starting every interval: a wait between two starts (from the workers'
    logs) longer than max(10 s, 5 intervals), in the fault-free baseline or in the chaos run, fails, unless
    the beat or Redis was down in it (a fault on the beat or a Redis restart, injected in the wait or up to
    30 s before it)."""
    limit_s = max(10.0, 5 * interval_s)
    late, worst = [], 0.0
    for t0, t1 in windows:
        seen = [t for t in starts if t0 <= t <= t1]
        for a, b in zip([t0, *seen], [*seen, t1]):
            excused = any(f.kind.endswith(":beat") or f.kind == "redis:restart" for f in faults
                          if a - 30 <= f.t_wall <= b)
            if not excused:
                worst = max(worst, b - a)
                if b - a > limit_s:
                    late.append(f"{b - a:.1f} s without a reconcile pass from +{a - windows[0][0]:.0f} s "
                                f"(after the first window's start)")
    r.metrics["reconcile_longest_wait_s"] = worst
    r.check(f"{part}reconcile passes on schedule while webhooks blackhole (issue 17, 3)", not late and bool(starts),
            f"{sum(1 for t in starts if any(a <= t <= b for a, b in windows))} passes, longest wait {worst:.1f} s "
            f"(limit {limit_s:.0f} s, not counting waits with the beat or Redis down); {blackholed} connections "
            f"to the blackholed receiver so far"
            + "".join(f"\n      {x}" for x in late[:10]))


def fault_coverage(r: Report, cov: Coverage, every_cell: bool) -> None:
    """The coverage matrix, and the check that every required (kind, phase) cell was hit: a fault injected
    while a job of the run was in that phase."""
    r.add("  fault coverage: faults injected while a job of the run was in the phase ('-': a phase the kind does")
    r.add("  not target; '*': a cell this mode requires; '!': missed)")
    for line in cov.matrix():
        r.add("  " + line)
    missing = cov.missing()
    name = ("every fault kind hit each phase it targets" if every_cell else
            "every fault kind hit a phase it targets (quick mode: one seeded phase per kind; make chaos: every phase)")
    r.check(name, not missing, f"{len(cov.required) - len(missing)}/{len(cov.required)} required cells hit"
            + "".join(f"\n      missed {k} @{p}" for k, p in missing))


def longest_recovery(r: Report, faults: list[Fault], labels: dict[str, str], b_gap: float) -> None:
    rec = [(f.recovery_s, f) for f in faults if f.recovery_s is not None]
    if rec:
        worst, f = max(rec, key=lambda x: x[0])
        r.add(f"  recovery: longest {fmt_s(worst)} after {f.kind} at +{f.at:.1f} s (job {f.recovery_job}, "
              f"{labels.get(f.recovery_job, '?')}); the "
              f"fault-free run's longest progress gap of a job: {b_gap:.1f} s")
        r.metrics["longest_recovery_s"] = worst


def tenant_isolation(r: Report, db: Db, client: Callable[[str], httpx.Client], subs: dict[int, Sub]) -> None:
    """Every job of the run asked for with every other tenant's key (its record and its transcript): each
    must be a 404, while its own tenant reads it (else a 404 proves nothing). Each tenant's listing and bulk
    status show its own jobs only (the jobs table's tenant column is the truth)."""
    owner = dict(db.q("SELECT id::text, tenant FROM jobs"))
    jobs = [s.job_id for s in subs.values() if s.job_id and s.job_id in owner]
    clients = {t: client(t) for t in TENANTS}
    asked, leaks, errors = 0, [], []

    def get(t: str, path: str, method: str = "GET", **kw) -> httpx.Response | None:  # noqa: ANN003
        for _ in range(3):  # the API was restarted at the end of the run: ride out a transport error
            with contextlib.suppress(httpx.TransportError):
                return clients[t].request(method, path, **kw)
        errors.append(f"{t} {method} {path}: no answer")
        return None

    try:
        for jid in jobs:
            own = get(owner[jid], f"/v1/jobs/{jid}")
            if own is not None and own.status_code != 200:
                errors.append(f"{jid} read by its own tenant {owner[jid]}: {own.status_code}")
            for other in (t for t in TENANTS if t != owner[jid]):
                for path in (f"/v1/jobs/{jid}", f"/v1/jobs/{jid}/transcript"):
                    resp = get(other, path)
                    if resp is None:
                        continue
                    asked += 1
                    if resp.status_code != 404:
                        leaks.append(f"{path} read by {other} (owner {owner[jid]}): {resp.status_code}")
        for t in TENANTS:
            listed, cursor = [], None
            for _ in range(100):
                resp = get(t, "/v1/jobs", params={"limit": 1000, **({"cursor": cursor} if cursor else {})})
                if resp is None or resp.status_code != 200:
                    errors.append(f"GET /v1/jobs as {t}: {resp.status_code if resp is not None else 'no answer'}")
                    break
                listed += [j["id"] for j in resp.json()["jobs"]]
                cursor = resp.json().get("next_cursor")
                if not cursor:
                    break
            leaks += [f"GET /v1/jobs as {t} lists {j} of {owner.get(j)}" for j in listed if owner.get(j) != t]
            resp = get(t, "/v1/jobs/status", method="POST", json={"ids": jobs})
            if resp is None or resp.status_code != 200:
                errors.append(f"POST /v1/jobs/status as {t}: {resp.status_code if resp is not None else 'no answer'}")
                continue
            seen = {j["id"] for j in resp.json()["jobs"]}
            leaks += [f"POST /v1/jobs/status as {t} shows {j} of {owner.get(j)}" for j in seen if owner.get(j) != t]
            errors += [f"POST /v1/jobs/status as {t} misses its own {j}" for j in jobs
                       if owner[j] == t and j not in seen]
    finally:
        for c in clients.values():
            c.close()
    r.check("no job readable with another tenant's key", not leaks and not errors and asked > 0,
            f"{len(jobs)} jobs, {asked} reads with another tenant's key, all 404; listings and bulk status "
            f"of {len(TENANTS)} tenants" if not leaks and not errors else
            "".join(f"\n      LEAK {x}" for x in leaks[:20]) + "".join(f"\n      {x}" for x in errors[:20]))


def backlog_drained(r: Report, n: int, states: Counter, dups: int) -> bool:
    """The backlog part's two checks; True when both held."""
    not_done = n - states.get("COMPLETED", 0)
    r.check("backlog: every job COMPLETED (the flush lost nothing)", not_done == 0,
            f"{states.get('COMPLETED', 0)}/{n}" + (f"; others {dict(states)}" if not_done else ""))
    ok_dups = dups < 0.01 * n
    r.check("backlog: duplicate publishes under 1 % of jobs", ok_dups, f"{dups} for {n} jobs")
    return not_done == 0 and ok_dups
