"""Chaos soak: a seeded, randomized fault campaign over the real stack (issue 9).

    python -m tests.chaos --seed N [--quick] [--part soak|backlog|all] [--workdir DIR]

Two parts, on services this process owns (a private Postgres cluster and Redis server, moto S3 behind a
TCP relay, a loopback HTTP/HTTPS server for URI sources) and the real asrq processes:

soak     A seeded workload (uploads, http/https/s3 URIs, one or more POST /v1/jobs/batch, several tenants,
         bad inputs meant to fail) runs once without faults (the baseline), then again while a scheduler
         injects seeded faults at random moments: kill -9 and SIGTERM of every process kind (API, CPU
         prepare/finalize worker, transcribe worker, beat), kill -9 of one worker child, Redis restart and
         flush, Postgres restart, S3 outage, duplicate deliveries. Killed processes come back after a short
         random delay. Then it checks, and prints:
           - every good job COMPLETED, every bad input FAILED with a stored reason (or refused with a 4xx);
           - every transcript equal to the baseline's (text and segment texts identical; times within 0.5 s);
           - no chunk DONE twice (a Postgres trigger logs every transition into DONE into an audit table);
           - nothing left PREPARING, TRANSCRIBING or FINALIZING;
           - everything finished before a hard deadline (else: STUCK, with state, chunks and logs);
         and reports duplicate publishes (reconciler log lines, injected ones, and per job from Celery's
         task-sent events), the longest recovery time, and the faults by kind and job state at injection.
backlog  Finding 4: N jobs in one POST /v1/jobs/batch drain through one CPU worker with a short
         reconcile_stale_s; Redis is flushed half-way. duplicates = reconciler re-sends - messages really
         lost at the flush (LLEN of the queues + HLEN of kombu's ``unacked`` just before FLUSHALL);
         target: under 1 % of the jobs, and every job COMPLETED.

Recovery time of a fault: among the jobs not finished when it was injected, the longest wait from the
injection to that job's next progress event (a job state change or one of its chunks reaching DONE, both
recorded by the audit triggers with the database clock). It includes ordinary queueing, so the report
prints the baseline's longest progress gap beside it for scale.

The exit status is 0 only when every guarantee held. The quick mode (CI, tests/test_chaos.py) asserts
nothing that depends on timing except the overall deadline.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import functools
import http.server
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.fault_services import PrivatePostgres, PrivateRedis, TcpRelay, wait_port_closed
from tests.services import AUDIO, ROOT, Stack, apply_env, base_env, free_port, moto_s3, wait_until

# English clips only: the bundled model is tiny.en, and a deterministic baseline needs sane decoding
CLIPS = ["en_jfk_ask_not_11s.flac", "en_sr_one_two_three.wav", "en_vosk_digits.wav",
         "en_librispeech_1995-1837-0001.wav", "en_librispeech_2412-153948-0000.flac",
         "en_librispeech_2412-153948-0001.flac", "en_librivox_sonnet001_53s.wav",
         "en_fw_stereo_diarization_2ch.wav"]
TENANTS = ("acme", "globex", "initech")
STORAGE_BUCKET = "asrq-chaos"
SOURCE_BUCKET = "asrq-sources"
IN_FLIGHT = ("QUEUED", "PREPARING", "TRANSCRIBING", "FINALIZING")
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED")
MOVING = ("PREPARING", "TRANSCRIBING", "FINALIZING")
TIME_TOLERANCE_S = 0.5  # as tests/test_faults.py: a chunk's first word moves when its batch-mates differ
RESENT_RE = re.compile(r"reconcile re-sent (\{[^}]*\})")
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

PROCESS_KINDS = ("api", "cpu", "gpu", "beat")
FAULT_KINDS = tuple(f"{sig}:{p}" for p in PROCESS_KINDS for sig in ("kill9", "sigterm")) + (
    "kill9:cpu-child", "kill9:gpu-child", "redis:restart", "redis:flush", "pg:restart", "s3:outage",
    "dup:deliver")


# --- modes -------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Mode:
    name: str
    n_short: int
    n_medium: int  # 30-120 s of clips and short pauses
    n_long: int  # minutes of clips between long silences
    long_s: tuple[float, float]
    short_max_s: float  # the longest real clip a short job may be
    medium_s: tuple[float, float]
    long_pause_s: tuple[float, float]
    n_batches: int  # POST /v1/jobs/batch calls among the URI jobs
    batch_size: int
    fault_rounds: int  # every fault kind this many times (then extra random ones)
    extra_faults: int
    gap_s: tuple[float, float]  # between faults
    phase_wait_s: float  # how long a fault waits for a job in its target phase
    submit_window_s: float  # chaos-run submissions are spread over this long
    sigterm_grace_s: float  # then SIGKILL, as an orchestrator would
    deadline_s: float  # chaos run, from its first submission
    baseline_deadline_s: float
    env: dict
    backlog_jobs: int
    backlog_stale_s: float
    backlog_interval_s: float
    backlog_deadline_s: float


QUICK = Mode("quick", n_short=14, n_medium=2, n_long=1, long_s=(300, 360), short_max_s=20,
             medium_s=(20, 40), long_pause_s=(90, 240), n_batches=1, batch_size=4,
             fault_rounds=1, extra_faults=2, gap_s=(2.0, 6.0), phase_wait_s=12.0, submit_window_s=45.0,
             sigterm_grace_s=20.0, deadline_s=300.0, baseline_deadline_s=150.0,
             env={"ASRQ_RECONCILE_INTERVAL_S": "2", "ASRQ_RECONCILE_STALE_S": "6", "ASRQ_CHUNK_LEASE_S": "30",
                  "ASRQ_VISIBILITY_TIMEOUT_S": "90"},
             backlog_jobs=300, backlog_stale_s=5.0, backlog_interval_s=1.0, backlog_deadline_s=300.0)
FULL = Mode("full", n_short=200, n_medium=40, n_long=12, long_s=(300, 1200), short_max_s=60,
            medium_s=(30, 90), long_pause_s=(10.0, 60.0), n_batches=5, batch_size=12,
            fault_rounds=4, extra_faults=12, gap_s=(5.0, 25.0), phase_wait_s=20.0, submit_window_s=600.0,
            sigterm_grace_s=60.0, deadline_s=3600.0, baseline_deadline_s=2400.0,
            env={"ASRQ_RECONCILE_INTERVAL_S": "3", "ASRQ_RECONCILE_STALE_S": "15", "ASRQ_CHUNK_LEASE_S": "90",
                 "ASRQ_VISIBILITY_TIMEOUT_S": "900"},
            backlog_jobs=2000, backlog_stale_s=20.0, backlog_interval_s=2.0, backlog_deadline_s=1800.0)


# --- workload ----------------------------------------------------------------------------------------------------

@dataclass
class Item:
    idx: int
    name: str  # file name (also the URL / object name)
    kind: str  # short | medium | long | bad
    source: str  # upload | http | https | s3 (batch items: batch=n)
    tenant: str
    expect: str  # ok | fail
    path: Path | None = None
    uri: str | None = None
    options: dict = field(default_factory=dict)
    batch: int | None = None
    note: str = ""

    @property
    def label(self) -> str:
        return f"#{self.idx:03d} {self.kind}/{self.source}{'' if self.batch is None else f'[batch{self.batch}]'} " \
               f"{self.name}"


def _clip_audio() -> dict:
    from tests.audio_fixtures import load_clip

    return {n: load_clip(AUDIO / n) for n in CLIPS}


def _concat(path: Path, rng: random.Random, clips: dict, duration_s: float, pause_s: tuple[float, float]) -> Path:
    """Real clips end to end with pauses of seeded length, streamed into a FLAC of about duration_s."""
    import numpy as np

    from tests.audio_fixtures import SR, encode_mono

    def blocks():  # noqa: ANN202
        total, target = 0, int(duration_s * SR)
        yield np.zeros(SR, np.float32)
        while total < target:
            clip = clips[rng.choice(CLIPS)]
            gap = np.zeros(int(rng.uniform(*pause_s) * SR), np.float32)
            for b in (clip, gap):
                yield b
                total += len(b)

    return encode_mono(path, blocks())


def build_workload(mode: Mode, seed: int, folder: Path, tls: bool, s3_sources: bool,
                   untrusted_tls: bool = False) -> list[Item]:
    """The same seed gives the same recordings, sources, tenants and options."""
    from tests import bad_inputs as bi

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    clips = None
    items: list[Item] = []
    uri_sources = ["http"] + (["https"] if tls else []) + (["s3"] if s3_sources else [])

    def add(kind: str, name: str, path: Path | None, expect: str = "ok", **kw) -> Item:  # noqa: ANN003
        it = Item(len(items), name, kind, kw.pop("source", None) or rng.choice(["upload", "upload", *uri_sources]),
                  rng.choice(TENANTS), expect, path, **kw)
        items.append(it)
        return it

    short_clips = CLIPS if mode.short_max_s > 60 else [c for c in CLIPS if "53s" not in c]
    for _ in range(mode.n_short):
        n = rng.choice(short_clips)
        dest = folder / f"s{len(items):03d}-{n}"
        if not dest.exists():
            shutil.copyfile(AUDIO / n, dest)
        add("short", dest.name, dest)
    for _ in range(mode.n_medium):
        dest = folder / f"m{len(items):03d}.flac"
        dur, sub = rng.uniform(*mode.medium_s), random.Random(rng.random())
        if not dest.exists():
            clips = clips or _clip_audio()
            _concat(dest, sub, clips, dur, (0.3, 3.0))
        add("medium", dest.name, dest, note=f"{dur:.0f} s")
    for _ in range(mode.n_long):
        dest = folder / f"l{len(items):03d}.flac"
        dur, sub = rng.uniform(*mode.long_s), random.Random(rng.random())
        if not dest.exists():
            clips = clips or _clip_audio()
            _concat(dest, sub, clips, dur, mode.long_pause_s)
        add("long", dest.name, dest, note=f"{dur / 60:.1f} min")
    # inputs meant to fail, each with a reason a user can act on
    bad_dir = folder / "bad"
    bad_dir.mkdir(exist_ok=True)
    makers = [bi.make_truncated_flac, bi.make_pdf, bi.make_text, bi.make_video_without_audio, bi.make_png]
    for maker in makers[: 4 if mode is QUICK else 5]:
        p = maker(bad_dir)
        add("bad", p.name, p, "fail", source=rng.choice(["upload", "http"]))
    add("bad", "missing.wav", None, "fail", source="http", note="the source server answers 404")
    if untrusted_tls:
        p = bad_dir / "untrusted-cert.wav"
        shutil.copyfile(AUDIO / bi.SPEECH_CLIP, p)
        add("bad", p.name, p, "fail", source="https-untrusted", note="https with an untrusted certificate")
    if s3_sources:
        add("bad", "no-such-object.wav", None, "fail", source="s3", note="no such object")
    # a model that is not installed: refused at submission (4xx) or FAILED with the reason (issue 9, 2)
    add("bad", f"s{0:03d}-{items[0].name.split('-', 1)[1]}", items[0].path, "fail", source="upload",
        options={"engine": "funasr", "model": "paraformer-zh"}, note="model not installed")
    # some URI jobs go in batches (POST /v1/jobs/batch), the rest one by one
    uri_items = [it for it in items if it.source in ("http", "https", "s3") and it.expect == "ok"]
    rng.shuffle(uri_items)
    for b in range(mode.n_batches):
        for it in uri_items[b * mode.batch_size : (b + 1) * mode.batch_size]:
            it.batch, it.tenant = b, "acme"  # one batch, one tenant
    return items


# --- services ----------------------------------------------------------------------------------------------------

class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *_a) -> None:  # noqa: ANN002
        pass


class SourceServer:
    """Loopback servers of the workload folder for http(s):// sources: plain HTTP, HTTPS with a
    certificate the deployment is told to trust (where it has a setting for that), and HTTPS with a
    certificate nobody trusts (a source that must fail with a reason)."""

    def __init__(self, folder: Path, tmp: Path) -> None:
        self.handler = functools.partial(_Quiet, directory=str(folder))
        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self.handler)
        self.servers = {"http": self.http}
        self.cafile = None
        if shutil.which("openssl"):
            for name in ("https", "https-untrusted"):
                cert = self._tls(name, tmp)
                if cert and name == "https":
                    self.cafile = cert
        for srv in self.servers.values():
            threading.Thread(target=srv.serve_forever, daemon=True).start()

    def _tls(self, name: str, tmp: Path) -> Path | None:
        key, cert = tmp / f"{name}.key", tmp / f"{name}.crt"
        r = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                            "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
                            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], capture_output=True)
        if r.returncode != 0:
            return None
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self.handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
        self.servers[name] = srv
        return cert

    def url(self, scheme: str, rel: str) -> str:
        srv = self.servers[scheme]
        host = "127.0.0.1" if scheme == "http" else "localhost"
        return f"{scheme.split('-')[0]}://{host}:{srv.server_address[1]}/{rel}"

    def close(self) -> None:
        for srv in self.servers.values():
            srv.shutdown()
            srv.server_close()


def tls_trust_setting() -> str | None:
    """A setting naming CA certificates to trust for https:// sources, if this tree has one. The source
    download pins the checked address with trust_env off, so SSL_CERT_FILE does not reach it."""
    from app.settings import Settings

    for name in Settings.model_fields:
        if re.search(r"ca_bundle|ca_file|cafile|ca_cert|ssl_ca|tls_ca|trusted_ca|source_ca", name):
            return name
    return None


class Db:
    """The campaign's own view of Postgres (psycopg2, one connection per thread, reconnects)."""

    def __init__(self, sa_url: str) -> None:
        self.dsn = sa_url.replace("postgresql+psycopg2://", "postgresql://")
        self._local = threading.local()

    def q(self, sql: str, args: tuple = (), tries: int = 3) -> list[tuple]:
        import psycopg2

        for attempt in range(tries):
            conn = getattr(self._local, "conn", None)
            try:
                if conn is None or conn.closed:
                    conn = self._local.conn = psycopg2.connect(self.dsn, connect_timeout=5)
                    conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute(sql, args)
                    return cur.fetchall() if cur.description else []
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                with contextlib.suppress(Exception):
                    conn.close()
                self._local.conn = None
                if attempt == tries - 1:
                    raise
                time.sleep(0.5)
        return []

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._local.conn.close()


