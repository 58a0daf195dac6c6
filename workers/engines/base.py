"""The engine interface: every ASR backend turns a batch of 16 kHz mono chunks into text with times.

Times in results are seconds relative to the start of each chunk; the merge stage makes them absolute.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

SAMPLE_RATE = 16000


class EngineOutOfMemory(RuntimeError):
    """Raised by an engine when a batch does not fit in accelerator memory; the caller halves the batch."""


@dataclass(frozen=True)
class Word:
    start_s: float
    end_s: float
    word: str


@dataclass
class ChunkText:
    text: str
    words: list[Word] = field(default_factory=list)
    language: str | None = None


@dataclass(frozen=True)
class DecodeOptions:
    """Per-batch decoding options; a batch never mixes two different option sets."""

    language: str | None = None
    hotwords: tuple[str, ...] = ()
    beam_size: int = 5


@dataclass(frozen=True)
class EngineSpec:
    engine: str  # "whisper" | "funasr"
    model: str  # a local folder or a known bundled name

    def __str__(self) -> str:
        return f"{self.engine}:{self.model}"


class Engine(ABC):
    """One loaded model. Created once per worker process (see engines.registry.get_engine)."""

    spec: EngineSpec
    device: str
    #: longest chunk the model accepts in one piece; the chunker cuts below this.
    max_chunk_s: float = 30.0
    supports_hotwords: bool = False
    #: True when the model writes characters (Mandarin) rather than space-separated words.
    char_level: bool = False

    @abstractmethod
    def transcribe_batch(self, audios: list[np.ndarray], options: DecodeOptions) -> list[ChunkText]:
        """Transcribe float32 16 kHz mono arrays, one result per input, in input order."""
