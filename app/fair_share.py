"""Fair share between tenants: the order in which the broker hands out prepare and transcribe work.

A tenant with thousands of queued jobs must not starve another tenant's one job. Every prepare and
transcribe message carries a broker priority (Redis: one list per level, 0 served first; the levels
are ``PRIORITY_STEPS``) computed when it is sent, from, in this order:

1. the tenant's standing: its recent usage (audio seconds transcribed, halved every
   ``fair_share_half_life_s``) plus the audio it already has in flight (queued or being worked on;
   a job not yet decoded counts ``fair_share_nominal_job_s``), divided by the tenant's weight
   (``ASRQ_TENANT_WEIGHTS``). Standings fall in tiers a factor ``FAIR_SHARE_TIER_FACTOR`` apart,
   starting at ``fair_share_step_s``;
2. the job's ``priority`` (high, normal, low);
3. age: within one level the broker is FIFO.

So a tenant that submits 1,000 jobs sees its first ones sent at the top tier and the rest lower, and
a tenant who then submits one job goes ahead of everything but the few first jobs of the other.
Finalize and maintenance messages carry no priority (level 0): they finish work already paid for.
The embedded filesystem transport has no priorities; it serves one user.
"""

from __future__ import annotations

import logging
import math
import threading
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta

from cachetools import TTLCache
from sqlalchemy import delete, false, func, select
from sqlalchemy.orm import Session

from app.constants import PRIORITY_STEPS  # noqa: F401 - the levels this module hands out
from app.db.models import TERMINAL_JOB_STATES, Chunk, Job, JobState, TenantShare, utcnow
from app.db.session import session_scope
from app.errors import TooManyQueued
from app.settings import Settings

JOB_PRIORITIES = ("high", "normal", "low")
log = logging.getLogger("asrq.fair_share")

TIERS = 3
FAIR_SHARE_TIER_FACTOR = 10.0
IN_FLIGHT_STATES = tuple(s for s in JobState if s not in TERMINAL_JOB_STATES)


# --- the policy: plain functions --------------------------------------------------------------------------

def decayed(usage_s: float, elapsed_s: float, half_life_s: float) -> float:
    return usage_s * 0.5 ** (max(0.0, elapsed_s) / half_life_s)


def tier(standing_s: float, step_s: float) -> int:
    """0 below ``step_s``, then one tier per factor ``FAIR_SHARE_TIER_FACTOR``, at most TIERS - 1."""
    if standing_s < step_s:
        return 0
    return min(TIERS - 1, 1 + int(math.log(standing_s / step_s, FAIR_SHARE_TIER_FACTOR)))


def level(standing_s: float, priority: str | None, step_s: float) -> int:
    """The broker priority of one message: the tenant's tier first, then the job's priority."""
    p = JOB_PRIORITIES.index(priority) if priority in JOB_PRIORITIES else JOB_PRIORITIES.index("normal")
    return tier(standing_s, step_s) * len(JOB_PRIORITIES) + p


@dataclass(frozen=True)
class Standing:
    """A tenant's load in audio seconds, before its weight."""

    usage_s: float  # decayed, finished work
    in_flight_s: float  # queued or being worked on
    jobs_in_flight: int = 0

    def per_weight(self, weight: float, extra_s: float = 0.0) -> float:
        return (self.usage_s + self.in_flight_s + extra_s) / weight


def submission_levels(standing: Standing, weight: float, priorities: Sequence[str | None], nominal_s: float,
                      step_s: float, already_counted: bool = True) -> list[int]:
    """Levels of a tenant's newly submitted jobs, in submission order: each job counts the ones before it
    in the same submission. ``already_counted``: the standing was read after they were committed."""
    base = standing.in_flight_s - (len(priorities) * nominal_s if already_counted else 0.0)
    start = Standing(standing.usage_s, max(0.0, base))
    return [level(start.per_weight(weight, k * nominal_s), p, step_s) for k, p in enumerate(priorities)]


