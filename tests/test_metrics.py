"""Prometheus metrics on a real run: the API's /metrics and each worker launcher's --metrics-port are
scraped after jobs of two kinds ran (completed, failed), and their numbers are checked against Postgres.
The CPU worker runs two prefork children, so its counters are the sum of several processes' files."""

from __future__ import annotations

import math
import os

import httpx
import pytest

from tests.conftest import REDIS_TEST_DB
from tests.services import AUDIO, Receiver, observed_stack, scrape, total, wait_job, wait_until

pytestmark = pytest.mark.slow

CLIPS = ["en_sr_one_two_three.wav", "en_jfk_ask_not_11s.flac"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, s3):
    env = {"ASRQ_METRICS_CACHE_S": "0", "ASRQ_WEBHOOK_SWEEP_INTERVAL_S": "0.5"}
    with observed_stack(tmp_path_factory.mktemp("metrics"), s3[0], REDIS_TEST_DB, env, cpu_concurrency=2) as st:
        yield st


def _db():  # noqa: ANN202
    from sqlalchemy import func, select

    from app.db.models import Batch, Chunk, Job, JobState, WebhookDelivery, WebhookState
    from app.db.session import session_scope

    with session_scope() as s:
        return {
            "by_state": dict(s.execute(select(Job.state, func.count()).group_by(Job.state)).all()),
            "jobs": s.scalar(select(func.count()).select_from(Job)),
            "batches": s.execute(select(func.count(), func.sum(Batch.size), func.sum(Batch.audio_s),
                                        func.sum(Batch.infer_s))).one(),
            "chunk_attempts": s.scalar(select(func.sum(Chunk.attempts))),
            "delivered": s.scalar(select(func.count()).select_from(WebhookDelivery)
                                  .where(WebhookDelivery.state == WebhookState.DELIVERED)),
            "job_times": s.execute(select(Job.created_at, Job.started_at, Job.finished_at)
                                   .where(Job.state == JobState.COMPLETED)).all(),
        }


