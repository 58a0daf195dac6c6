"""A stand-in accelerator for the transcribe worker's ordering tests: it records which chunks each batch
held (each chunk's PCM carries its index as a constant sample value) and holds its first batch until
the test lets it go, as a batch running longer than the chunk lease does.

``install(engine, monkeypatch)`` makes workers.tasks.transcribe load it for every job; the same
module serves a worker run in a subprocess (``python -m tests.gated_engine``), which the test kills.
"""

from __future__ import annotations

import sys
import threading
import uuid

import numpy as np

from app.catalog.plugins import EngineSpec
from workers.engines.base import ChunkText, DecodeOptions, Engine, Word

OPTIONS = {"engine": "gated", "model": "stand-in"}
CHUNK_MS = 900


def chunk_pcm(n: int) -> bytes:
    """PCM of ``n`` one-second chunks (0.9 s each, cut at whole seconds): chunk i's samples are all i + 1."""
    audio = np.concatenate([np.full(16000, i + 1, dtype="<i2") for i in range(n)])
    return audio.tobytes()


class GatedEngine(Engine):
    def __init__(self) -> None:
        self.spec = EngineSpec(**OPTIONS)
        self.device = "cpu"
        self.batches: list[list[int]] = []  # chunk indexes of each batch, in the order the engine ran them
        self.first_running = threading.Event()
        self.release_first = threading.Event()

    def transcribe_batch(self, audios: list[np.ndarray], options: DecodeOptions) -> list[ChunkText]:
        self.batches.append([round(float(a[0]) * 32768) - 1 for a in audios])
        if len(self.batches) == 1:
            self.first_running.set()
            self.release_first.wait(120)
        return [ChunkText("x", [Word(0.0, 0.3, "x")], "en") for _ in audios]

    def ran(self) -> list[int]:
        return sorted(i for b in self.batches for i in b)


def install(engine: GatedEngine, monkeypatch) -> None:  # noqa: ANN001
    from workers.tasks import transcribe

    monkeypatch.setattr(transcribe, "get_engine", lambda *_spec: engine)


if __name__ == "__main__":
    # a transcribe worker that takes these chunks and never finishes its first batch: the test kills it
    from workers.tasks import transcribe

    engine = GatedEngine()
    transcribe.get_engine = lambda *_spec: engine
    transcribe.process_chunks([str(uuid.UUID(c)) for c in sys.argv[1:]], "doomed-worker")
