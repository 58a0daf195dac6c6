"""plan_chunks: max length, coverage of speech, cuts in pauses, hard cuts with overlap, normalisation.

Plus assemble_segments (streaming VAD output -> closed segments).
"""

from __future__ import annotations

import random

import pytest

from workers.chunking import ChunkingOptions, ChunkPlan, _normalise, plan_chunks
from workers.vad import assemble_segments

OPTS = ChunkingOptions(max_chunk_ms=30_000, overlap_ms=1_000, pad_ms=200)


def _union(chunks: list[ChunkPlan]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for c in sorted(chunks, key=lambda c: c.start_ms):
        if out and c.start_ms <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], c.end_ms))
        else:
            out.append((c.start_ms, c.end_ms))
    return out


def _covered(seg: tuple[int, int], chunks: list[ChunkPlan]) -> bool:
    b, e = seg
    return any(u0 <= b and e <= u1 for u0, u1 in _union(chunks))


def check_invariants(segments: list[tuple[int, int]], duration_ms: int, opts: ChunkingOptions,
                     chunks: list[ChunkPlan]) -> None:
    segs = _normalise(segments, duration_ms)
    if not segs:
        assert chunks == []
        return
    assert chunks, "speech exists but no chunk was planned"
    overlap = min(opts.overlap_ms, opts.max_chunk_ms // 4)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    for c in chunks:
        assert 0 <= c.start_ms < c.end_ms <= duration_ms, c
        assert c.end_ms - c.start_ms <= opts.max_chunk_ms, c
    for a, b in zip(chunks, chunks[1:]):
        assert b.start_ms > a.start_ms, (a, b)  # monotonic starts
        if a.hard_cut_after:
            # the hard cut leaves exactly the overlap, and the cut chunk is of full length
            assert b.start_ms == a.end_ms - overlap, (a, b)
            assert a.end_ms - a.start_ms == opts.max_chunk_ms, a
        else:
            assert b.start_ms >= a.end_ms, (a, b)  # no overlap without a hard cut
            # a soft cut lies in a pause: no speech segment runs across either side of it
            for s0, s1 in segs:
                assert not s0 < a.end_ms < s1 and not s0 < b.start_ms < s1, (a, b, (s0, s1))
    assert not chunks[-1].hard_cut_after
    for s in segs:
        assert _covered(s, chunks), (s, chunks)
    # no chunk is pure silence: every chunk touches some speech
    for c in chunks:
        assert any(b < c.end_ms and c.start_ms < e for b, e in segs), c
    # chunks start no earlier than pad before the first speech and end no later than pad after the last
    assert chunks[0].start_ms >= max(0, segs[0][0] - opts.pad_ms)
    assert chunks[-1].end_ms <= min(duration_ms, segs[-1][1] + opts.pad_ms)


# ---- basic cases ---------------------------------------------------------------------------------------------


def test_no_speech_gives_no_chunks():
    assert plan_chunks([], 60_000, OPTS) == []
    assert plan_chunks([(5_000, 5_000)], 60_000, OPTS) == []  # empty segment
    assert plan_chunks([(70_000, 80_000)], 60_000, OPTS) == []  # entirely past the end
    assert plan_chunks([(-500, -10)], 60_000, OPTS) == []  # entirely before the start


def test_short_speech_is_one_padded_chunk():
    chunks = plan_chunks([(1_000, 5_000)], 10_000, OPTS)
    assert chunks == [ChunkPlan(0, 800, 5_200, False)]


def test_padding_is_clipped_to_the_audio():
    chunks = plan_chunks([(50, 9_950)], 10_000, OPTS)
    assert chunks == [ChunkPlan(0, 0, 10_000, False)]


def test_all_speech_within_max_is_one_chunk():
    segs = [(0, 4_000), (5_000, 9_000), (12_000, 29_000)]
    chunks = plan_chunks(segs, 40_000, OPTS)
    assert len(chunks) == 1
    assert chunks[0].start_ms == 0 and chunks[0].end_ms == 29_200
    check_invariants(segs, 40_000, OPTS, chunks)


def test_cut_falls_in_the_longest_pause_of_the_second_half():
    # pauses: 2.0 s at 5 s (first half), 0.6 s at 17 s and 1.2 s at 24 s (second half), 0.3 s at 28 s.
    # the first-half pause is the longest overall but would leave a short chunk: the late 1.2 s one wins
    segs = [(0, 5_000), (7_000, 17_000), (17_600, 24_000), (25_200, 28_000), (28_300, 40_000)]
    chunks = plan_chunks(segs, 45_000, OPTS)
    check_invariants(segs, 45_000, OPTS, chunks)
    first = chunks[0]
    assert not first.hard_cut_after
    # cut in the 24.0-25.2 s pause: end = min(lo + pad, mid) = 24.2 s, next start = max(hi - pad, mid) = 25.0 s
    assert first.end_ms == 24_200
    assert chunks[1].start_ms == 25_000
    assert 24_000 <= first.end_ms <= chunks[1].start_ms <= 25_200


def test_longest_pause_wins_even_if_earlier_in_second_half():
    segs = [(0, 16_000), (18_000, 27_000), (27_500, 50_000)]  # 2 s pause at 16 s, 0.5 s pause at 27 s
    chunks = plan_chunks(segs, 50_000, OPTS)
    check_invariants(segs, 50_000, OPTS, chunks)
    assert chunks[0].end_ms == 16_200
    assert chunks[1].start_ms == 17_800


def test_short_pause_cut_at_its_midpoint():
    segs = [(0, 20_000), (20_100, 45_000)]  # 100 ms pause, shorter than the pad on each side
    chunks = plan_chunks(segs, 45_000, OPTS)
    check_invariants(segs, 45_000, OPTS, chunks)
    assert chunks[0].end_ms == 20_050 and chunks[1].start_ms == 20_050


def test_first_half_pause_used_when_no_late_pause():
    segs = [(0, 5_000), (5_500, 100_000)]
    chunks = plan_chunks(segs, 100_000, OPTS)
    check_invariants(segs, 100_000, OPTS, chunks)
    assert chunks[0] == ChunkPlan(0, 0, 5_200, False)
    assert chunks[1].start_ms == 5_300 and chunks[1].hard_cut_after


def test_cuts_fall_inside_pauses_whenever_pauses_exist():
    rng = random.Random(7)
    segs, t = [], 500
    while t < 600_000:
        d = rng.randint(1_000, 12_000)
        segs.append((t, t + d))
        t += d + rng.randint(150, 2_000)
    duration = t + 1_000
    chunks = plan_chunks(segs, duration, OPTS)
    check_invariants(segs, duration, OPTS, chunks)
    assert not any(c.hard_cut_after for c in chunks)  # every segment is shorter than a chunk
    for a, b in zip(chunks, chunks[1:]):
        # the boundary lies in a pause: no segment crosses the cut region [a.end, b.start]
        for s0, s1 in segs:
            assert not (s0 < a.end_ms and s1 > a.end_ms), (a, (s0, s1))
            assert not (s0 < b.start_ms and s1 > b.start_ms), (b, (s0, s1))


def test_single_long_segment_is_hard_cut_with_overlap():
    chunks = plan_chunks([(0, 100_000)], 100_000, OPTS)
    assert [(c.start_ms, c.end_ms, c.hard_cut_after) for c in chunks] == [
        (0, 30_000, True),
        (29_000, 59_000, True),
        (58_000, 88_000, True),
        (87_000, 100_000, False),
    ]
    check_invariants([(0, 100_000)], 100_000, OPTS, chunks)


def test_hard_cut_chunks_are_full_length_and_overlap_exactly():
    opts = ChunkingOptions(max_chunk_ms=20_000, overlap_ms=1_500, pad_ms=200)
    chunks = plan_chunks([(3_000, 103_000)], 110_000, opts)
    check_invariants([(3_000, 103_000)], 110_000, opts, chunks)
    for a, b in zip(chunks, chunks[1:]):
        assert a.hard_cut_after
        assert a.end_ms - a.start_ms == 20_000
        assert a.end_ms - b.start_ms == 1_500
    assert chunks[0].start_ms == 2_800
    assert chunks[-1].end_ms == 103_200


def test_overlap_is_capped_at_a_quarter_of_max():
    opts = ChunkingOptions(max_chunk_ms=4_000, overlap_ms=5_000, pad_ms=0)
    chunks = plan_chunks([(0, 20_000)], 20_000, opts)
    check_invariants([(0, 20_000)], 20_000, opts, chunks)
    assert all(a.end_ms - b.start_ms == 1_000 for a, b in zip(chunks, chunks[1:]))


def test_zero_overlap_hard_cut_terminates():
    opts = ChunkingOptions(max_chunk_ms=10_000, overlap_ms=0, pad_ms=0)
    chunks = plan_chunks([(0, 95_000)], 95_000, opts)
    assert [(c.start_ms, c.end_ms) for c in chunks] == [(i * 10_000, min(95_000, (i + 1) * 10_000)) for i in range(10)]


def test_very_long_segment_terminates_quickly():
    chunks = plan_chunks([(0, 10 * 3600 * 1000)], 10 * 3600 * 1000, OPTS)
    assert len(chunks) == -(-(10 * 3600 * 1000 - 1_000) // 29_000)
    check_invariants([(0, 10 * 3600 * 1000)], 10 * 3600 * 1000, OPTS, chunks)


def test_segments_are_normalised():
    # unsorted, overlapping, touching, out of range and empty segments
    raw = [(20_000, 25_000), (-3_000, 1_000), (24_000, 26_000), (26_000, 27_000), (5_000, 5_000),
           (58_000, 70_000), (40_000, 39_000), (2_000, 3_000)]
    assert _normalise(raw, 60_000) == [(0, 1_000), (2_000, 3_000), (20_000, 27_000), (58_000, 60_000)]
    chunks = plan_chunks(raw, 60_000, OPTS)
    check_invariants(raw, 60_000, OPTS, chunks)
    assert chunks[0].start_ms == 0
    assert chunks[-1].end_ms == 60_000


def test_input_list_is_not_mutated():
    segs = [(0, 100_000)]
    plan_chunks(segs, 100_000, OPTS)
    assert segs == [(0, 100_000)]


def test_float_segments_are_accepted():
    chunks = plan_chunks([(1000.7, 2000.2)], 5_000, OPTS)
    assert chunks == [ChunkPlan(0, 800, 2_200, False)]


# ---- randomised properties -------------------------------------------------------------------------------------


def _random_segments(rng: random.Random, duration: int) -> list[tuple[int, int]]:
    kind = rng.random()
    n = rng.randint(0, 60)
    segs = []
    for _ in range(n):
        if kind < 0.3:  # long speech, few pauses
            d = rng.randint(5_000, 150_000)
        elif kind < 0.6:  # short bursts
            d = rng.randint(1, 4_000)
        else:
            d = rng.randint(1, 60_000)
        b = rng.randint(-5_000, duration + 5_000)
        segs.append((b, b + d))
    return segs


@pytest.mark.parametrize("seed", range(4))
def test_random_segment_lists_hold_the_invariants(seed):
    rng = random.Random(1234 + seed)
    for _ in range(400):
        duration = rng.randint(1, 900_000)
        opts = ChunkingOptions(
            max_chunk_ms=rng.choice([2_500, 5_000, 10_000, 30_000, 60_000]),
            overlap_ms=rng.choice([0, 250, 1_000, 5_000]),
            pad_ms=rng.choice([0, 100, 200, 1_000]),
        )
        segs = _random_segments(rng, duration)
        chunks = plan_chunks(segs, duration, opts)
        # termination bound: no more chunks than a hard cut of the whole file would need, plus one per segment
        step = opts.max_chunk_ms - min(opts.overlap_ms, opts.max_chunk_ms // 4)
        assert len(chunks) <= duration // step + len(segs) + 1
        check_invariants(segs, duration, opts, chunks)


# ---- assemble_segments -----------------------------------------------------------------------------------------


def test_assemble_segments_closed_and_streamed_pieces():
    pieces = [[0, 500], [800, -1], [-1, 1_200], [1_500, 2_000], [2_500, -1], [-1, 3_000]]
    assert assemble_segments(pieces) == [(0, 500), (800, 1_200), (1_500, 2_000), (2_500, 3_000)]


def test_assemble_segments_ignores_close_without_open_and_leaves_open_tail():
    assert assemble_segments([[-1, 300], [400, 900], [1_000, -1]]) == [(400, 900)]
    assert assemble_segments([]) == []
