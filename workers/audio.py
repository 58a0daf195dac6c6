"""Decode any container/codec to 16 kHz mono s16le PCM, streaming, with PyAV (FFmpeg in the wheel).

Memory stays flat whatever the recording's length: frames go from the demuxer through the
resampler straight to the output file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np

from app.constants import PCM_BYTES_PER_SAMPLE, PCM_SAMPLE_RATE
from app.errors import BadAudio


@dataclass(frozen=True)
class AudioInfo:
    duration_s: float
    samples: int
    source_rate: int
    source_channels: int
    codec: str
    container: str


# bytes FFmpeg reads to identify a file and its streams before decoding (its default is 5 MB). Containers
# that state their streams' parameters in a header need no more; FFmpeg still reads up to the probe size in
# packets (a 10 s 44.1 kHz WAV: 13 ms of CPU to open, 2 ms with 64 KiB). Any other container, or one whose
# audio track the short probe did not settle, is opened again with FFmpeg's defaults: a short probe can
# name another codec in an MPEG-TS (mp3float for mp2), so no file may decode differently
# (tests/test_audio_decode.py).
PROBE_BYTES = 64 * 1024
_HEADER_FORMATS = {"wav", "w64", "flac", "aiff", "mov,mp4,m4a,3gp,3g2,mj2", "ogg", "matroska,webm"}


def _open(src: Path, probe_bytes: int | None) -> av.container.InputContainer:
    if probe_bytes:
        try:
            container = av.open(str(src), mode="r", metadata_errors="ignore",
                                options={"probesize": str(probe_bytes)})
        except (av.error.FFmpegError, UnicodeDecodeError, ValueError):
            pass  # identified only with the full probe, or not at all: the default open below says which
        else:
            if _settled(container):
                return container
            container.close()
    try:
        return av.open(str(src), mode="r", metadata_errors="ignore")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as e:
        raise BadAudio(f"not a readable audio or video file ({_reason(e)})") from e


def _settled(container: av.container.InputContainer) -> bool:
    """A container that states its streams in a header, where the short probe found an audio track with its
    codec, rate and channels, and no stream is left unidentified (a later audio track could otherwise be the
    first one under the full probe)."""
    if container.format.name not in _HEADER_FORMATS or not container.streams.audio:
        return False
    for stream in container.streams:
        ctx = stream.codec_context
        if stream.type == "audio" and not (ctx.sample_rate and ctx.channels and ctx.name):
            return False
        if stream.type not in ("audio", "video", "subtitle", "data", "attachment"):
            return False
    return True


def decode_to_pcm(src: Path, out: BinaryIO, max_duration_s: float | None = None,
                  probe_bytes: int | None = PROBE_BYTES) -> AudioInfo:
    """Write the first audio track of ``src`` to ``out`` as 16 kHz mono s16le; raise BadAudio if it can't.

    ``probe_bytes``: how much FFmpeg reads to identify the file first (None: FFmpeg's default probe)."""
    container = _open(src, probe_bytes)
    with container:
        if not container.streams.audio:
            raise BadAudio("the file has no audio track")
        stream = container.streams.audio[0]
        stream.thread_type = "AUTO"
        resampler = av.AudioResampler(format="s16", layout="mono", rate=PCM_SAMPLE_RATE)
        samples = 0
        limit = int(max_duration_s * PCM_SAMPLE_RATE) if max_duration_s else None
        try:
            for frame in container.decode(stream):
                frame.pts = None  # let the resampler count samples; broken timestamps must not drop audio
                for out_frame in resampler.resample(frame):
                    samples += _write(out_frame, out)
                if limit and samples > limit:
                    raise BadAudio(f"recording longer than the {max_duration_s:.0f} s limit")
            for out_frame in resampler.resample(None):
                samples += _write(out_frame, out)
        except av.error.FFmpegError as e:
            at_s = samples / PCM_SAMPLE_RATE
            raise BadAudio(f"audio stream is corrupt or truncated at {at_s:.1f} s ({_reason(e)})") from e
        if samples == 0:
            raise BadAudio("no audio could be decoded (empty or damaged audio track)")
        _check_not_truncated(container, stream, samples / PCM_SAMPLE_RATE)
        ctx = stream.codec_context
        return AudioInfo(
            duration_s=samples / PCM_SAMPLE_RATE,
            samples=samples,
            source_rate=int(ctx.sample_rate or 0),
            source_channels=int(getattr(ctx, "channels", 0) or len(getattr(ctx.layout, "channels", ()))),
            codec=str(ctx.name),
            container=str(container.format.name),
        )


# containers whose header states the audio's exact length (FLAC STREAMINFO, MP4 mdhd); elsewhere the
# duration may be an estimate from the bitrate (MP3 without a Xing header) and is not evidence of damage
_EXACT_DURATION_FORMATS = {"flac", "mov,mp4,m4a,3gp,3g2,mj2"}


def _check_not_truncated(container: av.container.InputContainer, stream: av.AudioStream, decoded_s: float) -> None:
    """FFmpeg ends a cut-off FLAC quietly at the last whole frame; refuse it rather than transcribe a part."""
    if container.format.name not in _EXACT_DURATION_FORMATS or not stream.duration or not stream.time_base:
        return
    declared_s = float(stream.duration * stream.time_base)
    if declared_s - decoded_s > max(1.0, 0.02 * declared_s):
        raise BadAudio(f"the file is truncated: its header declares {declared_s:.1f} s of audio but only "
                       f"{decoded_s:.1f} s could be decoded")


def _write(frame: av.AudioFrame, out: BinaryIO) -> int:
    data = frame.to_ndarray().reshape(-1)
    out.write(data.astype("<i2", copy=False).tobytes())
    return int(data.shape[0])


def _reason(e: Exception) -> str:
    # FFmpeg messages carry the local temp path; keep only the error text
    return getattr(e, "strerror", None) or type(e).__name__


def pcm_to_float(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


def ms_to_byte(ms: int) -> int:
    return (ms * PCM_SAMPLE_RATE // 1000) * PCM_BYTES_PER_SAMPLE


def read_pcm_window(f: BinaryIO, start_s: float, duration_s: float) -> np.ndarray:
    f.seek(int(start_s * PCM_SAMPLE_RATE) * PCM_BYTES_PER_SAMPLE)
    return pcm_to_float(f.read(int(duration_s * PCM_SAMPLE_RATE) * PCM_BYTES_PER_SAMPLE))