# --- reading and keeping standings (Postgres/SQLite) -------------------------------------------------------

def read_standings(session: Session, tenants: Iterable[str], settings: Settings) -> dict[str, Standing]:
    tenants = sorted(set(tenants))
    if not tenants:
        return {}
    now = utcnow()
    in_flight = {t: (n, audio_s) for t, n, audio_s in session.execute(
        select(Job.tenant, func.count(), func.sum(func.coalesce(Job.duration_s, settings.fair_share_nominal_job_s)))
        .where(Job.tenant.in_(tenants), Job.state.in_(IN_FLIGHT_STATES))
        .group_by(Job.tenant)
    )}
    usage = {u.tenant: decayed(u.usage_s, (now - u.updated_at).total_seconds(), settings.fair_share_half_life_s)
             for u in session.scalars(select(TenantShare).where(TenantShare.tenant.in_(tenants)))
             if u.tenant != CURSOR_TENANT}
    return {t: Standing(usage.get(t, 0.0), float(in_flight.get(t, (0, 0.0))[1] or 0.0), int(in_flight.get(t, (0,))[0]))
            for t in tenants}


#: the first key of the Postgres advisory locks that admissions take ('asrq'); the second is the tenant's hash
ADMISSION_LOCK = 0x61737271


def lock_admission(session: Session, tenant: str) -> None:
    """Until this transaction ends, other admissions of ``tenant`` wait: the count that admits a submission
    and the insert that stores it are then one step, so two submissions cannot both take the last places
    under the cap. Postgres: a transaction-scoped advisory lock on the tenant (other tenants never wait;
    taking it again in the same transaction is free). SQLite, which has one writer at a time anyway: its
    write lock, taken now instead of at the insert."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(ADMISSION_LOCK, func.hashtext(tenant))))
    else:
        session.execute(delete(TenantShare).where(false()))  # a write that changes nothing: the lock alone


def admit(session: Session, tenant: str, priorities: Sequence[str | None], settings: Settings) -> list[int]:
    """Before a submission is stored, in the transaction that stores it: refuse it (TooManyQueued) when it
    would take the tenant past its cap of unfinished jobs; else the broker level of each new job, in
    order. Takes the tenant's admission lock (``lock_admission``) first: the caller's insert, committed in
    this same transaction, releases it."""
    lock_admission(session, tenant)
    standing = read_standings(session, [tenant], settings)[tenant]
    cap = settings.max_queued_jobs_per_tenant
    if cap and standing.jobs_in_flight + len(priorities) > cap:
        raise TooManyQueued(f"tenant {tenant!r} has {standing.jobs_in_flight} unfinished jobs; at most {cap} "
                            f"may be queued (ASRQ_MAX_QUEUED_JOBS_PER_TENANT): submit these once some finished")
    return submission_levels(standing, settings.tenant_weight(tenant), priorities,
                             settings.fair_share_nominal_job_s, settings.fair_share_step_s, already_counted=False)


class StandingCache:
    """Standings per tenant, reused for ``ttl_s``: a prepare worker sending chunks for 25 jobs a second
    reads each tenant's standing once per ttl, not once per job."""

    def __init__(self, ttl_s: float = 5.0, max_tenants: int = 10_000) -> None:
        self._lock = threading.Lock()
        self._seen: TTLCache = TTLCache(maxsize=max_tenants, ttl=ttl_s)

    def get(self, session: Session | None, tenant: str, settings: Settings) -> Standing:
        with self._lock:
            hit = self._seen.get(tenant)
        if hit is not None:
            return hit
        if session is None:
            with session_scope() as s:
                standing = read_standings(s, [tenant], settings)[tenant]
        else:
            standing = read_standings(session, [tenant], settings)[tenant]
        with self._lock:
            self._seen[tenant] = standing
        return standing


_CACHE = StandingCache()


