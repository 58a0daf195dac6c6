"""Section ``longform``: long recordings, asrq against what a user gets from faster-whisper (issue 16).

On the long-form set (bench/longset.py), for each model (tiny.en; full mode also bundled:base), beam 5,
the same cores:
  - asrq embedded (``asrq transcribe``: the real jobs, tasks and worker on SQLite and a local folder);
  - asrq on the distributed stack (full mode: API, Postgres, Redis, S3, one CPU and one transcribe worker);
  - faster-whisper on the whole file (``WhisperModel.transcribe``: sequential 30 s windows, previous text
    as the prompt);
  - faster-whisper's ``BatchedInferencePipeline`` (its own Silero VAD, batch 8).
Per recording and overall: WER, and the sentence-start error: each sentence's (or clip's) known start
against the start of the hypothesis word aligned to its first word (a sentence whose first word is
missing counts as misplaced). Writes bench/LONGFORM.md (quick: bench/LONGFORM-quick.md).

Results are cached under bench/work/longform/results by recording, model and system (asrq's also by the
code's fingerprint), so a rerun measures only what changed.
"""

from __future__ import annotations

import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench import longset
from bench.measure import child_env, run_child

ROOT = Path(__file__).resolve().parents[1]
BEAM = 5
START_TOL_S = 0.3
RESULTS = longset.FOLDER / "results"
PEERS = ("fw-file", "fw-batched")
SYSTEM_NAMES = {"asrq": "asrq embedded", "asrq-stack": "asrq stack", "fw-file": "faster-whisper file",
                "fw-batched": "faster-whisper batched"}


# --- scoring -----------------------------------------------------------------------------------------

def _tokens(words: list) -> list[tuple[str, float]]:
    from tests.wer import normalise

    return [(t, float(w[0])) for w in words for t in normalise(str(w[2])).split()]


def score(rec: longset.Built, words: list) -> dict:
    """WER counts and sentence-start errors of one recording's hypothesis words ([start_s, end_s, word])."""
    import jiwer

    from tests.wer import normalise

    ref: list[str] = []
    firsts: dict[int, float] = {}  # reference token index -> its sentence's start
    for start_s, text in rec.starts:
        toks = normalise(text).split()
        if toks:
            firsts[len(ref)] = start_s
            ref += toks
    hyp = _tokens(words)
    hyp_text = " ".join(t for t, _ in hyp)
    out = jiwer.process_words(" ".join(ref), hyp_text or "<empty>")
    errors = out.substitutions + out.deletions + out.insertions
    aligned: dict[int, int] = {}
    for chunk in out.alignments[0]:
        if chunk.type in ("equal", "substitute"):
            for k in range(chunk.ref_end_idx - chunk.ref_start_idx):
                aligned[chunk.ref_start_idx + k] = chunk.hyp_start_idx + k
    offsets = []
    for i, start_s in firsts.items():
        j = aligned.get(i)
        offsets.append(abs(hyp[j][1] - start_s) if j is not None and hyp_text else None)
    return {"ref_words": len(ref), "errors": errors, "sentences": len(offsets),
            "within": sum(1 for o in offsets if o is not None and o <= START_TOL_S),
            "missing_first_word": sum(1 for o in offsets if o is None),
            "median_start_err_s": statistics.median([o for o in offsets if o is not None] or [0.0]),
            "worst_start_err_s": max([o for o in offsets if o is not None] or [0.0])}


def totals(scores: list[dict]) -> dict:
    ref = sum(s["ref_words"] for s in scores)
    n = sum(s["sentences"] for s in scores)
    return {"wer": sum(s["errors"] for s in scores) / ref if ref else 0.0,
            "starts_ok": sum(s["within"] for s in scores) / n if n else 1.0}


# --- systems -----------------------------------------------------------------------------------------

def asrq_fingerprint() -> str:
    from bench.run import code_state

    return code_state()["fingerprint"]


def _cache(system: str, model: str, rec: longset.Built, key: str) -> Path:
    return RESULTS / f"{system}-{model.replace(':', '_')}-{rec.name}-{key}.json"


def run_system(system: str, model: str, recs: list[longset.Built], log=print) -> dict[str, dict]:
    """{recording: {"words": [...], "wall_s": ...}} for one system and model, cached."""
    key = longset.spec_key() + ("-" + asrq_fingerprint() if system.startswith("asrq") else "")
    found = {r.name: json.loads(_cache(system, model, r, key).read_text()) for r in recs
             if _cache(system, model, r, key).exists()}
    todo = [r for r in recs if r.name not in found]
    if todo:
        log(f"longform: {SYSTEM_NAMES[system]}, {model}, {len(todo)} recordings "
            f"({sum(r.duration_s for r in todo) / 60:.1f} min)")
        if system in PEERS:
            got = run_child("bench.longform_peers", {"peer": system.split("-")[1], "model": model, "beam_size": BEAM,
                                                     "items": [{"name": r.name, "path": r.path} for r in todo]})["results"]
        elif system == "asrq":
            got = _embedded(model, todo)
        else:
            got = _on_stack(model, todo, log)
        RESULTS.mkdir(parents=True, exist_ok=True)
        for r in todo:
            _cache(system, model, r, key).write_text(json.dumps(got[r.name]))
            found[r.name] = got[r.name]
    return found


