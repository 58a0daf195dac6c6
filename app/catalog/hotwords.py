"""Hotwords: a job's list or file as clients send it, and which models take how many of them, checked at
submission from the model's folder (cheap file reads, cached; nothing is loaded), so a job gets a 422
instead of a transcript that silently ignored them.

- FunASR: only SeACo / contextual Paraformers bias towards hotwords (config.yaml's ``model``); any other
  FunASR model given hotwords is refused. They take the whole list (tested with 1,000).
- Whisper (faster-whisper): hotwords become a decoder prompt, and faster-whisper keeps only its first
  WHISPER_PROMPT_TOKENS tokens, dropping the rest without a word. A job's own list that does not fit is
  refused with the count that does; the deployment's default list is added only as far as it fits.
- Other engines (plug-ins): unknown here; the worker fails the job if the loaded engine says it does not
  support hotwords (Engine.supports_hotwords).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from pathlib import Path

from app.errors import BadSource

log = logging.getLogger("asrq.hotwords")

# = workers/engines/funasr_engine.py _HOTWORD_MODELS (that module imports torch; this one must stay light)
FUNASR_HOTWORD_MODELS = frozenset({"SeacoParaformer", "ContextualParaformer"})
# faster-whisper's get_prompt: hotword tokens beyond max_length // 2 - 1 (max_length 448) are cut off
WHISPER_PROMPT_TOKENS = 448 // 2 - 1


class HotwordsRefused(BadSource):
    """The job's hotwords cannot be honoured by its model (422 at submission, the reason when it fails)."""


def _mtime_ns(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return -1


@functools.lru_cache(maxsize=64)
def _funasr_model_class(config: str, _mtime_ns: int) -> str | None:
    import yaml

    try:
        doc = yaml.safe_load(Path(config).read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return None
    model = doc.get("model") if isinstance(doc, dict) else None
    return model if isinstance(model, str) else None


def funasr_model_class(folder: Path) -> str | None:
    config = folder / "config.yaml"
    return _funasr_model_class(str(config), _mtime_ns(config))


def supports_hotwords(engine: str, folder: Path | None) -> bool | None:
    """True/False when known from the model's folder, None when this module cannot tell (plug-ins)."""
    if engine == "whisper":
        return True
    if engine == "funasr" and folder is not None:
        cls = funasr_model_class(folder)
        return None if cls is None else cls in FUNASR_HOTWORD_MODELS
    return None


@functools.lru_cache(maxsize=8)
def _whisper_tokenizer(path: str, _mtime_ns: int):  # noqa: ANN202
    from tokenizers import Tokenizer

    return Tokenizer.from_file(path)


def whisper_prompt_tokens(folder: Path | None, hotwords: list[str]) -> list[int] | None:
    """Running token count of the prompt faster-whisper builds from these hotwords (" " + joined), one
    entry per hotword; None when the model's tokenizer.json is not there to count with."""
    path = folder / "tokenizer.json" if folder is not None else None
    if path is None or not path.is_file():
        return None
    counts = _counts(str(path), _mtime_ns(path), tuple(hotwords))
    return None if counts is None else list(counts)


@functools.lru_cache(maxsize=256)  # the jobs of one batch submission share their options: counted once
def _counts(path: str, mtime_ns: int, hotwords: tuple[str, ...]) -> tuple[int, ...] | None:
    try:
        tok = _whisper_tokenizer(path, mtime_ns)
    except Exception as e:  # noqa: BLE001 - cannot count: faster-whisper still truncates on its own
        log.warning("cannot read %s to count hotword tokens: %s", path, e)
        return None
    # each hotword joins the prompt as " word": counted one by one, the sum matches encoding the joined
    # string for a byte-level BPE like Whisper's, where a leading space starts a new piece
    counts, total = [], 0
    for w in hotwords:
        total += len(tok.encode(" " + w, add_special_tokens=False).ids)
        counts.append(total)
    return tuple(counts)


def _dedup(words: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(words))


def merge(engine: str, model: str, folder: Path | None, job_hotwords: list[str], defaults: Iterable[str],
          cap: int) -> list[str]:
    """The hotwords a job runs with: its own first, then the deployment's defaults, deduplicated and capped
    at ``cap`` entries; refused (HotwordsRefused) when its model cannot take the job's own list. The
    defaults go only to models known to take hotwords, as far as they fit."""
    own = _dedup(job_hotwords)
    support = supports_hotwords(engine, folder)
    if own and support is False:
        cls = funasr_model_class(folder) if engine == "funasr" and folder is not None else None
        raise HotwordsRefused(
            f"model {model!r}{f' ({cls})' if cls else ''} of engine {engine!r} does not support hotwords; "
            "hotword biasing needs a SeACo-Paraformer (FunASR's paraformer-zh) or Whisper; "
            "send the job without hotwords or name such a model")
    words = _dedup([*own, *defaults]) if support else own
    words = words[:cap]
    if engine == "whisper" and words:
        counts = whisper_prompt_tokens(folder, words)
        if counts is not None:
            fit = sum(1 for c in counts if c <= WHISPER_PROMPT_TOKENS)
            if len(own) > fit:
                raise HotwordsRefused(
                    f"Whisper takes hotwords as a decoder prompt of at most {WHISPER_PROMPT_TOKENS} tokens; "
                    f"the job's {len(own)} hotwords are {counts[len(own) - 1]} tokens (the first "
                    f"{fit} fit); send fewer, or use a SeACo-Paraformer (FunASR) for long lists")
            words = words[:fit]
    return words
