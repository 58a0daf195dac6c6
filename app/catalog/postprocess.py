"""What a job's words get after recognition, as options: a punctuation model and inverse text normalization.

Resolved at submission (what the job stores) from filesystem checks only; the models themselves run in
finalize (workers/punctuation.py, workers/itn.py).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from app.errors import ModelNotInstalled
from app.settings import Settings

NONE = "none"
#: engines whose models write their own punctuation: the deployment default gives them none
SELF_PUNCTUATING_ENGINES = frozenset({"whisper"})
_MODEL_CLASSES = frozenset({"CTTransformer"})


# --- punctuation: what is installed (filesystem checks only, nothing is loaded) --------------------------

def looks_like_punc_model(folder: Path) -> bool:
    """A FunASR CT-Transformer folder: config.yaml naming the class, its weights and its tokens."""
    try:
        if not ((folder / "model.pt").is_file() and (folder / "tokens.json").is_file()):
            return False
        config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(config, dict) and config.get("model") in _MODEL_CLASSES


def punc_model_location(name: str, models_dir: Path | None) -> Path:
    path = Path(name).expanduser()
    return path if path.is_absolute() or models_dir is None else models_dir / path


def installed_punc_models(settings: Settings) -> list[str]:
    d = settings.models_dir
    names = sorted(p.name for p in d.iterdir() if p.is_dir() and looks_like_punc_model(p)) \
        if d is not None and d.is_dir() else []
    default = settings.punc_model
    if default != NONE and default not in names and looks_like_punc_model(punc_model_location(default, d)):
        names.append(default)
    return names


def missing_punc_model_reason(name: str, settings: Settings) -> str | None:
    if name == NONE or looks_like_punc_model(punc_model_location(name, settings.models_dir)):
        return None
    have = ", ".join(installed_punc_models(settings)) or "none"
    where = f" (models folder: {settings.models_dir})" if settings.models_dir is not None else ""
    return f"punc_model {name!r} is not installed on this deployment; installed: {have} (or 'none'){where}"


def resolve_punc_model(requested: str | None, engine: str, settings: Settings) -> str:
    """The job's punctuation model, defaults filled in; refused at submission (ModelNotInstalled: 422)
    when it is not installed, or when the engine writes its own punctuation."""
    if engine in SELF_PUNCTUATING_ENGINES:
        if requested not in (None, NONE):
            raise ModelNotInstalled(f"engine {engine!r} writes its own punctuation: punc_model must be 'none'")
        return NONE
    name = requested or settings.punc_model
    if (reason := missing_punc_model_reason(name, settings)) is not None:
        raise ModelNotInstalled(reason)
    return name


# --- inverse text normalization ---------------------------------------------------------------------------

def itn_applies(itn: bool | None, language: str | None) -> bool:
    """The job option: True/False as given; None means on for Mandarin (zh, zh-CN, ...) only."""
    if itn is not None:
        return itn
    return bool(language) and language.lower().replace("_", "-").split("-")[0] == "zh"


def resolve_itn(itn: bool | None, language: str | None) -> bool | None:  # noqa: ARG001
    """The option as stored on the job: as the client gave it. None (unset) is decided where it is used:
    at finalize from the job's language (itn_applies), and by an engine with its own ITN (SenseVoice's
    use_itn, on unless the job said no), so an English SenseVoice job keeps the model's punctuation."""
    return itn
