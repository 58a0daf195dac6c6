"""Real services for tests: a fresh Postgres database, a Redis db number, a moto S3 server, and the
asrq processes themselves (API, CPU worker, transcribe worker, Flower), all on loopback; the same stack
with the workers' /metrics endpoints on (``observed_stack``), a Prometheus scraper, and a real HTTP
receiver for webhooks that checks Standard Webhooks signatures with its own implementation."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
AUDIO = ROOT.parent / "shared" / "audio"
PG_ADMIN = os.environ.get("ASRQ_TEST_PG_ADMIN", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
REDIS_BASE = os.environ.get("ASRQ_TEST_REDIS", "redis://127.0.0.1:6379")
CLI = [sys.executable, "-m", "app.cli"]


def api_argv(port: int) -> list[str]:
    return [*CLI, "api", "--host", "127.0.0.1", "--port", str(port)]


def cpu_worker_argv(concurrency: int = 1, beat: bool = True,
                    queues: str = "prepare,finalize,maintenance,reconcile,webhook",
                    metrics_port: str | None = None) -> list[str]:
    return ([*CLI, "worker", "--queues", queues, "--concurrency", str(concurrency)] + (["--beat"] if beat else [])
            + (["--metrics-port", metrics_port] if metrics_port else []))


def transcribe_worker_argv(metrics_port: str | None = None) -> list[str]:
    return [*CLI, "worker", "--gpus", "cpu"] + (["--metrics-port", metrics_port] if metrics_port else [])


def url_port(url: str) -> str:
    """The port of ``http://host:port[/path]``."""
    return url.rsplit(":", 1)[1].split("/")[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred, timeout_s: float, interval_s: float = 0.2, what: str = "condition"):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout_s
    last_exc = None
    while time.monotonic() < deadline:
        try:
            v = pred()
            if v:
                return v
        except Exception as e:  # noqa: BLE001
            last_exc = e
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s} s waiting for {what} (last error: {last_exc!r})")


@contextlib.contextmanager
def postgres_database():
    from sqlalchemy import create_engine, text

    name = f"asrq_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as c:
            c.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


@contextlib.contextmanager
def redis_db(db: int):
    import redis

    url = f"{REDIS_BASE}/{db}"
    r = redis.Redis.from_url(url)
    r.flushdb()
    try:
        yield url
    finally:
        with contextlib.suppress(Exception):
            r.flushdb()
        r.close()


@dataclass
class Proc:
    name: str
    argv: list[str]
    env: dict
    log: Path
    popen: subprocess.Popen | None = None

    def start(self) -> "Proc":
        self.log.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log, "ab")
        # own process group: the whole tree (launcher + celery children) can be signalled at once
        self.popen = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                      start_new_session=True)
        out.close()
        return self

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal_group(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.popen is None:
            return
        self.signal_group(signal.SIGTERM)
        try:
            self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.signal_group(signal.SIGKILL)
            self.popen.wait(10)
        # a killed launcher can leave grandchildren: end the whole group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)

    def tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""


@contextlib.contextmanager
def moto_s3(bucket: str, log_dir: Path):
    port = free_port()
    proc = Proc("moto", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                {**os.environ}, log_dir / "moto.log").start()
    endpoint = f"http://127.0.0.1:{port}"
    s3 = s3_client(endpoint)
    wait_until(lambda: s3.list_buckets() is not None, 30, what="moto server")
    s3.create_bucket(Bucket=bucket)
    try:
        yield endpoint, proc
    finally:
        proc.stop()


def s3_client(endpoint: str):  # noqa: ANN201
    """A boto3 S3 client of the moto server at ``endpoint``."""
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="test", aws_secret_access_key="test")