AUDIT_SQL = """
CREATE TABLE IF NOT EXISTS chaos_audit (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    kind text NOT NULL,  -- job | chunk_done | chunk_redone | chunk_undone | chunk_deleted_done
    job_id uuid, chunk_id uuid, old_state text, new_state text, info text);
CREATE INDEX IF NOT EXISTS chaos_audit_job ON chaos_audit (job_id, at);
CREATE OR REPLACE FUNCTION chaos_jobs_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    INSERT INTO chaos_audit (kind, job_id, new_state) VALUES ('job', NEW.id, NEW.state);
  ELSIF NEW.state IS DISTINCT FROM OLD.state THEN
    INSERT INTO chaos_audit (kind, job_id, old_state, new_state) VALUES ('job', NEW.id, OLD.state, NEW.state);
  END IF;
  RETURN NEW;
END $$;
DROP TRIGGER IF EXISTS chaos_jobs_audit ON jobs;
CREATE TRIGGER chaos_jobs_audit AFTER INSERT OR UPDATE ON jobs FOR EACH ROW EXECUTE FUNCTION chaos_jobs_audit();
CREATE OR REPLACE FUNCTION chaos_chunks_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'DELETE' THEN
    IF OLD.state = 'DONE' THEN
      INSERT INTO chaos_audit (kind, job_id, chunk_id, old_state) VALUES ('chunk_deleted_done', OLD.job_id, OLD.id, 'DONE');
    END IF;
    RETURN OLD;
  ELSIF TG_OP = 'INSERT' THEN
    IF NEW.state = 'DONE' THEN
      INSERT INTO chaos_audit (kind, job_id, chunk_id, new_state) VALUES ('chunk_done', NEW.job_id, NEW.id, 'DONE');
    END IF;
  ELSIF NEW.state = 'DONE' AND OLD.state IS DISTINCT FROM 'DONE' THEN
    INSERT INTO chaos_audit (kind, job_id, chunk_id, old_state, new_state, info)
    VALUES ('chunk_done', NEW.job_id, NEW.id, OLD.state, 'DONE', NEW.batch_id::text);
  ELSIF NEW.state = 'DONE' AND OLD.state = 'DONE'
        AND (NEW.text IS DISTINCT FROM OLD.text OR NEW.batch_id IS DISTINCT FROM OLD.batch_id) THEN
    INSERT INTO chaos_audit (kind, job_id, chunk_id, old_state, new_state, info)
    VALUES ('chunk_redone', NEW.job_id, NEW.id, 'DONE', 'DONE', NEW.batch_id::text);
  ELSIF OLD.state = 'DONE' AND NEW.state IS DISTINCT FROM 'DONE' THEN
    INSERT INTO chaos_audit (kind, job_id, chunk_id, old_state, new_state) VALUES ('chunk_undone', NEW.job_id, NEW.id, 'DONE', NEW.state);
  END IF;
  RETURN NEW;
END $$;
DROP TRIGGER IF EXISTS chaos_chunks_audit ON chunks;
CREATE TRIGGER chaos_chunks_audit AFTER INSERT OR UPDATE OR DELETE ON chunks
  FOR EACH ROW EXECUTE FUNCTION chaos_chunks_audit();
"""


def create_database(pg: PrivatePostgres, name: str) -> str:
    db = Db(pg.url)
    db.q(f'DROP DATABASE IF EXISTS "{name}"')
    db.q(f'CREATE DATABASE "{name}"')
    db.close()
    url = pg.url.rsplit("/", 1)[0] + f"/{name}"
    from app.db.migrate import upgrade

    upgrade(url)
    Db(url).q(AUDIT_SQL)
    return url


def s3_source_setting() -> str | None:
    """The allow-list of buckets/prefixes that s3:// sources may come from, if this tree has one."""
    from app.settings import Settings

    for name in Settings.model_fields:
        if re.search(r"s3.*(allow|source)|source.*(allow|bucket|prefix)", name) and "private" not in name \
                and "file" not in name:
            return name
    return None


# --- processes ---------------------------------------------------------------------------------------------------

