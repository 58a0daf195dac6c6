"""Measuring tools shared by the sections: process-tree memory/CPU sampling, child runs, WER, machine info."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


def child_env() -> dict:
    """The environment every measured process gets: the stack's (one OpenMP thread, no ASRQ_ overrides),
    so the three sections run the engine under the same threading."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASRQ_")}
    env.update({"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    return env


class TreeSampler(threading.Thread):
    """Samples the resident memory of named process trees every ``interval_s``.

    Peak of the sum is taken over simultaneous samples (what the machine had to hold at once); CPU
    seconds are summed per process from the last sample each was seen in.
    """

    def __init__(self, roots: dict[str, int], interval_s: float = 0.2, total_of: set[str] | None = None) -> None:
        super().__init__(daemon=True)
        self.roots = roots
        self.total_of = set(roots) if total_of is None else total_of  # trees counted in the peak total
        self.interval_s = interval_s
        self.peak_total = 0
        self.peak: dict[str, int] = {n: 0 for n in roots}
        self._cpu: dict[int, tuple[str, float]] = {}
        self._cpu0: dict[int, float] = {}  # CPU a process had already used when first seen at the start
        self._first = True
        self._halt = threading.Event()
        self._sys0 = psutil.cpu_times()
        self._t0 = time.monotonic()
        self.sample()  # the baseline, taken now rather than when the thread first runs

    def _tree(self, pid: int) -> list[psutil.Process]:
        try:
            p = psutil.Process(pid)
            return [p, *p.children(recursive=True)]
        except psutil.Error:
            return []

    def sample(self) -> None:
        total = 0
        for name, pid in self.roots.items():
            rss = 0
            for p in self._tree(pid):
                try:
                    with p.oneshot():
                        rss += p.memory_info().rss
                        c = p.cpu_times()
                        self._cpu[p.pid] = (name, c.user + c.system)
                        if self._first:
                            self._cpu0[p.pid] = c.user + c.system
                except psutil.Error:
                    pass
            self.peak[name] = max(self.peak[name], rss)
            total += rss if name in self.total_of else 0
        self.peak_total = max(self.peak_total, total)
        self._first = False

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval_s)

    def stop(self) -> dict:
        self.sample()
        self._halt.set()
        self.join(5)
        wall = time.monotonic() - self._t0
        sys1 = psutil.cpu_times()
        busy = _busy(sys1) - _busy(self._sys0)
        own: dict[str, float] = {n: 0.0 for n in self.roots}
        for pid, (name, cpu) in self._cpu.items():
            own[name] += cpu - self._cpu0.get(pid, 0.0)
        return {
            "peak_rss_total": self.peak_total,
            "peak_rss": dict(self.peak),
            "cpu_s": {n: round(v, 1) for n, v in own.items()},
            "wall_s": round(wall, 2),
            # cores kept busy by everything on the machine vs by our trees: the rest is other load
            # (Postgres, Redis, and anything else running on this machine at the time)
            "machine_busy_cores": round(busy / wall, 2) if wall else 0.0,
            "own_cores": round(sum(own.values()) / wall, 2) if wall else 0.0,
        }


def _busy(t) -> float:  # noqa: ANN001
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def run_child(module: str, payload: dict, timeout_s: float = 7200.0) -> dict:
    """Run ``python -m module IN OUT`` with the shared environment, sampling its process tree."""
    with tempfile.TemporaryDirectory(prefix="asrq-bench-") as tmp:
        inp, out = Path(tmp) / "in.json", Path(tmp) / "out.json"
        inp.write_text(json.dumps(payload))
        log = ROOT / "bench" / "work" / f"{module.rsplit('.', 1)[-1]}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as lf:
            proc = subprocess.Popen([sys.executable, "-m", module, str(inp), str(out)], cwd=ROOT, env=child_env(),
                                    stdout=lf, stderr=subprocess.STDOUT)
            sampler = TreeSampler({"child": proc.pid})
            sampler.start()
            try:
                rc = proc.wait(timeout_s)
            finally:
                if proc.poll() is None:
                    proc.kill()
                usage = sampler.stop()
        if rc != 0 or not out.exists():
            tail = log.read_text(errors="replace").splitlines()[-30:]
            raise RuntimeError(f"{module} failed (rc={rc}); log {log}:\n" + "\n".join(tail))
        result = json.loads(out.read_text())
    result["usage"] = usage
    return result


def self_peak_rss() -> int:
    """This process's high-water resident memory in bytes (Linux reports ru_maxrss in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def corpus_wer(refs: list[str], hyps: list[str]) -> float:
    """Corpus-level WER (all errors over all reference words), after the tests' normalisation."""
    import jiwer

    from tests.wer import normalise

    pairs = [(normalise(r), normalise(h)) for r, h in zip(refs, hyps) if normalise(r)]
    out = jiwer.process_words([r for r, _ in pairs], [h for _, h in pairs])
    return out.wer


def cpu_probe_ms() -> float:
    """Milliseconds for a fixed single-core loop, best of 3. Sections run one after another, so a shared
    or throttled machine that slows down between them skews their ratios; this shows it."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        x = 0
        for i in range(1_000_000):
            x += i * i
        best = min(best, time.perf_counter() - t0)
    return round(best * 1000, 1)


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_model": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }
