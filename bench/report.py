"""Figures -> the printed table and bench/RESULTS.md (or RESULTS-quick.md). Every line is generated."""

from __future__ import annotations

from dataclasses import dataclass

MB = 2**20


@dataclass
class Check:
    name: str
    ok: bool | None  # None: not measured in this run
    detail: str

    @property
    def verdict(self) -> str:
        return "SKIP" if self.ok is None else ("PASS" if self.ok else "MISS")


def _shared(*usages: dict) -> str:
    """A warning suffix when processes outside the measurement kept the CPU busy meanwhile."""
    worst = max(u["machine_busy_cores"] - u["own_cores"] for u in usages)
    return f" [machine shared: {worst:.1f} cores used by other processes, Postgres included]" if worst > 0.5 else ""


def _rtfx(s: dict | None) -> float | None:
    return s["audio_s"] / s["time_s"] if s else None



# the sections with a module of their own: result key -> module; each has checks, summary and details
_SECTION_MODULES = {"ceiling": "orchestration", "feeding": "feeding", "vad": "vad_speed", "scale": "scale",
                    "laptop": "laptop", "longform": "longform"}


def _sections(r: dict, part: str) -> list:
    import importlib

    out: list = []
    for key, module in _SECTION_MODULES.items():
        if key in r:
            out += getattr(importlib.import_module(f"bench.{module}"), part)(r[key])
    return out

def checks(r: dict) -> list[Check]:
    lim, nai, asrq = r.get("limit"), r.get("naive"), r.get("asrq")
    out = []
    if asrq and lim:
        ratio = _rtfx(asrq) / _rtfx(lim)
        out.append(Check("asrq throughput >= 0.90 x engine limit", ratio >= 0.90,
                         f"{ratio:.2f} x" + _shared(asrq["usage"], lim["usage"])))
    if asrq and nai:
        ratio = _rtfx(asrq) / _rtfx(nai)
        out.append(Check("asrq throughput >= 1.5 x naive loop", ratio >= 1.5,
                         f"{ratio:.2f} x" + _shared(asrq["usage"], nai["usage"])))
        d = (asrq["wer"] - nai["wer"]) * 100
        out.append(Check("asrq WER <= naive WER + 0.5 points", d <= 0.5,
                         f"{asrq['wer'] * 100:.2f} % vs {nai['wer'] * 100:.2f} % ({d:+.2f} points)"))
    if e := r.get("enqueue"):
        # the target is 10,000 jobs in <= 10 s; a quick run posts fewer and is held to the same rate
        ok = e["seconds"] <= 10.0 * e["jobs"] / 10_000 and e["rows_added"] == e["jobs"]
        out.append(Check(f"enqueue {e['jobs']:,} jobs by URI in <= {10.0 * e['jobs'] / 10_000:g} s", ok,
                         f"POST answered in {e['seconds']:.2f} s ({e['jobs_per_s']:,.0f} jobs/s, "
                         f"{e['rows_added']:,} rows); all {e['messages_queued']:,} prepare messages on the "
                         f"queue {e['all_queued_s']:.2f} s after the POST was sent"))
    if lat := r.get("latency"):
        ok = lat["p99_ms"] <= 20.0 and lat["errors"] == 0 and lat["achieved_rps"] >= 0.95 * lat["target_rps"]
        out.append(Check(f"GET /v1/jobs/{{id}} p99 <= 20 ms at {lat['target_rps']:.0f} req/s", ok,
                         f"p99 {lat['p99_ms']:.1f} ms, achieved {lat['achieved_rps']:.0f} req/s, "
                         f"{lat['errors']} errors" + _shared(_merged(lat["usage"], lat["client_usage"]))))
    if m := r.get("memory"):
        out.append(Check(f"prepare peak RSS {m['long']['duration_s'] / 60:.0f} min <= 1.2 x "
                         f"{m['short']['duration_s'] / 60:.0f} min", m["ratio"] <= 1.2, f"{m['ratio']:.2f} x"))
    if fc := r.get("first_chunk"):
        out.append(Check("time to first chunk result (short job, idle) <= 2 s", fc["median_s"] <= 2.0,
                         f"median {fc['median_s']:.2f} s, max {fc['max_s']:.2f} s over {len(fc['trials_s'])}"))
    out += _sections(r, "checks")
    return out


def _merged(a: dict, b: dict) -> dict:
    """Two samplers over the same interval: machine-wide figures agree, own cores add up."""
    return {"machine_busy_cores": max(a["machine_busy_cores"], b["machine_busy_cores"]),
            "own_cores": a["own_cores"] + b["own_cores"]}


def _row(name: str, s: dict | None) -> list[str]:
    if not s:
        return [name, "-", "-", "-", "-", "-"]
    return [name, f"{s['audio_s']:.1f}", f"{s['time_s']:.1f}", f"{_rtfx(s):.1f}", f"{s['wer'] * 100:.2f}",
            f"{s['peak_rss'] / MB:.0f}"]


def table(r: dict) -> list[list[str]]:
    head = ["section", "audio s", "wall s", "RTFx", "WER %", "peak RSS MiB"]
    return [head, _row("1 engine limit", r.get("limit")), _row("2 naive loop", r.get("naive")),
            _row("3 asrq", r.get("asrq"))]


def _text_table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                     for row in rows)


def _md_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "|".join("---" for _ in rows[0]) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows[1:]])


def ratios(r: dict, per_cpu: bool = False) -> list[str]:
    """asrq over the others in audio per wall second (the targets), or per CPU second of the section's
    own processes (a cross-check that moves less when other work shares the machine)."""
    def rate(s: dict | None) -> float | None:
        if not s:
            return None
        return s["audio_s"] / s["cpu_s"] if per_cpu else _rtfx(s)

    out = []
    a = rate(r.get("asrq"))
    for key, label in (("limit", "asrq/limit"), ("naive", "asrq/naive")):
        if a and r.get(key):
            out.append(f"{label} = {a / rate(r[key]):.2f}")
    return out


def console(r: dict) -> str:
    lines = [f"asrq benchmark ({r['mode']}) {r['date']} - {r['machine']['cores']} cores, "
             f"{r['machine']['ram_gib']} GiB, {r['machine']['cpu_model']}", r["corpus_line"], "",
             _text_table(table(r)), "", "ratios: " + (", ".join(ratios(r)) or "n/a"),
             "per CPU second (cross-check): " + (", ".join(ratios(r, per_cpu=True)) or "n/a"), ""]
    lines += _sections(r, "summary")
    for c in checks(r):
        lines.append(f"{c.verdict:4}  {c.name}: {c.detail}")
    misses = [c for c in checks(r) if c.ok is False]
    if misses:
        lines += ["", f"MISS: {len(misses)} target(s) missed (see above); exit code stays 0"]
    return "\n".join(lines)


def markdown(r: dict) -> str:
    m = r["machine"]
    out = [
        f"# asrq benchmark results ({r['mode']} mode)",
        "",
        "Generated by the command below; nothing here is typed by hand. Re-run to refresh.",
        "",
        f"- Command: `{r['command']}`",
        f"- Date (UTC): {r['date']}",
        f"- Machine: {m['cores']} cores ({m['cpu_model']}), {m['ram_gib']} GiB RAM, {m['os']}, Python {m['python']}",
        f"- Load average at start / end: {m['loadavg']} / {r.get('loadavg_end')}",
        f"- Mode: {r['mode']}; total run time {r['run_s'] / 60:.1f} min",
        f"- Code: commit {r['code']['commit']}" + (" with uncommitted changes in app/ or workers/" if r["code"]["dirty"]
                                                   else "") + f" (content fingerprint {r['code']['fingerprint']})",
        f"- Corpus: {r['corpus_line']}",
        f"- Model: {r['model']} (int8 on CPU, beam size {r['beam_size']}, word timestamps), "
        f"{m['cores']} threads, OMP_NUM_THREADS=1 in every measured process",
        _layout_line(r),
        "",
        "## Throughput, accuracy, memory",
        "",
        _md_table(table(r)),
        "",
        "RTFx = audio seconds (whole recordings) per wall second. Engine limit: time inside "
        "`WhisperEngine.transcribe_batch` only, over prepare's chunks in the worker's length-sorted batches. "
        "Naive: `WhisperModel.transcribe(file)` per file, model loaded once. asrq: from POST /v1/jobs/batch "
        "to the last job COMPLETED. WER: corpus-level, normalised as in tests/wer.py. Peak RSS: process "
        "trees sampled every 0.2 s (asrq: API + prepare/finalize worker + transcribe worker, summed).",
        "",
        "Ratios: " + (", ".join(ratios(r)) or "n/a (a section was not run)"),
        "",
        "Per CPU second instead of per wall second (audio s / CPU s of the section's own processes; "
        "asrq: API + both workers, without Postgres, Redis and the S3 server), a cross-check when other "
        "work shares the machine: " + (", ".join(ratios(r, per_cpu=True)) or "n/a"),
        "",
        "## Targets",
        "",
        "| verdict | target | measured |",
        "|---|---|---|",
    ]
    out += [f"| {c.verdict} | {c.name} | {c.detail} |" for c in checks(r)]
    out += ["", "## Details", ""]
    out += details(r)
    return "\n".join(out) + "\n"