@dataclass
class Stack:
    env: dict
    tmp: Path
    api_url: str
    api_key: str
    procs: dict[str, Proc] = field(default_factory=dict)
    # the workers' /metrics endpoints (``--metrics-port``), where the stack turns them on
    cpu_metrics: str | None = None
    gpu_metrics: str | None = None

    def start(self, name: str, argv: list[str], extra_env: dict | None = None) -> Proc:
        p = Proc(name, argv, {**self.env, **(extra_env or {})}, self.tmp / "logs" / f"{name}.log").start()
        self.procs[name] = p
        return p

    def stop_all(self) -> None:
        for p in reversed(list(self.procs.values())):
            p.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {n} ---\n{p.tail()}" for n, p in self.procs.items())

    def client(self, key: str | None = None):  # noqa: ANN201
        from app.client import AsrqClient

        return AsrqClient(self.api_url, key or self.api_key)

    def start_api(self) -> Proc:
        p = self.start("api", api_argv(int(self.api_url.rsplit(":", 1)[1])))
        self.wait_api(60)
        return p

    def wait_api(self, timeout_s: float) -> None:
        wait_until(lambda: httpx.get(self.api_url + "/healthz", timeout=2).status_code == 200, timeout_s,
                   what=f"API health\n{self.procs['api'].tail()}")

    def start_cpu_worker(self, name: str = "cpu-worker", beat: bool = True, concurrency: int = 1) -> Proc:
        port = url_port(self.cpu_metrics) if self.cpu_metrics else None
        return self.start(name, cpu_worker_argv(concurrency, beat, metrics_port=port))

    def start_transcribe_worker(self, name: str = "gpu-worker", extra_env: dict | None = None) -> Proc:
        port = url_port(self.gpu_metrics) if self.gpu_metrics else None
        return self.start(name, transcribe_worker_argv(port), extra_env)


@contextlib.contextmanager
def running_stack(env: dict, tmp: Path, api_key: str, cpu_concurrency: int = 1, metrics: bool = False,
                  workers: bool = True):
    """API, CPU worker (with the reconciler) and a transcribe worker on ``env``'s services; this test
    process points its own settings there too, and gets its old environment back afterwards. With
    ``metrics``, each worker serves /metrics on a port of its own (``st.cpu_metrics``, ``st.gpu_metrics``).
    Without ``workers``, the API alone: jobs stay QUEUED, and no model is loaded."""
    saved = dict(os.environ)
    apply_env(env)
    st = Stack(env=env, tmp=tmp, api_url=f"http://127.0.0.1:{free_port()}", api_key=api_key)
    if metrics:
        st.cpu_metrics = f"http://127.0.0.1:{free_port()}/metrics"
        st.gpu_metrics = f"http://127.0.0.1:{free_port()}/metrics"
    try:
        st.start_api()
        if workers:
            st.start_cpu_worker(concurrency=cpu_concurrency)
            st.start_transcribe_worker()
        yield st
    finally:
        st.stop_all()
        os.environ.clear()
        os.environ.update(saved)
        from app.db import session

        session.reset_engines()


@contextlib.contextmanager
def fresh_celery_app():
    """The Celery apps are built from settings on first use (the workers' app at import, the publisher of
    app/messaging.py on its first send): inside this block fresh ones are built for the settings now
    current; whatever was there before comes back afterwards."""
    import workers
    from app import messaging

    prev_mod = sys.modules.pop("workers.celery_app", None)
    prev_attr = workers.__dict__.pop("celery_app", None)
    prev_publisher = messaging.use(None)
    try:
        yield
    finally:
        fresh = sys.modules.pop("workers.celery_app", None)
        workers.__dict__.pop("celery_app", None)
        made = messaging.use(prev_publisher)
        if made is not None and (fresh is None or made is not fresh.app):
            made.close()
        if fresh is not None:
            fresh.app.close()
        if prev_mod is not None:
            sys.modules["workers.celery_app"] = prev_mod
        if prev_attr is not None:
            workers.celery_app = prev_attr


