"""The ONNX VAD (workers/vad_onnx.py: numpy fbank, the bundled model.onnx, no torch) finds the segments
of the torch path it replaced (workers/vad.py: FunASR's fbank and network, the same decision pass).

Compared live, side by side on the same windows, within one 10 ms frame at each boundary:
- every recording in ../shared/audio/, under prepare's window sizes and end silences;
- the bench's quick corpus as bench/corpus.py builds it (each clip re-encoded at 16/22.05/44.1/48 kHz
  with a gain, and its 3-minute recording of clips and espeak-ng sentences), decoded as prepare does;
- long recordings joined from the clips, a babble cut at FunASR's 60 s limit, recordings that end in
  speech or after a few samples, digital silence, a noise floor;
and the parts on their own: the fbank against kaldi-native-fbank (what FunASR's frontend calls), the
network's scores against FunASR's, the options read from config.yaml against FunASR's, and the end of
a recording against FunASR's own per-frame pass on scripted scores.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from tests.audio_fixtures import SR, join_with_pauses, load_clip
from tests.services import AUDIO
from workers.fbank import FbankOptions, frame_count, frames_of, log_mel, mel_banks
from workers.vad import load_vad, network_calls
from workers.vad import speech_segments as torch_segments
from workers.vad_decide import decision_options
from workers.vad_onnx import FsmnScorer, load_fsmn, multiply_adds_per_frame, speech_segments

pytestmark = pytest.mark.slow  # the real FSMN-VAD model, both runtimes

RECORDINGS = sorted(p for p in AUDIO.iterdir() if p.suffix.lower() not in (".tsv", ".md", ".txt"))
CASES = [(60.0, 300), (5.0, 300), (7.3333, 800), (15.0, 205), (14.999, 100)]
TOLERANCE_MS = 10


def windows(audio: np.ndarray, window_s: float):  # noqa: ANN201
    w = int(window_s * SR)
    return (audio[i:i + w] for i in range(0, len(audio), w))


def assert_close(name: str, audio: np.ndarray, cases=CASES) -> list:  # noqa: ANN001
    out = []
    for window_s, silence_ms in cases:
        old = torch_segments(windows(audio, window_s), silence_ms)
        new = speech_segments(windows(audio, window_s), silence_ms)
        far = [(o, n) for o, n in zip(old, new)
               if abs(o[0] - n[0]) > TOLERANCE_MS or abs(o[1] - n[1]) > TOLERANCE_MS]
        assert len(new) == len(old) and not far, (
            f"{name}, {window_s} s windows, {silence_ms} ms: {len(new)} segments vs the torch path's {len(old)}, "
            f"first differences {far[:3] or [(o, n) for o, n in zip(old, new) if o != n][:3]}")
        out.append(old)
    return out


@pytest.fixture(scope="module")
def clips() -> dict[str, np.ndarray]:
    return {p.name: load_clip(p) for p in RECORDINGS}


@pytest.mark.parametrize("path", RECORDINGS, ids=[p.name for p in RECORDINGS])
def test_every_test_recording(path, clips) -> None:  # noqa: ANN001
    assert_close(path.name, clips[path.name])


def test_the_bench_corpus(tmp_path_factory) -> None:  # noqa: ANN001
    from bench import corpus

    folder = tmp_path_factory.mktemp("corpus")
    items = corpus._build_audio(corpus.QUICK, folder, log=lambda _m: None)
    assert any(i.kind == "long" for i in items)
    for item in items:
        assert_close(item.name, load_clip(Path(item.path)), CASES[:1])


def test_long_and_odd_recordings(clips) -> None:  # noqa: ANN001
    rng = np.random.default_rng(20251203)
    parts = [(name, "", audio) for name, audio in clips.items()]
    joined, _ = join_with_pauses(parts, list(rng.uniform(0.05, 3.0, len(parts))))
    assert_close("clips with random pauses", joined)
    stream = np.concatenate(list(clips.values()))
    babble = np.clip(sum(np.roll(stream, len(stream) * k // 4) for k in range(4)) / 3, -1, 1).astype(np.float32)
    (at_60,) = assert_close("babble", babble, CASES[:1])
    assert max(e - b for b, e in at_60) >= 60_000  # cut at FunASR's max_single_segment_time
    speech = np.concatenate([clips["en_librivox_sonnet001_53s.wav"], clips["en_jfk_ask_not_11s.flac"]])
    for extra in (50, 32, 0):
        assert_close(f"60 s + {extra} samples", speech[:60 * SR + extra], CASES[:1])
    assert_close("cut mid-word", clips["en_jfk_ask_not_11s.flac"][: int(4.3 * SR) + 7])
    assert_close("digital silence", np.zeros(30 * SR, np.float32), CASES[:2])
    assert_close("noise floor", np.random.default_rng(3).normal(0, 0.002, 20 * SR).astype(np.float32), CASES[:2])
    assert speech_segments([np.zeros(300, np.float32)], 300) == []
    assert speech_segments([], 300) == []


def test_windows_do_not_change_the_scores(clips) -> None:  # noqa: ANN001
    """Frames are cut across window edges and the network's memory carried over: the scores of a
    recording do not depend on how it was split (up to float32 rounding in the network's sums)."""
    audio = clips["en_librivox_sonnet001_53s.wav"]
    model = load_fsmn()

    def scores(window: int) -> np.ndarray:
        scorer = FsmnScorer(model)
        parts = [scorer.feed(audio[i:i + window]) for i in range(0, len(audio), window)] + [scorer.finish()]
        return np.concatenate([p[0] for p in parts])

    whole = scores(len(audio))
    assert len(whole) == frame_count(len(audio))
    for window in (399, 400, 561, 16000, 80_000):
        np.testing.assert_allclose(scores(window), whole, atol=1e-5)


def test_fbank_is_kaldis() -> None:
    knf = pytest.importorskip("kaldi_native_fbank")
    o = knf.FbankOptions()
    o.mel_opts.num_bins = 80
    o.frame_opts.dither = 0.0
    o.frame_opts.window_type = "hamming"
    o.energy_floor = 0.0
    expected_banks = np.asarray(knf.MelBanks(o.mel_opts, o.frame_opts, 1.0).get_matrix(), np.float32).T
    np.testing.assert_allclose(mel_banks(FbankOptions()), expected_banks, atol=2e-5)
    rng = np.random.default_rng(5)
    # speech-like levels and near-silence (log of tiny energies is where rounding shows most)
    x = (rng.normal(0, 1, 3 * SR) * np.repeat(rng.choice([1e-3, 30.0, 3000.0], 30), SR // 10)).astype(np.float32)
    fb = knf.OnlineFbank(o)
    fb.accept_waveform(SR, x)
    fb.input_finished()
    expected = np.stack([fb.get_frame(i) for i in range(fb.num_frames_ready)])
    got = log_mel(frames_of(x, frame_count(len(x))))
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=2e-3)


def test_scores_are_funasrs(clips) -> None:  # noqa: ANN001
    audio = np.concatenate([clips["en_jfk_ask_not_11s.flac"], clips["en_librispeech_1995-1837-0001.wav"]])
    torch_scores = np.concatenate([sil for _c, sil, _db in network_calls(load_vad(), windows(audio, 60.0))])
    scorer = FsmnScorer(load_fsmn())
    onnx_scores = np.concatenate([scorer.feed(audio)[0], scorer.finish()[0]])
    assert onnx_scores.shape == torch_scores.shape
    np.testing.assert_allclose(onnx_scores, torch_scores, atol=1e-5)


def test_options_are_funasrs() -> None:
    v = load_vad().model.vad_opts
    for silence_ms in (300, 100, 800):
        assert decision_options(load_fsmn().vad_opts, silence_ms) == decision_options(v, silence_ms)


def test_multiply_adds_are_the_networks() -> None:
    """The floor's count, from config.yaml's dimensions, against the weights in model.pt."""
    import torch

    from workers.vad import bundled_vad_dir

    weights = torch.load(bundled_vad_dir() / "model.pt", map_location="cpu")
    macs = sum(v.numel() for k, v in weights.items() if k.endswith("weight"))
    assert multiply_adds_per_frame(load_fsmn().encoder_conf) == macs


class ScriptedSession:
    """Stands in for the ONNX network: hands out a fixed sequence of silence posteriors, in order."""

    def __init__(self, sil_prob: np.ndarray, caches: int) -> None:
        self.sil = sil_prob.astype(np.float32)
        self.pos = 0
        self.caches = caches

    def run(self, _names, feeds: dict) -> list:  # noqa: ANN001
        t = feeds["speech"].shape[1]
        out = np.zeros((1, t, 248), np.float32)
        out[0, :, 0] = self.sil[self.pos:self.pos + t]
        self.pos += t
        return [out] + [feeds[f"in_cache{i}"] for i in range(self.caches)]


def test_recording_ends_like_funasrs_pass() -> None:
    """Where a recording ends on every frame of a speech run and its silence, and under windows below
    and above FunASR's streaming switch (a segment confirmed on the last frame is closed differently),
    the ONNX path's segments are those of FunASR's own per-frame pass on the same scores."""
    from tests.test_vad_equality import ScriptedScores

    funasr_model = load_vad.__wrapped__(None)
    onnx_model = load_fsmn()
    audio = np.random.default_rng(1).normal(0, 0.1, 6 * SR).astype(np.float32)
    speech, quiet = 0.05, 0.9
    checked = 0
    for frames in range(15, 140):
        n = (frames - 1) * 160 + 400
        sil = np.full(frames + 10, quiet, np.float32)
        sil[10:70] = speech
        for window_s in (60.0, 0.5):
            funasr_model.model.encoder = ScriptedScores(sil)
            old = torch_segments(windows(audio[:n], window_s), 300, decision="funasr", model=funasr_model)
            scripted = dataclasses.replace(onnx_model, session=ScriptedSession(sil, len(onnx_model.cache_shapes)))
            new = speech_segments(windows(audio[:n], window_s), 300, model=scripted)
            assert new == old, (frames, window_s, old, new)
            checked += bool(old)
    assert checked > 100
