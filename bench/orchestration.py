"""Section "orchestration ceiling": the whole stack with the instant engine, so what is timed is asrq
itself (API, prepare, batching and bookkeeping, finalize, S3, Postgres, Redis), not a model.

The instant engine (bench/plugins/asrq_instant, an engine plug-in installed by `make bench`) answers every
chunk with one fixed word at once. The stack is bench/stack.py's (one API, one prepare/finalize worker
with concurrency 1 and the reconciler, one transcribe worker), with ASRQ_ENGINE=instant for every process.
Three phases on the one stack, each submitted in one POST /v1/jobs/batch and timed until the last job is
COMPLETED: clips of exactly 10 s (the issue's targets), clips of 1-30 s, long recordings.

Per process, CPU is the delta of its whole process tree (psutil). Postgres and Redis are the machine's
shared servers here: their figure is the whole server's delta over the phase, which includes whatever
else used them meanwhile (other databases, other Redis db numbers); the Postgres backends connected to the
bench's own database are shown apart (they include the harness's own polling, one query per 0.5 s).
"""

from __future__ import annotations

import bisect
import json
import random
import statistics
import threading
import time
from dataclasses import asdict, dataclass

import numpy as np
import psutil

from bench.corpus import SR, WORK, Speech, decode16k, write_long

ENGINE, MODEL = "instant", "bundled:fixed"
TEN_S = 10.0
IDLE_S = 3.0  # the machine's background load is sampled this long before each phase


@dataclass(frozen=True)
class CeilingSpec:
    name: str
    ten_s_jobs: int  # jobs of exactly 10 s ...
    ten_s_files: int  # ... cycling over this many distinct files
    mix_jobs: int  # jobs of 1-30 s (uniform) ...
    mix_files: int
    long_s: tuple[float, ...]  # one job per long recording
    reel_s: float = 900.0  # the real-speech recording the short clips are cut from
    seed: int = 20251202
    version: int = 1  # bump when the generator changes
    fair_a_jobs: int = 1000  # fair share: tenant A's backlog, before tenant B's one job


QUICK = CeilingSpec("quick", 150, 20, 150, 40, (120.0, 120.0), reel_s=300.0, fair_a_jobs=150)
FULL = CeilingSpec("full", 1000, 100, 2000, 400, (600.0,) * 20)


@dataclass
class Clip:
    name: str
    path: str
    duration_s: float
    kind: str  # "ten" | "mix" | "long"


def instant_installed() -> bool:
    from app.catalog.plugins import engine_names

    return ENGINE in engine_names()


# --- audio -----------------------------------------------------------------------------------------------

def build(spec: CeilingSpec, log=print) -> dict[str, list[Clip]]:  # noqa: ANN001
    """The clips of this spec, built once under bench/work/ceiling-<name>/ and reused while it is unchanged.
    Short clips are cut at random offsets out of one long recording of real clips and espeak-ng sentences
    with pauses (bench/corpus.write_long); 16 kHz mono FLAC."""
    import soundfile as sf

    folder = WORK / f"ceiling-{spec.name}"
    manifest = folder / "manifest.json"
    spec_doc = json.loads(json.dumps(asdict(spec)))
    if manifest.exists():
        doc = json.loads(manifest.read_text())
        if doc.get("spec") == spec_doc:
            return {k: [Clip(**c) for c in v] for k, v in doc["clips"].items()}
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.flac"):
        old.unlink()
    log(f"building the ceiling clips ({spec.name}): {spec.ten_s_files} x 10 s, {spec.mix_files} x 1-30 s, "
        f"{len(spec.long_s)} long")
    speech = Speech(WORK / "tts")
    reel_path = folder / "reel.flac"
    write_long(reel_path, spec.reel_s, spec.seed, speech)
    reel = decode16k(reel_path)
    rng = random.Random(spec.seed)

    def cut(name: str, dur: float, kind: str) -> Clip:
        n = int(round(dur * SR))
        start = rng.randrange(0, len(reel) - n)
        path = folder / name
        sf.write(str(path), reel[start:start + n].astype(np.float32), SR, subtype="PCM_16", format="FLAC")
        return Clip(name, str(path), n / SR, kind)

    clips = {
        "ten": [cut(f"ten_{i:04d}.flac", TEN_S, "ten") for i in range(spec.ten_s_files)],
        "mix": [cut(f"mix_{i:04d}.flac", rng.uniform(1.0, 30.0), "mix") for i in range(spec.mix_files)],
        "long": [],
    }
    reel_path.unlink()
    for n, dur in enumerate(spec.long_s):
        path = folder / f"long_{n:02d}_{int(dur)}s.flac"
        write_long(path, dur, spec.seed + 1 + n, speech)
        clips["long"].append(Clip(path.name, str(path), sf.info(str(path)).duration, "long"))
    manifest.write_text(json.dumps({"spec": spec_doc, "clips": {k: [asdict(c) for c in v] for k, v in clips.items()}},
                                   indent=1))
    return clips


