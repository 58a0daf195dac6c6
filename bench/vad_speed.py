"""VAD speed: FunASR's per-frame decision pass against the numpy one, side by side on the corpus.

One child process (torch on one thread, as prepare runs it) decodes each corpus recording once to
16 kHz PCM in memory, cuts prepare's windows (ASRQ_VAD_WINDOW_S, ASRQ_VAD_MAX_END_SILENCE_MS), and
times in CPU seconds of that process, in alternating order per recording so that drift hits both:
  - old: workers.vad.speech_segments(decision="funasr"), FunASR's AutoModel.generate per window;
  - new: speech_segments(decision="numpy"), what prepare runs;
  - floor: FunASR's fbank and network alone (workers.vad.network_calls), under any decision pass;
  - decision: the numpy pass alone (workers.vad.decide_pieces) on the floor's output.
Every recording's segments from old and new are compared for equality.

Child: ``python -m bench.vad_speed IN OUT``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def _timed(fn):  # noqa: ANN001, ANN202
    t0 = time.process_time()
    out = fn()
    return out, time.process_time() - t0


def main(inp: Path, out: Path) -> None:
    from bench.corpus import chunking_options, decode16k
    from workers.vad import decide_pieces, load_vad, network_calls, speech_segments
    from workers.vad_decide import decision_options

    cfg = json.loads(inp.read_text())
    _, window_s, silence_ms = chunking_options()
    model = load_vad()
    opts = decision_options(model.model.vad_opts, silence_ms)
    block = int(window_s * 16000)
    rows = []
    for n, item in enumerate(cfg["items"]):
        audio = decode16k(Path(item["path"]))

        def windows():  # noqa: ANN202
            return (audio[i:i + block] for i in range(0, len(audio), block))

        def run(decision: str):  # noqa: ANN202
            return _timed(lambda: speech_segments(windows(), silence_ms, decision=decision, model=model))

        if n == 0:
            run("funasr"), run("numpy")  # warm-up: first calls pay for lazy imports and allocations
        if n % 2:
            (new, new_s), (old, old_s) = run("numpy"), run("funasr")
        else:
            (old, old_s), (new, new_s) = run("funasr"), run("numpy")
        calls, floor_s = _timed(lambda: list(network_calls(model, windows())))
        _, decide_s = _timed(lambda: decide_pieces(calls, opts))
        rows.append({"name": item["name"], "kind": item["kind"], "audio_s": len(audio) / 16000,
                     "old_s": old_s, "new_s": new_s, "floor_s": floor_s, "decide_s": decide_s,
                     "segments": len(old), "identical": new == old})
    out.write_text(json.dumps({"window_s": window_s, "silence_ms": silence_ms, "rows": rows}))


def _totals(rows: list[dict]) -> dict:
    audio = sum(r["audio_s"] for r in rows)
    t = {k: sum(r[k] for r in rows) for k in ("old_s", "new_s", "floor_s", "decide_s")}
    return {"recordings": len(rows), "audio_s": audio, **t,
            # CPU ms per audio second, and audio seconds per CPU second (x real time on one core)
            **{f"{k[:-2]}_ms_per_audio_s": 1000 * v / audio for k, v in t.items()},
            **{f"{k[:-2]}_xrt_per_core": audio / v for k, v in t.items()}}


def measure(items: list, log=print) -> dict:  # noqa: ANN001
    from bench.corpus import WORK
    from bench.measure import run_child

    log(f"VAD: FunASR's decision pass vs the numpy pass on {len(items)} corpus recordings, side by side")
    r = run_child("bench.vad_speed", {"items": [{"name": i.name, "path": i.path, "kind": i.kind} for i in items],
                                      "tmp": str(WORK)})
    rows = r["rows"]
    out = {"window_s": r["window_s"], "silence_ms": r["silence_ms"], "all": _totals(rows),
           "identical": sum(x["identical"] for x in rows), "segments": sum(x["segments"] for x in rows),
           "mismatches": [x["name"] for x in rows if not x["identical"]], "usage": r["usage"]}
    for kind in ("short", "long"):
        part = [x for x in rows if x["kind"] == kind]
        if part:
            out[kind] = _totals(part)
    return out


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))


# --- report ------------------------------------------------------------------------------------------------

def checks(v: dict) -> list:
    from bench.report import Check

    n = v["all"]["recordings"]
    detail = f"{v['identical']}/{n} recordings, {v['segments']:,} segments"
    if v["mismatches"]:
        detail += "; differ: " + ", ".join(v["mismatches"][:5])
    return [Check("VAD numpy decision pass gives FunASR's segments on every corpus recording",
                  v["identical"] == n, detail)]


def _line(t: dict) -> str:
    return (f"FunASR's pass {t['old_ms_per_audio_s']:.2f} ms per audio s ({t['old_xrt_per_core']:.0f}x real time "
            f"per core), numpy pass {t['new_ms_per_audio_s']:.2f} ms ({t['new_xrt_per_core']:.0f}x), "
            f"{t['old_s'] / t['new_s']:.2f}x faster; FunASR's fbank + network alone {t['floor_ms_per_audio_s']:.2f} ms "
            f"({t['floor_xrt_per_core']:.0f}x); the numpy decision alone {t['decide_ms_per_audio_s']:.3f} ms, "
            f"FunASR's (its pass minus fbank + network) {t['old_ms_per_audio_s'] - t['floor_ms_per_audio_s']:.2f} ms")


def summary(v: dict) -> list[str]:
    return [f"VAD ({v['all']['audio_s']:.0f} s of audio, CPU time of one process): " + _line(v["all"]), ""]


def details(v: dict) -> list[str]:
    out = [f"- VAD, FunASR's per-frame decision pass vs the numpy pass (workers/vad_decide.py), side by side in one "
           f"process on one thread, CPU time, prepare's {v['window_s']:g} s windows and {v['silence_ms']} ms end "
           f"silence; {v['all']['recordings']} recordings, {v['all']['audio_s']:.0f} s: " + _line(v["all"])]
    for kind in ("short", "long"):
        if kind in v:
            t = v[kind]
            out.append(f"  - {kind} recordings ({t['recordings']}, {t['audio_s']:.0f} s): " + _line(t))
    return out
