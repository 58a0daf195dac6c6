"""Section 3 (asrq) and the service checks, on the real stack: a fresh Postgres database, Redis db 13,
a moto S3 server, the API, one prepare/finalize CPU worker and one transcribe worker, all on loopback,
started as tests/conftest.py does (tests/services.py) but with the production timing settings.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text

from bench.corpus import Item
from bench.measure import TreeSampler, corpus_wer

BUCKET = "asrq-bench"
REDIS_DB = 13  # this harness's own Redis db number (tests use 11, 12), on ASRQ_TEST_REDIS (default: the local Redis)
# tests/services.base_env shortens these so fault tests run fast; a benchmark runs the shipped defaults
# (a 6 s reconcile staleness would re-send every chunk still waiting in the queue and skew the figures)
TEST_ONLY_ENV = ("ASRQ_RECONCILE_INTERVAL_S", "ASRQ_RECONCILE_STALE_S", "ASRQ_CHUNK_LEASE_S",
                 "ASRQ_BATCH_FLUSH_INTERVAL_S", "ASRQ_VISIBILITY_TIMEOUT_S")
ASRQ_TREES = ("api", "cpu-worker", "gpu-worker")


@dataclass
class Bench:
    stack: object  # tests.services.Stack
    moto: object  # tests.services.Proc
    db: object  # sqlalchemy Engine on the stack's database
    s3: object  # boto3 client

    def client(self):  # noqa: ANN201
        return self.stack.client()

    def uri(self, name: str) -> str:
        return f"s3://{BUCKET}/corpus/{name}"

    def scalar(self, sql: str, **params: object):  # noqa: ANN201
        with self.db.connect() as c:
            return c.execute(text(sql), params).scalar()

    def rows(self, sql: str, **params: object) -> list:
        with self.db.connect() as c:
            return list(c.execute(text(sql), params))


@contextlib.contextmanager
def running_stack(work: Path, extra_env: dict | None = None, log=print, gpus: str = "cpu",  # noqa: ANN001
                  worker_env: dict | None = None) -> Iterator[Bench]:
    """The stack on loopback. ``gpus`` goes to `asrq worker --gpus` (cpu: one CPU transcribe process);
    ``worker_env`` to the transcribe worker only (e.g. the engine it loads at start)."""
    import sys

    import boto3

    from app.db import session
    from app.db.migrate import upgrade
    from tests.services import Stack, apply_env, base_env, free_port, moto_s3, postgres_database, redis_db, wait_until

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    key = secrets.token_urlsafe(16)
    saved = dict(os.environ)
    with moto_s3(BUCKET, work / "logs") as (endpoint, moto), postgres_database() as db_url, \
            redis_db(REDIS_DB) as broker:
        upgrade(db_url)
        env = base_env(db_url, broker, f"s3://{BUCKET}/asrq", endpoint, work, key)
        for k in TEST_ONLY_ENV:
            env.pop(k, None)
        env["ASRQ_S3_SOURCE_ALLOW"] = f"{BUCKET}/corpus/"  # the bench submits its corpus from there by URI
        env.update(extra_env or {})
        apply_env(env)
        st = Stack(env=env, tmp=work, api_url=f"http://127.0.0.1:{free_port()}", api_key=key)
        db = create_engine(db_url, pool_size=2)
        try:
            log("starting the stack (API, prepare/finalize worker, transcribe worker)")
            st.start_api()
            cpu = st.start_cpu_worker()
            if gpus == "cpu":
                gpu = st.start_transcribe_worker(extra_env=worker_env)
            else:
                gpu = st.start("gpu-worker", [sys.executable, "-m", "app.cli", "worker", "--gpus", gpus], worker_env)
            # ready = consuming, and the transcribe worker has its model loaded (it warms at start)
            wait_until(lambda: " ready." in cpu.log.read_text(errors="replace"), 120, what="cpu worker")
            wait_until(lambda: "loaded on" in gpu.log.read_text(errors="replace"), 180, what="transcribe worker")
            s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
            yield Bench(st, moto, db, s3)
        finally:
            st.stop_all()
            db.dispose()
            os.environ.clear()
            os.environ.update(saved)
            session.reset_engines()


def upload(b: Bench, items: list[Item]) -> None:
    for it in items:
        b.s3.upload_file(it.path, BUCKET, f"corpus/{it.name}")


def wait_terminal(b: Bench, ids: list[str], timeout_s: float, poll_s: float = 0.5) -> None:
    """Poll Postgres (one cheap query) rather than the API, so waiting costs the stack nothing."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = b.scalar("SELECT count(*) FROM jobs WHERE id = ANY(CAST(:ids AS uuid[])) "
                        "AND state NOT IN ('COMPLETED','FAILED','CANCELLED')", ids=ids)
        if not left:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{left} of {len(ids)} jobs still running after {timeout_s:.0f} s\n{b.stack.logs()}")
        time.sleep(poll_s)


def warm_up(b: Bench, uri: str, options: dict | None = None) -> None:
    """One job through every stage first: the prepare worker loads its VAD model on its first job."""
    with b.client() as c:
        jid = c.submit_uri(uri, options)["id"]
    wait_terminal(b, [jid], 300)


def first_chunk(b: Bench, uri: str, trials: int) -> list[float]:
    """Seconds from submit until the job's first chunk result is stored, on an idle stack."""
    out = []
    with b.client() as c:
        for _ in range(trials):
            t0 = time.monotonic()
            jid = c.submit_uri(uri)["id"]
            while not b.scalar("SELECT 1 FROM chunks WHERE job_id = CAST(:j AS uuid) AND state = 'DONE' LIMIT 1",
                               j=jid):
                if time.monotonic() - t0 > 120:
                    raise TimeoutError(f"no chunk result after 120 s\n{b.stack.logs()}")
                time.sleep(0.01)
            out.append(time.monotonic() - t0)
            wait_terminal(b, [jid], 120)  # idle again before the next trial
    return out


