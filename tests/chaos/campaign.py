"""A campaign: the services it owns (moto S3 behind a TCP relay it can cut, a private Postgres cluster and
Redis server it can restart, the source servers), the environment and fleet of each part, and
``run_campaign``, which runs the parts and prints the result line."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import tempfile
import time
import traceback
from pathlib import Path

import httpx

from tests.chaos.backlog import run_backlog
from tests.chaos.fleet import PROCESS_KINDS, Fleet
from tests.chaos.modes import FULL, QUICK, Mode
from tests.chaos.report import Report, tree
from tests.chaos.soak import Soak
from tests.chaos.submission import api_client
from tests.chaos.timing import run_timing
from tests.chaos.workload import (
    SOURCE_BUCKET,
    TENANTS,
    Blackhole,
    SourceServer,
    s3_source_setting,
    tls_trust_setting,
)
from tests.fault_services import PrivatePostgres, PrivateRedis, TcpRelay
from tests.services import Stack, apply_env, base_env, free_port, moto_s3, restore_env, s3_client

STORAGE_BUCKET = "asrq-chaos"


class Campaign:
    """The services one campaign owns, and how each part gets a database, an environment and a fleet on them."""

    def __init__(self, seed: int, mode: Mode, workdir: Path, report: Report) -> None:
        self.seed, self.mode, self.work, self.r = seed, mode, workdir, report
        self.keys = {t: f"{t}-{secrets.token_urlsafe(12)}" for t in TENANTS}
        self._stack_ctx = contextlib.ExitStack()

    def up(self) -> None:
        es = self._stack_ctx
        saved_env = dict(os.environ)
        es.callback(restore_env, saved_env)
        (self.work / "logs").mkdir(parents=True, exist_ok=True)
        endpoint, _moto = es.enter_context(moto_s3(STORAGE_BUCKET, self.work / "logs"))
        self.s3 = s3_client(endpoint)
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
        self.blackhole = Blackhole()
        es.callback(self.blackhole.close)

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

    def start_fleet(self, env: dict, name: str, cpu_concurrency: int, kinds: tuple[str, ...] = PROCESS_KINDS,
                    env_of: dict[str, dict] | None = None) -> Fleet:
        apply_env(env)
        stack = Stack(env=env, tmp=self.work / name, api_url=f"http://127.0.0.1:{free_port()}",
                      api_key=self.keys["acme"])
        fleet = Fleet(stack, cpu_concurrency, kinds, env_of)
        self._stack_ctx.callback(fleet.close)  # whatever happens, no process outlives the campaign
        for n in kinds:
            fleet.start(n)
        fleet.wait_ready(kinds, 180)
        return fleet

    def client(self, fleet: Fleet, tenant: str) -> httpx.Client:
        return api_client(fleet.stack.api_url, self.keys[tenant])


def run_campaign(seed: int, quick: bool = True, part: str = "all", workdir: Path | None = None,
                 report: Report | None = None) -> Report:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # funasr's import turns INFO logging on
    mode = QUICK if quick else FULL
    r = report or Report()
    own = workdir is None
    work = Path(tempfile.mkdtemp(prefix=f"asrq-chaos-{seed}-")) if own else workdir
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    r.add(f"asrq chaos soak: seed {seed}, {mode.name} mode, part {part}, tree {tree()}, work folder {work}")
    camp = Campaign(seed, mode, work, r)
    try:
        camp.up()
        if part in ("soak", "all"):
            t = time.time()
            Soak(camp).run()
            r.add(f"soak wall time {time.time() - t:.0f} s")
            r.metrics["soak_wall_s"] = time.time() - t
        if part in ("timing", "all"):
            t = time.time()
            r.add("")
            run_timing(camp)
            r.metrics["timing_wall_s"] = time.time() - t
        if part in ("backlog", "all"):
            t = time.time()
            r.add("")
            run_backlog(camp)
            r.metrics["backlog_wall_s"] = time.time() - t
    except Exception as e:  # noqa: BLE001 - a harness failure is a failed campaign, with its reason
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
