"""Clients at scale: bulk status of 10,000 jobs in one call, a batch followed by its id, listing filters, and
the client's wait polling with one request per poll. In-process API on real Postgres and S3 (moto)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import httpx
from sqlalchemy import event, select, update

from app.db.models import Job, JobState
from tests.pg_api import pg_api  # noqa: F401  (fixture)


def _set_state(job_ids, state: JobState, **values) -> None:  # noqa: ANN001
    from app.db.session import session_scope

    with session_scope() as s:
        s.execute(update(Job).where(Job.id.in_([uuid.UUID(j) for j in job_ids])).values(state=state, **values))


def _count_job_selects():  # noqa: ANN202
    """A list that collects every SELECT on the jobs table sent through this process's engine."""
    from app.db.session import session_factory

    seen: list[str] = []
    engine = session_factory().kw["bind"]

    def before(conn, cursor, statement, *args):  # noqa: ANN001, ANN002
        if statement.lstrip().upper().startswith("SELECT") and "FROM jobs" in statement:
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", before)
    return seen, lambda: event.remove(engine, "before_cursor_execute", before)


def _insert_jobs(tenant: str, n: int) -> list[str]:
    """n QUEUED jobs written straight to the table (a 10,000-job batch submit spends its time validating
    each item, which other tests cover), in creation order."""
    from sqlalchemy import insert

    from app.db.session import session_scope

    now = datetime.now(timezone.utc)
    rows = [{"id": uuid.uuid4(), "tenant": tenant, "state": JobState.QUEUED, "source_uri": f"s3://b/{i}.wav",
             "filename": f"{i}.wav", "options": {}, "params_hash": "0" * 64, "chunks_done": 0,
             "prepare_attempts": 0, "created_at": now, "updated_at": now} for i in range(n)]
    with session_scope() as s:
        s.execute(insert(Job), rows)
    return [str(r["id"]) for r in rows]


def test_ten_thousand_ids_in_one_call_one_query_and_nothing_leaks(pg_api):
    mine = _insert_jobs(pg_api.tenant, 9_990)
    _, theirs = pg_api.batch(5, other=True)
    unknown = [str(uuid.uuid4()) for _ in range(5)]
    _set_state(mine[:10], JobState.FAILED, error="bad audio")
    _set_state(mine[10:30], JobState.COMPLETED, chunks_total=3, chunks_done=3, duration_s=12.5)
    ids = mine + theirs + unknown
    assert len(ids) == 10_000
    seen, stop = _count_job_selects()
    try:
        t0 = time.monotonic()
        r = pg_api.post("/v1/jobs/status", {"ids": ids})
        took_s = time.monotonic() - t0
    finally:
        stop()
    assert r.status_code == 200, r.text
    body = r.json()
    print(f"bulk status of 10,000 ids: {took_s:.2f} s, {len(r.content)} bytes")
    # one SQL query for the 10,000 (authentication reads api_keys, not jobs)
    assert len(seen) == 1, seen
    assert [j["id"] for j in body["jobs"]] == mine  # in the order asked
    # another tenant's jobs look exactly like ids that do not exist
    assert sorted(body["not_found"]) == sorted(theirs + unknown)
    assert body["counts"] == {"QUEUED": 9_960, "FAILED": 10, "COMPLETED": 20}
    by_id = {j["id"]: j for j in body["jobs"]}
    assert by_id[mine[0]]["error"] == "bad audio" and by_id[mine[0]]["state"] == "FAILED"
    assert by_id[mine[10]]["progress"] == {"chunks_done": 3, "chunks_total": 3, "audio_s": 12.5}
    assert set(by_id[mine[0]]) == {"id", "state", "progress", "error", "finished_at"}
    # the other tenant asking for the same ids sees only its own
    r = pg_api.post("/v1/jobs/status", {"ids": ids}, other=True)
    assert sorted(j["id"] for j in r.json()["jobs"]) == sorted(theirs)
    assert r.json()["counts"] == {"QUEUED": 5}


def test_status_limits_and_bad_requests(pg_api):
    r = pg_api.post("/v1/jobs/status", {"ids": [str(uuid.uuid4()) for _ in range(10_001)]})
    assert r.status_code == 413 and "10000" in r.text
    assert pg_api.post("/v1/jobs/status", {"ids": []}).status_code == 422
    r = pg_api.post("/v1/jobs/status", {"ids": ["not-a-uuid"]})
    assert r.status_code == 422 and "uuid" in r.text.lower()
    assert pg_api.post("/v1/jobs/status", {"ids": [str(uuid.uuid4())], "extra": 1}).status_code == 422
    assert pg_api.c.post("/v1/jobs/status", json={"ids": [str(uuid.uuid4())]}).status_code == 401
    r = pg_api.c.post("/v1/jobs/status", content=b"ids=1", headers={**pg_api.auth, "content-type": "text/plain"})
    assert r.status_code == 415
    # duplicates are answered once
    _, ids = pg_api.batch(2)
    r = pg_api.post("/v1/jobs/status", {"ids": [ids[0], ids[0], ids[1]]})
    assert [j["id"] for j in r.json()["jobs"]] == ids


