"""What a failed campaign prints to be diagnosed: each wrong job's state, chunks and path of states, where
its messages are in Redis, its lease, the log lines that name it, and the tail of every process log."""

from __future__ import annotations

import contextlib
import functools

from tests.chaos.broker import broker_messages
from tests.chaos.database import TERMINAL, Db
from tests.chaos.fleet import Fleet
from tests.chaos.report import Report
from tests.chaos.submission import Sub


def describe_job(db: Db, s: Sub, states: dict) -> str:
    """A submission's job now: state (and the state it had at the deadline), attempts, chunks, last update,
    its last transitions and its error."""
    if not s.job_id:
        return f"{s.status} {s.http_status or ''} {s.detail[:160]}"
    row = db.q("SELECT state, coalesce(error, ''), prepare_attempts, chunks_total, chunks_done, "
               "extract(epoch from now() - updated_at) FROM jobs WHERE id = %s", (s.job_id,))
    if not row:
        return f"job {s.job_id} not in the database"
    state, err, pa, ct, cd, age = row[0]
    then = states.get(s.job_id)
    if then and then != state:
        state = f"{then} at the deadline, {state} now"
    chunks = dict(db.q("SELECT state, count(*) FROM chunks WHERE job_id = %s GROUP BY state", (s.job_id,)))
    hist = db.q("SELECT coalesce(new_state, ''), extract(epoch from at) FROM chaos_audit WHERE job_id = %s AND "
                "kind = 'job' ORDER BY at", (s.job_id,))
    t0 = float(hist[0][1]) if hist else 0.0
    path = " ".join(f"{st}@{float(t) - t0:.1f}" for st, t in hist[-10:])
    if len(hist) > 10:
        path = f"{len(hist)} transitions, the last 10: ... {path}"
    return (f"job {s.job_id} {state} (prepare_attempts {pa}, chunks {cd}/{ct} {dict(chunks)}, "
            f"updated {float(age):.0f} s ago) path [{path}]" + (f" error: {err[:200]}" if err else ""))


@functools.lru_cache(maxsize=1)  # one campaign, one schema
def _job_columns(db: Db) -> frozenset:
    return frozenset(c for (c,) in db.q("SELECT column_name FROM information_schema.columns WHERE "
                                       "table_name = 'jobs'"))


def log_tails(r: Report, fleet: Fleet, lines: int, with_path: bool = True) -> None:
    for n in fleet.kinds:
        r.add(f"  --- last lines of {n}{f' ({fleet.proc(n).log})' if with_path else ''} ---")
        for line in fleet.proc(n).tail(lines).splitlines():
            r.add(f"    {line[:240]}")


def diagnose(r: Report, fleet: Fleet, db: Db, redis_port: int, subs: dict, states: dict, b_states: dict,
             base: dict) -> None:
    r.add("")
    r.add(f"diagnosis (logs in {fleet.stack.tmp / 'logs'})")
    wrong = [s for s in subs.values() if s.job_id and (
        states.get(s.job_id) not in TERMINAL or (s.item.expect == "ok" and states.get(s.job_id) != "COMPLETED"))]
    wrong += [s for s in base.values() if s.job_id and s.item.expect == "ok"
              and b_states.get(s.job_id) != "COMPLETED"]
    try:
        where = broker_messages(redis_port)
    except Exception as e:  # noqa: BLE001
        where = {}
        r.add(f"  (broker unreadable: {type(e).__name__})")
    for s in wrong[:12]:
        r.add(f"  {s.item.label} job {s.job_id}:")
        chunk_ids = [c for (c,) in db.q("SELECT id::text FROM chunks WHERE job_id = %s", (s.job_id,))]
        found = [f"job: {w}" for w in where.get(s.job_id, [])] + [
            f"chunk {c[:8]}: {w}" for c in chunk_ids for w in where.get(c, [])]
        lease_txt = ""
        if "lease_until" in _job_columns(db):
            lease = db.q("SELECT lease_until IS NULL, extract(epoch from lease_until - now()) FROM jobs "
                         "WHERE id = %s", (s.job_id,))
            lease_txt = " job lease: none" if lease[0][0] else f" job lease: {float(lease[0][1]):+.0f} s"
        r.add(f"    in Redis: {'; '.join(found) if found else 'no message for it or its chunks'};{lease_txt}")
        hits = []
        for n in fleet.kinds:
            with contextlib.suppress(OSError):
                for line in fleet.proc(n).log.read_text(errors="replace").splitlines():
                    if s.job_id in line:
                        hits.append(f"[{n}] {line[:220]}")
        for h in hits[-8:]:
            r.add(f"    {h}")
    log_tails(r, fleet, 25)
