"""Whisper decoding is a function of the chunk and its options: the temperature fallback samples, and what it
samples must not depend on the order chunks ran in, which decoder thread took them, or what ran before."""

from __future__ import annotations

import pytest

from tests.audio_fixtures import espeak, load_clip
from tests.services import AUDIO
from workers.engines.base import DecodeOptions, EngineSpec

pytestmark = pytest.mark.slow

SPEC = EngineSpec("whisper", "bundled:tiny.en")


def test_fallback_sampling_depends_only_on_the_chunk():
    from workers.engines.whisper_engine import WhisperEngine, chunk_seed

    # fast repetitive speech: tiny.en's beam search output fails the compression-ratio check, so
    # faster-whisper falls back to sampling at rising temperatures (measured: all of them)
    odd = espeak("the cat sat on the mat. " * 6, speed_wpm=260)
    plain = load_clip(AUDIO / "en_jfk_ask_not_11s.flac")
    opts = DecodeOptions()

    two = WhisperEngine(SPEC, cpu_threads=2, cpu_decoders=2)  # two decoders side by side, one thread each
    first = two.transcribe_batch([odd], opts)[0].text
    assert two.sampling.sampled_chunks == 1  # the fallback did sample
    # after other work, twice at the same time on the two decoder threads, in both orders
    again = [r.text for r in two.transcribe_batch([plain, odd, odd], opts)]
    swapped = [r.text for r in two.transcribe_batch([odd, plain], opts)]
    assert two.sampling.sampled_chunks == 4
    # another engine (fresh CTranslate2 threads) with one decoder of one thread
    one = WhisperEngine(SPEC, cpu_threads=1, cpu_decoders=1)
    alone = one.transcribe_batch([odd], opts)[0].text
    assert first == again[1] == again[2] == swapped[0] == alone, (first, again, swapped, alone)
    assert again[0] == swapped[1]

    # the seed is the chunk's: other samples or other options give another one
    assert chunk_seed(odd, "en", opts) == chunk_seed(odd.copy(), "en", DecodeOptions())
    assert chunk_seed(odd, "en", opts) != chunk_seed(odd[1:], "en", opts)
    assert chunk_seed(odd, "en", opts) != chunk_seed(odd, "en", DecodeOptions(hotwords=("mat",)))
