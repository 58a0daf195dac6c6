"""Chunk results -> one timeline: absolute times, overlaps resolved, monotonic, grouped into segments."""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

from workers.engines.base import Word

SENTENCE_END = (".", "?", "!", "。", "？", "！", "…")


@dataclass
class ChunkResult:
    index: int
    start_ms: int
    end_ms: int
    text: str
    words: list[Word] = field(default_factory=list)  # times relative to the chunk
    # what the model said about the chunk besides its words: its language, and SenseVoice's emotion and
    # audio event; None where it said nothing
    language: str | None = None
    emotion: str | None = None
    event: str | None = None


def stored_words(words: list[Word], emotion: str | None = None, event: str | None = None) -> list:
    """A chunk's words as its row keeps them (chunks.words, JSON): ``[[start_s, end_s, word], ...]``,
    then one ``{"emotion": ..., "event": ...}`` object when the model tagged the chunk (SenseVoice), so a
    tagged chunk needs no column of its own."""
    out: list = [[w.start_s, w.end_s, w.word] for w in words]
    tags = {k: v for k, v in (("emotion", emotion), ("event", event)) if v is not None}
    return out + [tags] if tags else out


def chunk_result(index: int, start_ms: int, end_ms: int, text: str, stored: list | None,
                 language: str | None = None) -> ChunkResult:
    """The ChunkResult of a chunk row (``stored`` as stored_words wrote it)."""
    stored = stored or []
    tags = next((x for x in stored if isinstance(x, dict)), {})
    return ChunkResult(index, start_ms, end_ms, text, [Word(*w) for w in stored if not isinstance(w, dict)],
                       language=language, emotion=tags.get("emotion"), event=tags.get("event"))


#: the chunk tags a segment carries (each one only where a chunk had it: formats.to_json leaves out None)
SEGMENT_TAGS = ("language", "emotion", "event")


@dataclass
class Segment:
    start: float
    end: float
    text: str
    words: list[dict] = field(default_factory=list)
    # tags of the chunk its words came from; a segment never holds words of chunks whose tags differ
    language: str | None = None
    emotion: str | None = None
    event: str | None = None


@dataclass
class Transcript:
    job_id: str
    duration_s: float
    language: str | None
    text: str
    segments: list[Segment]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Transcript":
        segs = [Segment(**s) for s in d.get("segments", [])]
        return cls(d["job_id"], d["duration_s"], d.get("language"), d.get("text", ""), segs)


@dataclass(frozen=True)
class MergeOptions:
    char_level: bool = False  # join words without spaces (Mandarin characters)
    max_segment_s: float = 7.0
    max_segment_chars: int = 84
    pause_split_s: float = 0.8
    # a sentence end closes a cue once the cue is this long: an engine's own marks include abbreviations
    # (Mr.), while marks restored by the punctuation stage are all sentence ends (0: every one closes)
    min_sentence_s: float = 1.0


def absolute_words(chunks: list[ChunkResult], duration_s: float) -> list[Word]:
    """Every word on the recording's clock, each kept by exactly one chunk where chunks overlap."""
    chunks = sorted(chunks, key=lambda c: c.index)
    out: list[Word] = []
    for n, ch in enumerate(chunks):
        c0, c1 = ch.start_ms / 1000, ch.end_ms / 1000
        # in an overlap the earlier chunk owns words centred before the midpoint, the later one the rest
        lo = (c0 + chunks[n - 1].end_ms / 1000) / 2 if n and chunks[n - 1].end_ms > ch.start_ms else c0
        hi = (c1 + chunks[n + 1].start_ms / 1000) / 2 if n + 1 < len(chunks) and chunks[n + 1].start_ms < ch.end_ms else c1
        words = ch.words or ([Word(0.0, c1 - c0, ch.text.strip())] if ch.text.strip() else [])
        for w in words:
            start = min(max(c0 + w.start_s, c0), c1)
            end = min(max(c0 + w.end_s, start), c1)
            centre = (start + end) / 2
            if lo <= centre and (centre < hi or hi == c1):
                out.append(Word(start, end, w.word))
    # monotonic: a word never starts before the previous one, never ends before it starts
    prev = 0.0
    fixed: list[Word] = []
    for w in out:
        start = min(max(w.start_s, prev), duration_s)
        end = min(max(w.end_s, start), duration_s)
        fixed.append(Word(round(start, 3), round(end, 3), w.word))
        prev = start
    return fixed


