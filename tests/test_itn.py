"""ITN once per job: WeTextProcessing's zh grammar on the merged words; every word keeps its time."""

from __future__ import annotations

import json

import pytest

from app.catalog.postprocess import itn_applies, resolve_itn
from tests.services import AUDIO
from workers.engines.base import Word
from workers.itn import normalize_words
from workers.merge import ChunkResult, MergeOptions, merge


def _chars(text: str, step_s: float = 0.2, t0: float = 0.0) -> list[Word]:
    return [Word(round(t0 + i * step_s, 3), round(t0 + i * step_s + 0.15, 3), c) for i, c in enumerate(text)]


def test_numbers_money_percent_dates_written_as_digits():
    words = _chars("价格是三百二十块钱上涨了百分之五十")
    out = normalize_words(words, char_level=True)
    assert "".join(w.word for w in out) == "价格是320块钱上涨了50%"
    by_text = {w.word: w for w in out}
    # a rewritten span: first start and last end of the characters it came from
    assert (by_text["320"].start_s, by_text["320"].end_s) == (words[3].start_s, words[6].end_s)
    assert (by_text["50%"].start_s, by_text["50%"].end_s) == (words[12].start_s, words[16].end_s)
    # unchanged characters keep their own times
    for w in out:
        if len(w.word) == 1:
            assert w in words, w
    assert "".join(w.word for w in normalize_words(_chars("二零二四年五月十二日"), True)) == "2024/05/12"


def test_words_that_only_contain_a_number_stay():
    text = "我们一起去星期一一点一滴"
    out = normalize_words(_chars(text), char_level=True)
    assert out == _chars(text)


def test_marks_stay_on_their_words_and_fillers_stay_as_spoken():
    words = [Word(0.0, 0.2, "啊"), *_chars("三百", t0=0.2), Word(0.6, 0.8, "二十。"), *_chars("嗯好", t0=0.8)]
    out = normalize_words(words, char_level=True)
    # the grammar's blacklist would delete 啊; ITN never drops speech
    assert [w.word for w in out] == ["啊", "320。", "嗯", "好"]
    assert (out[1].start_s, out[1].end_s) == (0.2, 0.8)
    assert [w.start_s for w in out] == sorted(w.start_s for w in out)


def test_space_separated_words_are_untouched():
    words = [Word(i * 0.4, i * 0.4 + 0.3, w) for i, w in enumerate("ask not what your country can do".split())]
    assert normalize_words(words, char_level=False) == words


def test_option_defaults():
    assert itn_applies(None, "zh") and itn_applies(None, "zh-CN") and itn_applies(None, "ZH_tw")
    assert not itn_applies(None, "en") and not itn_applies(None, None)
    assert itn_applies(True, "en") and not itn_applies(False, "zh")
    # stored on the job: decided at submission when the language is known, else at finalize
    # stored as given: unset stays unset, decided by language where it is used
    assert resolve_itn(None, "zh") is None and resolve_itn(None, "en") is None and resolve_itn(None, None) is None
    assert resolve_itn(False, None) is False and resolve_itn(True, "en") is True


def test_itn_after_merge_keeps_the_timeline():
    # a number cut by a chunk edge (三百 | 二十) is normalized whole, on the merged words
    c0 = ChunkResult(0, 0, 2000, "他花了三百", _chars("他花了三百"))
    c1 = ChunkResult(1, 2000, 4000, "二十块", _chars("二十块"))
    t = merge("j", [c0, c1], 4.0, "zh", MergeOptions(char_level=True),
              rewrite=lambda ws: normalize_words(ws, char_level=True))
    words = [w for s in t.segments for w in s.words]
    assert t.text == "他花了320块"
    assert next(w for w in words if w["word"] == "320") == {"start": 0.6, "end": 2.35, "word": "320"}
    assert [w["start"] for w in words] == sorted(w["start"] for w in words)


@pytest.mark.slow
def test_itn_option_through_the_pipeline(stack):
    """itn is validated and recorded at the door; the worker runs the zh grammar on a job that asks for it,
    and it leaves English words (whisper tiny.en) as they were."""
    with stack.client() as c:
        r = c.http.post("/v1/jobs", json={"source_uri": "s3://asrq-test/inbox/x.wav", "itn": "maybe"})
        assert r.status_code == 422, r.text
        on = c.submit_file(AUDIO / "en_jfk_ask_not_11s.flac", {"itn": True})
        off = c.submit_file(AUDIO / "en_jfk_ask_not_11s.flac", {"language": "en"})
        auto = c.submit_file(AUDIO / "en_jfk_ask_not_11s.flac", {})
        assert (on["options"]["itn"], off["options"]["itn"], auto["options"]["itn"]) == (True, None, None)
        done = c.wait([on["id"], off["id"], auto["id"]], timeout_s=300)
        assert all(j["state"] == "COMPLETED" for j in done.values()), (done, stack.logs())
        docs = [json.loads(c.transcript(j["id"], "json")) for j in (on, off, auto)]
        assert docs[0]["text"] == docs[1]["text"] == docs[2]["text"] and "fellow Americans" in docs[0]["text"]
        assert docs[0]["segments"] == docs[1]["segments"]


