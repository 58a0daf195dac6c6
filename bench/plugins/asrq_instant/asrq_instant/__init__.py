"""The instant engine: every chunk gets one fixed word at once (no model, no inference), with a word
timestamp inside the chunk, so the benchmark can time asrq's orchestration (API, prepare, batching,
bookkeeping, finalize, S3, Postgres, Redis) without a model's cost.

A model of this engine is a folder holding ``instant.json`` ({"word": "..."}); this package bundles one,
``bundled:fixed`` (the word "instant"), which jobs naming the engine without a model get.

This module is the plug-in's declaration, cheap to import (the API reads it to validate submissions); the
engine is in ``asrq_instant.engine``, named by its loader string and imported only where a model loads.
"""

from __future__ import annotations

from pathlib import Path

from app.catalog.plugins import EnginePlugin

MARKER = "instant.json"


def _looks_like_model(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def _bundled() -> dict[str, Path]:
    return {"fixed": Path(__file__).resolve().parent}


PLUGIN = EnginePlugin(load="asrq_instant.engine:load", looks_like_model=_looks_like_model, bundled=_bundled,
                      max_chunk_s=30.0, default_model="bundled:fixed",
                      description="fixed word per chunk, at once (benchmark)")
