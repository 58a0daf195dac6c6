"""The sim engine: a simulated accelerator, for measuring how busy asrq keeps a fast card on a machine
that has none. A batch takes ``launch_ms + audio_s / rtfx`` of wall time and no CPU (it sleeps), its
memory follows a model (free bytes, bytes per audio-second, fixed bytes per batch), so the worker sizes
its batches from "the card's" memory exactly as it does on CUDA, and every batch is logged (start and
end on the monotonic clock, audio seconds, chunks) for the benchmark to read (bench/feeding.py).

A model of this engine is a folder holding ``sim.json``::

    {"rtfx": 1000, "launch_ms": 2, "free_bytes": 42949672960, "bytes_per_s": 67108864,
     "fixed_bytes": 1073741824, "batch_log": "/abs/path/batches.jsonl"}

``batch_log`` is optional (the environment variable SIM_BATCH_LOG is used when it is absent; no log
when neither is set). ``begin_log`` (optional) gets a line as each batch begins, with its audio seconds,
so a batch whose worker is killed mid-way is counted too (tests/chaos/timing.py). Bundled: ``bundled:card-1000x`` and ``bundled:card-5000x``.
The worker's path is the one a real card takes: nothing in asrq knows this engine.
"""

from __future__ import annotations

from pathlib import Path

from app.catalog.plugins import EnginePlugin

MARKER = "sim.json"
MODELS = Path(__file__).resolve().parent / "sim_models"


def _looks_like_model(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def _bundled() -> dict[str, Path]:
    return {p.name: p for p in sorted(MODELS.iterdir()) if _looks_like_model(p)}


PLUGIN = EnginePlugin(load="asrq_instant.sim_engine:load", looks_like_model=_looks_like_model, bundled=_bundled,
                      max_chunk_s=30.0, default_model="bundled:card-1000x",
                      description="a simulated accelerator: sleeps audio_s / rtfx per batch (benchmark)")
