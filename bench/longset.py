"""The long-form evaluation set (issue 16): recordings of several makes, generated here, nothing downloaded.

Each recording is laid out piece by piece from a seed, so its reference is exactly what was said and
every sentence's start is known to the sample:

- espeak-ng speech of distinct sentences (made up from word lists, never the project's test text) in
  several voices and rates, with short pauses (< 0.3 s), long pauses, and run-on sentences (several
  sentences joined into one breathless utterance: only the run's first word has a known start);
- the real clips of ../shared/audio (exact references) in random orders with random gaps;
- either kind with noise mixed in at 20 or 10 dB SNR (relative to the speech's mean power).

Every piece is trimmed to its sound (onset - 30 ms .. offset + 30 ms), so a pause is the pause asked
for and a sentence starts 30 ms after its piece. The set is split by name into a tuning half
(``tune_*``: designs are chosen on it) and a report half (``report_*``): figures are reported on both.
Built once under bench/work/longform/ and reused while its spec (and this file) is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from bench.corpus import AUDIO, WORK, decode16k, reference

SR = 16000
EDGE_S = 0.03  # sound kept before a piece's onset and after its offset
FOLDER = WORK / "longform"

# (file, reference, seconds cut from the start): the sonnet's first 2.7 s are its number heading,
# whose spoken form the manifest does not give, so they are cut and "1" leaves the reference
CLIPS = [
    ("en_jfk_ask_not_11s.flac", 0.0),
    ("en_sr_one_two_three.wav", 0.0),
    ("en_librispeech_1995-1837-0001.wav", 0.0),
    ("en_librispeech_2412-153948-0000.flac", 0.0),
    ("en_librivox_sonnet001_53s.wav", 2.7),
]

# words for made-up sentences: plain, unambiguous spellings (no numbers, no British/American variants)
_SUBJECTS = ["the tired farmer", "a young doctor", "my older sister", "the quiet student", "our new tenant",
             "the city mayor", "a famous painter", "the hotel manager", "the night nurse", "a clever engineer",
             "the village priest", "the bus driver", "an old sailor", "the school principal", "a busy lawyer",
             "the head chef", "a local reporter", "the museum guide", "my best friend", "the young pilot",
             "a shy musician", "the park ranger", "the bank teller", "a patient gardener", "the team captain"]
_VERBS = ["carried", "painted", "repaired", "described", "found", "opened", "cleaned", "borrowed", "sold",
          "forgot", "watched", "measured", "delivered", "hid", "photographed", "returned", "packed", "lifted",
          "examined", "ordered", "wrapped", "counted", "dropped", "moved"]
_OBJECTS = ["a wooden chair", "the broken window", "an empty bottle", "the heavy suitcase", "a silver key",
            "the small basket", "a strange letter", "the blue bicycle", "an old guitar", "the kitchen table",
            "a paper lantern", "the garden gate", "a leather jacket", "the tall ladder", "a glass vase",
            "the wet umbrella", "a warm blanket", "the brass lamp", "a thick book", "the iron kettle",
            "a cardboard box", "the torn map", "a white candle", "the dusty mirror"]
_PLACES = ["near the river", "behind the old church", "before the storm arrived", "after the long meeting",
           "in the crowded market", "at the edge of the forest", "on a cold winter morning",
           "during the summer festival", "under the bright moon", "beside the railway station",
           "inside the empty warehouse", "across the busy square", "at the top of the hill",
           "while everyone was sleeping", "on the way to the airport", "in front of the bakery",
           "next to the fountain", "after a quiet dinner", "outside the public library",
           "along the narrow road", "between two tall buildings", "at the end of the day"]
_RUN_JOINS = [" and then ", " and ", " so ", " but "]


def sentences(seed: int, n: int) -> list[str]:
    """``n`` distinct made-up sentences, deterministic from ``seed``."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        s = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_PLACES)}"
        if s not in seen:
            seen.add(s)
            out.append(s[0].upper() + s[1:] + ".")
    return out


@dataclass(frozen=True)
class Make:
    """How one recording is laid out."""

    voices: tuple[tuple[str, int], ...] = ()  # espeak-ng (voice, words per minute); empty: clips only
    clip_share: float = 0.0  # chance that a piece is a real clip rather than espeak-ng speech
    short_pause_share: float = 0.5  # pauses under 0.3 s; the rest 0.4-2.5 s
    long_pause_share: float = 0.0  # pauses of 3-10 s
    run_on_share: float = 0.0  # pieces of 2-3 sentences spoken as one
    snr_db: float | None = None  # noise mixed in at this SNR