# --- the shared servers ----------------------------------------------------------------------------------

def server_pids(b) -> dict[str, int]:  # noqa: ANN001
    """The Postgres postmaster (parent of this connection's backend) and the Redis server process."""
    import redis

    out = {}
    backend = b.scalar("SELECT pg_backend_pid()")
    try:
        out["Postgres (whole server)"] = psutil.Process(int(backend)).ppid()
    except psutil.Error:
        pass
    r = redis.Redis.from_url(b.stack.env["ASRQ_BROKER_URL"])
    try:
        out["Redis (whole server)"] = int(r.info("server")["process_id"])
    finally:
        r.close()
    return out


class DbBackends(threading.Thread):
    """CPU of the Postgres backends connected to the bench's database (pg_stat_activity, every 0.5 s)."""

    def __init__(self, b) -> None:  # noqa: ANN001
        super().__init__(daemon=True)
        self.b = b
        self._halt = threading.Event()
        self._base: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._poll(first=True)

    def _poll(self, first: bool = False) -> None:
        pids = [int(r[0]) for r in self.b.rows(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")]
        for pid in pids:
            try:
                c = psutil.Process(pid).cpu_times()
            except psutil.Error:
                continue
            cpu = c.user + c.system
            if pid not in self._last:
                self._base[pid] = cpu if first else 0.0
            self._last[pid] = cpu

    def run(self) -> None:
        while not self._halt.wait(0.5):
            self._poll()

    def stop(self) -> float:
        self._poll()
        self._halt.set()
        self.join(5)
        return sum(self._last[p] - self._base[p] for p in self._last)


def _background_cores(seconds: float) -> float:
    """Cores busy machine-wide while the stack sits idle: other work sharing this machine."""
    a = psutil.cpu_times()
    time.sleep(seconds)
    z = psutil.cpu_times()
    busy = lambda t: sum(t) - t.idle - getattr(t, "iowait", 0.0)  # noqa: E731
    return round((busy(z) - busy(a)) / seconds, 2)


# --- one phase -------------------------------------------------------------------------------------------

def phase(b, label: str, clips: list[Clip], n_jobs: int, timeout_s: float, log=print) -> dict:  # noqa: ANN001
    from bench import stack
    from bench.measure import TreeSampler

    files = [clips[i % len(clips)] for i in range(n_jobs)]
    audio_s = sum(c.duration_s for c in files)
    background = _background_cores(IDLE_S)
    procs = b.stack.procs
    roots = {"API": procs["api"].popen.pid, "prepare/finalize worker": procs["cpu-worker"].popen.pid,
             "transcribe worker": procs["gpu-worker"].popen.pid, "S3 server (moto)": b.moto.popen.pid}
    asrq = {"API", "prepare/finalize worker", "transcribe worker"}
    roots |= server_pids(b)
    log(f"ceiling/{label}: {n_jobs} jobs, {audio_s:.0f} s of audio, submitted in one batch")
    sampler = TreeSampler(roots, total_of=asrq)
    backends = DbBackends(b)
    sampler.start()
    backends.start()
    t_submit = time.time()
    with b.client() as c:
        ids = c.submit_batch([b.uri(f.name) for f in files])
    t_posted = time.time()
    stack.wait_terminal(b, ids, timeout_s)
    usage = sampler.stop()
    db_own = backends.stop()
    rows = b.rows("SELECT state, error, extract(epoch FROM finished_at) FROM jobs WHERE id = ANY(CAST(:ids AS uuid[]))",
                  ids=ids)
    failed = [f"{r[0]}: {r[1]}" for r in rows if r[0] != "COMPLETED"]
    wall = max(float(r[2]) for r in rows if r[2] is not None) - t_submit
    cpu = dict(usage["cpu_s"])
    out = {
        "label": label, "jobs": n_jobs, "files": len(clips), "audio_s": audio_s, "wall_s": wall,
        "post_s": t_posted - t_submit, "jobs_per_s": n_jobs / wall, "audio_s_per_s": audio_s / wall,
        "cpu_s": cpu, "asrq_cpu_s": sum(v for n, v in cpu.items() if n in asrq),
        "pg_own_db_cpu_s": round(db_own, 2), "n_failed": len(failed), "failed": failed[:5],
        "background_cores": background, "machine_busy_cores": usage["machine_busy_cores"],
        "own_cores": usage["own_cores"], "peak_rss": usage["peak_rss"],
        "transcribe": transcribe_idle(b, ids, t_submit),
    }
    log(f"ceiling/{label}: {out['jobs_per_s']:.1f} jobs/s, {out['audio_s_per_s']:.0f} audio-s/s, asrq CPU "
        f"{out['asrq_cpu_s'] / n_jobs * 1000:.0f} ms/job" + (f", {len(failed)} FAILED" if failed else ""))
    return out


def fairness(b, clips: list[Clip], n_a: int, timeout_s: float, log=print) -> dict:  # noqa: ANN001
    """Tenant A submits ``n_a`` 10 s jobs in one batch; half a second later tenant B submits one. Latencies
    from each submission to COMPLETED (finished_at), and how many of A's jobs were done when B's was."""
    from app.client import AsrqClient
    from bench import stack

    log(f"fair share: tenant A submits {n_a} jobs, then tenant B one")
    t_a = time.time()
    with b.client() as c:
        a_ids = c.submit_batch([b.uri(clips[i % len(clips)].name) for i in range(n_a)])
    time.sleep(0.5)
    t_b = time.time()
    with AsrqClient(b.stack.api_url, "other-" + b.stack.api_key) as other:
        b_id = other.submit_uri(b.uri(clips[0].name))["id"]
    stack.wait_terminal(b, a_ids + [b_id], timeout_s)
    rows = b.rows("SELECT id::text, state, extract(epoch FROM finished_at) FROM jobs "
                  "WHERE id = ANY(CAST(:ids AS uuid[]))", ids=a_ids + [b_id])
    fin = {r[0]: (r[1], float(r[2]) if r[2] is not None else None) for r in rows}
    b_done = fin[b_id][1]
    a_done = sorted(t for jid, (st, t) in fin.items() if jid != b_id and t is not None)
    out = {"a_jobs": n_a, "b_latency_s": (b_done - t_b) if b_done else None,
           "a_median_latency_s": (a_done[len(a_done) // 2] - t_a) if a_done else None,
           "a_last_latency_s": (a_done[-1] - t_a) if a_done else None,
           "a_done_when_b_done": sum(1 for t in a_done if b_done is not None and t <= b_done),
           "n_failed": sum(1 for st, _ in fin.values() if st != "COMPLETED")}
    log(f"fair share: B's job {out['b_latency_s']:.1f} s; A's median {out['a_median_latency_s']:.1f} s, last "
        f"{out['a_last_latency_s']:.1f} s; A's jobs done when B's was: {out['a_done_when_b_done']} of {n_a}")
    return out


def transcribe_idle(b, ids: list[str], t_submit: float) -> dict:  # noqa: ANN001
    """The transcribe worker between batches, from the batches table: a batch row is written right after
    its inference, so the engine ran over [created_at - infer_s, created_at]; everything between one such
    span and the next is time the engine waited (the worker claiming, reading chunk audio, storing results,
    gathering messages). A gap counts as "under backlog" when, at its start, a chunk of these jobs was
    planned (its job TRANSCRIBING) and not yet done; otherwise the worker was starved (prepare behind)."""
    batches = b.rows("SELECT extract(epoch FROM created_at), infer_s, size, audio_s FROM batches "
                     "WHERE created_at >= to_timestamp(:t) ORDER BY created_at", t=t_submit)
    chunks = b.rows("SELECT extract(epoch FROM j.transcribing_at), extract(epoch FROM bt.created_at) FROM chunks c "
                    "JOIN jobs j ON j.id = c.job_id JOIN batches bt ON bt.id = c.batch_id "
                    "WHERE j.id = ANY(CAST(:ids AS uuid[]))", ids=ids)
    if not batches:
        return {"batches": 0}
    planned = sorted(float(r[0]) for r in chunks)
    done = sorted(float(r[1]) for r in chunks)
    spans = [(float(r[0]) - float(r[1]), float(r[0])) for r in batches]
    # the wait before the first batch counts from the first chunk planned; then between consecutive batches
    gaps = [(planned[0] if planned else spans[0][0], spans[0][0])] + [(a1, b0) for (_, a1), (b0, _) in
                                                                       zip(spans, spans[1:])]
    backlog, starved, backlog_gaps, fed_audio, fed_infer = 0.0, 0.0, [], 0.0, 0.0
    for n, (g0, g1) in enumerate(gaps):
        g = max(0.0, g1 - g0)
        waiting = bisect.bisect_right(planned, g0 + 1e-6) - bisect.bisect_right(done, g0 + 1e-6)
        if waiting > 0:
            backlog += g
            backlog_gaps.append(g)
            fed_audio += float(batches[n][3])
            fed_infer += float(batches[n][1])
        else:
            starved += g
    span = spans[-1][1] - gaps[0][0]
    infer = sum(float(r[1]) for r in batches)
    sizes = [int(r[2]) for r in batches]
    audio = [float(r[3]) for r in batches]
    gap_ms = sorted(g * 1000 for g in backlog_gaps)
    mean_audio = statistics.fmean(audio)
    med_gap_s = statistics.median(backlog_gaps) if backlog_gaps else 0.0
    return {
        "batches": len(batches), "chunks": sum(sizes), "mean_batch": statistics.fmean(sizes), "max_batch": max(sizes),
        "mean_batch_audio_s": mean_audio, "span_s": span, "infer_s": infer,
        "idle_backlog_s": backlog, "idle_starved_s": starved,
        "idle_backlog_pct": 100 * backlog / span if span > 0 else 0.0,
        "idle_starved_pct": 100 * starved / span if span > 0 else 0.0,
        "gap_ms_p50": gap_ms[len(gap_ms) // 2] if gap_ms else 0.0,
        "gap_ms_p90": gap_ms[int(len(gap_ms) * 0.9)] if gap_ms else 0.0,
        "gap_ms_max": gap_ms[-1] if gap_ms else 0.0,
        # audio the worker handed the (instant) engine per second of its own time while it had a backlog
        "feed_audio_s_per_s": fed_audio / (backlog + fed_infer) if backlog + fed_infer > 0 else 0.0,
        # a GPU at 1,000x real time infers a mean batch in mean_audio/1000 s; if none of the worker's gap
        # overlapped inference (claims and reads partly do) it would wait this share of the time
        "projected_idle_pct_1000x": 100 * med_gap_s / (med_gap_s + mean_audio / 1000) if backlog_gaps else 0.0,
    }


# --- the section -----------------------------------------------------------------------------------------

def run(quick: bool, log=print) -> dict:  # noqa: ANN001
    from bench import stack

    spec = QUICK if quick else FULL
    if not instant_installed():
        return {"skipped": "the instant engine is not installed (make bench installs it: "
                           "pip install -e bench/plugins/asrq_instant)"}
    clips = build(spec, log=log)
    out: dict = {"spec": asdict(spec), "engine": f"{ENGINE}:{MODEL}", "phases": {}}
    # jobs read the clips by s3:// URI from the bench bucket's corpus/ folder (the stack's storage is asrq/)
    env = {"ASRQ_ENGINE": ENGINE, "ASRQ_MODEL": MODEL, "ASRQ_S3_SOURCE_ALLOW": f"{stack.BUCKET}/corpus/"}
    with stack.running_stack(WORK / f"stack-ceiling-{spec.name}", extra_env=env, log=log) as b:
        distinct = [c for v in clips.values() for c in v]
        log(f"ceiling: uploading {len(distinct)} files to the S3 server")
        stack.upload(b, distinct)
        log("ceiling: warm-up job through every stage (not measured)")
        stack.warm_up(b, b.uri(clips["ten"][0].name))
        for label, kind, n in (("10 s clips", "ten", spec.ten_s_jobs), ("1-30 s clips", "mix", spec.mix_jobs),
                               ("long recordings", "long", len(clips["long"]))):
            audio = sum(clips[kind][i % len(clips[kind])].duration_s for i in range(n))
            out["phases"][kind] = phase(b, label, clips[kind], n, timeout_s=max(600.0, audio), log=log)
        out["fairness"] = fairness(b, clips["ten"], spec.fair_a_jobs, timeout_s=max(600.0, spec.fair_a_jobs * 2.0),
                                   log=log)
    return out


# --- report ----------------------------------------------------------------------------------------------

TARGET_JOBS_PER_S = 25.0
TARGET_MS_PER_JOB = 40.0


def checks(c: dict | None) -> list:
    from bench.report import Check

    if not c:
        return []
    name_rate = f"orchestration ceiling: >= {TARGET_JOBS_PER_S:g} jobs/s on 10 s clips (instant engine)"
    name_cpu = f"orchestration ceiling: asrq processes <= {TARGET_MS_PER_JOB:g} ms CPU per 10 s job"
    if "skipped" in c:
        return [Check(name_rate, None, c["skipped"]), Check(name_cpu, None, c["skipped"])]
    t = c["phases"]["ten"]
    shared = (f" [machine shared: {t['background_cores']:.1f} cores busy before the phase]"
              if t["background_cores"] > 0.3 else "")
    ms = t["asrq_cpu_s"] / t["jobs"] * 1000
    parts = ", ".join(f"{n} {v / t['jobs'] * 1000:.0f}" for n, v in t["cpu_s"].items()
                      if n in ("API", "prepare/finalize worker", "transcribe worker"))
    others = ", ".join(f"{n} {v / t['jobs'] * 1000:.0f}" for n, v in t["cpu_s"].items()
                       if n not in ("API", "prepare/finalize worker", "transcribe worker"))
    fail = f"; {t['n_failed']} jobs FAILED" if t["n_failed"] else ""
    fair = []
    if (f := c.get("fairness")) and f.get("b_latency_s") is not None:
        # "within a few batches while A's backlog is still draining": B done before a tenth of A's jobs
        fair = [Check(f"fair share: tenant B's one job completes while tenant A's {f['a_jobs']} still drain",
                      f["a_done_when_b_done"] <= f["a_jobs"] // 10 and not f["n_failed"],
                      f"B's job {f['b_latency_s']:.1f} s after its submission, when {f['a_done_when_b_done']} of "
                      f"A's {f['a_jobs']} were done; A's median {f['a_median_latency_s']:.1f} s, last "
                      f"{f['a_last_latency_s']:.1f} s{shared}")]
    return fair + [
        Check(name_rate, t["jobs_per_s"] >= TARGET_JOBS_PER_S and not t["n_failed"],
              f"{t['jobs_per_s']:.1f} jobs/s ({t['audio_s_per_s']:.0f} audio-s/s), {t['jobs']} jobs in "
              f"{t['wall_s']:.1f} s{fail}{shared}"),
        Check(name_cpu, ms <= TARGET_MS_PER_JOB and not t["n_failed"],
              f"{ms:.0f} ms ({parts} ms); besides, the servers: {others} ms per job{shared}"),
    ]


def details(c: dict | None) -> list[str]:
    if not c:
        return []
    if "skipped" in c:
        return [f"- Orchestration ceiling: skipped ({c['skipped']})"]
    out = [f"- Orchestration ceiling: the stack of section 3 with the `{c['engine']}` engine (one word per chunk, "
           "at once; an engine plug-in, bench/plugins/asrq_instant) as every process's default, one "
           "prepare/finalize worker (concurrency 1), one transcribe worker; each phase one POST /v1/jobs/batch "
           "by s3:// URI, timed to the last COMPLETED; 16 kHz mono FLAC cut from real speech. CPU: deltas of "
           "each process tree. Postgres and Redis are this machine's shared servers: their figures are the "
           "whole server over the phase, other clients included (background load before each phase shown); "
           "the Postgres backends of the bench database alone are given apart."]
    for p in c["phases"].values():
        per_min = p["audio_s"] / 60
        out.append(f"  - {p['label']}: {p['jobs']} jobs ({p['files']} distinct files), {p['audio_s']:.0f} s of "
                   f"audio in {p['wall_s']:.1f} s (POST {p['post_s']:.2f} s): {p['jobs_per_s']:.1f} jobs/s, "
                   f"{p['audio_s_per_s']:.0f} audio-s/s; {p['n_failed']} failed"
                   + (f" {p['failed']}" if p["failed"] else "")
                   + f"; cores busy machine-wide {p['machine_busy_cores']:.2f} (before: {p['background_cores']:.2f})")
        rows = [(n, v) for n, v in p["cpu_s"].items()] + [("asrq processes together", p["asrq_cpu_s"]),
                                                          ("Postgres backends of the bench database",
                                                           p["pg_own_db_cpu_s"])]
        out.append("    - CPU: " + "; ".join(f"{n} {v:.1f} s = {v / p['jobs'] * 1000:.1f} ms/job, "
                                             f"{v / per_min * 1000:.0f} ms/audio-min" for n, v in rows))
        t = p["transcribe"]
        if t.get("batches"):
            out.append(f"    - transcribe worker: {t['batches']} batches, {t['chunks']} chunks (mean "
                       f"{t['mean_batch']:.1f}, max {t['max_batch']}, {t['mean_batch_audio_s']:.0f} audio-s each); "
                       f"over its {t['span_s']:.1f} s from the first chunk planned to the last batch, idle between "
                       f"batches with chunks waiting {t['idle_backlog_s']:.1f} s ({t['idle_backlog_pct']:.0f} %), "
                       f"with nothing to do {t['idle_starved_s']:.1f} s ({t['idle_starved_pct']:.0f} %), "
                       f"inference {t['infer_s']:.2f} s; gap per batch under backlog p50 {t['gap_ms_p50']:.0f} ms, "
                       f"p90 {t['gap_ms_p90']:.0f} ms, max {t['gap_ms_max']:.0f} ms; it fed "
                       f"{t['feed_audio_s_per_s']:.0f} audio-s/s while backlogged; a GPU at 1,000x real time "
                       f"would wait up to {t['projected_idle_pct_1000x']:.0f} % of the time (target < 2 %) if none "
                       "of that gap overlapped inference")
    return out


def summary(c: dict | None) -> list[str]:
    """Console lines: one per phase."""
    if not c or "skipped" in c:
        return []
    out = []
    for p in c["phases"].values():
        t = p["transcribe"]
        out.append(f"ceiling {p['label']}: {p['jobs_per_s']:.1f} jobs/s, {p['audio_s_per_s']:.0f} audio-s/s, asrq CPU "
                   f"{p['asrq_cpu_s'] / p['jobs'] * 1000:.0f} ms/job, "
                   f"{p['asrq_cpu_s'] / (p['audio_s'] / 60) * 1000:.0f} ms/audio-min; transcribe worker idle "
                   f"between batches {t.get('idle_backlog_pct', 0):.0f} % with chunks waiting, "
                   f"{t.get('idle_starved_pct', 0):.0f} % starved")
    return out + [""]
