"""Engines by name, loaded once per worker process and kept; and which models this deployment has.

Engines are plug-ins: every package installed in this environment that declares an entry point in the
group ``asrq.engines`` adds one (the entry point's name is the engine's name, its object a
workers.engines.base.EnginePlugin). asrq's own whisper and funasr are declared the same way in its
pyproject.toml; an engine that is not installed cannot be selected anywhere (settings, CLI, API).

A model is named the same way everywhere (API, CLI, workers):
  bundled:<name>   a model a Python package ships (whisper: bundled:tiny.en)
  <folder>         a folder under ASRQ_MODELS_DIR (relative names always resolve there when it is set)
  <hub name>       a FunASR short name (paraformer-zh) or hub id (iic/SenseVoiceSmall) of a model that
                   `asrq models pull` installed under ASRQ_MODELS_DIR (workers/engines/hub.py); resolving
                   one reads that folder only, nothing is ever downloaded here
  /abs/folder      the deployment's own default (ASRQ_MODEL) or the embedded command's --model; the API
                   refuses absolute paths from clients (app/schemas.py)
"""

from __future__ import annotations

import errno
import functools
import importlib
import importlib.metadata
import logging
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from app.errors import ModelUnavailable, TransientError
from app.settings import Settings, get_settings
from workers.engines import hub
from workers.engines.base import Engine, EngineOutOfMemory, EnginePlugin, EngineSpec

log = logging.getLogger("asrq.engines")

ENTRY_POINT_GROUP = "asrq.engines"
ENGINE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")  # what app/schemas.py accepts from clients
BUNDLED_PREFIX = "bundled:"


# --- which engines are installed (entry points; the plug-in objects are light, no model is loaded) ------

@functools.lru_cache(maxsize=1)
def _discover() -> tuple[dict[str, EnginePlugin], dict[str, str]]:
    """(engine name -> plug-in, engine name -> why its declared plug-in is unusable). asrq's own entry
    points are read first: another package cannot take over the name of a built-in engine."""
    plugins: dict[str, EnginePlugin] = {}
    broken: dict[str, str] = {}
    eps = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    dist = lambda ep: getattr(ep.dist, "name", "") or ""  # noqa: E731
    for ep in sorted(eps, key=lambda ep: (dist(ep) != "asrq", dist(ep))):  # stable: each package's own order
        if ep.name in plugins or ep.name in broken:
            log.warning("engine %r of %s ignored: already declared by another package", ep.name, dist(ep) or ep.value)
            continue
        if not ENGINE_NAME.match(ep.name):
            log.warning("engine %r of %s ignored: names are [a-z][a-z0-9_-]{0,31}", ep.name, dist(ep) or ep.value)
            continue
        try:
            obj = ep.load()
        except Exception as e:  # noqa: BLE001 - a broken plug-in disables itself, not the service
            broken[ep.name] = f"its plug-in {ep.value} cannot be imported: {type(e).__name__}: {e}"[:500]
            log.warning("engine %r unusable: %s", ep.name, broken[ep.name])
            continue
        if not isinstance(obj, EnginePlugin):
            broken[ep.name] = f"its plug-in {ep.value} is a {type(obj).__name__}, not an EnginePlugin"
            log.warning("engine %r unusable: %s", ep.name, broken[ep.name])
            continue
        plugins[ep.name] = obj
    return plugins, broken


def engines() -> dict[str, EnginePlugin]:
    """The installed engines by name (cached per process; reload_engines() reads them again)."""
    return _discover()[0]


def engine_names() -> tuple[str, ...]:
    return tuple(engines())


def unknown_engine_reason(engine: str) -> str | None:
    """None when ``engine`` is installed; else why not, naming the installed engines."""
    if engine in engines():
        return None
    have = ", ".join(engine_names()) or (f"none: no installed package declares the entry-point group "
                                         f"{ENTRY_POINT_GROUP}; is asrq itself installed (pip install -e .)?")
    broken = _discover()[1].get(engine)
    if broken:
        return f"engine {engine!r} is declared but unusable: {broken} (engines: {have})"
    return f"engine {engine!r} is not installed on this deployment (engines: {have})"


def reload_engines() -> None:
    """Read the entry points again (after a package was installed into the running interpreter)."""
    importlib.invalidate_caches()
    _discover.cache_clear()
    get_engine.cache_clear()


class _MaxChunkS(Mapping):
    """Longest chunk per installed engine (ASRQ_MAX_CHUNK_S caps them all), read from the plug-ins."""

    def __getitem__(self, engine: str) -> float:
        plugin = engines().get(engine)
        if plugin is None:
            raise KeyError(engine)
        return plugin.max_chunk_s

    def __iter__(self) -> Iterator[str]:
        return iter(engines())

    def __len__(self) -> int:
        return len(engines())


MAX_CHUNK_S: Mapping[str, float] = _MaxChunkS()


def __getattr__(name: str) -> object:
    if name == "ENGINES":  # the installed engine names, for code written when there were two fixed ones
        return engine_names()
    raise AttributeError(name)


# --- what is installed (filesystem checks only, nothing is loaded) ------------------------------------

def _bundled(engine: str) -> dict[str, Path]:
    """Bundled model names of an engine -> their folders (only packages that are installed)."""
    plugin = engines().get(engine)
    return plugin.bundled() if plugin is not None else {}


def looks_like_model(engine: str, folder: Path) -> bool:
    """True when ``folder`` holds a model of ``engine`` in the format its loader reads."""
    plugin = engines().get(engine)
    return plugin is not None and plugin.looks_like_model(folder)


def model_location(engine: str, model: str, models_dir: Path | None) -> Path | None:
    """The folder (engine, model) loads from, by the rules in this module's docstring; None for a
    bundled name no installed package provides. Says nothing about whether the folder exists."""
    if model.startswith(BUNDLED_PREFIX):
        return _bundled(engine).get(model[len(BUNDLED_PREFIX):])
    path = Path(model).expanduser()
    if not path.is_absolute() and models_dir is not None:
        if model.startswith("."):
            return None  # a pull still downloading (or a leftover of one) is no model yet
        path = hub.resolve(models_dir, model) or models_dir / path
    return path


def model_installed(engine: str, model: str, settings: Settings | None = None) -> bool:
    """True when ``model`` names a model of ``engine`` that this deployment has (cheap: a few stat calls)."""
    settings = settings or get_settings()
    if engine not in engines():
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
        # hidden folders are pulls still downloading (workers/engines/hub.py)
        names += sorted(p.name for p in d.iterdir()
                        if not p.name.startswith(".") and p.is_dir() and looks_like_model(engine, p))
    default = settings.model
    if settings.engine == engine and default not in names and model_installed(engine, default, settings):
        names.append(default)
    return names


def missing_model_reason(engine: str, model: str, settings: Settings | None = None) -> str | None:
    """None when (engine, model) is installed; else why not, naming the installed models of the engine."""
    settings = settings or get_settings()
    if (unknown := unknown_engine_reason(engine)) is not None:
        return f"model {model!r}: {unknown}"
    if model_installed(engine, model, settings):
        return None
    have = installed_models(engine, settings)
    where = f" (models folder: {settings.models_dir})" if settings.models_dir is not None else ""
    hint = (f"; {hub.install_hint(model, settings.models_dir)}"
            if engine == "funasr" and hub.is_hub_name(model) else "")
    return (f"model {model!r} is not installed for engine {engine!r} on this deployment; installed: "
            f"{', '.join(have) if have else 'none'}{where}{hint}")


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
    folder = model_location(engine, model, settings.models_dir)
    return engines()[engine].load(EngineSpec(engine, model), folder, settings)