@dataclass(frozen=True)
class Recording:
    name: str
    duration_s: float
    make: Make
    seed: int


SLOW, FAST = 130, 200
US, GB = "en-us", "en-gb"
#: the set: 8 recordings of 3 min or more and 2 of 20 min, half for tuning, half for the report
RECORDINGS = [
    Recording("tune_tts_us_slow_short_pauses", 200, Make(((US, SLOW),), short_pause_share=0.9), 1601),
    Recording("tune_tts_gb_fast_runon_long_pauses", 200,
              Make(((GB, FAST),), short_pause_share=0.3, long_pause_share=0.15, run_on_share=0.3), 1602),
    Recording("tune_clips_gaps", 200, Make(clip_share=1.0, short_pause_share=0.3, long_pause_share=0.05), 1603),
    Recording("tune_mixed_snr10", 200, Make(((US, FAST), (GB, SLOW)), clip_share=0.4, snr_db=10.0), 1604),
    Recording("tune_long_mixed", 1260,
              Make(((US, SLOW), (GB, FAST), (US, FAST), (GB, SLOW)), clip_share=0.3, short_pause_share=0.4,
                   long_pause_share=0.05, run_on_share=0.15), 1605),
    Recording("report_tts_gb_slow_short_pauses", 200, Make(((GB, SLOW),), short_pause_share=0.9), 1611),
    Recording("report_tts_us_fast_runon_long_pauses", 200,
              Make(((US, FAST),), short_pause_share=0.3, long_pause_share=0.15, run_on_share=0.3), 1612),
    Recording("report_clips_gaps_snr20", 200,
              Make(clip_share=1.0, short_pause_share=0.3, long_pause_share=0.05, snr_db=20.0), 1613),
    Recording("report_mixed_snr10", 200, Make(((GB, FAST), (US, SLOW)), clip_share=0.4, snr_db=10.0), 1614),
    Recording("report_long_mixed_snr20", 1260,
              Make(((US, SLOW), (GB, FAST), (US, FAST), (GB, SLOW)), clip_share=0.3, short_pause_share=0.4,
                   long_pause_share=0.05, run_on_share=0.15, snr_db=20.0), 1615),
]
QUICK = ["tune_mixed_snr10"]  # what `make bench-quick` runs: one 3-minute recording


@dataclass
class Built:
    name: str
    path: str
    duration_s: float
    half: str  # "tune" | "report"
    reference: str
    starts: list[tuple[float, str]] = field(default_factory=list)  # (start_s, text) of each sentence / run / clip


def _trim(audio: np.ndarray) -> np.ndarray:
    """The piece from EDGE_S before its first sound to EDGE_S after its last (10 ms frames 35 dB below
    the piece's loudest frame count as silence)."""
    frames = audio[: len(audio) // 160 * 160].reshape(-1, 160)
    rms = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1)) + 1e-9
    loud = np.flatnonzero(20 * np.log10(rms / rms.max()) > -35.0)
    a = max(0, loud[0] * 160 - int(EDGE_S * SR))
    b = min(len(audio), (loud[-1] + 1) * 160 + int(EDGE_S * SR))
    return audio[a:b].astype(np.float32)


class _Pieces:
    def __init__(self) -> None:
        self.tts = FOLDER / "tts"
        self.tts.mkdir(parents=True, exist_ok=True)
        self.clips = []
        for name, cut_s in CLIPS:
            ref = reference(name)
            if cut_s:
                ref = ref.split(" ", 1)[1]  # "1 From fairest ..." -> "From fairest ..."
            self.clips.append((_trim(decode16k(AUDIO / name)[int(cut_s * SR):]), ref))

    def speak(self, text: str, voice: str, wpm: int) -> np.ndarray:
        key = hashlib.sha1(f"{voice}|{wpm}|{text}".encode()).hexdigest()[:16]
        wav = self.tts / f"{key}.wav"
        if not wav.exists():
            tmp = wav.with_suffix(".tmp.wav")
            subprocess.run(["espeak-ng", "-v", voice, "-s", str(wpm), "-w", str(tmp), text], check=True,
                           capture_output=True)
            tmp.rename(wav)
        return _trim(decode16k(wav))


