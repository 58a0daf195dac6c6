"""FunASREngine against tiny random-weight BiCif/SeACo-Paraformers built on the fly (no downloads)."""

from __future__ import annotations

import pathlib
import re

import av
import numpy as np
import pytest

from workers.engines.base import SAMPLE_RATE, ChunkText, DecodeOptions, EngineSpec

from tests.services import AUDIO as AUDIO_DIR
from tests.tiny_paraformer import build_tiny_paraformer

CLIPS = ["zh_aishell1_BAC009S0724W0121.wav", "zh_funasr_binhai_6s.wav", "en_jfk_ask_not_11s.flac"]
OPTS = DecodeOptions()


def decode_16k_mono(path: pathlib.Path) -> np.ndarray:
    parts = []
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        for frame in container.decode(audio=0):
            parts += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
        parts += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(parts).astype(np.float32)


def load_engine(model_dir: pathlib.Path):
    from workers.engines.funasr_engine import FunASREngine

    return FunASREngine(EngineSpec("funasr", str(model_dir)), device="cpu")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> pathlib.Path:
    pytest.importorskip("funasr")
    return build_tiny_paraformer(tmp_path_factory.mktemp("tiny_bicif"))


@pytest.fixture(scope="module")
def engine(model_dir):
    return load_engine(model_dir)


@pytest.fixture(scope="module")
def seaco_engine(tmp_path_factory):
    pytest.importorskip("funasr")
    return load_engine(build_tiny_paraformer(tmp_path_factory.mktemp("tiny_seaco"), seaco=True))


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    missing = [c for c in CLIPS if not (AUDIO_DIR / c).exists()]
    if missing:
        pytest.skip(f"test audio missing: {missing}")
    return [decode_16k_mono(AUDIO_DIR / c) for c in CLIPS]


def assert_well_formed(result: ChunkText, audio: np.ndarray) -> None:
    duration = len(audio) / SAMPLE_RATE
    prev_start = 0.0
    for w in result.words:
        assert 0.0 <= w.start_s <= w.end_s <= duration + 0.1, w
        assert w.start_s >= prev_start, (w, prev_start)
        assert w.word.strip(), w
        prev_start = w.start_s


@pytest.mark.slow
def test_engine_flags(engine):
    assert engine.char_level  # the tiny vocabulary is mostly CJK characters
    assert not engine.supports_hotwords  # BiCif, not SeACo
    assert engine.max_chunk_s == 30.0
    assert engine.device == "cpu"


@pytest.mark.slow
def test_batch_matches_single_and_is_well_formed(engine, clips):
    batched = engine.transcribe_batch(clips, OPTS)
    assert len(batched) == len(clips)
    for audio, res in zip(clips, batched):
        assert isinstance(res, ChunkText)
        assert_well_formed(res, audio)
    # The random model fires tokens regularly, so the timestamp path is really exercised.
    assert all(res.text and res.words for res in batched)
    # FunASR writes "字 字 字"; character-level text has no spaces between CJK characters,
    # and one Word per character.
    for res in batched:
        assert not re.search(r"[\u4e00-\u9fff]\s+[\u4e00-\u9fff]", res.text), res.text
        assert all(len(w.word) == 1 for w in res.words if "\u4e00" <= w.word[0] <= "\u9fff")

    singles = [engine.transcribe_batch([audio], OPTS)[0] for audio in clips]
    assert [r.text for r in batched] == [r.text for r in singles]
    for b, s in zip(batched, singles):
        assert [w.word for w in b.words] == [w.word for w in s.words]
        # The timestamp head's BLSTM runs over the batch's padding, so allow one 60 ms frame.
        assert [w.start_s for w in b.words] == pytest.approx([w.start_s for w in s.words], abs=0.07)


@pytest.mark.slow
def test_batch_order_independent(engine, clips):
    forward = engine.transcribe_batch(clips, OPTS)
    backward = engine.transcribe_batch(clips[::-1], OPTS)
    assert [r.text for r in backward] == [r.text for r in forward][::-1]
    assert engine.transcribe_batch(clips, OPTS) == forward  # deterministic across calls


