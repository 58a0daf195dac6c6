"""Section 1, the engine limit: the engine alone, batched, on the chunk audio, in one process.

Run as a child (``python -m bench.engine_limit IN OUT``) so its memory is its own. The audio is decoded
and cut before the clock starts; only ``Engine.transcribe_batch`` over length-sorted batches (the
transcribe worker's batch planner and budget) is timed: what the hardware can do. bench/gpu.py runs
the same child with ``device`` cuda and the FunASR engine.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Piece:
    item: int
    index: int
    start_ms: int
    end_ms: int

    @property
    def duration_s(self) -> float:
        return (self.end_ms - self.start_ms) / 1000


def main(inp: Path, out: Path) -> None:
    from app.settings import Settings
    from workers.audio import decode_to_pcm, read_pcm_window
    from workers.batching import plan_batches
    from workers.engines.base import DecodeOptions
    from workers.merge import ChunkResult, MergeOptions, merge

    from bench.measure import self_peak_rss

    cfg = json.loads(inp.read_text())
    items = cfg["items"]
    settings = Settings()
    budget_s = cfg.get("batch_audio_s") or settings.batch_audio_s
    max_items = cfg.get("batch_max_requests") or settings.batch_max_requests
    engine = load_engine(cfg.get("engine", "whisper"), cfg["model"], cfg.get("device", "cpu"), settings.cpu_threads,
                         cfg.get("cpu_decoders", settings.cpu_decoders))
    options = DecodeOptions(language=cfg.get("language"), beam_size=cfg["beam_size"])
    with tempfile.TemporaryDirectory(prefix="asrq-limit-", dir=cfg["tmp"]) as tmp:
        # decoded PCM on local disk, read per batch (as the worker reads ranges): the corpus never sits
        # whole in memory, so the peak below is the engine's, not the corpus's
        pcm = []
        for n, it in enumerate(items):
            p = Path(tmp) / f"{n}.s16le"
            with open(p, "wb") as f:
                decode_to_pcm(Path(it["path"]), f)
            pcm.append(p)
        pieces = [Piece(n, k, s, e) for n, it in enumerate(items) for k, (s, e) in enumerate(it["chunks"])]
        batches = plan_batches(pieces, lambda p: p.duration_s, budget_s, max_items)
        engine.transcribe_batch([np.zeros(16000, np.float32)], options)  # warm-up, not timed
        sync = _synchronizer(engine)

        def read(p: Piece) -> np.ndarray:
            with open(pcm[p.item], "rb") as f:
                return read_pcm_window(f, p.start_ms / 1000, p.duration_s)

        results: dict[tuple[int, int], object] = {}
        infer_s = 0.0
        t_wall = time.monotonic()
        for batch in batches:
            audios = [read(p) for p in batch]
            t0 = time.monotonic()
            texts = engine.transcribe_batch(audios, options)
            sync()
            infer_s += time.monotonic() - t0
            results.update({(p.item, p.index): t for p, t in zip(batch, texts)})
        loop_s = time.monotonic() - t_wall

    hyps = {}
    for n, it in enumerate(items):
        chunks = [ChunkResult(k, s, e, results[(n, k)].text, list(results[(n, k)].words))
                  for k, (s, e) in enumerate(it["chunks"])]
        # the same merge finalize uses, so chunk-edge handling is identical to asrq's
        merged = merge("limit", chunks, it["duration_s"], cfg.get("language"), MergeOptions(char_level=engine.char_level))
        hyps[it["name"]] = merged.text if chunks else ""
    out.write_text(json.dumps({
        "infer_s": infer_s,
        "loop_s": loop_s,
        "hyps": hyps,
        "batch_sizes": [len(b) for b in batches],
        "chunks": len(pieces),
        "chunk_audio_s": sum(p.duration_s for p in pieces),
        "peak_rss": self_peak_rss(),
    }))


def load_engine(name: str, model: str, device: str, cpu_threads: int = 0, cpu_decoders: int = 0):  # noqa: ANN201
    from workers.engines.base import EngineSpec

    if name == "whisper":
        from workers.engines.whisper_engine import WhisperEngine

        return WhisperEngine(EngineSpec("whisper", model), device, fp16=True, cpu_threads=cpu_threads,
                             cpu_decoders=cpu_decoders)
    from workers.engines.funasr_engine import FunASREngine

    return FunASREngine(EngineSpec("funasr", model), device, fp16=True)


def _synchronizer(engine):  # noqa: ANN001, ANN202
    """Results come back as Python objects, so GPU work is already finished; synchronising anyway
    keeps a lazily evaluated backend from pushing one batch's time into the next."""
    if str(getattr(engine, "device", "cpu")).startswith("cuda"):
        try:
            import torch

            if torch.cuda.is_available():
                return torch.cuda.synchronize
        except ImportError:
            pass
    return lambda: None


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
