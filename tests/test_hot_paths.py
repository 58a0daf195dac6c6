"""Issue 18 item 6: no hot path reads the whole jobs or chunks table. Each one runs for real (the API's GET,
list, bulk status and /metrics; fair-share standings; a reconcile pass; the retention sweep) while every
statement it sends is recorded; each statement on jobs or chunks is then planned again with sequential
scans priced out (``enable_seqscan = off``), so a plan that still scans a whole table has no index to use.
A small table cannot show it otherwise: on a few rows the planner prefers the sequential scan anyway."""

from __future__ import annotations

import json
import re
import uuid
from datetime import timedelta

from sqlalchemy import event
from sqlalchemy.engine import Engine

from tests.pg_api import complete, pg_api, prepare, run_batch  # noqa: F401  (pg_api: fixture)

_TABLES = re.compile(r"\b(jobs|chunks)\b")


def _index_conds(plan: dict) -> list[str]:
    own = [plan["Index Cond"]] if "Index Cond" in plan else []
    return own + [c for sub in plan.get("Plans", []) for c in _index_conds(sub)]


def _seq_scans(plan: dict) -> list[str]:
    out = []
    if plan.get("Node Type") == "Seq Scan" and plan.get("Relation Name") in ("jobs", "chunks"):
        out.append(f"{plan['Relation Name']} (filter: {plan.get('Filter', '-')})")
    for sub in plan.get("Plans", []):
        out += _seq_scans(sub)
    return out


def _sorts(plan: dict) -> list[str]:
    own = [plan["Node Type"]] if plan.get("Node Type") in ("Sort", "Incremental Sort") else []
    return own + [s for sub in plan.get("Plans", []) for s in _sorts(sub)]


def _filters(plan: dict) -> list[str]:
    """The conditions checked on each row fetched (not bounds of an index range), the Index Recheck of a
    bitmap scan included."""
    own = [plan[k] for k in ("Filter", "Recheck Cond") if k in plan]
    return own + [f for sub in plan.get("Plans", []) for f in _filters(sub)]


#: the job listing's filters that an index range must serve (the filename, a substring, cannot be one)
_LIST_FILTERS = ("state", "batch_id", "created_at", "tenant")