def test_full_records_on_request(pg_api):
    _, ids = pg_api.batch(3)
    r = pg_api.post("/v1/jobs/status", {"ids": ids, "full": True})
    jobs = r.json()["jobs"]
    assert [j["id"] for j in jobs] == ids
    one = pg_api.get(f"/v1/jobs/{ids[0]}").json()
    assert jobs[0] == one  # exactly what GET /v1/jobs/{id} says


def test_a_batch_is_followed_by_its_id(pg_api):
    batch_a, ids_a = pg_api.batch(7, name="a")
    batch_b, ids_b = pg_api.batch(3, name="b")
    assert batch_a != batch_b and uuid.UUID(batch_a)
    r = pg_api.get("/v1/jobs", batch=batch_a, limit=5)
    page = r.json()
    assert len(page["jobs"]) == 5 and page["next_cursor"]
    rest = pg_api.get("/v1/jobs", batch=batch_a, limit=5, cursor=page["next_cursor"]).json()
    assert sorted(j["id"] for j in page["jobs"] + rest["jobs"]) == sorted(ids_a) and rest["next_cursor"] is None
    assert {j["batch_id"] for j in page["jobs"] + rest["jobs"]} == {batch_a}
    assert sorted(j["id"] for j in pg_api.get("/v1/jobs", batch=batch_b).json()["jobs"]) == sorted(ids_b)
    # another tenant asking for this batch gets nothing
    assert pg_api.get("/v1/jobs", other=True, batch=batch_a).json()["jobs"] == []
    assert pg_api.get("/v1/jobs", batch="nope").status_code == 422


def test_list_filters_state_since_filename(pg_api):
    _, old = pg_api.batch(2, name="old_Call")
    _, new = pg_api.batch(2, name="newAcall")
    long_ago = datetime.now(timezone.utc) - timedelta(days=3)
    _set_state(old, JobState.QUEUED, created_at=long_ago)
    _set_state(new[:1], JobState.COMPLETED)

    def ids(**params) -> set[str]:  # noqa: ANN003
        r = pg_api.get("/v1/jobs", **params)
        assert r.status_code == 200, r.text
        return {j["id"] for j in r.json()["jobs"]}

    assert ids(state="COMPLETED") == {new[0]}
    since = (datetime.now(timezone.utc) - timedelta(days=1)).isoformat()
    assert ids(since=since) == set(new)
    # a time without a zone is UTC
    assert ids(since=(long_ago - timedelta(hours=1)).replace(tzinfo=None).isoformat()) == set(old + new)
    assert ids(filename="OLD_call") == set(old)  # case-insensitive
    assert ids(filename="old*-00001") == {old[1]}  # '*' matches anything
    assert ids(filename="w_c") == set()  # '_' is literal: it does not match newAcall's "wAc"
    assert ids(filename="call-00000", state="COMPLETED") == {new[0]}
    assert ids(filename="old", since=since) == set()
    assert pg_api.get("/v1/jobs", since="yesterday").status_code == 422


def test_client_wait_sends_one_request_per_poll(pg_api):
    _, ids = pg_api.batch(50)
    requests: list[str] = []
    c = pg_api.client()
    c.http.event_hooks["request"].append(lambda req: requests.append(f"{req.method} {req.url.path}"))
    polls: list[tuple[int, dict]] = []

    def progress(finished: int, counts: dict) -> None:
        polls.append((finished, dict(counts)))
        # the jobs move on between polls: 20 finish after the first, the rest after the second
        if len(polls) == 1:
            _set_state(ids[:15], JobState.COMPLETED)
            _set_state(ids[15:20], JobState.FAILED, error="x")
            _set_state(ids[20:], JobState.TRANSCRIBING)
        elif len(polls) == 2:
            _set_state(ids[20:], JobState.COMPLETED)

    done = c.wait(ids, poll_s=0.01, on_progress=progress)
    assert polls == [(0, {"QUEUED": 50}), (20, {"COMPLETED": 15, "FAILED": 5, "TRANSCRIBING": 30}),
                     (50, {"COMPLETED": 45, "FAILED": 5})]
    # per poll one status call, plus one for the whole records of the jobs that poll saw finish
    assert requests == ["POST /v1/jobs/status"] * 5
    assert set(done) == set(ids) and done[ids[0]]["options"]["engine"] == "whisper"
    assert done[ids[16]]["state"] == "FAILED" and done[ids[16]]["error"] == "x"


def test_client_statuses_splits_large_sets(pg_api):
    _, ids = pg_api.batch(30)
    calls: list[httpx.Request] = []
    c = pg_api.client()
    c.http.event_hooks["request"].append(calls.append)
    got = c.statuses(ids + [str(uuid.uuid4())], per_call=8)
    assert len(calls) == 4 and len(got["jobs"]) == 30 and len(got["not_found"]) == 1
    assert got["counts"] == {"QUEUED": 30}