class Fleet:
    """API, CPU worker (prepare, finalize, maintenance), transcribe worker, and beat in its own process
    (deploy/k8s/cpu-worker.yaml: ``asrq worker --queues maintenance --concurrency 1 --beat``), so each can
    be killed on its own."""

    def __init__(self, stack: Stack, cpu_concurrency: int) -> None:
        self.stack = stack
        self.cpu_concurrency = cpu_concurrency
        self.api_port = int(stack.api_url.rsplit(":", 1)[1])
        self.locks = {n: threading.Lock() for n in PROCESS_KINDS}
        self.restarts: Counter = Counter()
        self.notes: list[str] = []
        self.closed = False

    def argv(self, name: str) -> list[str]:
        py = [sys.executable, "-m", "app.cli"]
        return {
            "api": py + ["api", "--host", "127.0.0.1", "--port", str(self.api_port)],
            "cpu": py + ["worker", "--queues", "prepare,finalize,maintenance", "--concurrency",
                         str(self.cpu_concurrency)],
            "gpu": py + ["worker", "--gpus", "cpu"],
            "beat": py + ["worker", "--queues", "maintenance", "--concurrency", "1", "--beat"],
        }[name]

    def start(self, name: str) -> None:
        if not self.closed:  # a restart due after the campaign ended must not leave a process behind
            self.stack.start(name, self.argv(name))

    def close(self) -> None:
        self.closed = True
        self.stack.stop_all()

    def proc(self, name: str):  # noqa: ANN201
        return self.stack.procs[name]

    def log_size(self, name: str) -> int:
        with contextlib.suppress(OSError):
            return self.proc(name).log.stat().st_size
        return 0

    def wait_ready(self, names, timeout_s: float, since: dict | None = None) -> None:  # noqa: ANN001
        since = since or {}
        for n in names:
            p = self.proc(n)
            if n == "api":
                wait_until(lambda: httpx.get(self.stack.api_url + "/healthz", timeout=2).status_code == 200,
                           timeout_s, what=f"API health\n{p.tail()}")
            else:
                def ready(p=p, off=since.get(n, 0)) -> bool:  # noqa: ANN001
                    if not p.alive():
                        raise RuntimeError(f"{p.name} exited\n{p.tail()}")
                    with open(p.log, "rb") as f:
                        f.seek(off)
                        return b" ready." in f.read()
                wait_until(ready, timeout_s, interval_s=0.5, what=f"{n} ready\n{p.tail()}")

    def mark(self, line: str) -> None:
        """A marker in every process log, so a log reads against the fault timeline."""
        for p in self.stack.procs.values():
            with contextlib.suppress(OSError), open(p.log, "a") as f:
                f.write(f"\n=== chaos {line} ===\n")

    def kill(self, name: str, sig: str, grace_s: float) -> str:
        p = self.proc(name)
        if not p.alive():
            return "already down"
        if sig == "kill9":
            p.signal_group(signal.SIGKILL)
            p.popen.wait(30)
            return "killed"
        p.popen.send_signal(signal.SIGTERM)  # to the main process, as docker stop / kubelet do
        try:
            p.popen.wait(grace_s)
            note = f"exited rc={p.popen.returncode}"
        except subprocess.TimeoutExpired:
            p.signal_group(signal.SIGKILL)
            p.popen.wait(30)
            note = f"still running after {grace_s:.0f} s: SIGKILL"
        # a launcher that exits can leave children behind: the whole group goes, as in a container
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.popen.pid, signal.SIGKILL)
        return note

    def kill_child(self, name: str, rng: random.Random) -> str:
        """kill -9 of one process inside the worker (an OOM kill): the rest of the tree survives."""
        import psutil

        p = self.proc(name)
        if not p.alive():
            return "already down"
        try:
            tree = psutil.Process(p.popen.pid).children(recursive=True)
        except psutil.Error:
            return "no children"
        # the deepest processes: prefork pool children (cpu) or the solo worker itself (gpu)
        depth = {c.pid: len(c.parents()) for c in tree if c.is_running()}
        if not depth:
            return "no children"
        deepest = max(depth.values())
        victim = rng.choice(sorted(pid for pid, d in depth.items() if d == deepest))
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
        return f"pid {victim} killed"

    def ensure_all_up(self) -> list[str]:
        started = []
        for n in PROCESS_KINDS:
            with self.locks[n]:
                if not self.proc(n).alive():
                    self.start(n)
                    started.append(n)
        return started


# --- publishes ---------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def publisher_app():
    """app.messaging.send_* on this campaign's broker. The publisher is made on first use from the settings
    of that moment; under pytest another module may have made one for another broker first."""
    from app import messaging
    from app.settings import get_settings

    old = messaging.use(None)
    if old is not None and old.conf.broker_url == get_settings().broker_url:
        messaging.use(old)
    try:
        yield messaging.publisher()
    finally:
        made = messaging.use(old)
        if made is not old and made is not None:
            made.close()


class PublishWatcher(threading.Thread):
    """Celery's task-sent events (task_send_sent_event is on): every publish, by task and argument.
    Events published while Redis is down are not seen; the reconciler's log lines count those."""

    def __init__(self, app) -> None:  # noqa: ANN001
        super().__init__(daemon=True)
        self.app = app
        self.events: list[tuple[float, str, str, str]] = []  # (time, task, arg, sender)
        self.active = True
        self.errors = 0

    def _on(self, ev: dict) -> None:
        if not self.active:
            return
        m = UUID_RE.search(str(ev.get("args", "")))
        if m:
            self.events.append((time.time(), ev.get("name", "?"), m.group(0), ev.get("hostname", "?")))

    def run(self) -> None:
        while self.active:
            try:
                with self.app.connection_for_read() as conn:
                    recv = self.app.events.Receiver(conn, handlers={"task-sent": self._on})
                    recv.capture(limit=None, timeout=None, wakeup=False)
            except Exception:  # noqa: BLE001 - Redis restarting: reconnect
                self.errors += 1
                time.sleep(0.5)


def queue_depths(redis_port: int) -> dict[str, int]:
    """Messages in Redis now: each queue's list (with kombu's priority sub-lists) and the unacked hash."""
    import redis

    from app.constants import ALL_QUEUES

    r = redis.Redis(port=redis_port)
    out = {}
    for q in ALL_QUEUES:
        keys = [q] + [f"{q}\x06\x16{p}" for p in range(1, 10)]
        out[q] = sum(r.llen(k) for k in keys)
    out["unacked"] = r.hlen("unacked")
    return out


def lost_targets(redis_port: int) -> set[tuple[str, str]]:
    """The distinct (task, job or chunk id) the messages in Redis carry now: what a flush would really
    lose, counting a message and its duplicates once."""
    import redis

    from app.constants import ALL_QUEUES

    r = redis.Redis(port=redis_port)
    raw = []
    for q in ALL_QUEUES:
        for k in [q] + [f"{q}\x06\x16{p}" for p in range(1, 10)]:
            raw += r.lrange(k, 0, -1)
    raw += r.hvals("unacked")
    out = set()
    for item in raw:
        with contextlib.suppress(ValueError, TypeError, AttributeError, KeyError):
            doc = json.loads(item)
            msg = doc[0] if isinstance(doc, list) else doc  # unacked holds [message, exchange, routing_key]
            headers = msg.get("headers") or {}
            m = UUID_RE.search(str(headers.get("argsrepr", "")))
            if m:
                out.add((headers.get("task", "?"), m.group(0)))
    return out


def broker_messages(redis_port: int) -> dict[str, list[str]]:
    """Where each job's or chunk's messages are in Redis now: waiting in a queue, or delivered to a worker
    and not acknowledged (kombu's ``unacked`` hash, with how long ago)."""
    import redis

    from app.constants import ALL_QUEUES

    def parse(item: bytes) -> tuple[str, str] | None:
        with contextlib.suppress(ValueError, TypeError, AttributeError, KeyError):
            doc = json.loads(item)
            headers = (doc[0] if isinstance(doc, list) else doc).get("headers") or {}
            m = UUID_RE.search(str(headers.get("argsrepr", "")))
            if m:
                return headers.get("task", "?").split(".")[-1], m.group(0)
        return None

    r = redis.Redis(port=redis_port)
    out: dict[str, list[str]] = defaultdict(list)
    for q in ALL_QUEUES:
        for k in [q] + [f"{q}\x06\x16{p}" for p in range(1, 10)]:
            for item in r.lrange(k, 0, -1):
                if (got := parse(item)):
                    out[got[1]].append(f"{got[0]} waiting in {q}")
    since = {k.decode(): v for k, v in r.zrange("unacked_index", 0, -1, withscores=True)}
    for tag, item in r.hscan_iter("unacked"):
        if (got := parse(item)):
            age = time.time() - since.get(tag.decode(), time.time())
            out[got[1]].append(f"{got[0]} delivered, unacked for {age:.0f} s")
    return out


def reconcile_resends(logs: list[Path], offsets: dict[Path, int] | None = None,
                      until: dict[Path, int] | None = None) -> Counter:
    total: Counter = Counter()
    for log in logs:
        try:
            with open(log, "rb") as f:
                f.seek((offsets or {}).get(log, 0))
                end = (until or {}).get(log)
                data = f.read() if end is None else f.read(max(0, end - f.tell()))
        except OSError:
            continue
        for m in RESENT_RE.finditer(data.decode(errors="replace")):
            with contextlib.suppress(ValueError, SyntaxError):
                total.update({k: int(v) for k, v in ast.literal_eval(m.group(1)).items()})
    return total


# --- the campaign ------------------------------------------------------------------------------------------------

@dataclass
class Sub:
    item: Item
    job_id: str | None = None
    status: str = "pending"  # accepted | refused | error
    http_status: int | None = None
    detail: str = ""
    t: float = 0.0
    tries: int = 0


@dataclass
class Fault:
    at: float  # seconds after the chaos run started
    t_wall: float
    kind: str
    target: str | None
    found_target: bool
    states: Counter
    in_flight: list[str]
    note: str = ""
    recovery_s: float | None = None
    recovery_job: str | None = None


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)

    def add(self, line: str = "") -> None:
        self.lines.append(line)
        print(line, flush=True)

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        self.checks.append(Check(name, ok, detail))
        self.add(f"  [{'PASS' if ok else 'FAIL'}] {name}{': ' + detail if detail else ''}")

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def failed(self) -> list[str]:
        return [c.name for c in self.checks if not c.ok]


