"""Usage per tenant and UTC day: audio submitted and transcribed, engine seconds. Aggregated in SQL from the
job and chunk rows; the usage of jobs that retention removed lives on in ``usage_daily`` (rolled up in the
transaction that deletes them), so a day's totals stay the same after its jobs expire.

* submitted: jobs created that day, and their audio (known once decoded; 0 until then)
* transcribed: jobs COMPLETED that day, and their audio
* engine seconds: inference time spent that day, each batch's time shared among its chunks by audio length
  (spent on a job whatever its end: a cancelled job's finished chunks cost what they cost)
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from datetime import date, datetime, time, timedelta, timezone

from sqlalchemy import func, select, true
from sqlalchemy.orm import Session

from app.db.models import Batch, Chunk, Job, JobState, UsageDaily
from app.errors import PermanentError

MAX_RANGE_DAYS = 366


@dataclass
class DayUsage:
    day: date
    jobs_submitted: int = 0
    audio_submitted_s: float = 0.0
    jobs_completed: int = 0
    audio_transcribed_s: float = 0.0
    engine_s: float = 0.0

    def add(self, **counts: float) -> None:
        for k, v in counts.items():
            setattr(self, k, getattr(self, k) + (v or 0))

    def rounded(self) -> dict:
        d = asdict(self)
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in d.items()}


COUNTERS = [f.name for f in fields(DayUsage) if f.name != "day"]


def check_range(start: date, end: date) -> None:
    if end < start:
        raise PermanentError(f"'to' ({end}) is before 'from' ({start})")
    if (end - start).days + 1 > MAX_RANGE_DAYS:
        raise PermanentError(f"at most {MAX_RANGE_DAYS} days per request; ask for a shorter range")


def _day(session: Session, col):  # noqa: ANN001, ANN202
    """The UTC calendar day of a timestamp column, in SQL."""
    if session.get_bind().dialect.name == "postgresql":
        return func.date(func.timezone("UTC", col))
    return func.date(col)  # SQLite stores naive UTC


def _as_date(v: object) -> date:
    return v if isinstance(v, date) else date.fromisoformat(str(v))


def _aggregates(session: Session, where_job, between=None):  # noqa: ANN001, ANN202
    """(tenant, day, counter values) rows of the three aggregates, for the jobs ``where_job`` selects;
    ``between(col)`` bounds each by its own timestamp."""
    rng = between or (lambda col: true())
    d = _day(session, Job.created_at)
    yield from ((t, dy, {"jobs_submitted": n, "audio_submitted_s": a}) for t, dy, n, a in session.execute(
        select(Job.tenant, d, func.count(), func.sum(func.coalesce(Job.duration_s, 0.0)))
        .where(where_job, rng(Job.created_at)).group_by(Job.tenant, d)))
    d = _day(session, Job.finished_at)
    yield from ((t, dy, {"jobs_completed": n, "audio_transcribed_s": a}) for t, dy, n, a in session.execute(
        select(Job.tenant, d, func.count(), func.sum(func.coalesce(Job.duration_s, 0.0)))
        .where(where_job, Job.state == JobState.COMPLETED, Job.finished_at.is_not(None), rng(Job.finished_at))
        .group_by(Job.tenant, d)))
    d = _day(session, Batch.created_at)
    yield from ((t, dy, {"engine_s": e}) for t, dy, e in session.execute(
        select(Job.tenant, d, func.sum(Chunk.engine_s))
        .select_from(Chunk).join(Job, Job.id == Chunk.job_id).join(Batch, Batch.id == Chunk.batch_id)
        .where(where_job, Chunk.engine_s.is_not(None), rng(Batch.created_at)).group_by(Job.tenant, d)))


def usage(session: Session, tenant: str, start: date, end: date) -> list[DayUsage]:
    """The tenant's usage on each day from ``start`` to ``end`` (inclusive, UTC) that has any, oldest first."""
    check_range(start, end)
    t0 = datetime.combine(start, time(), timezone.utc)
    t1 = datetime.combine(end + timedelta(days=1), time(), timezone.utc)
    days: dict[date, DayUsage] = {}
    for _t, dy, counts in _aggregates(session, Job.tenant == tenant, lambda col: (col >= t0) & (col < t1)):
        day = _as_date(dy)
        days.setdefault(day, DayUsage(day)).add(**counts)
    for row in session.scalars(select(UsageDaily).where(UsageDaily.tenant == tenant, UsageDaily.day >= start,
                                                        UsageDaily.day <= end)):
        days.setdefault(row.day, DayUsage(row.day)).add(**{k: getattr(row, k) for k in COUNTERS})
    return [days[d] for d in sorted(days)]


def totals(days: Iterable[DayUsage]) -> dict:
    out = {k: 0 for k in COUNTERS}
    for d in days:
        for k in COUNTERS:
            out[k] += getattr(d, k)
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in out.items()}


def roll_up(session: Session, job_ids: list[uuid.UUID]) -> int:
    """Add the usage of these jobs (about to be deleted, in this same transaction) to ``usage_daily``.
    The caller holds their rows locked, so two sweeps can never count a job twice. Returns rows touched."""
    if not job_ids:
        return 0
    acc: dict[tuple[str, date], DayUsage] = {}
    for tenant, dy, counts in _aggregates(session, Job.id.in_(job_ids)):
        day = _as_date(dy)
        acc.setdefault((tenant, day), DayUsage(day)).add(**counts)
    if not acc:
        return 0
    rows = [{"tenant": t, **asdict(u)} for (t, _d), u in sorted(acc.items())]
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(UsageDaily).values(rows)
    session.execute(stmt.on_conflict_do_update(
        index_elements=["tenant", "day"],
        set_={k: getattr(UsageDaily, k) + getattr(stmt.excluded, k) for k in COUNTERS}))
    return len(rows)
