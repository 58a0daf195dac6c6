"""API keys and the order of checks, over real HTTP: `asrq api` (uvicorn) on a real Postgres database, the
`asrq keys` commands as a user runs them, raw sockets where a test must show what the server did *not* read.

Objects go to a local folder and messages to kombu's filesystem transport in tmp_path: no worker runs and
nothing here needs Redis or S3.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.services import ROOT, Proc, free_port, postgres_database, wait_until

TTL_S = 2.0
MAX_JSON = 1024**2
DECLARED = 20 * 1024**2  # what the client claims to send: 20 MB, over MAX_JSON, under max_upload_bytes
SENT = 1024**2  # what it actually sends before it expects an answer


class Server:
    def __init__(self, env: dict, tmp: Path, host: str = "127.0.0.1") -> None:
        self.env = env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.objects = tmp / "objects"
        self.proc = Proc("api", [sys.executable, "-m", "app.cli", "api", "--host", host, "--port", str(self.port)],
                         env, tmp / f"api-{self.port}.log")

    def __enter__(self) -> "Server":
        self.proc.start()
        wait_until(self._healthy, 60, what=f"API health\n{self.proc.tail()}")
        return self

    def _healthy(self) -> bool:
        if not self.proc.alive():
            raise RuntimeError(f"the API exited\n{self.proc.tail()}")
        return httpx.get(self.url + "/healthz", timeout=2).status_code == 200

    def __exit__(self, *exc: object) -> None:
        self.proc.stop()

    def get_jobs(self, key: str | None = None) -> int:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.get(self.url + "/v1/jobs", headers=headers, timeout=10).status_code

    def stored_files(self) -> list[Path]:
        return [p for p in self.objects.rglob("*") if p.is_file()] if self.objects.exists() else []


def _env(db_url: str, tmp: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASRQ_")}
    env.update({
        "ASRQ_HOME": str(tmp / "home"),
        "ASRQ_DATABASE_URL": db_url,
        "ASRQ_BROKER_URL": f"filesystem://{tmp / 'broker'}",
        "ASRQ_STORAGE_URL": f"file://{tmp / 'objects'}",
        "ASRQ_AUTH_CACHE_TTL_S": str(TTL_S),
        "ASRQ_MAX_JSON_BYTES": str(MAX_JSON),
        "PYTHONPATH": str(ROOT),
    })
    env.update(extra)
    return env


def asrq(env: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "app.cli", *args], env=env, cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    if check and p.returncode != 0:
        raise AssertionError(f"asrq {' '.join(args)} exited {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    from app.db.migrate import upgrade

    with postgres_database() as url:
        upgrade(url)
        yield url


@pytest.fixture(scope="module")
def keyed(pg_url, tmp_path_factory) -> Iterator[Server]:
    """An API whose keys come from ASRQ_API_KEYS (synced into the database at start-up)."""
    tmp = tmp_path_factory.mktemp("keyed")
    with Server(_env(pg_url, tmp, ASRQ_API_KEYS="acme:acme-secret,globex:globex-secret"), tmp) as srv:
        yield srv


# ---- raw HTTP: what the server answers before it has the body ----------------------------------------------------


def raw_post(port: int, path: str, headers: dict, body_parts: Iterable[bytes], timeout_s: float = 15.0):
    """Sends the request head, then body parts only while the server has not answered yet.

    Returns (status, response body, body bytes sent). A server that waits for the whole body before it
    answers makes this time out: the parts never add up to the declared length.
    """
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    try:
        sock.sendall(head.encode() + b"\r\n")
        sent = 0
        for part in body_parts:
            if select.select([sock], [], [], 0)[0]:
                break  # the answer is there
            try:
                sock.sendall(part)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                break
            sent += len(part)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head_bytes, _, body = data.partition(b"\r\n\r\n")
        lines = head_bytes.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = next((int(v) for k, _, v in (ln.partition(":") for ln in lines[1:])
                       if k.strip().lower() == "content-length"), 0)
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return status, body, sent
    finally:
        sock.close()


def _parts(total: int, fill: bytes = b"x", size: int = 65_536) -> Iterator[bytes]:
    for start in range(0, total, size):
        yield fill * min(size, total - start)


def _chunked(parts: Iterable[bytes]) -> Iterator[bytes]:
    for p in parts:
        yield f"{len(p):x}\r\n".encode() + p + b"\r\n"


def test_unauthenticated_json_is_refused_before_it_is_read(keyed):
    # invalid JSON, and far more of it declared than is sent: a server that parsed before it checked the key
    # would wait for the rest (and then answer 422)
    for path in ("/v1/jobs/batch", "/v1/jobs"):
        for headers in ({}, {"Authorization": "Bearer not-a-key"}):
            status, body, sent = raw_post(keyed.port, path, {**headers, "Content-Type": "application/json",
                                                             "Content-Length": str(DECLARED)},
                                          [b"{nope"] + list(_parts(SENT)))
            assert status == 401, (path, headers, body)
            assert sent <= SENT + 5
    # a complete body that is not JSON at all: still 401, never 422
    r = httpx.post(keyed.url + "/v1/jobs/batch", content=b"{nope", headers={"Content-Type": "application/json"})
    assert r.status_code == 401, r.text


def test_unauthenticated_upload_is_refused_before_any_byte_is_stored(keyed):
    boundary = "asrqRaw"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.wav"\r\n'
            "Content-Type: audio/wav\r\n\r\n").encode()
    status, body, _ = raw_post(keyed.port, "/v1/jobs",
                               {"Content-Type": f"multipart/form-data; boundary={boundary}",
                                "Content-Length": str(DECLARED)}, [head] + list(_parts(SENT, b"\0")))
    assert status == 401, body
    assert keyed.stored_files() == []


def test_authenticated_json_over_its_cap_is_413(keyed):
    auth = {"Authorization": "Bearer acme-secret", "Content-Type": "application/json"}
    # declared: refused before a byte of the body is read
    status, body, sent = raw_post(keyed.port, "/v1/jobs/batch", {**auth, "Content-Length": str(DECLARED)},
                                  _parts(DECLARED))
    assert status == 413, body
    assert str(MAX_JSON).encode() in body
    assert sent < DECLARED
    # streamed without a length: refused once it passes the cap, long before the client is done (the
    # loopback socket buffers take a few MB before the answer can stop the sender)
    status, body, sent = raw_post(keyed.port, "/v1/jobs/batch", {**auth, "Transfer-Encoding": "chunked"},
                                  _chunked(_parts(64 * MAX_JSON)))
    assert status == 413, body
    assert sent < 64 * MAX_JSON
    assert keyed.get_jobs("acme-secret") == 200


# ---- keys: list, revoke, the database is authoritative -----------------------------------------------------------


def test_keys_list_and_revoke_take_effect_within_the_ttl(keyed, pg_url):
    from sqlalchemy import select

    from app.api.auth import sync_env_keys
    from app.db.models import ApiKey
    from app.db.session import make_engine
    from app.settings import Settings
    from sqlalchemy.orm import Session

    env = keyed.env
    assert keyed.get_jobs("globex-secret") == 200  # cached from here on
    listing = asrq(env, "keys", "list").stdout
    assert "globex-secret" not in listing and "acme-secret" not in listing
    rows = [ln.split() for ln in listing.splitlines()[1:]]
    assert [r[0] for r in rows] == ["acme", "globex"]
    assert all(r[3] == "-" for r in rows)
    globex_id = rows[1][1]

    out = asrq(env, "keys", "revoke", globex_id).stdout
    revoked = time.monotonic()
    assert "revoked" in out
    wait_until(lambda: keyed.get_jobs("globex-secret") == 401, TTL_S + 10, what="revoked key refused")
    assert time.monotonic() - revoked <= TTL_S + 3  # the TTL, plus a request or two on a busy machine
    assert keyed.get_jobs("acme-secret") == 200
    rows = [ln.split() for ln in asrq(env, "keys", "list").stdout.splitlines()[1:]]
    assert rows[1][1] == globex_id and rows[1][3] != "-"

    # ASRQ_API_KEYS still names it: the next start-up does not bring it back
    engine = make_engine(pg_url)
    try:
        with Session(engine) as s:
            sync_env_keys(s, Settings(api_keys="acme:acme-secret,globex:globex-secret", database_url=pg_url))
            assert s.scalar(select(ApiKey.revoked_at).where(ApiKey.tenant == "globex")) is not None
            assert len(list(s.scalars(select(ApiKey)))) == 2
    finally:
        engine.dispose()

    assert "no key" in asrq(env, "keys", "revoke", "00000000-0000-0000-0000-000000000000", check=False).stderr
    assert asrq(env, "keys", "revoke", "nope", check=False).returncode != 0


def test_open_only_without_keys_on_loopback_and_a_key_added_while_running_takes_effect(tmp_path):
    from app.db.migrate import upgrade

    with postgres_database() as url:
        upgrade(url)
        env = _env(url, tmp_path)
        # no key anywhere: on every interface it refuses to start
        p = asrq(env, "api", "--host", "0.0.0.0", "--port", str(free_port()), check=False)
        assert p.returncode != 0 and "refusing" in p.stderr
        with Server(env, tmp_path) as srv:
            assert srv.get_jobs() == 200  # open, as tenant default, on loopback
            secret = asrq(env, "keys", "add", "--tenant", "t1").stdout.strip()
            added = time.monotonic()
            wait_until(lambda: srv.get_jobs() == 401, TTL_S + 10, what="keys required once one exists")
            assert time.monotonic() - added <= TTL_S + 3
            assert srv.get_jobs(secret) == 200
            assert srv.get_jobs("asrq_wrong") == 401
        # a key in the database alone (ASRQ_API_KEYS unset) is enough to serve every interface, keys required
        with Server(env, tmp_path, host="0.0.0.0") as srv:
            assert srv.get_jobs() == 401
            assert srv.get_jobs(secret) == 200


def test_open_api_answers_loopback_clients_only(tmp_path, monkeypatch):
    """Whatever server runs the app and on whatever address: with no key, a non-loopback peer gets 401."""
    from fastapi.testclient import TestClient

    from app.api.main import create_app
    from app.db import session
    from app.db.migrate import upgrade
    from app.settings import Settings, get_settings

    for k in [k for k in os.environ if k.startswith("ASRQ_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("ASRQ_HOME", str(tmp_path))
    get_settings.cache_clear()
    session.reset_engines()
    try:
        settings = Settings()
        upgrade(settings.database_url)
        app = create_app(settings)
        with TestClient(app, client=("203.0.113.7", 40000)) as remote:
            r = remote.get("/v1/jobs")
            assert r.status_code == 401 and "loopback" in r.text
        with TestClient(app, client=("127.0.0.1", 40000)) as local:
            assert local.get("/v1/jobs").status_code == 200
    finally:
        get_settings.cache_clear()
        session.reset_engines()
