"""The instant engine: every chunk gets one fixed word at once (no model, no inference), with a word
timestamp inside the chunk, so the benchmark can time asrq's orchestration (API, prepare, batching,
bookkeeping, finalize, S3, Postgres, Redis) without a model's cost.

A model of this engine is a folder holding ``instant.json`` ({"word": "..."}); this package bundles one,
``bundled:fixed`` (the word "instant"), which jobs naming the engine without a model get.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from workers.engines.base import SAMPLE_RATE, ChunkText, DecodeOptions, Engine, EnginePlugin, EngineSpec, Word

MARKER = "instant.json"
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


def _looks_like_model(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def _bundled() -> dict[str, Path]:
    return {"fixed": Path(__file__).resolve().parent}


def _load(spec: EngineSpec, folder: Path | None, settings) -> Engine:  # noqa: ANN001
    if folder is None:
        raise FileNotFoundError(f"no instant model folder for {spec.model!r}")
    word = str(json.loads((folder / MARKER).read_text())["word"])
    return InstantEngine(spec, settings.device, word)


PLUGIN = EnginePlugin(load=_load, looks_like_model=_looks_like_model, bundled=_bundled, max_chunk_s=30.0,
                      default_model="bundled:fixed", description="fixed word per chunk, at once (benchmark)")
