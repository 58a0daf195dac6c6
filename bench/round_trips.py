"""Round trips per job of prepare and finalize, counted (not timed) on real services.

In this process, on a fresh Postgres database and a moto S3 server: N upload jobs of an 11 s FLAC go
through ``prepare_job`` (transcribe messages are counted, not sent), then N jobs with one finished chunk
through ``finalize_job``. SQL statements (SQLAlchemy's cursor events), S3 requests (botocore's events)
and messages are counted per job, with the CPU time per job beside them.

    python -m bench.round_trips [--jobs 20]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")

CLIP = ROOT.parent / "shared" / "audio" / "en_jfk_ask_not_11s.flac"


class Counts:
    def __init__(self) -> None:
        self.sql = 0
        self.s3: Counter = Counter()
        self.messages = 0

    def snapshot(self) -> tuple[int, int, int]:
        return self.sql, sum(self.s3.values()), self.messages


def _jobs(n: int, settings, store, finished: bool) -> list[uuid.UUID]:  # noqa: ANN001
    from sqlalchemy import insert, update

    from app.constants import source_key
    from app.db.models import Chunk, ChunkState, Job, JobState, utcnow
    from app.db.session import session_scope
    from app.jobs import NewJob, create_job
    from app.schemas import JobOptions
    from app.sources import UPLOAD_SCHEME

    data = CLIP.read_bytes()
    words = [[i * 0.4, i * 0.4 + 0.3, f"word{i}"] for i in range(30)]
    ids = []
    with session_scope() as s:
        for _ in range(n):
            jid = uuid.uuid4()
            if not finished:
                store.put_bytes(source_key(jid, "a.flac"), data, "audio/flac")
            create_job(s, "bench", NewJob(f"{UPLOAD_SCHEME}:a.flac", "a.flac", JobOptions()), settings, jid)
            if finished:
                s.execute(update(Job).where(Job.id == jid).values(state=JobState.FINALIZING, duration_s=11.0,
                                                                  chunks_total=1, chunks_done=1))
                s.execute(insert(Chunk), [{"id": uuid.uuid4(), "job_id": jid, "index": 0, "start_ms": 0,
                                           "end_ms": 11000, "state": ChunkState.DONE, "attempts": 1,
                                           "updated_at": utcnow(), "text": " ".join(w[2] for w in words),
                                           "words": words, "language": "en"}])
                s.commit()
            ids.append(jid)
    return ids


def _measure(label: str, step, ids: list[uuid.UUID], counts: Counts) -> dict:  # noqa: ANN001
    step(ids[0])  # warm: models loaded, connections open
    before = counts.snapshot()
    t0 = time.process_time()
    for jid in ids[1:]:
        step(jid)
    cpu_ms = (time.process_time() - t0) * 1000 / (len(ids) - 1)
    sql, s3, msgs = (b - a for a, b in zip(before, counts.snapshot()))
    n = len(ids) - 1
    out = {"step": label, "jobs": n, "sql_per_job": sql / n, "s3_per_job": s3 / n, "messages_per_job": msgs / n,
           "cpu_ms_per_job": cpu_ms}
    print(f"{label:9s} {n} jobs: SQL statements {sql / n:.1f}, S3 requests {s3 / n:.1f}, messages {msgs / n:.1f} "
          f"per job; CPU {cpu_ms:.0f} ms per job (this process; the servers' own work not included)")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=20)
    args = ap.parse_args(argv)
    from tests.services import REDIS_BASE, apply_env, base_env, moto_s3, postgres_database

    tmp = Path(tempfile.mkdtemp(prefix="asrq-trips-"))
    with postgres_database() as db, moto_s3("asrq-test", tmp) as (endpoint, _):
        apply_env(base_env(db, f"{REDIS_BASE}/15", "s3://asrq-test/asrq", endpoint, tmp, "k"))
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        from app.db.migrate import upgrade
        from app.settings import get_settings
        from app.storage import get_store
        import workers.tasks.finalize as finalize
        import workers.tasks.prepare as prepare

        upgrade(db)
        settings, store = get_settings(), get_store()
        counts = Counts()
        event.listen(Engine, "before_cursor_execute", lambda *a, **k: setattr(counts, "sql", counts.sql + 1))
        store.client.meta.events.register("before-call.s3.*", lambda **kw: counts.s3.update([kw["model"].name]))

        def send(ids, countdown=None, levels=None):  # noqa: ANN001, ANN202, ARG001 - counted, not sent
            counts.messages += len(list(ids))
            return 0

        prepare.send_transcribe = send
        finalize.send_finalize = send
        _measure("prepare", prepare.prepare_job, _jobs(args.jobs + 1, settings, store, finished=False), counts)
        _measure("finalize", finalize.finalize_job, _jobs(args.jobs + 1, settings, store, finished=True), counts)
        print("S3 requests by kind:", dict(counts.s3))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