def throughput(b: Bench, items: list[Item], timeout_s: float, options: dict | None = None) -> dict:
    """Submit the corpus in one POST /v1/jobs/batch; wall time from submit to the last COMPLETED."""
    procs = b.stack.procs
    roots = {n: procs[n].popen.pid for n in ASRQ_TREES} | {"moto (S3 server)": b.moto.popen.pid}
    sampler = TreeSampler(roots, total_of=set(ASRQ_TREES))
    sampler.start()
    t_submit = time.time()
    with b.client() as c:
        ids = c.submit_batch([b.uri(it.name) for it in items], options)
    wait_terminal(b, ids, timeout_s)
    usage = sampler.stop()
    rows = b.rows("SELECT id, state, error, extract(epoch FROM created_at), extract(epoch FROM started_at), "
                  "extract(epoch FROM transcribing_at), extract(epoch FROM finished_at), chunks_total "
                  "FROM jobs WHERE id = ANY(CAST(:ids AS uuid[]))", ids=ids)
    by_id = {str(r[0]): r for r in rows}
    failed = [f"{by_id[j][1]}: {by_id[j][2]}" for j in ids if by_id[j][1] != "COMPLETED"]
    wall = max(float(r[6]) for r in rows) - t_submit
    hyps = []
    with b.client() as c:
        for jid in ids:
            hyps.append(json.loads(c.transcript(jid, "json"))["text"] if by_id[jid][1] == "COMPLETED" else "")
    batches = b.rows("SELECT size, audio_s, infer_s, job_count, extract(epoch FROM created_at) FROM batches "
                     "WHERE created_at >= to_timestamp(:t) ORDER BY created_at", t=t_submit)
    # where the wall time goes, seen from the engine: a batch row is written right after its inference,
    # so it ran over [created_at - infer_s, created_at]; the rest is time the engine waited
    spans = [(float(r[4]) - float(r[2]), float(r[4])) for r in batches]
    idle = {
        "head_s": spans[0][0] - t_submit if spans else wall,
        "gaps_s": sum(max(0.0, b0 - a1) for (_, a1), (b0, _) in zip(spans, spans[1:])),
        "tail_s": t_submit + wall - spans[-1][1] if spans else 0.0,
    }
    prep = [float(r[5]) - float(r[4]) for r in rows if r[4] is not None and r[5] is not None]
    return {
        "jobs": len(ids),
        "failed": failed[:5],
        "n_failed": len(failed),
        "wall_s": wall,
        "audio_s": sum(it.duration_s for it in items),
        "wer": corpus_wer([it.reference for it in items], hyps),
        "hyps": dict(zip([it.name for it in items], hyps)),
        "usage": usage,
        "engine_idle": idle,
        "batches": len(batches),
        "batch_sizes": [int(r[0]) for r in batches],
        "infer_s": sum(float(r[2]) for r in batches),
        "chunks": sum(int(r[0]) for r in batches),
        "chunk_audio_s": sum(float(r[1]) for r in batches),
        # per-job prepare time (started -> chunks planned): decode + upload PCM + VAD
        "prepare_s_total": sum(prep),
        "prepare_s_max": max(prep, default=0.0),
        "first_chunk_planned_s": min((float(r[5]) for r in rows if r[5] is not None), default=t_submit) - t_submit,
    }


def enqueue(b: Bench, items: list[Item], n: int) -> dict:
    """POST n jobs by URI in one batch request. Workers are stopped first so the flood stays queued."""
    import redis

    for name in ("cpu-worker", "gpu-worker"):
        b.stack.procs[name].stop()
    uris = [b.uri(items[i % len(items)].name) for i in range(n)]
    body = {"jobs": [{"source_uri": u} for u in uris]}
    before = b.scalar("SELECT count(*) FROM jobs")
    with httpx.Client(base_url=b.stack.api_url, headers={"Authorization": f"Bearer {b.stack.api_key}"},
                      timeout=300) as c:
        t0 = time.monotonic()
        resp = c.post("/v1/jobs/batch", json=body)
        elapsed = time.monotonic() - t0
    resp.raise_for_status()
    rows = b.scalar("SELECT count(*) FROM jobs") - before
    # the API may publish the prepare messages after answering: also time until all are on the queue
    r = redis.Redis.from_url(b.stack.env["ASRQ_BROKER_URL"])
    from app.messaging import redis_queue_keys

    # one tenant's 2,000 jobs go out at several fair-share levels (app/fair_share.py): one list each
    while (queued := sum(r.llen(k) for k in redis_queue_keys("prepare"))) < n and time.monotonic() - t0 < 300:
        time.sleep(0.05)
    all_queued = time.monotonic() - t0
    return {"jobs": n, "seconds": elapsed, "rows_added": rows, "messages_queued": queued,
            "all_queued_s": all_queued, "jobs_per_s": n / elapsed, "ids": resp.json()["job_ids"]}


def latency(b: Bench, ids: list[str], rate: float, duration_s: float) -> dict:
    from bench.measure import run_child

    sampler = TreeSampler({"api": b.stack.procs["api"].popen.pid})
    sampler.start()
    out = run_child("bench.load", {"base_url": b.stack.api_url, "api_key": b.stack.api_key, "ids": ids,
                                   "rate": rate, "duration_s": duration_s})
    out["client_usage"] = out.pop("usage")
    out["usage"] = sampler.stop()
    return out


def summarise_first_chunk(times: list[float]) -> dict:
    return {"trials_s": [round(t, 3) for t in times], "median_s": statistics.median(times), "max_s": max(times)}
