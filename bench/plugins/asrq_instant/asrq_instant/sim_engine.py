"""The simulated accelerator itself (see asrq_instant.sim): imported only where a sim model loads."""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asrq_instant.sim import MARKER
from workers.batching import MemoryCost
from workers.engines.base import SAMPLE_RATE, ChunkText, DecodeOptions, Engine, EngineOutOfMemory, EngineSpec, Word

WORD = "sim"
WORD_S = 0.3


@dataclass(frozen=True)
class SimCard:
    rtfx: float
    launch_ms: float
    free_bytes: float
    bytes_per_s: float
    fixed_bytes: float
    batch_log: str | None = None
    begin_log: str | None = None  # a line as each batch begins (the chaos soak counts the audio given)


class SimEngine(Engine):
    max_chunk_s = 30.0

    def __init__(self, spec: EngineSpec, card: SimCard) -> None:
        self.spec = spec
        self.card = card
        # a card, as far as batch planning goes: the base class sizes batches from measure_memory on CUDA
        self.device = "cuda:sim"
        self._log_lock = threading.Lock()

    def measure_memory(self) -> tuple[MemoryCost, float]:
        return MemoryCost(per_s=self.card.bytes_per_s, fixed=self.card.fixed_bytes), self.card.free_bytes

    def transcribe_batch(self, audios: list[np.ndarray], options: DecodeOptions) -> list[ChunkText]:
        t0 = time.monotonic()
        lengths_s = [len(a) / SAMPLE_RATE for a in audios]
        audio_s = sum(lengths_s)
        padded_s = max(lengths_s, default=0.0) * len(audios)
        if self.card.fixed_bytes + padded_s * self.card.bytes_per_s > self.card.free_bytes:
            raise EngineOutOfMemory(f"simulated card: {padded_s:.0f} padded audio-seconds do not fit")
        if self.card.begin_log:
            # before the sleep: a batch whose worker is killed mid-way still counts as given to the card
            self._log({"start": t0, "audio_s": round(audio_s, 3), "chunks": len(audios), "pid": os.getpid()},
                      self.card.begin_log)
        # wall time without CPU: sleep to the deadline (a sleep cut short by a signal is resumed)
        end = t0 + self.card.launch_ms / 1000 + audio_s / self.card.rtfx
        while (left := end - time.monotonic()) > 0:
            time.sleep(left)
        t1 = time.monotonic()
        self._log({"start": t0, "end": t1, "audio_s": round(audio_s, 3), "padded_s": round(padded_s, 3),
                   "chunks": len(audios), "pid": os.getpid()})
        return [ChunkText(WORD, [Word(0.0, min(WORD_S, s), WORD)], options.language or "en") for s in lengths_s]

    def _log(self, row: dict, path: str | None = None) -> None:
        path = path or self.card.batch_log or os.environ.get("SIM_BATCH_LOG")
        if not path:
            return
        # one short line per write, opened for append: lines of several processes never interleave
        with self._log_lock, open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


def load(spec: EngineSpec, folder: Path | None, settings) -> Engine:  # noqa: ANN001
    if folder is None:
        raise FileNotFoundError(f"no sim model folder for {spec.model!r}")
    doc = json.loads((folder / MARKER).read_text())
    return SimEngine(spec, SimCard(**doc))