def details(r: dict) -> list[str]:
    out = []
    for key, label in (("limit", "Engine limit"), ("naive", "Naive loop"), ("asrq", "asrq")):
        s = r.get(key)
        if not s:
            continue
        u = s["usage"]
        line = (f"- {label}: {s['time_s']:.1f} s for {s['audio_s']:.0f} s of audio, {s['cpu_s']:.0f} CPU s; cores "
                f"busy machine-wide {u['machine_busy_cores']:.2f}, by this section's processes {u['own_cores']:.2f}")
        if s.get("wer_kind"):
            line += "; WER " + ", ".join(f"{k} {v * 100:.2f} %" for k, v in s["wer_kind"].items())
        if "exact_peak_rss" in s:
            line += f"; exact peak RSS (ru_maxrss) {s['exact_peak_rss'] / MB:.0f} MiB"
        out.append(line)
        if s.get("batch_sizes"):
            bs = s["batch_sizes"]
            out.append(f"  - {len(bs)} batches, {sum(bs)} chunks, mean batch {sum(bs) / len(bs):.1f}, "
                       f"max {max(bs)}; inference time {s['infer_s']:.1f} s; chunks hold "
                       f"{s['chunk_audio_s']:.0f} s of the {s['audio_s']:.0f} s (VAD left out the rest)")
        if key == "asrq":
            peaks = ", ".join(f"{n} {v / MB:.0f} MiB" for n, v in u["peak_rss"].items())
            cpu = ", ".join(f"{n} {v:.0f} s" for n, v in u["cpu_s"].items())
            out += [f"  - peak RSS per tree: {peaks}", f"  - CPU seconds per tree: {cpu}",
                    f"  - engine busy {s['infer_s'] / s['time_s'] * 100:.0f} % of the wall time; prepare "
                    f"(fetch, decode, PCM upload, VAD) {s['prepare_s_total']:.1f} s summed over jobs, longest "
                    f"{s['prepare_s_max']:.1f} s; first chunks planned {s['first_chunk_planned_s']:.1f} s after submit",
                    f"  - engine idle: {s['engine_idle']['head_s']:.1f} s from submit to the first batch, "
                    f"{s['engine_idle']['gaps_s']:.1f} s between batches, {s['engine_idle']['tail_s']:.1f} s from the "
                    "last batch to the last job COMPLETED (finalize)",
                    f"  - jobs {s['jobs']}, failed {s['n_failed']}" + (f": {s['failed']}" if s["failed"] else "")]
            if r.get("limit"):
                # same chunks through the same engine: what is left between the two is batch
                # composition and CPU taken by the rest of the pipeline while the engine runs
                out.append(f"  - inference time, engine limit / asrq on the same chunks: "
                           f"{r['limit']['infer_s']:.1f} s / {s['infer_s']:.1f} s = "
                           f"{r['limit']['infer_s'] / s['infer_s']:.2f}")
    if m := r.get("memory"):
        for k in ("short", "long"):
            x = m[k]
            out.append(f"- Prepare memory, {x['duration_s'] / 60:.1f} min recording: peak RSS {x['peak_rss'] / MB:.0f} MiB "
                       f"(of which {x['baseline_rss'] / MB:.0f} MiB before any audio: interpreter, torch, VAD model); "
                       f"{x['segments']} speech segments, {x['chunks']} chunks, {x['seconds']:.1f} s")
    if lat := r.get("latency"):
        out.append(f"- GET latency: {lat['requests']} requests over {lat['duration_s']:.0f} s, open loop from a "
                   f"loopback keep-alive generator ({lat['connections']} connections); p50 {lat['p50_ms']} ms, "
                   f"p95 {lat['p95_ms']} ms, p99 {lat['p99_ms']} ms, max {lat['max_ms']} ms; {lat['table_rows']:,} "
                   f"jobs in the table; workers stopped (API and Postgres only); API CPU "
                   f"{lat['usage']['cpu_s']['api'] / max(lat['ok'], 1) * 1000:.2f} ms per request")
        if lat["send_lag_p99_ms"] > 5.0:
            out.append(f"  - the generator itself left late (p99 {lat['send_lag_p99_ms']} ms behind schedule): "
                       "the machine was too busy for a clean measurement")
    out += _sections(r, "details")
    if pr := r.get("cpu_probe_ms"):
        out.append("- CPU speed probe (ms for a fixed single-core loop, best of 3; lower is faster), taken before "
                   "each section once the machine had settled (up to 4 min idle): "
                   + ", ".join(f"{k} {v}" for k, v in pr.items()))
    if fc := r.get("first_chunk"):
        out.append(f"- Time to first chunk: trials {fc['trials_s']} s (submit by URI -> first chunk row DONE)")
    for note in r.get("notes", []):
        out.append(f"- {note}")
    return out


def _layout_line(r: dict) -> str:
    lay = r.get("cpu_layout")
    if not lay:
        return ""
    return (f"- CPU layout: engine limit and asrq decode {lay['decoders']} chunks side by side with "
            f"{lay['threads_each']} thread(s) each (`ASRQ_CPU_DECODERS`, `ASRQ_CPU_THREADS`; CTranslate2 "
            f"replicas sharing one copy of the weights); the naive loop is one `WhisperModel` on "
            f"{r['machine']['cores']} threads, as a user would run it")
