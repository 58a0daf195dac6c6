"""Transcribe bookkeeping and finalize's writes, before and after issue 10 item 4, side by side in one run.

On real services (a fresh Postgres database, a moto S3 server): 64 chunks of 16 jobs (4 chunks of 10 s
each), as one batch, go through claim -> ranged reads of their PCM -> storing their results (the jobs
move to FINALIZING), and then finalize's four transcript objects per job are written. "before" is the
code as it was (claim then read the work back, one GET after another, one UPDATE per chunk and three
statements per job; one PUT after another), kept here verbatim; "after" is the code in workers/. The
rounds alternate, so both meet the same machine load; the medians are reported.

    python -m bench.bookkeeping [--rounds 7] [--chunks 64] [--per-job 4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# ---- "before": the code of workers/state.py and workers/tasks/{transcribe,finalize}.py as it was ---------------

def _save_results_before(session, batch_id, results):  # noqa: ANN001, ANN202
    from sqlalchemy import update

    from app.db.models import Chunk, ChunkState, utcnow
    from app.lifecycle import _held, lock_jobs

    lock_jobs(session, {r[0].job_id for r in results})
    now = utcnow()
    for work, text, words, language in results:
        session.execute(
            update(Chunk).where(*_held([work]))
            .values(state=ChunkState.DONE, text=text, words=words, language=language, batch_id=batch_id,
                    error=None, lease_until=None, updated_at=now)
        )
    finished = [jid for jid in sorted({r[0].job_id for r in results}) if _advance_before(session, jid)]
    session.commit()
    return finished


def _advance_before(session, job_id) -> bool:  # noqa: ANN001
    from sqlalchemy import func, select

    from app.db.models import Chunk, ChunkState, Job, JobState

    job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
    if job is None or job.state != JobState.TRANSCRIBING:
        return False
    done = session.scalar(select(func.count()).where(Chunk.job_id == job_id, Chunk.state == ChunkState.DONE)) or 0
    job.chunks_done = done
    if job.chunks_total is not None and done >= job.chunks_total:
        job.state = JobState.FINALIZING
        job.lease_until = None
        return True
    return False


def _claim_and_read_before(batch):  # noqa: ANN001, ANN202
    from app.db.session import session_scope
    from app.lifecycle import claim_chunks
    from workers.tasks.transcribe import _read_one

    with session_scope() as s:
        claimed, _ = claim_chunks(s, [w.chunk_id for w in batch], 60.0, 3)  # then reads the work back
    return claimed, [_read_one(w) for w in claimed]


def _puts_before(objects) -> None:  # noqa: ANN001
    from app.storage import get_store

    store = get_store()
    for key, data, ctype in objects:
        store.put_bytes(key, data, ctype)


# ---- "after": the code in workers/ -------------------------------------------------------------------------

def _claim_and_read_after(batch):  # noqa: ANN001, ANN202
    from workers.tasks.transcribe import _claim_and_read

    return _claim_and_read(batch)


def _puts_after(objects) -> None:  # noqa: ANN001
    from workers.tasks.finalize import put_all

    put_all(objects)


# ---- one round ----------------------------------------------------------------------------------------------

def _setup_round(n_chunks: int, per_job: int, chunk_s: float):  # noqa: ANN202
    """Fresh TRANSCRIBING jobs with PENDING chunks, their PCM in storage; the work as open_chunks finds it."""
    import numpy as np

    from app.constants import pcm_key
    from app.db.models import Chunk, Job, JobState
    from app.db.session import session_scope
    from app.lifecycle import open_chunks
    from app.storage import get_store

    chunk_ms = int(chunk_s * 1000)
    n_jobs = n_chunks // per_job
    pcm = (np.random.default_rng(0).standard_normal(int(per_job * chunk_s * 16000)) * 3000).astype("<i2").tobytes()
    store = get_store()
    ids = []
    with session_scope() as s:
        for _ in range(n_jobs):
            job = Job(tenant="bench", state=JobState.TRANSCRIBING, source_uri="upload:x.wav", filename="x.wav",
                      options={"engine": "whisper", "model": "bundled:tiny.en",
                               "formats": ["json", "srt", "vtt", "txt"]},
                      params_hash="0" * 64, chunks_total=per_job)
            s.add(job)
            s.flush()
            chunks = [Chunk(job_id=job.id, index=i, start_ms=i * chunk_ms, end_ms=(i + 1) * chunk_ms)
                      for i in range(per_job)]
            s.add_all(chunks)
            s.flush()
            ids += [c.id for c in chunks]
            store.put_bytes(pcm_key(job.id), pcm, "application/octet-stream")
    with session_scope() as s:
        return open_chunks(s, ids)


def _results(claimed):  # noqa: ANN001, ANN202
    return [(w, f"text of chunk {w.index}", [[0.1 * k, 0.1 * k + 0.08, f"w{k}"] for k in range(25)], "en")
            for w in claimed]


def _transcripts(job_ids):  # noqa: ANN001, ANN202
    from app.constants import transcript_key
    from workers.formats import CONTENT_TYPES

    body = ("word " * 600).encode()
    return [(transcript_key(j, fmt), body, CONTENT_TYPES[fmt])
            for j in job_ids for fmt in ("json", "srt", "txt", "vtt")]


def _round(variant: str, n_chunks: int, per_job: int, chunk_s: float) -> dict:
    from app.db.session import session_scope
    from app.lifecycle import save_results

    batch = _setup_round(n_chunks, per_job, chunk_s)
    claim_read = _claim_and_read_before if variant == "before" else _claim_and_read_after
    save = _save_results_before if variant == "before" else save_results
    puts = _puts_before if variant == "before" else _puts_after
    out: dict = {}
    w0, c0 = time.perf_counter(), time.process_time()
    claimed, audios = claim_read(batch)
    w1, c1 = time.perf_counter(), time.process_time()
    assert len(claimed) == n_chunks and not any(isinstance(a, Exception) for a in audios), audios[:1]
    with session_scope() as s:
        finished = save(s, None, _results(claimed))
    w2, c2 = time.perf_counter(), time.process_time()
    assert len(finished) == n_chunks // per_job
    # finalize writes four formats per job; per job, as finalize does
    for jid in finished:
        puts(_transcripts([jid]))
    w3, c3 = time.perf_counter(), time.process_time()
    out.update(claim_read_s=w1 - w0, save_s=w2 - w1, bookkeeping_s=w2 - w0, finalize_puts_s=w3 - w2,
               bookkeeping_cpu_s=(c1 - c0) + (c2 - c1), finalize_cpu_s=c3 - c2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--chunks", type=int, default=64)
    ap.add_argument("--per-job", type=int, default=4)
    ap.add_argument("--chunk-s", type=float, default=10.0)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    from app.db.migrate import upgrade
    from tests.services import apply_env, moto_s3, postgres_database

    with tempfile.TemporaryDirectory(prefix="asrq-bookkeeping-") as tmp, \
            moto_s3("asrq-bench", Path(tmp)) as (endpoint, _proc), postgres_database() as db_url:
        upgrade(db_url)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ASRQ_")}
        env.update({"ASRQ_HOME": str(Path(tmp) / "home"), "ASRQ_DATABASE_URL": db_url,
                    "ASRQ_STORAGE_URL": "s3://asrq-bench/objects", "ASRQ_S3_ENDPOINT_URL": endpoint,
                    "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"})
        apply_env(env)
        _round("after", 8, 4, args.chunk_s)  # warm up: connections, imports
        _round("before", 8, 4, args.chunk_s)
        runs: dict[str, list[dict]] = {"before": [], "after": []}
        for r in range(args.rounds):
            for variant in (("before", "after") if r % 2 == 0 else ("after", "before")):
                runs[variant].append(_round(variant, args.chunks, args.per_job, args.chunk_s))
    keys = list(runs["before"][0])
    med = {v: {k: statistics.median(x[k] for x in runs[v]) for k in keys} for v in runs}
    n_jobs = args.chunks // args.per_job
    print(f"{args.chunks} chunks of {args.chunk_s:.0f} s, {n_jobs} jobs, one batch; Postgres + moto S3 on "
          f"loopback; median of {args.rounds} alternating rounds")
    print(f"{'':24}{'before':>10}{'after':>10}{'ratio':>8}")
    for k in keys:
        b, a = med["before"][k], med["after"][k]
        print(f"{k:24}{b * 1000:>8.1f}ms{a * 1000:>8.1f}ms{(b / a if a else float('inf')):>7.1f}x")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "median": med,
                                         "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
