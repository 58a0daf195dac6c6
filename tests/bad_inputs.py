"""Bad and awkward inputs, generated at test time into a folder (no binary blobs in the repository).

Each ``make_*`` writes one file into ``folder`` and returns its path. The audio ones are built from
the real clips in ``tests.services.AUDIO`` so a transcript can be checked against a known reference.
"""

from __future__ import annotations

import struct
import wave
import zlib
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from tests.audio_fixtures import encode_mono
from tests.services import AUDIO

# the clip the audio variants are made from, and the one the truncated FLAC is cut from
SPEECH_CLIP = "en_jfk_ask_not_11s.flac"
TRUNCATE_CLIP = "en_librispeech_2412-153948-0000.flac"
# a file name a hostile or careless client might send: path traversal and control characters
ODD_NAME = "../../etc/\x07evil\n.wav"


def _load(path: Path, rate: int) -> np.ndarray:
    """Any audio file -> float32 mono at ``rate`` (PyAV's resampler, as the product uses)."""
    out = []
    with av.open(str(path)) as c:
        res = av.AudioResampler(format="s16", layout="mono", rate=rate)
        for frame in c.decode(audio=0):
            frame.pts = None
            out += [f.to_ndarray().reshape(-1) for f in res.resample(frame)]
        out += [f.to_ndarray().reshape(-1) for f in res.resample(None)]
    return np.concatenate(out).astype(np.float32) / 32768.0


def _to_i16(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, -1.0, 1.0) * 32767).astype(np.int16)


def _write_wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    """float32 samples, shape (n,) or (n, channels) -> 16-bit PCM WAV with the standard library."""
    data = _to_i16(samples if samples.ndim == 2 else samples[:, None])
    with wave.open(str(path), "wb") as w:
        w.setnchannels(data.shape[1])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(data.tobytes())
    return path


# --- not audio at all ---------------------------------------------------------------------------

def make_empty(folder: Path) -> Path:
    p = folder / "empty.wav"
    p.write_bytes(b"")
    return p


