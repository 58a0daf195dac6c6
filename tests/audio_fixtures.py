"""Long recordings with exact references, built from real clips, pauses of known length and espeak-ng."""

from __future__ import annotations

import io
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from workers.audio import decode_to_pcm, pcm_to_float

SR = 16000


def load_clip(path: Path) -> np.ndarray:
    buf = io.BytesIO()
    decode_to_pcm(path, buf)
    return pcm_to_float(buf.getvalue())


def espeak(text: str, voice: str = "en-us", speed_wpm: int = 160) -> np.ndarray:
    with tempfile.TemporaryDirectory() as d:
        wav = Path(d) / "s.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed_wpm), "-w", str(wav), text], check=True,
                       capture_output=True)
        return load_clip(wav)


@dataclass(frozen=True)
class Placed:
    name: str
    reference: str
    start_s: float
    end_s: float


def encode_mono(path: Path, blocks: Iterable[np.ndarray], codec: str = "flac", rate: int = SR,
                container: str | None = None) -> Path:
    """Stream mono blocks (float32 in [-1, 1], or int16) into an audio file, never holding it whole."""
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        for block in blocks:
            if block.dtype != np.int16:
                block = (np.clip(block, -1, 1) * 32767).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(block.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def write_flac(path: Path, samples: np.ndarray, rate: int = SR) -> Path:
    return encode_mono(path, (samples[i : i + rate * 10] for i in range(0, len(samples), rate * 10)), rate=rate)


def join_with_pauses(parts: list[tuple[str, str, np.ndarray]], pauses_s: list[float],
                     lead_s: float = 1.0) -> tuple[np.ndarray, list[Placed]]:
    """Lay (name, reference, audio) parts end to end with the given pauses; return audio and placements."""
    pieces = [np.zeros(int(lead_s * SR), np.float32)]
    placed = []
    t = lead_s
    for (name, ref, audio), pause in zip(parts, pauses_s):
        placed.append(Placed(name, ref, t, t + len(audio) / SR))
        pieces += [audio, np.zeros(int(pause * SR), np.float32)]
        t += len(audio) / SR + int(pause * SR) / SR
    return np.concatenate(pieces), placed


def tile_to_duration(clips: list[np.ndarray], duration_s: float, pause_s: float = 0.7):
    """Yield blocks of clips and pauses until duration_s: a long recording that never sits in memory."""
    total = 0
    target = int(duration_s * SR)
    gap = np.zeros(int(pause_s * SR), np.float32)
    i = 0
    while total < target:
        block = np.concatenate([clips[i % len(clips)], gap])[: target - total]
        total += len(block)
        i += 1
        yield block


def write_long_flac(path: Path, clips: list[np.ndarray], duration_s: float) -> Path:
    return encode_mono(path, tile_to_duration(clips, duration_s))
