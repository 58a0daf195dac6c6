"""Engines by (engine, model), loaded once per worker process and kept.

Which engines and models exist is the catalog's business (app/catalog/): entry-point discovery and the
filesystem checks that the API makes too. This module only loads: it calls the plug-in's loader.
"""

from __future__ import annotations

import errno
import functools
import logging
import time

from app.catalog.models import missing_model_reason, model_location
from app.catalog.plugins import EngineSpec, engines
from app.catalog.plugins import reload_engines as _reload_catalog
from app.errors import ModelUnavailable, TransientError
from app.settings import Settings, get_settings
from workers.engines.base import Engine, EngineOutOfMemory

log = logging.getLogger("asrq.engines")


def reload_engines() -> None:
    """Read the entry points again (after a package was installed into the running interpreter), and
    forget the loaded engines."""
    _reload_catalog()
    get_engine.cache_clear()


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
    folder = model_location(engine, model, settings.models_dir)
    return engines()[engine].loader()(EngineSpec(engine, model), folder, settings)