def make_pdf(folder: Path) -> Path:
    """A minimal valid one-page PDF with one line of text."""
    content = b"BT /F1 24 Tf 72 720 Td (This is not audio.) Tj ET"
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for n, body in enumerate(objs, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % n + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    p = folder / "fake.pdf"
    p.write_bytes(bytes(out))
    return p


def make_png(folder: Path, width: int = 16, height: int = 16) -> Path:
    """A tiny valid RGB PNG (a gradient), written with zlib and struct."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = bytearray()
    for y in range(height):
        raw += b"\x00"  # filter type: none
        for x in range(width):
            raw += bytes((x * 255 // max(1, width - 1), y * 255 // max(1, height - 1), 128))
    png = (b"\x89PNG\r\n\x1a\n"
           + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(bytes(raw)))
           + chunk(b"IEND", b""))
    p = folder / "image.png"
    p.write_bytes(png)
    return p


def make_text(folder: Path) -> Path:
    p = folder / "notes.txt"
    p.write_text("Meeting notes\n- ask not what your country can do for you\n- this is text, not audio\n")
    return p


# --- damaged audio ------------------------------------------------------------------------------

def make_truncated_flac(folder: Path, keep: float = 0.30) -> Path:
    """A real FLAC cut to its first ``keep`` fraction of bytes (an interrupted download)."""
    data = (AUDIO / TRUNCATE_CLIP).read_bytes()
    p = folder / "truncated.flac"
    p.write_bytes(data[: int(len(data) * keep)])
    return p


# --- audio with no speech -----------------------------------------------------------------------

def make_silence(folder: Path, seconds: float = 10.0, rate: int = 16000) -> Path:
    """Digital silence: every sample zero."""
    return _write_wav(folder / "silence.wav", np.zeros(int(seconds * rate), np.float32), rate)


def make_low_noise(folder: Path, seconds: float = 10.0, rate: int = 16000, dbfs: float = -60.0) -> Path:
    """Steady low white noise (room tone), no speech."""
    rng = np.random.default_rng(7)
    noise = rng.standard_normal(int(seconds * rate)).astype(np.float32) * (10 ** (dbfs / 20))
    return _write_wav(folder / "low_noise.wav", noise, rate)


# --- unusual but valid audio --------------------------------------------------------------------

def make_telephone_8k(folder: Path) -> Path:
    """The speech clip as 8 kHz mono 16-bit PCM (narrowband telephone audio)."""
    return _write_wav(folder / "telephone_8k.wav", _load(AUDIO / SPEECH_CLIP, 8000), 8000)


def make_telephone_mulaw(folder: Path) -> Path:
    """The speech clip as 8 kHz mono G.711 mu-law in WAV (what phone systems record)."""
    x = _to_i16(_load(AUDIO / SPEECH_CLIP, 8000))
    p = encode_mono(folder / "telephone_8k_mulaw.wav", (x[i : i + 8000] for i in range(0, len(x), 8000)),
                    codec="pcm_mulaw", rate=8000, container="wav")
    return p


def make_surround_6ch(folder: Path) -> Path:
    """5.1 at 48 kHz: the speech on the centre channel (index 2), the LFE and rears silent, and the
    front left/right holding only low room noise, as a dialogue track of a film mix would."""
    speech = _load(AUDIO / SPEECH_CLIP, 48000)
    n = len(speech)
    rng = np.random.default_rng(3)
    chans = np.zeros((n, 6), np.float32)
    chans[:, 2] = speech  # FC
    chans[:, 0] = rng.standard_normal(n).astype(np.float32) * 0.003  # FL: -50 dBFS noise
    chans[:, 1] = rng.standard_normal(n).astype(np.float32) * 0.003  # FR
    p = folder / "surround_6ch_48k.wav"
    data = _to_i16(chans)
    with av.open(str(p), "w", format="wav") as out:
        st = out.add_stream("pcm_s16le", rate=48000, layout="5.1")
        for i in range(0, n, 48000):
            block = np.ascontiguousarray(data[i : i + 48000]).reshape(1, -1)  # packed s16: interleaved
            frame = av.AudioFrame.from_ndarray(block, format="s16", layout="5.1")
            frame.sample_rate = 48000
            for pkt in st.encode(frame):
                out.mux(pkt)
        for pkt in st.encode(None):
            out.mux(pkt)
    return p


def make_video(folder: Path, seconds_of_video: float | None = None) -> Path:
    """An MP4 with an H.264 video track (gray frames, 10 fps, 64x48) and an AAC track of the speech clip."""
    speech = _to_i16(_load(AUDIO / SPEECH_CLIP, 44100))
    dur = seconds_of_video if seconds_of_video is not None else len(speech) / 44100
    p = folder / "video.mp4"
    with av.open(str(p), "w", format="mp4") as out:
        vs = out.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=10)
        vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        aus = out.add_stream("aac", rate=44100, layout="mono")
        gray = np.full((48, 64, 3), 128, np.uint8)
        for i in range(int(dur * 10)):
            vf = av.VideoFrame.from_ndarray(gray, format="rgb24")
            vf.pts, vf.time_base = i, Fraction(1, 10)
            for pkt in vs.encode(vf):
                out.mux(pkt)
        step = 1024  # AAC frame size
        for i in range(0, len(speech), step):
            af = av.AudioFrame.from_ndarray(speech[i : i + step].reshape(1, -1), format="s16", layout="mono")
            af.sample_rate, af.pts, af.time_base = 44100, i, Fraction(1, 44100)
            for pkt in aus.encode(af):
                out.mux(pkt)
        for st in (vs, aus):
            for pkt in st.encode(None):
                out.mux(pkt)
    return p


def make_video_without_audio(folder: Path) -> Path:
    """An MP4 with only a video track."""
    p = folder / "silent_film.mp4"
    with av.open(str(p), "w", format="mp4") as out:
        vs = out.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=10)
        vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        for i in range(20):
            vf = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 90, np.uint8), format="rgb24")
            vf.pts, vf.time_base = i, Fraction(1, 10)
            for pkt in vs.encode(vf):
                out.mux(pkt)
        for pkt in vs.encode(None):
            out.mux(pkt)
    return p


def make_odd_name_copy(folder: Path) -> Path:
    """A plain copy of a short real clip; the test uploads it under ``ODD_NAME``."""
    p = folder / "odd_name_source.wav"
    p.write_bytes((AUDIO / "en_sr_one_two_three.wav").read_bytes())
    return p


# --- a long recording ---------------------------------------------------------------------------

def long_clip_starts(duration_s: float) -> tuple[float, float]:
    """Where make_long_flac puts the speech clip: 5 s in, and 20 s before the end."""
    return 5.0, duration_s - 20.0


def make_long_flac(folder: Path, duration_s: float, name: str = "long.flac", rate: int = 16000) -> Path:
    """A long mono FLAC, streamed minute by minute: the speech clip near the start and again near the
    end, digital silence between (so VAD leaves little to transcribe). An hour takes ~2 s and 1 MB."""
    clip = _load(AUDIO / SPEECH_CLIP, rate)
    at = [int(s * rate) for s in long_clip_starts(duration_s)]
    total, block = int(duration_s * rate), 60 * rate
    def blocks():  # noqa: ANN202
        for pos in range(0, total, block):
            b = np.zeros(min(block, total - pos), np.float32)
            for a in at:
                lo, hi = max(a, pos), min(a + len(clip), pos + len(b))
                if lo < hi:
                    b[lo - pos : hi - pos] = clip[lo - a : hi - a]
            yield _to_i16(b)

    p = encode_mono(folder / name, blocks(), rate=rate)
    return p
