"""The HTTP API in-process on real Postgres and S3 (moto), for the retention, usage and bulk status tests.

No worker runs: publishes land as files in a filesystem broker folder. Each test gets two tenants of its own
(random names), so tests sharing the session's database never see each other's jobs or usage.
"""

from __future__ import annotations

import os
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import boto3
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from app.db.models import Batch, Job
from app.db.session import session_scope
from app.lifecycle import (
    begin_finalize,
    begin_prepare,
    claim_chunks,
    complete_job,
    record_batch,
    save_plan,
    save_results,
)
from tests.services import fresh_celery_app
from workers.chunking import ChunkPlan

BUCKET = "asrq-test"


@dataclass
class PgApi:
    c: TestClient
    tenant: str
    other: str
    auth: dict
    other_auth: dict
    prefix: str  # the service's own objects in BUCKET
    s3: object

    def get(self, path: str, other: bool = False, **params: object):
        return self.c.get(path, params=params, headers=self.other_auth if other else self.auth)

    def post(self, path: str, body: dict, other: bool = False):
        return self.c.post(path, json=body, headers=self.other_auth if other else self.auth)

    def batch(self, n: int, other: bool = False, name: str = "call") -> tuple[str, list[str]]:
        """Submit n jobs by s3:// URI in one batch; returns (batch_id, job ids)."""
        r = self.post("/v1/jobs/batch", {"jobs": [{"source_uri": f"s3://{BUCKET}/inbox/{name}-{i:05d}.wav"}
                                                  for i in range(n)]}, other)
        assert r.status_code == 202, r.text
        return r.json()["batch_id"], r.json()["job_ids"]

    def upload(self, data: bytes, filename: str = "talk.wav") -> str:
        r = self.c.post("/v1/jobs", headers=self.auth, files={"file": (filename, data, "audio/wav")})
        assert r.status_code == 202, r.text
        return r.json()["id"]

    def keys(self, job_id: str | uuid.UUID) -> list[str]:
        """Every object stored for this job (relative to its job prefix)."""
        p = f"{self.prefix}/jobs/{job_id}/"
        out = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=p):
            out += [o["Key"][len(p):] for o in page.get("Contents", [])]
        return sorted(out)

    def client(self, other: bool = False):  # noqa: ANN201
        """The project's HTTP client, speaking to this in-process app."""
        from app.client import AsrqClient

        c = AsrqClient("http://testserver")
        c.http.close()
        c.http = self.c
        c.http.headers.update(self.other_auth if other else self.auth)
        c.close = lambda: None  # the TestClient belongs to the fixture
        return c


def _reset_caches() -> None:
    from app import storage
    from app.db import session
    from app.settings import get_settings

    get_settings.cache_clear()
    session.reset_engines()
    storage._store.cache_clear()


@pytest.fixture
def pg_api(tmp_path: Path, monkeypatch, migrated_pg, s3):  # noqa: ANN001, ANN201
    from app.api.main import create_app
    from app.settings import get_settings

    endpoint, _ = s3
    tenant, other = f"t{secrets.token_hex(4)}", f"o{secrets.token_hex(4)}"
    key, other_key = secrets.token_urlsafe(12), secrets.token_urlsafe(12)
    prefix = f"svc-{tmp_path.name}"
    for k in [k for k in os.environ if k.startswith("ASRQ_")]:
        monkeypatch.delenv(k)
    env = {
        "ASRQ_HOME": str(tmp_path / "home"),
        "ASRQ_DATABASE_URL": migrated_pg,
        "ASRQ_STORAGE_URL": f"s3://{BUCKET}/{prefix}",
        "ASRQ_S3_ENDPOINT_URL": endpoint,
        "ASRQ_BROKER_URL": f"filesystem://{tmp_path / 'broker'}",
        "ASRQ_API_KEYS": f"{tenant}:{key},{other}:{other_key}",
        "ASRQ_S3_SOURCE_ALLOW": f"{BUCKET}/inbox/",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    _reset_caches()
    s3c = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test",
                       aws_secret_access_key="test")
    try:
        with fresh_celery_app(), TestClient(create_app(get_settings())) as client:
            yield PgApi(client, tenant, other, {"Authorization": f"Bearer {key}"},
                        {"Authorization": f"Bearer {other_key}"}, prefix, s3c)
    finally:
        _reset_caches()


# ---- the pipeline's own state transitions, as the workers make them ----------------------------------------------

def prepare(job_id: str, chunks_s: list[float], at: datetime | None = None) -> list:
    """QUEUED -> TRANSCRIBING with chunks of these lengths, the job created at ``at``."""
    jid = uuid.UUID(job_id)
    with session_scope() as s:
        if at is not None:
            s.execute(update(Job).where(Job.id == jid).values(created_at=at))
            s.commit()
        job = begin_prepare(s, jid, 3, 60)
        plans, t = [], 0
        for i, d in enumerate(chunks_s):
            plans.append(ChunkPlan(i, t, t + int(d * 1000)))
            t += int(d * 1000)
        ids = save_plan(s, jid, job.prepare_fence, plans, t / 1000)
    return ids


def run_batch(chunk_ids: list, infer_s: float, at: datetime | None = None) -> list:
    """One inference batch over these chunks (of any jobs): what transcribe stores."""
    with session_scope() as s:
        claimed, _ = claim_chunks(s, chunk_ids, 60, 3)
        assert len(claimed) == len(chunk_ids)
        batch_id = record_batch(s, "worker-1", "whisper/tiny", claimed, infer_s)
        finished = save_results(s, batch_id, [(w, "hello", [[0.0, 0.5, "hello"]], "en") for w in claimed], infer_s)
        if at is not None:
            s.execute(update(Batch).where(Batch.id == batch_id).values(created_at=at))
    return finished


def complete(job_id, at: datetime | None = None) -> None:  # noqa: ANN001
    jid = uuid.UUID(str(job_id))
    with session_scope() as s:
        fence = begin_finalize(s, jid, 3, 60)
        assert complete_job(s, jid, "en", fence)
        if at is not None:
            s.execute(update(Job).where(Job.id == jid).values(finished_at=at))
