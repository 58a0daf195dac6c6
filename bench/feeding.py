"""Section "feeding": does asrq keep a fast accelerator busy?

The accelerator is simulated by the ``sim`` engine (bench/plugins/asrq_instant/asrq_instant/sim.py, an
engine plug-in installed with the instant engine): a batch takes ``launch_ms + audio_s / rtfx`` of wall
time without CPU, its memory follows a model (so the transcribe worker sizes batches from "the card's"
free memory, as on CUDA), and it logs every batch (start and end on the monotonic clock, audio seconds,
chunks). The worker takes the path it takes for a real card; nothing in asrq knows the simulation.

(a) backlog: one transcribe worker (no API, no prepare worker; local-folder storage, so no S3 server
    shares the cores) drains chunks already prepared: rows in Postgres, PCM in storage, one message each
    in Redis, as prepare leaves them. Once at 1,000x real time and once at 5,000x.
(b) live: the whole stack (bench/stack.py: API, one prepare/finalize worker, one transcribe worker, moto
    S3) on uploads of 10 s clips and of long recordings at 1,000x; which stage limits.

Busy share: time inside batches over the span from the first batch's start to the last one's end. Batch
fill: a batch's audio-seconds over the batch budget the worker plans with (the memory model's, as
workers/engines/base.py computes it), over the batches that started while at least two budgets of audio
were still waiting (a backlog). Gap: from one batch's end to the next one's start.
"""

from __future__ import annotations

import json
import math
import os
import random
import secrets
import statistics
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.corpus import WORK

ENGINE = "sim"
# the simulated card's memory: 40 GiB free, 64 MiB per audio-second, 1 GiB per batch; with the default
# ASRQ_GPU_MEMORY_FRACTION of 0.8 a batch holds 496 audio-seconds (about 26 chunks of 8-30 s)
CARD = {"launch_ms": 2.0, "free_bytes": 40 * 2**30, "bytes_per_s": 64 * 2**20, "fixed_bytes": 2**30}
REDIS_DB = 14  # the backlog phase's own Redis db (bench/stack.py uses 13, tests 11 and 12)
PCM_S = 60.0  # each backlog job's PCM; its chunks are windows of it (the engine reads, never listens)
CHUNKS_PER_JOB = 50

TARGET_BUSY = {1000: 0.97, 5000: 0.93}
TARGET_FILL = 0.90
TARGET_GAP_P50_MS = 5.0


@dataclass(frozen=True)
class FeedingSpec:
    name: str
    backlog_chunks: int
    chunk_s: tuple[float, float]  # backlog chunk lengths, uniform: what prepare cuts long recordings into
    ten_s_jobs: int
    rtfx: tuple[int, ...] = (1000, 5000)
    seed: int = 20251203


QUICK = FeedingSpec("quick", 2000, (8.0, 30.0), 40)
FULL = FeedingSpec("full", 3000, (8.0, 30.0), 400)


def sim_installed() -> bool:
    from app.catalog.plugins import engine_names

    return ENGINE in engine_names()


def card_folder(work: Path, rtfx: int, batch_log: Path) -> Path:
    """A sim model folder: this card at ``rtfx``, logging its batches to ``batch_log``."""
    folder = work / f"card-{rtfx}x"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sim.json").write_text(json.dumps({**CARD, "rtfx": rtfx, "batch_log": str(batch_log)}))
    return folder


def budget_s() -> float:
    """The batch budget the worker plans with on this card (workers/engines/base.py's rule)."""
    from app.settings import get_settings
    from workers.batching import MemoryCost, budget_from_memory

    s = get_settings()
    one = 30.0  # the sim engine's max_chunk_s, counted as is (no padding)
    return budget_from_memory(CARD["free_bytes"], MemoryCost(CARD["bytes_per_s"], CARD["fixed_bytes"]),
                              s.gpu_memory_fraction, floor_s=one, cap_s=s.batch_max_requests * one)


