"""Inverse text normalization, once per job: spoken Mandarin numbers, dates, money and percentages
written as digits (三百二十 -> 320, 百分之五十 -> 50%), every word keeping its time.

The grammar is WeTextProcessing's (WeNet's) zh ITN: weighted FSTs, shipped prebuilt in its wheel, that
tell a number from a word that only contains one (一起, 星期一, 一点一滴 stay as they are). cn2an, the
lighter rule-based alternative, was measured too: faster per character but it rewrites inside words.

Times: the input characters are aligned to the output (difflib); a character left unchanged keeps its
word's time, a rewritten span gets the first start and the last end of the words it came from.

Cost: linear in the length of the text. Neither the grammar nor difflib is (a clause of 20,000 characters
took 15 s in the FST and 7 s to align, and a Mandarin job with no punctuation model is one clause: 10
hours are about 150,000 characters), so each sees pieces of at most ``MAX_PIECE_CHARS``: a longer clause
is cut where no rule can reach across (``_cut_points``), and text the grammar cannot change is never
aligned at all.
"""

from __future__ import annotations

import functools
import logging
import re
import unicodedata
from collections.abc import Callable
from difflib import SequenceMatcher

from workers.engines.base import Word

log = logging.getLogger("asrq.itn")

# the prebuilt FST also deletes these fillers (its blacklist); ITN rewrites what was said, it never
# drops speech, so they are kept out of its input and stay in the transcript as spoken
_KEPT_AS_SPOKEN = re.compile(r"([呃啊])")
# every rewrite of the zh grammar (cardinal, date, money, measure, fraction, time, math) holds a numeral
_NUMERAL = re.compile(r"[零〇一二三四五六七八九十百千万亿两幺壹贰叁肆伍陆柒捌玖拾佰仟]")
# no rule reads across a clause mark (the ASCII "." and ":" stay inside: 3.5, 12:30)
_CLAUSE_MARKS = frozenset("，。？！；：、,?!;")
_CLAUSE = re.compile(f"([{''.join(sorted(_CLAUSE_MARKS))}])")
# what a rule may start or end at: the numerals, and digits already written as digits (3点5, 5%)
_TRIGGER = re.compile(r"[零〇一二三四五六七八九十百千万亿两幺壹贰叁肆伍陆柒捌玖拾佰仟0-9０-９]")
#: the most characters the grammar and the aligner see at once; a longer clause is cut into pieces
MAX_PIECE_CHARS = 400
#: a cut this far after the last numeral and this far before the next one changes nothing: no rule reads
#: further from one. After a number the longest words are currency names (波斯尼亚和黑塞哥维那可兑换马克, 15);
#: before one, a licence plate's province and letters (京AB...) or a time's 上午
SAFE_AFTER_CHARS, SAFE_BEFORE_CHARS = 16, 8


@functools.lru_cache(maxsize=1)
def get_normalizer() -> Callable[[str], str]:
    """WeTextProcessing's zh inverse normalizer, loaded once per process (about 0.5 s)."""
    # WETEXT logs every load at INFO on its own handler
    logging.getLogger("wetext-zh_normalizer").setLevel(logging.WARNING)
    from itn.chinese.inverse_normalizer import InverseNormalizer

    return InverseNormalizer().normalize


def _is_punct(s: str) -> bool:
    return bool(s) and all(unicodedata.category(c).startswith("P") for c in s)


def _pieces(text: str, max_chars: int = MAX_PIECE_CHARS) -> list[tuple[str, bool]]:
    """The text cut into (piece, whether the grammar must see it): clauses (between marks) with a numeral
    go through the FST, which costs about 0.65 ms a character whatever it finds; the rest cannot change.
    Fillers never go through. A clause longer than ``max_chars`` is cut further (``_cut_points``)."""
    out: list[tuple[str, bool]] = []
    for clause in _CLAUSE.split(text):
        if not clause:
            continue
        if clause in _CLAUSE_MARKS or not _NUMERAL.search(clause):
            out.append((clause, False))
            continue
        for p in _KEPT_AS_SPOKEN.split(clause):
            if not p:
                continue
            if _KEPT_AS_SPOKEN.fullmatch(p):
                out.append((p, False))
            elif len(p) <= max_chars:
                out.append((p, True))
            else:
                cuts = [0, *_cut_points(p, max_chars), len(p)]
                out.extend((p[a:b], bool(_TRIGGER.search(p[a:b]))) for a, b in zip(cuts, cuts[1:]))
    return out


