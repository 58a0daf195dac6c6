"""The benchmark corpus, built once per mode under bench/work/ and reused while its spec is unchanged.

Short recordings are the English clips of ../shared/audio/ with exact references, re-encoded with a
different gain, sample rate and container each time (never byte-identical, as real uploads are not).
Long recordings join real clips and espeak-ng sentences of known text with pauses, so the reference
is exactly what was said. Every item also gets the chunk plan prepare would make (same VAD and
chunking code and options), for the engine-limit measurement.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from bench import texts

ROOT = Path(__file__).resolve().parents[1]
AUDIO = ROOT.parent / "shared" / "audio"
WORK = ROOT / "bench" / "work"
SR = 16000

# English clips whose MANIFEST reference is exact. Left out: the two-speaker stereo clip (mixed to
# mono, both speakers overlap), the digits clip (weak reference), the clip without a reference, and
# the Mandarin clips (the bundled model is English-only).
CLIPS = [
    "en_jfk_ask_not_11s.flac",
    "en_sr_one_two_three.wav",
    "en_librispeech_1995-1837-0001.wav",
    "en_librispeech_2412-153948-0000.flac",
    "en_librivox_sonnet001_53s.wav",
]
RATES = [16000, 22050, 44100, 48000]  # resampled on the way in by prepare, as real uploads are


@dataclass(frozen=True)
class CorpusSpec:
    name: str
    n_short: int
    long_s: tuple[float, ...]
    seed: int = 20251121
    version: int = 2  # bump when the generator changes, so cached audio is rebuilt


QUICK = CorpusSpec("quick", 20, (180.0,))
FULL = CorpusSpec("full", 200, (1800.0, 1800.0))


@dataclass
class Item:
    name: str
    path: str
    duration_s: float
    reference: str
    kind: str  # "short" | "long"
    chunks: list[tuple[int, int]] = field(default_factory=list)  # (start_ms, end_ms) as prepare plans them


def reference(name: str) -> str:
    from tests.wer import reference as ref

    return ref(name)


def decode16k(path: Path) -> np.ndarray:
    """Any file -> float32 16 kHz mono, through the product's own decoder."""
    from workers.audio import decode_to_pcm, pcm_to_float

    buf = io.BytesIO()
    decode_to_pcm(path, buf)
    return pcm_to_float(buf.getvalue())


