"""Speech segments -> chunks of at most ``max_chunk_ms``, cut at pauses.

Prefers the longest pause in the second half of the window (so chunks stay long and cuts fall in
real silences); cuts hard, with an overlap that the merge resolves by timestamps, only where no pause
exists at all.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChunkPlan:
    index: int
    start_ms: int
    end_ms: int
    hard_cut_after: bool = False  # the next chunk overlaps this one


@dataclass(frozen=True)
class ChunkingOptions:
    max_chunk_ms: int = 30_000
    overlap_ms: int = 1_000
    pad_ms: int = 200  # silence kept around speech so word edges are not clipped


def plan_chunks(segments: list[tuple[int, int]], duration_ms: int, opts: ChunkingOptions) -> list[ChunkPlan]:
    segs = _normalise(segments, duration_ms)
    if not segs:
        return []
    max_ms, pad = opts.max_chunk_ms, opts.pad_ms
    overlap = min(opts.overlap_ms, max_ms // 4)
    spans: list[tuple[int, int, bool]] = []
    i = 0
    start = max(0, segs[0][0] - pad)
    while i < len(segs):
        limit = start + max_ms
        j = i
        while j < len(segs) and segs[j][1] <= limit:
            j += 1
        if j == len(segs):
            spans.append((start, min(duration_ms, segs[-1][1] + pad, limit), False))
            break
        if j == i:
            # one segment runs past the limit with no pause inside: hard cut with overlap
            spans.append((start, limit, True))
            start = limit - overlap
            segs[i] = (start, segs[i][1])
            continue
        gaps = [(k, segs[k + 1][0] - segs[k][1]) for k in range(i, j)]
        late = [g for g in gaps if segs[g[0]][1] >= start + max_ms // 2]
        k, _gap = max(late or gaps, key=lambda g: (g[1], g[0]))
        lo, hi = segs[k][1], segs[k + 1][0]
        mid = (lo + hi) // 2
        end = min(lo + pad, mid, limit)
        spans.append((start, end, False))
        start = max(hi - pad, mid)
        i = k + 1
    return [ChunkPlan(n, s, e, hard) for n, (s, e, hard) in enumerate(spans) if e > s]


def _normalise(segments: list[tuple[int, int]], duration_ms: int) -> list[tuple[int, int]]:
    """Sorted, clipped to the audio, overlapping segments merged."""
    out: list[tuple[int, int]] = []
    for b, e in sorted(segments):
        b, e = max(0, int(b)), min(duration_ms, int(e))
        if e <= b:
            continue
        if out and b <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((b, e))
    return out
