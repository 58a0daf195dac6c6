"""Worker processes: CPU workers, and one transcribe process per GPU, each pinned with CUDA_VISIBLE_DEVICES.

The launcher never touches CUDA itself (it only reads the card list from nvidia-smi), so no CUDA
context is ever inherited across a fork. It restarts a worker that dies, and passes SIGTERM on for a
warm shutdown (the current batch finishes; unacked messages go back to the queue).

It is a program of its own, ``python -m workers.launcher``, which ``asrq worker`` runs (the command line
lives in app/, which never imports workers/); ``--embedded`` is the one worker ``asrq transcribe`` starts.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from app.catalog.plugins import check_engine_setting
from app.constants import (
    ALL_QUEUES,
    CPU_QUEUES,
    QUEUE_MAINTENANCE,
    QUEUE_PREPARE,
    QUEUE_RECONCILE,
    QUEUE_TRANSCRIBE,
    QUEUE_WEBHOOK,
)
from app.settings import Settings, get_settings

log = logging.getLogger("asrq.launcher")


@dataclass
class WorkerSpec:
    name: str
    queues: list[str]
    env: dict[str, str]
    concurrency: int = 1
    pool: str = "prefork"
    prefetch: int = 1
    beat: bool = False

    def argv(self, settings: Settings) -> list[str]:
        args = [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker",
                "-Q", ",".join(self.queues), "-n", self.name, "-P", self.pool, "-c", str(self.concurrency),
                "--prefetch-multiplier", str(self.prefetch), "-l", "INFO"]
        if settings.embedded:
            args += ["--without-mingle", "--without-gossip", "--without-heartbeat"]
        else:
            args += ["-E"]
        if self.beat:
            settings.home.mkdir(parents=True, exist_ok=True)  # beat keeps its schedule file there
            args += ["--beat", "-s", str(settings.home / "celerybeat-schedule")]
        return args


def list_gpus(spec: str) -> list[str]:
    if spec == "cpu":
        return []
    if spec != "all":
        return [g.strip() for g in spec.split(",") if g.strip()]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        return [g.strip() for g in visible.split(",") if g.strip()]
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise SystemExit(f"--gpus all: cannot list GPUs with nvidia-smi ({type(e).__name__}); name them or use cpu")
    return [line.strip() for line in out.splitlines() if line.strip()]


def transcribe_specs(gpus: str, settings: Settings) -> list[WorkerSpec]:
    host = socket.gethostname()
    base = {"ASRQ_WARM_ENGINE": "1"}
    cards = list_gpus(gpus)
    if not cards:
        return [WorkerSpec(f"cpu0@{host}", [QUEUE_TRANSCRIBE], {**base, "ASRQ_DEVICE": "cpu"}, pool="solo",
                           prefetch=settings.batch_max_requests)]
    return [
        WorkerSpec(f"gpu{c}@{host}", [QUEUE_TRANSCRIBE],
                   {**base, "CUDA_VISIBLE_DEVICES": c, "ASRQ_DEVICE": "cuda"}, pool="solo",
                   prefetch=settings.batch_max_requests)
        for c in cards
    ]


def upgraded_queues(names: list[str]) -> list[str]:
    """The queues a command line means. ``maintenance`` once carried the reconciler and the webhook
    deliveries too; a unit written then (``--queues prepare,finalize,maintenance``) names neither
    ``reconcile`` nor ``webhook``, and taken literally it would leave both unconsumed: no lost message
    re-sent, no webhook delivered, and nothing failing. Such a list still gets what it had: both queues
    are added, with a warning that says what to write. A list that names either is read as written."""
    if QUEUE_MAINTENANCE not in names or QUEUE_RECONCILE in names or QUEUE_WEBHOOK in names:
        return names
    out = names + [QUEUE_RECONCILE, QUEUE_WEBHOOK]
    log.warning("--queues %s is a list from before the reconciler and the webhook deliveries left %r for queues "
                "of their own: consuming %r and %r here too, as %r did then. Write --queues %s to say so (or "
                "name each queue where it should run) and this warning goes", ",".join(names),
                QUEUE_MAINTENANCE, QUEUE_RECONCILE, QUEUE_WEBHOOK, QUEUE_MAINTENANCE, ",".join(out))
    return out


def warn_unconsumed(names: list[str], settings: Settings) -> list[str]:
    """At start: the CPU queues that neither this launcher nor any live worker consumes (each needs one
    somewhere, or its messages wait for good), each named in a warning; asrq_queue_consumers shows it after."""
    from app.consumers import consumer_counts

    try:
        live = consumer_counts(settings)
    except Exception as e:  # noqa: BLE001 - the broker is not up yet: the workers will retry, and say so
        log.warning("could not read who consumes the queues (%s)", type(e).__name__)
        return []
    missing = [q for q in CPU_QUEUES if q not in names and live and not live.get(q)]
    for q in missing:
        log.warning("no worker consumes the %r queue (none heard from in the last %.0f s): its messages wait "
                    "until one does; run `asrq worker --queues %s` somewhere", q, 3 * settings.consumer_beat_s, q)
    return missing


def cpu_specs(names: list[str], concurrency: int | None, beat: bool, settings: Settings) -> list[WorkerSpec]:
    """The CPU queues asked for, in pools of their own: the reconciler and the webhook POSTs never share a
    pool (or a queue) with prepare and finalize, so a receiver that never answers holds webhook threads
    only, and a reconcile pass never waits behind a prepare or thousands of webhook tries."""
    host = os.uname().nodename
    work = [q for q in names if q not in (QUEUE_RECONCILE, QUEUE_WEBHOOK)]
    specs = []
    if work:
        warm = {"ASRQ_WARM_VAD": "1"} if QUEUE_PREPARE in work else {}
        specs.append(WorkerSpec(f"cpu@{host}", work, warm, concurrency=concurrency or os.cpu_count() or 1))
    if QUEUE_RECONCILE in names:
        # one process: passes never overlap; prefork, so the pass's time limit is enforced
        specs.append(WorkerSpec(f"reconcile@{host}", [QUEUE_RECONCILE], {}, concurrency=1))
    if QUEUE_WEBHOOK in names:
        # threads: each try waits on the network (bounded by ASRQ_WEBHOOK_TIMEOUT_S), so many wait side by side
        specs.append(WorkerSpec(f"webhook@{host}", [QUEUE_WEBHOOK], {}, pool="threads",
                                concurrency=settings.webhook_concurrency))
    if beat and specs:
        # with the reconciler when it runs here: the schedule lives in the smallest, steadiest process
        next((sp for sp in specs if sp.queues == [QUEUE_RECONCILE]), specs[0]).beat = True
        if QUEUE_RECONCILE not in names:
            log.warning("--beat without the %r queue: run a worker with it somewhere, or no lost message is "
                        "ever re-sent", QUEUE_RECONCILE)
    return specs


def supervise(specs: list[WorkerSpec], settings: Settings) -> int:
    procs: dict[str, subprocess.Popen] = {}
    stopping = False
    restarts: dict[str, list[float]] = {s.name: [] for s in specs}

    def start(spec: WorkerSpec) -> None:
        env = {**os.environ, **spec.env}
        procs[spec.name] = subprocess.Popen(spec.argv(settings), env=env)
        log.info("started worker %s pid=%d", spec.name, procs[spec.name].pid)

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for spec in specs:
        start(spec)
    while True:
        alive = False
        for spec in specs:
            p = procs[spec.name]
            rc = p.poll()
            if rc is None:
                alive = True
            elif not stopping:
                recent = [t for t in restarts[spec.name] if t > time.monotonic() - 300]
                restarts[spec.name] = recent + [time.monotonic()]
                delay = min(60.0, 2.0 ** len(recent))
                log.warning("worker %s exited rc=%s; restarting in %.0f s", spec.name, rc, delay)
                time.sleep(delay)
                start(spec)
                alive = True
        if not alive:
            return 0
        time.sleep(0.5)


def serve_metrics(specs: list[WorkerSpec], settings: Settings, port: int, host: str) -> None:
    """/metrics for every worker process this launcher starts: they write their metrics to files in one
    folder (prefork children included, each its own file), emptied now so a restart counts from zero, and
    a thread of the launcher serves the sum, with the cards' NVML readings where there are cards."""
    from app.metrics import MULTIPROC_ENV, prepare_multiproc_dir, serve_worker_metrics

    folder = prepare_multiproc_dir(settings.home / f"prometheus-worker-{port}")
    for spec in specs:
        spec.env[MULTIPROC_ENV] = str(folder)
    serve_worker_metrics(port, host, folder, socket.gethostname())