def test_api_metrics_need_the_token_off_loopback(tmp_path, monkeypatch):
    """ASRQ_METRICS_TOKEN set: the bearer token is required; unset: only loopback clients are answered
    (the test client's address is not loopback)."""
    from fastapi.testclient import TestClient

    from app.api.main import create_app
    from app.db import session
    from app.db.migrate import upgrade
    from app.settings import Settings, get_settings

    for k in [k for k in os.environ if k.startswith("ASRQ_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("ASRQ_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ASRQ_METRICS_CACHE_S", "0")
    get_settings.cache_clear()
    session.reset_engines()
    try:
        upgrade(get_settings().database_url)
        with TestClient(create_app(Settings(metrics_token="s3cret"))) as client:
            assert client.get("/metrics").status_code == 401
            assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
            ok = client.get("/metrics", headers={"Authorization": "Bearer s3cret"})
            assert ok.status_code == 200 and 'asrq_jobs{state="QUEUED"} 0.0' in ok.text
        with TestClient(create_app(Settings())) as client:
            assert client.get("/metrics").status_code == 403
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
        session.reset_engines()


def test_nvml_reports_cards_only_where_there_are_cards(monkeypatch):
    """The collector's path that reports cards runs on every machine, against a stand-in NVML injected as
    ``pynvml``: two cards, one of which fails its read (skipped, the other still reported); a machine
    without the driver (nvmlInit raises) reports nothing. Where a real card exists, its readings too."""
    import shutil
    import sys
    import types

    from app.metrics import NvmlCollector

    if shutil.which("nvidia-smi") is not None:  # a machine with cards: NVML's own readings
        nvml = NvmlCollector("w")
        families = {f.name: f for f in nvml.collect()}
        used, full = families["asrq_gpu_memory_used_bytes"].samples, families["asrq_gpu_memory_total_bytes"].samples
        assert len(used) == len(full) == len(nvml.handles) >= 1
        assert all(0 < u.value <= f.value for u, f in zip(used, full))
        assert all(0 <= s.value <= 1 for s in families["asrq_gpu_utilization_ratio"].samples)

    cards = [{"used": 3 * 2**30, "total": 80 * 2**30, "gpu": 45}, {"lost": True}]

    def memory(card: dict) -> types.SimpleNamespace:
        if card.get("lost"):
            raise RuntimeError("GPU is lost")
        return types.SimpleNamespace(used=card["used"], total=card["total"])

    fake = types.ModuleType("pynvml")
    fake.nvmlInit = lambda: None
    fake.nvmlDeviceGetCount = lambda: len(cards)
    fake.nvmlDeviceGetHandleByIndex = lambda i: cards[i]
    fake.nvmlDeviceGetMemoryInfo = memory
    fake.nvmlDeviceGetUtilizationRates = lambda card: types.SimpleNamespace(gpu=card["gpu"])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    nvml = NvmlCollector("gpu0@host")
    assert nvml.available and len(nvml.handles) == 2
    families = {f.name: [(s.labels, s.value) for s in f.samples] for f in nvml.collect()}
    card0 = {"worker": "gpu0@host", "gpu": "0"}
    assert families == {"asrq_gpu_memory_used_bytes": [(card0, 3.0 * 2**30)],
                        "asrq_gpu_memory_total_bytes": [(card0, 80.0 * 2**30)],
                        "asrq_gpu_utilization_ratio": [(card0, 0.45)]}

    def no_driver() -> None:
        raise OSError("NVML Shared Library Not Found")

    fake.nvmlInit = no_driver
    nvml = NvmlCollector("w")
    assert nvml.available is False and list(nvml.collect()) == []


def test_dashboard_and_compose_use_the_names_asrq_exposes():
    """Every asrq_* series the Grafana dashboard queries is one app/metrics.py defines; compose runs
    Prometheus on deploy/prometheus.yml, which scrapes the API and each worker's --metrics-port."""
    import json
    import re

    import yaml
    from prometheus_client.metrics import MetricWrapperBase

    from app import metrics
    from tests.services import ROOT

    series = set(re.findall(r'"(asrq_[a-z_]+)"', (ROOT / "app" / "metrics.py").read_text()))
    for m in vars(metrics).values():
        if isinstance(m, MetricWrapperBase):
            kind = m._type
            series |= ({m._name + "_total"} if kind == "counter" else
                       {m._name + s for s in ("_bucket", "_sum", "_count")} if kind == "histogram" else {m._name})
    dash = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "asrq.json").read_text())
    used = {name for p in dash["panels"] for t in p["targets"] for name in re.findall(r"asrq_[a-z_]+", t["expr"])}
    assert used and used <= series, used - series
    assert len(used) >= 20  # the dashboard covers (nearly) every series, not two of them

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert {"prometheus", "grafana"} <= compose.keys()
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())["scrape_configs"]
    targets = {t for job in scrape for c in job["static_configs"] for t in c["targets"]}
    assert "api:8000" in targets
    for name in ("cpu-worker", "gpu-worker-0"):
        cmd = compose[name]["command"]
        port = cmd[cmd.index("--metrics-port") + 1]
        assert f"{name}:{port}" in targets


def test_queue_depth_counts_every_priority_level(tmp_path):
    """asrq_queue_depth is the sum of a queue's Redis lists, one per priority level (kombu), and of its
    message files on the filesystem broker."""
    from app.constants import PRIORITY_STEPS
    from app.messaging import REDIS_PRIORITY_SEP as _REDIS_PRIORITY_SEP
    from app.metrics import queue_depths
    from app.settings import Settings
    from tests.services import redis_db

    with redis_db(REDIS_TEST_DB) as url:
        import redis

        r = redis.Redis.from_url(url)
        r.rpush("prepare", "a", "b")
        r.rpush(f"prepare{_REDIS_PRIORITY_SEP}{max(PRIORITY_STEPS)}", "c")
        r.rpush("transcribe", "d")
        r.close()
        assert queue_depths(Settings(broker_url=url)) == {"prepare": 3, "transcribe": 1, "finalize": 0,
                                                          "maintenance": 0, "reconcile": 0, "webhook": 0}
    # the filesystem broker (embedded mode): real messages sent by the Celery app
    from workers.celery_app import make_celery

    fs = Settings(home=tmp_path, broker_url=f"filesystem://{tmp_path / 'broker'}")
    app = make_celery(fs)
    for queue, n in (("finalize", 2), ("maintenance", 1), ("webhook", 3)):
        for _ in range(n):
            app.send_task("asrq.finalize", args=["x"], queue=queue, routing_key=queue)
    app.close()
    assert queue_depths(fs) == {"prepare": 0, "transcribe": 0, "finalize": 2, "maintenance": 1, "reconcile": 0,
                                "webhook": 3}


# ---- the whole stack: these run last, so the tests above never share its Redis db with it ----------------------


