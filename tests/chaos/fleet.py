"""The asrq processes of a campaign, each its own process so that each can be killed on its own: how to
start, signal, kill (the whole tree, or one child as an OOM kill would) and restart them."""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import subprocess
import threading
from collections import Counter

from tests.services import Stack, api_argv, cpu_worker_argv, transcribe_worker_argv, wait_until

PROCESS_KINDS = ("api", "cpu", "gpu", "beat")


class Fleet:
    """API, CPU worker (prepare, finalize, maintenance), transcribe worker, and beat in its own process
    (deploy/k8s/cpu-worker.yaml: ``asrq worker --queues maintenance --concurrency 1 --beat``), so each can
    be killed on its own."""

    def __init__(self, stack: Stack, cpu_concurrency: int, kinds: tuple[str, ...] = PROCESS_KINDS,
                 env_of: dict[str, dict] | None = None) -> None:
        self.stack = stack
        self.cpu_concurrency = cpu_concurrency
        self.kinds = kinds  # PROCESS_KINDS, and "gpu2" for a second transcribe worker
        self.env_of = env_of or {}  # a process's own settings on top of the stack's
        self.api_port = int(stack.api_url.rsplit(":", 1)[1])
        self.locks = {n: threading.Lock() for n in kinds}
        self.restarts: Counter = Counter()
        self.notes: list[str] = []
        self.closed = False

    def argv(self, name: str) -> list[str]:
        return {
            "api": api_argv(self.api_port),
            "cpu": cpu_worker_argv(self.cpu_concurrency, beat=False),
            "gpu": transcribe_worker_argv(),
            "gpu2": transcribe_worker_argv(),
            "beat": cpu_worker_argv(1, beat=True, queues="maintenance,reconcile,webhook"),
        }[name]

    def start(self, name: str) -> None:
        if not self.closed:  # a restart due after the campaign ended must not leave a process behind
            self.stack.start(name, self.argv(name), self.env_of.get(name))

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
                self.stack.wait_api(timeout_s)
            else:
                # a CPU launcher starts a pool per kind of work (workers/launcher.py): wait for the main one
                pattern = rb"cpu@\S+ ready\." if n in ("cpu", "beat") else rb" ready\."

                def ready(p=p, off=since.get(n, 0), pattern=pattern) -> bool:  # noqa: ANN001
                    if not p.alive():
                        raise RuntimeError(f"{p.name} exited\n{p.tail()}")
                    with open(p.log, "rb") as f:
                        f.seek(off)
                        return re.search(pattern, f.read()) is not None
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
        for n in self.kinds:
            with self.locks[n]:
                if not self.proc(n).alive():
                    self.start(n)
                    started.append(n)
        return started
