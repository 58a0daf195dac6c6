"""Prepare's CPU per audio second, before and after issue 18: FSMN-VAD on the torch runtime (FunASR's fbank
and network) and files opened with FFmpeg's full probe, against the ONNX runtime (workers/vad_onnx.py) and
the short probe (workers.audio.PROBE_BYTES), side by side in one child process on one thread, timed in CPU
seconds of that process, in alternating order so that drift hits both:

- whole prepare (what the prepare task does between claiming the job and writing its chunk rows:
  workers.tasks.prepare._decode_and_plan on a local-folder store: fetch the upload, decode to 16 kHz
  PCM, store the PCM, VAD over windows read back from it, plan the chunks) on 10 s clips (the English
  clips of shared/audio cut into 10 s pieces, at 16/22.05/44.1/48 kHz, FLAC and WAV) and on one long
  recording (1 h; quick mode 10 min) of clips and espeak-ng sentences; target >= 300x real time per core;
- VAD alone on every corpus recording, with the segments of both runtimes compared (within 10 ms);
- the floor: the FSMN's multiply-adds per audio second (from its dimensions) at this core's
  multiply-add rate (a large float32 numpy matmul, one thread), and prepare's CPU over it.

Child: ``python -m bench.vad_speed IN OUT``.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

TARGET_XRT = 300.0
TOLERANCE_MS = 10
CLIP_S = 10.0


def _timed(fn):  # noqa: ANN001, ANN202
    t0 = time.process_time()
    out = fn()
    return out, time.process_time() - t0


def _close(a: list, b: list) -> bool:
    return len(a) == len(b) and all(abs(x[0] - y[0]) <= TOLERANCE_MS and abs(x[1] - y[1]) <= TOLERANCE_MS
                                    for x, y in zip(a, b))


def matmul_macs_per_s(n: int = 1024, repeats: int = 5) -> float:
    """Multiply-adds per second of one core: a float32 n x n x n numpy matmul, best of ``repeats``."""
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), np.float32), rng.random((n, n), np.float32)
    a @ b  # noqa: B018 - warm-up
    best = min(_timed(lambda: a @ b)[1] for _ in range(repeats))
    return n ** 3 / best


def main(inp: Path, out: Path) -> None:
    import uuid

    import numpy as np

    from app.constants import source_key
    from app.settings import Settings
    from app.storage import LocalStore
    from bench.corpus import chunking_options, decode16k
    from workers import audio
    from workers.tasks import prepare as prepare_module
    from workers.tasks.prepare import _decode_and_plan
    from workers.vad_onnx import load_fsmn, multiply_adds_per_frame, vad_segments, warm_vad

    cfg = json.loads(inp.read_text())
    _, window_s, silence_ms = chunking_options()
    base = Settings()
    runtimes = ("torch", "onnx")
    for r in runtimes:
        warm_vad(r)
    decode_to_pcm = audio.decode_to_pcm
    full_probe = functools.partial(decode_to_pcm, probe_bytes=None)
    store = LocalStore(Path(cfg["tmp"]) / f"vad-speed-store-{os.getpid()}")
    settings = {r: base.model_copy(update={"vad_runtime": r}) for r in runtimes}

    def prepare(path: Path, runtime: str) -> tuple[list, float]:
        """Prepare's own steps for an uploaded file; returns the plans and the CPU seconds. On the torch
        runtime prepare also opens files as before issue 18, with FFmpeg's full probe."""
        prepare_module.decode_to_pcm = full_probe if runtime == "torch" else decode_to_pcm
        job_id = uuid.uuid4()
        store.put_file(source_key(job_id, path.name), path)  # the upload: the API's work, not timed
        (plans, _), cpu_s = _timed(lambda: _decode_and_plan(job_id, "bench", f"upload:{path.name}", path.name,
                                                            {}, store, settings[runtime]))
        store.delete_prefix(str(job_id))
        return plans, cpu_s

    def both(path: Path, n: int) -> dict:
        order = runtimes if n % 2 else runtimes[::-1]
        res = {r: prepare(path, r) for r in order}
        return {"cpu_s": {r: res[r][1] for r in runtimes},
                "same_plans": [(p.start_ms, p.end_ms) for p in res["torch"][0]]
                == [(p.start_ms, p.end_ms) for p in res["onnx"][0]]}

    first = Path(cfg["clips"][0])
    for r in runtimes:
        prepare(first, r)  # warm-up: lazy imports, first allocations
    clips = []
    for n, p in enumerate(cfg["clips"]):
        row = both(Path(p), n)
        row["audio_s"] = CLIP_S
        clips.append(row)
    long_row = both(Path(cfg["long"]), 0)
    long_row["audio_s"] = cfg["long_s"]

    block = int(window_s * 16000)
    vad_rows = []
    for n, item in enumerate(cfg["items"]):
        audio = decode16k(Path(item["path"]))

        def windows(audio=audio):  # noqa: ANN001, ANN202
            return (audio[i:i + block] for i in range(0, len(audio), block))

        order = runtimes if n % 2 else runtimes[::-1]
        res = {r: _timed(lambda r=r: vad_segments(windows(), silence_ms, r)) for r in order}
        old, new = res["torch"][0], res["onnx"][0]
        vad_rows.append({"name": item["name"], "kind": item["kind"], "audio_s": len(audio) / 16000,
                         "cpu_s": {r: res[r][1] for r in runtimes}, "segments": len(old),
                         "identical": new == old, "close": _close(old, new)})

    # the network alone, on 60 s of prepared features (what the floor bounds)
    model = load_fsmn()
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((1, 6000, 400), dtype=np.float32)
    caches = {f"in_cache{i}": np.zeros(s, np.float32) for i, s in enumerate(model.cache_shapes)}
    model.session.run(None, {"speech": feats, **caches})
    net_s = min(_timed(lambda: model.session.run(None, {"speech": feats, **caches}))[1] for _ in range(3)) / 60.0
    frames_per_s = 16000 / model.fbank.frame_shift
    out.write_text(json.dumps({
        "window_s": window_s, "silence_ms": silence_ms, "clips": clips, "long": long_row, "vad": vad_rows,
        "macs_per_frame": multiply_adds_per_frame(model.encoder_conf), "frames_per_audio_s": frames_per_s,
        "core_macs_per_s": matmul_macs_per_s(), "network_cpu_per_audio_s": net_s}))


