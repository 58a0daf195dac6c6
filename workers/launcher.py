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
from app.constants import ALL_QUEUES, QUEUE_TRANSCRIBE
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
    """The one worker of ``asrq transcribe``: every queue, one process (solo pool), on the embedded broker."""
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
        names = [q.strip() for q in (args.queues or "").split(",") if q.strip()]
        warm = {"ASRQ_WARM_VAD": "1"} if "prepare" in names else {}
        specs = [WorkerSpec(f"cpu@{os.uname().nodename}", names, warm,
                            concurrency=args.concurrency or os.cpu_count() or 1, beat=args.beat)]
    if args.metrics_port is not None:
        serve_metrics(specs, settings, args.metrics_port, args.metrics_host)
    return supervise(specs, settings)


if __name__ == "__main__":
    sys.exit(main())