def _cut_points(text: str, max_chars: int) -> list[int]:
    """Where to cut a long clause into pieces of about ``max_chars``: at a point clear of numerals on both
    sides (``SAFE_AFTER_CHARS``, ``SAFE_BEFORE_CHARS``), which changes nothing, the latest one within ``max_chars`` (or,
    failing that, the first one within ``4 * max_chars``). A clause dense with numbers all along has no
    such point: it is cut where it is clearest, which may split what one rule would have read whole
    (logged). Linear: one pass for the gaps, and each cut looks at most ``4 * max_chars`` positions."""
    n = len(text)
    # gap_left[k]: characters since the last numeral before position k; gap_right[k]: until the next one
    gap_left, gap_right = [0] * (n + 1), [0] * (n + 1)
    run = n
    for k in range(n):
        gap_left[k] = run
        run = 0 if _TRIGGER.match(text, k) else run + 1
    gap_left[n] = run
    run = n
    for k in range(n - 1, -1, -1):
        run = 0 if _TRIGGER.match(text, k) else run + 1
        gap_right[k] = run
    gap_right[n] = n

    def clear(k: int) -> float:  # >= 1: a safe cut
        return min(gap_left[k] / SAFE_AFTER_CHARS, gap_right[k] / SAFE_BEFORE_CHARS)

    cuts: list[int] = []
    start = 0
    while n - start > max_chars:
        near = range(start + max(1, max_chars // 4), start + max_chars + 1)
        far = range(start + max_chars + 1, min(n, start + 4 * max_chars) + 1)
        best = next((k for k in reversed(near) if clear(k) >= 1), None)
        if best is None:
            best = next((k for k in far if clear(k) >= 1), None)
        if best is None:
            if n - start <= 4 * max_chars:
                break  # the rest is one piece: no cut at all is better than an unsafe one
            best = max(range(near.start, far.stop), key=lambda k: (clear(k), k))
            log.warning("itn: a clause dense with numbers cut %d characters after one, %d before the next",
                        gap_left[best], gap_right[best])
        cuts.append(best)
        start = best
    return cuts


def normalize_words(words: list[Word], char_level: bool, normalize: Callable[[str], str] | None = None,
                    max_piece_chars: int = MAX_PIECE_CHARS) -> list[Word]:
    """The words with ITN applied to their joined text; times follow the characters they came from."""
    if not words:
        return []
    normalize = normalize or get_normalizer()
    sep = "" if char_level else " "
    text_chars: list[str] = []
    owner: list[int] = []  # word index of each character of the joined text, -1 for a separator
    for i, w in enumerate(words):
        if i and sep:
            text_chars.append(sep)
            owner.append(-1)
        text_chars.extend(w.word)
        owner.extend([i] * len(w.word))
    text = "".join(text_chars)

    # units of the output: (text, indices of the source words it came from, came unchanged)
    units: list[tuple[str, list[int], bool]] = []
    pos = 0
    for piece, rewrite in _pieces(text, max_piece_chars):
        out = normalize(piece) if rewrite else piece
        src = owner[pos:pos + len(piece)]
        if out == piece:  # nothing rewritten: nothing to align (difflib on a long text is quadratic)
            units.extend((c, [o], True) for c, o in zip(piece, src))
            pos += len(piece)
            continue
        ops = SequenceMatcher(None, piece, out, autojunk=False).get_opcodes()
        for tag, i1, i2, j1, j2 in ops:
            if tag == "equal":
                units.extend((out[j1 + k], [src[i1 + k]], True) for k in range(j2 - j1))
            elif tag == "delete":
                # dropped by the grammar: kept as spoken (separators apart)
                units.extend((piece[i], [src[i]], True) for i in range(i1, i2) if src[i] >= 0)
            else:  # replace, insert: a rewritten span
                ids = sorted({o for o in src[i1:i2] if o >= 0})
                units.append((out[j1:j2], ids, False))
        pos += len(piece)
    return _rebuild(words, units)


def _rebuild(words: list[Word], units: list[tuple[str, list[int], bool]]) -> list[Word]:
    out: list[Word] = []
    cur_text, cur_src, cur_same, cur_ids = "", -1, False, []

    def emit(text: str, ids: list[int]) -> None:
        text = text.strip()
        if not text:
            return
        if not ids:  # inserted with no source (a unit sign): it belongs to what came before
            if out:
                last = out[-1]
                out[-1] = Word(last.start_s, last.end_s, last.word + text)
            return
        start = min(words[i].start_s for i in ids)
        end = max(words[i].end_s for i in ids)
        if out and _is_punct(text):
            # punctuation split off a rewritten word stays attached to it, as the engines attach it
            last = out[-1]
            out[-1] = Word(last.start_s, last.end_s, last.word + text)
            return
        out.append(Word(start, end, text))

    for text, ids, same in units:
        src = ids[0] if same and ids else -2
        if same and src == cur_src and cur_same:
            cur_text += text
            continue
        if cur_text:
            emit(cur_text, [cur_src] if cur_same else cur_ids)
        cur_text, cur_src, cur_same, cur_ids = text, src, same, ids
    if cur_text:
        emit(cur_text, [cur_src] if cur_same else cur_ids)
    return _monotonic(out)


def _monotonic(words: list[Word]) -> list[Word]:
    # a rewritten span may start before a word it did not touch ended (e.g. 二十 -> 20 out of 十二):
    # the merged timeline stays ordered as merge left it
    prev = 0.0
    fixed = []
    for w in words:
        start = max(w.start_s, prev)
        fixed.append(Word(start, max(w.end_s, start), w.word))
        prev = start
    return fixed
