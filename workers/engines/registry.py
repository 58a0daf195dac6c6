"""Engines by (engine, model), loaded once per worker process and kept while they fit its memory bound.

Which engines and models exist is the catalog's business (app/catalog/): entry-point discovery and the
filesystem checks that the API makes too. This module only loads: it calls the plug-in's loader, and
keeps what it loaded in a cache bounded by memory (``ASRQ_ENGINE_CACHE_MB``), not by a count of models:
four large models do not fit a card that four small ones fit. A model's footprint is measured where it
can be (on CUDA: the card's free memory before and after the load), else estimated by its size on disk.
Before a model is loaded, the least recently used ones are evicted until it fits, and what they held is
freed: the cache's reference dropped, a garbage collection, and on CUDA torch's cached blocks given back.
An evicted engine that a running task still holds is freed once the task lets it go, and collected by
the next load at the latest: a task should take its engine from here for each batch, not keep it.
"""

from __future__ import annotations

import errno
import gc
import logging
import os
import sys
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from app.catalog.models import missing_model_reason, model_location
from app.catalog.plugins import EngineSpec, engines
from app.catalog.plugins import reload_engines as _reload_catalog
from app.errors import ModelUnavailable, TransientError
from app.settings import Settings, get_settings
from workers.engines.base import Engine, EngineOutOfMemory

log = logging.getLogger("asrq.engines")

# the memory bound when ASRQ_ENGINE_CACHE_MB is unset: this share of the host's memory on CPU, of the card's
# on CUDA (the rest is for batches, and for the other worker processes of the host)
DEFAULT_CPU_SHARE, DEFAULT_CUDA_SHARE = 0.25, 0.5


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


def size_on_disk(folder: Path | None) -> int:
    """Bytes of every file under ``folder`` (links followed once): what loading it costs, roughly."""
    if folder is None or not folder.exists():
        return 0
    if folder.is_file():
        return folder.stat().st_size
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _on_cuda(settings: Settings) -> bool:
    return str(settings.device).startswith("cuda")


def _card_free() -> int | None:
    """Free bytes of this process's card, or None where that cannot be read."""
    try:
        from workers.engines.gpu_memory import mem_get_info

        return mem_get_info(0)[0]
    except Exception:  # noqa: BLE001 - no card, no driver: the footprint is estimated instead
        return None


def cache_bound_bytes(settings: Settings) -> int:
    """ASRQ_ENGINE_CACHE_MB, or by default a share of the card's memory (CUDA) or of the host's."""
    if settings.engine_cache_mb is not None:
        return int(settings.engine_cache_mb * 2**20)
    if _on_cuda(settings):
        try:
            from workers.engines.gpu_memory import mem_get_info

            return int(mem_get_info(0)[1] * DEFAULT_CUDA_SHARE)
        except Exception:  # noqa: BLE001 - read the host's memory instead
            pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * DEFAULT_CPU_SHARE)


def free_released_memory() -> None:
    """Collect what nothing references any more (model graphs hold reference cycles), and on CUDA give
    torch's cached blocks back to the card, so the next load and the batches can use them."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


@dataclass
class _Kept:
    engine: Engine
    bytes: int


class EngineCache:
    """The loaded engines of this process, least recently used first, within ``bound()`` bytes."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._kept: OrderedDict[tuple[str, str], _Kept] = OrderedDict()
        # evicted engines something else may still hold: freed when it lets them go
        self._evicted: list[tuple[EngineSpec, weakref.ref]] = []

    def __call__(self, engine: str, model: str) -> Engine:
        with self._lock:
            kept = self._kept.get((engine, model))
            if kept is not None:
                self._kept.move_to_end((engine, model))
                return kept.engine
            settings = get_settings()
            reason = missing_model_reason(engine, model, settings)
            if reason is not None:
                raise ModelUnavailable(reason)
            estimate = size_on_disk(model_location(engine, model, settings.models_dir))
            self._make_room(estimate, cache_bound_bytes(settings))
            free_before = _card_free() if _on_cuda(settings) else None
            t0 = time.monotonic()
            try:
                loaded = _load(engine, model, settings)
            except Exception as e:
                if _retryable(e):
                    raise
                cause = f"{type(e).__name__}: {e}"
                raise ModelUnavailable(f"model {model!r} of engine {engine!r} cannot be loaded: {cause[:500]}") from e
            free_after = _card_free() if free_before is not None else None
            footprint = free_before - free_after if free_after is not None and free_before > free_after else estimate
            self._kept[(engine, model)] = _Kept(loaded, footprint)
            log.info("engine %s loaded on %s in %.2f s (%.0f MiB; %d kept, %.0f MiB)", EngineSpec(engine, model),
                     settings.device, time.monotonic() - t0, footprint / 2**20, len(self._kept),
                     self.kept_bytes() / 2**20)
            return loaded

    def kept_bytes(self) -> int:
        with self._lock:
            return sum(k.bytes for k in self._kept.values())

    def kept(self) -> list[tuple[str, str]]:
        """(engine, model) of the engines kept, least recently used first."""
        with self._lock:
            return list(self._kept)

    def _make_room(self, needed: int, bound: int) -> None:
        """Evict the least recently used engines until ``needed`` more bytes fit under ``bound`` (a model
        larger than the bound alone is still loaded, alone), then free what they held."""
        evicted = []
        while self._kept and self.kept_bytes() + needed > bound:
            key, kept = self._kept.popitem(last=False)
            evicted.append(EngineSpec(*key))
            self._evicted.append((EngineSpec(*key), weakref.ref(kept.engine)))
            log.info("engine %s evicted (%.0f MiB) to make room for %.0f MiB under %.0f MiB", EngineSpec(*key),
                     kept.bytes / 2**20, needed / 2**20, bound / 2**20)
            del kept  # this frame's reference too: nothing here may keep it alive
        if evicted or self._evicted:
            free_released_memory()
        still = [spec for spec, ref in self._evicted if ref() is not None]
        self._evicted = [(spec, ref) for spec, ref in self._evicted if ref() is not None]
        if still:
            log.info("evicted engines still held by a running task, freed when it ends: %s",
                     ", ".join(map(str, still)))

    def cache_clear(self) -> None:
        with self._lock:
            self._kept.clear()
            self._evicted.clear()
        free_released_memory()


#: ``get_engine(engine, model)``: the loaded engine for (engine, model), loaded on first use and kept while
#: it fits (only successful loads are kept: a model installed after a failed try loads on the next call).
#: Raises ModelUnavailable (a PermanentError) when the model cannot load and a retry cannot help: an
#: unknown engine or bundled name, a folder that is missing or is not a model of that engine, files the
#: loader rejects (corrupt, wrong format). Errors another try may fix (out of memory, CUDA, I/O
#: hiccups) propagate as they are. ``get_engine.cache_clear()`` forgets them all.
get_engine = EngineCache()


def _load(engine: str, model: str, settings: Settings) -> Engine:
    folder = model_location(engine, model, settings.models_dir)
    return engines()[engine].loader()(EngineSpec(engine, model), folder, settings)
