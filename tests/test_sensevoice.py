"""SenseVoice through FunASREngine and the whole distributed stack, with a tiny random SenseVoiceSmall
(tests/tiny_sensevoice.py): its rich tags become fields (chunk language, segment emotion and event),
never text; use_itn reaches the model; word times come from FunASR's CTC alignment."""

from __future__ import annotations

import json
import re

import pytest

from tests.services import AUDIO
from tests.test_engine_funasr import assert_well_formed, decode_16k_mono, load_engine
from tests.tiny_sensevoice import EXPECTED, build_tiny_sensevoice
from workers.engines.base import ChunkText, DecodeOptions, Word
from workers.formats import render
from workers.merge import ChunkResult, MergeOptions, chunk_result, merge, stored_words

CLIPS = ["zh_aishell1_BAC009S0764W0121.wav", "en_jfk_ask_not_11s.flac", "en_sr_one_two_three.wav"]
TAG = re.compile(r"<\|[^|]*\|>|<\||\|>")


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    pytest.importorskip("funasr")
    return load_engine(build_tiny_sensevoice(tmp_path_factory.mktemp("tiny_sensevoice")))


@pytest.fixture(scope="module")
def clips():
    return [decode_16k_mono(AUDIO / c) for c in CLIPS]


def _stamped_by_alignment(words: list[Word]) -> bool:
    """SenseVoice's CTC alignment puts every token edge on its 60 ms frame grid, offset by 30 ms (or at 0);
    the even spread used when no times come back would not. (Multi-character CJK pieces are split into
    characters evenly by the engine, so only the others are checked.)"""
    stamped = [w for w in words if w.word.isascii()]
    off_grid = [(w.start_s * 1000 + 30) % 60 for w in stamped if w.start_s > 0]
    return bool(stamped) and all(min(d, 60 - d) < 1.5 for d in off_grid)  # float sums of the CJK split


@pytest.mark.slow
def test_tags_become_fields_and_never_text(engine, clips):
    assert engine._sensevoice and not engine.supports_hotwords
    for opts, language in ((DecodeOptions(), EXPECTED["auto_language"]), (DecodeOptions(language="en"), "en")):
        batch = engine.transcribe_batch(clips, opts)
        assert len(batch) == len(clips)
        for audio, res in zip(clips, batch):
            assert res.text and res.words, res
            assert not TAG.search(res.text) and not any(TAG.search(w.word) for w in res.words), res.text
            assert (res.language, res.emotion, res.event) == (language, "happy", "laughter")
            assert_well_formed(res, audio)
            # times within the chunk, monotonic, and FunASR's own alignment rather than a spread
            assert all(w.start_s <= w.end_s for w in res.words)
            assert [w.end_s for w in res.words] == sorted(w.end_s for w in res.words)
            assert _stamped_by_alignment(res.words), res.words[:8]
        # the tiny encoder is per-frame: a chunk decodes the same alone as padded in a batch
        assert batch == [engine.transcribe_batch([c], opts)[0] for c in clips]


@pytest.mark.slow
def test_use_itn_reaches_the_model(engine, clips):
    """SenseVoice echoes the text-norm query it was given as its fourth tag."""
    norms = {}
    for itn in (None, True, False):
        raw = engine._generate([c.copy() for c in clips], DecodeOptions(itn=itn))
        norms[itn] = {re.findall(r"<\|([^|]*)\|>", r["text"])[3] for r in raw}
    assert norms == {None: {"withitn"}, True: {"withitn"}, False: {"woitn"}}


@pytest.mark.slow
def test_silence_and_short_audio(engine, clips):
    import numpy as np

    res = engine.transcribe_batch([np.zeros(100, np.float32), clips[2]], DecodeOptions(language="zh"))
    assert res[0] == ChunkText("", [], "zh")
    assert res[1].language == "zh" and res[1].emotion == "happy"


