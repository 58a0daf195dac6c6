"""Growth of the broker side: publishing many messages, and one reconcile pass behind a big backlog.

On real services (a fresh Postgres database and the Redis of ASRQ_TEST_REDIS): N jobs QUEUED in Postgres
(COPY), all still for longer than the stale period, and their N prepare messages waiting in Redis, as a
backlog nothing consumes. Measured:

* publishing 10,000 prepare messages: "before" is the loop over Celery's send_task that app/messaging.py
  used (kept here verbatim), "after" is ``send_prepare`` (pipelined, built in kombu's envelope);
* one reconcile pass (``reconcile_once``): its wall time, the peak of Python memory it allocated
  (tracemalloc) and what it re-sent (target: nothing; every message waits). "before" is the inventory the
  pass used to read (every list of the queues and the unacked hash, parsed; kept here verbatim), timed
  on backlogs up to 200,000 messages (above that it takes minutes and gigabytes);
* Redis memory per queued message (its list entry and its field in the sent index).

    python -m bench.scale [--quick]     (quick: 20,000 queued messages; full: 1,000,000)
"""

from __future__ import annotations

import argparse
import base64
import gc
import io
import json
import os
import sys
import time
import tracemalloc
import uuid
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

QUICK_N, FULL_N = 20_000, 1_000_000
REDIS_DB = int(os.environ.get("ASRQ_BENCH_REDIS_DB", "15"))  # of the Redis at ASRQ_TEST_REDIS; flushed
PUBLISH_N = 10_000
BEFORE_MAX_N = 200_000


# ---- "before": the code as it was ---------------------------------------------------------------------------------

def _send_many_before(name: str, queue: str, ids: list) -> int:
    """app/messaging.py's _send_many before issue 17 finding 12: one send_task per message."""
    from app.messaging import publisher

    app = publisher()
    n = 0
    with app.producer_or_acquire() as producer:
        for i in ids:
            app.send_task(name, args=[str(i)], queue=queue, routing_key=queue, countdown=None,
                          producer=producer, priority=0)
            n += 1
    return n


