"""Chinese output in simplified characters.

Whisper learned Mandarin from text in both scripts and writes traditional characters for some
recordings (or some chunks of one recording). Transcripts of Chinese are given in simplified
characters, the script of the Mandarin users here, by OpenCC (the maintained converter, its
official binding) with its ``t2s`` table: a change of script only, character for character with
phrase rules (乾隆 stays, 乾燥 becomes 干燥). ``tw2sp`` would also swap Taiwanese vocabulary for
mainland words (軟體 -> 软件), rewriting what the model heard rather than how it is written, and
changing the number of characters, which word timestamps cannot follow.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import replace

from workers.engines.base import ChunkText, Word

_LOCK = threading.Lock()  # one converter per process, called from the engine's decoder threads


@functools.lru_cache(maxsize=1)
def _converter():  # noqa: ANN202
    import opencc

    return opencc.OpenCC("t2s")


def to_simplified(text: str) -> str:
    if not text:
        return text
    with _LOCK:
        return _converter().convert(text)


def simplify_words(words: list[str]) -> list[str]:
    """Each word in simplified characters, converted as one string so that phrase rules see the
    neighbouring words, then cut back at the same places; if the conversion changed the number of
    characters (a phrase rule that does), the cut points are lost and each word is converted alone."""
    joined = "".join(words)
    out = to_simplified(joined)
    if len(out) != len(joined):
        return [to_simplified(w) for w in words]
    cut, pos = [], 0
    for w in words:
        cut.append(out[pos:pos + len(w)])
        pos += len(w)
    return cut


def simplify_chunk(result: ChunkText) -> ChunkText:
    """The chunk's text and words in simplified characters; times, and anything not Chinese, unchanged."""
    words = simplify_words([w.word for w in result.words])
    # a text made of the words (Whisper's sequential decoder) is made again of the converted words, so
    # both read alike: spaces between the words would hide phrases from the converter
    same = result.text == " ".join(w.word for w in result.words)
    # replace(): every other field (language, SenseVoice's emotion and event) stays as the engine gave it
    return replace(result, text=" ".join(words) if same else to_simplified(result.text),
                   words=[Word(w.start_s, w.end_s, s) for w, s in zip(result.words, words)])


def is_simplified(text: str) -> bool:
    """True when ``text`` holds nothing the converter would change (no traditional-only writing)."""
    return to_simplified(text) == text
