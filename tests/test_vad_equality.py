"""The numpy VAD decision pass (workers/vad_decide.py) gives exactly FunASR's segments.

Each case runs workers.vad.speech_segments twice on the same windows, once with FunASR's own per-frame
state machine (AutoModel.generate, as asrq ran it before) and once with the array pass, and compares
the (start_ms, end_ms) lists for equality:

- every recording in ../shared/audio/ under the window sizes and end silences asrq can be set to
  (60 s windows; 5 s, where every FunASR call is streaming; 7.3333 s, whose windows are not whole
  multiples of FunASR's chunk stride; 15 s and 14.999 s on either side of FunASR's streaming switch);
- long recordings built from them: all clips with random pauses, ten minutes of clips tiled, a
  babble of four overlapped streams (segments cut at FunASR's 60 s limit), recordings that end in
  speech, whose last window is 50 or 32 samples, and digital silence;
- FunASR's state machine fed scripted scores (the network replaced, the fbank and everything after
  it FunASR's) under random options: flicker, long speech, exact ties at the speech threshold, the
  noise-level (SNR) and decibel gates switched on, short and long timeouts; and sweeps that put the
  silence timeout, the length limit, the final frame and returning speech on one frame.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from tests.audio_fixtures import SR, join_with_pauses, load_clip, tile_to_duration
from tests.services import AUDIO
from workers.vad import bundled_vad_dir, load_vad, speech_segments
from workers.vad_decide import decision_options, frame_decibels

pytestmark = pytest.mark.slow  # the real FSMN-VAD model on CPU, old and new pass side by side

RECORDINGS = sorted(p for p in AUDIO.iterdir() if p.suffix.lower() not in (".tsv", ".md", ".txt"))
# (window s, max end silence ms): asrq's defaults first, then the edges of FunASR's chunking
SHORT_CASES = [(60.0, 300), (5.0, 300), (7.3333, 300), (60.0, 100), (60.0, 800), (15.0, 205), (14.999, 205),
               (5.0, 800)]
LONG_CASES = [(60.0, 300), (5.0, 300), (7.3333, 800), (15.0, 205)]


def windows(audio: np.ndarray, window_s: float):  # noqa: ANN201
    """Windows as prepare cuts them (int(window_s * 16 kHz) samples, the last one shorter)."""
    w = int(window_s * SR)
    return (audio[i:i + w] for i in range(0, len(audio), w))


def both(audio: np.ndarray, window_s: float, silence_ms: int, model=None):  # noqa: ANN001, ANN201
    old = speech_segments(windows(audio, window_s), silence_ms, decision="funasr", model=model)
    new = speech_segments(windows(audio, window_s), silence_ms, decision="numpy", model=model)
    return old, new


def assert_same(name: str, audio: np.ndarray, cases, model=None) -> list:  # noqa: ANN001
    out = []
    for window_s, silence_ms in cases:
        old, new = both(audio, window_s, silence_ms, model)
        diff = [(o, n) for o, n in zip(old, new) if o != n][:3]
        assert new == old, (f"{name}, {window_s} s windows, {silence_ms} ms: {len(new)} vs FunASR's {len(old)} "
                            f"segments, first differences {diff}")
        out.append(old)
    return out


@pytest.fixture(scope="module")
def clips() -> dict[str, np.ndarray]:
    return {p.name: load_clip(p) for p in RECORDINGS}


@pytest.mark.parametrize("path", RECORDINGS, ids=[p.name for p in RECORDINGS])
def test_every_test_recording(path, clips) -> None:  # noqa: ANN001
    assert_same(path.name, clips[path.name], SHORT_CASES)


def test_long_recordings(clips) -> None:  # noqa: ANN001
    rng = np.random.default_rng(20251201)
    parts = [(name, "", audio) for name, audio in clips.items()]
    joined, _ = join_with_pauses(parts, list(rng.uniform(0.05, 3.0, len(parts))))
    # 10 minutes and a bit: the last window is short, so the final FunASR call is a streaming one
    tiled = np.concatenate(list(tile_to_duration(list(clips.values()), 610.5)))
    assert_same("clips with random pauses", joined, LONG_CASES)
    assert_same("clips tiled for 10 min", tiled, LONG_CASES[:1])


def test_segments_cut_at_the_length_limit(clips) -> None:  # noqa: ANN001
    stream = np.concatenate(list(clips.values()))
    babble = np.clip(sum(np.roll(stream, len(stream) * k // 4) for k in range(4)) / 3, -1, 1).astype(np.float32)
    (at_300, *_) = assert_same("babble", babble, [(60.0, 300), (5.0, 2000), (7.3333, 300)])
    # the case this recording is here for: FunASR cuts segments at max_single_segment_time (60 s)
    assert max(e - b for b, e in at_300) >= 60_000


def test_recordings_that_end_in_speech_or_silence(clips) -> None:  # noqa: ANN001
    speech = np.concatenate([clips["en_librivox_sonnet001_53s.wav"], clips["en_jfk_ask_not_11s.flac"]])
    # final window of 50 samples (FunASR: two chunks, the second of 2 samples) or 32 (the second empty)
    for extra in (50, 32):
        assert_same(f"60 s + {extra} samples", speech[:60 * SR + extra], [(60.0, 300)])
    assert_same("cut mid-word", clips["en_jfk_ask_not_11s.flac"][: int(4.3 * SR) + 7], SHORT_CASES[:4])
    assert_same("digital silence", np.zeros(30 * SR, np.float32), [(60.0, 300), (5.0, 300)])
    noise = np.random.default_rng(3).normal(0, 0.002, 20 * SR).astype(np.float32)
    assert_same("noise floor", noise, [(60.0, 300), (5.0, 300)])


def test_shorter_than_one_frame() -> None:
    # FunASR's AutoModel divides by the audio time it scored and raises ZeroDivisionError here; the
    # array pass finds what there is to find: nothing
    assert speech_segments([np.zeros(300, np.float32)], 300, decision="numpy") == []
    assert speech_segments([], 300, decision="numpy") == []


def test_frame_decibels_are_funasrs() -> None:
    rng = np.random.default_rng(7)
    for n in (1, 2, 57, 6000):
        wave = (rng.normal(0, 0.1, (n - 1) * 160 + 400) * rng.choice([0, 1e-3, 1], (n - 1) * 160 + 400)
                ).astype(np.float32)
        # FunASR's ComputeDecibel, verbatim
        offsets = np.arange(0, wave.shape[0] - 400 + 1, 160)
        frames = wave[offsets[:, np.newaxis] + np.arange(400)]
        expected = (10 * np.log10(np.sum(np.square(frames), axis=1) + 0.000001)).tolist()
        assert frame_decibels(wave, n).tolist() == expected


# --- FunASR's state machine on scripted scores ---------------------------------------------------------

class ScriptedScores(torch.nn.Module):
    """Stands in for the FSMN network: hands out a fixed sequence of silence posteriors, in order."""

    def __init__(self, sil_prob: np.ndarray) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # AutoModel reads the device off a parameter
        self.sil = torch.from_numpy(sil_prob.astype(np.float32))
        self.pos = 0

    def forward(self, feats: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        t = feats.shape[1]
        out = torch.zeros(1, t, 248)
        out[0, :, 0] = self.sil[self.pos:self.pos + t]
        out[0, :, 1] = 1 - out[0, :, 0]
        self.pos += t
        return out


@pytest.fixture(scope="module")
def scripted_model():
    """An own instance of the bundled model (not the cached one): its network and options change here."""
    model = load_vad.__wrapped__(str(bundled_vad_dir()))
    defaults = dataclasses.replace(_opts_of(model))
    yield model
    _set_opts(model, defaults)


@dataclasses.dataclass
class _Opts:
    speech_noise_thres: float
    snr_thres: float
    decibel_thres: float
    max_single_segment_time: int
    window_size_ms: int
    sil_to_speech_time_thres: int
    speech_to_sil_time_thres: int
    lookback_time_start_point: int
    lookahead_time_end_point: int


def _opts_of(model) -> _Opts:  # noqa: ANN001
    v = model.model.vad_opts
    return _Opts(**{f.name: getattr(v, f.name) for f in dataclasses.fields(_Opts)})


def _set_opts(model, o: _Opts) -> None:  # noqa: ANN001
    for f in dataclasses.fields(_Opts):
        setattr(model.model.vad_opts, f.name, getattr(o, f.name))


def scripted_posteriors(rng: np.random.Generator, n: int, thres: float) -> np.ndarray:
    """Runs of speech-like, silence-like and borderline posteriors, from single frames to minutes."""
    out = []
    edge = (1.0 - thres) / 2  # where exp(log(1 - s)) = exp(log(s)) + thres
    while sum(map(len, out)) < n:
        kind = rng.choice(["speech", "silence", "edge"], p=[0.45, 0.45, 0.10])
        length = int(rng.choice([rng.integers(1, 25), rng.integers(25, 400), rng.integers(400, 9000)],
                                p=[0.5, 0.45, 0.05]))
        if kind == "speech":
            out.append(rng.uniform(0.001, min(0.15, edge), length))
        elif kind == "silence":
            out.append(rng.uniform(max(0.3, edge), 0.999, length))
        else:
            ulp = np.spacing(np.float32(edge))
            out.append(np.float32(edge) + ulp * rng.integers(-3, 4, length))
    return np.concatenate(out)[:n].astype(np.float32)


def scripted_audio(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Noise whose level jumps every half second (digital silence included), for the decibel gates."""
    levels = rng.choice([0.0, 1e-4, 1e-3, 1e-2, 0.1, 0.5], int(seconds * 2) + 1)
    gain = np.repeat(levels, SR // 2)[: int(seconds * SR)]
    return (rng.normal(0, 1, len(gain)) * gain).clip(-1, 1).astype(np.float32)


@pytest.mark.parametrize("seed", range(24))
def test_state_machine_on_scripted_scores(seed, scripted_model) -> None:  # noqa: ANN001
    rng = np.random.default_rng(seed)
    o = _Opts(
        speech_noise_thres=float(rng.choice([0.6, 0.5, 0.3, 0.9])),
        snr_thres=float(rng.choice([-100.0, 3.0, 10.0])),
        decibel_thres=float(rng.choice([-100.0, -45.0, -30.0])),
        max_single_segment_time=int(rng.choice([60000, 3000, 1234])),
        window_size_ms=int(rng.choice([200, 150, 300])),
        sil_to_speech_time_thres=int(rng.choice([150, 100, 200])),
        speech_to_sil_time_thres=int(rng.choice([150, 100])),
        lookback_time_start_point=int(rng.choice([200, 0, 500])),
        lookahead_time_end_point=int(rng.choice([100, 0, 300])),
    )
    silence_ms = int(rng.choice([300, 100, 150, 205, 800, 2000]))
    window_s = float(rng.choice([60.0, 5.0, 7.3333, 15.0, 14.999, 31.7]))
    seconds = float(rng.uniform(20, 130))
    audio = scripted_audio(rng, seconds)
    sil = scripted_posteriors(rng, len(audio) // 160 + 10, o.speech_noise_thres)
    _set_opts(scripted_model, o)
    assert decision_options(scripted_model.model.vad_opts, silence_ms) is not None  # the array pass runs
    results = []
    for decision in ("funasr", "numpy"):
        scripted_model.model.encoder = ScriptedScores(sil)
        results.append(speech_segments(windows(audio, window_s), silence_ms, decision=decision,
                                       model=scripted_model))
    old, new = results
    assert new == old, (f"seed {seed} {o} {silence_ms} ms, {window_s} s windows: {len(new)} vs {len(old)}, "
                        f"first differences {[(a, b) for a, b in zip(old, new) if a != b][:3]}")


def _scripted_both(model, sil: np.ndarray, audio: np.ndarray, silence_ms: int,  # noqa: ANN001, ANN202
                   window_s: float = 60.0):
    out = []
    for decision in ("funasr", "numpy"):
        model.model.encoder = ScriptedScores(sil)
        out.append(speech_segments(windows(audio, window_s), silence_ms, decision=decision, model=model))
    return out


def test_events_on_the_same_frame(scripted_model) -> None:  # noqa: ANN001
    """Sweeps that make the rare coincidences certain: the silence timeout, the length limit, the
    final frame and a return of speech falling on one frame, where FunASR's order of checks decides."""
    _set_opts(scripted_model, _Opts(0.6, -100.0, -100.0, 1000, 200, 150, 150, 200, 100))  # 100-frame limit
    rng = np.random.default_rng(11)
    audio = scripted_audio(rng, 6.0)
    speech, quiet = 0.05, 0.9
    for run in range(60, 150, 3):  # a speech run ending near the length limit, then silence, then speech
        for gap in (14, 15, 16):  # around the 15 silence frames that end a segment at 300 ms
            sil = np.full(len(audio) // 160 + 10, quiet, np.float32)
            sil[30:30 + run] = speech
            sil[30 + run + gap:30 + run + gap + 40] = speech
            old, new = _scripted_both(scripted_model, sil, audio, 300)
            assert new == old, (run, gap, old, new)
    for frames in range(15, 140):  # the recording ends on every frame of a speech run and its silence
        n = (frames - 1) * 160 + 400
        sil = np.full(frames + 10, quiet, np.float32)
        sil[10:70] = speech
        for window_s in (60.0, 5.0):
            old, new = _scripted_both(scripted_model, sil, audio[:n], 300, window_s)
            assert new == old, (frames, window_s, old, new)


def test_posterior_of_exactly_one_fails_as_in_funasr(scripted_model) -> None:  # noqa: ANN001
    # math.log(1 - 1.0) raises in FunASR's GetFrameState; the array pass raises the same error
    _set_opts(scripted_model, _Opts(0.6, -100.0, -100.0, 60000, 200, 150, 150, 200, 100))
    audio = scripted_audio(np.random.default_rng(1), 3.0)
    sil = np.full(len(audio) // 160 + 10, 0.9, np.float32)
    sil[100] = 1.0
    for decision in ("funasr", "numpy"):
        scripted_model.model.encoder = ScriptedScores(sil)
        with pytest.raises(ValueError, match="math domain error"):
            speech_segments(windows(audio, 60.0), 300, decision=decision, model=scripted_model)


def test_options_it_does_not_restate_keep_funasrs_pass() -> None:
    v = load_vad().model.vad_opts
    assert decision_options(v, 300) is not None
    assert decision_options(v, None) is None  # FunASR's dynamic silence schedule
    single = type("O", (), {**vars(v), "detect_mode": 0})()
    assert decision_options(single, 300) is None
    assert math.isclose(decision_options(v, 300).speech_noise_thres, v.speech_noise_thres)
