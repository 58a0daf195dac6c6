"""Merging chunk results into one timeline, grouping into segments, and rendering JSON/SRT/VTT/TXT."""

from __future__ import annotations

import json
import random
import re

import pytest

from workers.engines.base import Word
from workers.formats import CONTENT_TYPES, RENDERERS, _clock, render, to_json, to_srt, to_txt, to_vtt
from workers.merge import ChunkResult, MergeOptions, Segment, Transcript, absolute_words, group_segments, merge


def W(s: float, e: float, w: str) -> Word:  # noqa: N802
    return Word(s, e, w)


# ---- absolute_words --------------------------------------------------------------------------------------------


def test_absolute_words_offsets_by_chunk_start():
    chunks = [
        ChunkResult(0, 1_000, 5_000, "hello world", [W(0.1, 0.5, "hello"), W(0.6, 1.0, "world")]),
        ChunkResult(1, 10_000, 14_000, "again", [W(0.25, 0.75, "again")]),
    ]
    words = absolute_words(chunks, 20.0)
    assert words == [W(1.1, 1.5, "hello"), W(1.6, 2.0, "world"), W(10.25, 10.75, "again")]


def test_absolute_words_sorts_chunks_by_index():
    chunks = [
        ChunkResult(1, 10_000, 14_000, "b", [W(0.0, 0.5, "b")]),
        ChunkResult(0, 0, 4_000, "a", [W(0.0, 0.5, "a")]),
    ]
    assert [w.word for w in absolute_words(chunks, 20.0)] == ["a", "b"]


def test_absolute_words_clamps_to_chunk_and_duration():
    chunks = [ChunkResult(0, 2_000, 4_000, "x y", [W(-0.5, 0.2, "x"), W(1.8, 9.0, "y")])]
    words = absolute_words(chunks, 3.5)
    assert words[0] == W(2.0, 2.2, "x")
    assert words[1] == W(3.5, 3.5, "y")  # clamped to the chunk end (4.0) and then to the duration (3.5)


def test_chunk_without_word_times_becomes_one_word_spanning_the_chunk():
    chunks = [ChunkResult(0, 3_000, 6_000, "  whole text  ", []), ChunkResult(1, 7_000, 8_000, "   ", [])]
    assert absolute_words(chunks, 10.0) == [W(3.0, 6.0, "whole text")]


def test_overlap_keeps_each_word_once_by_the_midpoint_rule():
    # hard cut: chunk 0 covers 0-30 s, chunk 1 covers 29-59 s; the overlap is 29-30 s, its midpoint 29.5 s.
    # both chunks heard "alpha" (centre 29.2 s, before the midpoint) and "beta" (centre 29.7 s, after it).
    c0 = ChunkResult(0, 0, 30_000, "", [W(28.0, 28.5, "one"), W(29.1, 29.3, "alpha"), W(29.6, 29.8, "beta")])
    c1 = ChunkResult(1, 29_000, 59_000, "", [W(0.1, 0.3, "alpha"), W(0.6, 0.8, "beta"), W(1.5, 2.0, "two")])
    words = absolute_words([c0, c1], 59.0)
    assert [w.word for w in words] == ["one", "alpha", "beta", "two"]
    # alpha (centre 29.2 < 29.5) is owned by chunk 0, beta (29.7 >= 29.5) by chunk 1: check the times they
    # carry come from the owner (they are identical here, so use different timings to tell them apart)
    c0b = ChunkResult(0, 0, 30_000, "", [W(29.10, 29.30, "alpha"), W(29.55, 29.75, "beta")])
    c1b = ChunkResult(1, 29_000, 59_000, "", [W(0.12, 0.32, "alpha"), W(0.62, 0.82, "beta")])
    words = absolute_words([c0b, c1b], 59.0)
    assert words == [W(29.1, 29.3, "alpha"), W(29.62, 29.82, "beta")]


def test_overlap_word_exactly_on_midpoint_goes_to_the_later_chunk():
    c0 = ChunkResult(0, 0, 30_000, "", [W(29.4, 29.6, "mid")])
    c1 = ChunkResult(1, 29_000, 59_000, "", [W(0.4, 0.6, "mid")])
    words = absolute_words([c0, c1], 59.0)
    assert len(words) == 1 and words[0].word == "mid"


