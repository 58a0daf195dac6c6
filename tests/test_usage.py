"""Usage per tenant and UTC day: audio submitted and transcribed, engine seconds shared by audio length.

Jobs are submitted through the API (in-process, real Postgres and S3) and moved through the pipeline's own
state transitions (prepare plan, claim, batch record, bulk result save, finalize), as the workers do."""

from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta, timezone

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from app.db.models import Batch, Chunk, Job
from app.db.session import session_scope
from tests.pg_api import complete as _complete
from tests.pg_api import pg_api  # noqa: F401  (fixture)
from tests.pg_api import prepare as _prepare
from tests.pg_api import run_batch as _run_batch

TODAY = datetime.now(timezone.utc).date()


def _usage(pg_api, other: bool = False, **params) -> dict:  # noqa: ANN001, ANN003
    r = pg_api.get("/v1/usage", other=other, **params)
    assert r.status_code == 200, r.text
    return r.json()


def test_engine_seconds_are_shared_by_audio_length_across_jobs_and_tenants(pg_api):
    _, (a,) = pg_api.batch(1)
    _, (b,) = pg_api.batch(1, other=True)
    ca = _prepare(a, [20.0, 10.0])
    cb = _prepare(b, [10.0])
    # one batch holds both tenants' chunks: 40 s of audio, 2 s of inference
    finished = _run_batch(ca + cb, 2.0)
    assert sorted(map(str, finished)) == sorted([a, b])
    with session_scope() as s:
        shares = dict(s.execute(select(Chunk.id, Chunk.engine_s).where(Chunk.id.in_(ca + cb))).all())
    assert [round(shares[c], 6) for c in ca + cb] == [1.0, 0.5, 0.5]
    _complete(a)
    _complete(b)
    mine = _usage(pg_api)
    assert mine["tenant"] == pg_api.tenant and mine["from"] == str(TODAY - timedelta(days=29))
    assert mine["to"] == str(TODAY)
    assert mine["days"] == [{"day": str(TODAY), "jobs_submitted": 1, "audio_submitted_s": 30.0, "jobs_completed": 1,
                             "audio_transcribed_s": 30.0, "engine_s": 1.5}]
    assert mine["total"]["engine_s"] == 1.5
    theirs = _usage(pg_api, other=True)
    assert theirs["days"][0]["engine_s"] == 0.5 and theirs["days"][0]["audio_submitted_s"] == 10.0


def test_days_are_utc_days_of_each_event(pg_api):
    """Submitted on the day the job was created, transcribed on the day it completed, engine seconds on the
    day each batch ran; a job still running or failed is submitted but not transcribed."""
    d0 = TODAY - timedelta(days=3)
    late = datetime.combine(d0, datetime.min.time(), timezone.utc) + timedelta(hours=23, minutes=59)
    _, (a, b, c) = pg_api.batch(3)
    ca = _prepare(a, [60.0, 30.0], at=late)
    _run_batch(ca[:1], 3.0, at=late + timedelta(seconds=30))  # still day 0
    _run_batch(ca[1:], 1.0, at=late + timedelta(minutes=2))  # day 1, 00:01 UTC
    _complete(a, at=late + timedelta(days=1, hours=1))
    _prepare(b, [5.0])  # today, still transcribing
    # c: never decoded (QUEUED): counted as submitted, with no audio yet
    body = _usage(pg_api, **{"from": str(d0 - timedelta(days=1)), "to": str(TODAY)})
    days = {d["day"]: d for d in body["days"]}
    assert set(days) == {str(d0), str(d0 + timedelta(days=1)), str(d0 + timedelta(days=2)), str(TODAY)}
    assert days[str(d0)] == {"day": str(d0), "jobs_submitted": 1, "audio_submitted_s": 90.0, "jobs_completed": 0,
                             "audio_transcribed_s": 0.0, "engine_s": 3.0}
    assert days[str(d0 + timedelta(days=1))]["engine_s"] == 1.0
    assert days[str(d0 + timedelta(days=2))]["jobs_completed"] == 1
    assert days[str(d0 + timedelta(days=2))]["audio_transcribed_s"] == 90.0
    assert days[str(TODAY)]["jobs_submitted"] == 2 and days[str(TODAY)]["audio_submitted_s"] == 5.0
    assert body["total"] == {"jobs_submitted": 3, "audio_submitted_s": 95.0, "jobs_completed": 1,
                             "audio_transcribed_s": 90.0, "engine_s": 4.0}
    # inclusive bounds: a one-day range is that day
    one = _usage(pg_api, **{"from": str(d0), "to": str(d0)})
    assert [d["day"] for d in one["days"]] == [str(d0)]
    ahead = {"from": str(TODAY + timedelta(days=1)), "to": str(TODAY + timedelta(days=2))}
    assert _usage(pg_api, **ahead)["days"] == []