def test_no_hot_path_scans_jobs_or_chunks(pg_api):
    from app.db.models import utcnow
    from app.db.session import session_scope
    from app.fair_share import read_standings
    from app.settings import get_settings
    from workers.tasks.maintenance import maintain_once
    from workers.tasks.reconcile import reconcile_once

    # the tenant's other batches: as in a real table, one batch is a small share of the tenant's queued jobs
    # (the planner, given the table's statistics, reads a batch's page by the batch's index only then)
    for n in range(4):
        pg_api.batch(25, name=f"earlier-{n}")
    batch, ids = pg_api.batch(12)
    chunks = prepare(ids[0], [5.0, 5.0])
    run_batch(chunks, 0.1)
    complete(ids[0], at=utcnow() - timedelta(days=400))
    prepare(ids[1], [5.0])

    seen: list[tuple[str, object]] = []

    def record(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001, ARG001
        if not executemany and _TABLES.search(statement) and statement.lstrip().upper().startswith(
                ("SELECT", "UPDATE", "DELETE", "WITH")):
            seen.append((statement, parameters))

    event.listen(Engine, "before_cursor_execute", record)
    try:
        assert pg_api.get(f"/v1/jobs/{ids[2]}").status_code == 200
        assert pg_api.get("/v1/jobs", limit=5).status_code == 200
        r = pg_api.get("/v1/jobs", limit=5)
        assert pg_api.get("/v1/jobs", limit=5, cursor=r.json()["next_cursor"]).status_code == 200
        # the listing with each filter, first page and a page after a cursor: every one an index range
        since = (utcnow() - timedelta(days=1)).isoformat()
        for params in ({"state": "QUEUED"}, {"state": "COMPLETED"}, {"since": since},
                       {"state": "QUEUED", "since": since}, {"batch": batch}, {"batch": batch, "state": "QUEUED"}):
            r = pg_api.get("/v1/jobs", limit=1, **params)
            assert r.status_code == 200 and r.json()["jobs"], (params, r.text)
            if params.get("state") != "COMPLETED":  # one completed job: no page after it
                assert pg_api.get("/v1/jobs", limit=1, cursor=r.json()["next_cursor"], **params).status_code == 200
        assert pg_api.post("/v1/jobs/status", {"ids": ids[:5] + [str(uuid.uuid4())]}).status_code == 200
        pg_api.c.app.state.settings.metrics_token = "scrape"  # the test client is not on loopback
        assert pg_api.c.get("/metrics", headers={"Authorization": "Bearer scrape"}).status_code == 200
        with session_scope() as s:
            read_standings(s, [pg_api.tenant, pg_api.other], get_settings())
        reconcile_once()
        maintain_once()
    finally:
        event.remove(Engine, "before_cursor_execute", record)
    assert len(seen) >= 10, seen
    # the check itself finds a scan where there is one: no index serves a lookup by source URI
    probe = "SELECT jobs.id FROM jobs WHERE jobs.source_uri = %(u)s"
    seen.append((probe, {"u": "s3://x/y.wav"}))

    from sqlalchemy import create_engine

    engine = create_engine(get_settings().database_url)
    raw = engine.raw_connection()
    scans = {}
    try:
        cur = raw.cursor()
        # the plans of the tables as they are (a dozen rows), not of whatever autovacuum has analysed so far
        cur.execute("ANALYZE jobs")
        cur.execute("ANALYZE chunks")
        cur.execute("SET enable_seqscan = off")
        pages, lists = [], {}
        for statement, params in seen:
            listing = "ORDER BY jobs.created_at DESC" in statement
            # a page of the listing: a sort and a bitmap scan (whose recheck repeats its index's conditions)
            # priced out too, as the sequential scan is, so a plan that still sorts or drops rows has no index
            # that reads the page in order: on a dozen rows the planner prefers sorting them anyway
            cur.execute(f"SET enable_sort = {'off' if listing else 'on'}")
            cur.execute(f"SET enable_bitmapscan = {'off' if listing else 'on'}")
            cur.execute("EXPLAIN (FORMAT JSON) " + statement, params)
            plan = cur.fetchone()[0]
            plan = plan if isinstance(plan, list) else json.loads(plan)
            if found := _seq_scans(plan[0]["Plan"]):
                scans[" ".join(statement.split())[:300]] = found
            bare = " ".join(re.sub(r"[(),]|jobs\.id", " ", statement).split())
            if listing and "jobs.created_at <" in bare:  # a page after a cursor
                pages.append(_index_conds(plan[0]["Plan"]))
            if listing:
                # read in the listing's order (no sort of every match) and only the rows it shows (no
                # filter dropping rows of other states or batches one by one): cost flat in the table
                # (within one batch, a state may be checked row by row: a batch is capped, the table is not)
                watched = [c for c in _LIST_FILTERS if not (c == "state" and "jobs.batch_id =" in statement)]
                rows_dropped = [f for f in _filters(plan[0]["Plan"]) if any(c in f for c in watched)]
                if _sorts(plan[0]["Plan"]) or rows_dropped:
                    where = " ".join(statement.split()).split(" FROM jobs ", 1)[-1]
                    lists[where] = {"sorts": _sorts(plan[0]["Plan"]), "filters": rows_dropped}
        raw.rollback()
    finally:
        raw.close()
        engine.dispose()
    assert scans.pop(probe, None), "a lookup with no index was not seen as a sequential scan"
    print(f"{len(seen) - 1} statements on jobs or chunks planned")
    assert not scans, json.dumps(scans, indent=1)
    assert not lists, json.dumps(lists, indent=1)
    # a list page after a cursor starts at the cursor in the index, instead of filtering every row before it
    assert pages and all(any("created_at" in c for c in conds) for conds in pages), pages


def test_a_scrape_does_not_wait_for_counting_finished_jobs(pg_api):
    """Issue 18 item 6: /metrics counted every job at each refresh (135 ms at 20,000 rows, growing with the
    table). Jobs in flight are counted at each refresh; finished ones, once that count is slow, in the
    background at most every FINISHED_EVERY_S."""
    from app.db.session import session_factory
    from app.metrics import StateCollector
    from app.settings import get_settings
    from tests.services import wait_until

    collector = StateCollector(get_settings(), session_factory(), cache_s=0)

    def jobs() -> dict[str, float]:
        fam = next(f for f in collector.collect() if f.name == "asrq_jobs")
        return {s.labels["state"]: s.value for s in fam.samples}

    base = jobs()  # the first count is exact (the database is shared with other tests: counted from here)
    _, ids = pg_api.batch(3)
    assert jobs()["QUEUED"] == base["QUEUED"] + 3
    collector.FINISHED_INLINE_S = -1.0  # as on a big table: counting finished jobs is slow from now on
    collector.FINISHED_EVERY_S = 3600.0
    prepare(ids[0], [5.0])
    run_batch(prepare(ids[1], [5.0]), 0.1)
    complete(ids[1])
    now = jobs()
    assert now["QUEUED"] == base["QUEUED"] + 1 and now["TRANSCRIBING"] == base["TRANSCRIBING"] + 1  # exact
    assert now["COMPLETED"] == base["COMPLETED"]  # finished: not counted again within FINISHED_EVERY_S
    collector.FINISHED_EVERY_S = 0.0
    wait_until(lambda: jobs()["COMPLETED"] == base["COMPLETED"] + 1, 30, 0.05, "the background count")
