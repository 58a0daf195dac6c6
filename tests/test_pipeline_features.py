"""Cross-job batching, the FunASR path with a tiny random Paraformer, and Flower watching the fleet."""

from __future__ import annotations

import json
import subprocess
import sys

import boto3
import httpx
import pytest
from sqlalchemy import func, select

from tests.services import AUDIO, free_port, wait_until
from tests.tiny_paraformer import build_tiny_paraformer

pytestmark = pytest.mark.slow

SHORT = ["en_sr_one_two_three.wav", "en_vosk_digits.wav", "zh_aishell1_BAC009S0724W0121.wav",
         "zh_aishell1_BAC009S0764W0121.wav", "en_fw_stereo_diarization_2ch.wav"]


@pytest.fixture(scope="module")
def flower(stack):
    port = free_port()
    p = stack.start("flower", [sys.executable, "-m", "celery", "-A", "workers.celery_app", "flower",
                               f"--port={port}", "--address=127.0.0.1", "--basic-auth=ops:s3cret",
                               "--inspect_timeout=3000"])
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: httpx.get(url + "/healthcheck", timeout=2).status_code == 200, 60, what=f"flower\n{p.tail()}")
    return url


def test_fifty_short_jobs_share_batches(stack, flower):
    from app.db.models import Batch, Chunk, Job
    from app.db.session import session_scope

    s3 = boto3.client("s3", endpoint_url=stack.env["ASRQ_S3_ENDPOINT_URL"], region_name="us-east-1")
    uris = []
    for n in range(50):
        name = SHORT[n % len(SHORT)]
        s3.upload_file(str(AUDIO / name), "asrq-test", f"inbox/fifty/{n:02d}-{name}")
        uris.append(f"s3://asrq-test/inbox/fifty/{n:02d}-{name}")
    with stack.client() as c:
        ids = c.submit_batch(uris)
        done = c.wait(ids, timeout_s=600)
    assert all(j["state"] == "COMPLETED" for j in done.values()), [j for j in done.values() if j["state"] != "COMPLETED"]
    with session_scope() as s:
        batch_ids = s.scalars(select(Chunk.batch_id).join(Job).where(Job.id.in_(ids))).all()
        batches = s.scalars(select(Batch).where(Batch.id.in_(set(batch_ids)))).all()
        sizes = sorted((b.size, b.job_count) for b in batches)
        n_chunks = s.scalar(select(func.count()).select_from(Chunk).where(Chunk.job_id.in_(ids)))
    print(f"50 jobs, {n_chunks} chunks in {len(batches)} batches; (size, jobs) per batch: {sizes}")
    assert max(jobs for _, jobs in sizes) >= 5, sizes
    assert len(batches) < n_chunks / 3, sizes

    # Flower, with basic auth, names the workers and shows the tasks of a finished job
    assert httpx.get(flower + "/api/workers", timeout=10).status_code == 401
    auth = ("ops", "s3cret")
    workers = httpx.get(flower + "/api/workers", params={"refresh": "true"}, auth=auth, timeout=30).json()
    assert any(name.startswith("cpu0@") for name in workers), workers
    assert any(name.startswith("cpu@") for name in workers), workers
    tasks = httpx.get(flower + "/api/tasks", params={"limit": 2000}, auth=auth, timeout=30).json()
    job = ids[0]
    mine = {t["name"] for t in tasks.values() if job in str(t.get("args"))}
    assert {"asrq.prepare", "asrq.finalize"} <= mine, mine
    assert any(t["name"] == "asrq.transcribe" and t["state"] == "SUCCESS" for t in tasks.values())


def test_funasr_engine_through_the_pipeline(stack):
    """A tiny BiCif-Paraformer with random weights proves loading, batching and timestamp plumbing."""
    build_tiny_paraformer(stack.tmp / "models" / "tiny-paraformer")
    with stack.client() as c:
        ids = [c.submit_file(AUDIO / n, {"engine": "funasr", "model": "tiny-paraformer"})["id"]
               for n in ("zh_funasr_binhai_6s.wav", "en_jfk_ask_not_11s.flac")]
        done = c.wait(ids, timeout_s=300)
        for jid in ids:
            assert done[jid]["state"] == "COMPLETED", (done[jid], stack.logs())
            assert done[jid]["options"]["engine"] == "funasr"
            doc = json.loads(c.transcript(jid, "json"))
            words = [w for seg in doc["segments"] for w in seg["words"]]
            assert words, doc  # random weights, but the tokens and their times come through
            assert all(0 <= w["start"] <= w["end"] <= doc["duration_s"] for w in words)
            assert [w["start"] for w in words] == sorted(w["start"] for w in words)
    # a model outside the models folder is refused at the door
    with stack.client() as c:
        r = c.http.post("/v1/jobs", json={"source_uri": "s3://asrq-test/inbox/x.wav", "engine": "funasr",
                                          "model": "/etc/passwd"})
        assert r.status_code == 422 and "models directory" in r.text, r.text  # the model, not the source


def test_embedded_one_shot(tmp_path):
    """`asrq transcribe` with no servers: SQLite, filesystem broker, local folder, bundled model."""
    from tests.wer import reference, wer

    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("ASRQ_")}
    env["ASRQ_HOME"] = str(tmp_path / "home")
    r = subprocess.run([sys.executable, "-m", "app.cli", "transcribe", str(AUDIO / "en_jfk_ask_not_11s.flac"),
                        "--format", "vtt", "--out", str(tmp_path / "out")], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "[00:00:00" in r.stdout and "fellow Americans" in r.stdout
    vtt = (tmp_path / "out" / "en_jfk_ask_not_11s.vtt").read_text()
    assert vtt.startswith("WEBVTT")
    text = " ".join(line for line in vtt.splitlines()[2:] if line and "-->" not in line)
    assert wer(reference("en_jfk_ask_not_11s.flac"), text) <= 0.10
    # the same tables as the distributed deployment: SQLite at Alembic head
    import sqlite3

    from alembic.script import ScriptDirectory

    from app.db.migrate import alembic_config

    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    con = sqlite3.connect(tmp_path / "home" / "asrq.db")
    assert con.execute("select version_num from alembic_version").fetchone()[0] == head
    assert con.execute("select state from jobs").fetchone()[0] == "COMPLETED"
