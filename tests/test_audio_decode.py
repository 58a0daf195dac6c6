"""Opening a file with a short probe (workers.audio.PROBE_BYTES) decodes exactly what FFmpeg's default
probe decodes: the same PCM bytes, the same AudioInfo, or the same refusal, for every test recording, the
bad inputs, and containers whose streams a short probe may not settle (MPEG-TS with the audio after a
video stream, an MP3 behind a large ID3 tag, a WAV with a large chunk before its data)."""

from __future__ import annotations

import io
import struct
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest

from app.errors import BadAudio
from tests import bad_inputs as bi
from tests.audio_fixtures import SR, encode_mono, load_clip
from tests.services import AUDIO
from workers.audio import PROBE_BYTES, decode_to_pcm

RECORDINGS = sorted(p for p in AUDIO.iterdir() if p.suffix.lower() not in (".tsv", ".md", ".txt"))


def _decode(path: Path, probe_bytes: int | None):  # noqa: ANN202
    buf = io.BytesIO()
    try:
        info = decode_to_pcm(path, buf, probe_bytes=probe_bytes)
    except BadAudio as e:
        return "refused", str(e)
    return info, buf.getvalue()


def assert_same(path: Path) -> None:
    full, short = _decode(path, None), _decode(path, PROBE_BYTES)
    assert short[0] == full[0], (path.name, short[0], full[0])
    assert short[1] == full[1], f"{path.name}: the PCM differs"


def _speech(seconds: float) -> np.ndarray:
    clip = load_clip(AUDIO / "en_librivox_sonnet001_53s.wav")
    return clip[: int(seconds * SR)]


def _mpegts_audio_after_video(folder: Path) -> Path:
    """Seconds of video packets before the first audio packet: the audio's parameters lie past a short probe."""
    p = folder / "late_audio.ts"
    speech = _speech(6.0)
    with av.open(str(p), "w", format="mpegts") as out:
        vs = out.add_stream("mpeg2video", rate=25)
        vs.width, vs.height = 320, 240
        aus = out.add_stream("mp2", rate=SR, layout="mono")
        rng = np.random.default_rng(0)
        for i in range(150):  # 6 s of noisy video first (large packets)
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (240, 320, 3), np.uint8), format="rgb24")
            for pkt in vs.encode(frame):
                out.mux(pkt)
        for pkt in vs.encode(None):
            out.mux(pkt)
        step = 1152
        for i in range(0, len(speech) - step, step):
            af = av.AudioFrame.from_ndarray((speech[i:i + step] * 32767).astype(np.int16).reshape(1, -1),
                                            format="s16", layout="mono")
            af.sample_rate = SR
            for pkt in aus.encode(af):
                out.mux(pkt)
        for pkt in aus.encode(None):
            out.mux(pkt)
    return p


def _mp3_behind_large_id3(folder: Path) -> Path:
    plain = encode_mono(folder / "plain.mp3", [_speech(8.0)], codec="libmp3lame", container="mp3")
    payload = b"\0" * 300_000  # a PRIV frame as large as cover art
    frame = b"PRIV" + struct.pack(">I", len(payload)) + b"\0\0" + payload

    def syncsafe(n: int) -> bytes:
        return bytes([(n >> 21) & 0x7F, (n >> 14) & 0x7F, (n >> 7) & 0x7F, n & 0x7F])

    p = folder / "big_id3.mp3"
    p.write_bytes(b"ID3\x03\x00\x00" + syncsafe(len(frame)) + frame + plain.read_bytes())
    return p


def _wav_with_large_chunk(folder: Path) -> Path:
    pcm = (_speech(5.0) * 32767).astype("<i2").tobytes()
    junk = b"JUNK" + struct.pack("<I", 200_000) + b"\0" * 200_000
    fmt = b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, SR, SR * 2, 2, 16)
    data = b"data" + struct.pack("<I", len(pcm)) + pcm
    body = b"WAVE" + junk + fmt + data
    p = folder / "junk_chunk.wav"
    p.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return p


@pytest.mark.parametrize("path", RECORDINGS, ids=[p.name for p in RECORDINGS])
def test_test_recordings(path: Path) -> None:
    assert_same(path)


def test_awkward_and_bad_inputs(tmp_path: Path) -> None:
    makers = [bi.make_truncated_flac, bi.make_pdf, bi.make_png, bi.make_text, bi.make_video_without_audio,
              bi.make_silence, bi.make_low_noise, bi.make_telephone_8k, bi.make_telephone_mulaw,
              bi.make_surround_6ch, bi.make_video, bi.make_empty]
    paths = [m(tmp_path) for m in makers]
    paths += [_mpegts_audio_after_video(tmp_path), _mp3_behind_large_id3(tmp_path), _wav_with_large_chunk(tmp_path)]
    for codec, container, ext in (("libopus", "ogg", "opus"), ("aac", "mp4", "m4a"), ("alac", "mp4", "m4a"),
                                  ("ac3", "matroska", "mka")):
        rate = 48000 if codec in ("libopus", "ac3") else SR
        src = _speech(7.0)
        if rate != SR:
            src = np.interp(np.arange(int(len(src) * rate / SR)) * SR / rate, np.arange(len(src)), src)
        paths.append(encode_mono(tmp_path / f"{codec}.{ext}", [src.astype(np.float32)], codec=codec, rate=rate,
                                 container=container))
    for rate in (8000, 22050, 44100, 48000):
        dest = tmp_path / f"sox_{rate}.wav"
        subprocess.run(["sox", str(AUDIO / "en_jfk_ask_not_11s.flac"), "-r", str(rate), str(dest)], check=True)
        paths.append(dest)
    for p in paths:
        assert_same(p)
    # the case this test is here for: a short probe alone reads this MPEG-TS differently
    def codec(**options: str) -> str:
        with av.open(str(tmp_path / "late_audio.ts"), options=options) as c:
            return c.streams.audio[0].codec_context.name if c.streams.audio else ""

    assert codec(probesize=str(PROBE_BYTES)) != codec()
