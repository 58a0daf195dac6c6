"""The two peers of the longform section, as a user runs them: faster-whisper on the whole file
(``WhisperModel.transcribe``) and its ``BatchedInferencePipeline`` (its own Silero VAD, batch 8).

Same model files as asrq (bundled tiny.en / base, int8 on CPU), the same beam, every core this process
may use, word timestamps on. Run as a child: ``python -m bench.longform_peers IN OUT``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def main(inp: Path, out: Path) -> None:
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    from workers.engines.whisper_engine import resolve_model_path

    cfg = json.loads(inp.read_text())
    model = WhisperModel(resolve_model_path(cfg["model"]), device="cpu", compute_type="int8",
                         cpu_threads=len(os.sched_getaffinity(0)), local_files_only=True)
    batched = BatchedInferencePipeline(model) if cfg["peer"] == "batched" else None
    # English-only models are told so; a multilingual one detects, as it does for a user who names none
    language = None if model.model.is_multilingual else "en"
    list(model.transcribe(np.zeros(16000, np.float32), beam_size=cfg["beam_size"], language="en")[0])  # warm-up
    results = {}
    for it in cfg["items"]:
        t0 = time.monotonic()
        if batched is not None:
            segments, _ = batched.transcribe(it["path"], beam_size=cfg["beam_size"], batch_size=8,
                                             word_timestamps=True, language=language)
        else:
            segments, _ = model.transcribe(it["path"], beam_size=cfg["beam_size"], word_timestamps=True,
                                           language=language)
        words = [[round(w.start, 3), round(w.end, 3), w.word.strip()] for s in segments for w in (s.words or [])]
        results[it["name"]] = {"words": words, "wall_s": time.monotonic() - t0}
    out.write_text(json.dumps({"results": results}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
