"""The instant engine itself: imported only by a worker that loads an instant model (the plug-in's loader)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from asrq_instant import MARKER
from workers.engines.base import SAMPLE_RATE, ChunkText, DecodeOptions, Engine, EngineSpec, Word

WORD_S = 0.3  # the word's length: it starts at the chunk's start and ends within the chunk


class InstantEngine(Engine):
    max_chunk_s = 30.0

    def __init__(self, spec: EngineSpec, device: str, word: str) -> None:
        self.spec = spec
        self.device = device
        self.word = word

    def transcribe_batch(self, audios: list[np.ndarray], options: DecodeOptions) -> list[ChunkText]:
        out = []
        for a in audios:
            end = min(WORD_S, len(a) / SAMPLE_RATE)
            out.append(ChunkText(self.word, [Word(0.0, end, self.word)], options.language or "en"))
        return out


def load(spec: EngineSpec, folder: Path | None, settings) -> Engine:  # noqa: ANN001
    if folder is None:
        raise FileNotFoundError(f"no instant model folder for {spec.model!r}")
    word = str(json.loads((folder / MARKER).read_text())["word"])
    return InstantEngine(spec, settings.device, word)
