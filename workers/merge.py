"""Chunk results -> one timeline: absolute times, overlaps resolved, monotonic, grouped into segments."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from workers.engines.base import Word

SENTENCE_END = (".", "?", "!", "。", "？", "！", "…")


@dataclass
class ChunkResult:
    index: int
    start_ms: int
    end_ms: int
    text: str
    words: list[Word] = field(default_factory=list)  # times relative to the chunk


@dataclass
class Segment:
    start: float
    end: float
    text: str
    words: list[dict] = field(default_factory=list)


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
        if w.word.endswith(SENTENCE_END) and w.end_s - cur[0].start_s > 1.0:
            flush()
    flush()
    return segments


def merge(job_id: str, chunks: list[ChunkResult], duration_s: float, language: str | None,
          opts: MergeOptions = MergeOptions()) -> Transcript:
    words = absolute_words(chunks, duration_s)
    segments = group_segments(words, opts)
    text = ("" if opts.char_level else " ").join(s.text for s in segments).strip()
    return Transcript(job_id=job_id, duration_s=round(duration_s, 3), language=language, text=text, segments=segments)