def test_result_tags_parsed():
    from workers.engines.funasr_engine import _chunk_from_result

    res = {"text": "<|en|><|ANGRY|><|Applause|><|woitn|>stop it", "timestamp": [[0, 300], [330, 600]],
           "words": ["stop", "it"]}
    c = _chunk_from_result(res, 1.0, None)
    assert (c.text, c.language, c.emotion, c.event) == ("stop it", "en", "angry", "applause")
    assert [(w.word, w.start_s, w.end_s) for w in c.words] == [("stop", 0.0, 0.3), ("it", 0.33, 0.6)]
    # unknown emotion/event are no field; a tag FunASR aligned as a word is no word
    res = {"text": "<|yue|><|EMO_UNKNOWN|><|Event_UNK|><|withitn|>好<|Cough|>", "timestamp": [[0, 90], [90, 150]],
           "words": ["好", "<|Cough|>"]}
    c = _chunk_from_result(res, 1.0, "zh")
    assert (c.text, c.language, c.emotion, c.event) == ("好", "yue", None, "cough")
    assert [w.word for w in c.words] == ["好"]


def test_segments_carry_their_chunks_tags_and_formats_keep_them_out_of_text():
    chunks = [
        chunk_result(0, 0, 3000, "hello there", stored_words([Word(0.1, 0.5, "hello"), Word(0.6, 1.0, "there")],
                                                             "happy", "speech"), "en"),
        # the same segment would hold both chunks' words (no pause, no sentence end): tags differ, so it is cut
        chunk_result(1, 3000, 6000, "friend", stored_words([Word(0.0, 0.4, "friend")], "sad", "speech"), "en"),
        ChunkResult(2, 6000, 9000, "你好", [Word(0.5, 0.8, "你"), Word(0.8, 1.0, "好")], language="zh"),
    ]
    t = merge("j", chunks, 9.0, "en", MergeOptions(pause_split_s=5.0))
    assert [(s.text, s.language, s.emotion, s.event) for s in t.segments] == [
        ("hello there", "en", "happy", "speech"), ("friend", "en", "sad", "speech"), ("你 好", "zh", None, None)]
    doc = json.loads(render(t, "json"))
    assert doc["segments"][0]["emotion"] == "happy" and doc["segments"][1]["event"] == "speech"
    assert "emotion" not in doc["segments"][2] and doc["segments"][2]["language"] == "zh"
    for fmt in ("srt", "vtt", "txt"):
        out = render(t, fmt)
        assert "happy" not in out and "speech" not in out and "<|" not in out, out
    # a stored chunk without tags reads back as before
    assert chunk_result(0, 0, 1000, "x", [[0.0, 0.5, "x"]]).words == [Word(0.0, 0.5, "x")]


@pytest.mark.slow
def test_sensevoice_through_the_distributed_stack(stack):
    build_tiny_sensevoice(stack.tmp / "models" / "tiny-sensevoice")
    jobs = {  # file, options, the language the transcript must say
        "auto": ("zh_funasr_binhai_6s.wav", {}, EXPECTED["auto_language"]),
        "en": ("en_jfk_ask_not_11s.flac", {"language": "en", "itn": False}, "en"),
    }
    with stack.client() as c:
        ids = {k: c.submit_file(AUDIO / f, {"engine": "funasr", "model": "tiny-sensevoice",
                                            "formats": ["json", "srt", "txt"], **o})["id"]
               for k, (f, o, _) in jobs.items()}
        done = c.wait(list(ids.values()), timeout_s=300)
        for k, jid in ids.items():
            job = done[jid]
            assert job["state"] == "COMPLETED", (job, stack.logs())
            assert job["language"] == jobs[k][2]
            doc = json.loads(c.transcript(jid, "json"))
            first = {**doc["segments"][0], "words": doc["segments"][0]["words"][:3]}
            print(f"{k}: " + json.dumps({**doc, "text": doc["text"][:40], "segments": [first]}, ensure_ascii=False))
            assert doc["segments"] and doc["language"] == jobs[k][2]
            for seg in doc["segments"]:
                assert (seg["language"], seg["emotion"], seg["event"]) == (jobs[k][2], "happy", "laughter"), seg
                assert not TAG.search(seg["text"]) and seg["words"]
            words = [w for seg in doc["segments"] for w in seg["words"]]
            assert all(0 <= w["start"] <= w["end"] <= doc["duration_s"] for w in words)
            assert [w["start"] for w in words] == sorted(w["start"] for w in words)
            for fmt in ("srt", "txt"):
                out = c.transcript(jid, fmt).decode("utf-8")
                assert out.strip() and not TAG.search(out), out[:300]
                assert not re.search(r"happy|laughter", out, re.I), out[:300]
        assert done[ids["en"]]["options"]["itn"] is False