@pytest.mark.slow
def test_empty_and_degenerate_inputs(engine, clips):
    assert engine.transcribe_batch([], OPTS) == []
    empty = np.zeros(0, np.float32)
    tiny = np.zeros(100, np.float32)  # shorter than one fbank window
    short_silence = np.zeros(SAMPLE_RATE // 10, np.float32)  # too short to fire a token
    silence = np.zeros(SAMPLE_RATE * 2, np.float32)

    res = engine.transcribe_batch([empty], OPTS)
    assert res == [ChunkText(text="", words=[])]

    mixed = [empty, clips[0], tiny, short_silence, silence]
    res = engine.transcribe_batch(mixed, OPTS)
    assert len(res) == len(mixed)
    assert res[0].text == res[2].text == res[3].text == ""
    assert res[1].text == engine.transcribe_batch([clips[0]], OPTS)[0].text
    for audio, r in zip(mixed, res):
        assert_well_formed(r, audio)

    # A batch where no input fires a token: FunASR returns a single placeholder for it.
    res = engine.transcribe_batch([tiny, short_silence, short_silence], OPTS)
    assert [r.text for r in res] == ["", "", ""]


def test_words_fallback_when_counts_differ():
    from workers.engines.funasr_engine import _words

    # Fewer stamps than units: spread evenly over the stamped span.
    words = _words(["hello", "big", "world"], [[100, 400]], duration=1.0)
    assert [w.word for w in words] == ["hello", "big", "world"]
    assert words[0].start_s == pytest.approx(0.1) and words[-1].end_s == pytest.approx(0.4)
    # No stamps at all: spread over the chunk.
    words = _words(["a", "b"], [], duration=2.0)
    assert [(w.start_s, w.end_s) for w in words] == [(0.0, 1.0), (1.0, 2.0)]
    # Multi-character CJK pieces split into characters; punctuation joins the previous word;
    # stamps past the end are clamped to the chunk.
    words = _words(["▁我们", "，", "好"], [[0, 400], [400, 500], [500, 900]], duration=0.8)
    assert [w.word for w in words] == ["我", "们，", "好"]
    assert words[-1].end_s == pytest.approx(0.8)


def test_sensevoice_style_result():
    from workers.engines.funasr_engine import _chunk_from_result

    res = {
        "text": "<|en|><|NEUTRAL|><|Speech|><|withitn|>Hello, world.",
        "timestamp": [[0, 300], [300, 360], [400, 700], [700, 760]],
        "words": ["Hello", ",", "world", "."],
    }
    chunk = _chunk_from_result(res, duration=1.0, language=None)
    assert chunk.text == "Hello, world." and chunk.language == "en"
    assert [(w.word, w.start_s, w.end_s) for w in chunk.words] == [("Hello,", 0.0, 0.36), ("world.", 0.4, 0.76)]

    res = {"text": "<|zh|><|NEUTRAL|><|Speech|><|withitn|>我想问。", "timestamp": [[0, 500], [500, 600]], "words": ["我想问", "。"]}
    chunk = _chunk_from_result(res, duration=1.0, language="zh")
    assert chunk.text == "我想问。"
    assert [w.word for w in chunk.words] == ["我", "想", "问。"]
    assert _chunk_from_result({"text": "<|nospeech|><|EMO_UNKNOWN|>"}, 1.0, "zh") == ChunkText("", [], "zh")


@pytest.mark.slow
def test_hotwords_reach_seaco_and_do_not_leak(seaco_engine, engine, clips):
    assert seaco_engine.supports_hotwords
    plain = seaco_engine.transcribe_batch(clips, OPTS)
    biased_opts = DecodeOptions(hotwords=("广州", "滨海"))
    biased = seaco_engine.transcribe_batch(clips, biased_opts)
    # Random weights: the bias branch changes the argmax, which proves the hotwords arrived.
    assert [r.text for r in biased] != [r.text for r in plain]
    assert [r.text for r in biased] == [seaco_engine.transcribe_batch([c], biased_opts)[0].text for c in clips]
    for audio, res in zip(clips, biased):
        assert_well_formed(res, audio)
    # FunASR keeps its hotword list on the model; the next call without hotwords must not use it.
    assert seaco_engine.transcribe_batch(clips, OPTS) == plain
    # A model without hotword support ignores them.
    assert engine.transcribe_batch(clips, biased_opts) == engine.transcribe_batch(clips, OPTS)


@pytest.mark.slow
def test_out_of_memory_maps_to_engine_error(model_dir, clips, monkeypatch):
    import torch

    from workers.engines.base import EngineOutOfMemory

    def raising(exc):
        def generate(*args, **kwargs):
            raise exc

        return generate

    eng = load_engine(model_dir)
    for exc in (
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("CUDA error: out of memory"),
    ):
        monkeypatch.setattr(eng._auto, "generate", raising(exc))
        with pytest.raises(EngineOutOfMemory):
            eng.transcribe_batch(clips, OPTS)
    monkeypatch.setattr(eng._auto, "generate", raising(RuntimeError("shape mismatch")))
    with pytest.raises(RuntimeError, match="shape mismatch") as info:
        eng.transcribe_batch(clips, OPTS)
    assert not isinstance(info.value, EngineOutOfMemory)


@pytest.mark.slow
def test_half_precision_blocks_keep_timestamps_working(model_dir, clips):
    """The fp16 path (CUDA only in production) exercised on CPU: encoder/decoder under autocast."""
    import torch

    from workers.engines.funasr_engine import _autocast_blocks

    eng = load_engine(model_dir)
    _autocast_blocks(eng._auto.model, "cpu", torch.float16)
    batched = eng.transcribe_batch(clips, OPTS)
    assert all(r.text and r.words for r in batched)
    for audio, res in zip(clips, batched):
        assert_well_formed(res, audio)


def test_missing_model_folder_is_not_sent_to_the_hub(tmp_path):
    pytest.importorskip("funasr")
    from workers.engines.funasr_engine import FunASREngine

    with pytest.raises(FileNotFoundError):
        FunASREngine(EngineSpec("funasr", str(tmp_path / "paraformer-zh")))