class Campaign:
    def __init__(self, seed: int, mode: Mode, workdir: Path, report: Report) -> None:
        self.seed, self.mode, self.work, self.r = seed, mode, workdir, report
        self.rng = random.Random(seed * 7919 + 1)
        self.keys = {t: f"{t}-{secrets.token_urlsafe(12)}" for t in TENANTS}
        self._stack_ctx = contextlib.ExitStack()
        self.t0 = time.time()
        self.notes: list[str] = []

    # -- infrastructure --
    def up(self) -> None:
        es = self._stack_ctx
        self.saved_env = dict(os.environ)
        es.callback(self._restore_env)
        (self.work / "logs").mkdir(parents=True, exist_ok=True)
        endpoint, _moto = es.enter_context(moto_s3(STORAGE_BUCKET, self.work / "logs"))
        self.moto_endpoint = endpoint
        import boto3

        self.s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                               aws_access_key_id="test", aws_secret_access_key="test")
        self.s3.create_bucket(Bucket=SOURCE_BUCKET)
        self.relay = TcpRelay(int(endpoint.rsplit(":", 1)[1]))
        self.relay.restore()
        es.callback(self.relay.cut)
        self.pg = PrivatePostgres()
        self.pg.start()
        es.callback(self.pg.close)
        self.redis = PrivateRedis()
        self.redis.start()
        es.callback(self.redis.stop)
        self.inputs = self.work / "inputs"
        self.inputs.mkdir(parents=True, exist_ok=True)
        self.sources = SourceServer(self.inputs, self.work)
        es.callback(self.sources.close)

    def _restore_env(self) -> None:
        os.environ.clear()
        os.environ.update(self.saved_env)
        from app import storage
        from app.db import session
        from app.settings import get_settings

        get_settings.cache_clear()
        session.reset_engines()
        storage._store.cache_clear()

    def down(self) -> None:
        self._stack_ctx.close()

    def env_for(self, db_url: str, prefix: str, extra: dict) -> dict:
        tmp = self.work / prefix
        tmp.mkdir(parents=True, exist_ok=True)
        env = base_env(db_url, self.redis.url, f"s3://{STORAGE_BUCKET}/{prefix}", f"http://127.0.0.1:{self.relay.port}",
                       tmp, self.keys["acme"])
        env["ASRQ_API_KEYS"] = ",".join(f"{t}:{k}" for t, k in self.keys.items())
        env.update(self.mode.env)
        env.update(extra)
        trust = tls_trust_setting()
        if trust and self.sources.cafile:
            env[f"ASRQ_{trust.upper()}"] = str(self.sources.cafile)
        allow = s3_source_setting()
        if allow:
            env[f"ASRQ_{allow.upper()}"] = SOURCE_BUCKET
        return env

    def start_fleet(self, env: dict, name: str, cpu_concurrency: int) -> Fleet:
        apply_env(env)
        stack = Stack(env=env, tmp=self.work / name, api_url=f"http://127.0.0.1:{free_port()}",
                      api_key=self.keys["acme"])
        fleet = Fleet(stack, cpu_concurrency)
        self._stack_ctx.callback(fleet.close)  # whatever happens, no process outlives the campaign
        for n in PROCESS_KINDS:
            fleet.start(n)
        fleet.wait_ready(PROCESS_KINDS, 180)
        return fleet

    def client(self, fleet: Fleet, tenant: str) -> httpx.Client:
        return httpx.Client(base_url=fleet.stack.api_url, headers={"Authorization": f"Bearer {self.keys[tenant]}"},
                            timeout=60)

    # -- submission --
    def prepare_sources(self, items: list[Item]) -> None:
        for it in items:
            if it.source in ("http", "https") and it.uri is None:
                rel = it.path.relative_to(self.inputs).as_posix() if it.path else it.name
                it.uri = self.sources.url(it.source, rel)
            elif it.source == "https-untrusted":
                it.uri = self.sources.url(it.source, it.path.relative_to(self.inputs).as_posix())
            elif it.source == "s3":
                key = f"inbox/{it.name}"
                if it.path:
                    self.s3.upload_file(str(it.path), SOURCE_BUCKET, key)
                it.uri = f"s3://{SOURCE_BUCKET}/{key}"

    def submit_all(self, fleet: Fleet, db: Db, items: list[Item], run: str, deadline: float,
                   spread_s: float = 0.0, stop: threading.Event | None = None) -> dict[int, Sub]:
        """Every item once, in a seeded order; retried through outages with the same Idempotency-Key."""
        subs = {it.idx: Sub(it) for it in items}
        order = [[it] for it in items if it.batch is None]
        for b in sorted({it.batch for it in items if it.batch is not None}):
            order.append([it for it in items if it.batch == b])
        rng = random.Random(self.seed * 31 + len(run))
        rng.shuffle(order)
        times = sorted(rng.uniform(0, spread_s) for _ in order) if spread_s else [0.0] * len(order)
        start = time.monotonic()
        clients = {t: self.client(fleet, t) for t in TENANTS}
        try:
            for group, at in zip(order, times):
                if stop is not None and stop.is_set():
                    break
                delay = start + at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                self._submit_group(clients, db, group, subs, run, deadline)
        finally:
            for c in clients.values():
                c.close()
        return subs

    def _submit_group(self, clients: dict, db: Db, group: list[Item], subs: dict[int, Sub], run: str,
                      deadline: float) -> None:
        first = group[0]
        key = lambda it: f"chaos-{self.seed}-{run}-{it.idx}"  # noqa: E731
        c = clients[first.tenant if first.batch is None else "acme"]
        tries = 0
        while True:
            tries += 1
            try:
                if first.batch is not None:
                    body = {"jobs": [{"source_uri": it.uri, "idempotency_key": key(it), **it.options} for it in group]}
                    resp = c.post("/v1/jobs/batch", json=body)
                elif first.source == "upload":
                    with open(first.path, "rb") as f:
                        resp = c.post("/v1/jobs", files={"file": (first.name, f)},
                                      data={k: str(v) for k, v in first.options.items()},
                                      headers={"Idempotency-Key": key(first)})
                else:
                    resp = c.post("/v1/jobs", json={"source_uri": first.uri, **first.options},
                                  headers={"Idempotency-Key": key(first)})
            except httpx.TransportError as e:
                resp, err = None, f"{type(e).__name__}"
            now = time.time()
            if resp is not None and resp.status_code in (200, 202):
                data = resp.json()
                ids = data["job_ids"] if first.batch is not None else [data["id"]]
                for it, jid in zip(group, ids):
                    subs[it.idx] = Sub(it, jid, "accepted", resp.status_code, "", now, tries)
                return
            if resp is not None and resp.status_code == 409 and first.batch is not None:
                # a batch whose response was lost (API killed after the commit): its keys are taken now.
                # The API gives no way back to the ids; the database does.
                rows = dict(db.q("SELECT idempotency_key, id::text FROM jobs WHERE tenant = %s AND "
                                 "idempotency_key = ANY(%s)", ("acme", [key(it) for it in group])))
                if len(rows) == len(group):
                    for it in group:
                        subs[it.idx] = Sub(it, rows[key(it)], "accepted", 409, "batch replay answered 409", now, tries)
                    self.notes.append(f"batch {first.batch}: a replay after a lost response answered 409 "
                                      f"({resp.text[:120]}); ids recovered from the database")
                    return
            if resp is not None and 400 <= resp.status_code < 500 and resp.status_code != 429:
                for it in group:
                    subs[it.idx] = Sub(it, None, "refused", resp.status_code, resp.text[:300], now, tries)
                return
            if resp is not None and resp.status_code >= 500 and resp.status_code != 503:
                self.notes.append(f"{first.label}: HTTP {resp.status_code} on submit: {resp.text[:160]}")
            if now > deadline:
                for it in group:
                    subs[it.idx] = Sub(it, None, "error", resp.status_code if resp is not None else None,
                                       f"not accepted before the deadline ({err if resp is None else resp.text[:200]})",
                                       now, tries)
                return
            time.sleep(min(3.0, 0.3 * tries))

    # -- observation --
    def states(self, db: Db, ids: list[str]) -> dict[str, str]:
        if not ids:
            return {}
        return dict(db.q("SELECT id::text, state FROM jobs WHERE id = ANY(%s::uuid[])", (ids,)))

    def wait_terminal(self, db: Db, subs: dict[int, Sub], deadline: float,
                      bad_grace_s: float | None = None) -> dict[str, str]:
        """Until every job has ended, or the deadline; with bad_grace_s, at most that much longer once every
        good job has ended (the baseline only needs the good ones)."""
        last: dict[str, str] = {}
        good_done_at = None
        while True:
            ids = [s.job_id for s in subs.values() if s.job_id]
            with contextlib.suppress(Exception):
                last = self.states(db, ids)
            pending = [s for s in subs.values() if s.job_id and last.get(s.job_id) not in TERMINAL]
            if not pending or time.time() > deadline:
                return last
            if bad_grace_s is not None and all(s.item.expect == "fail" for s in pending):
                good_done_at = good_done_at or time.time()
                if time.time() - good_done_at > bad_grace_s:
                    return last
            time.sleep(1.0)

    def transcripts(self, fleet: Fleet, subs: dict[int, Sub], states: dict[str, str]) -> dict[int, dict]:
        from app.constants import transcript_key
        from app.storage import get_store

        out = {}
        clients = {t: self.client(fleet, t) for t in TENANTS}
        try:
            for idx, s in subs.items():
                if not s.job_id or states.get(s.job_id) != "COMPLETED":
                    continue
                tenant = s.item.tenant if s.item.batch is None else "acme"
                try:
                    r = clients[tenant].get(f"/v1/jobs/{s.job_id}/transcript", params={"format": "json"})
                    r.raise_for_status()
                    out[idx] = r.json()
                except Exception:  # noqa: BLE001 - the API is part of what is tested; storage is the truth
                    with contextlib.suppress(Exception):
                        out[idx] = json.loads(get_store().get_bytes(transcript_key(uuid.UUID(s.job_id), "json")))
                        self.notes.append(f"{s.item.label}: transcript read from storage (API failed)")
        finally:
            for c in clients.values():
                c.close()
        return out

    # -- faults --
    def plan_faults(self) -> list[tuple[float, str, str | None, float, float]]:
        """(gap before, kind, target phase, restart delay / outage length, extra) from the seed alone."""
        rng = random.Random(self.seed * 104729 + 3)
        kinds = [k for _ in range(self.mode.fault_rounds) for k in FAULT_KINDS]
        kinds += [rng.choice(FAULT_KINDS) for _ in range(self.mode.extra_faults)]
        rng.shuffle(kinds)
        plan = []
        for k in kinds:
            if k.endswith(("cpu", "cpu-child")):
                target = rng.choice(["PREPARING", "PREPARING", "PREPARING", "FINALIZING", "QUEUED"])
            elif k.endswith(("gpu", "gpu-child")):
                target = "TRANSCRIBING"
            elif k.endswith(("api", "beat")):
                target = rng.choice([None, "QUEUED", "TRANSCRIBING"])
            else:
                target = rng.choice(list(IN_FLIGHT))
            length = {"redis:restart": rng.uniform(1, 4), "pg:restart": rng.uniform(2, 6),
                      "s3:outage": rng.uniform(3, 10)}.get(k, rng.uniform(0.5, 5.0))
            plan.append((rng.uniform(*self.mode.gap_s), k, target, length, rng.random()))
        return plan

    def run_faults(self, fleet: Fleet, db: Db, subs, stop: threading.Event, t_start: float) -> None:  # noqa: ANN001
        rng = random.Random(self.seed * 15485863 + 5)
        threads: list[threading.Thread] = []
        for gap, kind, target, length, extra in self.plan_faults():
            if stop.wait(gap):
                break
            what, _, who = kind.partition(":")
            lock = fleet.locks.get(who) if what in ("kill9", "sigterm") else None
            if lock is not None and not lock.acquire(timeout=120):
                self.skipped.append(f"{kind} (still recovering from the previous one)")
                continue
            handed_over = False  # a process fault's restart thread releases the lock once it restarted it
            try:
                handed_over = self._one_fault(fleet, db, subs, stop, t_start, rng, threads, kind, target, length,
                                              extra, lock)
            finally:
                if lock is not None and not handed_over:
                    lock.release()
        for t in threads:
            t.join(120)

    def _one_fault(self, fleet: Fleet, db: Db, subs, stop: threading.Event, t_start: float,  # noqa: ANN001
                   rng: random.Random, threads: list, kind: str, target: str | None, length: float, extra: float,
                   lock: threading.Lock | None) -> bool:
        # wait (briefly) for a job in the target phase: faults land in every phase, not only where the
        # run happens to be
        found = target is None
        t_wait = time.monotonic() + self.mode.phase_wait_s
        while not found and time.monotonic() < t_wait and not stop.is_set():
            with contextlib.suppress(Exception):
                found = target in self.states(db, [s.job_id for s in subs.values() if s.job_id]).values()
            if not found:
                time.sleep(0.05)
        if stop.is_set():
            return False
        try:
            st = self.states(db, [s.job_id for s in subs.values() if s.job_id])
        except Exception:  # noqa: BLE001
            st = {}
        states = Counter(st.values())
        states["unsubmitted"] = sum(1 for s in subs.values() if not s.job_id)
        in_flight = [j for j, v in st.items() if v in IN_FLIGHT]
        if not in_flight and not states["unsubmitted"] and kind != "dup:deliver":
            self.skipped.append(kind)
            return False
        f = Fault(time.time() - t_start, time.time(), kind, target, found, states, in_flight)
        fleet.mark(f"+{f.at:.1f}s {kind} (target {target})")
        self.faults.append(f)
        try:
            f.note = self._inject(fleet, db, kind, length, extra, rng, st, threads, lock)
            return lock is not None
        except Exception as e:  # noqa: BLE001 - an injection that fails is reported, the run goes on
            f.note = f"injection error {type(e).__name__}: {e}"
            return False

    def _inject(self, fleet: Fleet, db: Db, kind: str, length: float, extra: float, rng: random.Random,
                st: dict[str, str], threads: list, lock: threading.Lock | None) -> str:
        what, _, who = kind.partition(":")
        if what in ("kill9", "sigterm") and who in PROCESS_KINDS:
            t0 = time.monotonic()
            note = fleet.kill(who, what, self.mode.sigterm_grace_s)
            took = time.monotonic() - t0

            def restart() -> None:
                try:
                    time.sleep(length)
                    fleet.start(who)
                    fleet.restarts[who] += 1
                finally:
                    lock.release()

            t = threading.Thread(target=restart, daemon=True)
            t.start()
            threads.append(t)
            return f"{note}" + (f" after {took:.1f} s" if what == "sigterm" else "") + f"; restarted {length:.1f} s later"
        if what == "kill9" and who.endswith("-child"):
            return fleet.kill_child(who.split("-")[0], rng)
        if kind == "redis:restart":
            self.redis.stop()
            time.sleep(length)
            self.redis.start()
            return f"down {length:.1f} s"
        if kind == "redis:flush":
            lost = queue_depths(self.redis.port)
            targets = lost_targets(self.redis.port)
            self.redis.flush()
            self.flush_lost.append(lost)
            self.flush_targets.append(len(targets))
            return f"flushed {sum(lost.values())} messages ({', '.join(f'{k}={v}' for k, v in lost.items() if v)}) " \
                   f"for {len(targets)} distinct jobs/chunks"
        if kind == "pg:restart":
            self.pg.stop()
            time.sleep(length)
            self.pg.start()
            return f"down {length:.1f} s"
        if kind == "s3:outage":
            self.relay.cut()
            wait_port_closed(self.relay.port)
            time.sleep(length)
            self.relay.restore()
            return f"cut {length:.1f} s"
        if kind == "dup:deliver":
            return self._duplicate(db, st, rng)
        raise ValueError(kind)

    def _duplicate(self, db: Db, st: dict[str, str], rng: random.Random) -> str:
        """Publish the work of a few live (or just finished) jobs again, 1-3 times: what a redelivery,
        a publish retry or a second reconciler would do."""
        from app.messaging import send_finalize, send_prepare, send_transcribe

        live = sorted(j for j, v in st.items() if v != "FAILED")
        if not live:
            return "no job to duplicate"
        picks = rng.sample(live, min(len(live), rng.randint(1, 3)))
        parts = []
        with publisher_app():
            for jid in picks:
                n = rng.randint(1, 3)
                state = st[jid]
                if state in ("QUEUED", "PREPARING"):
                    for _ in range(n):
                        send_prepare([jid])
                    self.injected[jid]["prepare"] += n
                elif state == "TRANSCRIBING":
                    chunks = [r[0] for r in db.q("SELECT id::text FROM chunks WHERE job_id = %s", (jid,))]
                    for _ in range(n):
                        send_transcribe(chunks)
                    self.injected[jid]["transcribe"] += n * len(chunks)
                else:
                    for _ in range(n):
                        send_finalize([jid])
                    self.injected[jid]["finalize"] += n
                parts.append(f"{jid[:8]}({state})x{n}")
        return "re-published " + " ".join(parts)

    # -- the soak --
    def soak(self) -> None:
        r, mode = self.r, self.mode
        self.notes: list[str] = []
        self.faults: list[Fault] = []
        self.skipped: list[str] = []
        self.flush_lost: list[dict] = []
        self.flush_targets: list[int] = []
        self.injected: dict[str, Counter] = defaultdict(Counter)
        t_setup = time.time()
        allow, trust = s3_source_setting(), tls_trust_setting()
        items = self._items = build_workload(mode, self.seed, self.inputs, bool(trust and self.sources.cafile), True,
                                             "https-untrusted" in self.sources.servers)
        self.prepare_sources(items)
        db_url = create_database(self.pg, "soak")
        db = self._db = Db(db_url)
        env = self.env_for(db_url, "soak", {})
        fleet = self.start_fleet(env, "soak", cpu_concurrency=2)
        kinds = Counter(it.kind for it in items)
        srcs = Counter("batch" if it.batch is not None else it.source for it in items)
        r.add(f"workload: {len(items)} jobs ({', '.join(f'{v} {k}' for k, v in kinds.items())}), tenants "
              f"{'/'.join(TENANTS)}; sources {', '.join(f'{k} {v}' for k, v in srcs.items())}; "
              f"s3 source allow-list setting: {allow or 'none in this tree'}; CA setting for https sources: "
              f"{trust or 'none in this tree (no https source can be trusted: only an untrusted one, meant to fail)'}")
        r.add(f"settings: {' '.join(f'{k}={v}' for k, v in mode.env.items())}; CPU worker concurrency 2, "
              f"beat in its own process; setup {time.time() - t_setup:.0f} s")

        # fault-free baseline of the same workload
        t_b = time.time()
        base = self.submit_all(fleet, db, items, "base", t_b + mode.baseline_deadline_s)
        b_states = self.wait_terminal(db, base, t_b + mode.baseline_deadline_s, bad_grace_s=10.0)
        b_dur = time.time() - t_b
        b_tr = self.transcripts(fleet, base, b_states)
        b_gap = self.longest_gap(db, [s.job_id for s in base.values() if s.job_id])
        r.add(f"baseline: {len(base)} jobs in {b_dur:.0f} s: {dict(Counter(b_states.values()))}; longest "
              f"progress gap of a job {b_gap:.1f} s")

        # the same workload under faults
        offsets = {fleet.proc(n).log: fleet.log_size(n) for n in ("cpu", "beat")}
        watcher = None
        with contextlib.suppress(Exception), publisher_app() as app:
            watcher = PublishWatcher(app)
            watcher.start()
        t_c = time.time()
        deadline = t_c + mode.deadline_s
        stop, submitted = threading.Event(), threading.Event()
        box: dict = {}

        def submitter() -> None:
            try:
                box["subs"] = self.submit_all(fleet, db, items, "chaos", deadline, mode.submit_window_s, stop)
            finally:
                submitted.set()

        live_subs: dict[int, Sub] = {}
        th_sub = threading.Thread(target=submitter, daemon=True)
        th_sub.start()
        # the scheduler reads the ids as they are accepted
        th_f = threading.Thread(target=self.run_faults, args=(fleet, db, _LiveSubs(self, box, live_subs), stop, t_c),
                                daemon=True)
        th_f.start()
        while th_f.is_alive() and time.time() < deadline:
            th_f.join(1.0)
            if submitted.is_set() and self._all_terminal(db, box.get("subs", {})):
                break
        stop.set()
        th_f.join(180)
        th_sub.join(60)
        started = fleet.ensure_all_up()
        if started:
            self.notes.append(f"still down when the faults stopped, started again: {', '.join(started)}")
        subs = box.get("subs") or {}
        states = self.wait_terminal(db, subs, deadline)
        c_dur = time.time() - t_c
        if watcher:
            time.sleep(1.0)
            watcher.active = False
        with contextlib.suppress(Exception):
            fleet.wait_ready(["api"], 60)
        tr = self.transcripts(fleet, subs, states)
        r.add(f"chaos run: {len(subs)} jobs in {c_dur:.0f} s (deadline {mode.deadline_s:.0f} s): "
              f"{dict(Counter(states.values()))}; {len(self.faults)} faults"
              + (f", {len(self.skipped)} not injected (nothing left in flight): {', '.join(self.skipped)}"
                 if self.skipped else "")
              + (f"; not injected (run ended first): {len(self.plan_faults()) - len(self.faults) - len(self.skipped)}"
                 if len(self.plan_faults()) > len(self.faults) + len(self.skipped) else ""))
        self.recovery(db, subs)
        self.fault_table()
        self.checks(fleet, db, items, base, b_states, b_tr, subs, states, tr, offsets, watcher, b_gap)
        r.metrics.update(baseline_s=b_dur, chaos_s=c_dur, faults=len(self.faults))
        if not r.ok:
            self.diagnose(fleet, db, subs, states, b_states, base)
        fleet.close()
        db.close()

    def _all_terminal(self, db: Db, subs: dict[int, Sub]) -> bool:
        ids = [s.job_id for s in subs.values() if s.job_id]
        if len(ids) < sum(1 for s in subs.values() if s.status != "refused"):
            return False
        try:
            return all(v in TERMINAL for v in self.states(db, ids).values())
        except Exception:  # noqa: BLE001
            return False

    def longest_gap(self, db: Db, ids: list[str]) -> float:
        """Longest wait between two progress events of one job (from its creation) in a run."""
        rows = db.q("SELECT job_id::text, extract(epoch from at) FROM chaos_audit WHERE job_id = ANY(%s::uuid[]) "
                    "AND kind IN ('job', 'chunk_done') ORDER BY job_id, at", (ids,))
        best, prev = 0.0, {}
        for jid, at in rows:
            if jid in prev:
                best = max(best, float(at) - prev[jid])
            prev[jid] = float(at)
        return best

    def recovery(self, db: Db, subs: dict[int, Sub]) -> None:
        ids = [s.job_id for s in subs.values() if s.job_id]
        self.labels = {s.job_id: s.item.label for s in subs.values() if s.job_id}
        moves: dict[str, list[float]] = defaultdict(list)
        for jid, at in db.q("SELECT job_id::text, extract(epoch from at) FROM chaos_audit WHERE job_id = ANY(%s::uuid[]) "
                            "AND kind IN ('job', 'chunk_done') ORDER BY at", (ids,)):
            moves[jid].append(float(at))
        for f in self.faults:
            worst, who = 0.0, None
            for jid in f.in_flight:
                nxt = next((t for t in moves.get(jid, []) if t > f.t_wall), None)
                if nxt is None:
                    worst, who = float("inf"), jid
                    break
                if nxt - f.t_wall > worst:
                    worst, who = nxt - f.t_wall, jid
            f.recovery_s, f.recovery_job = (worst, who) if f.in_flight else (None, None)

    def fault_table(self) -> None:
        r = self.r
        cols = ["unsubmitted", *IN_FLIGHT, "COMPLETED", "FAILED"]
        short = {"unsubmitted": "unsub", "QUEUED": "QUEUED", "PREPARING": "PREPAR", "TRANSCRIBING": "TRANSC",
                 "FINALIZING": "FINAL", "COMPLETED": "COMPL", "FAILED": "FAILED"}
        r.add("")
        r.add("faults by kind: n injected, n that found a job in their target phase, and job states in the DB at")
        r.add("each injection (summed over that kind's injections); recovery = longest wait of a job in flight")
        r.add(f"  {'kind':16s} {'n':>3s} {'hit':>3s} " + " ".join(f"{short[c]:>6s}" for c in cols)
              + f" {'recovery':>9s}")
        by_kind: dict[str, list[Fault]] = defaultdict(list)
        for f in self.faults:
            by_kind[f.kind].append(f)
        for kind in FAULT_KINDS:
            fs = by_kind.get(kind, [])
            if not fs:
                r.add(f"  {kind:16s} {0:3d}")
                continue
            sums = Counter()
            for f in fs:
                sums.update(f.states)
            rec = [f.recovery_s for f in fs if f.recovery_s is not None]
            r.add(f"  {kind:16s} {len(fs):3d} {sum(f.found_target for f in fs):3d} "
                  + " ".join(f"{sums.get(c, 0):6d}" for c in cols)
                  + f" {_fmt_s(max(rec)) if rec else '-':>9s}")
        r.add("")
        r.add("fault log (t after the chaos run started, target phase, job states at injection, what happened)")
        for f in self.faults:
            st = " ".join(f"{short[c]}={f.states[c]}" for c in cols if f.states.get(c))
            rec = "" if f.recovery_s is None else \
                f"; recovery {_fmt_s(f.recovery_s)} ({self.labels.get(f.recovery_job, '?').split(' ')[0]})"
            r.add(f"  +{f.at:6.1f}s {f.kind:16s} {('@' + f.target) if f.target else '@any':14s} "
                  f"{'' if f.found_target else '(target not seen) '}[{st}] {f.note}{rec}")

    def checks(self, fleet: Fleet, db: Db, items: list[Item], base: dict, b_states: dict, b_tr: dict,
               subs: dict[int, Sub], states: dict, tr: dict, offsets: dict, watcher, b_gap: float) -> None:  # noqa: ANN001
        r = self.r
        r.add("")
        r.add("guarantees")
        good = [s for s in subs.values() if s.item.expect == "ok"]
        bad = [s for s in subs.values() if s.item.expect == "fail"]
        not_completed = [s for s in good if states.get(s.job_id) != "COMPLETED"]
        r.check("every good input COMPLETED", not not_completed,
                f"{len(good) - len(not_completed)}/{len(good)}" + "".join(
                    f"\n      {s.item.label}: {self._describe(s, states)}" for s in not_completed))
        errors = dict(db.q("SELECT id::text, coalesce(error, '') FROM jobs WHERE id = ANY(%s::uuid[])",
                           ([s.job_id for s in bad if s.job_id],))) if bad else {}
        bad_wrong = []
        for s in bad:
            if s.status == "refused":
                continue  # refused at the door with a 4xx and a reason: the best outcome
            if states.get(s.job_id) != "FAILED" or not errors.get(s.job_id):
                bad_wrong.append(s)
        r.check("every bad input FAILED with a stored reason (or refused with a 4xx)", not bad_wrong,
                f"{len(bad) - len(bad_wrong)}/{len(bad)}" + "".join(
                    f"\n      {s.item.label} ({s.item.note or s.item.name}): {self._describe(s, states)}"
                    for s in bad_wrong) + "".join(
                    f"\n      {s.item.label}: refused {s.http_status} {s.detail[:100]}" for s in bad
                    if s.status == "refused") + "".join(
                    f"\n      {s.item.label}: FAILED: {errors.get(s.job_id, '')[:110]}" for s in bad
                    if s not in bad_wrong and s.status != "refused"))
        # transcripts equal to the fault-free run
        diffs, compared, worst_dt, no_base = [], 0, 0.0, []
        for idx, doc in tr.items():
            ref = b_tr.get(idx)
            if ref is None:
                no_base.append(subs[idx].item.label)
                continue
            compared += 1
            why = _compare(doc, ref)
            if why[0]:
                diffs.append(f"{subs[idx].item.label} (job {subs[idx].job_id}): {why[0]}")
            worst_dt = max(worst_dt, why[1])
        r.check("every transcript identical to the fault-free run (texts; times within 0.5 s)",
                not diffs and not no_base and compared > 0,
                f"{compared - len(diffs)}/{compared} identical, largest time shift {worst_dt:.2f} s"
                + "".join(f"\n      {d}" for d in diffs)
                + (f"\n      no baseline transcript to compare (the baseline run did not complete them): "
                   f"{', '.join(no_base)}" if no_base else ""))
        # no chunk DONE twice
        ids = [s.job_id for s in subs.values() if s.job_id]
        rows = db.q("SELECT kind, chunk_id::text, job_id::text, count(*) FROM chaos_audit WHERE "
                    "job_id = ANY(%s::uuid[]) AND kind <> 'job' GROUP BY 1, 2, 3", (ids,))
        done_once = sum(1 for k, _, _, n in rows if k == "chunk_done" and n == 1)
        twice = [(c, j, n) for k, c, j, n in rows if k == "chunk_done" and n > 1]
        others = Counter(k for k, *_ in rows if k != "chunk_done")
        job_of = {s.job_id: s for s in subs.values() if s.job_id}
        r.check("no chunk DONE twice", not twice and not others.get("chunk_redone"),
                f"{done_once + len(twice)} chunks reached DONE, {len(twice)} of them more than once"
                + (f"; also {dict(others)}" if others else "")
                + "".join(f"\n      chunk {c} of {job_of[j].item.label} (job {j}): DONE {n} times"
                          for c, j, n in twice[:10]))
        # completed jobs: every current chunk DONE, as many as chunks_total
        bad_counts = db.q(
            "SELECT j.id::text, j.chunks_total, count(c.id) FILTER (WHERE c.state = 'DONE'), count(c.id) "
            "FROM jobs j LEFT JOIN chunks c ON c.job_id = j.id WHERE j.id = ANY(%s::uuid[]) AND j.state = 'COMPLETED' "
            "GROUP BY j.id, j.chunks_total HAVING count(c.id) FILTER (WHERE c.state = 'DONE') <> coalesce(j.chunks_total, 0) "
            "OR count(c.id) <> coalesce(j.chunks_total, 0)", (ids,))
        r.check("every COMPLETED job has exactly chunks_total chunks, all DONE", not bad_counts,
                "".join(f"\n      {job_of[j].item.label} (job {j}): total {t}, done {d}, rows {n}"
                        for j, t, d, n in bad_counts))
        left = db.q("SELECT state, count(*) FROM jobs WHERE state IN ('PREPARING', 'TRANSCRIBING', 'FINALIZING', "
                    "'QUEUED') GROUP BY state")
        r.check("nothing left QUEUED, PREPARING, TRANSCRIBING or FINALIZING (both runs)", not left,
                ", ".join(f"{n} {s}" for s, n in left))
        stuck = [s for s in subs.values() if s.job_id and states.get(s.job_id) not in TERMINAL]
        unsubmitted = [s for s in subs.values() if s.status in ("pending", "error")]
        r.check(f"every job finished before the deadline ({self.mode.deadline_s:.0f} s)",
                not stuck and not unsubmitted,
                "".join(f"\n      STUCK {s.item.label}: {self._describe(s, states)}" for s in stuck)
                + "".join(f"\n      NOT SUBMITTED {s.item.label}: {s.detail}" for s in unsubmitted))
        # good inputs refused at the door
        refused_good = [s for s in good if s.status == "refused"]
        r.check("no good input refused at submission", not refused_good,
                "".join(f"\n      {s.item.label}: {s.http_status} {s.detail[:160]}" for s in refused_good))
        self.publishes(fleet, db, subs, offsets, watcher)
        rec = [(f.recovery_s, f) for f in self.faults if f.recovery_s is not None]
        if rec:
            worst, f = max(rec, key=lambda x: x[0])
            r.add(f"  recovery: longest {_fmt_s(worst)} after {f.kind} at +{f.at:.1f} s (job {f.recovery_job}, "
                  f"{self.labels.get(f.recovery_job, '?')}); the "
                  f"fault-free run's longest progress gap of a job: {b_gap:.1f} s")
            r.metrics["longest_recovery_s"] = worst
        tenants = self._tenant_isolation(fleet, subs)
        r.add(f"  tenant isolation: {tenants}")
        for n in self.notes:
            r.add(f"  note: {n}")

    def _tenant_isolation(self, fleet: Fleet, subs: dict[int, Sub]) -> str:
        pairs = [(s.job_id, s.item.tenant) for s in subs.values() if s.job_id and s.item.batch is None][:10]
        seen = 0
        leaks = []
        for jid, tenant in pairs:
            other = next(t for t in TENANTS if t != tenant)
            with self.client(fleet, other) as c, contextlib.suppress(httpx.HTTPError):
                code = c.get(f"/v1/jobs/{jid}").status_code
                seen += 1
                if code != 404:
                    leaks.append(f"{jid} read by {other}: {code}")
        return f"{seen} jobs asked for with another tenant's key: " + (", ".join(leaks) if leaks else "all 404")

    def publishes(self, fleet: Fleet, db: Db, subs: dict[int, Sub], offsets: dict, watcher) -> None:  # noqa: ANN001
        r = self.r
        resent = reconcile_resends(list(offsets), offsets)
        inj = Counter()
        for c in self.injected.values():
            inj.update(c)
        lost = sum(sum(d.values()) for d in self.flush_lost)
        lost_distinct = sum(self.flush_targets)
        r.add(f"  duplicate publishes: reconciler re-sent {dict(resent) or 0} (from 'reconcile re-sent' in the "
              f"cpu and beat logs); injected {dict(inj) or 0}; messages really lost at Redis flushes {lost} "
              f"({lost_distinct} distinct jobs/chunks) "
              f"(queues + unacked just before FLUSHALL; Redis restarts lose an unknown number more)")
        r.metrics.update(resent=sum(resent.values()), injected=sum(inj.values()))
        if watcher is None:
            r.add("    per job: unavailable (no task-sent events)")
            return
        ids = {s.job_id: s for s in subs.values() if s.job_id}
        chunk_job = dict(db.q("SELECT id::text, job_id::text FROM chunks WHERE job_id = ANY(%s::uuid[]) UNION "
                              "SELECT chunk_id::text, job_id::text FROM chaos_audit WHERE chunk_id IS NOT NULL "
                              "AND job_id = ANY(%s::uuid[])", (list(ids), list(ids))))
        per_target: Counter = Counter()
        for _, task, arg, _sender in watcher.events:
            per_target[(task, arg)] += 1
        per_job: dict[str, Counter] = defaultdict(Counter)
        for (task, arg), n in per_target.items():
            jid = arg if arg in ids else chunk_job.get(arg)
            if jid in ids and n > 1:
                per_job[jid][task.split(".")[-1]] += n - 1
        total = sum(sum(c.values()) for c in per_job.values())
        r.add(f"    per job (task-sent events: publishes beyond the first of each job's prepare/finalize and of "
              f"each chunk; injected ones included): {total} in all, {len(per_job)}/{len(ids)} jobs had any")
        top = sorted(per_job.items(), key=lambda kv: -sum(kv[1].values()))
        for jid, c in top[: 8 if self.mode is QUICK else 15]:
            inj_j = self.injected.get(jid, Counter())
            r.add(f"      {ids[jid].item.label:52s} {dict(c)}" + (f"  (injected {dict(inj_j)})" if inj_j else ""))
        r.metrics["dup_publishes_observed"] = total

    def _describe(self, s: Sub, states: dict) -> str:
        if not s.job_id:
            return f"{s.status} {s.http_status or ''} {s.detail[:160]}"
        db = self._db
        row = db.q("SELECT state, coalesce(error, ''), prepare_attempts, chunks_total, chunks_done, "
                   "extract(epoch from now() - updated_at) FROM jobs WHERE id = %s", (s.job_id,))
        if not row:
            return f"job {s.job_id} not in the database"
        state, err, pa, ct, cd, age = row[0]
        then = states.get(s.job_id)
        if then and then != state:
            state = f"{then} at the deadline, {state} now"
        chunks = dict(db.q("SELECT state, count(*) FROM chunks WHERE job_id = %s GROUP BY state", (s.job_id,)))
        hist = db.q("SELECT coalesce(new_state, ''), extract(epoch from at) FROM chaos_audit WHERE job_id = %s AND "
                    "kind = 'job' ORDER BY at", (s.job_id,))
        t0 = float(hist[0][1]) if hist else 0.0
        path = " ".join(f"{st}@{float(t) - t0:.1f}" for st, t in hist[-10:])
        if len(hist) > 10:
            path = f"{len(hist)} transitions, the last 10: ... {path}"
        return (f"job {s.job_id} {state} (prepare_attempts {pa}, chunks {cd}/{ct} {dict(chunks)}, "
                f"updated {float(age):.0f} s ago) path [{path}]" + (f" error: {err[:200]}" if err else ""))

    @functools.lru_cache(maxsize=1)  # noqa: B019 - one campaign, one schema
    def _job_columns(self, db: Db) -> frozenset:
        return frozenset(c for (c,) in db.q("SELECT column_name FROM information_schema.columns WHERE "
                                           "table_name = 'jobs'"))

    def diagnose(self, fleet: Fleet, db: Db, subs: dict, states: dict, b_states: dict, base: dict) -> None:
        r = self.r
        r.add("")
        r.add(f"diagnosis (logs in {fleet.stack.tmp / 'logs'})")
        wrong = [s for s in subs.values() if s.job_id and (
            states.get(s.job_id) not in TERMINAL or (s.item.expect == "ok" and states.get(s.job_id) != "COMPLETED"))]
        wrong += [s for s in base.values() if s.job_id and s.item.expect == "ok"
                  and b_states.get(s.job_id) != "COMPLETED"]
        try:
            where = broker_messages(self.redis.port)
        except Exception as e:  # noqa: BLE001
            where = {}
            r.add(f"  (broker unreadable: {type(e).__name__})")
        for s in wrong[:12]:
            r.add(f"  {s.item.label} job {s.job_id}:")
            chunk_ids = [c for (c,) in db.q("SELECT id::text FROM chunks WHERE job_id = %s", (s.job_id,))]
            found = [f"job: {w}" for w in where.get(s.job_id, [])] + [
                f"chunk {c[:8]}: {w}" for c in chunk_ids for w in where.get(c, [])]
            lease_txt = ""
            if "lease_until" in self._job_columns(db):
                lease = db.q("SELECT lease_until IS NULL, extract(epoch from lease_until - now()) FROM jobs "
                             "WHERE id = %s", (s.job_id,))
                lease_txt = " job lease: none" if lease[0][0] else f" job lease: {float(lease[0][1]):+.0f} s"
            r.add(f"    in Redis: {'; '.join(found) if found else 'no message for it or its chunks'};{lease_txt}")
            hits = []
            for n in PROCESS_KINDS:
                with contextlib.suppress(OSError):
                    for line in fleet.proc(n).log.read_text(errors="replace").splitlines():
                        if s.job_id in line:
                            hits.append(f"[{n}] {line[:220]}")
            for h in hits[-8:]:
                r.add(f"    {h}")
        for n in PROCESS_KINDS:
            r.add(f"  --- last lines of {n} ({fleet.proc(n).log}) ---")
            for line in fleet.proc(n).tail(25).splitlines():
                r.add(f"    {line[:240]}")

    # -- the backlog --
    def backlog(self) -> None:
        r, mode = self.r, self.mode
        from tests.tiny_paraformer import build_tiny_paraformer

        n = mode.backlog_jobs
        db_url = create_database(self.pg, "backlog")
        self.redis.flush()
        env = self.env_for(db_url, "backlog", {"ASRQ_RECONCILE_STALE_S": str(mode.backlog_stale_s),
                                               "ASRQ_RECONCILE_INTERVAL_S": str(mode.backlog_interval_s)})
        build_tiny_paraformer(Path(env["ASRQ_MODELS_DIR"]) / "tiny-paraformer")
        clip = self.inputs / "backlog-clip.wav"
        shutil.copyfile(AUDIO / "en_sr_one_two_three.wav", clip)
        uri = self.sources.url("http", clip.name)
        fleet = self.start_fleet(env, "backlog", cpu_concurrency=1)
        self._db = db = Db(db_url)
        logs = [fleet.proc("cpu").log, fleet.proc("beat").log]
        offsets = {p: p.stat().st_size for p in logs}
        opts = {"engine": "funasr", "model": "tiny-paraformer"}
        t0 = time.time()
        with self.client(fleet, "acme") as c:
            resp = c.post("/v1/jobs/batch", json={"jobs": [{"source_uri": uri, **opts} for _ in range(n)]},
                          timeout=300)
        if resp.status_code != 202:
            r.check("backlog: the batch is accepted", False, f"{resp.status_code} {resp.text[:300]}")
            return
        ids = resp.json()["job_ids"]
        t_sub = time.time() - t0
        # flush Redis half-way through the drain
        lost, t_flush, at_flush, targets = {}, None, {}, set()
        deadline = t0 + mode.backlog_deadline_s
        st: dict = {}
        while time.time() < deadline:
            st = Counter(self.states(db, ids).values())
            if t_flush is None and st["COMPLETED"] + st["FAILED"] >= n // 2:
                at_flush = {p: p.stat().st_size for p in logs}
                lost = queue_depths(self.redis.port)
                targets = lost_targets(self.redis.port)
                self.redis.flush()
                t_flush = time.time() - t0
                flush_states = dict(st)
            if st["COMPLETED"] + st["FAILED"] + st["CANCELLED"] >= n:
                break
            time.sleep(0.5)
        drain = time.time() - t0
        resent = reconcile_resends(logs, offsets)
        before = reconcile_resends(logs, offsets, at_flush) if at_flush else resent
        n_lost = sum(lost.values())
        n_targets = len(targets) if t_flush is not None else 0
        dups = sum(resent.values()) - n_lost
        # each lost job/chunk needs one re-send, however many copies of its message were lost with it
        strict = max(0, sum(resent.values()) - n_targets)
        r.add(f"backlog: {n} jobs (engine=funasr tiny random Paraformer, a 2.7 s clip over http) in one POST "
              f"/v1/jobs/batch ({t_sub:.1f} s), one CPU worker (concurrency 1), reconcile_stale_s "
              f"{mode.backlog_stale_s:g}, interval {mode.backlog_interval_s:g} s")
        r.add(f"  drained in {drain:.0f} s: {dict(st)}")
        if t_flush is not None:
            r.add(f"  Redis FLUSHALL at +{t_flush:.0f} s (states then {flush_states}): lost {n_lost} messages "
                  f"({', '.join(f'{k}={v}' for k, v in lost.items() if v) or 'none'})")
        r.add(f"  reconciler re-sent {dict(resent) or 0} ({sum(before.values())} before the flush, "
              f"{sum(resent.values()) - sum(before.values())} after); duplicates = re-sent - lost = {dups} "
              f"= {100 * dups / n:.1f} % of jobs (target < 1 %)")
        r.add(f"  the lost messages carried {n_targets} distinct jobs/chunks; duplicates = re-sent - distinct lost = "
              f"{strict} = {100 * strict / n:.1f} % of jobs")
        r.metrics.update(backlog_jobs=n, backlog_resent=sum(resent.values()), backlog_lost=n_lost,
                         backlog_dups=dups, backlog_dups_strict=strict, backlog_s=drain)
        not_done = n - st.get("COMPLETED", 0)
        r.check("backlog: every job COMPLETED (the flush lost nothing)", not_done == 0,
                f"{st.get('COMPLETED', 0)}/{n}" + (f"; others {dict(st)}" if not_done else ""))
        ok_dups = strict < 0.01 * n
        r.check("backlog: duplicate publishes under 1 % of jobs", ok_dups,
                f"{strict} for {n} jobs (re-sent - distinct lost; re-sent - lost messages: {dups})")
        if not_done or not ok_dups:
            for name in PROCESS_KINDS:
                r.add(f"  --- last lines of {name} ---")
                for line in fleet.proc(name).tail(12).splitlines():
                    r.add(f"    {line[:240]}")
        fleet.close()
        db.close()