def test_three_hard_cut_chunks_each_overlap_word_once():
    # a word sits in every overlap, reported by both neighbours with a small timing disagreement
    chunks = [
        ChunkResult(0, 0, 10_000, "", [W(1.0, 1.5, "a"), W(9.2, 9.4, "x")]),
        ChunkResult(1, 9_000, 19_000, "", [W(0.21, 0.41, "x"), W(5.0, 5.5, "b"), W(9.7, 9.9, "y")]),
        ChunkResult(2, 18_000, 25_000, "", [W(0.68, 0.88, "y"), W(3.0, 3.5, "c")]),
    ]
    words = absolute_words(chunks, 25.0)
    assert [w.word for w in words] == ["a", "x", "b", "y", "c"]


def test_non_overlapping_chunks_keep_every_word():
    chunks = [
        ChunkResult(0, 0, 10_000, "", [W(0.0, 1.0, "edge-start"), W(9.5, 10.0, "edge-end")]),
        ChunkResult(1, 10_000, 20_000, "", [W(0.0, 0.5, "next-start"), W(9.9, 10.0, "next-end")]),
    ]
    words = absolute_words(chunks, 20.0)
    assert [w.word for w in words] == ["edge-start", "edge-end", "next-start", "next-end"]


def test_absolute_words_are_monotonic():
    rng = random.Random(3)
    chunks = []
    t = 0
    for i in range(30):
        length = rng.randint(2_000, 30_000)
        ws = []
        for _ in range(rng.randint(0, 40)):
            s = rng.uniform(-1, length / 1000 + 1)
            ws.append(W(s, s + rng.uniform(-0.2, 1.0), f"w{i}"))
        chunks.append(ChunkResult(i, t, t + length, "", ws))
        t += length - rng.choice([0, 0, 1_000])  # some hard-cut overlaps
    words = absolute_words(chunks, t / 1000)
    for a, b in zip(words, words[1:]):
        assert b.start_s >= a.start_s
    for w in words:
        assert 0 <= w.start_s <= w.end_s <= t / 1000


# ---- group_segments --------------------------------------------------------------------------------------------


def _seq(words: list[str], start: float = 0.0, step: float = 0.4, dur: float = 0.3) -> list[Word]:
    return [W(round(start + i * step, 3), round(start + i * step + dur, 3), w) for i, w in enumerate(words)]


def test_group_splits_on_sentence_end():
    words = _seq(["Hello", "there", "my", "friend.", "How", "are", "you?"])
    segs = group_segments(words, MergeOptions())
    assert [s.text for s in segs] == ["Hello there my friend.", "How are you?"]
    assert segs[0].start == 0.0 and segs[0].end == words[3].end_s
    assert segs[1].start == words[4].start_s
    assert segs[0].words[0] == {"start": 0.0, "end": 0.3, "word": "Hello"}


def test_short_sentence_does_not_split():
    # a sentence end within the first second of the segment does not flush ("Mr. Smith")
    words = _seq(["Mr.", "Smith", "arrived", "today."], step=0.2, dur=0.15)
    segs = group_segments(words, MergeOptions())
    assert [s.text for s in segs] == ["Mr. Smith arrived today."]


def test_group_splits_on_pause():
    words = [W(0.0, 0.4, "one"), W(0.5, 0.9, "two"), W(2.0, 2.4, "three")]  # 1.1 s pause > 0.8 s
    segs = group_segments(words, MergeOptions())
    assert [s.text for s in segs] == ["one two", "three"]


def test_group_splits_on_duration():
    words = _seq([f"w{i}" for i in range(40)], step=0.5, dur=0.4)
    segs = group_segments(words, MergeOptions(max_segment_s=3.0))
    assert len(segs) > 1
    for s in segs:
        assert s.end - s.start <= 3.0
    assert " ".join(s.text for s in segs) == " ".join(f"w{i}" for i in range(40))


def test_group_splits_on_characters():
    words = _seq(["abcdefghi"] * 20, step=0.1, dur=0.05)
    segs = group_segments(words, MergeOptions(max_segment_chars=30, max_segment_s=100))
    assert all(len(s.text) <= 30 for s in segs)
    assert sum(len(s.words) for s in segs) == 20


def test_char_level_joins_without_spaces():
    chars = list("今天天气很好。我们去公园吧！")
    words = _seq(chars, step=0.25, dur=0.2)
    t = merge("j", [ChunkResult(0, 0, 10_000, "", words)], 10.0, "zh", MergeOptions(char_level=True))
    assert [s.text for s in t.segments] == ["今天天气很好。", "我们去公园吧！"]
    assert t.text == "今天天气很好。我们去公园吧！"
    assert " " not in t.text