def test_only_clauses_with_a_numeral_go_through_the_grammar():
    """Skipping number-free text is only a saving: on mixed text the result is the whole text's."""
    import random

    from workers.itn import _pieces, get_normalizer

    phrases = ["甚至出现交易几乎停滞的情况", "价格上涨了百分之三点五", "成交额达到二十亿元", "我们一起去", "星期一吃饭",
               "他花了三百二十块钱", "今天是二零二三年五月十二日", "三点五公斤", "十二点半到", "第一个人", "一点一滴",
               "广州市房地产中介协会分析", "三分之二的人", "一千二百三十四个苹果", "。", "，", "我想问我在滨海新区有房"]
    rng = random.Random(0)
    normalize = get_normalizer()
    for _ in range(15):
        text = "".join(rng.choice(phrases) for _ in range(rng.randint(3, 12)))
        out = normalize_words(_chars(text), char_level=True)
        assert "".join(w.word for w in out) == normalize(text), text
    pieces = _pieces("广州市房地产中介协会分析。我想问我在滨海新区有房，他花了三百二十块钱")
    assert "".join(p for p, _ in pieces) == "广州市房地产中介协会分析。我想问我在滨海新区有房，他花了三百二十块钱"
    assert [p for p, rewrite in pieces if rewrite] == ["他花了三百二十块钱"]


def _stand_in_grammar(limit: int, seen: list[int]):  # noqa: ANN202
    """tests/mandarin_text.numerals_as_digits in place of the grammar (which costs minutes for 10 hours); it
    refuses, at once, a piece longer than ``limit``."""
    from tests.mandarin_text import numerals_as_digits

    def rewrite(text: str) -> str:
        seen.append(len(text))
        assert len(text) <= limit, f"the grammar was given {len(text)} characters at once"
        return numerals_as_digits(text)

    return rewrite


def test_a_ten_hour_clause_is_aligned_in_bounded_pieces(monkeypatch):
    """Finding 5: with no punctuation model a Mandarin job's whole text is one clause, and the grammar and
    difflib both saw all of it (20,000 characters took 33 s; 10 hours, about 150,000, hit the finalize
    limit). Now neither ever sees more than a bounded piece, so the cost is linear (bench.itn_scaling
    measures it), and every character still keeps its time."""
    import difflib

    from tests.mandarin_text import mandarin_words, numerals_as_digits
    from workers import itn

    limit = 2000  # pieces are cut at about itn.MAX_PIECE_CHARS, 4 times that at most where numbers are dense
    aligned: list[int] = []

    class Bounded(difflib.SequenceMatcher):
        def __init__(self, isjunk, a, b, autojunk=True):  # noqa: ANN001
            aligned.append(max(len(a), len(b)))
            assert len(a) <= limit, f"difflib was given {len(a)} characters at once"
            super().__init__(isjunk, a, b, autojunk)

    monkeypatch.setattr(itn, "SequenceMatcher", Bounded)
    words = mandarin_words(150_000)
    seen: list[int] = []
    out = normalize_words(words, char_level=True, normalize=_stand_in_grammar(limit, seen))
    text = "".join(w.word for w in words)
    assert len(seen) > 300 and max(seen) <= limit and max(aligned) <= limit
    assert "".join(w.word for w in out) == numerals_as_digits(text)
    # unchanged characters keep their own times; a rewritten span runs from its first source to its last
    by_start = {w.start_s: w for w in words}
    for w in out:
        if w.word.isdigit():
            assert w.end_s > w.start_s and w.start_s in by_start
        else:
            assert w == by_start[w.start_s], w
    assert [w.start_s for w in out] == sorted(w.start_s for w in out)


def test_cuts_clear_of_numbers_change_nothing(caplog):
    """Where a long clause is cut (far enough from every numeral on both sides), the real grammar gives
    the words and times it gives the whole clause."""
    import logging

    from tests.mandarin_text import mandarin_words
    from workers import itn

    caplog.set_level(logging.WARNING, "asrq.itn")
    cut = 0
    for seed in range(3):
        words = mandarin_words(1500, seed=seed)
        text = "".join(w.word for w in words)
        cut += len(itn._cut_points(text, 120))
        assert normalize_words(words, True, max_piece_chars=120) == normalize_words(words, True, max_piece_chars=10**9)
    assert cut >= 30 and not caplog.records  # every cut was a clear one
