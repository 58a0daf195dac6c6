"""Punctuation once per job: a tiny random CT-Transformer built from FunASR's own classes.

With random weights the marks are arbitrary but deterministic; the tests check that the batched
inference gives FunASR's own marks, and that cues end exactly where the model put sentence ends.
"""

from __future__ import annotations

import functools
import json
import random

import pytest

from tests.services import AUDIO
from tests.tiny_ct_punc import _tokens, build_tiny_ct_punc
from tests.tiny_paraformer import build_tiny_paraformer
from workers.engines.base import Word
from workers.merge import ChunkResult, MergeOptions, group_segments, merge

VOCAB = [t for t in _tokens() if not t.startswith("<")]
SENTENCE_MARKS = ("。", "？", ".", "?")


def _load(folder):  # noqa: ANN001, ANN202
    from funasr import AutoModel

    from workers.punctuation import PuncModel

    auto = AutoModel(model=str(folder), device="cpu", disable_update=True, disable_pbar=True, log_level="ERROR",
                     ncpu=1)
    return auto, PuncModel(auto.model, auto.kwargs["tokenizer"], tuple(auto.model.punc_list),
                           auto.model.sentence_end_id, "cpu")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return _load(build_tiny_ct_punc(tmp_path_factory.mktemp("punc") / "tiny-punc"))


@pytest.fixture(scope="module")
def long_sentences(tmp_path_factory):
    # no sentence end but the closing one: windows carry past 200 tokens and are cut at a comma
    return _load(build_tiny_ct_punc(tmp_path_factory.mktemp("punc") / "no-stops", sentence_end_bias=-10.0))


def _words(n: int, seed: int, step_s: float = 0.2) -> list[Word]:
    rng = random.Random(seed)
    return [Word(round(i * step_s, 3), round(i * step_s + step_s * 0.8, 3), rng.choice(VOCAB)) for i in range(n)]


def _funasr_marks(auto, words: list[Word]) -> list[int]:  # noqa: ANN001
    res = auto.generate(input=" ".join(w.word for w in words))[0]
    return [int(v) for v in res["punc_array"].tolist()]


@pytest.mark.parametrize("which", ["tiny", "long_sentences"])
def test_batched_marks_are_funasrs_own(which, request):
    """All texts in one padded batch per window step give exactly FunASR's one-text-at-a-time marks."""
    from workers.punctuation import _tokens as split_tokens
    from workers.punctuation import punc_ids

    auto, model = request.getfixturevalue(which)
    texts = [_words(n, seed=n) for n in (1, 2, 19, 20, 21, 47, 260, 455)]
    batched = punc_ids(model, [split_tokens(model, w)[0] for w in texts])
    for words, marks in zip(texts, batched):
        assert marks == _funasr_marks(auto, words), len(words)
    if which == "long_sentences":
        # the comma cut really happened: a sentence end inside the text, where the model gave none itself
        assert any(model.is_sentence_end(m) for m in batched[-1][:-1])


def test_english_words_and_mixed_text(tiny):
    from workers.punctuation import punctuate

    auto, model = tiny
    words = [Word(i * 0.3, i * 0.3 + 0.2, w) for i, w in enumerate(
        "ask not what your country can do for you 我 想 问 我 在 滨 海 新 区 有 房 and so my fellow".split())]
    out = punctuate(model, [words])[0]
    marks = _funasr_marks(auto, words)
    assert [(w.start_s, w.end_s) for w in out] == [(w.start_s, w.end_s) for w in words]  # times unchanged
    for w, new, m in zip(words, out, marks):
        mark = model.punc_list[m]
        if mark == "_":
            assert new.word.lower() == w.word, (w, new)
        else:
            expected = {"，": ",", "。": ".", "？": "?"}.get(mark, mark) if w.word.isascii() else mark
            assert new.word.lower() == w.word + expected, (w, new, mark)
    assert out[-1].word[-1] in SENTENCE_MARKS  # the text is closed with a sentence end, as FunASR does
    # an English word that starts a sentence is capitalised, as FunASR writes it
    for prev, new in zip(out, out[1:]):
        if prev.word[-1] in SENTENCE_MARKS and new.word.isascii():
            assert new.word[0].isupper(), (prev, new)


