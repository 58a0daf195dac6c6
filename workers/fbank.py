"""Kaldi's log-mel filterbank over a whole block of frames at once (numpy), as FunASR's VAD frontend
computes it frame by frame (kaldi-native-fbank: povey-style frame processing, hamming window, 512-point
power spectrum, 80 triangular mel bins, log with float32 epsilon as floor).

One FFT call per block instead of one Python call per 10 ms frame: about a quarter of the CPU. The values
agree with kaldi-native-fbank to float32 rounding (tests/test_vad_onnx.py), not bit for bit: its FFT and
sums run in another order.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FbankOptions:
    sample_rate: int = 16000
    frame_length: int = 400  # samples (25 ms)
    frame_shift: int = 160  # samples (10 ms)
    n_mels: int = 80
    low_freq: float = 20.0
    high_freq: float = 0.0  # <= 0: offset from the Nyquist frequency, as Kaldi reads it
    preemphasis: float = 0.97
    window: str = "hamming"

    @property
    def fft_size(self) -> int:
        return 1 << (self.frame_length - 1).bit_length()  # Kaldi's round_to_power_of_two


def frame_count(samples: int, opts: FbankOptions = FbankOptions()) -> int:
    """Frames Kaldi cuts from ``samples`` with snip_edges (only whole frames)."""
    return 0 if samples < opts.frame_length else 1 + (samples - opts.frame_length) // opts.frame_shift


def frames_of(samples: np.ndarray, count: int, opts: FbankOptions = FbankOptions()) -> np.ndarray:
    """The first ``count`` frames of a contiguous float32 array, as a read-only view (n, frame_length)."""
    step = samples.strides[0]
    return np.lib.stride_tricks.as_strided(samples, (count, opts.frame_length), (opts.frame_shift * step, step),
                                           writeable=False)


@functools.lru_cache(maxsize=4)
def _window(opts: FbankOptions) -> np.ndarray:
    if opts.window != "hamming":
        raise ValueError(f"unsupported fbank window {opts.window!r}")
    n = opts.frame_length
    return (0.54 - 0.46 * np.cos(2 * np.pi * np.arange(n) / (n - 1))).astype(np.float32)


def _mel(f: np.ndarray) -> np.ndarray:
    return 1127.0 * np.log(1.0 + f / 700.0)


@functools.lru_cache(maxsize=4)
def mel_banks(opts: FbankOptions) -> np.ndarray:
    """Kaldi's triangular mel filters, (fft_size // 2 + 1, n_mels) float32, ready for ``power @ banks``
    (the Nyquist bin's weights are zero, as in Kaldi's MelBanks)."""
    nyquist = opts.sample_rate / 2
    high = opts.high_freq if opts.high_freq > 0 else nyquist + opts.high_freq
    bins = opts.fft_size // 2
    mel_low, mel_high = _mel(np.float64(opts.low_freq)), _mel(np.float64(high))
    delta = (mel_high - mel_low) / (opts.n_mels + 1)
    mel = _mel(np.arange(bins) * (opts.sample_rate / opts.fft_size))
    out = np.zeros((bins + 1, opts.n_mels), np.float32)
    for b in range(opts.n_mels):
        left, center, right = mel_low + b * delta, mel_low + (b + 1) * delta, mel_low + (b + 2) * delta
        inside = (mel > left) & (mel < right)
        up = (mel - left) / (center - left)
        down = (right - mel) / (right - center)
        out[:bins, b] = np.where(inside, np.where(mel <= center, up, down), 0.0)
    return out


def log_mel(frames: np.ndarray, opts: FbankOptions = FbankOptions()) -> np.ndarray:
    """Log mel energies (n, n_mels) float32 of frames (n, frame_length) of samples at int16 scale."""
    x = frames - frames.mean(axis=1, dtype=np.float32, keepdims=True)  # remove_dc_offset (a new array)
    # pre-emphasis, right to left as Kaldi does it in place: x[i] -= k * x[i - 1], x[0] -= k * x[0]
    k = np.float32(opts.preemphasis)
    x[:, 1:] -= k * x[:, :-1]
    x[:, 0] -= k * x[:, 0]
    x *= _window(opts)
    import scipy.fft  # a third of a second of imports: paid by the first prepare, not by every worker's start

    spec = scipy.fft.rfft(x, n=opts.fft_size, axis=1)
    power = np.square(spec.real)
    power += np.square(spec.imag)
    mel = power @ mel_banks(opts)
    return np.log(np.maximum(mel, np.finfo(np.float32).eps, out=mel), out=mel)