def test_asrq_jobs_lists_with_filters(pg_api, monkeypatch):
    import app.cli
    from click.testing import CliRunner

    batch, ids = pg_api.batch(3, name="meeting")
    _, others = pg_api.batch(2, name="standup")
    _set_state(ids[:1], JobState.FAILED, error="x")
    _set_state(others, JobState.QUEUED, created_at=datetime.now(timezone.utc) - timedelta(days=2))
    monkeypatch.setattr(app.cli, "_client", lambda: pg_api.client())

    def listed(*args: str) -> list[list[str]]:
        out = CliRunner().invoke(app.cli.cli, ["jobs", *args])
        assert out.exit_code == 0, out.output
        lines = out.output.splitlines()
        assert lines[0].split() == ["ID", "STATE", "CREATED", "AUDIO_S", "CHUNKS", "FILENAME"]
        return [line.split() for line in lines[1:]]

    rows = listed()
    assert {r[0] for r in rows} == set(ids + others) and all(r[3] == "-" and r[4] == "0/?" for r in rows)
    assert [r[0] for r in listed("--state", "failed")] == ids[:1]
    assert {r[0] for r in listed("--since", "1d")} == set(ids)
    assert {r[0] for r in listed("--filename", "STANDUP")} == set(others)
    assert {r[0] for r in listed("--batch", batch, "--state", "QUEUED")} == set(ids[1:])
    assert len(listed("--limit", "2")) == 2
    out = CliRunner().invoke(app.cli.cli, ["jobs", "--json", "--filename", "meeting-00001"])
    assert out.exit_code == 0 and [json.loads(line)["id"] for line in out.output.splitlines()] == [ids[1]]
    bad = CliRunner().invoke(app.cli.cli, ["jobs", "--since", "last week"])
    assert bad.exit_code == 2 and "age like" in bad.output


def test_asrq_submit_dir_wait_shows_one_bar_with_counts(pg_api, monkeypatch, tmp_path):
    import app.cli
    from click.testing import CliRunner

    from app.db.session import session_scope

    folder = tmp_path / "calls"
    folder.mkdir()
    for i in range(4):
        (folder / f"call{i}.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(256)) * 4)
    monkeypatch.setattr(app.cli, "_client", lambda: pg_api.client())
    requests: list[str] = []
    real_client = pg_api.client

    def counting_client():  # noqa: ANN202
        c = real_client()
        c.http.event_hooks["request"] = [lambda req: requests.append(f"{req.method} {req.url.path}")]
        return c

    monkeypatch.setattr(app.cli, "_client", counting_client)
    stop = threading.Event()

    def workers_finish_them() -> None:
        # what the pipeline would do: one fails, the others complete
        while not stop.is_set():
            with session_scope() as s:
                ids = [str(j) for j in s.scalars(select(Job.id).where(Job.tenant == pg_api.tenant)
                                                 .order_by(Job.filename))]
            if len(ids) == 4:
                _set_state(ids[:1], JobState.FAILED, error="not audio", finished_at=datetime.now(timezone.utc))
                _set_state(ids[1:], JobState.COMPLETED, finished_at=datetime.now(timezone.utc))
                return
            time.sleep(0.05)

    t = threading.Thread(target=workers_finish_them)
    t.start()
    try:
        out = CliRunner().invoke(app.cli.cli, ["submit", str(folder), "--wait"])
    finally:
        stop.set()
        t.join(10)
    assert out.exit_code == 1, out.output  # one job failed
    lines = out.stdout.splitlines()
    assert len(lines) == 4 and all(uuid.UUID(x) for x in lines)
    assert "jobs: 100%" in out.stderr and "4/4" in out.stderr
    assert "completed=3 failed=1" in out.stderr
    assert "FAILED: not audio" in out.stderr
    # uploads, then status calls only: never one GET per job
    assert requests.count("POST /v1/jobs") == 4
    assert all(r in ("POST /v1/jobs", "POST /v1/jobs/status") for r in requests), requests


def test_statuses_on_sqlite_go_in_chunks_under_its_parameter_cap(tmp_path):
    """The embedded default: SQLite refuses statements with more than 32,766 parameters."""
    from sqlalchemy import insert
    from sqlalchemy.orm import Session

    from app.db.migrate import upgrade
    from app.db.session import make_engine
    from app.jobs import job_statuses

    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    engine = make_engine(url)
    now = datetime.now(timezone.utc)
    ids = [uuid.uuid4() for _ in range(12_000)]
    with Session(engine) as s:
        s.execute(insert(Job), [{"id": j, "tenant": "t" if n % 2 else "u", "state": JobState.QUEUED,
                                 "source_uri": "s3://b/k", "filename": "k", "options": {}, "params_hash": "0" * 64,
                                 "chunks_done": 0, "prepare_attempts": 0, "created_at": now, "updated_at": now}
                                for n, j in enumerate(ids)])
        s.commit()
        unknown = [uuid.uuid4() for _ in range(30_000)]
        found, missing = job_statuses(s, "t", ids + unknown)
        assert [j.id for j in found] == ids[1::2]
        assert set(missing) == set(ids[0::2]) | set(unknown)
    engine.dispose()