class _LiveSubs(dict):
    """The submissions of the chaos run as the submitter thread makes them (it fills ``box['subs']`` only
    at the end, so the scheduler reads the ids the database already has by idempotency key)."""

    def __init__(self, camp: Campaign, box: dict, cache: dict) -> None:
        super().__init__()
        self.camp, self.box, self.cache = camp, box, cache

    def values(self):  # noqa: ANN201
        if "subs" in self.box:
            return self.box["subs"].values()
        db = self.camp._db
        prefix = f"chaos-{self.camp.seed}-chaos-"
        with contextlib.suppress(Exception):
            for key, jid in db.q("SELECT idempotency_key, id::text FROM jobs WHERE idempotency_key LIKE %s",
                                 (prefix + "%",)):
                idx = int(key[len(prefix):])
                self.cache[idx] = Sub(self.camp._items[idx], jid, "accepted")
        out = dict(self.cache)
        for it in self.camp._items:
            out.setdefault(it.idx, Sub(it))
        return out.values()


def _compare(doc: dict, ref: dict) -> tuple[str, float]:
    """('' when equal, else what differs; the largest time shift)."""
    a, b = doc.get("segments", []), ref.get("segments", [])
    shift = max([abs(x["start"] - y["start"]) for x, y in zip(a, b)] +
                [abs(x["end"] - y["end"]) for x, y in zip(a, b)] + [0.0])
    if doc.get("text") != ref.get("text"):
        return f"text differs:\n        got  {doc.get('text', '')[:160]!r}\n        want {ref.get('text', '')[:160]!r}", shift
    if [s["text"] for s in a] != [s["text"] for s in b]:
        return f"segments differ ({len(a)} vs {len(b)} segments)", shift
    if shift > TIME_TOLERANCE_S:
        return f"a segment time moved {shift:.2f} s", shift
    return "", shift


