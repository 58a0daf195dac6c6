"""The worker ``asrq transcribe`` runs for itself: started first thing (light imports only, so that its own
start-up overlaps everything the command does before its first message), stopped when the run ends."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from app.settings import Settings


def worker_log(settings: Settings) -> Path:
    return settings.home / "logs" / "worker.log"


def start_local_worker(log_file: Path) -> subprocess.Popen:
    """A real Celery worker on every queue, on whatever broker the settings name (embedded: no server)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "workers.launcher", "--embedded"], stdout=out,
                                stderr=subprocess.STDOUT)


def stop_worker(worker: subprocess.Popen, idle: bool) -> None:
    """Stop the local worker. ``idle``: every job of this run has finished, so the worker holds no work of
    it (a finished job's audio is gone and its state stored before it is finished, and this run sent no other
    message): it is stopped at once, where a warm shutdown costs seconds (a 2 s broker poll, then the
    interpreter's teardown) for nothing. Otherwise it gets a warm shutdown, as any worker would."""
    if worker.poll() is not None:
        return
    if idle:
        worker.kill()
    else:
        worker.terminate()
        try:
            worker.wait(30)
            return
        except subprocess.TimeoutExpired:
            worker.kill()
    worker.wait()