def read_batches(path: Path, since: float, until: float | None = None) -> list[dict]:
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sorted((r for r in rows if r["start"] >= since and (until is None or r["end"] <= until)),
                  key=lambda r: r["start"])


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return 0.0
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def analyse(batches: list[dict], budget: float, waiting_audio_s: float | None = None) -> dict:
    """Busy share, gaps and fill of a run of batches; ``waiting_audio_s``: the audio queued when the first
    batch started (the backlog), which tells which batches ran with a backlog behind them."""
    if not batches:
        return {"batches": 0}
    busy = sum(b["end"] - b["start"] for b in batches)
    span = batches[-1]["end"] - batches[0]["start"]
    gaps_ms = [(b1["start"] - b0["end"]) * 1000 for b0, b1 in zip(batches, batches[1:])]
    fills, left = [], waiting_audio_s
    for b in batches:
        if left is not None:
            if left >= 2 * budget:
                fills.append(b["audio_s"] / budget)
            left -= b["audio_s"]
    return {
        "batches": len(batches), "chunks": sum(b["chunks"] for b in batches),
        "audio_s": sum(b["audio_s"] for b in batches), "busy_s": busy, "span_s": span,
        "busy": busy / span if span > 0 else 1.0, "budget_s": budget,
        "mean_chunks": statistics.fmean(b["chunks"] for b in batches),
        "gap_ms_p50": _pct(gaps_ms, 0.5), "gap_ms_p99": _pct(gaps_ms, 0.99), "gap_ms_max": max(gaps_ms, default=0.0),
        "backlog_batches": len(fills), "fill_mean": statistics.fmean(fills) if fills else None,
        "fill_min": min(fills) if fills else None,
        "fill_ok_share": sum(f >= TARGET_FILL for f in fills) / len(fills) if fills else None,
    }


# --- (a) a prepared backlog, one transcribe worker ---------------------------------------------------------

def _load_backlog(n_chunks: int, model: str, rng: random.Random, lo_s: float, hi_s: float) -> tuple[list, float]:
    """Jobs TRANSCRIBING with their chunks PENDING and their PCM in storage, as prepare leaves them."""
    from datetime import timedelta

    from app.constants import pcm_key
    from app.db.models import Chunk, Job, JobState, utcnow
    from app.db.session import session_scope
    from app.storage import get_store

    pcm = bytes(int(PCM_S * 16000) * 2)
    options = {"engine": ENGINE, "model": model, "language": "en"}
    chunk_ids, audio = [], 0.0
    now = utcnow() - timedelta(seconds=1)
    with session_scope() as s:
        for j in range(math.ceil(n_chunks / CHUNKS_PER_JOB)):
            n = min(CHUNKS_PER_JOB, n_chunks - j * CHUNKS_PER_JOB)
            job = Job(id=uuid.uuid4(), tenant="bench", state=JobState.TRANSCRIBING, source_uri="upload:backlog.wav",
                      filename=f"backlog-{j}.wav", options=options, params_hash=secrets.token_hex(32),
                      chunks_total=n, created_at=now, updated_at=now, started_at=now, transcribing_at=now)
            s.add(job)
            get_store().put_bytes(pcm_key(job.id), pcm)
            for i in range(n):
                d = rng.uniform(lo_s, hi_s)
                start = rng.uniform(0, PCM_S - d)
                c = Chunk(id=uuid.uuid4(), job_id=job.id, index=i, start_ms=int(start * 1000),
                          end_ms=int(start * 1000) + int(d * 1000), updated_at=now)
                s.add(c)
                chunk_ids.append(c.id)
                audio += (c.end_ms - c.start_ms) / 1000
        s.flush()
    return chunk_ids, audio


def _tree_cpu_s(pid: int) -> float:
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _wait_done(chunk_ids: list, timeout_s: float) -> None:
    from sqlalchemy import func, select

    from app.db.models import Chunk, ChunkState
    from app.db.session import session_scope

    deadline = time.monotonic() + timeout_s
    while True:
        with session_scope() as s:
            left = s.scalar(select(func.count()).where(Chunk.id.in_(chunk_ids), Chunk.state != ChunkState.DONE))
        if not left:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{left} of {len(chunk_ids)} chunks not done after {timeout_s:.0f} s")
        time.sleep(0.2)


