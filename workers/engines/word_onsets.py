"""Word starts after a pause moved to where the sound starts: Whisper's word times come from attention
(faster-whisper's DTW), which lets the first word after a silence begin anywhere in that silence or
a few hundred ms late; the audio itself says where speech resumes.

Plain functions over one chunk's samples and its words (chunk-relative seconds). A pause is a stretch
of at least ``min_pause_s`` whose 10 ms frames all stay below a level set from the chunk's own quiet
frames (so a noise floor counts as quiet); the word that follows a pause (the first that runs on past
its end) starts where the pause ends, when that is within ``max_shift_s`` of where the model put it.
Deterministic: a function of the samples and the words only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workers.engines.base import SAMPLE_RATE, Word

FRAME = SAMPLE_RATE // 100  # 10 ms


@dataclass(frozen=True)
class OnsetOptions:
    min_pause_s: float = 0.15
    max_shift_s: float = 1.0
    # a frame is loud when it is this far above the chunk's quiet level (its 10th percentile frame)
    above_floor_db: float = 8.0
    min_word_s: float = 0.05  # a moved start leaves the word at least this long


def frame_db(audio: np.ndarray) -> np.ndarray:
    n = len(audio) // FRAME
    frames = audio[: n * FRAME].astype(np.float64).reshape(n, FRAME)
    return 10 * np.log10(np.mean(frames ** 2, axis=1) + 1e-10)


def pauses(audio: np.ndarray, opts: OnsetOptions = OnsetOptions()) -> list[tuple[float, float]]:
    """Quiet stretches of the chunk, in seconds, each at least ``min_pause_s`` long."""
    db = frame_db(audio)
    if len(db) == 0:
        return []
    floor = float(np.percentile(db, 10))
    quiet = db < floor + opts.above_floor_db
    out: list[tuple[float, float]] = []
    edges = np.flatnonzero(np.diff(np.concatenate([[0], quiet.astype(np.int8), [0]])))
    for a, b in zip(edges[::2], edges[1::2]):
        # quiet at the chunk's start is a pause however short: the cut was made in one
        if (b - a) * FRAME >= opts.min_pause_s * SAMPLE_RATE or (a == 0 and b >= 3):
            out.append((a * FRAME / SAMPLE_RATE, b * FRAME / SAMPLE_RATE))
    return out


def refine_starts(audio: np.ndarray, words: list[Word], opts: OnsetOptions = OnsetOptions()) -> list[Word]:
    """``words`` with the start of each word that follows a pause set to the pause's end."""
    if not words:
        return words
    out = list(words)
    for q0, q1 in pauses(audio, opts):
        # the word that runs on past the pause's end (attention often starts it inside the pause)
        i = next((k for k, w in enumerate(out) if w.end_s >= q1 + opts.min_word_s), None)
        if i is None:
            break
        w = out[i]
        if abs(w.start_s - q1) > opts.max_shift_s or q1 > w.end_s - opts.min_word_s:
            continue
        if i and out[i - 1].start_s >= q0:
            continue  # the word before also lies in the pause: the words do not fit this pause
        if i and out[i - 1].end_s > q0:  # attention stretched the word before over the pause
            p = out[i - 1]
            out[i - 1] = Word(p.start_s, round(max(p.start_s, q0), 3), p.word)
        out[i] = Word(round(q1, 3), w.end_s, w.word)
    return out