def embedded_spec(settings: Settings) -> WorkerSpec:
    """The one worker of ``asrq transcribe``: every queue, one process (solo pool), on the embedded broker.
    One pool is enough there: the one-shot runs no beat (no reconcile pass, no sweep) and its jobs have no
    webhooks, so nothing but its own jobs' work ever reaches these queues."""
    return WorkerSpec(f"local-{os.getppid()}@localhost", list(ALL_QUEUES), {"ASRQ_WARM_ENGINE": "0"}, pool="solo",
                      prefetch=settings.batch_max_requests)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m workers.launcher", description="asrq worker processes "
                                 "(what `asrq worker` runs; see `asrq worker --help`)")
    ap.add_argument("--queues", default=None, help="comma-separated CPU queues")
    ap.add_argument("--gpus", default=None, help="all | 0,1,... | cpu: one transcribe process per card")
    ap.add_argument("--concurrency", type=int, default=None)
    ap.add_argument("--beat", action="store_true")
    ap.add_argument("--metrics-port", type=int, default=None)
    ap.add_argument("--metrics-host", default="127.0.0.1")
    ap.add_argument("--embedded", action="store_true", help="one solo worker on every queue, no supervisor")
    args = ap.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)
    settings = get_settings()
    check_engine_setting(settings)
    if args.embedded:
        spec = embedded_spec(settings)
        # this process becomes the worker: whoever started it holds the worker's own pid
        os.execve(sys.executable, spec.argv(settings), {**os.environ, **spec.env})
    if args.gpus is not None:
        specs = transcribe_specs(args.gpus, settings)
    else:
        names = upgraded_queues([q.strip() for q in (args.queues or "").split(",") if q.strip()])
        specs = cpu_specs(names, args.concurrency, args.beat, settings)
        if not specs:
            raise SystemExit("no queues to consume: name some with --queues")
        log.info("consuming %s here", ", ".join(names))
        warn_unconsumed(names, settings)
    if args.metrics_port is not None:
        serve_metrics(specs, settings, args.metrics_port, args.metrics_host)
    return supervise(specs, settings)


if __name__ == "__main__":
    sys.exit(main())
