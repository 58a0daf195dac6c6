"""The distributed stack of tests/services.py with the workers' /metrics endpoints on, and a real HTTP
receiver for webhooks that checks Standard Webhooks signatures with its own implementation."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import http.server
import json
import os
import secrets
import sys
import threading
import time

import httpx

from tests.services import Stack, apply_env, base_env, free_port, postgres_database, redis_db, wait_until


@contextlib.contextmanager
def observed_stack(tmp, s3_endpoint: str, redis_test_db: int, extra_env: dict, cpu_concurrency: int = 1):
    from app.db import session
    from app.db.migrate import upgrade

    key = secrets.token_urlsafe(16)
    saved = dict(os.environ)
    with postgres_database() as db_url, redis_db(redis_test_db) as broker:
        upgrade(db_url)
        env = {**base_env(db_url, broker, f"s3://asrq-test/{tmp.name}", s3_endpoint, tmp, key), **extra_env}
        apply_env(env)
        st = Stack(env=env, tmp=tmp, api_url=f"http://127.0.0.1:{free_port()}", api_key=key)
        st.cpu_metrics = f"http://127.0.0.1:{free_port()}/metrics"  # type: ignore[attr-defined]
        st.gpu_metrics = f"http://127.0.0.1:{free_port()}/metrics"  # type: ignore[attr-defined]
        try:
            st.start_api()
            start_cpu_worker(st, cpu_concurrency)
            st.start("gpu-worker", [sys.executable, "-m", "app.cli", "worker", "--gpus", "cpu", "--metrics-port",
                                    st.gpu_metrics.rsplit(":", 1)[1].split("/")[0]])
            for url in (st.cpu_metrics, st.gpu_metrics):
                wait_until(lambda u=url: httpx.get(u, timeout=2).status_code == 200, 60, what=f"metrics at {url}")
            yield st
        finally:
            st.stop_all()
            os.environ.clear()
            os.environ.update(saved)
            session.reset_engines()


def start_cpu_worker(st: Stack, concurrency: int = 1, name: str = "cpu-worker"):  # noqa: ANN201
    port = st.cpu_metrics.rsplit(":", 1)[1].split("/")[0]  # type: ignore[attr-defined]
    return st.start(name, [sys.executable, "-m", "app.cli", "worker", "--queues", "prepare,finalize,maintenance",
                           "--concurrency", str(concurrency), "--beat", "--metrics-port", port])


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


# ---- a webhook receiver ---------------------------------------------------------------------------------------


def verify_standard_webhook(secret: str, headers: dict, body: bytes, tolerance_s: float = 300) -> bool:
    """The Standard Webhooks check, written from the spec: HMAC-SHA256 over "id.timestamp.body" with the
    base64 secret after its whsec_ prefix; any of the space-separated "v1,<base64>" signatures may match."""
    msg_id, ts, sigs = headers.get("webhook-id"), headers.get("webhook-timestamp"), headers.get("webhook-signature")
    if not (msg_id and ts and sigs):
        return False
    if abs(time.time() - int(ts)) > tolerance_s:
        return False
    key = base64.b64decode(secret.split("_", 1)[1])
    expected = base64.b64encode(hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()).decode()
    return any(hmac.compare_digest(s.split(",", 1)[1], expected) for s in sigs.split() if s.startswith("v1,"))


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
