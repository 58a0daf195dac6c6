"""The faster-whisper engine: batch results equal single results, and dropped speech gets a second pass."""

from __future__ import annotations

import pytest

from tests.audio_fixtures import SR, espeak, load_clip
from tests.services import AUDIO
from tests.wer import reference, wer
from workers.engines.base import ChunkText, DecodeOptions, EngineSpec, Word
from workers.engines.whisper_engine import cpu_layout, has_uncovered_speech


def _words(*spans: tuple[float, float]) -> ChunkText:
    return ChunkText(text="x", words=[Word(a, b, "w") for a, b in spans])


def test_coverage_rule():
    assert not has_uncovered_speech(_words((0.2, 0.5), (0.6, 1.0), (1.2, 9.5)), 10.0)
    assert has_uncovered_speech(_words((0.2, 0.5), (0.6, 4.0)), 10.0)  # the last 6 s say nothing
    assert has_uncovered_speech(_words((3.0, 4.0), (4.1, 9.8)), 10.0)  # nothing for the first 3 s
    assert has_uncovered_speech(_words((0.1, 2.0), (5.0, 9.9)), 10.0)  # a 3 s hole inside
    assert has_uncovered_speech(ChunkText(text="", words=[]), 10.0)
    assert not has_uncovered_speech(ChunkText(text="", words=[]), 1.5)


def test_cpu_layout_splits_threads_over_decoders():
    import os

    assert cpu_layout(8, 0) == (8, 1)  # default: one single-thread decoder per core
    assert cpu_layout(8, 2) == (2, 4)
    assert cpu_layout(8, 3) == (3, 2)
    assert cpu_layout(2, 6) == (2, 1)  # never more decoders than threads
    assert cpu_layout() == (len(os.sched_getaffinity(0)), 1)


@pytest.fixture(scope="module")
def engine():
    from workers.engines.whisper_engine import WhisperEngine

    return WhisperEngine(EngineSpec("whisper", "bundled:tiny.en"))


@pytest.mark.slow
def test_batch_equals_alone_and_order_does_not_matter(engine):
    names = ["en_jfk_ask_not_11s.flac", "en_librispeech_1995-1837-0001.wav", "en_sr_one_two_three.wav"]
    clips = [load_clip(AUDIO / n) for n in names]
    batch = engine.transcribe_batch(clips, DecodeOptions())
    alone = [engine.transcribe_batch([c], DecodeOptions())[0] for c in clips]
    reversed_ = engine.transcribe_batch(clips[::-1], DecodeOptions())[::-1]
    assert [r.text for r in batch] == [r.text for r in alone] == [r.text for r in reversed_]
    if engine.decoders == 1:  # a one-core machine: check the side-by-side path with two decoders anyway
        from workers.engines.whisper_engine import WhisperEngine

        two = WhisperEngine(EngineSpec("whisper", "bundled:tiny.en"), cpu_threads=2, cpu_decoders=2)
        assert [r.text for r in two.transcribe_batch(clips, DecodeOptions())] == [r.text for r in alone]
    for name, r, clip in zip(names, batch, clips):
        assert wer(reference(name), r.text) <= 0.15, (name, r.text)
        assert all(0 <= w.start_s <= w.end_s <= len(clip) / SR + 0.05 for w in r.words)
    assert engine.transcribe_batch([], DecodeOptions()) == []


@pytest.mark.slow
def test_two_voices_in_one_chunk_lose_no_sentence(engine):
    """A chunk holding a real clip then synthetic speech: tiny.en's one-shot pass tends to stop after
    the first voice; the second pass must bring the rest back."""
    import numpy as np

    tts = "The harbour master counted seven ships before noon and none of them carried grain."
    clip = np.concatenate([load_clip(AUDIO / "en_jfk_ask_not_11s.flac"), np.zeros(SR // 2, np.float32),
                           espeak(tts)])
    r = engine.transcribe_batch([clip], DecodeOptions())[0]
    assert wer(reference("en_jfk_ask_not_11s.flac") + " " + tts, r.text) <= 0.2, r.text