def job_level(tenant: str, priority: str | None, settings: Settings, session: Session | None = None) -> int:
    """The level of work of an already known job (its chunks, a re-sent message). If the standing cannot
    be read, the top tier: a database hiccup must not stop the message from being sent."""
    try:
        standing = _CACHE.get(session, tenant, settings)
    except Exception as e:  # noqa: BLE001 - a level is a preference; the send is what matters
        log.warning("tenant %s: standing unreadable (%s); sending at the top tier", tenant, type(e).__name__)
        standing = Standing(0.0, 0.0)
    return level(standing.per_weight(settings.tenant_weight(tenant)), priority, settings.fair_share_step_s)


#: the row of tenant_shares that holds how far finished jobs were counted ("" is never a tenant's name)
CURSOR_TENANT = ""
#: jobs that finished within this long of now are counted by the next run: a completion stamped
#: just before a run but committed just after it is not missed
SETTLE_S = 10.0


def record_finished_usage(session: Session, settings: Settings) -> int:
    """Add the audio of jobs finished since the last run to their tenants' decayed usage. Run by the
    reconciler beat, so no job completion contends for a tenant's row; the cursor row's lock makes
    two overlapping runs take turns. Returns the number of tenants updated."""
    until = utcnow() - timedelta(seconds=SETTLE_S)
    cursor = session.scalar(select(TenantShare).where(TenantShare.tenant == CURSOR_TENANT).with_for_update())
    if cursor is None:
        cursor = TenantShare(tenant=CURSOR_TENANT, usage_s=0.0,
                             updated_at=until - timedelta(seconds=4 * settings.fair_share_half_life_s))
        session.add(cursor)
    since = cursor.updated_at
    if until <= since:
        session.rollback()
        return 0
    rows = session.execute(
        select(Job.tenant, func.sum(func.coalesce(Job.duration_s, 0.0)))
        .where(Job.finished_at >= since, Job.finished_at < until, Job.state == JobState.COMPLETED)
        .group_by(Job.tenant)
    ).all()
    existing = {u.tenant: u for u in session.scalars(
        select(TenantShare).where(TenantShare.tenant.in_([t for t, _ in rows])).with_for_update())} if rows else {}
    for tenant, audio_s in rows:
        u = existing.get(tenant)
        if u is None:
            session.add(TenantShare(tenant=tenant, usage_s=float(audio_s or 0.0), updated_at=until))
        else:
            u.usage_s = decayed(u.usage_s, (until - u.updated_at).total_seconds(),
                                settings.fair_share_half_life_s) + float(audio_s or 0.0)
            u.updated_at = until
    cursor.updated_at = until
    session.commit()
    return len(rows)


def levels_for_jobs(session: Session, job_ids: Sequence[uuid.UUID], settings: Settings) -> list[int]:
    """Levels for re-sending prepare messages of known jobs (the reconciler)."""
    rows = {j: (t, o) for j, t, o in session.execute(
        select(Job.id, Job.tenant, Job.options).where(Job.id.in_(list(job_ids))))}
    out = []
    for jid in job_ids:
        tenant, options = rows.get(jid, ("", {}))
        out.append(job_level(tenant, (options or {}).get("priority"), settings, session) if tenant else 0)
    return out


def levels_for_chunks(session: Session, chunk_ids: Sequence[uuid.UUID], settings: Settings) -> list[int]:
    """Levels for re-sending transcribe messages of known chunks (the reconciler)."""
    rows = {c: (t, o) for c, t, o in session.execute(
        select(Chunk.id, Job.tenant, Job.options).join(Job, Job.id == Chunk.job_id)
        .where(Chunk.id.in_(list(chunk_ids))))}
    out = []
    for cid in chunk_ids:
        tenant, options = rows.get(cid, ("", {}))
        out.append(job_level(tenant, (options or {}).get("priority"), settings, session) if tenant else 0)
    return out
