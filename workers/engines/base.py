"""The engine interface: every ASR backend turns a batch of 16 kHz mono chunks into text with times.

Times in results are seconds relative to the start of each chunk; the merge stage makes them absolute.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from app.catalog.plugins import EngineSpec
from workers.batching import MemoryCost, budget_from_memory, fit_memory_cost

__all__ = ["ChunkText", "DecodeOptions", "Engine", "EngineOutOfMemory", "EngineSpec", "Word"]  # EngineSpec: the catalog's

SAMPLE_RATE = 16000
log = logging.getLogger("asrq.engines")

#: probe batches, in chunks of the engine's longest length: the largest first, so an allocator that keeps
#: what it freed cannot hide its cost behind what a smaller probe left cached
PROBE_SIZES = (4, 1)


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
    # what a model that hears more than words says about the chunk (SenseVoice's rich tags), lower
    # case ("happy", "laughter"); None where the model says nothing or does not know
    emotion: str | None = None
    event: str | None = None


@dataclass(frozen=True)
class DecodeOptions:
    """Per-batch decoding options; a batch never mixes two different option sets."""

    language: str | None = None
    hotwords: tuple[str, ...] = ()
    beam_size: int = 5
    # inverse text normalization inside the model where it has one (SenseVoice's use_itn); None: its default
    itn: bool | None = None


class Engine(ABC):
    """One loaded model. Created once per worker process (see workers/engines/registry.get_engine)."""

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

    # --- batches sized for the card ----------------------------------------------------------------------

    def padded_s(self, duration_s: float) -> float:
        """What one chunk of this length costs a batch, in audio-seconds once padded (for planning)."""
        return duration_s

    def measure_memory(self) -> tuple[MemoryCost, float]:
        """(memory cost of a batch, free bytes of the card for batches), measured with probe batches.
        Only called on CUDA; engines that cannot measure raise, and keep the configured budget."""
        raise NotImplementedError(f"{type(self).__name__} cannot measure its memory use")

    def batch_plan(self, configured_s: float, fraction: float,
                   max_items: int) -> tuple[float, Callable[[float], float]]:
        """(audio-seconds one batch may hold, what one chunk of a given length costs of them).

        On CPU, the configured budget, chunks counted by their length. On CUDA, what ``fraction`` of the
        card's free memory pays for at this model's measured cost, chunks counted as ``padded_s`` says;
        measured once, on the first call. A measurement that fails leaves the CPU rule. The halving on
        out-of-memory remains the safety net either way."""
        if not str(getattr(self, "device", "cpu")).startswith("cuda"):
            return configured_s, _as_is
        plan = self.__dict__.get("_batch_plan")
        if plan is None:
            plan = self._sized_plan(configured_s, fraction, max_items)
            self.__dict__["_batch_plan"] = plan
        return plan

    def batch_budget_s(self, configured_s: float, fraction: float, max_items: int) -> float:
        return self.batch_plan(configured_s, fraction, max_items)[0]

    def _sized_plan(self, configured_s: float, fraction: float,
                    max_items: int) -> tuple[float, Callable[[float], float]]:
        try:
            cost, free = self.measure_memory()
        except Exception as e:  # noqa: BLE001 - a probe that fails leaves the configured budget
            log.warning("engine %s: memory use not measured (%s: %s); batches keep %.0f s",
                        getattr(self, "spec", "?"), type(e).__name__, e, configured_s)
            return configured_s, _as_is
        one = self.padded_s(self.max_chunk_s)
        budget = budget_from_memory(free, cost, fraction, floor_s=one, cap_s=max_items * one)
        log.info("engine %s: %.1f MiB per audio-second + %.0f MiB per batch, %.0f MiB free: batches of "
                 "%.0f audio-seconds (%.0f%% of free memory)", getattr(self, "spec", "?"), cost.per_s / 2**20,
                 cost.fixed / 2**20, free / 2**20, budget, fraction * 100)
        return budget, self.padded_s

    def probe_cost(self, peak_bytes: Callable[[Callable[[], object]], float],
                   run_batch: Callable[[list[np.ndarray]], object] | None = None) -> MemoryCost:
        """Run probe batches of full-length chunks (the dearest per second: attention grows faster than
        the length) and fit their cost; ``peak_bytes(run)`` runs ``run`` and returns the memory it added
        at its peak. ``run_batch`` is the batched inference to measure (default: transcribe_batch)."""
        item_s = self.max_chunk_s
        run_batch = run_batch or (lambda audios: self.transcribe_batch(audios, DecodeOptions(language="en")))
        points = []
        for n in PROBE_SIZES:
            audios = [probe_audio(item_s, seed=i) for i in range(n)]
            used = peak_bytes(lambda audios=audios: run_batch(audios))
            points.append((n * self.padded_s(item_s), used))
        return fit_memory_cost(points)


def _as_is(duration_s: float) -> float:
    return duration_s


def probe_audio(seconds: float, seed: int = 0) -> np.ndarray:
    """Speech-like test audio (a voiced buzz with syllable-rate envelope and formant-ish harmonics over
    a little noise), so a probe decodes tokens as real speech would, not silence."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = 110 + 40 * np.sin(2 * np.pi * 0.3 * t + seed)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voice = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = np.clip(np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, np.pi)), 0, None)
    audio = 0.1 * voice * envelope + 0.005 * rng.standard_normal(t.size)
    return audio.astype(np.float32)