@pytest.mark.parametrize("params, msg", [
    ({"from": "2026-03-02", "to": "2026-03-01"}, "before"),
    ({"from": "2025-01-01", "to": "2026-01-02"}, "366"),
    ({"from": "yesterday"}, "date"),
    ({"to": "2026-02-30"}, "date"),
])
def test_bad_ranges_are_422(pg_api, params, msg):
    r = pg_api.get("/v1/usage", **params)
    assert r.status_code == 422 and msg in r.text, r.text


def test_a_full_year_range_is_allowed_and_needs_a_key(pg_api):
    assert pg_api.get("/v1/usage", **{"from": "2025-01-01", "to": "2026-01-01"}).status_code == 200  # 366 days
    assert pg_api.c.get("/v1/usage").status_code == 401


def test_usage_survives_retention(pg_api):
    """The expiry sweep deletes a job's rows, and its usage moves to the daily totals in that transaction."""
    from app.settings import get_settings
    from workers.tasks.maintenance import maintain_once

    _, (a, b) = pg_api.batch(2)
    ca, cb = _prepare(a, [8.0]), _prepare(b, [2.0])
    _run_batch(ca + cb, 1.0)
    _complete(a)
    _complete(b)
    before = _usage(pg_api)
    old = datetime.now(timezone.utc) + timedelta(days=get_settings().retention_days + 1)
    maintain_once(now=old)  # as if run long after: both jobs expired
    with session_scope() as s:
        assert s.scalars(select(Job.id).where(Job.tenant == pg_api.tenant)).all() == []
    assert _usage(pg_api) == before
    assert before["total"]["engine_s"] == 1.0 and before["total"]["jobs_completed"] == 2
    maintain_once(now=old)  # again: nothing counted twice
    assert _usage(pg_api) == before


def test_asrq_usage_command(pg_api, monkeypatch):
    import app.cli

    _, (a,) = pg_api.batch(1)
    _run_batch(_prepare(a, [12.0]), 0.6)
    _complete(a)
    monkeypatch.setattr(app.cli, "_client", lambda: pg_api.client())
    out = CliRunner().invoke(app.cli.cli, ["usage", "--from", str(TODAY - timedelta(days=1)), "--to", str(TODAY)])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0] == f"tenant {pg_api.tenant}, {TODAY - timedelta(days=1)} to {TODAY} (UTC)"
    assert lines[1].split() == ["DAY", "SUBMITTED", "AUDIO_IN_S", "COMPLETED", "AUDIO_DONE_S", "ENGINE_S"]
    assert lines[2].split() == [str(TODAY), "1", "12.0", "1", "12.0", "0.6"]
    assert lines[3].split() == ["total", "1", "12.0", "1", "12.0", "0.6"]
    as_json = CliRunner().invoke(app.cli.cli, ["usage", "--json"])
    assert as_json.exit_code == 0 and '"engine_s": 0.6' in as_json.output


def test_usage_sql_on_sqlite_matches(tmp_path, monkeypatch):
    """The embedded default (SQLite) aggregates the same way."""
    from app.db.migrate import upgrade
    from app.db.session import make_engine
    from app.usage import roll_up, usage
    from sqlalchemy.orm import Session

    url = f"sqlite:///{tmp_path / 'u.db'}"
    upgrade(url)
    engine = make_engine(url)
    day = date(2026, 5, 4)
    at = datetime(2026, 5, 4, 23, 30, tzinfo=timezone.utc)
    jid, bid = uuid.uuid4(), uuid.uuid4()
    with Session(engine) as s:
        s.add(Job(id=jid, tenant="t", state="COMPLETED", source_uri="s3://b/k", filename="k", options={},
                  params_hash="0" * 64, duration_s=7.0, created_at=at, finished_at=at + timedelta(hours=1)))
        s.add(Batch(id=bid, worker="w", engine="e", size=1, job_count=1, audio_s=7.0, infer_s=0.7, created_at=at))
        s.flush()
        s.add(Chunk(job_id=jid, index=0, start_ms=0, end_ms=7000, state="DONE", batch_id=bid, engine_s=0.7))
        s.commit()
        got = [d.rounded() for d in usage(s, "t", day, day + timedelta(days=1))]
        assert got == [
            {"day": day, "jobs_submitted": 1, "audio_submitted_s": 7.0, "jobs_completed": 0,
             "audio_transcribed_s": 0.0, "engine_s": 0.7},
            {"day": day + timedelta(days=1), "jobs_submitted": 0, "audio_submitted_s": 0.0, "jobs_completed": 1,
             "audio_transcribed_s": 7.0, "engine_s": 0.0}]
        roll_up(s, [jid])
        s.execute(Chunk.__table__.delete())
        s.execute(Job.__table__.delete())
        s.commit()
        assert [d.rounded() for d in usage(s, "t", day, day + timedelta(days=1))] == got
    engine.dispose()