def _words_of(doc: dict) -> list:
    return [[w["start"], w["end"], w["word"]] for s in doc["segments"] for w in s["words"]]


def _embedded(model: str, recs: list[longset.Built]) -> dict[str, dict]:
    """``asrq transcribe`` as a user runs it (its own home folder, so nothing of an earlier run is reused)."""
    import shutil

    home = longset.FOLDER / "embedded-home"
    out = longset.FOLDER / "embedded-out"
    shutil.rmtree(home, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    # the peers' environment (one OpenMP thread, as every measured process of the bench): CTranslate2's
    # numerics, and so beam search's close calls, may differ with the thread setting
    env = child_env() | {"ASRQ_HOME": str(home)}
    t0 = time.monotonic()
    cmd = [str(Path(sys.executable).parent / "asrq"), "transcribe", "--format", "json", "--out", str(out),
           "--model", model, *[r.path for r in recs]]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"asrq transcribe failed: {done.stderr[-3000:]}")
    wall = time.monotonic() - t0
    return {r.name: {"words": _words_of(json.loads((out / f"{Path(r.path).stem}.json").read_text())),
                     "wall_s": wall * r.duration_s / sum(x.duration_s for x in recs)} for r in recs}


def _on_stack(model: str, recs: list[longset.Built], log) -> dict[str, dict]:
    from bench import stack
    from bench.corpus import Item

    items = [Item(r.name + ".flac", r.path, r.duration_s, r.reference, "long") for r in recs]
    with stack.running_stack(longset.FOLDER / "stack", log=log) as b:
        stack.upload(b, items)
        t0 = time.monotonic()
        with b.client() as c:
            ids = c.submit_batch([b.uri(i.name) for i in items], {"model": model})  # beam 5: the default
        stack.wait_terminal(b, ids, timeout_s=max(1800.0, 2 * sum(r.duration_s for r in recs)))
        wall = time.monotonic() - t0
        out = {}
        with b.client() as c:
            for r, jid in zip(recs, ids):
                doc = json.loads(c.transcript(jid, "json"))
                out[r.name] = {"words": _words_of(doc), "wall_s": wall * r.duration_s / sum(x.duration_s for x in recs)}
    return out


# --- the section -------------------------------------------------------------------------------------

def run(quick: bool, log=print, models: list[str] | None = None, systems: list[str] | None = None,
        names: list[str] | None = None) -> dict:
    """The section; ``models``/``systems``/``names`` narrow the full mode (for investigating one figure)."""
    recs = longset.build(longset.QUICK if quick else names, log=log)
    models = models or (["bundled:tiny.en"] if quick else ["bundled:tiny.en", "bundled:base"])
    systems = systems or (["asrq", *PEERS] if quick else ["asrq", "asrq-stack", *PEERS])
    table: dict = {}
    for model in models:
        for system in systems:
            got = run_system(system, model, recs, log)
            table.setdefault(model, {})[system] = {r.name: {**score(r, got[r.name]["words"]),
                                                            "wall_s": got[r.name]["wall_s"]} for r in recs}
    return {"recordings": [{"name": r.name, "duration_s": r.duration_s, "half": r.half,
                            "sentences": len(r.starts)} for r in recs],
            "models": models, "systems": systems, "table": table, "targets": targets(table, systems)}


def targets(table: dict, systems: list[str]) -> dict:
    """Issue 16's targets per model: overall WER <= the better peer's, no recording worse than the better
    peer + 1 point, 98 % of sentence starts within 0.3 s."""
    out = {}
    for model, by_sys in table.items():
        if not all(p in by_sys for p in PEERS):
            continue  # a narrowed run without both peers: nothing to compare with
        peer = min(PEERS, key=lambda p: totals(list(by_sys[p].values()))["wer"])
        for system in (s for s in systems if s.startswith("asrq")):
            mine = totals(list(by_sys[system].values()))
            best = totals(list(by_sys[peer].values()))
            worst = max(by_sys[system][n]["errors"] / by_sys[system][n]["ref_words"]
                        - min(by_sys[p][n]["errors"] / by_sys[p][n]["ref_words"] for p in PEERS)
                        for n in by_sys[system])
            out[f"{model} {system}"] = {"wer_ok": mine["wer"] <= best["wer"], "worst_vs_peer_pts": 100 * worst,
                                        "per_recording_ok": worst <= 0.01, "starts_ok": mine["starts_ok"] >= 0.98,
                                        "better_peer": peer, "wer": mine["wer"], "peer_wer": best["wer"],
                                        "starts": mine["starts_ok"]}
    return out


