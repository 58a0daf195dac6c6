"""Long recordings through the whole system: no word lost or doubled at chunk edges, absolute timestamps.

The recording is real clips and espeak-ng speech of known text laid end to end with pauses of known
length, so every reference and every placement is exact.
"""

from __future__ import annotations

import json

import pytest

from tests.audio_fixtures import SR, espeak, join_with_pauses, load_clip, write_flac
from tests.services import AUDIO
from tests.wer import normalise, reference, wer
from workers.engines.base import DecodeOptions, EngineSpec

pytestmark = pytest.mark.slow

SPOKEN = [
    "The harbour master counted seven ships before noon. None of them carried grain, and the town was worried.",
    "In the spring the river rose higher than anyone could remember. Families moved their furniture upstairs "
    "and waited for the water to fall. The mayor asked the engineers to build a new wall along the bank.",
    "A good teacher listens more than she speaks. She asks simple questions, waits for the answers, and "
    "lets the students find the mistakes themselves. Over many years this patience makes strong thinkers.",
    "The train left the station at dawn. By evening it had crossed the mountains and reached the sea.",
    "Our library opens at nine in the morning and closes at six in the evening. Visitors may borrow up to "
    "five books at a time, and children under twelve must come with an adult.",
    "The committee met on Tuesday to discuss the budget. After a long debate they agreed to spend more on "
    "roads and schools, and less on new offices for themselves.",
    "She planted tomatoes, beans and sunflowers in the small garden behind the house. By the end of summer "
    "the sunflowers were taller than the fence.",
]
CLIPS = ["en_jfk_ask_not_11s.flac", "en_librispeech_1995-1837-0001.wav", "en_librispeech_2412-153948-0000.flac"]
PAUSES_S = [0.6, 1.5, 0.35, 2.5, 0.8, 3.0, 0.5, 1.2, 0.45, 2.0]


@pytest.fixture(scope="module")
def long_recording(tmp_path_factory):
    parts = []
    for n in range(len(SPOKEN)):
        parts.append((f"tts{n}", SPOKEN[n], espeak(SPOKEN[n])))
        if n < len(CLIPS):
            parts.append((CLIPS[n], reference(CLIPS[n]), load_clip(AUDIO / CLIPS[n])))
    audio, placed = join_with_pauses(parts, PAUSES_S)
    path = write_flac(tmp_path_factory.mktemp("long") / "long_meeting.flac", audio)
    return path, placed, parts


def engine_alone_hypotheses(parts) -> list[str]:
    """The same engine and model on each clip by itself: the bar the system must meet."""
    from workers.engines.whisper_engine import WhisperEngine

    engine = WhisperEngine(EngineSpec("whisper", "bundled:tiny.en"))
    return [engine.transcribe_batch([audio], DecodeOptions())[0].text for _, _, audio in parts]


def test_long_recording_matches_clips_alone(stack, long_recording):
    path, placed, parts = long_recording
    duration_s = sum(len(a) for _, _, a in parts) / SR
    assert duration_s > 90
    with stack.client() as c:
        jid = c.submit_file(path)["id"]
        job = c.wait([jid], timeout_s=600)[jid]
        assert job["state"] == "COMPLETED", (job, stack.logs())
        assert job["progress"]["chunks_total"] >= 4  # it really was cut
        doc = json.loads(c.transcript(jid, "json"))

    references = " ".join(p.reference for p in placed)
    system_wer = wer(references, doc["text"])
    alone_wer = wer(references, " ".join(engine_alone_hypotheses(parts)))
    print(f"long-form WER {system_wer:.4f} vs clips alone {alone_wer:.4f} over {duration_s:.1f} s, "
          f"{job['progress']['chunks_total']} chunks")
    # the margin is tiny.en's numeric noise on CPU, not a tolerance for cutting: the same chunk decodes to
    # other words under another thread count or instruction set (README, long-form accuracy: up to 2.4
    # points on one recording between OMP_NUM_THREADS=1 and the default). Here: 12 errors in 280 words for
    # the clips alone; through the stack at most 13 on the machine a 0.5-point margin was set on, 15 on the
    # next one, same chunks and code. 1.5 points is 4 words
    assert system_wer <= alone_wer + 0.015, (system_wer, alone_wer, doc["text"])

    # every word lies within +-0.5 s of the clip it belongs to, and each clip's words are all there
    words = [w for s in doc["segments"] for w in s["words"]]
    starts = [w["start"] for w in words]
    assert starts == sorted(starts)
    for p in placed:
        inside = [w["word"] for w in words if p.start_s - 0.5 <= w["start"] and w["end"] <= p.end_s + 0.5]
        clip_wer = wer(p.reference, " ".join(inside))
        assert clip_wer <= 0.25, (p.name, clip_wer, inside)
    stray = [w for w in words if not any(p.start_s - 0.5 <= w["start"] and w["end"] <= p.end_s + 0.5 for p in placed)]
    assert not stray, stray


def test_hard_cut_without_pauses_loses_and_doubles_nothing(stack, tmp_path):
    # espeak without punctuation speaks on without a pause: no silence to cut at inside a chunk
    text = ("the old clock in the hall kept time for the whole family and every morning the children "
            "listened for its bell before they ran down the stairs to eat breakfast with their father who "
            "read the paper aloud while their mother wrote letters to friends in distant cities across the "
            "ocean and the dog waited patiently by the door for someone to take him for a long walk through "
            "the quiet streets of the village past the bakery and the school and the small green park where "
            "old men played chess under the trees until the sun went down behind the hills")
    audio = espeak(text, speed_wpm=150)
    assert len(audio) / SR > 28
    path = write_flac(tmp_path / "no_pauses.flac", audio)
    with stack.client() as c:
        jid = c.submit_file(path)["id"]
        job = c.wait([jid], timeout_s=300)[jid]
        assert job["state"] == "COMPLETED", job
        doc = json.loads(c.transcript(jid, "json"))
    hyp = normalise(doc["text"]).split()
    err = wer(text, doc["text"])
    print(f"hard-cut WER {err:.4f}, {job['progress']['chunks_total']} chunks")
    assert job["progress"]["chunks_total"] >= 2
    # a doubled word at the cut shows up as the same word twice in a row
    doubled = [hyp[i] for i in range(1, len(hyp)) if hyp[i] == hyp[i - 1]]
    assert not doubled, doubled
    assert err <= 0.12, (err, doc["text"])