def test_scraped_numbers_match_the_database(stack):
    from app.db.models import JobState

    rx = Receiver()
    try:
        with stack.client() as c:
            ids = [c.submit_file(AUDIO / name, {"webhook_url": rx.url("/m")})["id"] for name in CLIPS]
            ids.append(c.submit_uri("s3://asrq-test/inbox/missing.wav")["id"])
            states = [wait_job(c, j)["state"] for j in ids]
            assert states == ["COMPLETED", "COMPLETED", "FAILED"], stack.logs()
        wait_until(lambda: len(rx.on("/m")) == 2, 30, what="both webhooks")
        db = _db()

        def worker_total(name: str, **labels: str) -> float:
            return sum(total(scrape(u), name, **labels) for u in (stack.cpu_metrics, stack.gpu_metrics))

        # the counters are written after their transactions commit, and the last webhook's just now
        wait_until(lambda: worker_total("asrq_webhook_deliveries_total", outcome="delivered") == db["delivered"],
                   10, what="the webhook counter")
        api = scrape(stack.api_url + "/metrics")
        cpu, gpu = scrape(stack.cpu_metrics), scrape(stack.gpu_metrics)

        # jobs by state: the database's GROUP BY, every state present
        for state in JobState:
            assert total(api, "asrq_jobs", state=state.value) == db["by_state"].get(state, 0), state
        assert total(api, "asrq_jobs_submitted_total", tenant="acme", engine="whisper") == db["jobs"] == 3
        assert total(cpu, "asrq_jobs_completed_total", tenant="acme", engine="whisper") == \
            db["by_state"][JobState.COMPLETED] == 2
        assert total(cpu, "asrq_jobs_failed_total", tenant="acme", engine="whisper") == db["by_state"][JobState.FAILED]
        assert total(cpu, "asrq_webhook_deliveries_total", outcome="delivered") == db["delivered"] == 2
        queues = {dict(ls)["queue"] for (n, ls) in api if n == "asrq_queue_depth"}
        assert queues == {"prepare", "transcribe", "finalize", "maintenance", "reconcile", "webhook"}
        assert total(api, "asrq_queue_depth", queue="prepare") == 0

        # histograms: one observation per job or per batch, sums as the database has them
        assert total(cpu, "asrq_job_end_to_end_seconds_count", engine="whisper") == 2
        e2e = sum((f - c).total_seconds() for c, _, f in db["job_times"])
        assert math.isclose(total(cpu, "asrq_job_end_to_end_seconds_sum", engine="whisper"), e2e, abs_tol=0.5)
        queued = sum((st - c).total_seconds() for c, st, _ in db["job_times"])
        assert math.isclose(total(cpu, "asrq_job_queued_seconds_sum", engine="whisper"), queued, abs_tol=0.05)
        assert total(cpu, "asrq_prepare_seconds_count") >= 2
        assert total(cpu, "asrq_finalize_seconds_count") == 2
        assert total(cpu, "asrq_job_transcribe_seconds_count", engine="whisper") == 2
        n_batches, n_chunks, audio_s, infer_s = db["batches"]
        assert total(gpu, "asrq_batch_chunks_count", engine="whisper") == n_batches >= 1
        assert total(gpu, "asrq_batch_chunks_sum", engine="whisper") == n_chunks
        assert math.isclose(total(gpu, "asrq_batch_audio_seconds_sum", engine="whisper"), audio_s, abs_tol=0.01)
        assert math.isclose(total(gpu, "asrq_inference_seconds_sum", engine="whisper"), infer_s, abs_tol=0.01)
        assert math.isclose(total(gpu, "asrq_engine_busy_seconds_total", engine="whisper"), infer_s, abs_tol=0.01)
        assert total(gpu, "asrq_real_time_factor_count", engine="whisper") == n_batches
        assert total(gpu, "asrq_chunk_attempts_total", engine="whisper") == db["chunk_attempts"] >= n_chunks
        # no card here: NVML reports nothing, and nothing breaks
        assert not any(n.startswith("asrq_gpu_") for n, _ in gpu)
    finally:
        rx.close()


def test_worker_metrics_port_answers_only_its_address(stack):
    port = int(stack.cpu_metrics.rsplit(":", 1)[1].split("/")[0])
    assert httpx.get(stack.cpu_metrics, timeout=5).status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.2:{port}/metrics", timeout=5)  # bound to 127.0.0.1 by default