def _inventory_before(url: str) -> int:
    """workers/inventory.py's Redis read before issue 17 finding 4: every list, parsed; returns the count."""
    import redis

    from app.constants import QUEUE_FINALIZE, QUEUE_PREPARE, QUEUE_TRANSCRIBE
    from app.messaging import redis_queue_keys

    def parse(m: dict) -> tuple[str, str] | None:
        task = (m.get("headers") or {}).get("task")
        body = m["body"]
        if (m.get("properties") or {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return (task, str(args[0])) if task and args else None

    client = redis.Redis.from_url(url, socket_timeout=30)
    waiting: set = set()
    try:
        for queue in (QUEUE_PREPARE, QUEUE_TRANSCRIBE, QUEUE_FINALIZE):
            for key in redis_queue_keys(queue):
                start = 0
                while True:
                    page = client.lrange(key, start, start + 1999)
                    waiting.update(p for p in (parse(json.loads(x)) for x in page) if p)
                    if len(page) < 2000:
                        break
                    start += 2000
        for _tag, raw in client.hscan_iter("unacked", count=2000):
            parse(json.loads(raw)[0])
    finally:
        client.close()
    return len(waiting)


# ---- set-up -------------------------------------------------------------------------------------------------------

def _copy_jobs(db_url: str, ids: list[uuid.UUID], stale_s: float) -> None:
    from sqlalchemy import create_engine

    from app.db.models import utcnow

    then = (utcnow() - timedelta(seconds=stale_s * 10)).isoformat()
    engine = create_engine(db_url)
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        for start in range(0, len(ids), 100_000):
            buf = io.StringIO()
            for i in ids[start:start + 100_000]:
                buf.write(f"{i}\tbench\tQUEUED\ts3://bench/{i}.wav\t{i}.wav\t{{}}\t{'0' * 64}\t0\t0\t0\t0\t{then}\t{then}\n")
            buf.seek(0)
            cur.copy_expert("COPY jobs (id, tenant, state, source_uri, filename, options, params_hash, chunks_done, "
                            "prepare_attempts, finalize_attempts, prepare_fence, created_at, updated_at) FROM STDIN",
                            buf)
        raw.commit()
        cur.execute("ANALYZE jobs")
        raw.commit()
    finally:
        raw.close()
        engine.dispose()


def measure(n: int, log=print) -> dict:  # noqa: ANN001
    import redis

    from app.constants import QUEUE_PREPARE, TASK_PREPARE
    from app.db.migrate import upgrade
    from app.messaging import send_prepare
    from tests.services import apply_env, postgres_database, redis_db

    out: dict = {"queued": n}
    stale_s = 5.0
    with postgres_database() as db_url, redis_db(REDIS_DB) as broker:
        upgrade(db_url)
        apply_env({"ASRQ_DATABASE_URL": db_url, "ASRQ_BROKER_URL": broker, "ASRQ_RECONCILE_STALE_S": str(stale_s),
                   "ASRQ_HOME": str(ROOT / "bench" / "work" / "scale-home"),
                   "ASRQ_STORAGE_URL": f"file://{ROOT / 'bench' / 'work' / 'scale-objects'}"})
        r = redis.Redis.from_url(broker)
        # publishing 10,000: the loop over send_task as it was, then send_prepare, on an empty Redis db each
        ids = [uuid.uuid4() for _ in range(PUBLISH_N)]
        send_prepare(ids[:10])
        r.flushdb()
        before_n = PUBLISH_N if n >= FULL_N else 1_000
        t = time.perf_counter()
        _send_many_before(TASK_PREPARE, QUEUE_PREPARE, ids[:before_n])
        out["publish_before_s_per_10k"] = (time.perf_counter() - t) * PUBLISH_N / before_n
        out["publish_before_n"] = before_n
        r.flushdb()
        t, c = time.perf_counter(), time.process_time()
        send_prepare(ids)
        out["publish_after_s"] = time.perf_counter() - t
        out["publish_after_cpu_s"] = time.process_time() - c
        r.flushdb()
        log(f"publish 10,000: before {out['publish_before_s_per_10k']:.2f} s (measured on {before_n:,}), "
            f"after {out['publish_after_s']:.2f} s")

        # the backlog: n QUEUED jobs, all stale, and their n messages waiting
        jobs = [uuid.uuid4() for _ in range(n)]
        t = time.perf_counter()
        _copy_jobs(db_url, jobs, stale_s)
        log(f"COPY of {n:,} QUEUED jobs: {time.perf_counter() - t:.1f} s")
        mem0 = r.info("memory")["used_memory"]
        t = time.perf_counter()
        for start in range(0, n, 50_000):
            send_prepare(jobs[start:start + 50_000])
        out["publish_backlog_s"] = time.perf_counter() - t
        out["redis_bytes_per_message"] = (r.info("memory")["used_memory"] - mem0) / n
        log(f"published {n:,} messages in {out['publish_backlog_s']:.1f} s; Redis "
            f"{out['redis_bytes_per_message']:.0f} bytes a queued message")

        from workers.tasks.reconcile import reconcile_once

        reconcile_once()  # warm: imports, connections, the first (uncounted) sweep of the sent index
        passes = []
        for _ in range(3):
            tracemalloc.start()
            t = time.perf_counter()
            counts = reconcile_once()
            took = time.perf_counter() - t
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            passes.append((took, peak, sum(counts.values()) if counts else 0))
        out["pass_s"] = max(p[0] for p in passes)
        out["pass_peak_mb"] = max(p[1] for p in passes) / 1e6
        out["pass_resent"] = max(p[2] for p in passes)
        log(f"reconcile pass behind {n:,}: {out['pass_s']:.2f} s (slowest of 3), peak "
            f"{out['pass_peak_mb']:.1f} MB, re-sent {out['pass_resent']}")
        if n <= BEFORE_MAX_N:
            tracemalloc.start()
            t = time.perf_counter()
            seen = _inventory_before(broker)
            out["before_inventory_s"] = time.perf_counter() - t
            out["before_inventory_peak_mb"] = tracemalloc.get_traced_memory()[1] / 1e6
            tracemalloc.stop()
            log(f"before: its inventory read alone {out['before_inventory_s']:.2f} s, peak "
                f"{out['before_inventory_peak_mb']:.0f} MB ({seen:,} messages)")
        r.close()
    return out


# ---- the tables: hot paths on a big table against a small one -------------------------------------------------------

TENANTS = [f"t{i:02d}" for i in range(20)]
CHUNKS_PER_JOB = 4
EXPIRED_SHARE = 0.1  # of the finished jobs, older than the retention
#: (finished jobs, queued jobs) of the big and the small table
TABLES_FULL = ((1_000_000, 200_000), (10_000, 2_000))
TABLES_QUICK = ((20_000, 4_000), (1_000, 200))
LIST_PAGES = 300  # list pages timed per filter, on either table (p99: the 3rd slowest, not the slowest)
LIST_SINCE_DAYS = 7  # the age filter of the listing: jobs of the last week
LIST_KEYS = ("list_p99_ms", "list_state_p99_ms", "list_state_since_p99_ms")


def _copy(cur, table: str, columns: str, rows) -> None:  # noqa: ANN001
    buf = io.StringIO()
    n = 0
    for row in rows:
        buf.write(row)
        n += 1
        if n % 200_000 == 0:
            buf.seek(0)
            cur.copy_expert(f"COPY {table} ({columns}) FROM STDIN", buf)
            buf = io.StringIO()
    buf.seek(0)
    cur.copy_expert(f"COPY {table} ({columns}) FROM STDIN", buf)


def _load_tables(db_url: str, finished: int, queued: int, retention_days: float) -> dict:
    """COPY ``finished`` COMPLETED jobs (finished over the last 400 days, EXPIRED_SHARE of them past the
    retention) with CHUNKS_PER_JOB DONE chunks each, and ``queued`` QUEUED jobs, over TENANTS."""
    import random

    from sqlalchemy import create_engine

    from app.db.models import utcnow

    rng = random.Random(7)
    now = utcnow()
    fin = [uuid.uuid4() for _ in range(finished)]
    que = [uuid.uuid4() for _ in range(queued)]
    n_expired = int(finished * EXPIRED_SHARE)
    live_span_s = (retention_days - 1) * 86400

    def age(i: int) -> timedelta:
        if i < n_expired:
            return timedelta(days=retention_days + 1 + rng.random() * 300)
        return timedelta(seconds=rng.random() * live_span_s)

    job_cols = ("id, tenant, state, source_uri, filename, options, params_hash, chunks_total, chunks_done, "
                "prepare_attempts, finalize_attempts, duration_s, created_at, updated_at, finished_at")

    def jobs():  # noqa: ANN202
        for i, j in enumerate(fin):
            t = (now - age(i)).isoformat()
            yield (f"{j}\t{TENANTS[i % len(TENANTS)]}\tCOMPLETED\ts3://bench/{j}.wav\tcall-{i}.wav\t{{}}\t{'0' * 64}\t"
                   f"{CHUNKS_PER_JOB}\t{CHUNKS_PER_JOB}\t1\t1\t40.0\t{t}\t{t}\t{t}\n")
        t = (now - timedelta(seconds=30)).isoformat()
        for i, j in enumerate(que):
            yield (f"{j}\t{TENANTS[i % len(TENANTS)]}\tQUEUED\ts3://bench/{j}.wav\tnew-{i}.wav\t{{}}\t{'0' * 64}\t"
                   f"\\N\t0\t0\t0\t\\N\t{t}\t{t}\t\\N\n")

    def chunks():  # noqa: ANN202
        t = now.isoformat()
        for j in fin:
            for k in range(CHUNKS_PER_JOB):
                yield (f"{uuid.uuid4()}\t{j}\t{k}\t{k * 10000}\t{k * 10000 + 9500}\tDONE\t1\thello world\t"
                       f'[[0.0, 0.5, "hello"], [0.6, 1.0, "world"]]\ten\t{t}\n')

    engine = create_engine(db_url)
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        _copy(cur, "jobs", job_cols, jobs())
        _copy(cur, "chunks", "id, job_id, index, start_ms, end_ms, state, attempts, text, words, language, updated_at",
              chunks())
        raw.commit()
        cur.execute("ANALYZE jobs")
        cur.execute("ANALYZE chunks")
        raw.commit()
    finally:
        raw.close()
        engine.dispose()
    mine = [j for i, j in enumerate(fin) if i % len(TENANTS) == 0]
    return {"finished": fin, "queued": que, "t00": mine, "expired": n_expired}


def _p(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def _page_buffers(db_url: str, c, params: dict, auth: dict) -> float:  # noqa: ANN001
    """Postgres buffers read per job listed, at most over the first 5 pages of this listing (EXPLAIN ANALYZE,
    BUFFERS, of the statements the API sent; per job, as the small table's pages may be short): what a page
    reads, which no load on the machine changes, so it shows growth with the table where a p99 of wall
    time on a busy machine cannot. An index range reads about one buffer a job."""
    from sqlalchemy import create_engine, event
    from sqlalchemy.engine import Engine

    seen: list = []

    def record(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001, ARG001
        if "ORDER BY jobs.created_at DESC" in statement:
            seen.append((statement, parameters))

    event.listen(Engine, "before_cursor_execute", record)
    try:
        cursor = None
        for _ in range(5):
            r = c.get("/v1/jobs", params={"limit": 100, **params, **({"cursor": cursor} if cursor else {})},
                      headers=auth)
            cursor = r.json().get("next_cursor")
            if not cursor:
                break
    finally:
        event.remove(Engine, "before_cursor_execute", record)
    engine = create_engine(db_url)
    raw = engine.raw_connection()
    try:
        cur, most = raw.cursor(), 0
        for statement, parameters in seen:
            cur.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement, parameters)
            plan = cur.fetchone()[0][0]["Plan"]
            read = plan.get("Shared Hit Blocks", 0) + plan.get("Shared Read Blocks", 0)
            most = max(most, read / max(1, plan.get("Actual Rows", 0)))
        raw.rollback()
        return most
    finally:
        raw.close()
        engine.dispose()


def measure_tables(finished: int, queued: int, status_ids: int, log=print) -> dict:  # noqa: ANN001
    """Each hot path timed on a database of ``finished`` + ``queued`` jobs: in-process API calls (the
    app and Postgres, no HTTP server), standings, one reconcile pass, one retention sweep. Bulk status
    asks for ``status_ids`` jobs (the same number on both tables)."""
    import random

    import redis
    from fastapi.testclient import TestClient

    from app.api.main import create_app
    from app.db.migrate import upgrade
    from app.db.models import utcnow
    from app.db.session import session_scope
    from app.fair_share import read_standings
    from app.messaging import send_prepare
    from app.settings import get_settings
    from app.storage import get_store
    from tests.services import apply_env, postgres_database, redis_db

    out: dict = {"finished": finished, "queued": queued, "status_ids": status_ids}
    rng = random.Random(11)
    with postgres_database() as db_url, redis_db(REDIS_DB) as broker:
        upgrade(db_url)
        work = ROOT / "bench" / "work" / "scale-tables"
        apply_env({"ASRQ_DATABASE_URL": db_url, "ASRQ_BROKER_URL": broker, "ASRQ_HOME": str(work / "home"),
                   "ASRQ_STORAGE_URL": f"file://{work / 'objects'}", "ASRQ_API_KEYS": "t00:benchkey",
                   "ASRQ_METRICS_TOKEN": "benchscrape", "ASRQ_METRICS_CACHE_S": "0",
                   "ASRQ_RECONCILE_STALE_S": "5"})
        settings = get_settings()
        t = time.perf_counter()
        ids = _load_tables(db_url, finished, queued, settings.retention_days)
        out["load_s"] = time.perf_counter() - t
        for start in range(0, queued, 50_000):
            send_prepare(ids["queued"][start:start + 50_000])
        # the 1.2 million UUID objects of the load are this process's, not the API's: left alive, each full
        # collection of Python's GC walks them during the timed calls (tens of ms, on the big table only)
        ids = {"t00": ids["t00"]}
        gc.collect()
        log(f"tables: {finished:,} finished jobs, {finished * CHUNKS_PER_JOB:,} chunks, {queued:,} queued: "
            f"loaded in {out['load_s']:.1f} s")
        auth = {"Authorization": "Bearer benchkey"}
        with TestClient(create_app(settings)) as c:
            c.get("/v1/jobs", headers=auth)  # warm
            lat = []
            for j in rng.sample(ids["t00"], min(300, len(ids["t00"]))):
                t = time.perf_counter()
                assert c.get(f"/v1/jobs/{j}", headers=auth).status_code == 200
                lat.append(time.perf_counter() - t)
            out["get_p50_ms"], out["get_p99_ms"] = _p(lat, 0.5) * 1e3, _p(lat, 0.99) * 1e3
            # the listing as clients page it: unfiltered, by state, by state and age; LIST_PAGES pages of
            # each, following the cursor and starting over at the end, so the small table (a few pages of
            # a tenant) is sampled as often as the big one and each p99 compares like with like
            since = (utcnow() - timedelta(days=LIST_SINCE_DAYS)).isoformat()
            for name, params in (("list", {}), ("list_state", {"state": "COMPLETED"}),
                                 ("list_state_since", {"state": "COMPLETED", "since": since})):
                lat, cursor = [], None
                for _ in range(LIST_PAGES):
                    t = time.perf_counter()
                    r = c.get("/v1/jobs", params={"limit": 100, **params, **({"cursor": cursor} if cursor else {})},
                              headers=auth)
                    lat.append(time.perf_counter() - t)
                    assert r.status_code == 200 and r.json()["jobs"], r.text
                    cursor = r.json().get("next_cursor")
                out[f"{name}_p50_ms"], out[f"{name}_p99_ms"] = _p(lat, 0.5) * 1e3, _p(lat, 0.99) * 1e3
                out[f"{name}_buffers"] = _page_buffers(db_url, c, params, auth)
            some = [str(j) for j in rng.sample(ids["t00"], status_ids)]
            lat = []
            for _ in range(5):
                t = time.perf_counter()
                assert c.post("/v1/jobs/status", json={"ids": some}, headers=auth).status_code == 200
                lat.append(time.perf_counter() - t)
            out["bulk_status_ms"] = _p(lat, 0.5) * 1e3
            lat = []
            # the first scrape counts every job; the following ones count those in flight (app/metrics.py)
            assert c.get("/metrics", headers={"Authorization": "Bearer benchscrape"}).status_code == 200
            for _ in range(5):
                t = time.perf_counter()
                assert c.get("/metrics", headers={"Authorization": "Bearer benchscrape"}).status_code == 200
                lat.append(time.perf_counter() - t)
            out["scrape_ms"] = max(lat) * 1e3
        lat = []
        for _ in range(5):
            with session_scope() as s:
                t = time.perf_counter()
                read_standings(s, TENANTS, settings)
                lat.append(time.perf_counter() - t)
        out["standings_ms"] = _p(lat, 0.5) * 1e3
        from workers.tasks.maintenance import expire_jobs
        from workers.tasks.reconcile import reconcile_once

        reconcile_once()
        t = time.perf_counter()
        counts = reconcile_once()
        out["reconcile_s"] = time.perf_counter() - t
        out["reconcile_resent"] = sum(counts.values()) if counts else 0
        cutoff = utcnow() - timedelta(days=settings.retention_days)
        t = time.perf_counter()
        swept = 0
        while n := expire_jobs(get_store(), cutoff, 10_000):
            swept += n
        out["retention_s"] = time.perf_counter() - t
        out["retention_jobs"] = swept
        out["retention_ms_per_job"] = out["retention_s"] * 1e3 / max(swept, 1)
        out["redis_used_bytes"] = redis.Redis.from_url(broker).info("memory")["used_memory"]
    log("  " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in out.items()))
    return out


def run(quick: bool, log=print) -> dict:  # noqa: ANN001
    out = measure(QUICK_N if quick else FULL_N, log)
    big, small = TABLES_QUICK if quick else TABLES_FULL
    n_status = min(1000, small[0] // len(TENANTS))  # what the small table holds of one tenant
    out["tables"] = {"big": measure_tables(*big, n_status, log=log), "small": measure_tables(*small, n_status, log=log)}
    return out


def _ratio(v: dict, key: str) -> float:
    t = v["tables"]
    return t["big"][key] / max(t["small"][key], 1e-9)


_LIST_NAMES = {"list_p99_ms": "all", "list_state_p99_ms": "state=COMPLETED",
               "list_state_since_p99_ms": f"state=COMPLETED since={LIST_SINCE_DAYS} days"}


def _list_keys(t: dict) -> list[str]:
    return [k for k in LIST_KEYS if k in t]  # results from before the filtered listings have the first alone


def checks(v: dict) -> list:
    from bench.report import Check

    out = []
    if t := v.get("tables"):
        big = t["big"]
        out += [
            Check("GET job and list p99 within 1.5x of the small table",
                  _ratio(v, "get_p99_ms") <= 1.5 and all(_ratio(v, k) <= 1.5 for k in _list_keys(big)),
                  f"GET p99 {big['get_p99_ms']:.1f} ms ({_ratio(v, 'get_p99_ms'):.2f}x), list p99 "
                  + ", ".join(f"{_LIST_NAMES[k]} {big[k]:.1f} ms ({_ratio(v, k):.2f}x)" for k in _list_keys(big))
                  + f" at {big['finished']:,} finished jobs; buffers read per job listed: "
                  + ", ".join(f"{big[b]:.2f} against {t['small'][b]:.2f}" for k in _list_keys(big)
                              if (b := k.replace("_p99_ms", "_buffers")) in big)),
            Check("/metrics scrape <= 250 ms", big["scrape_ms"] <= 250, f"{big['scrape_ms']:.0f} ms (slowest of 5)"),
        ]
    return out + [
        Check("publishing 10,000 messages well under 1 s (wall < 1 s, CPU < 0.5 s)",
              v["publish_after_s"] < 1.0 and v["publish_after_cpu_s"] < 0.5,
              f"{v['publish_after_s']:.2f} s, {v['publish_after_cpu_s']:.2f} s CPU "
              f"(before: {v['publish_before_s_per_10k']:.1f} s)"),
        Check(f"one reconcile pass behind {v['queued']:,} queued messages <= 2 s and 200 MB, re-sending nothing",
              v["pass_s"] <= 2 and v["pass_peak_mb"] <= 200 and v["pass_resent"] == 0,
              f"{v['pass_s']:.2f} s, {v['pass_peak_mb']:.1f} MB, re-sent {v['pass_resent']}"),
    ]


def summary(v: dict) -> list[str]:
    return [f"scale: publish 10,000 {v['publish_after_s']:.2f} s (before {v['publish_before_s_per_10k']:.1f} s); "
            f"reconcile pass behind {v['queued']:,} queued {v['pass_s']:.2f} s, {v['pass_peak_mb']:.1f} MB; "
            f"Redis {v['redis_bytes_per_message']:.0f} B a queued message"]


def details(v: dict) -> list[str]:
    out = [f"- scale (bench/scale.py): {v['queued']:,} QUEUED jobs (COPY), all stale, their prepare messages "
           f"waiting in Redis ({v['publish_backlog_s']:.1f} s to publish them, "
           f"{v['redis_bytes_per_message']:.0f} bytes of Redis a message, list entry and sent-index field)",
           f"  - publishing 10,000 prepare messages: {v['publish_after_s']:.2f} s "
           f"({v['publish_after_cpu_s']:.2f} s CPU); before (send_task each): {v['publish_before_s_per_10k']:.1f} s "
           f"(measured on {v['publish_before_n']:,})",
           f"  - one reconcile pass: {v['pass_s']:.2f} s (slowest of 3), peak {v['pass_peak_mb']:.1f} MB of Python "
           f"memory, re-sent {v['pass_resent']}"]
    if t := v.get("tables"):
        big, small = t["big"], t["small"]
        out.append(f"  - hot paths, {big['finished']:,} finished jobs ({big['finished'] * CHUNKS_PER_JOB:,} chunks) and "
                   f"{big['queued']:,} queued against {small['finished']:,} and {small['queued']:,} "
                   f"(in-process API calls: the app and Postgres, no HTTP server):")
        lists = [(k, f"list page (100) p99 ms, {_LIST_NAMES[k]} ({LIST_PAGES} pages, cursor followed)")
                 for k in _list_keys(big)]
        for key, what in (("get_p99_ms", "GET job p99 ms"), *lists,
                          ("bulk_status_ms", f"bulk status of {big['status_ids']:,} ms"), ("scrape_ms", "/metrics ms (slowest of 5 after a first)"),
                          ("standings_ms", "fair-share standings ms"), ("reconcile_s", "reconcile pass s"),
                          ("retention_ms_per_job", "retention sweep ms a job")):
            out.append(f"    - {what}: {big[key]:.1f} against {small[key]:.1f} ({_ratio(v, key):.2f}x)")
        for k in _list_keys(big):
            if (b := k.replace("_p99_ms", "_buffers")) in big:
                out.append(f"    - Postgres buffers read per job listed (most of the first 5 pages), {_LIST_NAMES[k]}: "
                           f"{big[b]:.2f} against {small[b]:.2f} ({_ratio(v, b):.2f}x)")
        out.append(f"    - retention swept {big['retention_jobs']:,} expired jobs in {big['retention_s']:.1f} s; "
                   f"the reconcile pass re-sent {big['reconcile_resent']}")
    if "before_inventory_s" in v:
        out.append(f"  - before: the inventory read alone (every list, parsed) {v['before_inventory_s']:.2f} s, "
                   f"peak {v['before_inventory_peak_mb']:.0f} MB")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_N:,} queued messages instead of {FULL_N:,}")
    ap.add_argument("--queued", type=int, help="queued messages (overrides --quick)")
    args = ap.parse_args(argv)
    v = measure(args.queued or (QUICK_N if args.quick else FULL_N))
    print("\n".join(details(v)))
    for c in checks(v):
        print(f"{c.verdict:4}  {c.name}: {c.detail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