def checks(res: dict) -> list:
    from bench.report import Check

    out = []
    for k, t in res["targets"].items():
        out.append(Check(f"longform {k}: WER <= better peer's ({t['better_peer']})", t["wer_ok"],
                         f"{100 * t['wer']:.2f} % vs {100 * t['peer_wer']:.2f} %"))
        out.append(Check(f"longform {k}: no recording > better peer + 1 pt", t["per_recording_ok"],
                         f"worst {t['worst_vs_peer_pts']:+.2f} pts"))
        out.append(Check(f"longform {k}: >= 98 % of sentence starts within {START_TOL_S} s", t["starts_ok"],
                         f"{t['starts']:.1%}"))
    return out


def summary(res: dict) -> list[str]:
    total_min = sum(r["duration_s"] for r in res["recordings"]) / 60
    out = [f"- Long-form accuracy ({len(res['recordings'])} recordings, {total_min:.0f} min; per recording: {res['file']}):"]
    for model in res["models"]:
        cells = [f"{SYSTEM_NAMES[s]} {100 * (sm := totals(list(res['table'][model][s].values())))['wer']:.2f} % "
                 f"WER, {sm['starts_ok']:.0%} starts" for s in res["systems"]]
        out.append(f"  - {model}: " + "; ".join(cells))
    return out


details = summary  # the report's details list the same lines


def write(res: dict, quick: bool, command: str, dest: Path | None = None) -> Path:
    dest = dest or ROOT / "bench" / ("LONGFORM-quick.md" if quick else "LONGFORM.md")
    res["file"] = str(dest.relative_to(ROOT))
    dest.write_text(markdown(res, command))
    return dest


def markdown(res: dict, command: str) -> str:
    about = (f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; beam {BEAM}; "
             f"{len(os.sched_getaffinity(0))} cores. WER after tests/wer.py's normalisation; *starts*: sentences whose "
             f"first word is placed within {START_TOL_S} s of where it is spoken (a missing first word counts as "
             "misplaced). Recordings: bench/longset.py (`tune_*`: the tuning half, `report_*`: the report half).")
    lines = ["# Long-form accuracy: asrq against faster-whisper (bench section `longform`)", "",
             f"Command: `{command}`  ", about, ""]
    for model in res["models"]:
        by_sys = res["table"][model]
        systems = res["systems"]
        lines += [f"## {model}", "", "| recording | min | " + " | ".join(f"{SYSTEM_NAMES[s]} WER / starts" for s in systems) + " |",
                  "|---|---|" + "---|" * len(systems)]
        for r in res["recordings"]:
            cells = [f"{100 * by_sys[s][r['name']]['errors'] / by_sys[s][r['name']]['ref_words']:.2f} % / "
                     f"{by_sys[s][r['name']]['within'] / max(1, by_sys[s][r['name']]['sentences']):.0%}" for s in systems]
            lines.append(f"| {r['name']} | {r['duration_s'] / 60:.1f} | " + " | ".join(cells) + " |")
        for half in ("tune", "report", None):
            names = [r["name"] for r in res["recordings"] if half is None or r["half"] == half]
            if not names or (half and len(names) == len(res["recordings"])):
                continue
            cells = []
            for s in systems:
                sm = totals([by_sys[s][n] for n in names])
                cells.append(f"**{100 * sm['wer']:.2f} % / {sm['starts_ok']:.1%}**")
            lines.append(f"| **{half or 'all'}** | {sum(r['duration_s'] for r in res['recordings'] if r['name'] in names) / 60:.0f} | "
                         + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Targets (issue 16)", "",
              "| model, system | WER <= better peer | worst recording vs best peer | starts >= 98 % |",
              "|---|---|---|---|"]
    for k, t in res["targets"].items():
        lines.append(f"| {k} | {'PASS' if t['wer_ok'] else 'MISS'} (peer: {t['better_peer']}) | "
                     f"{t['worst_vs_peer_pts']:+.2f} pts {'PASS' if t['per_recording_ok'] else 'MISS'} | "
                     f"{'PASS' if t['starts_ok'] else 'MISS'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m bench.longform", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--models", default="", help="comma-separated (default: tiny.en and base; quick: tiny.en)")
    ap.add_argument("--systems", default="", help=f"comma-separated subset of asrq,asrq-stack,{','.join(PEERS)}")
    ap.add_argument("--recordings", default="", help="comma-separated names from bench/longset.py (default: all)")
    ap.add_argument("--out", default="", help="the markdown file (default: bench/LONGFORM.md, quick: LONGFORM-quick.md)")
    args = ap.parse_args(argv)

    def listed(v: str) -> list[str] | None:
        return [x.strip() for x in v.split(",") if x.strip()] or None

    res = run(args.quick, print, listed(args.models), listed(args.systems), listed(args.recordings))
    command = " ".join(shlex.quote(a) for a in ["python", "-m", "bench.longform", *(argv or sys.argv[1:])])
    print(write(res, args.quick, command, Path(args.out).resolve() if args.out else None).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