def backlog(spec: FeedingSpec, work: Path, log=print) -> dict:  # noqa: ANN001
    from app.db.migrate import upgrade
    from app.messaging import send_transcribe
    from bench.stack import TEST_ONLY_ENV
    from tests.services import Stack, apply_env, base_env, postgres_database, redis_db, restore_env, wait_until

    batch_log = work / "batches-backlog.jsonl"
    batch_log.unlink(missing_ok=True)
    cards = {r: card_folder(work, r, batch_log) for r in spec.rtfx}
    out: dict = {}
    saved = dict(os.environ)
    with postgres_database() as db_url, redis_db(REDIS_DB) as broker:
        upgrade(db_url)
        env = base_env(db_url, broker, f"file://{work / 'objects'}", "", work, secrets.token_urlsafe(8))
        for k in (*TEST_ONLY_ENV, "ASRQ_S3_ENDPOINT_URL"):
            env.pop(k, None)
        env.update({"ASRQ_ENGINE": ENGINE, "ASRQ_MODEL": str(cards[spec.rtfx[0]])})
        apply_env(env)
        st = Stack(env=env, tmp=work, api_url="", api_key="")
        try:
            worker = st.start_transcribe_worker()
            wait_until(lambda: "loaded on" in worker.log.read_text(errors="replace"), 180, what="transcribe worker")
            budget = budget_s()
            for rtfx in spec.rtfx:
                rng = random.Random(spec.seed + rtfx)
                ids, audio = _load_backlog(spec.backlog_chunks, str(cards[rtfx]), rng, *spec.chunk_s)
                log(f"feeding/backlog {rtfx}x: {len(ids)} chunks, {audio:.0f} audio-s "
                    f"({audio / rtfx:.1f} s of inference), one transcribe worker")
                cpu0 = _tree_cpu_s(worker.popen.pid)
                t0 = time.monotonic()
                send_transcribe(ids)
                _wait_done(ids, timeout_s=120 + 20 * audio / rtfx)
                cpu = _tree_cpu_s(worker.popen.pid) - cpu0
                rows = read_batches(batch_log, t0)
                a = analyse(rows, budget, waiting_audio_s=audio)
                a.update({"rtfx": rtfx, "backlog_chunks": len(ids), "backlog_audio_s": audio,
                          "head_ms": (rows[0]["start"] - t0) * 1000 if rows else None,
                          "wall_s": time.monotonic() - t0, "worker_cpu_ms_per_chunk": 1000 * cpu / len(ids),
                          "loadavg": os.getloadavg()[0]})
                out[str(rtfx)] = a
                log(f"feeding/backlog {rtfx}x: busy {a['busy']:.3f}, fill mean {a['fill_mean'] or 0:.2f} "
                    f"(min {a['fill_min'] or 0:.2f}), gap p50 {a['gap_ms_p50']:.1f} ms, p99 {a['gap_ms_p99']:.1f} ms, "
                    f"{a['batches']} batches of {a['mean_chunks']:.1f} chunks; worker CPU "
                    f"{a['worker_cpu_ms_per_chunk']:.1f} ms per chunk; load average {a['loadavg']:.1f}")
        finally:
            st.stop_all()
            restore_env(saved)
    return out


# --- (b) the live pipeline -----------------------------------------------------------------------------------

