"""FSMN-VAD's decision pass over whole arrays: FunASR's per-frame state machine, event by event.

FunASR (``funasr/models/fsmn_vad_streaming/model.py``) walks every 10 ms frame through Python objects
(``GetFrameState``, ``WindowDetector.DetectOneFrame``, ``FsmnVADStreaming.DetectOneFrame``): about 30 us
a frame, as much CPU as the fbank and the network together. The same rules, restated over arrays:

1. frame states (``speech_flags``): numpy over a window's scores and decibels, FunASR's float
   expressions; frames whose speech/noise margin is too close for numpy's exp/log to be trusted to the
   last bit are settled with ``math``, exactly as FunASR computes them;
2. segments (``decide_segments``): the window detector and the VAD state machine only change at a
   few frames per second (speech starts, speech ends, the silence timeout, the length limit), so the
   pass jumps from one such event to the next with vectorised searches instead of visiting frames;
3. output (``emit_pieces``): what FunASR's ``forward`` returns after each network call, streaming
   pieces and all, so the caller assembles them with the very code it uses for FunASR's own output.

Only the option values under which this restatement is exact are accepted (``decision_options``
returns None otherwise, and the caller keeps FunASR's own pass); tests/test_vad_equality.py compares
the two on every test recording, long ones built from them, random scores and odd options.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# FunASR's enum values (VadDetectMode.kVadMutipleUtteranceDetectMode)
_MULTIPLE_UTTERANCES = 1
# smallest |margin| that numpy's float64 exp/log (a few ulp from libm's at most) cannot flip
_MARGIN_SURE = 1e-9
# frames searched at first when looking for the next event; doubled while nothing is found
_FIRST_BLOCK_FRAMES = 256


@dataclass(frozen=True)
class DecisionOptions:
    """FunASR's VADXOptions as the decision uses them (frames of ``frame_ms``), for one call's settings."""

    frame_ms: int
    window_frames: int  # the window detector's length
    sil_to_speech_frames: int  # speech frames in the window that start speech
    speech_to_sil_frames: int  # ... at or below which speech stops
    start_latency_frames: int  # a segment starts this many frames before speech was confirmed
    end_silence_frames: int  # silence frames (after speech stopped) that end a segment
    end_lookback_frames: int  # the segment then ends this many frames before that frame
    max_segment_frames: int  # frames after its start at which a segment is cut
    speech_noise_thres: float
    speech_2_noise_ratio: float
    speech_allowed: bool  # FunASR's fe_prior_thres gate (1.0 > fe_prior_thres)
    decibel_thres: float
    snr_thres: float
    noise_frames_for_snr: int
    sil_pdf_id: int


def decision_options(vad_opts, max_end_silence_ms: int | None,  # noqa: ANN001
                     speech_noise_thres: float | None = None) -> DecisionOptions | None:
    """The decision options for FunASR's ``vad_opts`` and a call's ``max_end_silence_time``, or None
    where this pass does not restate FunASR exactly (the caller then runs FunASR's own pass)."""
    o = vad_opts
    if max_end_silence_ms is None:
        return None  # FunASR then switches to its dynamic silence schedule, driven per network call
    supported = (
        o.detect_mode == _MULTIPLE_UTTERANCES
        and o.do_extend == 1
        and o.silence_pdf_num == 1 and len(o.sil_pdf_ids) == 1
        and isinstance(o.frame_in_ms, int) and o.frame_in_ms > 0
        and int(o.window_size_ms / o.frame_in_ms) > 0
        and isinstance(max_end_silence_ms, int)
        and isinstance(o.speech_to_sil_time_thres, int)
        and isinstance(o.noise_frame_num_used_for_snr, int) and o.noise_frame_num_used_for_snr > 0
    )
    if not supported:
        return None
    f = o.frame_in_ms
    # Stats.max_end_sil_frame_cnt_thresh, despite its name in ms; the silence count (in frames) times
    # frame_ms must reach it, so the first count that does is its ceiling in frames (at least one frame)
    end_sil_ms = max_end_silence_ms - o.speech_to_sil_time_thres
    lookback = max(0, int(end_sil_ms / f) - int(o.lookahead_time_end_point / f) - 1)
    max_seg = o.max_single_segment_time / f  # FunASR compares frames + 1 > this float
    return DecisionOptions(
        frame_ms=f,
        window_frames=int(o.window_size_ms / f),
        sil_to_speech_frames=int(o.sil_to_speech_time_thres / f),
        speech_to_sil_frames=int(o.speech_to_sil_time_thres / f),
        start_latency_frames=int(o.window_size_ms / f) + int(o.lookback_time_start_point / f),
        end_silence_frames=max(1, -(-end_sil_ms // f)),
        end_lookback_frames=lookback,
        max_segment_frames=math.floor(max_seg),
        speech_noise_thres=o.speech_noise_thres if speech_noise_thres is None else speech_noise_thres,
        speech_2_noise_ratio=o.speech_2_noise_ratio,
        speech_allowed=math.fabs(1.0) > o.fe_prior_thres,
        decibel_thres=o.decibel_thres,
        snr_thres=o.snr_thres,
        noise_frames_for_snr=o.noise_frame_num_used_for_snr,
        sil_pdf_id=o.sil_pdf_ids[0],
    )


# --- 1. frame states -------------------------------------------------------------------------------------

def frame_decibels(waveform: np.ndarray, frame_count: int, frame_len: int = 400, frame_shift: int = 160) -> np.ndarray:
    """Per-frame energy in dB, FunASR's ComputeDecibel on the frontend's score-aligned samples.

    Same float32 squares and row sums as FunASR's gathered frame matrix (a strided view instead of
    the gather: identical rows, so identical sums), returned as float64 like its ``tolist()``.
    """
    if frame_count <= 0:
        return np.zeros(0)
    need = (frame_count - 1) * frame_shift + frame_len
    if waveform.shape[0] != need:
        raise RuntimeError(f"VAD score frames and waveform samples are not aligned: expected {need}, "
                           f"got {waveform.shape[0]}")
    frames = np.lib.stride_tricks.sliding_window_view(waveform, frame_len)[::frame_shift]
    return (10 * np.log10(np.sum(np.square(frames), axis=1) + 0.000001)).astype(np.float64)


def speech_flags(sil_prob: np.ndarray, decibel: np.ndarray, noise_db: float,
                 opts: DecisionOptions) -> tuple[np.ndarray, float]:
    """FunASR's GetFrameState for consecutive frames: (speech flag per frame, noise level after them).

    ``sil_prob`` is the network's silence posterior per frame (float32, as FunASR reads it with
    ``.item()``), ``decibel`` the frames' energy, ``noise_db`` FunASR's running noise level
    (``Stats.noise_average_decibel``, -100.0 at the start of a recording).
    """
    s = sil_prob.astype(np.float64)
    thres, ratio = opts.speech_noise_thres, opts.speech_2_noise_ratio
    with np.errstate(all="ignore"):
        margin = np.exp(np.log(1.0 - s)) - (np.exp(np.log(s) * ratio) + thres)
    cand = margin >= 0
    # numpy's exp/log may round differently from libm's in the last bit: frames this close to the
    # threshold, and any posterior outside (0, 1) (where FunASR's math.log raises), go through
    # FunASR's own expressions
    unsure = ~(np.abs(margin) > _MARGIN_SURE) | ~((s > 0.0) & (s < 1.0))
    for i in np.flatnonzero(unsure).tolist():
        v = float(s[i])
        noise_prob = math.log(v) * ratio
        speech_prob = math.log(1.0 - v)
        cand[i] = math.exp(speech_prob) >= math.exp(noise_prob) + thres
    if not opts.speech_allowed:
        cand[:] = False  # fe_prior_thres >= 1: FunASR demotes every speech frame to silence

    gate = decibel >= opts.decibel_thres  # below it a frame is silence and leaves the noise level alone
    noise = gate & ~cand
    # the noise level is a running average over noise frames: sequential by nature, and cheap as a
    # plain loop over their decibels (same float operations, same order as FunASR)
    k_frames = opts.noise_frames_for_snr
    levels = [noise_db]
    level = noise_db
    for d in decibel[noise].tolist():
        level = d if level < -99.9 else (d + level * (k_frames - 1)) / k_frames
        levels.append(level)
    # the level a frame sees: the one after the last noise frame before it
    seen = np.asarray(levels)[np.cumsum(noise) - noise]
    flags = gate & cand & (decibel - seen >= opts.snr_thres)
    return flags, level


# --- 2. segments -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Segment:
    """One speech segment in frames: FunASR's confirmed start, the frame speech was confirmed at, and
    (once closed) the frame the end was decided at and the segment's last frame."""

    start: int
    opened: int
    decided: int | None = None
    end: int | None = None


class _Windows:
    """The window detector's sums: speech frames among the last ``window_frames``, none before a reset.

    Computed block by block where a search looks, so a recording costs its flags (a byte a frame) and
    nothing more."""

    def __init__(self, flags: np.ndarray, window_frames: int) -> None:
        self.flags = flags
        self.win = window_frames

    def sums(self, reset: int, a: int, b: int) -> np.ndarray:
        """Window sums of frames [a, b) for a detector reset at frame ``reset``."""
        lo = max(reset, a - self.win + 1)
        c = np.zeros(b - lo + 1, np.int32)
        np.cumsum(self.flags[lo:b], out=c[1:])
        t = np.arange(a - lo, b - lo)  # frame t - lo
        return c[t + 1] - c[np.maximum(t + 1 - self.win, 0)]

    def first(self, reset: int, a: int, last: int, rise: bool, thres: int) -> int | None:
        """First frame in [a, last] whose sum is >= thres (rise) or <= thres (fall), or None."""
        block = _FIRST_BLOCK_FRAMES
        while a <= last:
            b = min(last + 1, a + block)
            s = self.sums(reset, a, b)
            hit = np.flatnonzero(s >= thres if rise else s <= thres)
            if len(hit):
                return a + int(hit[0])
            a, block = b, block * 2
        return None


def decide_segments(flags: np.ndarray, has_final_frame: bool, opts: DecisionOptions) -> list[Segment]:
    """FunASR's VAD state machine over a recording's frame flags, from one event to the next.

    ``has_final_frame``: the last frame went through FunASR with is_final_frame (the final network
    call produced frames), which closes a segment still in speech there.

    Restated from DetectOneFrame (multiple utterances, do_extend): after a reset the detector is in
    silence; it turns to speech at the first frame whose window holds >= sil_to_speech frames, and a
    segment starts start_latency frames earlier (not before the previous segment's end + 1). In
    speech, the detector turns back to silence at the first frame whose window holds <= speech_to_sil
    frames, and to speech again as above. The segment ends at the first of: the end_silence-th frame
    of an unbroken silence (ending end_lookback frames before it; checked first), the frame where it
    outgrows max_segment frames, the final frame. Each end resets the detector at the next frame.
    """
    w = _Windows(flags, opts.window_frames)
    n = len(flags)
    last = n - 1
    final = last if has_final_frame else None
    segs: list[Segment] = []
    reset, next_start = 0, 0
    while reset <= last:
        opened = w.first(reset, reset, last, True, opts.sil_to_speech_frames)
        if opened is None:
            break
        start = max(next_start, opened - opts.start_latency_frames)
        if opened == last:  # confirmed at the last frame: no frame left to end it (FunASR leaves it open)
            segs.append(Segment(start, opened))
            break
        # forced ends are checked from the frame after the one that confirmed speech
        stop = max(start + opts.max_segment_frames, opened + 1)
        if final is not None:
            stop = min(stop, final)
        t = opened + 1
        decided = end = None
        while True:
            horizon = min(stop, last)
            fall = w.first(reset, t, horizon, False, opts.speech_to_sil_frames)
            if fall is None or fall == stop:
                if stop <= last:
                    decided = end = stop
                break
            quiet_end = fall + opts.end_silence_frames  # the silence count reaches its limit here
            rise = w.first(reset, fall + 1, min(quiet_end, horizon), True, opts.sil_to_speech_frames)
            if rise is not None:
                if rise == stop:
                    decided = end = stop
                    break
                t = rise + 1
                continue
            x = min(quiet_end, stop)
            if x <= last:
                decided = x
                end = x - opts.end_lookback_frames if x == quiet_end else x
            break
        segs.append(Segment(start, opened, decided, end))
        if decided is None:
            break  # still open when the frames ran out
        reset, next_start = decided + 1, end + 1
    return segs


# --- 3. output -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class NetworkCall:
    """One FunASR ``forward`` (a chunk that produced score frames): frames so far, its mode flags."""

    frames_end: int  # frames of the recording after this call
    is_final: bool
    streaming: bool  # FunASR's is_streaming_input for the generate() call it belongs to


def emit_pieces(segs: list[Segment], calls: list[NetworkCall], frame_ms: int) -> list[list[int]]:
    """What FunASR's forward calls return, in order: [beg, end] pieces in ms, with -1 for the side not
    yet known in streaming mode (its output_data_buf / output_data_buf_offset / next_seg logic)."""
    pieces: list[list[int]] = []
    offset, next_seg = 0, True
    for call in calls:
        done = call.frames_end - 1  # last frame this call processed
        for seg in segs[offset:]:
            if seg.opened > done:
                break
            closed = seg.decided is not None and seg.decided <= done
            beg = seg.start * frame_ms
            if call.streaming:
                if not next_seg and not closed:
                    continue
                start_ms = beg if next_seg else -1
                if closed:
                    pieces.append([start_ms, (seg.end + 1) * frame_ms])
                    next_seg = True
                    offset += 1
                else:
                    pieces.append([start_ms, -1])
                    next_seg = False
            else:
                if not call.is_final and not closed:
                    continue
                if closed:
                    end_ms = (seg.end + 1) * frame_ms
                elif seg.opened == done:
                    end_ms = (seg.opened + 1) * frame_ms  # opened on the final frame: it spans that frame
                else:  # cannot happen: the final frame closes every segment that was in speech
                    raise RuntimeError(f"VAD segment open at the final frame {done}: {seg}")
                pieces.append([beg, end_ms])
                offset += 1
    return pieces