def _fmt_s(v: float) -> str:
    return "never" if v == float("inf") else f"{v:.1f} s"


def _tree() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                               text=True).stdout.strip()
        return (head + (" + uncommitted changes" if dirty else "")) if head else "not a git checkout"
    except OSError:
        return "?"


def run_campaign(seed: int, quick: bool = True, part: str = "all", workdir: Path | None = None,
                 report: Report | None = None) -> Report:
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)  # funasr's import turns INFO logging on
    mode = QUICK if quick else FULL
    r = report or Report()
    own = workdir is None
    work = Path(tempfile.mkdtemp(prefix=f"asrq-chaos-{seed}-")) if own else workdir
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    r.add(f"asrq chaos soak: seed {seed}, {mode.name} mode, part {part}, tree {_tree()}, work folder {work}")
    camp = Campaign(seed, mode, work, r)
    try:
        camp.up()
        if part in ("soak", "all"):
            t = time.time()
            camp.soak()
            r.add(f"soak wall time {time.time() - t:.0f} s")
            r.metrics["soak_wall_s"] = time.time() - t
        if part in ("backlog", "all"):
            t = time.time()
            r.add("")
            camp.backlog()
            r.metrics["backlog_wall_s"] = time.time() - t
    except Exception as e:  # noqa: BLE001 - a harness failure is a failed campaign, with its reason
        import traceback

        r.check("the campaign ran to the end", False, f"{type(e).__name__}: {e}\n{traceback.format_exc()[-3000:]}")
    finally:
        camp.down()
    r.add("")
    r.add(f"result: {'PASS' if r.ok else 'FAIL'} ({len(r.checks) - len(r.failed())}/{len(r.checks)} checks)"
          f"{'; failed: ' + '; '.join(r.failed()) if r.failed() else ''}; wall {time.time() - t0:.0f} s")
    r.metrics["wall_s"] = time.time() - t0
    if own and r.ok:
        shutil.rmtree(work, ignore_errors=True)
    return r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="~30 jobs and 300 backlog jobs (CI)")
    ap.add_argument("--part", choices=["soak", "backlog", "all"], default="all")
    ap.add_argument("--workdir", type=Path, default=None, help="kept afterwards (default: a temp folder, removed "
                                                               "when the campaign passes)")
    a = ap.parse_args(argv)

    def _terminate(_sig, _frame):  # noqa: ANN001, ANN202 - a CI timeout: clean up like Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    r = run_campaign(a.seed, a.quick, a.part, a.workdir)
    return 0 if r.ok else 1


if __name__ == "__main__":
    sys.exit(main())