def test_merge_end_to_end():
    chunks = [
        ChunkResult(0, 0, 5_000, "", [W(0.5, 0.9, "Hello"), W(1.0, 1.6, "world.")]),
        ChunkResult(1, 6_000, 9_000, "", [W(0.0, 0.4, "Second"), W(0.5, 1.2, "part.")]),
    ]
    t = merge("job-1", chunks, 9.0004, "en")
    assert t.job_id == "job-1" and t.language == "en" and t.duration_s == 9.0
    assert t.text == "Hello world. Second part."
    assert [(s.start, s.end) for s in t.segments] == [(0.5, 1.6), (6.0, 7.2)]


def test_merge_of_nothing():
    t = merge("j", [], 0.0, None)
    assert t.segments == [] and t.text == ""


# ---- formats ---------------------------------------------------------------------------------------------------


def _transcript() -> Transcript:
    return Transcript(
        job_id="3f1c", duration_s=3725.5, language="en", text="First line. Ünïcødé, 中文. Late one.",
        segments=[
            Segment(0.0, 1.5, "First line.", [{"start": 0.0, "end": 1.5, "word": "First line."}]),
            Segment(61.001, 62.9996, "Ünïcødé, 中文."),
            Segment(100.0, 100.5, ""),  # empty text: skipped by the subtitle renderers
            Segment(3723.25, 3725.5, "Late one."),
        ],
    )


@pytest.mark.parametrize("t, srt, vtt", [
    (0.0, "00:00:00,000", "00:00:00.000"),
    (1.5, "00:00:01,500", "00:00:01.500"),
    (59.9994, "00:00:59,999", "00:00:59.999"),
    (59.9996, "00:01:00,000", "00:01:00.000"),
    (3723.25, "01:02:03,250", "01:02:03.250"),
    (36_000 * 3 + 0.001, "30:00:00,001", "30:00:00.001"),
    (-2.0, "00:00:00,000", "00:00:00.000"),
])
def test_clock(t, srt, vtt):
    assert _clock(t, ",") == srt
    assert _clock(t, ".") == vtt


def test_srt():
    out = to_srt(_transcript())
    assert out == (
        "1\n00:00:00,000 --> 00:00:01,500\nFirst line.\n"
        "\n"
        "2\n00:01:01,001 --> 00:01:03,000\nÜnïcødé, 中文.\n"
        "\n"
        "3\n01:02:03,250 --> 01:02:05,500\nLate one.\n"
    )
    # structure: blocks separated by one blank line, numbered from 1 without gaps
    blocks = out.strip("\n").split("\n\n")
    assert [b.split("\n")[0] for b in blocks] == ["1", "2", "3"]
    for b in blocks:
        assert re.fullmatch(r"\d{2}:\d{2}:\d{2},\d{3} --> \d{2}:\d{2}:\d{2},\d{3}", b.split("\n")[1])


def test_vtt():
    out = to_vtt(_transcript())
    assert out.startswith("WEBVTT\n\n")
    assert out == (
        "WEBVTT\n\n"
        "00:00:00.000 --> 00:00:01.500\nFirst line.\n"
        "\n"
        "00:01:01.001 --> 00:01:03.000\nÜnïcødé, 中文.\n"
        "\n"
        "01:02:03.250 --> 01:02:05.500\nLate one.\n"
    )
    assert "," not in "".join(line for line in out.splitlines() if "-->" in line)


def test_txt():
    assert to_txt(_transcript()) == "First line.\nÜnïcødé, 中文.\nLate one.\n"


def test_json_round_trip():
    t = _transcript()
    s = to_json(t)
    assert "中文" in s  # not ascii-escaped
    doc = json.loads(s)
    assert doc["job_id"] == "3f1c" and len(doc["segments"]) == 4
    assert Transcript.from_dict(doc) == t
    assert Transcript.from_dict(json.loads(to_json(Transcript.from_dict(doc)))) == t


def test_from_dict_defaults():
    t = Transcript.from_dict({"job_id": "x", "duration_s": 1.0})
    assert t == Transcript("x", 1.0, None, "", [])


def test_empty_transcript_renders_valid_empty_documents():
    t = Transcript(job_id="e", duration_s=0.0, language=None, text="", segments=[])
    assert to_srt(t) == ""
    assert to_vtt(t) == "WEBVTT\n\n"
    assert to_txt(t) == ""
    assert Transcript.from_dict(json.loads(to_json(t))) == t


def test_render_dispatch_and_content_types():
    t = _transcript()
    for fmt in ("json", "srt", "vtt", "txt"):
        assert render(t, fmt) == RENDERERS[fmt](t)
        assert fmt in CONTENT_TYPES
    with pytest.raises(KeyError):
        render(t, "pdf")