def test_cues_end_exactly_at_restored_sentence_ends(tiny):
    """Three chunks cut mid-sentence: the merged text is punctuated whole, and every cue ends at a restored
    sentence end; no cue ends anywhere else (no pauses, caps wide enough)."""
    from workers.punctuation import punctuate

    _, model = tiny
    words = _words(150, seed=7)
    # chunk edges at 10 s and 20 s: words relative to their chunk, as the engines give them
    chunks = []
    for n, (c0, c1) in enumerate([(0, 10_000), (10_000, 20_000), (20_000, 30_000)]):
        mine = [w for w in words if c0 / 1000 <= w.start_s < c1 / 1000]
        chunks.append(ChunkResult(n, c0, c1, "".join(w.word for w in mine),
                                  [Word(w.start_s - c0 / 1000, w.end_s - c0 / 1000, w.word) for w in mine]))
    whole = punctuate(model, [words])[0]
    opts = MergeOptions(char_level=True, max_segment_s=1e9, max_segment_chars=10**6, min_sentence_s=0.0)
    t = merge("j", chunks, 30.0, "zh", opts, rewrite=lambda ws: punctuate(model, [ws])[0])
    got = [w for s in t.segments for w in s.words]
    assert [w["word"] for w in got] == [w.word for w in whole]  # the same marks as on the uncut text
    ends = [n for n, w in enumerate(whole) if w.word.endswith(SENTENCE_MARKS)]
    assert len(ends) >= 5, [w.word for w in whole]  # random weights, but sentences of several words
    cue_ends, k = [], -1
    for s in t.segments:
        k += len(s.words)
        cue_ends.append(k)
        assert s.text.endswith(SENTENCE_MARKS), s.text
        assert s.start == s.words[0]["start"] and s.end == s.words[-1]["end"]
    assert cue_ends == ends

    # the SRT cues are those segments, times from the words' stamps
    from workers.formats import to_srt

    blocks = to_srt(t).strip().split("\n\n")
    assert len(blocks) == len(ends)
    for block, s in zip(blocks, t.segments):
        assert block.splitlines()[2] == s.text


def test_caps_still_split_long_sentences(long_sentences):
    """Default caps: every sentence end closes a cue; any other cue end is where the next word would have
    passed a cap (7 s, 84 characters)."""
    from workers.punctuation import punctuate

    _, model = long_sentences
    words = punctuate(model, [_words(300, seed=3, step_s=0.15)])[0]
    opts = MergeOptions(char_level=True, min_sentence_s=0.0)
    segs = group_segments(words, opts)
    flat, k, cue_ends = [w for s in segs for w in s.words], -1, []
    for s in segs:
        k += len(s.words)
        cue_ends.append(k)
    assert len(flat) == len(words)
    ends = {n for n, w in enumerate(words) if w.word.endswith(SENTENCE_MARKS)}
    assert ends <= set(cue_ends)
    for n in set(cue_ends) - ends - {len(words) - 1}:
        cue = next(s for s, e in zip(segs, cue_ends) if e == n)
        nxt = words[n + 1]
        assert (nxt.end_s - cue.start > opts.max_segment_s
                or len(cue.text + nxt.word) > opts.max_segment_chars), (cue.text, nxt)
    assert len(segs) > len(ends)  # the caps did split the long sentences


def test_engines_own_marks_are_kept():
    from workers.punctuation import punctuates_itself

    assert punctuates_itself([Word(0, 1, "你好"), Word(1, 2, "世界。")])
    assert not punctuates_itself([Word(0, 1, "你"), Word(1, 2, "好")])
    # without restored marks the old rule stays: an engine's full stop closes a cue only after 1 s (Mr.)
    segs = group_segments([Word(0, 0.2, "Mr."), Word(0.2, 0.5, "Smith"), Word(0.5, 1.5, "left.")], MergeOptions())
    assert [s.text for s in segs] == ["Mr. Smith left."]


# --- options at the door, and the whole pipeline ---------------------------------------------------------