def live(spec: FeedingSpec, work: Path, quick: bool, log=print) -> dict:  # noqa: ANN001
    from bench import orchestration, stack
    from bench.measure import TreeSampler

    clips = orchestration.build(orchestration.QUICK if quick else orchestration.FULL, log=log)
    batch_log = work / "batches-live.jsonl"
    batch_log.unlink(missing_ok=True)
    rtfx = spec.rtfx[0]
    card = card_folder(work / "live", rtfx, batch_log)
    env = {"ASRQ_ENGINE": ENGINE, "ASRQ_MODEL": str(card), "ASRQ_S3_SOURCE_ALLOW": f"{stack.BUCKET}/corpus/"}
    out: dict = {"rtfx": rtfx}
    with stack.running_stack(work / "stack", extra_env=env, log=log) as b:
        distinct = clips["ten"] + clips["long"]
        stack.upload(b, distinct)
        stack.warm_up(b, b.uri(clips["ten"][0].name))
        budget = budget_s()
        for label, kind, n in (("10 s clips", "ten", spec.ten_s_jobs), ("long recordings", "long", len(clips["long"]))):
            files = [clips[kind][i % len(clips[kind])] for i in range(n)]
            audio = sum(f.duration_s for f in files)
            procs = b.stack.procs
            sampler = TreeSampler({"API": procs["api"].popen.pid, "prepare/finalize worker": procs["cpu-worker"].popen.pid,
                                   "transcribe worker": procs["gpu-worker"].popen.pid})
            sampler.start()
            log(f"feeding/live {label}: {n} jobs, {audio:.0f} audio-s")
            t0, t0_wall = time.monotonic(), time.time()
            with b.client() as c:
                ids = c.submit_batch([b.uri(f.name) for f in files])
            stack.wait_terminal(b, ids, timeout_s=max(600.0, audio))
            usage = sampler.stop()
            wall = time.monotonic() - t0
            rows = b.rows("SELECT state, extract(epoch FROM started_at), extract(epoch FROM transcribing_at) "
                          "FROM jobs WHERE id = ANY(CAST(:ids AS uuid[]))", ids=ids)
            prepare_s = sum(float(r[2]) - float(r[1]) for r in rows if r[1] is not None and r[2] is not None)
            a = analyse(read_batches(batch_log, t0), budget)
            stages = {"prepare (share of the prepare/finalize worker's time)": prepare_s / wall,
                      "accelerator (busy share)": a.get("busy_s", 0.0) / wall}
            cpu = {k: v / wall for k, v in usage["cpu_s"].items()}
            limit = max(stages, key=stages.get)
            out[kind] = {"label": label, "jobs": n, "audio_s": audio, "wall_s": wall, "jobs_per_s": n / wall,
                         "audio_s_per_s": audio / wall, "stages": stages, "cores": cpu, "limit": limit,
                         "n_failed": sum(1 for r in rows if r[0] != "COMPLETED"), "batches": a,
                         "t_submit": t0_wall}
            log(f"feeding/live {label}: {n / wall:.1f} jobs/s, {audio / wall:.0f} audio-s/s; accelerator busy "
                f"{stages['accelerator (busy share)']:.2f}, prepare {prepare_s / wall:.2f} of its worker: "
                f"limited by {limit.split(' (')[0]}")
    return out


def run(quick: bool, log=print) -> dict:  # noqa: ANN001
    if not sim_installed():
        return {"skipped": "the sim engine is not installed (make bench installs it: "
                           "pip install -e bench/plugins/asrq_instant)"}
    spec = QUICK if quick else FULL
    work = WORK / f"feeding-{spec.name}"
    work.mkdir(parents=True, exist_ok=True)
    out: dict = {"spec": asdict(spec), "card": CARD}
    out["backlog"] = backlog(spec, work / "backlog", log=log)
    out["live"] = live(spec, work, quick, log=log)
    return out


# --- report ----------------------------------------------------------------------------------------------

def checks(f: dict | None) -> list:
    from bench.report import Check

    if not f:
        return []
    if "skipped" in f:
        return [Check("feeding: accelerator busy while draining a backlog", None, f["skipped"])]
    out = []
    for rtfx, a in f["backlog"].items():
        r = int(rtfx)
        if not a.get("batches"):
            out.append(Check(f"feeding {r}x: backlog drained", False, "no batch logged"))
            continue
        out.append(Check(f"feeding {r}x: accelerator busy >= {TARGET_BUSY.get(r, 0.9):.2f} draining a backlog",
                         a["busy"] >= TARGET_BUSY.get(r, 0.9),
                         f"{a['busy']:.3f} ({a['busy_s']:.2f} s in {a['batches']} batches over {a['span_s']:.2f} s; "
                         f"{a['backlog_chunks']} chunks, {a['backlog_audio_s']:.0f} audio-s)"))
        out.append(Check(f"feeding {r}x: batches >= {TARGET_FILL:.0%} full while a backlog exists",
                         a["fill_min"] is not None and a["fill_min"] >= TARGET_FILL,
                         f"fill mean {a['fill_mean'] or 0:.2f}, min {a['fill_min'] or 0:.2f}, "
                         f"{(a['fill_ok_share'] or 0):.0%} of {a['backlog_batches']} batches >= {TARGET_FILL:.0%} "
                         f"(budget {a['budget_s']:.0f} audio-s)"))
        out.append(Check(f"feeding {r}x: gap between batches p50 <= {TARGET_GAP_P50_MS:g} ms",
                         a["gap_ms_p50"] <= TARGET_GAP_P50_MS,
                         f"p50 {a['gap_ms_p50']:.1f} ms, p99 {a['gap_ms_p99']:.1f} ms, max {a['gap_ms_max']:.1f} ms"))
    return out