class Speech:
    """Pieces of speech with their text: real clips and (cached) espeak-ng sentences."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache
        cache.mkdir(parents=True, exist_ok=True)
        self.clips = [(decode16k(AUDIO / c), reference(c)) for c in CLIPS]
        self._tts: dict[tuple[int, int], np.ndarray] = {}

    def sentence(self, i: int, v: int) -> tuple[np.ndarray, str]:
        if (i, v) not in self._tts:
            wav = self.cache / f"tts_{i:03d}_{v}.wav"
            if not wav.exists():
                voice, wpm = texts.VOICES[v]
                subprocess.run(["espeak-ng", "-v", voice, "-s", str(wpm), "-w", str(wav), texts.SENTENCES[i]],
                               check=True, capture_output=True)
            self._tts[(i, v)] = decode16k(wav)
        return self._tts[(i, v)], texts.SENTENCES[i]

    def pieces(self, rng: random.Random):
        """An endless, seeded stream of (audio, text, pause_after_s)."""
        while True:
            if rng.random() < 0.4:
                audio, text = self.clips[rng.randrange(len(self.clips))]
            else:
                audio, text = self.sentence(rng.randrange(len(texts.SENTENCES)), rng.randrange(len(texts.VOICES)))
            # mostly short pauses between sentences, now and then a long silence (a meeting's lull)
            pause = rng.uniform(5.0, 20.0) if rng.random() < 0.05 else rng.uniform(0.4, 2.5)
            yield audio, text, pause


def write_long(path: Path, duration_s: float, seed: int, speech: Speech) -> str:
    """Write a FLAC of ``duration_s`` built piece by piece (never whole in memory); return its text."""
    rng = random.Random(seed)
    noise = np.random.default_rng(seed)
    total = int(duration_s * SR)
    words: list[str] = []
    written = 0
    with sf.SoundFile(str(path), "w", SR, 1, "PCM_16", format="FLAC") as out:

        def silence(n: int) -> None:
            # a faint noise floor rather than digital silence, as in a real room
            out.write(noise.normal(0.0, 0.002, n).astype(np.float32))

        for audio, text, pause in speech.pieces(rng):
            left = total - written
            if left < 4 * SR:
                break
            if len(audio) > left:
                continue  # too long for what is left: draw another piece
            gain = 10 ** (rng.uniform(-6.0, 0.0) / 20)
            out.write(np.clip(audio * gain, -1, 1))
            gap = min(int(pause * SR), left - len(audio))
            silence(gap)
            written += len(audio) + gap
            words.append(text)
        silence(total - written)
    return " ".join(words)


def write_short(src: Path, dest: Path, rate: int, gain_db: float) -> None:
    subprocess.run(["sox", str(src), "-c", "1", "-r", str(rate), str(dest), "gain", f"{gain_db:.2f}"],
                   check=True, capture_output=True)


def chunking_options(engine: str = "whisper"):  # noqa: ANN201
    """(ChunkingOptions, VAD window s, VAD end silence ms) exactly as prepare derives them for this engine."""
    from app.catalog.plugins import MAX_CHUNK_S
    from app.settings import Settings
    from workers.chunking import ChunkingOptions

    s = Settings()
    max_chunk_s = min(s.max_chunk_s, MAX_CHUNK_S.get(engine, s.max_chunk_s))
    opts = ChunkingOptions(max_chunk_ms=int(max_chunk_s * 1000), overlap_ms=int(s.hard_cut_overlap_s * 1000))
    return opts, s.vad_window_s, s.vad_max_end_silence_ms


def plan_key(engine: str) -> str:
    """Changes whenever the chunk plans could: options, or the VAD/chunking code itself."""
    opts, window_s, silence_ms = chunking_options(engine)
    h = hashlib.sha1(repr((asdict(opts), window_s, silence_ms)).encode())
    for f in ("workers/chunking.py", "workers/vad.py", "workers/vad_decide.py", "workers/vad_onnx.py",
              "workers/fbank.py", "workers/audio.py"):
        h.update((ROOT / f).read_bytes())
    return h.hexdigest()


def plan_item(path: Path, engine: str = "whisper") -> list[tuple[int, int]]:
    """The chunk plan prepare makes for this file: same decoder, VAD windows, chunking options."""
    from app.settings import Settings
    from workers.audio import decode_to_pcm, pcm_to_float
    from workers.chunking import plan_chunks
    from workers.vad_onnx import vad_segments

    opts, window_s, silence_ms = chunking_options(engine)
    with tempfile.TemporaryFile() as f:
        info = decode_to_pcm(path, f)
        f.seek(0)
        block = int(window_s * SR) * 2

        def windows():  # noqa: ANN202
            while data := f.read(block):
                yield pcm_to_float(data)

        segments = vad_segments(windows(), silence_ms, Settings().vad_runtime)
    return [(p.start_ms, p.end_ms) for p in plan_chunks(segments, int(info.duration_s * 1000), opts)]


def build(spec: CorpusSpec, log=print, engine: str = "whisper") -> list[Item]:  # noqa: ANN001
    """The corpus of this spec with current chunk plans for ``engine`` (prepare cuts per engine);
    audio and plans are each rebuilt only when stale."""
    folder = WORK / f"corpus-{spec.name}"
    manifest, plans_file = folder / "manifest.json", folder / f"plans-{engine}.json"
    spec_doc = json.loads(json.dumps(asdict(spec)))
    items = None
    if manifest.exists():
        doc = json.loads(manifest.read_text())
        if doc.get("spec") == spec_doc:
            items = [Item(**i) for i in doc["items"]]
    if items is None:
        items = _build_audio(spec, folder, log)
        manifest.write_text(json.dumps({"spec": spec_doc, "items": [asdict(i) for i in items]}, indent=1))
        for old in folder.glob("plans-*.json"):
            old.unlink()
    key = plan_key(engine)
    plans = json.loads(plans_file.read_text()) if plans_file.exists() else {}
    if plans.get("key") != key:
        from bench.measure import run_child

        log(f"planning chunks (FSMN-VAD + plan_chunks, as prepare does) for {len(items)} files")
        # in a child: this process stays free of torch and FunASR (lighter, and no GC pauses later)
        done = run_child("bench.corpus", {"paths": {i.name: i.path for i in items}, "engine": engine})
        plans = {"key": key, "chunks": done["chunks"]}
        plans_file.write_text(json.dumps(plans))
    for i in items:
        i.chunks = [tuple(c) for c in plans["chunks"][i.name]]
    return items


def _build_audio(spec: CorpusSpec, folder: Path, log) -> list[Item]:  # noqa: ANN001
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(spec.seed)
    items: list[Item] = []
    log(f"building corpus {spec.name}: {spec.n_short} short + {len(spec.long_s)} long in {folder}")
    for i in range(spec.n_short):
        clip = CLIPS[i % len(CLIPS)]
        ext = "flac" if i % 2 else "wav"
        dest = folder / f"short_{i:03d}_{Path(clip).stem}.{ext}"
        write_short(AUDIO / clip, dest, RATES[(i // len(CLIPS)) % len(RATES)], rng.uniform(-8.0, 0.0))
        items.append(Item(dest.name, str(dest), sf.info(str(dest)).duration, reference(clip), "short"))
    speech = Speech(WORK / "tts")
    for n, dur in enumerate(spec.long_s):
        dest = folder / f"long_{n}_{int(dur)}s.flac"
        text = write_long(dest, dur, spec.seed + n, speech)
        items.append(Item(dest.name, str(dest), sf.info(str(dest)).duration, text, "long"))
    return items


def main(inp: Path, out: Path) -> None:
    cfg = json.loads(inp.read_text())
    out.write_text(json.dumps({"chunks": {name: plan_item(Path(p), cfg["engine"]) for name, p in cfg["paths"].items()}}))


if __name__ == "__main__":
    import sys

    main(Path(sys.argv[1]), Path(sys.argv[2]))