def test_resolve_punc_model(tmp_path):
    from app.catalog.postprocess import resolve_punc_model
    from app.errors import ModelNotInstalled
    from app.settings import Settings

    build_tiny_ct_punc(tmp_path / "ct-punc")
    (tmp_path / "not-a-model").mkdir()
    s = Settings(models_dir=tmp_path, punc_model="ct-punc")
    assert resolve_punc_model(None, "funasr", s) == "ct-punc"  # the deployment's default
    assert resolve_punc_model("none", "funasr", s) == "none"
    assert resolve_punc_model(None, "whisper", s) == "none"  # whisper punctuates itself
    with pytest.raises(ModelNotInstalled, match="writes its own punctuation"):
        resolve_punc_model("ct-punc", "whisper", s)
    with pytest.raises(ModelNotInstalled, match=r"'not-a-model' is not installed.*installed: ct-punc"):
        resolve_punc_model("not-a-model", "funasr", s)
    with pytest.raises(ModelNotInstalled, match="'gone' is not installed"):
        resolve_punc_model(None, "funasr", Settings(models_dir=tmp_path, punc_model="gone"))
    assert resolve_punc_model(None, "funasr", Settings(models_dir=tmp_path)) == "none"


@pytest.mark.slow
def test_punctuated_job_through_the_pipeline(stack):
    """Tiny Paraformer + tiny CT-Transformer: the job's cues end at restored sentence ends; bad punc_model
    options are refused at the door with 422."""
    models = stack.tmp / "models"
    build_tiny_paraformer(models / "tiny-paraformer")
    build_tiny_ct_punc(models / "tiny-punc")
    opts = {"engine": "funasr", "model": "tiny-paraformer", "punc_model": "tiny-punc", "formats": ["json", "srt"]}
    with stack.client() as c:
        jid = c.submit_file(AUDIO / "zh_funasr_binhai_6s.wav", opts)["id"]
        plain = c.submit_file(AUDIO / "zh_funasr_binhai_6s.wav", {**opts, "punc_model": "none"})["id"]
        done = c.wait([jid, plain], timeout_s=300)
        assert all(j["state"] == "COMPLETED" for j in done.values()), (done, stack.logs())
        assert done[jid]["options"]["punc_model"] == "tiny-punc"
        doc, ref = json.loads(c.transcript(jid, "json")), json.loads(c.transcript(plain, "json"))
        words = [w for s in doc["segments"] for w in s["words"]]
        bare = [w for s in ref["segments"] for w in s["words"]]
        # the same words and times as without punctuation, marks added
        assert [(w["start"], w["end"]) for w in words] == [(w["start"], w["end"]) for w in bare]
        assert all(w["word"].startswith(b["word"]) for w, b in zip(words, bare))
        # every restored sentence end closes its cue (a cue may also end at a pause or a cap)
        for s in doc["segments"]:
            assert not any(w["word"].endswith(SENTENCE_MARKS) for w in s["words"][:-1]), s
        assert doc["segments"][-1]["text"].endswith(SENTENCE_MARKS)  # the text is closed with a full stop
        assert sum(w["word"].endswith(SENTENCE_MARKS) for w in words) >= 2, doc["text"]
        srt = c.transcript(jid, "srt").decode()
        print("SRT of the punctuated tiny Paraformer job:\n" + srt)  # shown with -s
        assert [b.splitlines()[2] for b in srt.strip().split("\n\n")] == [s["text"] for s in doc["segments"]]

        bad = functools.partial(c.http.post, "/v1/jobs")
        r = bad(json={"source_uri": "s3://asrq-test/inbox/x.wav", **opts, "punc_model": "ct-punc-large"})
        assert r.status_code == 422 and "not installed" in r.text and "tiny-punc" in r.text, r.text
        r = bad(json={"source_uri": "s3://asrq-test/inbox/x.wav", "punc_model": "tiny-punc"})  # whisper
        assert r.status_code == 422 and "own punctuation" in r.text, r.text
        r = bad(json={"source_uri": "s3://asrq-test/inbox/x.wav", **opts, "punc_model": "../tiny-punc"})
        assert r.status_code == 422 and "models directory" in r.text, r.text
