"""Engines by name, loaded once per worker process and kept."""

from __future__ import annotations

import functools
import logging
import time

from app.settings import get_settings
from workers.engines.base import Engine, EngineSpec

log = logging.getLogger("asrq.engines")

# Longest chunk per engine (ASRQ_MAX_CHUNK_S caps both). Whisper's window is 30 s, but tiny.en loses
# words in long windows that hold several voices. Measured with the one-shot batched decoder on the
# long-form test recording (tests/test_longform.py): WER 16.1 % with 30 s chunks, 9.3 % with 25 s,
# 4.6 % with 20 s (= the clips one by one); with the sequential decoder on the quick bench corpus:
# 8.8 % with 30 s, 7.3 % with 20 s. Paraformer takes 30 s.
MAX_CHUNK_S = {"whisper": 20.0, "funasr": 30.0}


@functools.lru_cache(maxsize=4)
def get_engine(engine: str, model: str) -> Engine:
    settings = get_settings()
    spec = EngineSpec(engine, model)
    t0 = time.monotonic()
    if engine == "whisper":
        from workers.engines.whisper_engine import WhisperEngine

        loaded: Engine = WhisperEngine(spec, settings.device, settings.fp16, settings.cpu_threads, settings.models_dir,
                                       settings.cpu_decoders)
    elif engine == "funasr":
        from workers.engines.funasr_engine import FunASREngine

        path = model
        if settings.models_dir is not None and "/" not in model:
            path = str(settings.models_dir / model)
        loaded = FunASREngine(EngineSpec(engine, path), settings.device, settings.fp16)
    else:
        raise ValueError(f"unknown engine {engine!r}")
    log.info("engine %s loaded on %s in %.2f s", spec, settings.device, time.monotonic() - t0)
    return loaded