def _layout(rec: Recording, pieces: _Pieces) -> tuple[np.ndarray, list[tuple[float, str]], list[bool]]:
    """The recording's speech (no noise yet), its sentence starts, and which samples are speech."""
    rng = random.Random(rec.seed)
    m = rec.make
    pool = iter(sentences(rec.seed, 2000))
    total = int(rec.duration_s * SR)
    out = [np.zeros(int(rng.uniform(0.5, 1.5) * SR), np.float32)]
    at = len(out[0])
    starts: list[tuple[float, str]] = []
    while True:
        if not m.voices or rng.random() < m.clip_share:
            audio, text = pieces.clips[rng.randrange(len(pieces.clips))]
        else:
            voice, wpm = m.voices[rng.randrange(len(m.voices))]
            if rng.random() < m.run_on_share:
                parts = [next(pool).rstrip(".") for _ in range(rng.choice((2, 3)))]
                text = parts[0] + "".join(rng.choice(_RUN_JOINS) + p[0].lower() + p[1:] for p in parts[1:]) + "."
            else:
                text = next(pool)
            audio = pieces.speak(text, voice, wpm)
        r = rng.random()
        if r < m.long_pause_share:
            pause_s = rng.uniform(3.0, 10.0)
        elif r < m.long_pause_share + m.short_pause_share:
            pause_s = rng.uniform(0.08, 0.28)
        else:
            pause_s = rng.uniform(0.4, 2.5)
        gain = 10 ** (rng.uniform(-6.0, 0.0) / 20)
        if at + len(audio) > total - int(0.5 * SR):
            break
        starts.append((round(at / SR + EDGE_S, 3), text))
        out.append(np.clip(audio * gain, -1, 1).astype(np.float32))
        at += len(audio)
        gap = min(int(pause_s * SR), total - at)
        out.append(np.zeros(gap, np.float32))
        at += gap
    out.append(np.zeros(max(0, total - at), np.float32))
    speech = np.concatenate(out)
    return speech, starts


def _render(rec: Recording, pieces: _Pieces, dest: Path) -> Built:
    speech, starts = _layout(rec, pieces)
    noise_rng = np.random.default_rng(rec.seed)
    audio = speech + noise_rng.normal(0.0, 0.001, len(speech)).astype(np.float32)  # a room's faint floor
    if rec.make.snr_db is not None:
        voiced = speech[np.abs(speech) > 1e-4]
        power = float(np.mean(voiced.astype(np.float64) ** 2))
        # pink-ish noise (white through a one-pole low-pass), scaled to the SNR against the speech's power
        white = noise_rng.normal(0.0, 1.0, len(speech))
        from scipy.signal import lfilter

        noise = lfilter([1.0], [1.0, -0.9], white)
        noise *= np.sqrt(power / 10 ** (rec.make.snr_db / 10) / np.mean(noise ** 2))
        audio = audio + noise.astype(np.float32)
    sf.write(str(dest), np.clip(audio, -1, 1), SR, subtype="PCM_16", format="FLAC")
    half = rec.name.split("_", 1)[0]
    return Built(rec.name, str(dest), len(audio) / SR, half, " ".join(t for _, t in starts), starts)


def spec_key() -> str:
    h = hashlib.sha1(Path(__file__).read_bytes())
    h.update(repr([asdict(r) for r in RECORDINGS]).encode())
    return h.hexdigest()[:12]


def build(names: list[str] | None = None, log=print) -> list[Built]:
    """The recordings named (default: all), built if missing or stale."""
    FOLDER.mkdir(parents=True, exist_ok=True)
    manifest = FOLDER / "manifest.json"
    doc = json.loads(manifest.read_text()) if manifest.exists() else {}
    if doc.get("key") != spec_key():
        doc = {"key": spec_key(), "items": {}}
    wanted = [r for r in RECORDINGS if names is None or r.name in names]
    pieces = None
    for rec in wanted:
        if rec.name not in doc["items"] or not Path(doc["items"][rec.name]["path"]).exists():
            pieces = pieces or _Pieces()
            log(f"longform set: building {rec.name} ({rec.duration_s / 60:.1f} min)")
            doc["items"][rec.name] = asdict(_render(rec, pieces, FOLDER / f"{rec.name}.flac"))
            manifest.write_text(json.dumps(doc, indent=1))
    return [Built(**{**doc["items"][r.name], "starts": [tuple(s) for s in doc["items"][r.name]["starts"]]})
            for r in wanted]


if __name__ == "__main__":
    import sys

    for b in build(sys.argv[1:] or None):
        print(f"{b.name}: {b.duration_s:.0f} s, {len(b.starts)} sentences, {len(b.reference.split())} words")
