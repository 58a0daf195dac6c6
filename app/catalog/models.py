"""Which models this deployment has: filesystem checks only, nothing is loaded.

A model is named the same way everywhere (API, CLI, workers):
  bundled:<name>   a model a Python package ships (whisper: bundled:tiny.en)
  <folder>         a folder under ASRQ_MODELS_DIR (relative names always resolve there when it is set)
  <hub name>       a FunASR short name (paraformer-zh) or hub id (iic/SenseVoiceSmall) of a model that
                   `asrq models pull` installed under ASRQ_MODELS_DIR (app/catalog/hub.py); resolving
                   one reads that folder only, nothing is ever downloaded here
  /abs/folder      the deployment's own default (ASRQ_MODEL) or the embedded command's --model; the API
                   refuses absolute paths from clients (app/schemas.py)
"""

from __future__ import annotations

from pathlib import Path

from app.catalog import hub
from app.catalog.plugins import engines, unknown_engine_reason
from app.settings import Settings, get_settings

BUNDLED_PREFIX = "bundled:"


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
        # hidden folders are pulls still downloading (app/catalog/hub.py)
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