def base_env(db_url: str, broker_url: str, storage_url: str, s3_endpoint: str, tmp: Path, api_key: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASRQ_")}
    env.update({
        "ASRQ_HOME": str(tmp / "home"),
        "ASRQ_MODELS_DIR": str(tmp / "models"),
        "ASRQ_DATABASE_URL": db_url,
        "ASRQ_BROKER_URL": broker_url,
        "ASRQ_STORAGE_URL": storage_url,
        "ASRQ_S3_ENDPOINT_URL": s3_endpoint,
        "ASRQ_API_KEYS": f"acme:{api_key},globex:other-{api_key}",
        "ASRQ_ALLOW_PRIVATE_SOURCES": "true",
        # the tests' s3:// sources live here; the service's own objects are under storage_url's prefix
        "ASRQ_S3_SOURCE_ALLOW": "asrq-test/inbox/",
        "ASRQ_RECONCILE_INTERVAL_S": "2",
        "ASRQ_RECONCILE_STALE_S": "6",
        "ASRQ_CHUNK_LEASE_S": "20",
        "ASRQ_VISIBILITY_TIMEOUT_S": "60",
        "ASRQ_BATCH_FLUSH_INTERVAL_S": "0.5",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        # tests/hooks: the fault injection of tests/test_faults.py (inert unless an ASRQ_FAULT_* is set)
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests' / 'hooks'}",
        "OMP_NUM_THREADS": "1",
    })
    return env


def apply_env(env: dict) -> None:
    """Point this test process's own settings, sessions and stores at the same services."""
    for k in [k for k in os.environ if k.startswith("ASRQ_")]:
        del os.environ[k]
    os.environ.update(env)
    _reread_settings()


def restore_env(saved: dict) -> None:
    """Put back an environment saved as ``dict(os.environ)``, settings, sessions and stores with it."""
    os.environ.clear()
    os.environ.update(saved)
    _reread_settings()


def _reread_settings() -> None:
    from app import storage
    from app.db import session
    from app.settings import get_settings

    get_settings.cache_clear()
    session.reset_engines()
    storage._store.cache_clear()


# ---- the stack with metrics, and a webhook receiver ------------------------------------------------------------


@contextlib.contextmanager
def observed_stack(tmp, s3_endpoint: str, redis_test_db: int, extra_env: dict, cpu_concurrency: int = 1):  # noqa: ANN001
    """``running_stack`` on a fresh database and Redis db, with the workers' /metrics endpoints on (reached
    before it yields)."""
    from app.db.migrate import upgrade

    key = secrets.token_urlsafe(16)
    with postgres_database() as db_url, redis_db(redis_test_db) as broker:
        upgrade(db_url)
        env = {**base_env(db_url, broker, f"s3://asrq-test/{tmp.name}", s3_endpoint, tmp, key), **extra_env}
        with running_stack(env, tmp, key, cpu_concurrency=cpu_concurrency, metrics=True) as st:
            for url in (st.cpu_metrics, st.gpu_metrics):
                wait_until(lambda u=url: httpx.get(u, timeout=2).status_code == 200, 60, what=f"metrics at {url}")
            yield st


def scrape(url: str, headers: dict | None = None) -> dict[tuple[str, frozenset], float]:
    """Prometheus text -> {(name, labels): value}, with the official parser."""
    from prometheus_client.parser import text_string_to_metric_families

    r = httpx.get(url, headers=headers or {}, timeout=10)
    r.raise_for_status()
    out = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def total(samples: dict, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def verify_standard_webhook(secret: str, headers: dict, body: bytes) -> bool:
    """The Standard Webhooks check, by its reference implementation (the standardwebhooks package): the
    signature over "id.timestamp.body", and a timestamp within its five minutes of now."""
    from standardwebhooks.webhooks import Webhook, WebhookVerificationError

    try:
        Webhook(secret).verify(body, headers, json_parse=False)
    except WebhookVerificationError:
        return False
    return True


class Receiver:
    """POST /<path>: records (headers, body, verified, answered) and answers 500 while ``refuse(path, n)``
    says so (n: the 1-based number of this request on that path), else 204. GET /stall holds the
    connection until ``release`` is set (a source that never finishes downloading)."""

    def __init__(self, secret: str | None = None, refuse=lambda path, n: False) -> None:  # noqa: ANN001
        self.secret, self.refuse = secret, refuse
        self.requests: list[dict] = []
        self.release = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                n = 1 + sum(1 for r in outer.requests if r["path"] == self.path)
                status = 500 if outer.refuse(self.path, n) else 204
                outer.requests.append({"path": self.path, "headers": headers, "body": body, "status": status,
                                       "verified": bool(outer.secret) and verify_standard_webhook(
                                           outer.secret, headers, body), "at": time.time()})
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:  # noqa: N802
                outer.release.wait(120)
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a) -> None:  # noqa: ANN002
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def on(self, path: str) -> list[dict]:
        return [r for r in self.requests if r["path"] == path]

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def wait_job(client, job_id: str, timeout_s: float = 180) -> dict:  # noqa: ANN001
    return wait_until(lambda: (j := client.job(job_id))["state"] in ("COMPLETED", "FAILED", "CANCELLED") and j,
                      timeout_s, 0.5, what=f"job {job_id} to finish")


def json_body(r: dict) -> dict:
    return json.loads(r["body"])
