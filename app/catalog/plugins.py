"""Which engines are installed: engine plug-ins, found through the entry-point group ``asrq.engines``.

Every package installed in this environment that declares an entry point in that group adds an engine (the
entry point's name is the engine's name, its object an ``EnginePlugin``). asrq's own whisper and funasr are
declared the same way in its pyproject.toml (app/catalog/builtin.py); an engine that is not installed
cannot be selected anywhere (settings, CLI, API).

A plug-in is a description, cheap to import: what a model folder of the engine looks like, which models a
package bundles, the longest chunk, the default model, and where its loader is. The loader itself (the
model's library, the inference) is imported only by the workers that load a model (workers/engines/).
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import logging
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.settings import Settings

log = logging.getLogger("asrq.engines")

ENTRY_POINT_GROUP = "asrq.engines"
ENGINE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")  # what app/schemas.py accepts from clients


@dataclass(frozen=True)
class EngineSpec:
    engine: str  # the name it is registered under in the entry-point group asrq.engines
    model: str  # a local folder or a known bundled name

    def __str__(self) -> str:
        return f"{self.engine}:{self.model}"


def _no_bundled_models() -> dict[str, Path]:
    return {}


@dataclass(frozen=True)
class EnginePlugin:
    """What a package registers to add an engine: an object of this class named by an entry point in
    the group ``asrq.engines``; the entry point's name is the engine's name (what jobs, ASRQ_ENGINE and
    ``--engine`` say). The built-ins register the same way, in asrq's own pyproject.toml::

        [project.entry-points."asrq.engines"]
        whisper = "app.catalog.builtin:WHISPER"

    Importing the module that holds it must be cheap (the API imports it to validate submissions): name
    the loader as a "module:function" string, so the model's library and the engine class are imported
    only where a model is loaded (bench/plugins/asrq_instant is a complete example).
    """

    #: "module:function" (or the function itself): (spec, the model's folder from model_location or None,
    #: settings) -> the loaded engine (a workers.engines.base.Engine). Errors a retry cannot fix (bad files)
    #: fail the job's chunks; MemoryError/EngineOutOfMemory/CUDA errors are retried.
    load: str | Callable[[EngineSpec, Path | None, Settings], Any]
    #: True when a folder holds a model in the format ``load`` reads (a few stat calls, nothing loaded)
    looks_like_model: Callable[[Path], bool]
    #: model names a Python package ships -> their folders; jobs name them ``bundled:<name>``
    bundled: Callable[[], dict[str, Path]] = _no_bundled_models
    #: longest chunk the engine takes in one piece; prepare cuts below min(this, ASRQ_MAX_CHUNK_S)
    max_chunk_s: float = 30.0
    #: the model a job that names this engine and no model gets, when the engine is not the
    #: deployment's default (whose ASRQ_MODEL is used); None: such a job must name a model
    default_model: str | None = None
    description: str = ""

    def loader(self) -> Callable[[EngineSpec, Path | None, Settings], Any]:
        """The load function, imported now if it was named by a string."""
        if not isinstance(self.load, str):
            return self.load
        module, _, attr = self.load.partition(":")
        return getattr(importlib.import_module(module), attr)


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


def check_engine_setting(settings: Settings) -> None:
    """At a process's start (API, CLI, worker): ASRQ_ENGINE must name an installed engine. Raises
    ValueError saying which engines there are."""
    if (reason := unknown_engine_reason(settings.engine)) is not None:
        raise ValueError(f"ASRQ_ENGINE: {reason}")


def reload_engines() -> None:
    """Read the entry points again (after a package was installed into the running interpreter)."""
    importlib.invalidate_caches()
    _discover.cache_clear()


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