# --- the recordings ------------------------------------------------------------------------------------

def ten_second_clips(log=print) -> list[Path]:  # noqa: ANN001
    """The English clips of shared/audio end to end, cut into 10 s pieces, each re-encoded at one of the
    corpus's rates as FLAC or WAV (uploads come in all of them); built once under bench/work/clips10/."""
    import numpy as np
    import soundfile as sf

    from bench.corpus import AUDIO, CLIPS, RATES, WORK, decode16k

    folder = WORK / "clips10"
    done = folder / "done"
    if not done.exists():
        log("cutting the English clips into 10 s pieces")
        folder.mkdir(parents=True, exist_ok=True)
        stream = np.concatenate([decode16k(AUDIO / c) for c in CLIPS])
        n = int(len(stream) // (CLIP_S * 16000))
        for i in range(n):
            piece = stream[int(i * CLIP_S * 16000):int((i + 1) * CLIP_S * 16000)]
            raw = folder / f"raw_{i:02d}.wav"
            sf.write(str(raw), piece, 16000, "PCM_16")
            dest = folder / f"clip_{i:02d}.{'flac' if i % 2 else 'wav'}"
            subprocess.run(["sox", str(raw), "-r", str(RATES[i % len(RATES)]), str(dest)], check=True,
                           capture_output=True)
            raw.unlink()
        done.write_text(str(n))
    return sorted(folder.glob("clip_*"))


def measure(items: list, quick: bool = False, log=print) -> dict:  # noqa: ANN001
    from bench.corpus import WORK
    from bench.measure import run_child
    from bench.prepare_mem import recording

    long_s = 600.0 if quick else 3600.0
    clips = ten_second_clips(log)
    long_path = recording(long_s, log)
    log(f"prepare CPU: torch vs ONNX VAD on {len(clips)} 10 s clips, a {long_s / 60:.0f} min recording and "
        f"VAD alone on {len(items)} corpus recordings, side by side")
    r = run_child("bench.vad_speed", {"items": [{"name": i.name, "path": i.path, "kind": i.kind} for i in items],
                                      "clips": [str(p) for p in clips], "long": str(long_path), "long_s": long_s,
                                      "tmp": str(WORK)})
    out = {k: r[k] for k in ("window_s", "silence_ms", "macs_per_frame", "frames_per_audio_s", "core_macs_per_s",
                             "network_cpu_per_audio_s")}
    out["clips"] = _totals(r["clips"])
    out["clips"]["same_plans"] = sum(x["same_plans"] for x in r["clips"])
    out["long"] = _totals([r["long"]])
    out["long"]["same_plans"] = int(r["long"]["same_plans"])
    vad = r["vad"]
    out["vad"] = _totals(vad)
    out["vad"].update(identical=sum(x["identical"] for x in vad), close=sum(x["close"] for x in vad),
                      segments=sum(x["segments"] for x in vad), far=[x["name"] for x in vad if not x["close"]])
    # the floor: the network's multiply-adds for one audio second at this core's rate
    out["floor_ms_per_audio_s"] = 1000 * out["macs_per_frame"] * out["frames_per_audio_s"] / out["core_macs_per_s"]
    out["usage"] = r["usage"]
    return out


def _totals(rows: list[dict]) -> dict:
    audio = sum(r["audio_s"] for r in rows)
    out: dict = {"recordings": len(rows), "audio_s": audio}
    for rt in ("torch", "onnx"):
        cpu = sum(r["cpu_s"][rt] for r in rows)
        out[rt] = {"cpu_s": cpu, "ms_per_audio_s": 1000 * cpu / audio, "xrt_per_core": audio / cpu}
    return out


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))


