"""GPU benchmark: the engine limit and asrq on a CUDA machine, for faster-whisper (fp16) and a full-size
Paraformer-large architecture with random weights, reporting RTFx, batch sizes and GPU busy time.

    python -m bench.gpu                    # CUDA: full corpus, both engines, engine limit + asrq
    python -m bench.gpu --dry-run          # CPU fallback in a few minutes: small corpus, small Paraformer
    python -m bench.gpu --engines paraformer --batch-audio-s 1200 --corpus quick

GPU busy time integrates NVML's (or nvidia-smi's) utilization.gpu, sampled every 0.1 s: the share of
time a kernel was running. asrq needs Postgres (127.0.0.1:5432) and Redis (127.0.0.1:6379) as for
`make bench`; without them only the engine limits run. Results: bench/RESULTS-gpu.md (a dry run or a
CPU run writes bench/work/RESULTS-gpu-cpu.md, so it never stands in for GPU figures).
"""

from __future__ import annotations

import argparse
import shlex
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from bench import corpus, measure

ROOT = Path(__file__).resolve().parents[1]


class GpuSampler(threading.Thread):
    """utilization.gpu and memory.used of every visible GPU, every ``interval_s``; NVML, else nvidia-smi."""

    def __init__(self, interval_s: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.interval_s = interval_s
        self.samples: list[tuple[float, float, float]] = []  # (t, util % summed over GPUs, MiB used)
        self._halt = threading.Event()
        self.backend = "none"
        self._read = self._nvml() or self._smi()

    def _nvml(self):  # noqa: ANN202
        try:
            import pynvml  # nvidia-ml-py

            pynvml.nvmlInit()
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception:  # noqa: BLE001 - no NVML here: fall back to nvidia-smi
            return None
        self.backend = "nvml"

        def read() -> tuple[float, float]:
            util = sum(pynvml.nvmlDeviceGetUtilizationRates(h).gpu for h in handles)
            mem = sum(pynvml.nvmlDeviceGetMemoryInfo(h).used for h in handles) / 2**20
            return util, mem

        return read

    def _smi(self):  # noqa: ANN202
        cmd = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"]
        try:
            subprocess.run(cmd, capture_output=True, timeout=10, check=True)
        except (OSError, subprocess.SubprocessError):
            return None
        self.backend = "nvidia-smi"

        def read() -> tuple[float, float]:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
            rows = [[float(x) for x in line.split(",")] for line in out.strip().splitlines() if line.strip()]
            return sum(r[0] for r in rows), sum(r[1] for r in rows)

        return read

    def run(self) -> None:
        while self._read and not self._halt.is_set():
            util, mem = self._read()
            self.samples.append((time.monotonic(), util, mem))
            self._halt.wait(self.interval_s)

    def stop(self) -> dict:
        self._halt.set()
        self.join(10)
        s = self.samples
        if len(s) < 2:
            return {"backend": self.backend, "busy_s": None, "busy_pct": None, "mem_peak_mib": None}
        busy = sum((b[0] - a[0]) * a[1] / 100 for a, b in zip(s, s[1:]))
        span = s[-1][0] - s[0][0]
        return {"backend": self.backend, "busy_s": busy, "busy_pct": 100 * busy / span if span else None,
                "mem_peak_mib": max(x[2] for x in s)}


def log(msg: str) -> None:
    print(f"[bench.gpu {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def engines(names: list[str], small: bool) -> dict[str, dict]:
    out = {}
    if "whisper" in names:
        out["whisper"] = {"engine": "whisper", "model": "bundled:tiny.en", "label": "faster-whisper tiny.en"}
    if "paraformer" in names:
        from bench import paraformer_large

        path = paraformer_large.build(corpus.WORK / ("paraformer-small" if small else "paraformer-large"), small)
        size = f"{paraformer_large.n_params(path) / 1e6:.0f} M parameters"
        # the engine limit loads the folder by path; asrq jobs name it under ASRQ_MODELS_DIR, as users do
        out["paraformer"] = {"engine": "funasr", "model": str(path), "job_model": path.name,
                             "models_dir": str(path.parent),
                             "label": f"Paraformer-{'large dims, 2+1 blocks' if small else 'large'} random ({size})"}
    return out


def limit(items: list[corpus.Item], spec: dict, device: str, args: argparse.Namespace) -> dict:
    gpu = GpuSampler()
    gpu.start()
    r = measure.run_child("bench.engine_limit", {
        "items": [corpus.asdict(i) for i in items], "engine": spec["engine"], "model": spec["model"],
        "device": device, "beam_size": 5, "tmp": str(corpus.WORK),
        "batch_audio_s": args.batch_audio_s, "batch_max_requests": args.batch_max_requests})
    g = gpu.stop()
    audio = sum(i.duration_s for i in items)
    return {"audio_s": audio, "time_s": r["infer_s"], "batch_sizes": r["batch_sizes"], "gpu": g,
            "wer": measure.corpus_wer([i.reference for i in items], [r["hyps"][i.name] for i in items]),
            "peak_rss": r["peak_rss"]}


def asrq(items: list[corpus.Item], spec: dict, device: str, args: argparse.Namespace) -> dict:
    from bench import stack

    env = {k: str(v) for k, v in (("ASRQ_BATCH_AUDIO_S", args.batch_audio_s),
                                  ("ASRQ_BATCH_MAX_REQUESTS", args.batch_max_requests),
                                  ("ASRQ_MODELS_DIR", spec.get("models_dir"))) if v}
    model = spec.get("job_model", spec["model"])
    worker_env = {"ASRQ_ENGINE": spec["engine"], "ASRQ_MODEL": model}  # the model it loads at start
    options = {"engine": spec["engine"], "model": model}
    with stack.running_stack(corpus.WORK / f"stack-gpu-{spec['engine']}", env, log=log,
                             gpus="all" if device.startswith("cuda") else "cpu", worker_env=worker_env) as b:
        stack.upload(b, items)
        stack.warm_up(b, b.uri(items[0].name), options)
        gpu = GpuSampler()
        gpu.start()
        t = stack.throughput(b, items, timeout_s=max(900.0, sum(i.duration_s for i in items)), options=options)
        t["gpu"] = gpu.stop()
    t["time_s"] = t["wall_s"]
    return t


def services_up() -> str | None:
    for port, what in ((5432, "Postgres"), (6379, "Redis")):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        except OSError:
            return f"{what} is not reachable on 127.0.0.1:{port}"
    return None


def row(engine: str, section: str, r: dict) -> str:
    bs = r["batch_sizes"] or [0]
    g = r["gpu"]
    busy = "n/a" if g["busy_s"] is None else f"{g['busy_s']:.1f} s ({g['busy_pct']:.0f} %)"
    mem = "n/a" if g["mem_peak_mib"] is None else f"{g['mem_peak_mib']:.0f}"
    return (f"| {engine} | {section} | {r['audio_s']:.0f} | {r['time_s']:.1f} | {r['audio_s'] / r['time_s']:.1f} | "
            f"{busy} | {mem} | {len(bs)} | {sum(bs) / len(bs):.1f} | {max(bs)} | {r['wer'] * 100:.2f} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    ap.add_argument("--dry-run", action="store_true", help="CPU, a few files, small Paraformer: checks the plumbing")
    ap.add_argument("--engines", default="whisper,paraformer")
    ap.add_argument("--corpus", choices=["quick", "full"], default=None, help="default: full (dry run: a quick subset)")
    ap.add_argument("--no-asrq", action="store_true", help="engine limits only")
    ap.add_argument("--batch-audio-s", type=float, default=None, help="batch budget (default: the settings')")
    ap.add_argument("--batch-max-requests", type=int, default=None)
    args = ap.parse_args(argv)
    device = args.device or ("cpu" if args.dry_run else _cuda_or_cpu())
    small = args.dry_run or device == "cpu"
    spec = corpus.QUICK if (args.corpus == "quick" or (args.dry_run and args.corpus is None)) else corpus.FULL
    skip_asrq = "not requested" if args.no_asrq else services_up()
    rows, notes = [], []
    for name, eng in engines([e.strip() for e in args.engines.split(",")], small).items():
        items = corpus.build(spec, log=log, engine=eng["engine"])
        if args.dry_run:
            items = [i for i in items if i.kind == "short"][:6] + [i for i in items if i.kind == "long"][:1]
        log(f"{eng['label']}: engine limit on {device}, {len(items)} files")
        rows.append(row(eng["label"], "engine limit", limit(items, eng, device, args)))
        if skip_asrq is None:
            log(f"{eng['label']}: asrq on {device}")
            r = asrq(items, eng, device, args)
            rows.append(row(eng["label"], "asrq", r))
            notes.append(f"{eng['label']} via asrq: {r['jobs']} jobs ({r['n_failed']} failed), engine busy "
                         f"{r['infer_s'] / r['wall_s'] * 100:.0f} % of the wall time, peak RSS of the asrq "
                         f"processes {r['usage']['peak_rss_total'] / 2**20:.0f} MiB")
    if skip_asrq:
        notes.append(f"asrq not measured: {skip_asrq}")
    if any("random" in r for r in rows):
        notes.append("WER of a random-weight Paraformer is meaningless (it knows no speech); its rows measure cost.")
    m = measure.machine()
    text = "\n".join([
        f"# asrq GPU benchmark ({device}{', dry run' if args.dry_run else ''})", "",
        "Generated by the command below; nothing here is typed by hand.", "",
        f"- Command: `{' '.join(shlex.quote(a) for a in ['python', '-m', 'bench.gpu', *sys.argv[1:]])}`",
        f"- Date (UTC): {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Machine: {m['cores']} cores ({m['cpu_model']}), {m['ram_gib']} GiB RAM; GPU: {_gpu_name()}",
        f"- Corpus: {spec.name} ({'subset: 6 short + 1 long' if args.dry_run else 'all files'})",
        "", "| engine | section | audio s | wall s | RTFx | GPU busy | GPU MiB peak | batches | mean batch | max batch | WER % |",
        "|---|---|---|---|---|---|---|---|---|---|---|", *rows, "",
        *[f"- {n}" for n in notes], ""])
    print("\n" + text)
    dest = ROOT / "bench" / "RESULTS-gpu.md" if device.startswith("cuda") else corpus.WORK / "RESULTS-gpu-cpu.md"
    dest.write_text(text)
    log(f"wrote {dest.relative_to(ROOT)}")
    return 0


def _cuda_or_cpu() -> str:
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def _gpu_name() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return "; ".join(out.stdout.strip().splitlines()) or "none"
    except (OSError, subprocess.SubprocessError):
        return "none"


if __name__ == "__main__":
    sys.exit(main())