def details(f: dict | None) -> list[str]:
    if not f or "skipped" in f:
        return []
    out = [f"- Feeding: the `sim` engine (a simulated accelerator: a batch sleeps launch {CARD['launch_ms']:g} ms + "
           "audio_s / rtfx; memory 40 GiB free, 64 MiB per audio-second, 1 GiB per batch) through the real "
           "transcribe worker. (a) one worker drains prepared chunks (rows, PCM in a local folder, one message each); "
           "(b) the whole stack on uploads."]
    for a in f["backlog"].values():
        if a.get("batches"):
            out.append(f"  - backlog at {a['rtfx']}x: {a['backlog_chunks']} chunks, {a['backlog_audio_s']:.0f} audio-s "
                       f"in {a['wall_s']:.1f} s; {a['batches']} batches (mean {a['mean_chunks']:.1f} chunks); busy "
                       f"{a['busy']:.3f}; fill mean {a['fill_mean'] or 0:.2f}, min {a['fill_min'] or 0:.2f}; gap p50 "
                       f"{a['gap_ms_p50']:.1f} ms, p99 {a['gap_ms_p99']:.1f} ms, max {a['gap_ms_max']:.1f} ms; first "
                       f"batch {a['head_ms'] or 0:.0f} ms after the messages were sent; transcribe worker CPU "
                       f"{a.get('worker_cpu_ms_per_chunk', 0):.1f} ms per chunk; machine load average "
                       f"{a.get('loadavg', 0):.1f} on {os.cpu_count()} cores")
    for p in f["live"].values():
        if isinstance(p, dict) and "label" in p:
            t = p["batches"]
            out.append(f"  - live, {p['label']} at {f['live']['rtfx']}x: {p['jobs']} jobs, {p['audio_s']:.0f} audio-s "
                       f"in {p['wall_s']:.1f} s ({p['jobs_per_s']:.1f} jobs/s, {p['audio_s_per_s']:.0f} audio-s/s); "
                       + ", ".join(f"{k} {v:.2f}" for k, v in p["stages"].items())
                       + f"; limited by {p['limit'].split(' (')[0]}; cores used: "
                       + ", ".join(f"{k} {v:.2f}" for k, v in p["cores"].items())
                       + f"; {t.get('batches', 0)} batches, gap p50 {t.get('gap_ms_p50', 0):.0f} ms"
                       + (f"; {p['n_failed']} FAILED" if p["n_failed"] else ""))
    return out


def summary(f: dict | None) -> list[str]:
    if not f or "skipped" in f:
        return []
    out = []
    for a in f["backlog"].values():
        if a.get("batches"):
            out.append(f"feeding backlog {a['rtfx']}x: busy {a['busy']:.3f}, fill mean {a['fill_mean'] or 0:.2f} "
                       f"min {a['fill_min'] or 0:.2f}, gap p50 {a['gap_ms_p50']:.1f} ms p99 {a['gap_ms_p99']:.1f} ms")
    for p in f["live"].values():
        if isinstance(p, dict) and "label" in p:
            out.append(f"feeding live {p['label']}: {p['jobs_per_s']:.1f} jobs/s, accelerator busy "
                       f"{p['stages']['accelerator (busy share)']:.2f}, limited by {p['limit'].split(' (')[0]}")
    return out + [""]