# --- report ------------------------------------------------------------------------------------------------

def checks(v: dict) -> list:
    from bench.report import Check

    vad = v["vad"]
    n = vad["recordings"]
    detail = f"{vad['close']}/{n} recordings ({vad['identical']} identical), {vad['segments']:,} segments"
    if vad["far"]:
        detail += "; differ: " + ", ".join(vad["far"][:5])
    out = [Check(f"ONNX VAD gives the torch path's segments (within {TOLERANCE_MS} ms) on every corpus recording",
                 vad["close"] == n, detail)]
    for key, label in (("clips", f"{CLIP_S:.0f} s clips"), ("long", f"{v['long']['audio_s'] / 60:.0f} min recording")):
        t = v[key]
        out.append(Check(f"prepare >= {TARGET_XRT:.0f}x real time per core on {label} (decode + VAD + bookkeeping)",
                         t["onnx"]["xrt_per_core"] >= TARGET_XRT,
                         f"{t['onnx']['xrt_per_core']:.0f}x ({t['onnx']['ms_per_audio_s']:.2f} ms CPU per audio s), "
                         f"before {t['torch']['xrt_per_core']:.0f}x"))
    return out


def _line(t: dict, floor_ms: float) -> str:
    o, old = t["onnx"], t["torch"]
    return (f"before (torch) {old['ms_per_audio_s']:.2f} ms CPU per audio s ({old['xrt_per_core']:.0f}x real time "
            f"per core), after (ONNX) {o['ms_per_audio_s']:.2f} ms ({o['xrt_per_core']:.0f}x), "
            f"{old['cpu_s'] / o['cpu_s']:.2f}x less CPU; {o['ms_per_audio_s'] / floor_ms:.1f}x the floor")


def summary(v: dict) -> list[str]:
    f = v["floor_ms_per_audio_s"]
    out = [f"prepare, {v['clips']['recordings']} x {CLIP_S:.0f} s clips: " + _line(v["clips"], f),
           f"prepare, {v['long']['audio_s'] / 60:.0f} min recording: " + _line(v["long"], f),
           f"VAD alone ({v['vad']['audio_s']:.0f} s of corpus audio): " + _line(v["vad"], f),
           (f"floor: {v['macs_per_frame'] * v['frames_per_audio_s'] / 1e6:.1f} M multiply-adds per audio s at "
            f"{v['core_macs_per_s'] / 1e9:.1f} G/s (numpy matmul, one core) = {f:.2f} ms per audio s "
            f"({1000 / f:.0f}x real time); the ONNX network alone {1000 * v['network_cpu_per_audio_s']:.2f} ms"), ""]
    return out


def details(v: dict) -> list[str]:
    f = v["floor_ms_per_audio_s"]
    return [(f"- prepare's CPU (workers.tasks.prepare._decode_and_plan on a local-folder store: fetch, decode to "
             f"16 kHz PCM, store it, VAD over {v['window_s']:g} s windows read back, plan chunks; "
             f"{v['silence_ms']} ms end silence), before (torch VAD, FFmpeg's full probe) and after (ONNX VAD, "
             f"short probe) side by side in one process on one thread:"),
            f"  - {v['clips']['recordings']} x {CLIP_S:.0f} s clips (16-48 kHz, FLAC and WAV): "
            + _line(v["clips"], f) + f"; same chunk plans on {v['clips']['same_plans']}/{v['clips']['recordings']}",
            f"  - a {v['long']['audio_s'] / 60:.0f} min recording (FLAC, clips and espeak-ng sentences): "
            + _line(v["long"], f) + f"; same chunk plans: {'yes' if v['long']['same_plans'] else 'no'}",
            f"  - VAD alone on {v['vad']['recordings']} corpus recordings ({v['vad']['audio_s']:.0f} s): "
            + _line(v["vad"], f),
            (f"  - floor: the FSMN's {v['macs_per_frame']:,} multiply-adds per frame x {v['frames_per_audio_s']:.0f} "
             f"frames per audio s at {v['core_macs_per_s'] / 1e9:.1f} G multiply-adds/s (float32 1024^3 numpy "
             f"matmul, one thread) = {f:.2f} ms per audio s; the ONNX network alone "
             f"{1000 * v['network_cpu_per_audio_s']:.2f} ms "
             f"({1000 * v['network_cpu_per_audio_s'] / f:.1f}x the floor)")]