def _join(words: list[str], char_level: bool) -> str:
    return ("" if char_level else " ").join(w for w in words if w).strip()


def group_segments(words: list[Word], opts: MergeOptions) -> list[Segment]:
    segments: list[Segment] = []
    cur: list[Word] = []

    def flush() -> None:
        if cur:
            segments.append(
                Segment(
                    start=cur[0].start_s,
                    end=cur[-1].end_s,
                    text=_join([w.word for w in cur], opts.char_level),
                    words=[{"start": w.start_s, "end": w.end_s, "word": w.word} for w in cur],
                )
            )
            cur.clear()

    for w in words:
        if cur:
            too_long = w.end_s - cur[0].start_s > opts.max_segment_s
            too_wide = len(_join([x.word for x in cur] + [w.word], opts.char_level)) > opts.max_segment_chars
            paused = w.start_s - cur[-1].end_s > opts.pause_split_s
            if too_long or too_wide or paused:
                flush()
        cur.append(w)
        long_enough = opts.min_sentence_s <= 0 or w.end_s - cur[0].start_s > opts.min_sentence_s
        if w.word.endswith(SENTENCE_END) and long_enough:
            flush()
    flush()
    return segments


def merge(job_id: str, chunks: list[ChunkResult], duration_s: float, language: str | None,
          opts: MergeOptions = MergeOptions(),
          rewrite: Callable[[list[Word]], list[Word]] | None = None) -> Transcript:
    """``rewrite`` runs on the job's whole timeline before it is cut into segments (punctuation, ITN)."""
    words = absolute_words(chunks, duration_s)
    if rewrite is not None:
        words = rewrite(words)
    segments = tag_segments(group_segments(words, opts), chunks, opts)
    text = ("" if opts.char_level else " ").join(s.text for s in segments).strip()
    return Transcript(job_id=job_id, duration_s=round(duration_s, 3), language=language, text=text, segments=segments)


def _tags(ch: ChunkResult) -> tuple:
    return tuple(getattr(ch, k) for k in SEGMENT_TAGS)


def tag_segments(segments: list[Segment], chunks: list[ChunkResult], opts: MergeOptions) -> list[Segment]:
    """Give each segment the tags of the chunk its words came from, cutting a segment in two where its
    words came from chunks whose tags differ. A word's chunk is found by time (the rule absolute_words
    keeps words by: in an overlap, the earlier chunk up to its midpoint), so rewrites of the timeline
    that join or split words (punctuation, ITN) do not matter."""
    chunks = sorted(chunks, key=lambda c: c.index)
    if not any(any(_tags(c)) for c in chunks):
        return segments
    # where each chunk's words begin on the recording's clock
    starts = [c.start_ms / 1000 if n == 0 or chunks[n - 1].end_ms <= c.start_ms
              else (c.start_ms + chunks[n - 1].end_ms) / 2000 for n, c in enumerate(chunks)]

    def tags_at(w: dict) -> tuple:
        n = bisect.bisect_right(starts, (w["start"] + w["end"]) / 2) - 1
        return _tags(chunks[max(n, 0)])

    out: list[Segment] = []
    for seg in segments:
        runs: list[tuple[tuple, list[dict]]] = []
        for w in seg.words:
            t = tags_at(w)
            if runs and runs[-1][0] == t:
                runs[-1][1].append(w)
            else:
                runs.append((t, [w]))
        if len(runs) <= 1:
            out.append(replace(seg, **dict(zip(SEGMENT_TAGS, runs[0][0]))) if runs else seg)
            continue
        for t, ws in runs:
            out.append(replace(seg, start=ws[0]["start"], end=ws[-1]["end"],
                               text=_join([w["word"] for w in ws], opts.char_level), words=ws,
                               **dict(zip(SEGMENT_TAGS, t))))
    return out
