"""Prepare's memory against recording length: a short and a long recording (10 min / 2 h; quick mode
2 min / 24 min) each go through prepare's core in a fresh child process — decode_to_pcm to a temp
file, FSMN-VAD over windows read back from it, plan_chunks — and the child reports its own peak RSS
(the kernel's high-water mark, so no spike is missed between samples).

Child: ``python -m bench.prepare_mem IN OUT``.
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import time
from pathlib import Path

import soundfile as sf


def main(inp: Path, out: Path) -> None:
    from app.settings import Settings
    from bench.corpus import chunking_options
    from bench.measure import self_peak_rss
    from workers.audio import decode_to_pcm, pcm_to_float
    from workers.chunking import plan_chunks
    from workers.vad_onnx import vad_segments, warm_vad

    cfg = json.loads(inp.read_text())
    opts, window_s, silence_ms = chunking_options()
    runtime = Settings().vad_runtime
    warm_vad(runtime)
    baseline = self_peak_rss()  # interpreter + VAD model (+ torch and FunASR on the torch runtime), before any audio
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="asrq-mem-", dir=cfg["tmp"]) as tmp:
        pcm = Path(tmp) / "audio.s16le"
        with open(pcm, "wb") as f:
            info = decode_to_pcm(Path(cfg["path"]), f)
        block = int(window_s * 16000) * 2
        with open(pcm, "rb") as f:
            def windows():  # noqa: ANN202
                while data := f.read(block):
                    yield pcm_to_float(data)

            segments = vad_segments(windows(), silence_ms, runtime)
    plans = plan_chunks(segments, int(info.duration_s * 1000), opts)
    out.write_text(json.dumps({"duration_s": info.duration_s, "segments": len(segments), "chunks": len(plans),
                               "seconds": time.monotonic() - t0, "baseline_rss": baseline,
                               "peak_rss": self_peak_rss()}))


def recording(duration_s: float, log=print) -> Path:  # noqa: ANN001
    """Real clips and espeak-ng sentences with pauses, FLAC, built once and kept under bench/work/mem/."""
    from bench.corpus import WORK, Speech, write_long

    dest = WORK / "mem" / f"mem_{int(duration_s)}s.flac"
    if not dest.exists() or sf.info(str(dest)).duration < duration_s - 60:
        dest.parent.mkdir(parents=True, exist_ok=True)
        log(f"writing {duration_s / 60:.0f}-minute recording {dest.name}")
        part = dest.with_suffix(".part.flac")
        write_long(part, duration_s, random.Random(duration_s).randrange(10**6), Speech(WORK / "tts"))
        part.rename(dest)
    return dest


def measure(short_s: float, long_s: float, log=print) -> dict:  # noqa: ANN001
    from bench.corpus import WORK
    from bench.measure import run_child

    out = {}
    for label, dur in (("short", short_s), ("long", long_s)):
        path = recording(dur, log)
        log(f"prepare memory: {label} recording ({dur / 60:.0f} min)")
        out[label] = run_child("bench.prepare_mem", {"path": str(path), "tmp": str(WORK)})
    out["ratio"] = out["long"]["peak_rss"] / out["short"]["peak_rss"]
    return out


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
